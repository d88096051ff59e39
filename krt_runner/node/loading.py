"""Importing a handler module: a file relative to the base path, or a dotted module name."""

from __future__ import annotations

import importlib
import traceback
from pathlib import Path
from types import ModuleType

from krt_runner._user_files import exec_file, module_name_for, prepend_sys_path
from krt_runner.errors import HandlerLoadError, NotAModuleError
from krt_runner.node.generated_code import refused_generated_code, regenerate_hint
from krt_runner.node.tracebacks import from_user_code


def import_handler_module(handler_path: str, base_path: Path) -> ModuleType:
    """The module ``handler_path`` names; :class:`HandlerLoadError` naming the file and the cause otherwise."""
    try:
        if _is_file_path(handler_path):
            return _import_file(handler_path, base_path)
        return _import_dotted(handler_path, base_path)
    except HandlerLoadError:
        raise
    except SyntaxError as exc:
        raise load_error(handler_path, f"syntax error at line {exc.lineno}: {exc.msg}", exc) from None
    except Exception as exc:
        refused = refused_generated_code(exc, root=base_path)
        if refused is not None:  # the user's to fix, with one command: one line, no traceback
            raise HandlerLoadError(
                f"cannot load handler {handler_path!r}: {refused}: {regenerate_hint(base_path)}"
            ) from None
        raise load_error(handler_path, f"import failed: {type(exc).__name__}: {exc}", exc) from None


def load_error(handler_path: str, cause: str, exc: BaseException) -> HandlerLoadError:
    """A :class:`HandlerLoadError` for ``cause``, with ``exc``'s traceback in ``details``."""
    error = HandlerLoadError(f"cannot load handler {handler_path!r}: {cause}")
    shown = from_user_code(exc)  # from the user's module down, without the import machinery above it
    error.details = "".join(traceback.format_exception(type(shown), shown, shown.__traceback__))  # type: ignore[attr-defined]
    return error


def _is_file_path(handler_path: str) -> bool:
    return handler_path.endswith(".py") or "/" in handler_path or "\\" in handler_path


def _import_file(handler_path: str, base_path: Path) -> ModuleType:
    path = (base_path / handler_path).resolve()
    if not path.is_file():
        raise HandlerLoadError(f"cannot load handler {handler_path!r}: no file at {path}")
    try:
        return exec_file(path, name=module_name_for(path))
    except NotAModuleError:
        raise HandlerLoadError(f"cannot load handler {handler_path!r}: {path} is not a Python module") from None


def _import_dotted(module_name: str, base_path: Path) -> ModuleType:
    prepend_sys_path(base_path)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise HandlerLoadError(
                f"cannot load handler {module_name!r}: no module named {exc.name!r} under {base_path} or sys.path"
            ) from None
        raise
