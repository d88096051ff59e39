"""What a user's exception looks like in a node's log: its traceback from the user's first frame, shown once.

A handler's exception reaches the log through frames of ours (the pipeline,
the worker thread, the processor's validate-then-process) and is wrapped in a
:class:`~krt_runner.errors.HandlerError` for the error answer. The log shows
the user's exception alone, its traceback starting at the user's own frame.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path
from types import TracebackType

from krt_runner.errors import HandlerError, KrtRunnerError

_PACKAGE = str(Path(__file__).resolve().parent.parent) + os.sep
# asyncio, concurrent.futures, threading, functools: the machinery between our frames and the user's.
_STDLIB = str(Path(sysconfig.get_paths()["stdlib"]).resolve()) + os.sep
_INSTALLED = ("site-packages", "dist-packages")


def from_user_code(exc: BaseException) -> BaseException:
    """``exc`` with the frames of krt-runner (and of the standard library's machinery that called the user's code)
    cut off the top of its traceback; unchanged when no frame is the user's (a bug of ours keeps them all)."""
    frames: TracebackType | None = exc.__traceback__
    while frames is not None and _is_ours(frames.tb_frame.f_code.co_filename):
        frames = frames.tb_next
    return exc if frames is None else exc.with_traceback(frames)


def logged_exception(exc: Exception) -> BaseException | None:
    """The exception whose traceback the log shows for a failed message: the user's own for a handler that raised
    (not the ``HandlerError`` that carries it), ours for our bugs; ``None`` for bad input and limits (one line), and
    for the other requests of a batch whose function raised (its first request's line shows it)."""
    if isinstance(exc, HandlerError):
        if exc.traceback_logged_with_another:
            return None
        return from_user_code(exc.__cause__) if exc.__cause__ is not None else exc
    return None if isinstance(exc, KrtRunnerError) else exc


def _is_ours(filename: str) -> bool:
    if filename.startswith("<frozen "):  # importlib's, between an import and the module's code
        return True
    path = str(Path(filename).resolve())
    return path.startswith(_PACKAGE) or (path.startswith(_STDLIB) and not any(part in path for part in _INSTALLED))
