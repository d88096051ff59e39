"""Every message a node pulled, from its delivery to its one settlement: ack, term, or release for redelivery.

- :meth:`Acker.hold` on delivery; the message stays alive while held: one ``in_progress`` each half of the ack
  wait (:meth:`Acker.extend`), so a slow handler's message is not delivered to another replica meanwhile.
- :meth:`Acker.ack` once its answer went out; on a middle node, :meth:`Acker.ack_after` the next stream
  acknowledged the answer, in one settling task that takes the acknowledgements in the order they were asked
  for (they come back in that order), so no task is made per message, and acks leave in batches.
- :meth:`Acker.term` at the delivery limit, after the error answer.
- :meth:`Acker.release` (a nak): the message is delivered again, at once or after a delay, to any replica.

Settling never raises: a lost connection leaves the message to JetStream, which delivers it again after the ack
wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from krt_runner.errors import describe
from krt_runner.node.broker import Msg

# Seconds before a message whose answer could not be published is delivered again: another try, not a storm.
RETRY_DELAY = 1.0
# Seconds a middle node waits for the next stream to acknowledge an answer before it lets the message go again.
PUBLISH_ACK_TIMEOUT = 5.0
# One line per this many seconds at most for repeated settling errors.
_ERROR_LOG_INTERVAL = 5.0

Settle = Callable[[Msg], Awaitable[None]]


class Acker:
    """The messages held by one node process, and their settlement."""

    def __init__(self, *, ack_wait: float, log: Any) -> None:
        self._half_wait = ack_wait / 2
        self._log = log
        self._held: dict[str, list[Any]] = {}  # ack subject -> [message, monotonic time of its last sign of life]
        self._acks_due: asyncio.Queue[tuple[asyncio.Future[Any], Msg]] = asyncio.Queue()
        self._settler: asyncio.Task[None] | None = None
        self._none_held = asyncio.Event()
        self._none_held.set()
        self._last_error_log = 0.0

    @property
    def held(self) -> int:
        """Messages delivered to this process and not settled yet."""
        return len(self._held)

    def start(self) -> None:
        self._settler = asyncio.get_running_loop().create_task(self._settle_in_order())

    def hold(self, msg: Msg) -> None:
        self._held[msg.reply] = [msg, time.monotonic()]
        self._none_held.clear()

    async def ack(self, msg: Msg) -> None:
        await self._send(msg, msg.ack)

    async def term(self, msg: Msg) -> None:
        await self._send(msg, msg.term)

    async def release(self, msg: Msg, *, delay: float | None = None) -> None:
        """Let the message go unanswered: JetStream delivers it again (after ``delay`` seconds), to any replica."""
        await self._send(msg, lambda: msg.nak(delay=delay))

    async def release_later(self, msg: Msg) -> None:
        await self.release(msg, delay=RETRY_DELAY)

    def ack_after(self, acknowledged: asyncio.Future[Any], msg: Msg) -> None:
        """Ack ``msg`` once ``acknowledged`` (the next stream's acknowledgement of its answer) has come."""
        self._acks_due.put_nowait((acknowledged, msg))

    async def extend(self, now: float) -> None:
        """Tell JetStream that every message held for half an ack wait since its last sign of life is still being
        worked on."""
        due = [entry for entry in self._held.values() if now - entry[1] >= self._half_wait]
        for entry in due:
            entry[1] = now
            with contextlib.suppress(Exception):  # a lost connection: JetStream delivers it again, as it should
                await entry[0].in_progress()

    async def wait_settled(self, timeout: float) -> bool:
        """Until nothing is held; ``False`` if ``timeout`` seconds ran out first."""
        try:
            await asyncio.wait_for(self._none_held.wait(), timeout=max(0.0, timeout))
        except asyncio.TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Stop settling; release whatever is still held (its answer unsent or unacknowledged), so that another
        replica takes it at once rather than after the ack wait."""
        if self._settler is not None:
            self._settler.cancel()
            await asyncio.gather(self._settler, return_exceptions=True)
        for msg, _ in list(self._held.values()):
            await self.release(msg)

    async def _settle_in_order(self) -> None:
        due = self._acks_due
        while True:
            acknowledged, msg = await due.get()
            try:
                if not acknowledged.done():
                    await asyncio.wait_for(acknowledged, PUBLISH_ACK_TIMEOUT)
                acknowledged.result()
            except Exception as exc:  # the next stream refused it, or said nothing in time: try again later
                self._error("the next node's stream did not acknowledge an answer; the message will be delivered "
                            "again", exc)
                await self.release_later(msg)
            else:
                await self.ack(msg)

    async def _send(self, msg: Msg, action: Callable[[], Awaitable[None]]) -> None:
        if self._held.pop(msg.reply, None) is not None and not self._held:
            self._none_held.set()
        try:
            await action()
        except Exception as exc:
            self._error("could not settle a message; JetStream will deliver it again after the ack wait", exc)

    def _error(self, text: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= _ERROR_LOG_INTERVAL:
            self._last_error_log = now
            self._log.warning(text, error=describe(exc))
