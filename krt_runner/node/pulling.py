"""Pull requests to the node's durable consumer: as many messages asked for as the intake has room for.

Not nats-py's ``fetch()``: it waits for a whole batch or for its timeout before it returns anything, and raises
when nothing came. Here pull requests go out on one inbox subscription, each message is handed over as it
arrives, and the number of messages asked for and not come yet (``asked``) decides when to ask again:

- a message arrives: one less asked for;
- a 408 status (the request expired) or a 409 (the server ended it): less the ``Nats-Pending-Messages`` it names;
- no word for longer than a request lives (its expiry lost with a connection, a restarted server): none asked;
- a reconnect: none asked, and asked again at once.

``room()`` tells how many more messages the intake has room for, and the fewest worth a request while others are
under way (``min_batch``). A new request goes out when the room not asked for reaches ``min_batch`` (or any room,
when nothing is asked for), so that a busy node asks in batches and an idle one still gets its next message at once.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from krt_runner.errors import describe
from krt_runner.node.broker import Broker, Msg, Subscription

# Seconds a pull request waits on the server for messages before it expires (then it is asked again).
PULL_EXPIRES = 5.0
# Seconds past a request's expiry after which, with no word from the server, it is taken as lost.
_EXPIRY_GRACE = 1.0
_EXPIRES_NS = int(PULL_EXPIRES * 1e9)
_STATUS, _PENDING_MESSAGES = "Status", "Nats-Pending-Messages"
_ACK_PREFIX = b"$JS.ACK."  # the reply subject of every JetStream delivery
_CONSUMER_GONE = "consumer deleted"  # a 409's description when the consumer, or its stream, was deleted
_ENDED = ("408", "409")  # the request expired, or the server ended it (consumer deleted, leadership changed...)
_UNAVAILABLE = "503"  # no JetStream to take the request (a server still starting): asked again on the next tick
# 503s in a row after which the consumer is looked for: a server restarted without its store answers so for ever.
_UNAVAILABLE_CHECK = 3
_HEARTBEAT = "100"

# Takes a delivery at once, inside the connection's read loop: it may queue, never wait.
Deliver = Callable[[Msg], None]


class Puller:
    """One process's pull requests to the node's consumer; messages go to ``deliver``."""

    def __init__(
        self, broker: Broker, *, stream: str, consumer: str, room: Callable[[], tuple[int, int]], deliver: Deliver,
        log: Any,
    ) -> None:  # fmt: skip
        self._client = broker.client
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._room = room
        self._deliver = deliver
        self._log = log
        self._inbox = ""
        self._subscription: Subscription | None = None
        self._asked = 0
        self._asked_at = 0.0
        self._stopped = False
        self.on_consumer_gone: Callable[[], Awaitable[None]] | None = None
        # Called after _UNAVAILABLE_CHECK 503s in a row: looks whether the consumer is there at all.
        self.on_unavailable: Callable[[], Awaitable[None]] | None = None
        self._unavailable = 0

    def retarget(self, *, stream: str, consumer: str) -> None:
        """Pull from this stream's consumer from now on (one made again may be on another stream)."""
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"

    async def start(self) -> None:
        """Subscribe to this process's inbox, then ask for the first messages."""
        self._inbox = self._client.new_inbox()
        self._subscription = await self._client.subscribe_direct(self._inbox, self._on_delivery, cb=self._on_status)
        await self.ask()

    async def ask(self) -> None:
        """Ask for the room not asked for yet, when it is worth a request."""
        room, min_batch = self._room()
        wanted = room - self._asked
        if self._stopped or wanted < 1 or (self._asked and wanted < min_batch):
            return
        self._asked += wanted
        self._asked_at = time.monotonic()
        request = b'{"batch":%d,"expires":%d}' % (wanted, _EXPIRES_NS)
        try:
            await self._client.publish(self._next, request, reply=self._inbox)
        except Exception as exc:  # closed or draining: the tick or the reconnect asks again
            self._asked -= wanted
            self._log.debug("pull request not sent", error=describe(exc))

    async def tick(self, now: float) -> None:
        """Forget requests the server should have ended by now without a word, and ask again."""
        if self._asked and now - self._asked_at > PULL_EXPIRES + _EXPIRY_GRACE:
            self._asked = 0
        await self.ask()

    async def restart(self) -> None:
        """After a reconnect: the server may have lost every request (a restart), so ask afresh."""
        self._asked = 0
        await self.ask()

    def requests_open_for(self, now: float) -> float:
        """Seconds a pull request of this process may stay open on the server (0: none is): it keeps one until it
        expires or is filled, whether this process still listens or not."""
        return max(0.0, self._asked_at + PULL_EXPIRES - now) if self._asked else 0.0

    async def stop(self) -> None:
        """Ask for nothing more; unsubscribe, handing over what had arrived (the intake releases it)."""
        self._stopped = True
        if self._subscription is not None and self._client.is_connected:
            await self._subscription.drain()  # type: ignore[no-untyped-call]  # nats-py leaves it untyped

    def _on_delivery(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
        """A message of the stream, whose reply subject is its ack subject, straight from the parser: its headers
        (the ``Nats-Msg-Id`` it was published with) are not needed. A status (no reply subject) is declined."""
        if not reply:
            return False
        if not reply.startswith(_ACK_PREFIX):  # published to the inbox by someone who can see it, not JetStream
            self._log.debug("dropped a message on the pull inbox that is no JetStream delivery", reply=reply[:120])
            return True
        self._asked = max(0, self._asked - 1)
        self._deliver(Msg(self._client, reply=reply.decode(), data=data, _sid=sid))
        return True

    async def _on_status(self, msg: Msg) -> None:
        status = msg.headers.get(_STATUS, "") if msg.headers else ""
        if status != _UNAVAILABLE:
            self._unavailable = 0
        if status in _ENDED and _CONSUMER_GONE in (msg.headers or {}).get("Description", "").lower():
            self._on_ended(msg, status)
            if self.on_consumer_gone is not None:  # deleted, or its stream was: it is made again there
                await self.on_consumer_gone()
        elif status in _ENDED:
            self._on_ended(msg, status)
            await self.ask()
        elif status == _UNAVAILABLE:
            self._asked = 0
            self._unavailable += 1
            if self._unavailable >= _UNAVAILABLE_CHECK and self.on_unavailable is not None:
                self._unavailable = 0
                await self.on_unavailable()
            return
        elif status != _HEARTBEAT:
            self._log.warning("unexpected answer to a pull request", status=status, headers=msg.headers)

    def _on_ended(self, msg: Msg, status: str) -> None:
        headers = msg.headers or {}
        pending = headers.get(_PENDING_MESSAGES)
        self._asked = max(0, self._asked - int(pending)) if pending and pending.isdigit() else 0
        if status != "408":
            self._log.info("the server ended a pull request", status=status, reason=headers.get("Description", ""))
