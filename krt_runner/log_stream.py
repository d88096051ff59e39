"""The stream log lines are written to: it never raises and never blocks the code that logs.

A line is written at once, on the caller's thread, when the stream can take it without blocking (nothing waiting
before it, and the file descriptor writable for a line up to ``PIPE_BUF``, checked and written under one lock for
all the process's streams, which may share a pipe): so the lines a process writes just before it dies
(``os._exit``, a crash) are out. On a terminal, select() calls it writable with less room than a line, and a write
there blocks while it is paused (Ctrl-S, a stalled ssh session): a line goes at once through a non-blocking file of
the stream's own on the terminal (the flag on the stream's own descriptor would be the shell's too), and what it
does not take waits. Otherwise (a reader that stopped reading: a stalled log shipper, a full pipe) it waits for a
writer thread of its own, up to :data:`MAX_QUEUED` characters; past them, lines are dropped and counted, and a line
says how many once the stream moves again. A stream that is gone (a closed pipe, a full disk) drops everything
quietly. The writer thread holds no lock of the stream's while it is blocked, so the interpreter's exit never waits
for it.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import json
import os
import select
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

# Characters of log text that may wait for a stream that does not move; past them, lines are dropped.
MAX_QUEUED = 1 << 20
# Seconds the process's exit waits for the lines still waiting.
_EXIT_WAIT = 2.0
# A write this small to a pipe select() calls writable completes without blocking (POSIX's PIPE_BUF, Linux's page).
_ATOMIC_WRITE = select.PIPE_BUF
_STREAMS: list[NeverBlockingStream] = []  # every one made: at exit, they wait for their last lines together
_WRITING_AT_ONCE = threading.Lock()  # a caller's check that a descriptor can take a line, and its write


def _unlocked_in_child() -> None:
    """In a forked worker: held by another thread of the parent at the fork, the lock would never be released."""
    if _WRITING_AT_ONCE.locked():
        _WRITING_AT_ONCE.release()  # a plain lock may be released by any thread


os.register_at_fork(after_in_child=_unlocked_in_child)


class NeverBlockingStream:
    """A text stream for structlog's ``PrintLogger`` and logging's ``StreamHandler``; see the module's docstring."""

    def __init__(self, stream: TextIO, *, identity: Callable[[], dict[str, str]] = dict,
                 notice: Callable[[dict[str, object]], str] = json.dumps) -> None:
        """``identity``: the fields that name the process (node, workflow, version) in the line saying how many
        lines were dropped; ``notice`` renders that line (JSON by default, as the log's own renderer would)."""
        self._stream = stream
        self._identity = identity
        self._notice = notice
        try:
            self._descriptor: int | None = stream.fileno()
        except (OSError, ValueError, AttributeError):  # no file under it (a StringIO): written as it comes
            self._descriptor = None
        self._at_once_descriptor = self._descriptor
        if self._descriptor is not None and os.isatty(self._descriptor):  # (see the module)
            self._at_once_descriptor = _nonblocking_twin(self._descriptor)
        self._start()
        _STREAMS.append(self)
        os.register_at_fork(after_in_child=self._start_in_child)

    def _start_in_child(self) -> None:
        """A handler's forked worker: a lock and a thread of its own, and its lines written before it ends.
        multiprocessing ends its workers with ``os._exit``, past ``atexit``; its own finalizers run first."""
        self._start()
        util = sys.modules.get("multiprocessing.util")
        if util is not None:  # a finalizer registered now would be cleared as the worker starts: registered then
            util.register_after_fork(self, _written_before_the_worker_ends)

    def _start(self) -> None:
        self._lock = threading.Lock()
        self._partial_lock = threading.Lock()
        self._partial: list[str] = []  # print() writes a line, then its newline
        self._waiting: list[bytes] = []
        self._size = 0
        self._writing = False  # the writer thread has lines out of the list, being written
        self._dropped = 0  # lines, since the last notice
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        threading.Thread(target=self._write_forever, name="krt-log", daemon=True).start()

    def write(self, text: str) -> int:
        with self._partial_lock:  # structlog and logging each hold a lock of their own, not this one
            self._partial.append(text)
            if not text.endswith("\n"):
                return len(text)
            line, self._partial = "".join(self._partial), []
        self._emit(line)
        return len(text)

    def flush(self) -> None:
        with self._partial_lock:
            line, self._partial = "".join(self._partial), []
        if line:
            self._emit(line)

    def _emit(self, text: str) -> None:
        if self._descriptor is None:
            with contextlib.suppress(OSError, ValueError):
                self._stream.write(text)
                self._stream.flush()
            return
        self._line(text.encode("utf-8", "replace"))

    def isatty(self) -> bool:
        try:
            return self._stream.isatty()
        except (OSError, ValueError):
            return False

    def wait_written(self, timeout: float) -> None:
        """Until what waits is written (at exit: the last lines), for at most ``timeout`` seconds."""
        self._idle.wait(timeout)

    def _line(self, data: bytes) -> None:
        with self._lock:
            if (self._at_once_descriptor is not None and not self._waiting and not self._writing
                    and len(data) <= _ATOMIC_WRITE):
                data = self._written_now(data)
                if not data:
                    return
            if self._size + len(data) > MAX_QUEUED and self._waiting:  # one line alone waits, however long
                self._dropped += 1
                self._wake.set()  # the notice goes out as soon as the stream moves
                return
            self._waiting.append(data)
            self._size += len(data)
            self._idle.clear()
        self._wake.set()

    def _written_now(self, data: bytes) -> bytes:
        """What is left of ``data`` once written at once as far as the descriptor takes it without blocking. Checked
        and written under one lock for every stream of the process: two streams on one pipe (stdout's and stderr's)
        that both saw its last free room would otherwise both write, and the second block its caller for as long as
        the pipe stays full."""
        assert self._at_once_descriptor is not None
        with _WRITING_AT_ONCE:
            if self._at_once_descriptor != self._descriptor:  # a terminal's non-blocking twin
                try:
                    return data[os.write(self._at_once_descriptor, data):]
                except BlockingIOError:
                    return data
                except OSError:  # gone: dropped
                    return b""
            try:
                if not select.select([], [self._at_once_descriptor], [], 0)[1]:
                    return data
            except (OSError, ValueError):
                pass  # let the write say what is wrong
            with contextlib.suppress(OSError):  # gone: dropped
                _write_all(self._at_once_descriptor, data)
        return b""

    def _write_forever(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                lines, self._waiting, self._size = self._waiting, [], 0
                dropped, self._dropped = self._dropped, 0
                self._writing = True
            if dropped:
                notice = {**self._identity(), "event": "log lines dropped: the log stream did not keep up",
                          "dropped": dropped, "level": "warning",
                          "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")}
                lines.insert(0, (self._notice(notice) + "\n").encode())
            with contextlib.suppress(OSError):
                _write_lines(self._descriptor, lines)
            with self._lock:
                self._writing = False
                if self._waiting:
                    self._wake.set()
                else:
                    self._idle.set()


def _nonblocking_twin(terminal: int) -> int | None:
    """A file of its own on the terminal ``terminal`` is, non-blocking; ``None`` when it cannot be opened."""
    try:
        return os.open(os.ttyname(terminal), os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None


def _write_lines(descriptor: int | None, lines: list[bytes]) -> None:
    """Whole lines in writes of at most ``PIPE_BUF`` bytes where they fit (a pipe takes each whole, so another
    process writing to it, a handler's forked worker, never lands inside a line); a longer line alone."""
    chunk: list[bytes] = []
    size = 0
    for line in lines:
        if chunk and size + len(line) > _ATOMIC_WRITE:
            _write_all(descriptor, b"".join(chunk))
            chunk, size = [], 0
        chunk.append(line)
        size += len(line)
    if chunk:
        _write_all(descriptor, b"".join(chunk))


def _write_all(descriptor: int | None, data: bytes) -> None:
    assert descriptor is not None
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view):]


@atexit.register
def _written_at_exit() -> None:
    """The last lines of every stream, within :data:`_EXIT_WAIT` seconds for them all (streams stalled alike, such
    as a paused terminal's log and print() streams, do not wait each their own)."""
    deadline = time.monotonic() + _EXIT_WAIT
    for stream in _STREAMS:
        stream.wait_written(max(0.0, deadline - time.monotonic()))


def _written_before_the_worker_ends(stream: NeverBlockingStream) -> None:
    util = sys.modules["multiprocessing.util"]
    util.Finalize(stream, stream.wait_written, args=(_EXIT_WAIT,), exitpriority=0)
