"""How messages get from nats-py to the pipeline: in nats-py's own callback, or through worker tasks.

:class:`InCallback`: one message at a time, handled inside the callback that
nats-py runs for the subscription. Used at ``KRT_CONCURRENCY=1`` for an async
handler, or a sync one with ``KRT_HANDLER_TIMEOUT``.

:class:`Workers`: N long-lived tasks take messages from a queue of N, and
nats-py's callback is the queue's ``put``. A worker that finishes finds the
next message waiting, in the same pass of the event loop, with no task made
per message. When the queue is full, nats-py keeps the rest in its pending
queue, under ``KRT_PENDING_*``. Used above ``KRT_CONCURRENCY=1``, and for a
pipelined sync handler (``KRT_CONCURRENCY`` + 1 workers): the default sync
node runs here, with 2 workers.

Both offer the same four steps to the node's life cycle: :meth:`start`,
:meth:`wait_handled` (drain), :meth:`give_up` (drain timed out) and :meth:`close`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from krt_runner.node.broker import MessageCallback, Msg

Handle = Callable[[bytes, str], Awaitable[None]]


class InCallback:
    """Each message handled in nats-py's callback, to the end, before nats-py hands over the next."""

    def __init__(self, handle: Handle) -> None:
        self._handle = handle
        self._task: asyncio.Task[Any] | None = None  # nats-py's task for the subscription: give_up() cancels it
        self.on_message: MessageCallback = self._on_message
        self.queued = 0  # nothing waits here: nats-py holds what is not handled yet

    def start(self) -> None:
        """Nothing to start: nats-py's task runs the callback."""

    async def _on_message(self, msg: Msg) -> None:
        if self._task is None:
            self._task = asyncio.current_task()  # once, not per message
        await self._handle(msg.data, msg.reply)

    async def wait_handled(self, timeout: float) -> bool:
        """Nothing of its own to wait for: stopping nats-py's intake waited for the callbacks."""
        return True

    def give_up(self, *, busy: bool) -> None:
        """Cancel the message being handled, if any; nats-py's task then goes on to those it holds, refused.

        Only while it is inside a message: between messages it waits on an empty queue, and cancelled there it
        would end before the rest.
        """
        if self._task is not None and busy:
            self._task.cancel()

    async def close(self) -> None:
        """Nothing to close: the connection's close ends nats-py's task."""


class Workers:
    """``count`` worker tasks taking messages from a queue of ``count``."""

    def __init__(self, handle: Handle, *, count: int, log: Any) -> None:
        self._handle = handle
        self._count = count
        self._log = log
        self._taken: asyncio.Queue[Msg] = asyncio.Queue(count)
        self._tasks: list[asyncio.Task[None]] = []
        self.on_message: MessageCallback = self._taken.put

    @property
    def queued(self) -> int:
        """Messages taken from nats-py that no worker has started on."""
        return self._taken.qsize()

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
        taken = self._taken
        while True:
            msg = await taken.get()
            try:
                await self._handle(msg.data, msg.reply)
            except Exception:  # a bug of ours must not end the worker: the node would take messages it never handles
                self._log.exception("internal error after handling a message")
            finally:
                taken.task_done()


Intake = InCallback | Workers


def intake_for(handle: Handle, *, concurrency: int, pipelined: bool, log: Any) -> Intake:
    """The intake shape for these settings (see the module's docstring)."""
    count = concurrency + (1 if pipelined else 0)
    return Workers(handle, count=count, log=log) if count > 1 else InCallback(handle)
