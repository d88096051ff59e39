"""An event loop on a daemon thread, whose coroutines become futures that plain threads wait for (or await)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Generator, Iterable, Iterator
from typing import Any, TypeVar, cast

from krt_runner.errors import CallError, KrtRunnerError

T = TypeVar("T")
# Seconds closing waits for what still runs on the loop.
CLOSE_TIMEOUT = 120.0
_OWN_THREAD = ("{what} on the KRT's own thread (in a future's done callback, which runs there) would wait for "
               "itself and hold up every request: do it from another thread")


class Future(concurrent.futures.Future[T]):
    """A request in flight: ``result(timeout)``, ``done()``, ``exception()``; ``await future`` in async code."""

    # The message class its answer is, for a workflow's submit(): another workflow's submit() takes the future as its
    # request when that is the class it takes.
    answer_type: type[Any] | None = None
    loop_thread: threading.Thread | None = None  # the thread its done callbacks run on, which must not wait on it

    def result(self, timeout: float | None = None) -> T:
        self._not_on_its_thread()
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._not_on_its_thread()
        return super().exception(timeout)

    def _not_on_its_thread(self) -> None:
        if self.loop_thread is threading.current_thread() and not self.done():
            raise KrtRunnerError(_OWN_THREAD.format(what="waiting for a request's answer"))

    def __await__(self) -> Generator[Any, None, T]:
        return asyncio.wrap_future(self).__await__()


class LoopThread:
    """An event loop on a daemon thread; coroutines handed to it become :class:`Future` objects."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._tasks: set[asyncio.Task[Any]] = set()  # strong references until each is settled
        self._calls: set[asyncio.Task[Any]] = set()  # the requests, failed together by fail_calls
        self.failure: CallError | None = None  # why pending requests were cut short
        self._thread = threading.Thread(target=self.loop.run_forever, name="krt-futures", daemon=True)
        self._thread.start()

    def submit(self, coroutine: Coroutine[Any, Any, T], *, call: bool = False) -> Future[T]:
        future: Future[T] = Future()
        future.loop_thread = self._thread
        self.loop.call_soon_threadsafe(self._start, coroutine, future, call)
        return future

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if threading.current_thread() is self._thread:
            coroutine.close()
        self.refuse_on_its_thread("closing the KRT")
        return self.submit(coroutine).result(timeout)

    def refuse_on_its_thread(self, what: str) -> None:
        """:class:`KrtRunnerError` on the loop's own thread (where a future's done callback runs): ``what`` would
        wait for that very thread."""
        if threading.current_thread() is self._thread:
            raise KrtRunnerError(_OWN_THREAD.format(what=what))

    def _start(self, coroutine: Coroutine[Any, Any, T], future: Future[T], call: bool) -> None:
        if not future.set_running_or_notify_cancel():  # cancelled before it started
            coroutine.close()
            return
        if call and self.failure is not None:
            coroutine.close()
            future.set_exception(self.failure)
            return
        task = self.loop.create_task(coroutine)
        self._tasks.add(task)
        if call:
            self._calls.add(task)
        task.add_done_callback(lambda done: self._settle(done, future))

    def _settle(self, task: asyncio.Task[T], future: Future[T]) -> None:
        self._tasks.discard(task)
        self._calls.discard(task)
        if task.cancelled():
            future.set_exception(self.failure or CallError("cancelled"))
        elif (error := task.exception()) is not None:
            future.set_exception(error)
        else:
            future.set_result(task.result())

    def fail_calls(self, failure: CallError) -> None:
        """On the loop thread: fail every pending request, and every later one, with ``failure``."""
        self.failure = self.failure or failure
        for task in self._calls:
            task.cancel()

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.run(self._cancel_all(), timeout=CLOSE_TIMEOUT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()

    async def _cancel_all(self) -> None:
        """Whatever is still running when the KRT closes (normally nothing) is cancelled and awaited."""
        current = asyncio.current_task()
        pending = [task for task in self._tasks if task is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


def wait(
    futures: Iterable[Future[T]], *, timeout: float | None = None, return_when: str = concurrent.futures.ALL_COMPLETED
) -> tuple[set[Future[T]], set[Future[T]]]:
    """Wait for ``futures``: ``(done, not_done)``, as :func:`concurrent.futures.wait`.

    ``return_when``: ``concurrent.futures.ALL_COMPLETED`` (default), ``FIRST_COMPLETED`` or ``FIRST_EXCEPTION``.
    """
    futures = _not_on_their_thread(futures)
    done, pending = concurrent.futures.wait(futures, timeout=timeout, return_when=return_when)
    return cast(set[Future[T]], done), cast(set[Future[T]], pending)


def as_completed(futures: Iterable[Future[T]], *, timeout: float | None = None) -> Iterator[Future[T]]:
    """Yield ``futures`` as they finish, as :func:`concurrent.futures.as_completed`."""
    return cast(Iterator[Future[T]], concurrent.futures.as_completed(_not_on_their_thread(futures), timeout=timeout))


def _not_on_their_thread(futures: Iterable[Future[T]]) -> list[Future[T]]:
    """``futures`` as a list; :class:`KrtRunnerError` in a done callback that would wait for one not done."""
    waited = list(futures)
    for future in waited:
        if isinstance(future, Future):
            future._not_on_its_thread()
    return waited
