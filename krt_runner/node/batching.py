"""Dynamic batching: the requests of a node with a batch function are handled in batches, one call per batch.

A job that would call the handler joins a batch instead (:meth:`Batcher.step`,
the pipeline's step) and awaits its own result; decoding, answers, tracking,
measurements, drain and error answers stay the pipeline's. Nothing here knows how
messages arrive: the intake only has to take up to :attr:`Batcher.capacity` at once.

The dispatch rule: at most ``KRT_CONCURRENCY`` batches run at once, and a batch is called

- when it is full (``KRT_BATCH_MAX_SIZE`` requests), as soon as a slot is free;
- when no batch is running: at the end of the event loop's pass in which its first request arrived, with the
  requests that arrived in the same pass (those one read of the socket brought). A lone request on an idle node
  waits for nothing more than that pass;
- when another batch is running and a slot is free (``KRT_CONCURRENCY`` above 1): once its first request has waited
  ``KRT_BATCH_MAX_WAIT_MS``, unless it fills first;
- when every slot is taken: as soon as a running batch ends, with the requests that arrived meanwhile. So batches
  grow with the load and shrink with it, and at ``KRT_CONCURRENCY=1`` no request ever waits for a timer.

A stopping node's requests go through the same rule: a partial batch is called, never dropped.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from krt_runner.config import DEFAULT_BATCH_MAX_SIZE, Settings
from krt_runner.errors import BatchResultError, describe
from krt_runner.node.batch_code import BatchCode
from krt_runner.node.batch_context import BatchContext
from krt_runner.node.batch_results import answerable, item_error, outcomes, timeout_errors, whole_batch_errors
from krt_runner.node.calling import USER_CODE_FAILURES, Caller
from krt_runner.node.context import NodeState
from krt_runner.node.job import Job
from krt_runner.node.request_types import unpack_request
from krt_runner.node.user_code import UserCode
from krt_runner.setting_values import MAX_REQUESTS_HELD


def batcher_for(settings: Settings, code: UserCode, *, caller: Caller, state: NodeState, log: Any) -> Batcher | None:
    """The node's batcher, or ``None`` when it calls its code once per request (no batch function, or
    ``KRT_BATCH_MAX_SIZE=1``)."""
    size = settings.batch_max_size
    if code.batch is None:
        if size is not None and size > 1:
            log.warning(f"KRT_BATCH_MAX_SIZE={size} is ignored: {code.source} defines no handler_batch(ctx, requests) "
                        "and no Processor.process_batch(self, ctx, requests)")
        return None
    if size is None:  # the default, within what a node may hold at once (KRT_BATCH_MAX_SIZE x (KRT_CONCURRENCY + 1))
        size = max(1, min(DEFAULT_BATCH_MAX_SIZE, MAX_REQUESTS_HELD // (settings.concurrency + 1)))
    if size == 1:
        return None
    log.info("requests are handled in batches", batch_function=code.batch.name, batch_max_size=size,
             batch_max_wait_ms=settings.batch_max_wait_ms, concurrency=settings.concurrency)
    return Batcher(code.batch, caller=caller, state=state, max_size=size, max_wait=settings.batch_max_wait_ms / 1000,
                   concurrency=settings.concurrency, timeout=settings.handler_timeout, log=log,
                   debug=settings.log_level == "debug")


class _Batch:
    """Requests waiting for, or in, one call of the batch function; each with its job and the future it awaits."""

    __slots__ = ("futures", "jobs", "opened_at", "requests")

    def __init__(self, opened_at: float) -> None:
        self.opened_at = opened_at  # the event loop's clock when its first request joined
        self.jobs: list[Job] = []
        self.requests: list[Any] = []
        self.futures: list[asyncio.Future[Any]] = []

    def add(self, job: Job, request: Any, future: asyncio.Future[Any]) -> None:
        self.jobs.append(job)
        self.requests.append(request)
        self.futures.append(future)

    def waiting(self) -> _Batch:
        """Itself without the requests nobody awaits any more (the drain gave up on them)."""
        if not any(future.done() for future in self.futures):
            return self
        kept = _Batch(self.opened_at)
        for job, request, future in zip(self.jobs, self.requests, self.futures, strict=True):
            if not future.done():
                kept.add(job, request, future)
        return kept


class _TimedOut(Exception):
    """The batch function outlasted ``KRT_HANDLER_TIMEOUT``."""


class _Raised:
    """What the batch function raised, carried past ``wait_for`` (whose own TimeoutError is then the timeout's)."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Batcher:
    """Collects the node's requests into batches and calls the batch function for each (see the module)."""

    def __init__(
        self, batch: BatchCode, *, caller: Caller, state: NodeState, max_size: int, max_wait: float, concurrency: int,
        timeout: float | None, log: Any, debug: bool = False,
    ) -> None:  # fmt: skip
        self._function = batch.call
        self._name = batch.name
        self._request_type = batch.request_type
        self._caller = caller
        self._state = state
        self._max_size = max_size
        self._max_wait = max_wait
        self._concurrency = concurrency
        self._timeout = timeout
        self._log = log
        self._debug = debug
        # Requests the node may hold at once: the batches running, and a full one collecting meanwhile.
        self.capacity = (concurrency + 1) * max_size
        self.calls = 0  # batch function calls so far
        self._open: _Batch | None = None  # collecting requests
        self._full: deque[_Batch] = deque()  # full, waiting for a slot
        self._running = 0
        self._fill_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # the running batches' (strong references)
        self._closing = False

    async def step(self, job: Job) -> Any:
        """In place of the handler's call: this job's request joins a batch; its own result (or error) comes back."""
        request = job.request
        assert request is not None
        data: Any = request.payload
        if self._request_type is not None:
            data = unpack_request(data, self._request_type)  # an invalid one is answered without joining a batch
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._join(job, data, future, loop)
        return await future

    def close(self) -> None:
        """The node is closing: no batch is called any more, and the running ones are cancelled."""
        self._closing = True
        self._cancel_timer()
        for task in list(self._tasks):
            task.cancel()

    # -- collecting ---------------------------------------------------------------------------

    def _join(self, job: Job, data: Any, future: asyncio.Future[Any], loop: asyncio.AbstractEventLoop) -> None:
        batch = self._open
        if batch is None:
            batch = self._open = _Batch(loop.time())
        batch.add(job, data, future)
        if len(batch.jobs) >= self._max_size:
            self._open = None
            self._full.append(batch)
        if not self._fill_scheduled:  # once per pass: the requests that arrive in this pass join first
            self._fill_scheduled = True
            loop.call_soon(self._fill)

    def _fill(self) -> None:
        """Call as many batches as the dispatch rule allows now; arm the timer for one that must wait."""
        self._fill_scheduled = False
        if self._closing:
            return
        while self._running < self._concurrency:
            batch = self._next()
            if batch is None:
                break
            self._start(batch.waiting())
        open_batch = self._open
        if open_batch is not None and self._timer is None and self._running < self._concurrency:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(open_batch.opened_at + self._max_wait, self._on_timer)

    def _next(self) -> _Batch | None:
        if self._full:
            return self._full.popleft()
        batch = self._open
        if batch is None:
            return None
        if self._running and asyncio.get_running_loop().time() - batch.opened_at < self._max_wait:
            return None  # another batch is running: this one may wait a little for more requests
        self._open = None
        self._cancel_timer()
        return batch

    def _on_timer(self) -> None:
        self._timer = None
        self._fill()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- calling ------------------------------------------------------------------------------

    def _start(self, batch: _Batch) -> None:
        if not batch.jobs:
            return  # never a call with zero requests
        self._running += 1
        self.calls += 1
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: _Batch) -> None:
        count = len(batch.jobs)
        if self._debug:
            self._log.debug("batch called", size=count, tracking_ids=[job.tracking_id for job in batch.jobs])
        ctx = BatchContext(self._state, [job.tracking_id for job in batch.jobs])
        try:
            results = await self._outcomes(ctx, batch.requests, count)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the runner's own failure: each request still gets an answer
            results = [RuntimeError(f"internal error making the batch's answers: {describe(exc)}")
                       for _ in range(count)]
        finally:
            self._running -= 1
            self._fill()  # the next batch starts before this one's answers go out
        for future, result in zip(batch.futures, results, strict=True):
            if future.done():  # the drain gave up on this request: it was answered already
                continue
            if isinstance(result, Exception):
                future.set_exception(item_error(self._name, result))
            else:
                future.set_result(result)

    async def _outcomes(self, ctx: BatchContext, requests: list[Any], count: int) -> list[Any]:
        """One outcome per request: its result, or the exception its error answer is made from."""
        try:
            return answerable(self._name, outcomes(self._name, await self._returned(ctx, requests), count))
        except BatchResultError as exc:
            text = str(exc)
            return [BatchResultError(text) for _ in range(count)]
        except _TimedOut:
            assert self._timeout is not None
            return timeout_errors(self._name, self._timeout, count)
        except asyncio.CancelledError as exc:
            if self._closing:
                raise
            return whole_batch_errors(self._name, exc, count)  # the batch function's own: the node goes on
        except USER_CODE_FAILURES as exc:  # any, a BaseException of the user's own included
            return whole_batch_errors(self._name, exc, count)

    async def _returned(self, ctx: BatchContext, requests: list[Any]) -> Any:
        """What the batch function returned; what it raised; :class:`_TimedOut` past ``KRT_HANDLER_TIMEOUT``."""
        call = self._caller.call(self._function, ctx, requests)
        if self._timeout is None:
            return await call
        try:
            returned = await asyncio.wait_for(_caught(call), self._timeout)
        except asyncio.TimeoutError:
            raise _TimedOut from None
        if isinstance(returned, _Raised):
            raise returned.exc
        return returned


async def _caught(call: Any) -> Any:
    try:
        return await call
    except asyncio.CancelledError:
        raise
    except USER_CODE_FAILURES as exc:
        return _Raised(exc)
