"""Load the user's module and call its ``init`` and ``handler``, sync or async."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import HandlerLoadError

UserFunction = Callable[..., Any]


@dataclass(frozen=True)
class UserCode:
    """The loaded ``init`` (optional) and ``handler`` of one node."""

    name: str
    source: str
    handler: UserFunction
    init: UserFunction | None = None

    @property
    def handler_is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.handler)


def load_user_code(handler_path: str, base_path: Path) -> UserCode:
    """Import ``handler_path`` (a file relative to ``base_path``, or a dotted module name).

    The file's directory goes first on ``sys.path`` so it can import its
    generated ``_pb2`` modules. Raises :class:`HandlerLoadError` naming the file
    and the cause, with the traceback in ``details`` when there is one.
    """
    module = _import(handler_path, base_path)
    handler = getattr(module, "handler", None)
    if not callable(handler):
        raise HandlerLoadError(f"handler {handler_path!r} defines no handler(ctx, data) function")
    init = getattr(module, "init", None)
    if init is not None and not callable(init):
        raise HandlerLoadError(f"handler {handler_path!r}: init is not a function")
    return UserCode(name=module.__name__.rsplit(".", 1)[-1], source=handler_path, handler=handler, init=init)


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
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="krt-handler")

    async def call(self, function: UserFunction, *args: Any) -> Any:
        if inspect.iscoroutinefunction(function):
            return await function(*args)
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self._executor, function, *args)
        if inspect.isawaitable(result):  # a sync function that returned a coroutine
            result = await result
        return result

    def close(self) -> None:
        # Threads of timed-out handlers cannot be killed; do not wait for them.
        self._executor.shutdown(wait=False, cancel_futures=True)
