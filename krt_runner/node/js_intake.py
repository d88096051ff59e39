"""How deliveries get from the node's JetStream consumer to the pipeline (at-least-once mode).

Worker tasks (``KRT_CONCURRENCY``, one more for a pipelined sync handler, as in the default mode) take
deliveries from a queue that the puller fills, asking for no more than the room: the workers, plus about
:data:`PREFETCH_SECONDS` of their work waiting (at least as many as the workers, at most :data:`MAX_PREFETCH`),
less the messages taken and not handled yet. The work waiting covers a pull request's round trip, so that the
workers do not wait for the server between messages; it is measured, not guessed (a moving mean of the time
each delivery takes), so that a node with a slow model holds few messages, and its other replicas take the rest.
A tick task, every quarter of the ack wait (at most each second), keeps the held messages alive
(``in_progress``), lets go answers whose acknowledgement did not come, and asks again for what the server may
have forgotten.

Its steps for the node's life cycle: :meth:`prepare` (stream and consumer, right after connecting, before
``init``), :meth:`start`, :meth:`listen`, then, to stop, :meth:`stop_listening` (no more pulls; what arrives
late is released), :meth:`wait_handled`, :meth:`give_up` and :meth:`close`, as the default intakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from krt_runner.config import Settings
from krt_runner.errors import JetStreamError
from krt_runner.jetstream_names import consumer_name, stream_name
from krt_runner.node.acking import Acker
from krt_runner.node.broker import Broker, Msg
from krt_runner.node.jetstream import JetStreamInput, consumer_missing, open_input
from krt_runner.node.js_pipeline import JetStreamPipeline
from krt_runner.node.pulling import Puller
from krt_runner.node.work_queue import WorkQueue

# The longest pause between two ticks, in seconds (shorter when a quarter of the ack wait is shorter).
_MAX_TICK = 1.0
# Seconds of handling a process keeps waiting beyond its workers: more than a pull request's round trip under load.
PREFETCH_SECONDS = 0.005
# The most deliveries a process keeps waiting beyond its workers.
MAX_PREFETCH = 256
_PREFETCH_NS = int(PREFETCH_SECONDS * 1e9)
_FIRST_GUESS_NS = 1_000_000  # the mean handling time before any was measured
# Seconds the workers get to release the queued deliveries once the drain gave up.
_RELEASE_TIMEOUT = 2.0
# Seconds past the expiry of a stopping process's last pull request before what it hands back is delivered again.
_PAST_EXPIRY = 0.5
# Seconds after a consumer was made again during which word that it was deleted is taken as about the old one.
_REMADE_QUIET = 2.0


class JetStreamIntake:
    """Deliveries pulled from the node's consumer and handled by worker tasks."""

    def __init__(self, pipeline: JetStreamPipeline, acker: Acker, broker: Broker, *, settings: Settings,
                 log: Any) -> None:  # fmt: skip
        self._pipeline = pipeline
        self.acker = acker
        self._broker = broker
        self._settings = settings
        self._log = log
        self._count = pipeline.capacity + (1 if pipeline.pipelined else 0)  # capacity: more when batching
        self._mean_ns = _FIRST_GUESS_NS  # moving mean of the time a delivery takes to handle
        self._taken: WorkQueue[Msg] = WorkQueue()
        self._busy = 0
        self._running_since: list[int] = []  # when each running delivery started, oldest first
        self._tasks: list[asyncio.Task[None]] = []
        self._ticker: asyncio.Task[None] | None = None
        self._puller: Puller | None = None
        self._stopping = False
        self._remade_until = 0.0  # until then, word that the consumer was deleted is about the one made again
        self.input = JetStreamInput(stream_name(settings.input_subject), consumer_name(settings.input_subject), False)

    @property
    def queued(self) -> int:
        """Deliveries taken that no worker has started on."""
        return len(self._taken)

    @property
    def in_flight(self) -> int:
        """Deliveries taken and not settled: waiting, in a handler, or waiting for their answer's acknowledgement."""
        return self.acker.held

    async def prepare(self) -> None:
        """Make sure the stream and the node's durable consumer are there (:class:`JetStreamError` otherwise)."""
        settings = self._settings
        taken = self._pipeline.last_sequence_taken  # made again: what this node took was delivered, the rest not
        self.input = await open_input(self._broker.client, subject=settings.input_subject,
                                      ack_wait=settings.jetstream_ack_wait, max_deliver=settings.jetstream_max_deliver,
                                      replicas=settings.jetstream_replicas,
                                      resume_at=taken + 1 if taken else self.input.resume_at)
        self._log.info("JetStream input ready", stream=self.input.stream, consumer=self.input.consumer,
                       stream_created=self.input.stream_created, ack_wait=settings.jetstream_ack_wait,
                       max_deliver=settings.jetstream_max_deliver)

    def start(self) -> None:
        self._tasks = [self._new_worker() for _ in range(self._count)]
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def listen(self) -> None:
        """Start pulling; a reconnect asks afresh."""
        await self.acker.start()
        self._puller = Puller(self._broker, stream=self.input.stream, consumer=self.input.consumer,
                              room=self._room, deliver=self._take, log=self._log)
        self._broker.on_connection_change = self._on_connection_change
        self._puller.on_consumer_gone = self._make_input_again
        self._puller.on_unavailable = self._look_for_input
        await self._puller.start()
        self._log.info("pulling", stream=self.input.stream, consumer=self.input.consumer)

    async def stop_listening(self) -> None:
        """Pull no more; deliveries that arrive from now on go back to JetStream at once."""
        self._stopping = True
        if self._puller is not None:
            try:
                await self._puller.stop()
            except Exception as exc:  # a connection lost mid-shutdown must not stop the shutdown
                self._log.warning("could not stop pulling cleanly", error=str(exc))
            open_for = self._puller.requests_open_for(time.monotonic())
            if open_for:  # what it hands back goes past its own pull requests, to another replica's
                self.acker.hand_back_delay = open_for + _PAST_EXPIRY

    async def wait_handled(self, timeout: float) -> bool:
        """Until every delivery taken is handled and settled; ``False`` if ``timeout`` seconds ran out first."""
        deadline = time.monotonic() + timeout
        try:
            await asyncio.wait_for(self._taken.join(), timeout=max(0.0, timeout))
        except asyncio.TimeoutError:
            return False
        return await self.acker.wait_settled(deadline - time.monotonic())

    def give_up(self, *, busy: bool) -> None:
        """Cancel every worker (the busy ones release their message, see ``JetStreamPipeline.give_up``); one fresh
        worker releases whatever is still queued."""
        for task in self._tasks:
            task.cancel()
        self._tasks.append(self._new_worker())

    async def release_rest(self) -> None:
        """After :meth:`give_up`: let the workers release what is queued, then release whatever is still held."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._taken.join(), timeout=_RELEASE_TIMEOUT)
        await self.acker.close()

    async def close(self) -> None:
        """End the workers and the tick; release what is still held (see :meth:`Acker.close`)."""
        tasks = [*self._tasks, *([self._ticker] if self._ticker else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.acker.close()

    def _room(self) -> tuple[int, int]:
        """The room for more deliveries, and the fewest worth a pull request while others are under way: a quarter
        of what may be held."""
        count, mean = self._count, self._mean_ns
        if self._running_since:  # a handler still running that long says more than the mean of those done
            mean = max(mean, time.perf_counter_ns() - self._running_since[0])
        holding = count + min(MAX_PREFETCH, max(count, count * _PREFETCH_NS // mean))
        return holding - len(self._taken.items) - self._busy, max(1, holding // 4)

    def _take(self, msg: Msg) -> None:
        """A delivery, from the read loop: held and queued for the workers; once stopping, released (a task)."""
        if self._stopping:
            self.acker.release_soon(msg)
            return
        self.acker.hold(msg)
        self._taken.put(msg)

    def _new_worker(self) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        """Handle the taken deliveries one after the other, asking for more after each, until cancelled."""
        queue, handle, clock = self._taken, self._pipeline.handle_delivery, time.perf_counter_ns
        items = queue.items
        while True:
            if not items:
                await queue.wait()
                continue
            msg = items.popleft()
            self._busy += 1
            started = clock()
            self._running_since.append(started)
            try:
                await handle(msg)
            except asyncio.CancelledError:
                raise
            except BaseException:  # nothing may end the worker: the node would hold messages it never handles
                self._log.exception("internal error after handling a message")
            finally:
                self._busy -= 1
                self._running_since.remove(started)
                queue.task_done()
            self._mean_ns = max(1, self._mean_ns + (clock() - started - self._mean_ns) // 8)
            if self._puller is not None:
                await self._puller.ask()

    async def _tick(self) -> None:
        pause = min(_MAX_TICK, self._settings.jetstream_ack_wait / 4)
        while True:
            await asyncio.sleep(pause)
            now = time.monotonic()
            await self.acker.tick(now)
            if self._puller is not None and not self._stopping:
                with contextlib.suppress(Exception):
                    await self._puller.tick(now)

    async def _look_for_input(self) -> None:
        """Pull requests keep getting 503s: JetStream still starting, or a server restarted without its store (a pod
        with no volume), which has neither stream nor consumer and would answer so for ever."""
        if await consumer_missing(self._broker.client, self.input.stream, self.input.consumer):
            await self._make_input_again()

    async def _make_input_again(self) -> None:
        """The node's consumer was deleted (or its stream, and the consumer with it): make them again, as at start,
        and pull from them; a node that cannot stops (exit 1), for its supervisor to restart it."""
        if self._stopping or self._puller is None or time.monotonic() < self._remade_until:
            return  # each of its open pull requests ends with a 409, some after it was made again
        self._remade_until = float("inf")
        self._log.warning("the node's JetStream consumer was deleted: making it again", consumer=self.input.consumer)
        try:
            await self.prepare()
        except JetStreamError as exc:
            self._broker.fail(f"the node's JetStream consumer was deleted and cannot be made again: {exc}")
            return
        finally:
            self._remade_until = time.monotonic() + _REMADE_QUIET
        self._puller.retarget(stream=self.input.stream, consumer=self.input.consumer)
        await self._puller.restart()

    def _on_connection_change(self, connected: bool) -> None:
        if connected and self._puller is not None and not self._stopping:
            task = asyncio.get_running_loop().create_task(self._puller.restart())
            self._tasks.append(task)  # a strong reference; ended with the workers


def jetstream_input(*, settings: Settings, broker: Broker, log: Any, **parts: Any) -> tuple[JetStreamPipeline,
                                                                                             JetStreamIntake]:
    """The pipeline and intake of a node in at-least-once mode; ``parts`` are the pipeline's other arguments."""
    acker = Acker(broker, ack_wait=settings.jetstream_ack_wait, log=log)
    pipeline = JetStreamPipeline(settings=settings, broker=broker, log=log, acker=acker, **parts)
    return pipeline, JetStreamIntake(pipeline, acker, broker, settings=settings, log=log)
