"""A node's life cycle and its per-message pipeline.

Start-up order (fixed and logged): settings, handler module (both done by the
CLI), connect, ``init`` awaited to the end, subscribe. No message reaches a
half-initialised node.

Shutdown order: stop intake (unsubscribe; nats-py runs the callbacks of what it
already holds), wait for in-flight messages up to ``KRT_DRAIN_TIMEOUT`` (then
cancel them and refuse the rest, each with an error answer), flush the answers
and close NATS, flush measurements. Every message taken gets its answer before
exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf.message import Message
from nats.aio.msg import Msg

from krt_runner.config import Settings
from krt_runner.errors import (
    BrokerConnectError,
    DrainTimeoutError,
    EnvelopeError,
    HandlerError,
    HandlerTimeoutError,
    InitError,
    InvalidRequestError,
    InvalidResultError,
    KrtRunnerError,
    ReplyError,
)
from krt_runner.logging import node_logger
from krt_runner.measurements.points import Measurement, NodePoints, PointSink, Timing
from krt_runner.node import envelope
from krt_runner.node.broker import Broker, MessageCallback
from krt_runner.node.context import HandlerContext, NodeState
from krt_runner.node.envelope import KreNatsMessage
from krt_runner.node.health import HealthFile
from krt_runner.node.user_code import Caller, UserCode, unpack_request


class Job:
    """One message on its way through the node."""

    __slots__ = (
        "handler_done", "hops", "replied", "reply", "request", "started", "started_ns", "tracking", "tracking_id",
    )

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.request: KreNatsMessage | None = None
        self.tracking: Any = ()  # the request's tracking entries, once decoded: read once, used three times
        self.tracking_id = ""  # the request's, once decoded
        self.hops = 0  # tracking entries received, before this node's own
        self.replied = False
        self.handler_done = False  # after this, a late ctx.reply() (a timed-out sync handler's) is refused
        self.started = time.perf_counter_ns()  # for durations
        self.started_ns = time.time_ns()  # for timestamps

    def restart(self) -> None:
        """Its handler starts now: a pipelined message's time in the node runs from here, not from its wait."""
        self.started = time.perf_counter_ns()
        self.started_ns = time.time_ns()


class Node:
    """One running node: a NATS subscription calling the user's handler once per message."""

    def __init__(self, settings: Settings, code: UserCode, *, sink: PointSink) -> None:
        self.settings = settings
        self.code = code
        self.name = settings.node_name or code.name
        self.log = node_logger(node=self.name, workflow=settings.workflow_name, version=settings.version)
        self._sink = sink
        self._points = NodePoints(
            sink=sink,
            workflow=settings.workflow_name,
            version=settings.version,
            node=self.name,
            last_node=settings.is_last_node,
        )
        measurement = Measurement(sink=sink, version=settings.version)
        self.state = NodeState(base_path=settings.base_path, logger=self.log, measurement=measurement)
        self.broker = Broker(settings, self.log)
        self._caller = Caller(workers=settings.concurrency)
        # A sync handler without KRT_HANDLER_TIMEOUT is pipelined: one message more than there are worker threads
        # is handled at once, so a thread goes from one call to the next without waiting for the event loop to
        # answer the last message and decode the next. Calls stay KRT_CONCURRENCY at a time and start in the order
        # the messages came. (A timeout counts from when a message's handling starts: with one, it starts when a
        # thread is free.)
        self._pipelined = not code.handler_is_async and settings.handler_timeout is None
        workers = settings.concurrency + (1 if self._pipelined else 0)
        # One message at a time is handled in nats-py's own callback. More run on that many long-lived worker
        # tasks, which take messages from a queue of as many: a worker that finishes finds the next message
        # waiting, in the same pass of the event loop, with no task made per message (a 5 ms async handler at
        # KRT_CONCURRENCY=32: 70% of 32 x 200/s with a task per message, 90%+ with workers). When the queue is
        # full, nats-py keeps the rest in its pending queue, under its limits.
        self._taken: asyncio.Queue[Msg] | None = asyncio.Queue(workers) if workers > 1 else None
        self._workers = workers
        self._worker_tasks: list[asyncio.Task[None]] = []
        self._intake: asyncio.Task[Any] | None = None  # nats-py's task that runs _on_message (at concurrency 1)
        self._handler_step: Callable[[Job], Awaitable[Any]] = self._call_handler  # _refuse once the drain ran out
        self._drain_expired = False  # a message cancelled now is one stop() gave up on: it gets an error answer
        self._unrecorded: list[Timing] = []  # answered in this pass of the event loop; measured at its end
        self._debug = settings.log_level == "debug"
        self._measured = settings.measurements_enabled
        self._last_node = settings.is_last_node
        self.counts = {"received": 0, "answered": 0, "errors": 0, "dropped": 0}
        self.ready = asyncio.Event()
        self.last_received = time.perf_counter_ns()  # for KRT_IDLE_TIMEOUT
        self.health = HealthFile(settings.health_file, is_healthy=lambda: self.broker.is_connected, logger=self.log)

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, run ``init`` to the end, then subscribe."""
        self.state.loop = asyncio.get_running_loop()
        self.log.info("connecting to NATS", servers=self.settings.describe()["nats_servers"])
        await self.broker.connect()
        await self._run_init()
        queue = f"queue_{self.settings.input_subject}"  # KRE v1's queue group name
        callback: MessageCallback = self._on_message
        if self._taken is not None:
            loop = asyncio.get_running_loop()
            self._worker_tasks = [loop.create_task(self._work(self._taken)) for _ in range(self._workers)]
            callback = self._taken.put
        await self.broker.subscribe(self.settings.input_subject, queue=queue, callback=callback)
        self.last_received = time.perf_counter_ns()  # a long init is not idle time
        self.ready.set()
        self.health.start()
        self.log.info("node ready", input=self.settings.input_subject, output=self.settings.output_subject or None)

    async def _run_init(self) -> None:
        if self.code.init is None:
            return
        self.log.info("running init")
        started = time.perf_counter()
        try:
            await self._caller.call(self.code.init, HandlerContext(self.state))
        except Exception as exc:
            raise InitError(f"init of {self.code.source!r} failed: {type(exc).__name__}: {exc}") from exc
        self.log.info("init done", seconds=round(time.perf_counter() - started, 3))

    async def stop(self) -> None:
        """Stop intake, finish in-flight messages, publish their answers, flush measurements."""
        self.log.info("draining: no new messages; finishing those in flight", in_flight=self.in_flight)
        await self.health.stop()
        deadline = time.monotonic() + self.settings.drain_timeout
        intake_stopped = True
        try:
            await asyncio.wait_for(self.broker.stop_intake(), timeout=self.settings.drain_timeout)
        except asyncio.TimeoutError:
            intake_stopped = False  # nats-py still holds messages: they are refused below
            self.log.error("timed out waiting for queued messages", seconds=self.settings.drain_timeout)
        await self._wait_in_flight(deadline, intake_stopped=intake_stopped)
        await self.broker.close()
        await self._end_workers()
        self._record_unrecorded()  # the last answers' points, should the loop not have come round to them
        await self._sink.close(timeout=max(1.0, deadline - time.monotonic()))
        self._caller.close()
        self.log.info("stopped", **self.counts, slow_consumer_drops=self.broker.slow_consumer_drops,
                      abandoned_threads=self._caller.abandoned_threads)

    @property
    def in_flight(self) -> int:
        """Messages taken and not yet answered: in a handler, or queued for a worker."""
        queued = self._taken.qsize() if self._taken is not None else 0
        return queued + self.counts["received"] - self.counts["answered"] - self.counts["errors"]

    async def _wait_in_flight(self, deadline: float, *, intake_stopped: bool) -> None:
        """Let the handlers finish what was taken until ``deadline``; then give up on the rest."""
        finished = intake_stopped
        if self._taken is not None:
            try:
                await asyncio.wait_for(self._taken.join(), timeout=max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                finished = False
        if not finished or self.in_flight:
            self._give_up_on_in_flight()

    def _give_up_on_in_flight(self) -> None:
        """KRT_DRAIN_TIMEOUT ran out: cancel the handlers still running and refuse what waits, each message with an
        error answer, before the connection closes."""
        self.log.error("drain timeout: answering unfinished messages with an error", unfinished=self.in_flight,
                       seconds=self.settings.drain_timeout)
        self._drain_expired = True
        self._handler_step = self._refuse
        if self._taken is None:
            # Only while it is inside a message: nats-py's task then goes on to those it still holds, refused.
            # (Between messages it waits on an empty queue; cancelled there, it would end before the rest.)
            if self._intake is not None and self.in_flight:
                self._intake.cancel()
            return
        for task in self._worker_tasks:  # the busy ones go on as refusers; the idle ones end
            task.cancel()
        self._worker_tasks.append(asyncio.get_running_loop().create_task(self._work(self._taken)))

    async def _end_workers(self) -> None:
        self._drain_expired = False  # from now on a cancelled worker ends, whatever it is doing
        for task in self._worker_tasks:
            task.cancel()
        await asyncio.gather(*self._worker_tasks, return_exceptions=True)

    # -- per message -------------------------------------------------------------------------

    async def _on_message(self, msg: Msg) -> None:
        if self._intake is None:  # nats-py's task for the subscription: for stop(), should the drain time out
            self._intake = asyncio.current_task()  # (1.6k instructions: once, not per message)
        await self.handle(msg.data, msg.reply)

    async def _work(self, taken: asyncio.Queue[Msg]) -> None:
        """One worker: handle the taken messages one after the other, until cancelled at shutdown."""
        while True:
            msg = await taken.get()
            try:
                await self.handle(msg.data, msg.reply)
            except Exception:  # a bug of ours must not end the worker: the node would take messages it never handles
                self.log.exception("internal error after handling a message")
            finally:
                taken.task_done()

    async def handle(self, data: bytes, reply: str) -> None:
        """Process one message: every path ends in exactly one answer, or a logged drop."""
        self.counts["received"] += 1
        job = Job(reply)
        self.last_received = job.started
        error = ""  # for the measurements: "", "invalid" or "failed"
        try:
            self._decode(job, data)
            result = await self._handler_step(job)
            subject, answer = self._answer(job, result)
            if subject:
                await self.broker.publish(subject, answer)
                if self._debug:
                    self.log.debug("answer published", tracking_id=job.tracking_id, subject=subject)
            self.counts["answered"] += 1
        except InvalidRequestError as exc:
            error = "invalid"
            await self._send_error(job, exc)
        except Exception as exc:
            error = "failed"
            await self._send_error(job, exc)
        except asyncio.CancelledError:
            if not self._drain_expired:
                raise
            _uncancel()  # this task goes on: to refuse the messages still waiting
            error = "failed"
            await self._send_error(job, DrainTimeoutError(self._drain_text("before its handler finished")))
        finally:
            if self._measured:
                self._record_soon(self._timing(job, time.perf_counter_ns() - job.started, error))

    def _decode(self, job: Job, data: bytes) -> None:
        request = envelope.decode(data, max_decompressed=self.settings.max_decompressed_bytes)
        job.request = request
        job.tracking_id = request.tracking_id
        job.tracking = request.tracking
        job.hops = len(job.tracking)
        if not job.reply:
            job.reply = _publishable(request.reply)
        if self._debug:
            self.log.debug("message received", tracking_id=job.tracking_id, bytes=len(data))

    async def _call_handler(self, job: Job) -> Any:
        assert job.request is not None
        ctx = HandlerContext(self.state, job.tracking_id, lambda message: self._early_reply(job, message))
        data: Any = job.request.payload
        if self.code.request_type is not None:
            data = unpack_request(data, self.code.request_type)
        timeout = self.settings.handler_timeout
        try:
            if self._pipelined:
                return await self._caller.call(self._handler_from_now, job, ctx, data)
            if timeout is None:
                return await self._caller.call(self.code.handler, ctx, data)
            return await asyncio.wait_for(_as_handler_errors(self._caller.call, self.code.handler, ctx, data), timeout)
        except (InvalidRequestError, HandlerError):
            raise
        except (Exception, asyncio.CancelledError) as exc:
            raise self._handler_failure(exc, timeout)  # noqa: B904  (the failure carries its own cause)
        finally:
            job.handler_done = True

    def _handler_failure(self, exc: BaseException, timeout: float | None) -> BaseException:
        """What an exception out of the handler's call becomes: a HandlerError naming it, the timeout's error, or,
        when stop() cancelled the call, that cancellation as it is."""
        if isinstance(exc, asyncio.CancelledError) and self._drain_expired:
            return exc
        if isinstance(exc, asyncio.TimeoutError) and timeout is not None:
            # wait_for's: with a timeout set, the handler's own TimeoutError arrives as a HandlerError
            failure: BaseException = HandlerTimeoutError(f"handler timed out after {timeout:g}s (KRT_HANDLER_TIMEOUT)")
            failure.__suppress_context__ = True
            return failure
        return _handler_error(exc)  # the handler's own, CancelledError included: the node goes on

    async def _refuse(self, job: Job) -> Any:
        """In place of the handler once the drain has timed out."""
        raise DrainTimeoutError(self._drain_text("before this message was handled"))

    def _drain_text(self, when: str) -> str:
        return f"the node stopped: KRT_DRAIN_TIMEOUT ({self.settings.drain_timeout:g}s) ran out {when}"

    def _handler_from_now(self, job: Job, ctx: HandlerContext, data: Any) -> Any:
        """The sync handler, on its worker thread, with the message's clock restarted (see ``_pipelined``)."""
        job.restart()
        return self.code.handler(ctx, data)

    def _answer(self, job: Job, result: Any) -> tuple[str, bytes]:
        """Where the answer goes and its bytes; ``("", b"")`` when it goes nowhere.

        The request becomes the answer: its tracking gets this node's entry and its payload the result.
        """
        request = job.request
        assert request is not None
        if not isinstance(result, Message):
            raise InvalidResultError(f"handler returned {_type_name(result)}, not a protobuf message")
        request.reply = job.reply
        if job.replied:
            request.replied = True
        if request.error:  # a stray incoming error must not mark the answer failed
            request.error = ""
        _add_own_entry(job.tracking, self.name, job.started_ns)
        envelope.pack_into(request.payload, result)
        subject = self.settings.output_subject or ("" if request.replied else job.reply)
        if subject:
            return subject, envelope.encode(request, max_payload=self.broker.max_payload)
        if not request.replied:
            self.counts["dropped"] += 1
            self.log.warning("answer dropped: last node and no reply subject", tracking_id=request.tracking_id)
        return "", b""

    async def _early_reply(self, job: Job, message: Message) -> None:
        request = job.request
        assert request is not None
        if job.replied or request.replied:
            raise ReplyError("ctx.reply() was already called for this request; a request gets one answer")
        if job.handler_done:
            self.log.warning("late ctx.reply() ignored: the request was answered when its handler ended or timed out",
                             tracking_id=request.tracking_id)
            raise ReplyError("ctx.reply() after the handler ended or timed out; the request was already answered")
        if not job.reply:
            raise ReplyError("ctx.reply(): this message has no requester to answer (no reply subject)")
        answer = self._answer_envelope(job, request)
        answer.replied = True
        envelope.pack_into(answer.payload, message)
        await self.broker.publish(job.reply, envelope.encode(answer, max_payload=self.broker.max_payload))
        job.replied = True

    def _answer_envelope(self, job: Job, request: KreNatsMessage | None) -> KreNatsMessage:
        answer = KreNatsMessage(tracking_id=request.tracking_id if request else "", reply=job.reply)
        if request is not None:
            answer.tracking.extend(request.tracking[: job.hops])
        _add_own_entry(answer.tracking, self.name, job.started_ns)
        return answer

    async def _send_error(self, job: Job, exc: Exception) -> None:
        self.counts["errors"] += 1
        text = _shorten(f"error in node '{self.name}': {_cause(exc)}")
        answered = job.replied or (job.request is not None and job.request.replied)
        self.log.error(text, tracking_id=job.tracking_id, exc_info=_traceback_worthy(exc))
        if answered or not job.reply:
            if not answered:
                self.counts["dropped"] += 1
                self.log.warning("error not sent: no reply subject", tracking_id=job.tracking_id)
            return
        answer = self._answer_envelope(job, job.request)
        answer.error = text
        try:
            await self.broker.publish(job.reply, answer.SerializeToString())
        except Exception as publish_exc:
            self.log.error("could not publish error answer", error=_describe(publish_exc), tracking_id=job.tracking_id)

    def _record_soon(self, timing: Timing) -> None:
        """Measure a message once this pass of the event loop has handled its others and written the answers.

        The answers leave first (nats-py's flusher was woken by the first publish, so it runs before this): the
        next node starts on them while this one makes the points, and no answer of the pass waits for them.
        Only the timing is kept, not the job: its envelope, payload included, is freed as before.
        """
        if not self._unrecorded:
            asyncio.get_running_loop().call_soon(self._record_unrecorded)
        self._unrecorded.append(timing)

    def _record_unrecorded(self) -> None:
        timings, self._unrecorded = self._unrecorded, []
        if timings:
            self._points.record(timings)

    def _timing(self, job: Job, elapsed_ns: int, error: str) -> Timing:
        if job.request is None or not job.hops:  # undecodable, or no tracking to measure from
            return (job.tracking_id, "", elapsed_ns, "", job.started_ns, None, error)
        previous = job.tracking[job.hops - 1]
        first_start = job.tracking[0].start if self._last_node else None
        return (job.tracking_id, previous.node_name, elapsed_ns, previous.end, job.started_ns, first_start, error)


def _uncancel() -> None:
    """Forget the cancellation just caught, so the task's later awaits behave as usual (Python 3.11+)."""
    task = asyncio.current_task()
    if task is not None and hasattr(task, "uncancel"):
        task.uncancel()


def _add_own_entry(tracking: Any, node_name: str, started_ns: int) -> None:
    """This node's tracking entry, from ``started_ns`` to now: filled field by field, which is cheaper than keyword
    arguments (it runs once per message)."""
    entry = tracking.add()
    entry.node_name = node_name
    entry.start = envelope.timestamp(started_ns)
    entry.end = envelope.timestamp()


async def _as_handler_errors(call: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """``call(*args)`` awaited, its exceptions as :class:`HandlerError`, so that none is taken for ``wait_for``'s
    timeout.

    Comparing clocks instead fails: uvloop's timers tick in milliseconds and may fire just before the bound.
    """
    try:
        return await call(*args)
    except (InvalidRequestError, HandlerError):
        raise
    except Exception as exc:
        raise _handler_error(exc)  # noqa: B904  (it carries its cause)


def _handler_error(exc: BaseException) -> HandlerError:
    """The error an exception out of the user's handler becomes, naming it, with it as its cause."""
    error = HandlerError(f"handler raised {_describe(exc)}")
    error.__cause__ = exc
    return error


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _publishable(subject: str) -> str:
    """The envelope's reply subject, if one may publish to it; an EnvelopeError otherwise.

    What may follow PUB: no whitespace or control characters (a CR LF in it would inject protocol lines),
    no wildcards, no empty tokens. Plain string checks: this runs once per message on every node but the first.
    """
    if subject and not (
        subject.isprintable()  # False for CR, LF, tab and the other control and Unicode space characters
        and " " not in subject
        and "*" not in subject
        and ">" not in subject
        and ".." not in subject
        and subject[0] != "."
        and subject[-1] != "."
    ):
        raise EnvelopeError(f"the envelope's reply subject {subject[:120]!r} is not a valid NATS subject")
    return subject


# An error answer must fit any server's max payload, whatever the exception says.
_MAX_ERROR_TEXT = 8192


def _shorten(text: str) -> str:
    if len(text) <= _MAX_ERROR_TEXT:
        return text
    return f"{text[:_MAX_ERROR_TEXT]}... ({len(text) - _MAX_ERROR_TEXT} more characters)"


def _type_name(value: Any) -> str:
    return "None" if value is None else f"a {type(value).__module__}.{type(value).__qualname__}"


def _cause(exc: Exception) -> str:
    if isinstance(exc, KrtRunnerError):
        return str(exc)
    return f"internal error {_describe(exc)}"


def _traceback_worthy(exc: Exception) -> bool:
    """Tracebacks for handler bugs and our own bugs; one line for bad input and limits."""
    return isinstance(exc, HandlerError) or not isinstance(exc, KrtRunnerError)


async def run_node(settings: Settings, code: UserCode, *, sink: PointSink) -> int:
    """Run a node until SIGTERM or SIGINT; return the process exit code."""
    node = Node(settings, code, sink=sink)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    starting = loop.create_task(node.start())
    stopping = loop.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        starting.cancel()
        node.log.info("stopped before start-up finished")
        await node.broker.close()
        return 0
    stopping.cancel()
    code_on_failure = _startup_failure(node, starting)
    if code_on_failure is not None:
        await node.broker.close()
        return code_on_failure
    await _wait_for_stop(node, stop)
    await node.stop()
    return 0


def _startup_failure(node: Node, starting: asyncio.Task[None]) -> int | None:
    error = starting.exception()
    if error is None:
        return None
    if isinstance(error, BrokerConnectError):
        node.log.error(str(error))
        return 2
    if isinstance(error, InitError):
        node.log.error(str(error), exc_info=error.__cause__)
        return 1
    raise error


async def _wait_for_stop(node: Node, stop: asyncio.Event) -> None:
    """Until SIGTERM or SIGINT, or ``KRT_IDLE_TIMEOUT`` seconds without a message received."""
    timeout = node.settings.idle_timeout
    while timeout is not None and not stop.is_set():
        remaining = timeout - (time.perf_counter_ns() - node.last_received) / 1e9
        if remaining <= 0:
            node.log.info("idle timeout: no message received; stopping", idle_timeout=timeout)
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), remaining)
    await stop.wait()
    node.log.info("signal received; stopping")
