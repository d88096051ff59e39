"""The command line's own standard streams: closed ones made harmless, and stdout's write errors made one line.

Started with stdout or stderr closed (``>&-``), Python has ``None`` for it: what would go there is dropped, as on a
stream that closes later, and the command runs (it exited 1 at its first log line, saying nothing). A command whose
product is its stdout (``call``) says so instead. A write to stdout that fails (a full disk) raises
:class:`StdoutUnwritable`, which the command line reports in one line; a reader that has gone (``| head``) stays a
``BrokenPipeError``, which it ends on quietly.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

_STARTED_CLOSED: set[str] = set()  # the standard streams the process was started without


class StdoutUnwritable(Exception):
    """Writing to stdout failed for another reason than its reader going away."""


class _Guarded:
    """``stdout``, its write errors raised as :class:`StdoutUnwritable`."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return int(self._guarded(self._stream.write, text))

    def flush(self) -> None:
        self._guarded(self._stream.flush)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    @staticmethod
    def _guarded(action: Any, *args: Any) -> Any:
        try:
            return action(*args)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise StdoutUnwritable(exc.strerror or str(exc)) from None


def closed_streams_to_devnull() -> None:
    """Stand ``/dev/null`` in for a standard stream the process was started without."""
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w"))  # noqa: SIM115  (for the process's whole life)
            _STARTED_CLOSED.add(name)


def stdout_closed() -> bool:
    return "stdout" in _STARTED_CLOSED


def guard_stdout() -> None:
    """From now on a failed write to stdout raises :class:`StdoutUnwritable`."""
    sys.stdout = _Guarded(sys.stdout)  # a TextIO in all a command uses of it


def drop_stdout() -> None:
    """Nothing more goes to stdout: Python's own flush at exit would fail as the command's write did."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.__stdout__.fileno() if sys.__stdout__ else 1)
