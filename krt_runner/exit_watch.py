"""A process that has done its work exits, whatever threads its user's code left running.

Python waits at exit for every thread not made a daemon (a library's poller started at import would keep a stopped
node alive for ever), and for every ``ThreadPoolExecutor``'s threads, daemons or not (a job that never ends, the
same). :func:`exit_within` lets the interpreter's own shutdown go first (an executor finishes the work queued on it,
as in any Python program) and, should it still be waiting ``seconds`` later, or a stop signal come meanwhile, runs
the exit handlers and exits with the process's exit code, naming the threads still running.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

# Seconds given to such threads when the code did no work yet (its module failed to load, a stop during start-up),
# and at least: past the log streams' own wait for their last lines (log_stream._EXIT_WAIT).
SHORT_GRACE = 3.0
_PAST_THE_JOINS = "the exit handlers run"  # in _WATCHING once Python's waits for threads are over


def exit_within(exit_code: int, seconds: float) -> None:
    """Call from the main thread as the process is about to exit with ``exit_code``: see the module's docstring.
    The first call decides (a node's after serving, a caller's after it is for what exited earlier)."""
    if _WATCHING:
        return
    _WATCHING.append(exit_code)
    atexit.register(_WATCHING.append, _PAST_THE_JOINS)  # atexit runs after the joins, this first among its own
    for signum in (signal.SIGTERM, signal.SIGINT):  # a second stop ends the wait at once
        signal.signal(signum, lambda *_: _stopped_again(exit_code))
    watch = threading.Thread(target=_watch, args=(exit_code, max(seconds, SHORT_GRACE)), name="krt-exit",
                             daemon=True)
    watch.start()


_WATCHING: list[Any] = []  # the exit code watched for, once one is; then _PAST_THE_JOINS


def _watch(exit_code: int, seconds: float) -> None:
    time.sleep(seconds)  # Python's own exit goes on meanwhile; when it ends, this thread ends with it
    if _PAST_THE_JOINS not in _WATCHING:
        _leave(exit_code, f"still running {seconds:g}s after its work ended")


def _stopped_again(exit_code: int) -> None:
    if _PAST_THE_JOINS in _WATCHING:  # the exit handlers are running: they are not run twice
        os._exit(exit_code)
    _leave(exit_code, "a stop signal came")


def _leave(exit_code: int, why: str) -> None:
    running = [thread.name for thread in threading.enumerate() if thread.is_alive()
               and thread is not threading.current_thread() and thread is not threading.main_thread()
               and not thread.name.startswith("krt-")]
    logging.getLogger("krt_runner").warning(
        "exiting without waiting for threads the node's code started (%s): %s", why, ", ".join(running[:10]) or "-")
    flush_std_streams()
    atexit._run_exitfuncs()
    os._exit(exit_code)


def flush_std_streams() -> None:
    """What ``sys.stdout`` and ``sys.stderr`` hold, out before an ``os._exit``, whatever became of them."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
