"""Load the user's module and call its ``init`` and ``handler``, sync or async.

A node is either a KRE v1 module (``init``/``handler`` functions) or a
:class:`~krt_runner.Processor` subclass; both become one :class:`UserCode`, so
the runner has a single per-message path. The request type is read from the
annotations here, once, at load time.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.util
import inspect
import sys
import traceback
import types
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.message import DecodeError, Message

from krt_runner.errors import HandlerLoadError, InvalidRequestError
from krt_runner.node.envelope import type_url
from krt_runner.node.threads import WorkerThreads
from krt_runner.processor import Processor

UserFunction = Callable[..., Any]
# Annotations that mean "give me the Any", as KRE v1 does.
_UNTYPED_HINTS: tuple[object, ...] = (AnyMessage, Message, typing.Any, object)
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


@dataclass(frozen=True)
class UserCode:
    """The loaded ``init`` (optional) and ``handler`` of one node."""

    name: str
    source: str
    handler: UserFunction
    init: UserFunction | None = None
    # The class the runner unpacks each payload into; None: the handler gets the Any.
    request_type: type[Message] | None = None

    @property
    def handler_is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.handler)

    @property
    def request_name(self) -> str:
        return self.request_type.DESCRIPTOR.full_name if self.request_type else "google.protobuf.Any"


def load_user_code(handler_path: str, base_path: Path) -> UserCode:
    """Import ``handler_path`` (a file relative to ``base_path``, or a dotted module name).

    ``path:Name`` names a :class:`Processor` subclass in that module; without
    the suffix the module's ``handler`` is used, or else its only Processor
    subclass. The file's directory goes first on ``sys.path`` so it can import
    its generated ``_pb2`` modules. Raises :class:`HandlerLoadError` naming the
    file and the cause, with the traceback in ``details`` when there is one.
    """
    module_path, class_name = _split_class_name(handler_path)
    module = _import(module_path, base_path)
    name = module.__name__.rsplit(".", 1)[-1]
    if class_name:
        return user_code_from(_named_processor(module, class_name, handler_path), name=name, source=handler_path)
    handler = getattr(module, "handler", None)
    if handler is None:
        processor = _only_processor(module, handler_path)
        if processor is not None:
            return user_code_from(processor, name=name, source=handler_path)
    if not callable(handler):
        raise HandlerLoadError(
            f"handler {handler_path!r} defines no handler(ctx, data) function and no krt_runner.Processor subclass"
        )
    init = getattr(module, "init", None)
    if init is not None and not callable(init):
        raise HandlerLoadError(f"handler {handler_path!r}: init is not a function")
    return user_code_from(handler, init=init, name=name, source=handler_path)


def user_code_from(
    target: Any, *, init: UserFunction | None = None, name: str, source: str
) -> UserCode:
    """A :class:`UserCode` from a handler function, or from a Processor subclass or instance."""
    if isinstance(target, Processor) or _is_processor_class(target):
        if init is not None:
            raise HandlerLoadError(f"{source}: init= is for handler functions; a Processor has setup(self, ctx)")
        return _processor_code(target, name=name, source=source)
    if not callable(target):
        raise HandlerLoadError(f"{source}: {target!r} is neither a handler function nor a krt_runner.Processor")
    request_type = request_type_of(target, where=f"{source}: handler")
    return UserCode(name=name, source=source, handler=target, init=init, request_type=request_type)


def _split_class_name(handler_path: str) -> tuple[str, str]:
    head, sep, tail = handler_path.rpartition(":")
    if sep and head and tail.isidentifier():
        return head, tail
    return handler_path, ""


def _is_processor_class(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, Processor) and value is not Processor


def _named_processor(module: ModuleType, class_name: str, handler_path: str) -> Any:
    target = getattr(module, class_name, None)
    if not _is_processor_class(target):
        raise HandlerLoadError(f"handler {handler_path!r}: there is no krt_runner.Processor subclass {class_name!r}")
    return target


def _only_processor(module: ModuleType, handler_path: str) -> type[Processor] | None:
    """The module's one Processor subclass; those defined in it win over imported ones."""
    found = [value for value in vars(module).values() if _is_processor_class(value)]
    candidates = [cls for cls in found if cls.__module__ == module.__name__] or found
    if len(candidates) > 1:
        names = ", ".join(sorted(cls.__name__ for cls in candidates))
        raise HandlerLoadError(
            f"handler {handler_path!r} defines several Processor classes ({names}) and no handler; "
            f"name one, e.g. {handler_path}:{candidates[0].__name__}"
        )
    return candidates[0] if candidates else None


def _processor_code(target: Any, *, name: str, source: str) -> UserCode:
    processor = target if isinstance(target, Processor) else _instantiate(target, source)
    cls = type(processor)
    where = f"{source}: {cls.__name__}"
    if cls.process is Processor.process:
        raise HandlerLoadError(f"{where} defines no process(self, ctx, req) method")
    validate = processor.validate if cls.validate is not Processor.validate else None
    setup = processor.setup if cls.setup is not Processor.setup else None
    request_type = _processor_request_type(processor.process, validate, where)
    handler = _processor_handler(validate, processor.process)
    return UserCode(name=name, source=source, handler=handler, init=setup, request_type=request_type)


def _instantiate(cls: type[Processor], source: str) -> Processor:
    try:
        return cls()
    except Exception as exc:
        raise _load_error(source, f"{cls.__name__}() raised {_describe(exc)}", exc) from None


def _processor_request_type(
    process: UserFunction, validate: UserFunction | None, where: str
) -> type[Message] | None:
    """From ``process``'s annotation, else ``validate``'s; the two must agree when both are typed."""
    processed = request_type_of(process, where=f"{where}.process")
    validated = request_type_of(validate, where=f"{where}.validate") if validate is not None else None
    if processed and validated and processed is not validated:
        raise HandlerLoadError(
            f"{where}: validate takes {validated.DESCRIPTOR.full_name} but process takes "
            f"{processed.DESCRIPTOR.full_name}; annotate both with the same request class"
        )
    return processed or validated


def _processor_handler(validate: UserFunction | None, process: UserFunction) -> UserFunction:
    """``validate`` then ``process`` as one handler; a failing ``validate`` raises InvalidRequestError.

    Both sync: one sync function, so the pair costs one hop to a worker thread.
    Otherwise one coroutine function; a sync half runs on a thread of its own.
    """
    if validate is None:
        return process
    if not inspect.iscoroutinefunction(validate) and not inspect.iscoroutinefunction(process):
        return functools.partial(_validate_then_process, validate, process)
    return functools.partial(_validate_then_process_async, _as_async(validate), _as_async(process))


def _validate_then_process(validate: UserFunction, process: UserFunction, ctx: Any, request: Any) -> Any:
    try:
        validate(ctx, request)
    except Exception as exc:
        raise _invalid(exc) from exc
    return process(ctx, request)


async def _validate_then_process_async(validate: UserFunction, process: UserFunction, ctx: Any, request: Any) -> Any:
    try:
        await validate(ctx, request)
    except Exception as exc:
        raise _invalid(exc) from exc
    return await process(ctx, request)


def _as_async(function: UserFunction) -> UserFunction:
    if inspect.iscoroutinefunction(function):
        return function
    return functools.partial(asyncio.to_thread, function)


def _invalid(exc: Exception) -> InvalidRequestError:
    if isinstance(exc, InvalidRequestError):
        return exc
    return InvalidRequestError(f"invalid request: {_describe(exc)}")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- request types ------------------------------------------------------------------------------


def request_type_of(function: UserFunction, *, where: str) -> type[Message] | None:
    """The protobuf class ``function``'s request parameter (its second) is annotated with.

    ``None`` when it has no annotation or is annotated as ``Any``: the function
    then gets the ``google.protobuf.Any`` as in KRE v1. String annotations
    (``from __future__ import annotations``) are resolved in the function's
    module; only this one parameter is, so an annotation that exists for type
    checkers only (``if TYPE_CHECKING:``) elsewhere in the signature is fine.
    """
    parameter = _request_parameter(function)
    if parameter is None:
        return None
    hint = _resolve(parameter, function, where)
    if any(hint is untyped for untyped in _UNTYPED_HINTS):
        return None
    if isinstance(hint, type) and issubclass(hint, Message):
        return hint
    raise HandlerLoadError(
        f"{where}: parameter {parameter.name!r} is annotated {hint!r}; annotate it with a protobuf message "
        "class to receive that message, or with google.protobuf.any_pb2.Any (or nothing) to receive the Any"
    )


def _request_parameter(function: UserFunction) -> inspect.Parameter | None:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # some builtins and C callables have none
        return None
    positional = [p for p in signature.parameters.values() if p.kind in _POSITIONAL]
    if len(positional) < 2 or positional[1].annotation is inspect.Parameter.empty:
        return None
    return positional[1]


def _resolve(parameter: inspect.Parameter, function: UserFunction, where: str) -> object:
    annotation = parameter.annotation
    if not isinstance(annotation, str):
        return annotation
    holder = types.SimpleNamespace(__annotations__={parameter.name: annotation})
    module_globals = getattr(inspect.unwrap(function), "__globals__", {})
    try:
        return typing.get_type_hints(holder, globalns=module_globals)[parameter.name]
    except Exception as exc:
        raise HandlerLoadError(
            f"{where}: cannot resolve the annotation {annotation!r} of parameter {parameter.name!r}: "
            f"{_describe(exc)}; import that name at module level"
        ) from None


def unpack_request(payload: AnyMessage, request_type: type[Message]) -> Message:
    """The payload as ``request_type``; :class:`InvalidRequestError` naming both types otherwise."""
    request = request_type()
    try:
        if payload.type_url == type_url(request_type):  # as Any.Pack wrote it: no need for Unpack's parsing of it
            request.ParseFromString(payload.value)
            return request
        if payload.Unpack(request):  # another prefix before the type name
            return request
    except DecodeError as exc:
        raise InvalidRequestError(
            f"invalid request: payload is not a valid {request_type.DESCRIPTOR.full_name}: {exc}"
        ) from None
    received = payload.TypeName() or "an empty payload"
    raise InvalidRequestError(f"invalid request: expected {request_type.DESCRIPTOR.full_name}, received {received}")


def _is_file_path(handler_path: str) -> bool:
    return handler_path.endswith(".py") or "/" in handler_path or "\\" in handler_path


def _import(handler_path: str, base_path: Path) -> ModuleType:
    try:
        if _is_file_path(handler_path):
            return _import_file(handler_path, base_path)
        return _import_dotted(handler_path, base_path)
    except HandlerLoadError:
        raise
    except SyntaxError as exc:
        raise _load_error(handler_path, f"syntax error at line {exc.lineno}: {exc.msg}", exc) from None
    except Exception as exc:
        raise _load_error(handler_path, f"import failed: {type(exc).__name__}: {exc}", exc) from None


def _load_error(handler_path: str, cause: str, exc: BaseException) -> HandlerLoadError:
    error = HandlerLoadError(f"cannot load handler {handler_path!r}: {cause}")
    error.details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))  # type: ignore[attr-defined]
    return error


def _import_file(handler_path: str, base_path: Path) -> ModuleType:
    path = (base_path / handler_path).resolve()
    if not path.is_file():
        raise HandlerLoadError(f"cannot load handler {handler_path!r}: no file at {path}")
    _prepend_sys_path(path.parent)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise HandlerLoadError(f"cannot load handler {handler_path!r}: {path} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    # Registered under its name so pickled objects (joblib models) can find their classes.
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def _import_dotted(module_name: str, base_path: Path) -> ModuleType:
    _prepend_sys_path(base_path)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise HandlerLoadError(
                f"cannot load handler {module_name!r}: no module named {exc.name!r} under {base_path} or sys.path"
            ) from None
        raise


def _prepend_sys_path(directory: Path) -> None:
    entry = str(directory)
    if entry not in sys.path:
        sys.path.insert(0, entry)


class Caller:
    """Calls user functions: coroutines on the loop, plain functions on worker threads.

    Sync code runs off the event loop so that a CPU-bound handler never keeps
    the NATS client from answering PINGs or reconnecting.
    """

    def __init__(self, *, workers: int) -> None:
        self._workers = workers
        self._is_async: dict[UserFunction, bool] = {}
        self._threads = self._new_threads()
        self.abandoned_threads = 0  # threads of timed-out calls, still running their function

    def _new_threads(self) -> WorkerThreads:
        return WorkerThreads(self._workers, name="krt-handler")

    def call(self, function: UserFunction, *args: Any) -> Awaitable[Any]:
        """What to await for ``function(*args)``: an async function's own coroutine, or its run on a worker thread.

        A plain method, not a coroutine: an async handler is awaited with no frame of ours in between.
        """
        is_async = self._is_async.get(function)
        if is_async is None:  # asked once per function, not per message
            is_async = self._is_async[function] = inspect.iscoroutinefunction(function)
        if is_async:
            coroutine: Awaitable[Any] = function(*args)  # annotated, not cast(): no call per message
            return coroutine
        return self._call_in_thread(function, args)

    async def _call_in_thread(self, function: UserFunction, args: tuple[Any, ...]) -> Any:
        threads = self._threads
        running = threads.call(function, args)
        try:
            result = await running
        except asyncio.CancelledError:  # timed out: a thread cannot be stopped
            if threads.started(running):
                self._abandon(threads)
            raise
        if inspect.isawaitable(result):  # a sync function that returned a coroutine
            result = await result
        return result

    def _abandon(self, threads: WorkerThreads) -> None:
        """Leave a busy thread to finish on its own (its result is discarded); new calls get fresh threads.

        Without this a timed-out handler would keep its worker, and every later
        message would wait for it and time out too.
        """
        self.abandoned_threads += 1
        if threads is self._threads:  # not replaced yet by another timed-out call of the same threads
            self._threads = self._new_threads()
            threads.retire()  # the others end once they have run what was handed to them

    def close(self) -> None:
        # Threads of timed-out handlers cannot be killed; do not wait for them.
        self._threads.close()
