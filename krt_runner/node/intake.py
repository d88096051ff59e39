"""How messages get from nats-py to the pipeline: worker tasks taking them from a queue.

``KRT_CONCURRENCY`` long-lived tasks (one more for a pipelined sync handler: the default sync node runs with 2)
take messages from one queue, handle each to the end, and take the next; no task is made per message.

Messages reach the queue two ways:

- **straight from the parser** (:meth:`Workers.on_direct`, see ``NodeClient.subscribe_direct``): no
  ``Msg`` made, no hop through nats-py's own queue and task. A burst that arrived together is queued at once, so a
  worker handles it in one pass of the event loop and its answers go out in one write. Up to
  :data:`DIRECT_MAX_MSGS` messages and :data:`DIRECT_MAX_BYTES` bytes of payload wait this way (at most half of
  ``KRT_PENDING_MSGS_LIMIT`` and ``KRT_PENDING_BYTES_LIMIT``);
- **through nats-py** (:meth:`Workers.on_message`) for what the first way declines: past those bounds, a message
  with headers, or one that would pass a message nats-py holds already (order is kept). nats-py holds them, under
  the rest of ``KRT_PENDING_*`` (:attr:`Workers.nats_py_limits`: past it, it drops them as a slow consumer), and
  hands them over as the queue falls below the number of workers.

The intake offers four steps to the node's life cycle: :meth:`Workers.start`, :meth:`Workers.wait_handled`
(drain), :meth:`Workers.give_up` (drain timed out) and :meth:`Workers.close`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sized
from typing import Any

from krt_runner.node.broker import Msg, Subscription
from krt_runner.node.work_queue import WorkQueue

Handle = Callable[[bytes, str], Awaitable[None]]

# The most messages, and bytes of payload, queued straight from the parser: a loaded node's bursts, not a backlog
# (a backlog waits in nats-py, under KRT_PENDING_*).
DIRECT_MAX_MSGS = 512
DIRECT_MAX_BYTES = 4 * 1024 * 1024


class Workers:
    """``count`` worker tasks taking messages from one queue."""

    def __init__(self, handle: Handle, *, count: int, pending_limits: tuple[int, int], log: Any) -> None:
        self._handle = handle
        self._count = count
        self._log = log
        msgs, size = pending_limits
        self._direct_msgs = min(DIRECT_MAX_MSGS, max(1, msgs // 2))
        self._direct_bytes = min(DIRECT_MAX_BYTES, max(1, size // 2))
        # What nats-py may hold beyond: KRT_PENDING_* bound the two together.
        self.nats_py_limits = (max(1, msgs - self._direct_msgs), max(1, size - self._direct_bytes))
        self._taken: WorkQueue[tuple[bytes, str]] = WorkQueue()
        self._taken_items = self._taken.items  # read by on_direct, once per message
        self._bytes = 0  # payload bytes in the queue
        self._room = asyncio.Event()  # set while the queue holds fewer than ``count``: nats-py may hand one over
        self._room.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._held_by_nats_py: Sized | None = None  # nats-py's queue of the subscription's messages, once subscribed
        self._putting = False  # nats-py's callback holds a message, waiting for room: the next ones go behind it

    @property
    def queued(self) -> int:
        """Messages taken from nats-py that no worker has started on."""
        return len(self._taken)

    def watch(self, subscription: Subscription) -> None:
        """The subscription whose messages :meth:`on_direct` takes, once subscribed (until then it declines)."""
        # What its ``pending_msgs`` counts, read as the deque itself: the property and asyncio.Queue.qsize are two
        # Python calls per message (1.3% of a middle node's instructions, benchmarks/node_instructions.py).
        self._held_by_nats_py = subscription._pending_queue._queue  # type: ignore[attr-defined]  # asyncio.Queue's deque

    def on_direct(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
        """A message straight from nats-py's parser: queued, or declined for :meth:`on_message`."""
        held = self._held_by_nats_py
        if (self._putting or headers or held is None or held
                or len(self._taken_items) >= self._direct_msgs or self._bytes >= self._direct_bytes):  # fmt: skip
            return False
        self._put(data, reply.decode())
        return True

    async def on_message(self, msg: Msg) -> None:
        """nats-py's callback, for what :meth:`on_direct` declined: queued once the queue is below ``count``."""
        self._putting = True
        try:
            while len(self._taken) >= self._count:
                self._room.clear()
                await self._room.wait()
            self._put(msg.data, msg.reply)
        finally:
            self._putting = False

    def _put(self, data: bytes, reply: str) -> None:
        self._bytes += len(data)
        self._taken.put((data, reply))

    def start(self) -> None:
        self._tasks = [self._new_worker() for _ in range(self._count)]

    async def wait_handled(self, timeout: float) -> bool:
        """Wait until every message taken has been handled; ``False`` if ``timeout`` seconds ran out first."""
        try:
            await asyncio.wait_for(self._taken.join(), timeout=max(0.0, timeout))
        except asyncio.TimeoutError:
            return False
        return True

    def give_up(self, *, busy: bool) -> None:
        """Cancel every worker: the busy ones go on as refusers (see ``Pipeline.give_up``), the idle ones end, and
        one fresh worker refuses whatever is still queued."""
        for task in self._tasks:
            task.cancel()
        self._tasks.append(self._new_worker())

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _new_worker(self) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        """Handle the taken messages one after the other, until cancelled at shutdown."""
        queue, room, count, handle = self._taken, self._room, self._count, self._handle
        items = queue.items
        while True:
            if not items:
                await queue.wait()
                continue
            data, reply = items.popleft()
            self._bytes -= len(data)
            if len(items) < count and not room.is_set():
                room.set()
            try:
                await handle(data, reply)
            except asyncio.CancelledError:
                raise
            except BaseException:  # nothing may end the worker: the node would take messages it never handles
                self._log.exception("internal error after handling a message")
            finally:
                queue.task_done()


def intake_for(handle: Handle, *, concurrency: int, pipelined: bool, pending_limits: tuple[int, int],
               log: Any) -> Workers:  # fmt: skip
    """The workers for these settings (see the module's docstring)."""
    return Workers(handle, count=concurrency + (1 if pipelined else 0), pending_limits=pending_limits, log=log)
