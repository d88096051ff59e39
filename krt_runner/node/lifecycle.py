"""A running node: start-up, shutdown, and what holds it together (broker, intake, pipeline, health file).

Start-up order (fixed and logged): settings and handler module (before this
object exists), connect, (at-least-once: the stream and the durable consumer
made sure of), ``init`` awaited to the end, subscribe (at-least-once: start
pulling), ready. No message reaches a half-initialised node.

Shutdown order, the one place it is written (:meth:`RunningNode.stop`):

1. the health file goes: a draining node is not ready;
2. intake stops: unsubscribe; nats-py hands over the messages it already holds (at-least-once: no more pull
   requests; deliveries that come after go back to JetStream at once);
3. the messages taken are handled and answered (at-least-once: and acked), until ``KRT_DRAIN_TIMEOUT`` from the
   start of the stop;
4. if that deadline passed with messages unanswered, the node gives up on them: handlers still running are
   cancelled and messages still waiting are refused, each with an error answer (at-least-once: each goes back to
   JetStream unanswered, for another replica);
5. the connection drains (every answer and ack is flushed to the server) and closes;
6. the intake's workers end;
7. the last answers' points are recorded and the measurements flushed;
8. one ``stopped`` line with the counters.

Every message taken gets exactly one answer before exit (at-least-once: or goes back to JetStream).
"""

from __future__ import annotations

import asyncio
import os
import time
from types import SimpleNamespace

from krt_runner.config import Settings
from krt_runner.errors import InitError, describe
from krt_runner.logging import node_logger
from krt_runner.measurements import Measurement, NodePoints, PointSink
from krt_runner.mongo.readers import reader_for
from krt_runner.node.broker import Broker
from krt_runner.node.calling import USER_CODE_FAILURES
from krt_runner.node.cancelling import cancelled_from_outside
from krt_runner.node.context import NodeState
from krt_runner.node.data_context import DataServices
from krt_runner.node.discovery import Discovery, EndpointCounters, service_name
from krt_runner.node.health import HealthFile
from krt_runner.node.intake import Workers, intake_for
from krt_runner.node.jetstream import stream_capturing
from krt_runner.node.js_intake import JetStreamIntake, jetstream_input
from krt_runner.node.mongo_writer import NatsDocumentWriter
from krt_runner.node.pipeline import Pipeline
from krt_runner.node.user_code import UserCode

# Seconds the connection's own drain gets at least, even when KRT_DRAIN_TIMEOUT is spent: the answers of the messages
# just finished and the acks are still to be written.
_LEAST_CLOSE_TIME = 1.0


class RunningNode:
    """One node: a NATS subscription calling the user's handler once per message."""

    def __init__(self, settings: Settings, code: UserCode, *, sink: PointSink) -> None:
        self.settings = settings
        self.code = code
        self.name = settings.node_name or code.name
        self.log = node_logger(node=self.name, workflow=settings.workflow_name, version=settings.version)
        self._sink = sink
        self.broker = Broker(settings, self.log)
        data = DataServices(writer=NatsDocumentWriter(self.broker, settings.mongo_writer_subject),
                            reader=reader_for(settings), version=settings.version, version_id=settings.version_id)
        self.state = NodeState(base_path=settings.base_path, logger=self.log,
                               measurement=Measurement(sink=sink, version=settings.version), data=data,
                               config=kre_config(settings, node_name=self.name))
        points = NodePoints(sink=sink, workflow=settings.workflow_name, version=settings.version, node=self.name,
                            last_node=settings.is_last_node)
        self.jetstream: JetStreamIntake | None = None  # at-least-once: the input is a JetStream consumer
        self.pipeline, self.intake = self._input(points)
        if not settings.at_least_once:  # (at-least-once answers wait for the next stream's acknowledgement)
            self.broker.refusals.output = settings.output_subject
        self.discovery = self._discovery()
        self.ready = asyncio.Event()
        self.health = HealthFile(settings.health_file, is_healthy=lambda: self.broker.is_connected, logger=self.log)

    def _input(self, points: NodePoints) -> tuple[Pipeline, Workers | JetStreamIntake]:
        """The pipeline and the intake that feeds it: core NATS (the default) or a JetStream consumer."""
        settings = self.settings
        if settings.at_least_once:
            js_pipeline, self.jetstream = jetstream_input(settings=settings, broker=self.broker, log=self.log,
                                                          code=self.code, state=self.state, points=points,
                                                          name=self.name)
            return js_pipeline, self.jetstream
        pipeline = Pipeline(settings=settings, broker=self.broker, log=self.log, code=self.code, state=self.state,
                            points=points, name=self.name)
        limits = (settings.pending_msgs_limit, settings.pending_bytes_limit)
        return pipeline, intake_for(pipeline.handle, concurrency=pipeline.capacity, pipelined=pipeline.pipelined,
                                    pending_limits=limits, log=self.log)

    @property
    def counts(self) -> dict[str, int]:
        """Messages received, answered, answered with an error, and dropped (no reply subject anywhere)."""
        return self.pipeline.counts

    @property
    def last_received(self) -> int:
        """``perf_counter_ns`` of the last message received (or of the end of start-up): for ``KRT_IDLE_TIMEOUT``."""
        return self.pipeline.last_received

    @property
    def in_flight(self) -> int:
        """Messages taken and not yet answered: in a handler, or queued for a worker (at-least-once: not settled)."""
        if self.jetstream is not None:
            return self.jetstream.in_flight
        counts = self.pipeline.counts
        return self.intake.queued + counts["received"] - counts["answered"] - counts["errors"]

    async def start(self) -> None:
        """Connect (at-least-once: and make sure of the stream and consumer), run ``init`` to the end, then subscribe
        (or start pulling)."""
        self.state.loop = asyncio.get_running_loop()
        self.log.info("connecting to NATS", servers=self.settings.describe()["nats_servers"])
        await self.broker.connect()
        if self.jetstream is not None:
            await self.jetstream.prepare()
            self.discovery.pulled_from(stream=self.jetstream.input.stream, consumer=self.jetstream.input.consumer)
        else:
            await self._warn_of_a_stream()
        await self._run_init()
        self.intake.start()
        if isinstance(self.intake, JetStreamIntake):
            await self.intake.listen()
        else:
            queue = f"queue_{self.settings.input_subject}"  # KRE v1's queue group name
            subscription = await self.broker.subscribe(self.settings.input_subject, queue=queue,
                                                       direct=self.intake.on_direct, callback=self.intake.on_message,
                                                       pending_limits=self.intake.nats_py_limits)
            self.intake.watch(subscription)
        await self.broker.subscribe_each(self.discovery.subjects(), self.discovery.answer)
        self.pipeline.last_received = time.perf_counter_ns()  # a long init is not idle time
        self.ready.set()
        self.health.start()
        self.log.info("node ready", input=self.settings.input_subject, output=self.settings.output_subject or None)

    def _discovery(self) -> Discovery:
        """This process as a NATS service (``nats micro ls``): its input subject is its one endpoint."""
        settings = self.settings
        metadata = {"krt_version": settings.version, "krt_version_id": settings.version_id,
                    "workflow": settings.workflow_name, "node": self.name, "input": settings.input_subject,
                    "output": settings.output_subject, "delivery": settings.delivery}
        name = service_name(version=settings.version, workflow=settings.workflow_name, node=self.name)
        return Discovery(name=name, metadata=metadata, subject=settings.input_subject,
                         queue_group=f"queue_{settings.input_subject}", counters=self._counters)

    def _counters(self) -> EndpointCounters:
        counts = self.pipeline.counts
        return EndpointCounters(requests=counts["received"], errors=counts["errors"],
                                last_error=self.pipeline.last_error, processing_ns=self.pipeline.processing_ns)

    async def _warn_of_a_stream(self) -> None:
        """A stream that captures an at-most-once node's input answers its requests first, with its acknowledgement."""
        stream, work_queue = await stream_capturing(self.broker.client, self.settings.input_subject)
        if work_queue:
            self.log.warning("a work-queue JetStream stream captures this node's input: its workflow runs "
                             "at-least-once, and this node's answers would go to JetStream's acknowledgements, not "
                             "to the next node: set KRT_DELIVERY=at-least-once", stream=stream)
        elif stream:
            self.log.warning("a JetStream stream captures this node's input: a request to it gets the stream's "
                             "acknowledgement as its answer, before this node's; let the stream capture other "
                             "subjects, or run the workflow at least once", stream=stream)

    async def _run_init(self) -> None:
        if self.code.init is None:
            return
        self.log.info("running init")
        started = time.perf_counter()
        try:
            await self.pipeline.caller.call(self.code.init, self.state.context_for_init())
        except asyncio.CancelledError as exc:
            if cancelled_from_outside():  # a stop during init
                raise
            raise InitError(f"init of {self.code.source!r} failed: {describe(exc)}") from exc
        except USER_CODE_FAILURES as exc:  # SystemExit, KeyboardInterrupt and the user's own too: one line, exit 1
            raise InitError(f"init of {self.code.source!r} failed: {describe(exc)}") from exc
        self.log.info("init done", seconds=round(time.perf_counter() - started, 3))

    async def stop(self) -> None:
        """Stop intake, finish in-flight messages, publish their answers, flush measurements (see the module)."""
        self.log.info("draining: no new messages; finishing those in flight", in_flight=self.in_flight)
        await self.health.stop()
        deadline = time.monotonic() + self.settings.drain_timeout
        intake_stopped = await self._stop_intake()
        handled = await self.intake.wait_handled(deadline - time.monotonic())
        if not (intake_stopped and handled) or self.in_flight:
            self._give_up()
        if self.jetstream is not None:
            await self.jetstream.release_rest()  # while the connection can still carry the naks
        await self.broker.close(timeout=max(_LEAST_CLOSE_TIME, deadline - time.monotonic()))
        await self.intake.close()
        self.pipeline.close()
        self.pipeline.recorder.record_now()  # should the loop not have come round to the last answers' points
        await self._sink.close(timeout=max(1.0, deadline - time.monotonic()))
        self.log.info("stopped", **self.counts, slow_consumer_drops=self.broker.drops.count,
                      refused_publishes=self.broker.refusals.count,
                      bad_frames=self.broker.bad_frames, abandoned_threads=self.pipeline.caller.abandoned_threads)

    async def _stop_intake(self) -> bool:
        """Unsubscribe and take what nats-py holds; ``False`` if that outlasted ``KRT_DRAIN_TIMEOUT``."""
        stopping = self.jetstream.stop_listening() if self.jetstream is not None else self.broker.stop_intake()
        try:
            await asyncio.wait_for(stopping, timeout=self.settings.drain_timeout)
        except asyncio.TimeoutError:
            self.log.error("timed out waiting for queued messages", seconds=self.settings.drain_timeout)
            return False  # nats-py still holds messages: they are refused once the node gives up
        return True

    def _give_up(self) -> None:
        """``KRT_DRAIN_TIMEOUT`` ran out: answer every unfinished message with an error (at least once: hand it back
        to JetStream) before the connection closes."""
        if self.in_flight:
            what = "handing unfinished messages back to JetStream" if self.jetstream is not None else \
                "answering unfinished messages with an error"
            self.log.error(f"drain timeout: {what}", unfinished=self.in_flight, seconds=self.settings.drain_timeout)
        self.pipeline.give_up()
        self.intake.give_up(busy=self.in_flight > 0)


def kre_config(settings: Settings, *, node_name: str) -> SimpleNamespace:
    """What KRE v1's runner gave handlers as ``ctx.__config__``: its ``Config`` object's attributes, from the same
    ``KRT_*`` settings."""
    return SimpleNamespace(
        krt_workflow_name=settings.workflow_name, krt_runtime_id=os.environ.get("KRT_RUNTIME_ID", ""),
        krt_version_id=settings.version_id, krt_version=settings.version, krt_node_name=node_name,
        nats_server=",".join(settings.nats_servers), nats_input=settings.input_subject,
        nats_output=settings.output_subject, nats_mongo_writer=settings.mongo_writer_subject,
        base_path=str(settings.base_path), handler_path=settings.handler_path, mongo_data_db_name="data",
        mongo_uri=settings.mongo_uri, influx_uri=settings.influx_uri, nats_flush_timeout=10,
    )  # fmt: skip
