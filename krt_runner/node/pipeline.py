"""One message through the node: decode, call the handler, answer, or answer with an error; then record.

Every path of :meth:`Pipeline.handle` ends in exactly one answer, or, when
there is no reply subject anywhere, in a logged drop. Bad input gets the same
policy as a failing handler: it is decoded inside the same try.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

from google.protobuf.message import Message

from krt_runner import envelope
from krt_runner.config import Settings
from krt_runner.errors import DrainTimeoutError, EnvelopeError, InvalidRequestError, ReplyError, describe
from krt_runner.measurements import NodePoints, Outcome
from krt_runner.node.answers import Answers, publishable
from krt_runner.node.batching import batcher_for
from krt_runner.node.broker import Broker
from krt_runner.node.calling import SAID_ALREADY, USER_CODE_FAILURES, Caller, as_handler_errors, handler_failure
from krt_runner.node.cancelling import uncancel
from krt_runner.node.context import HandlerContext, NodeState
from krt_runner.node.job import Job
from krt_runner.node.request_types import unpack_request
from krt_runner.node.tracebacks import logged_exception
from krt_runner.node.user_code import UserCode
from krt_runner.subjects import matcher

_ANSWERED, _INVALID, _FAILED = Outcome.ANSWERED, Outcome.INVALID, Outcome.FAILED


class Pipeline:
    """What the node does with each message; :meth:`handle` is called once per message by the intake."""

    def __init__(
        self, *, settings: Settings, code: UserCode, state: NodeState, broker: Broker, points: NodePoints,
        log: Any, name: str,
    ) -> None:  # fmt: skip
        self.log = log
        self.broker = broker
        self.state = state
        self.caller = Caller(workers=settings.concurrency)
        self.counts = {"received": 0, "answered": 0, "errors": 0, "dropped": 0}
        self.processing_ns = 0  # summed over every message handled, for the services API's stats
        self.last_error = ""
        self.last_received = time.perf_counter_ns()  # for KRT_IDLE_TIMEOUT
        self._answers = Answers(node_name=name, output_subject=settings.output_subject, broker=broker,
                                handler_name=code.handler_name)
        self._handler = code.handler
        self._request_type = code.request_type
        self._typed = code.request_type is not None  # an Any method called on its message gets a hint in its error
        self._handler_name = code.handler_name  # in its error answers
        self._timeout = settings.handler_timeout
        self._drain_timeout = settings.drain_timeout
        self._max_decompressed = settings.max_decompressed_bytes
        self._input = settings.input_subject
        self._listens_on = matcher(settings.input_subject)
        # With a batch function, a message joins a batch in place of the handler's call (krt_runner/node/batching.py).
        self._batcher = batcher_for(settings, code, caller=self.caller, state=state, log=log)
        # Messages the intake may hand over at once: KRT_CONCURRENCY, or enough to fill the batches.
        self.capacity = settings.concurrency if self._batcher is None else self._batcher.capacity
        # The handler called once per message, with no KRT_HANDLER_TIMEOUT:
        plain_calls = settings.handler_timeout is None and self._batcher is None
        # - a sync one is pipelined: one message more than there are threads is handled at once, so a thread goes
        #   from one call to the next without waiting for the event loop. (With a timeout, which counts from when a
        #   message's handling starts, a message starts when a thread is free.)
        self.pipelined = plain_calls and not code.handler_is_async
        # - an async one is awaited by handle() itself, with no coroutine of ours in between (about 2% of a
        #   message's instructions). Any other, and every message once give_up() ran, goes through self._step.
        self._direct = plain_calls and code.handler_is_async
        # self._refuse once the node gives up on what is left
        self._step = self._call_handler if self._batcher is None else self._batcher.step
        self._giving_up = False  # a message cancelled now is one the drain gave up on: it gets an error answer
        self.recorder = _Recorder(points, last_node=settings.is_last_node)
        self._measured = settings.measurements_enabled
        self._debug = settings.log_level == "debug"
        self._reply_early = self._early_reply  # made once: a context per message holds it, with its job

    async def handle(self, data: bytes, reply: str) -> None:
        """Process one message: every path ends in exactly one answer, or a logged drop."""
        self.counts["received"] += 1
        job = Job(reply)
        self.last_received = job.started
        outcome = _ANSWERED
        try:
            self._decode(job, data)
            if self._direct:  # as _call_handler does, inline
                ctx, payload = self._handler_args(job)
                try:
                    result = await self._handler(ctx, payload)
                except USER_CODE_FAILURES as exc:
                    raise self._handler_failure(exc)  # noqa: B904  (the failure carries its own cause)
                finally:
                    job.handler_done = True
            else:
                result = await self._step(job)
            waiting = self._publish_result(job, result)
            if waiting is not None:
                await waiting
            self.counts["answered"] += 1
        except (InvalidRequestError, EnvelopeError) as exc:  # refused before the handler ran
            outcome = _INVALID
            await self._answer_error(job, exc)
        except Exception as exc:
            outcome = _FAILED
            await self._answer_error(job, exc)
        except asyncio.CancelledError:
            if not self._giving_up:
                raise
            uncancel()  # this task goes on: to refuse the messages still waiting
            outcome = _FAILED
            when = "before this message was handled" if getattr(job, "queued", False) else "before its handler finished"
            await self._answer_error(job, DrainTimeoutError(self._drain_text(when)))
        finally:
            self._finish(job, outcome)

    def _finish(self, job: Job, outcome: Outcome) -> None:
        """The message's handling time, counted and (measurements on) recorded with its outcome."""
        elapsed = time.perf_counter_ns() - job.started
        self.processing_ns += elapsed
        if self._measured:
            self.recorder.record_soon(job, elapsed, outcome)

    # -- the drain's end ----------------------------------------------------------------------

    def give_up(self) -> None:
        """``KRT_DRAIN_TIMEOUT`` ran out: a handler cancelled from now on answers with an error, and a message not
        yet handled is refused with one."""
        self._giving_up = True
        self._direct = False
        self._step = self._refuse

    def close(self) -> None:
        """From now on a cancellation ends the task that handles a message, whatever it is doing."""
        self._giving_up = False
        if self._batcher is not None:
            self._batcher.close()
        self.caller.close()

    # -- the steps ----------------------------------------------------------------------------

    def _decode(self, job: Job, data: bytes) -> None:
        request = envelope.decode(data, max_decompressed=self._max_decompressed)
        job.request = request
        job.tracking_id = request.tracking_id
        job.tracking = request.tracking
        job.hops = len(job.tracking)
        if not job.reply:
            job.reply = publishable(request.reply)
        if job.reply and self._listens_on(job.reply):
            self._refuse_reply(job)
        if self._debug:
            self.log.debug("message received", tracking_id=job.tracking_id, bytes=len(data))

    def _handler_args(self, job: Job) -> tuple[HandlerContext, Any]:
        """The handler's ``ctx`` and ``data`` for this message (its payload, unpacked for a typed handler)."""
        assert job.request is not None
        ctx = HandlerContext(self.state, job.tracking_id, self._reply_early, job)
        data: Any = job.request.payload
        if self._request_type is not None:
            data = unpack_request(data, self._request_type)
        return ctx, data

    def _handler_failure(self, exc: BaseException) -> BaseException:
        """What an exception out of the handler's call is raised as: itself when it says what went wrong already (an
        invalid request, a handler error) or is the drain's cancellation, else :func:`handler_failure`'s."""
        if isinstance(exc, SAID_ALREADY):
            return exc
        if self._giving_up and isinstance(exc, asyncio.CancelledError):
            return exc  # the drain's cancellation, not the handler's own
        return handler_failure(exc, self._timeout, typed=self._typed, name=self._handler_name)

    async def _call_handler(self, job: Job) -> Any:
        ctx, data = self._handler_args(job)
        timeout = self._timeout
        try:
            if self.pipelined:
                job.queued = True  # until its thread starts on it
                return await self.caller.call(self._handler_from_now, job, ctx, data)
            if timeout is None:
                return await self.caller.call(self._handler, ctx, data)
            return await asyncio.wait_for(
                as_handler_errors(self.caller.call, self._handler, ctx, data, typed=self._typed,
                                  name=self._handler_name), timeout)
        except USER_CODE_FAILURES as exc:
            raise self._handler_failure(exc)  # noqa: B904  (the failure carries its own cause)
        finally:
            job.handler_done = True

    def _handler_from_now(self, job: Job, ctx: HandlerContext, data: Any) -> Any:
        """The sync handler, on its worker thread, with the message's clock restarted (see ``pipelined``)."""
        job.queued = False
        job.restart()
        return self._handler(ctx, data)

    def _publish_result(self, job: Job, result: Any) -> Awaitable[None] | None:
        """The answer to ``result``, queued for the flusher: ``None``, or, past nats-py's pending size, its write to
        await (see ``NodeClient.publish_now``)."""
        subject, answer = self._answers.for_result(job, result)
        if not subject:
            self._note_unsent(job)
            return None
        waiting = self.broker.publish_now(subject, answer)
        if self._debug:
            self.log.debug("answer published", tracking_id=job.tracking_id, subject=subject)
        return waiting

    def _read_heading(self, job: Job, heading: bytes) -> None:
        """An envelope refused as it inflated past the cap: its id and requester, from its leading fields (an envelope
        of their own), so that the error answer reaches the requester."""
        try:
            self._decode(job, heading)
        except EnvelopeError as exc:  # a reply subject refused, or fields that cannot be read
            self.log.warning(f"the refused message's own fields cannot be used: {exc}", tracking_id=job.tracking_id)

    def _refuse_reply(self, job: Job) -> None:
        """An answer to a subject this node listens on would come back to it, again and again: no answer at all."""
        refused, job.reply = job.reply, ""
        raise EnvelopeError(f"the reply subject {refused[:120]!r} is one this node listens on ({self._input}): "
                            "refused, its answer would come back to this node")

    async def _refuse(self, job: Job) -> Any:
        """In place of the handler once the drain has timed out."""
        raise DrainTimeoutError(self._drain_text("before this message was handled"))

    def _drain_text(self, when: str) -> str:
        return f"the node stopped: KRT_DRAIN_TIMEOUT ({self._drain_timeout:g}s) ran out {when}"

    def _note_unsent(self, job: Job) -> None:
        """The last node made an answer and has no requester to send it to (unless it replied early)."""
        assert job.request is not None
        if not job.request.replied:
            self.counts["dropped"] += 1
            self.log.warning("answer dropped: last node and no reply subject", tracking_id=job.tracking_id)

    async def _early_reply(self, job: Job, message: Message) -> None:
        request = job.request
        assert request is not None
        if request.replied:
            raise ReplyError("ctx.reply() was already called for this request; a request gets one answer")
        if job.handler_done:
            self.log.warning("late ctx.reply() ignored: the request was answered, or passed on, when its handler ended "
                             "or timed out", tracking_id=request.tracking_id)
            raise ReplyError("ctx.reply() after the handler ended or timed out; the request was already answered, or "
                             "passed on to the next node")
        if not job.reply:
            raise ReplyError("ctx.reply(): this message has no requester to answer (no reply subject)")
        await self.broker.publish(job.reply, self._answers.early(job, message))
        request.replied = True  # the request's envelope says so: the answer's, and a KRE v1 handler's reading
        if self._debug:
            self.log.debug("early answer published", tracking_id=job.tracking_id, subject=job.reply)

    async def _answer_error(self, job: Job, exc: Exception) -> None:
        """The error answer goes out first; only then is anything logged about it."""
        self.counts["errors"] += 1
        if job.request is None and isinstance(exc, EnvelopeError) and exc.heading:
            self._read_heading(job, exc.heading)
        text = self.last_error = self._answers.error_text(exc)
        answered = job.request is not None and job.request.replied
        unsent: Exception | None = None
        if not answered and job.reply:
            try:
                await self.broker.publish(job.reply, self._answers.for_error(job, text))
            except Exception as publish_exc:
                unsent = publish_exc
        self.log.error(text, tracking_id=job.tracking_id, exc_info=logged_exception(exc))
        if unsent is not None:
            self.log.error("could not publish error answer", error=describe(unsent), tracking_id=job.tracking_id)
        elif not answered and not job.reply:
            self.counts["dropped"] += 1
            self.log.warning("error not sent: no reply subject", tracking_id=job.tracking_id)


class _Recorder:
    """Hands each answered message's timing to the measurements once this pass of the event loop is done.

    The answers leave first (nats-py's flusher was woken by the first publish, so it runs before the points are
    made). A pass's timings are one flat list (:mod:`~krt_runner.measurements.timing`), handed over at once.
    """

    def __init__(self, points: NodePoints, *, last_node: bool) -> None:
        self._points = points
        self._last_node = last_node
        self._unrecorded: list[Any] = []  # the timings of the messages answered in this pass of the event loop

    def record_soon(self, job: Job, elapsed_ns: int, outcome: Outcome) -> None:
        if not self._unrecorded:
            asyncio.get_running_loop().call_soon(self.record_now)
        job.record(self._unrecorded, elapsed_ns, outcome, self._last_node)

    def record_now(self) -> None:
        timings, self._unrecorded = self._unrecorded, []
        if timings:
            self._points.record(timings)
