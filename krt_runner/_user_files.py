"""Running a user's Python file as a module: the one place that touches ``sys.path`` and ``sys.modules`` for it.

Handler modules, generated ``_pb2`` files and ``pipeline.py`` files all go
through :func:`exec_file`, so they import their neighbours the same way.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from krt_runner.errors import NotAModuleError

# Before the stem of a user's file whose stem names another module (see module_name_for).
USER_MODULE_PREFIX = "_krt_user_"


def module_name_for(path: Path) -> str:
    """The name to run ``path`` under: its stem, unless that names a module already there (``json.py``,
    ``uuid.py``, an installed package), which the file must not shadow for the runner or for itself."""
    stem = path.stem
    try:
        found = importlib.util.find_spec(stem)
    except (ImportError, ValueError):
        found = None
    if found is None or (found.origin and Path(found.origin).resolve() == path.resolve()):
        return stem
    return USER_MODULE_PREFIX + stem


def exec_file(path: Path, *, name: str, keep_folder_on_path: bool = True) -> ModuleType:
    """Run the file at ``path`` as module ``name``, registered in ``sys.modules`` under that name (so pickled
    objects, joblib models, find their classes) and with its folder on ``sys.path`` (so it imports the files
    beside it, its ``_pb2`` modules). The folder goes last, as KRE v1 put it: a file named like a module of the
    standard library or an installed package never shadows it. It stays on ``sys.path`` unless
    ``keep_folder_on_path`` is false. Raises whatever the file's code raises, and :class:`NotAModuleError`."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise NotAModuleError(f"{path} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        with _folder_on_path(path.parent, keep=keep_folder_on_path):
            spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def prepend_sys_path(directory: Path) -> None:
    """Put ``directory`` first on ``sys.path``, once."""
    entry = str(directory)
    if entry not in sys.path:
        sys.path.insert(0, entry)


def append_sys_path(directory: Path) -> None:
    """Put ``directory`` last on ``sys.path``, once: a handler's folder, as :func:`exec_file` puts it."""
    if str(directory) not in sys.path:
        sys.path.append(str(directory))


@contextlib.contextmanager
def _folder_on_path(directory: Path, *, keep: bool) -> Iterator[None]:
    added = str(directory) not in sys.path
    if added:
        sys.path.append(str(directory))
    try:
        yield
    finally:
        if added and not keep:
            sys.path.remove(str(directory))


def split_class_name(handler_path: str) -> tuple[str, str]:
    """``src/x.py:Name`` -> (``src/x.py``, ``Name``); (``handler_path``, ``""``) without a ``:Name`` suffix (a
    ``:`` followed by anything but a Python name, as in a folder ``we:ird/``, is part of the path)."""
    head, sep, tail = handler_path.rpartition(":")
    if sep and head and tail.isidentifier():
        return head, tail
    return handler_path, ""
