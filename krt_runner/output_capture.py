"""What a node's code writes outside logging: ``print()``, ``warnings.warn()``, a thread's uncaught exception.

Once a node serves, each goes through the node's log as well (:func:`capture_output`). With a JSON log (the default
off a terminal), such a line never blocks the node on a log pipe nobody reads, never fails a request on a closed
one, and the log holds only JSON:

- with a JSON log, each line written to ``sys.stdout`` or ``sys.stderr`` is a log line of the logger ``stdout``
  (INFO) or ``stderr`` (WARNING), naming the node as the runner's own lines do;
- with a console log (a terminal, most likely), they are written as they come;
- warnings are logged by ``py.warnings`` (``logging.captureWarnings``), once per place as Python shows them, and a
  thread's uncaught exception by ``threading``, its traceback in the line.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
from typing import Any, TextIO


def capture_output(*, json_log: bool) -> None:
    """Route ``sys.stdout``, ``sys.stderr``, warnings and threads' exceptions through the node's log (see above)."""
    if json_log:
        sys.stdout = _LinesToLogging("stdout", logging.INFO, sys.stdout)
        sys.stderr = _LinesToLogging("stderr", logging.WARNING, sys.stderr)
    logging.captureWarnings(True)
    threading.excepthook = _log_thread_exception


def _log_thread_exception(args: Any) -> None:
    if args.exc_type is SystemExit:
        return  # as Python's own hook: a thread that exits quietly
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("threading").error("uncaught exception in thread %s", name,
                                         exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


class _LinesToLogging(io.TextIOBase):
    """A text stream whose every line becomes a log line of ``name`` at ``level``. What needs a file rather than a
    stream (``subprocess.run(stdout=sys.stdout)``, ``faulthandler``) gets the one under it from :meth:`fileno`, and
    bytes written to :attr:`buffer` are decoded and logged as text."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, name: str, level: int, under: TextIO) -> None:
        super().__init__()
        self._under = under
        self.buffer = _TextOf(self)
        self._logger = logging.getLogger(name)
        self._logger.setLevel(level)  # printed whatever KRT_LOG_LEVEL: print() is not a log level, it is output
        self._level = level
        self._partial: list[str] = []
        self._lock = threading.Lock()
        self._inside = threading.local()  # a line logged while one is being logged (logging's own error report)

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._under.fileno()

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        with self._lock:
            self._partial.append(text)
            if "\n" not in text:
                return len(text)
            *lines, rest = "".join(self._partial).split("\n")
            self._partial = [rest] if rest else []
        for line in lines:
            self._log(line)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            rest, self._partial = "".join(self._partial), []
        self._log(rest)

    def _log(self, line: str) -> None:
        if not line or getattr(self._inside, "now", False):
            return
        self._inside.now = True
        try:
            self._logger.log(self._level, line)
        finally:
            self._inside.now = False


class _TextOf(io.RawIOBase):
    """``sys.stdout.buffer``: bytes, decoded into the text stream above it."""

    def __init__(self, text: _LinesToLogging) -> None:
        super().__init__()
        self._text = text

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._text.write(bytes(data).decode("utf-8", "replace"))
        return len(data)
