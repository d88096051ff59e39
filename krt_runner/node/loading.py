"""Importing a handler module: a file relative to the base path, or a dotted module name."""

from __future__ import annotations

import importlib
import importlib.util
import traceback
from pathlib import Path
from types import ModuleType

from krt_runner._user_files import append_sys_path, exec_file, module_name_for, prepend_sys_path
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
        raise _syntax_error(handler_path, base_path, exc) from None
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


def _syntax_error(handler_path: str, base_path: Path, exc: SyntaxError) -> HandlerLoadError:
    """The line names the file the error is in when it is not the handler's own (a module it imports), and the
    details are Python's own lines for a syntax error: the code and a caret, no frames of the import machinery."""
    where = ""
    if exc.filename and Path(exc.filename).resolve() != (base_path / handler_path).resolve():
        where = f" in {_shown_path(Path(exc.filename), base_path)}"
    error = HandlerLoadError(f"cannot load handler {handler_path!r}: syntax error{where} at line {exc.lineno}: "
                             f"{exc.msg}")
    error.details = "".join(traceback.format_exception_only(type(exc), exc))  # type: ignore[attr-defined]
    return error


def _shown_path(path: Path, base_path: Path) -> str:
    try:
        return str(path.resolve().relative_to(base_path.resolve()))
    except ValueError:
        return str(path)


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
        spec = importlib.util.find_spec(module_name)
        if spec is not None and spec.has_location and spec.origin:
            append_sys_path(Path(spec.origin).parent)  # as for a file: it imports its folder's generated modules
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise HandlerLoadError(
                f"cannot load handler {module_name!r}: no module named {exc.name!r} under {base_path} or sys.path"
            ) from None
        raise
