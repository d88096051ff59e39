"""Threads that run sync user code for the event loop and answer into asyncio futures.

A call is a tuple on a C queue, and the thread hands its outcome straight to
the caller's asyncio future with one ``call_soon_threadsafe``: a fraction of
what ``concurrent.futures`` awaited through ``asyncio.wrap_future`` costs per
call (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any

# A call: the future that gets its outcome, that future's loop, the function and its arguments.
_Call = tuple[asyncio.Future[Any], asyncio.AbstractEventLoop, Callable[..., Any], tuple[Any, ...]]


class WorkerThreads:
    """Up to ``size`` daemon threads named ``<name>_<n>``, started as calls need them.

    :meth:`call` must be called on the event loop's thread. A call whose
    future is cancelled before a thread takes it is skipped; one already
    running cannot be stopped: :meth:`started` tells the two apart.
    """

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._unsettled = 0  # calls handed over and not yet settled; counted on the event loop's thread only
        self._started: set[asyncio.Future[Any]] = set()  # calls running on a thread now
        self._closed = False

    def call(self, function: Callable[..., Any], args: tuple[Any, ...]) -> asyncio.Future[Any]:
        """A future for ``function(*args)``, run on one of the threads."""
        if self._closed:
            raise RuntimeError("worker threads are closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._unsettled += 1
        if self._unsettled > len(self._threads) and len(self._threads) < self._size:  # every thread is taken
            self._start_thread()
        self._calls.put((future, loop, function, args))
        return future

    def started(self, future: asyncio.Future[Any]) -> bool:
        """Whether the call behind ``future`` has begun on a thread (and, if so, not yet ended)."""
        return future in self._started

    def close(self) -> None:
        """Cancel the calls no thread has taken; each thread ends after the call it is running, if any."""
        self._closed = True
        while True:
            try:
                waiting = self._calls.get_nowait()
            except queue.Empty:
                break
            if waiting is not None:
                waiting[0].cancel()
        self.retire()

    def retire(self) -> None:
        """Let the threads end once they have run the calls already handed over (a stuck one ends with the
        process: they are daemon threads)."""
        for _ in self._threads:
            self._calls.put(None)

    def _start_thread(self) -> None:
        thread = threading.Thread(target=self._serve, name=f"{self._name}_{len(self._threads)}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _serve(self) -> None:
        take, started = self._calls.get, self._started
        while (work := take()) is not None:
            future, loop, function, args = work
            started.add(future)  # before the check: a call cancelled from now on counts as started (see started())
            if future.cancelled():  # skipped: _settle finds the future done
                started.discard(future)
                outcome: tuple[bool, Any] = (False, None)
            else:
                try:
                    outcome = (True, function(*args))
                except BaseException as exc:  # as concurrent.futures: the caller decides what to do with it
                    outcome = (False, exc)
                finally:
                    started.discard(future)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits for this outcome any more
                loop.call_soon_threadsafe(self._settle, future, *outcome)

    def _settle(self, future: asyncio.Future[Any], ok: bool, value: Any) -> None:
        self._unsettled -= 1
        if future.done():  # cancelled meanwhile (a timeout, a shutdown)
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(_raisable(value))


def _raisable(exc: BaseException) -> BaseException:
    """What the awaiting coroutine can be given in place of ``exc``. asyncio futures refuse StopIteration (it would
    end the awaiting coroutine): reported as Python does in a generator (PEP 479). GeneratorExit, thrown into the
    awaiting coroutines by their task, would close each of them rather than reach their ``except``: reported the same
    way."""
    if isinstance(exc, (StopIteration, GeneratorExit)):
        name = type(exc).__name__
        error = RuntimeError(f"{name}: {exc}" if str(exc) else name)
        error.__cause__ = exc
        return error
    return exc
