"""A process that has done its work exits, whatever threads its user's code left running.

Python waits at exit for every thread not made a daemon: a library's poller started at import would keep a stopped
node alive for ever. :func:`exit_within` lets the interpreter's own shutdown go first (a ``ThreadPoolExecutor``
finishes the work queued on it, as in any Python program) and, should threads the code started still be running
``seconds`` later, runs the exit handlers and exits with the process's exit code, naming those threads.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
import time

# Seconds given to such threads when the code did no work yet (its module failed to load, a stop during start-up).
SHORT_GRACE = 2.0
_POLL = 0.05
_WATCHING: list[int] = []  # the exit code watched for, once one is


def exit_within(exit_code: int, seconds: float) -> None:
    """Call as the process is about to exit with ``exit_code``: see the module's docstring. The first call decides
    (a node's after serving gives the drain's time, a caller's after it is for what exited earlier)."""
    if _WATCHING or not _their_threads():
        return
    _WATCHING.append(exit_code)
    threading.Thread(target=_watch, args=(exit_code, seconds), name="krt-exit", daemon=True).start()


def _their_threads() -> list[str]:
    return [thread.name for thread in threading.enumerate()
            if thread.is_alive() and not thread.daemon and thread is not threading.main_thread()]


def _watch(exit_code: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(_POLL)
        if not _their_threads():
            return  # Python's own exit goes on
    running = _their_threads()
    logging.getLogger("krt_runner").warning(
        "exiting without waiting for threads the node's code started, still running %gs after its work ended: %s",
        seconds, ", ".join(running[:10]))
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    atexit._run_exitfuncs()
    os._exit(exit_code)
