"""What a node's code writes outside logging: ``print()``, ``warnings.warn()``, a thread's uncaught exception.

Once a node serves, each goes through the node's log as well (:func:`capture_output`). With a JSON log (the default
off a terminal), such a line never blocks the node on a log pipe nobody reads, never fails a request on a closed
one, and the log holds only JSON:

- ``sys.stdout`` and ``sys.stderr`` are text streams of their own (``io.TextIOWrapper``: ``reconfigure``,
  ``buffer``, ``encoding`` work as on any) whose every line is a log line of the logger ``stdout`` (INFO) or
  ``stderr`` (WARNING), naming the node as the runner's own lines do. A line ends at ``\\n`` or ``\\r`` (a progress
  counter's); text without a line end is logged in parts of :data:`LONGEST_LINE` bytes, and a log line's values are
  cut at 10,000 characters as every log line's are (docs/production.md). What needs a file
  (``subprocess.run(stdout=sys.stdout)``) gets the one under it from ``fileno()``;
- with a console log (a terminal, most likely), their text is written as it comes, as it is, through a stream
  that never blocks and never raises (:func:`~krt_runner.logging.never_blocking`, as the log's own): a
  terminal paused or a pipe closed (``krt-runner run | head -1``) neither stops the node nor fails a request;
- warnings are logged by ``py.warnings`` (``logging.captureWarnings``), once per place as Python shows them, and a
  thread's uncaught exception by ``threading``, its traceback in the line.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import io
import logging
import os
import re
import sys
import threading
from typing import Any, TextIO

from krt_runner.logging import never_blocking

# Bytes of a line kept waiting for its end: past them, what came is logged as it is (no unbounded buffer).
LONGEST_LINE = 8192
_LINE_END = re.compile(rb"[\r\n]")


def capture_output(*, json_log: bool) -> None:
    """Route ``sys.stdout``, ``sys.stderr``, warnings and threads' exceptions through the node's log (see above)."""
    if json_log:
        sys.stdout = _text_stream(_LinesToLogging("stdout", logging.INFO, sys.stdout))
        sys.stderr = _text_stream(_LinesToLogging("stderr", logging.WARNING, sys.stderr))
        _fresh_streams_in_forks()
    else:
        sys.stdout = _text_stream(_TextAsItComes(sys.stdout))
        sys.stderr = _text_stream(_TextAsItComes(sys.stderr))
    logging.captureWarnings(True)
    threading.excepthook = _log_thread_exception


def _text_stream(raw: _LinesToLogging | _TextAsItComes) -> TextIO:
    stream = io.TextIOWrapper(_Passthrough(raw), encoding="utf-8", errors="replace",
                              line_buffering=True, write_through=True)
    stream.mode = "w"  # type: ignore[misc]  # as open() sets it on the streams it makes
    return stream


@functools.cache  # once per process
def _fresh_streams_in_forks() -> None:
    os.register_at_fork(after_in_child=_fresh_streams)


def _fresh_streams() -> None:
    """In a forked child: streams of its own. A thread of the parent may have been in the middle of a line at the
    fork, holding a stream's lock, which no thread of the child would ever release: its first print() would wait for
    ever."""
    for name in ("stdout", "stderr"):
        raw = getattr(getattr(getattr(sys, name), "buffer", None), "raw", None)
        if isinstance(raw, _LinesToLogging):
            setattr(sys, name, _text_stream(_LinesToLogging(name, raw.level, raw.under)))


def _log_thread_exception(args: Any) -> None:
    if args.exc_type is SystemExit:
        return  # as Python's own hook: a thread that exits quietly
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("threading").error("uncaught exception in thread %s", name,
                                         exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


class _Passthrough(io.BufferedIOBase):
    """What a text stream writes through to: its bytes handed to ``raw`` at once. Not an ``io.BufferedWriter``,
    whose lock is held while ``raw`` logs a line: a daemon thread printing at interpreter exit made it a fatal
    error, and a fork while one printed left the child that lock held for ever."""

    def __init__(self, raw: _LinesToLogging | _TextAsItComes) -> None:
        super().__init__()
        self.raw = raw

    @property
    def name(self) -> str:
        return self.raw.name

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()

    def fileno(self) -> int:
        return self.raw.fileno()

    def isatty(self) -> bool:
        return self.raw.isatty()


class _LinesToLogging(io.RawIOBase):
    """Bytes whose every line becomes a log line of ``name`` at ``level``.

    Its lines go to the handlers the root logger had when the node started serving (the node's log), not to those
    of the moment. A line written while one is being logged goes to the stream under, as it is, rather than round
    and round.
    """

    def __init__(self, name: str, level: int, under: TextIO) -> None:
        super().__init__()
        self.under = under
        self.name = getattr(under, "name", f"<{name}>")  # what TextIOWrapper.name shows
        self._logger = logging.getLogger(name)
        self._logger.setLevel(level)  # printed whatever KRT_LOG_LEVEL: print() is not a log level, it is output
        # Straight to the node's log: a handler of the user's on the root logger that writes to sys.stderr
        # (logging.basicConfig(force=True)) would otherwise write each line back into this stream.
        self._logger.handlers = list(logging.getLogger().handlers)
        self._logger.propagate = False
        self.level = level
        self._partial = b""
        self._lock = threading.Lock()
        self._inside = threading.local()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.under.fileno()

    def isatty(self) -> bool:
        return False

    def write(self, data: Any) -> int:
        data = bytes(data)
        with self._lock:
            *lines, rest = _LINE_END.split(self._partial + data)
            if len(rest) > LONGEST_LINE:
                lines.append(rest)
                rest = b""
            self._partial = rest
        for line in lines:
            self._log(line)
        return len(data)

    def flush(self) -> None:
        with self._lock:
            rest, self._partial = self._partial, b""
        self._log(rest)

    def _log(self, line: bytes) -> None:
        if not line:
            return
        text = line.decode("utf-8", "replace")
        if getattr(self._inside, "now", False):
            with contextlib.suppress(OSError, ValueError):  # gone: dropped, as the log's own stream drops
                self.under.write(text + "\n")
            return
        self._inside.now = True
        try:
            self._logger.log(self.level, text)
        finally:
            self._inside.now = False


class _TextAsItComes(io.RawIOBase):
    """Bytes written to the stream ``under`` as they come, by a never-blocking stream (a console log's
    ``print()``); a character that ``sys.stdout.buffer`` was given in parts is written once whole."""

    def __init__(self, under: TextIO) -> None:
        super().__init__()
        with contextlib.suppress(OSError, ValueError):  # what was printed before goes first
            under.flush()
        self.under = under
        self.name = getattr(under, "name", "<stdout>")
        self._stream = never_blocking(under)
        self._fresh()
        os.register_at_fork(after_in_child=self._fresh)  # a lock a parent's thread held at the fork is never freed

    def _fresh(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.under.fileno()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def write(self, data: Any) -> int:
        data = bytes(data)
        with self._lock:
            self._stream.write(self._decoder.decode(data))
        return len(data)

    def flush(self) -> None:
        self._stream.flush()
