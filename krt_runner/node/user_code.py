"""The user's code as the node calls it: ``init`` and ``handler`` (and ``handler_batch``) from a module, or a
Processor.

A node is either a KRE v1 module (``init``/``handler`` functions) or a
:class:`~krt_runner.Processor` subclass; both become one :class:`UserCode`, so
the runner has a single per-message path. The request type is read from the
annotations here, once, at load time. A batch function (``handler_batch``,
``process_batch``) is read by :mod:`~krt_runner.node.batch_code`.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from google.protobuf.message import Message

from krt_runner._user_files import USER_MODULE_PREFIX, split_class_name
from krt_runner.errors import HandlerLoadError, describe
from krt_runner.node import protobuf_compat as protobuf_compat_layer
from krt_runner.node.batch_code import BatchCode, agreed_request_type, function_batch, one_at_a_time, processor_batch
from krt_runner.node.calling import UserFunction, as_async, check_arguments, invalid_request
from krt_runner.node.loading import import_handler_module, load_error
from krt_runner.node.request_types import request_type_of
from krt_runner.processor import Processor


@dataclass(frozen=True)
class UserCode:
    """The loaded ``init`` (optional) and ``handler`` of one node."""

    name: str
    source: str
    handler: UserFunction
    init: UserFunction | None = None
    # The class the runner unpacks each payload into; None: the handler gets the Any.
    request_type: type[Message] | None = None
    # handler_batch or process_batch, when the code defines one.
    batch: BatchCode | None = None
    # What error answers call ``handler``: the batch function's name when it is called one request at a time.
    handler_name: str = "handler"

    @property
    def handler_is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.handler)

    @property
    def request_name(self) -> str:
        return self.request_type.DESCRIPTOR.full_name if self.request_type else "google.protobuf.Any"


def load_user_code(handler_path: str, base_path: Path, *, protobuf_compat: bool = True) -> UserCode:
    """Import ``handler_path`` (a file relative to ``base_path``, or a dotted module name).

    ``path:Name`` names a :class:`Processor` subclass in that module; without
    the suffix the module's ``handler`` is used, or else its only Processor
    subclass. The file's directory is added to ``sys.path`` (last) so it can import
    its generated ``_pb2`` modules. With ``protobuf_compat`` (``KRT_PROTOBUF_COMPAT``)
    the :mod:`~krt_runner.node.protobuf_compat` layer is installed first, else
    removed. Raises :class:`HandlerLoadError` naming the file and the cause, with
    the traceback in ``details`` when there is one.
    """
    module_path, class_name = split_class_name(handler_path)
    protobuf_compat_layer.apply(enabled=protobuf_compat)  # before the module binds json_format's functions
    module = import_handler_module(module_path, base_path)
    name = module.__name__.rsplit(".", 1)[-1].removeprefix(USER_MODULE_PREFIX)
    if class_name:
        return user_code_from(_named_processor(module, class_name, handler_path), name=name, source=handler_path)
    handler, handler_batch = getattr(module, "handler", None), getattr(module, "handler_batch", None)
    if handler is None and handler_batch is None:
        processor = _only_processor(module, handler_path)
        if processor is not None:
            return user_code_from(processor, name=name, source=handler_path)
    if not callable(handler) and (handler is not None or handler_batch is None):
        raise HandlerLoadError(f"handler {handler_path!r} defines no handler(ctx, data) function, no "
                               "handler_batch(ctx, requests) function and no krt_runner.Processor subclass")
    init = getattr(module, "init", None)
    if init is not None and not callable(init):
        raise HandlerLoadError(f"handler {handler_path!r}: init is not a function")
    return user_code_from(handler, init=init, handler_batch=handler_batch, name=name, source=handler_path)


def user_code_from(
    target: Any, *, init: UserFunction | None = None, handler_batch: Any = None, name: str, source: str
) -> UserCode:
    """A :class:`UserCode` from a handler function (or ``None``) and a ``handler_batch`` function (or ``None``),
    or from a Processor subclass or instance."""
    if isinstance(target, Processor) or _is_processor_class(target):
        if init is not None or handler_batch is not None:
            raise HandlerLoadError(f"{source}: init= and handler_batch= are for handler functions; a Processor has "
                                   "setup(self, ctx) and process_batch(self, ctx, requests)")
        return _processor_code(target, name=name, source=source)
    return _function_code(target, init=init, handler_batch=handler_batch, name=name, source=source)


def _function_code(
    handler: Any, *, init: UserFunction | None, handler_batch: Any, name: str, source: str
) -> UserCode:
    batch = function_batch(handler_batch, source=source) if handler_batch is not None else None
    if handler is None and batch is not None:
        return UserCode(name=name, source=source, handler=one_at_a_time(batch), init=init,
                        request_type=batch.request_type, batch=batch, handler_name=batch.name)
    if not callable(handler):
        raise HandlerLoadError(f"{source}: {handler!r} is neither a handler function nor a krt_runner.Processor")
    check_arguments(handler, ("ctx", "data"), f"handler {source!r}")
    if init is not None:
        check_arguments(init, ("ctx",), f"handler {source!r}")
    typed = [("handler", request_type_of(handler, where=f"{source}: handler")),
             ("handler_batch", batch.request_type if batch is not None else None)]
    request_type = agreed_request_type(source, typed)
    return UserCode(name=name, source=source, handler=handler, init=init, request_type=request_type, batch=batch)


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
    validate = processor.validate if cls.validate is not Processor.validate else None
    setup = processor.setup if cls.setup is not Processor.setup else None
    batch = processor_batch(processor, where=where, validate=validate)
    process = processor.process if cls.process is not Processor.process else None
    handler_name = "handler"
    if process is not None:
        handler = _processor_handler(validate, process)
    elif batch is not None:
        handler, handler_name = one_at_a_time(batch), batch.name
    else:
        raise HandlerLoadError(f"{where} defines no process(self, ctx, req) or process_batch(self, ctx, requests) "
                               "method")
    request_type = _processor_request_type(process, validate, batch, where)
    return UserCode(name=name, source=source, handler=handler, init=setup, request_type=request_type, batch=batch,
                    handler_name=handler_name)


def _instantiate(cls: type[Processor], source: str) -> Processor:
    try:
        return cls()
    except Exception as exc:
        raise load_error(source, f"{cls.__name__}() raised {describe(exc)}", exc) from None


def _processor_request_type(
    process: UserFunction | None, validate: UserFunction | None, batch: BatchCode | None, where: str
) -> type[Message] | None:
    """From the annotations of ``process``, ``validate`` and ``process_batch``: those typed must agree."""
    processed = request_type_of(process, where=f"{where}.process") if process is not None else None
    validated = request_type_of(validate, where=f"{where}.validate") if validate is not None else None
    batched = batch.request_type if batch is not None else None
    return agreed_request_type(where, [("process", processed), ("validate", validated), ("process_batch", batched)])


def _processor_handler(validate: UserFunction | None, process: UserFunction) -> UserFunction:
    """``validate`` then ``process`` as one handler; a failing ``validate`` raises InvalidRequestError.

    Both sync: one sync function, so the pair costs one hop to a worker thread.
    Otherwise one coroutine function; a sync half runs on a thread of its own.
    """
    if validate is None:
        return process
    if not inspect.iscoroutinefunction(validate) and not inspect.iscoroutinefunction(process):
        return functools.partial(_validate_then_process, validate, process)
    return functools.partial(_validate_then_process_async, as_async(validate), as_async(process))


def _validate_then_process(validate: UserFunction, process: UserFunction, ctx: Any, request: Any) -> Any:
    try:
        validate(ctx, request)
    except Exception as exc:
        raise invalid_request(exc) from exc
    return process(ctx, request)


async def _validate_then_process_async(validate: UserFunction, process: UserFunction, ctx: Any, request: Any) -> Any:
    try:
        await validate(ctx, request)
    except Exception as exc:
        raise invalid_request(exc) from exc
    return await process(ctx, request)
