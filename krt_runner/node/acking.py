"""Every message a node pulled, from its delivery to its one settlement: ack, term, or release for redelivery.

- :meth:`Acker.hold` on delivery; the message stays alive while held: one ``in_progress`` each half of the ack
  wait (:meth:`Acker.tick`), so a slow handler's message is not delivered to another replica meanwhile.
- :meth:`Acker.ack` once its answer went out (the last node, an error answer).
- :meth:`Acker.forward` (a middle node): the answer is published through JetStream with a reply inbox of this
  process's own, and the message is acked when the next stream's acknowledgement arrives there, from the
  inbox's callback: no future, no task, no wait per message. An answer the next stream refused in words (full,
  too large) gets its request an error answer (:attr:`Acker.on_refused`); one no stream took (none there now, or a
  cluster electing its leader) or acknowledged within :data:`PUBLISH_ACK_TIMEOUT` (a tick finds it) is published
  again, its message kept, for :data:`REPUBLISH_FOR` seconds, and only then released for a later delivery.
- :meth:`Acker.term` at the delivery limit, after the error answer.
- :meth:`Acker.release` (a nak): the message is delivered again, at once or after a delay, to any replica.

Settling never raises: a lost connection leaves the message to JetStream, which delivers it again after the ack
wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from krt_runner.errors import describe
from krt_runner.node.broker import Broker, Msg
from krt_runner.node.jetstream import none_captures
from krt_runner.node.publish_acks import publish_ack, stream_refusal

# Seconds before a message whose answer could not be published is delivered again: another try, not a storm.
RETRY_DELAY = 1.0
# Seconds a middle node waits for the next stream to acknowledge an answer before it publishes it again.
PUBLISH_ACK_TIMEOUT = 5.0
# Seconds a middle node goes on publishing an answer no stream took (none there, or one electing a leader, as a NATS
# cluster does for seconds when a server dies), keeping its message; past them, it lets the message go again.
REPUBLISH_FOR = 30.0
_REPUBLISH_PAUSE = (0.25, 2.0)  # the first pause between two publishes, and the longest
# Seconds an ack may wait to go out with the next write (an answer, a pull request), rather than in one of its own.
ACK_DELAY = 0.001
# One line per this many seconds at most for repeated settling errors.
_ERROR_LOG_INTERVAL = 5.0
# Seconds close() waits for settlements under way in their own tasks.
_SETTLING_WAIT = 1.0
_ACK = b"+ACK"
_NO_RESPONDERS = b"NATS/1.0 503"  # the status that says no stream (nor anything) took a publish
_NOT_SETTLED = "could not settle a message; JetStream will deliver it again after the ack wait"

Settle = Callable[[Msg], Awaitable[None]]
# A forwarded answer: its message, when it was published, subject, answer, Nats-Msg-Id, when it was first published.
_Forwarded = tuple[Msg, float, str, bytes, str, float]
# What a node does with a message whose answer the next stream refused for good: its error answer, then its ack.
OnRefused = Callable[[Msg, str], Awaitable[None]]


class Acker:
    """The messages held by one node process, and their settlement."""

    def __init__(self, broker: Broker, *, ack_wait: float, log: Any) -> None:
        self._client = broker.client  # the same object for the connection's life, reconnects included
        self._half_wait = ack_wait / 2
        self._log = log
        self._held: dict[str, list[Any]] = {}  # ack subject -> [message, monotonic time of its last sign of life]
        # token -> (message, when its answer was published, subject, answer, msg_id, when it was first published)
        self._forwarded: dict[str, _Forwarded] = {}
        self._earlier: dict[str, _Forwarded] = {}  # publishes not acknowledged in time, whose answer went out again
        self._tokens = itertools.count()
        self._inbox = ""
        self._token_at = 0
        self._none_held = asyncio.Event()
        self._none_held.set()
        self._last_error_log = 0.0
        self._background: set[asyncio.Task[None]] = set()  # settlements that had to wait (see _in_background)
        # Set when the node stops: until then a pull request of this process may be open on the server, and a
        # message handed back sooner could be delivered to it, to be lost with the connection until the ack wait.
        self.hand_back_delay: float | None = None
        self.on_refused: OnRefused | None = None  # None: such a message is delivered again, as any other

    @property
    def held(self) -> int:
        """Messages delivered to this process and not settled yet."""
        return len(self._held)

    async def start(self) -> None:
        """Subscribe to the inbox the next stream's acknowledgements come to."""
        client = self._client
        self._inbox = client.new_inbox() + "."
        self._token_at = len(self._inbox)
        await client.subscribe_direct(self._inbox + "*", self._on_publish_ack, cb=self._on_refusal)

    def hold(self, msg: Msg) -> None:
        if not self._held:
            self._none_held.clear()
        self._held[msg.reply] = [msg, time.monotonic()]

    async def ack(self, msg: Msg) -> None:
        """Once per message (no action made for it, as for the rarer settlements: see :meth:`_send`)."""
        waiting = self._ack_now(msg)
        if waiting is not None:
            await self._settling(waiting)

    def _ack_now(self, msg: Msg) -> Awaitable[None] | None:
        """The ack queued to go out with the next write; ``None``, or what is left to await (see
        ``NodeClient.publish_with_next_write``)."""
        self._forget(msg)
        try:
            return self._client.publish_with_next_write(msg.reply, _ACK, within=ACK_DELAY)
        except Exception as exc:
            self._error(_NOT_SETTLED, exc)
            return None

    async def term(self, msg: Msg) -> None:
        await self._send(msg, msg.term)

    async def release(self, msg: Msg, *, delay: float | None = None) -> None:
        """Let the message go unanswered: JetStream delivers it again (after ``delay`` seconds, by default
        :attr:`hand_back_delay`), to any replica."""
        delay = self.hand_back_delay if delay is None else delay
        await self._send(msg, lambda: msg.nak(delay=delay))

    def release_soon(self, msg: Msg) -> None:
        """:meth:`release`, from code that may not wait: in a task of its own."""
        self._in_background(self.release(msg))

    async def release_later(self, msg: Msg) -> None:
        await self.release(msg, delay=RETRY_DELAY)

    async def forward(self, subject: str, answer: bytes, msg_id: str, msg: Msg, *, first: float = 0.0) -> None:
        """Publish ``answer`` through JetStream with ``Nats-Msg-Id: msg_id``; ``msg`` is acked once the stream
        acknowledged it. ``first``: when it was first published, for an answer published again."""
        token = str(next(self._tokens))
        now = time.monotonic()
        self._forwarded[token] = (msg, now, subject, answer, msg_id, first or now)
        try:
            await self._client.publish_bytes(subject, answer, reply=self._inbox + token, msg_id=msg_id)
        except BaseException:
            del self._forwarded[token]  # the caller settles it
            raise

    async def tick(self, now: float) -> None:
        """Keep held messages alive; publish again the answers not acknowledged in time."""
        late = [token for token, forwarded in self._forwarded.items() if now - forwarded[1] > PUBLISH_ACK_TIMEOUT]
        # No stream captures the subject: what took the answers is a subscriber there, which would take them again.
        subscribers = bool(late) and await none_captures(self._client, self._forwarded[late[0]][2])
        for token in late:
            forwarded = self._forwarded.pop(token, None)  # None: replied to while none_captures waited
            if forwarded is None:
                continue
            self._earlier[token] = forwarded  # its reply may still come
            if subscribers:
                self._wait_for_reply(forwarded)
            else:
                await self._again_or_release(forwarded, f"not acknowledged in {PUBLISH_ACK_TIMEOUT:g}s")
        for token in [token for token, earlier in self._earlier.items() if earlier[0].reply not in self._held]:
            del self._earlier[token]  # settled since
        for entry in [entry for entry in self._held.values() if now - entry[1] >= self._half_wait]:
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
        """Release whatever is still held (its answer unsent or unacknowledged), so that another replica takes it
        soon rather than after the ack wait, and wait a moment for the releases already under way."""
        self._forwarded.clear()
        self._earlier.clear()
        for msg, _ in list(self._held.values()):
            await self.release(msg)
        if self._background:
            await asyncio.wait(set(self._background), timeout=_SETTLING_WAIT)

    def _on_publish_ack(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
        """The next stream's acknowledgement, straight from the parser; a no-responders status (no stream there)
        is declined, for :meth:`_on_refusal`. A plain function: its message's ack is queued at once, and only what
        must wait (a refusal's release, an error answer, a full write buffer) goes on in a task. A reply to an
        answer published again since is taken for the current publish (its token is kept until it is settled)."""
        if headers and bytes(headers[: len(_NO_RESPONDERS)]) == _NO_RESPONDERS:
            return False
        token = subject[self._token_at :].decode()
        forwarded = self._forwarded.pop(token, None) or self._published_again(token)
        if forwarded is None:  # too late: already settled
            return True
        acknowledged = None if headers else publish_ack(data)
        if acknowledged is None:  # a subscriber of the next subject answered, with or without headers
            self._in_background(self._answered_unstored(forwarded))
        elif "error" in acknowledged:
            self._in_background(self._refused(forwarded, data))
        else:
            waiting = self._ack_now(forwarded[0])
            if waiting is not None:
                self._in_background(self._settling(waiting))
        return True

    def _published_again(self, token: str) -> _Forwarded | None:
        """The answer an earlier publish (``token``) carried, if its message is still held: the publish it was
        published again with is then forgotten, so that its message is settled once."""
        earlier = self._earlier.pop(token, None)
        if earlier is None or earlier[0].reply not in self._held:
            return None
        for later, forwarded in list(self._forwarded.items()):
            if forwarded[0] is earlier[0]:
                del self._forwarded[later]
        return earlier

    async def _on_refusal(self, reply: Msg) -> None:
        token = reply.subject[self._token_at :]
        forwarded = self._forwarded.pop(token, None) or self._published_again(token)
        if forwarded is not None:
            await self._refused(forwarded, reply.data or reply.headers)

    async def _refused(self, forwarded: _Forwarded, why: object) -> None:
        refusal = stream_refusal(why)
        if not refusal:
            await self._again_or_release(forwarded, "no stream took it (none there, or its servers are away)")
        elif self.on_refused is not None:  # the stream said why: another delivery would hear it again
            self._error("the next node's stream refused an answer; the request gets an error answer",
                        ValueError(refusal))
            await self.on_refused(forwarded[0], f"the next node's stream refused this node's answer: {refusal}")
        else:
            self._error("the next node's stream refused an answer; the message will be delivered again",
                        ValueError(refusal))
            await self.release_later(forwarded[0])

    async def _answered_unstored(self, forwarded: _Forwarded) -> None:
        """A reply that is no stream's acknowledgement: a subscriber of the next subject took the answer itself (a
        node at at-most-once delivery, a responder), and would take it again if it were published again. Its
        request gets an error answer saying so (the answer the subscriber sent came here, and is lost)."""
        text = (f"the answer published on {forwarded[2]!r} was answered by a subscriber there, not stored by a "
                "JetStream stream: the next node runs at-most-once, or something else answers on that subject; "
                "every node of an at-least-once workflow must run at-least-once (KRT_DELIVERY)")
        self._error("the next subject's reply was no JetStream acknowledgement; the request gets an error answer",
                    ValueError(text))
        if self.on_refused is not None:
            await self.on_refused(forwarded[0], text)
        else:
            await self.release_later(forwarded[0])

    def _wait_for_reply(self, forwarded: _Forwarded) -> None:
        """An answer a subscriber of the next subject took (no stream captures it) and has not replied to: its reply
        gets the request its error answer; it is not published again, for :data:`REPUBLISH_FOR` seconds."""
        self._error("no JetStream stream captures the next subject: a subscriber there took the answer and has not "
                    "replied yet; waiting for its reply", ValueError(forwarded[2]))
        msg, left = forwarded[0], REPUBLISH_FOR - (time.monotonic() - forwarded[5])

        def give_up() -> None:
            if msg.reply in self._held:
                self._in_background(self.release_later(msg))

        asyncio.get_running_loop().call_later(max(0.0, left), give_up)

    async def _again_or_release(self, forwarded: _Forwarded, why: str) -> None:
        """An answer no stream took: published again after a pause (its message kept, in progress), for
        :data:`REPUBLISH_FOR` seconds; then the message goes back to JetStream for a later delivery."""
        msg, first = forwarded[0], forwarded[5]
        waited = time.monotonic() - first
        if waited >= REPUBLISH_FOR:
            self._error("the next node's stream took no answer; the message will be delivered again", ValueError(why))
            await self.release_later(msg)
            return
        self._error("the next node's stream took no answer yet; it is published again", ValueError(why))
        pause = min(_REPUBLISH_PAUSE[1], max(_REPUBLISH_PAUSE[0], waited / 2))
        asyncio.get_running_loop().call_later(pause, lambda: self._in_background(self._republish(forwarded)))

    async def _republish(self, forwarded: _Forwarded) -> None:
        msg, _, subject, answer, msg_id, first = forwarded
        if msg.reply not in self._held:  # released meanwhile (the node stopping)
            return
        try:
            await self.forward(subject, answer, msg_id, msg, first=first)
        except Exception as exc:  # a closed connection: another delivery, later
            self._error("answer not published again; the message will be delivered again", exc)
            await self.release_later(msg)

    async def _send(self, msg: Msg, action: Callable[[], Awaitable[None]]) -> None:
        self._forget(msg)
        try:
            await action()
        except Exception as exc:
            self._error(_NOT_SETTLED, exc)

    async def _settling(self, waiting: Awaitable[None]) -> None:
        try:
            await waiting
        except Exception as exc:
            self._error(_NOT_SETTLED, exc)

    def _in_background(self, settling: Coroutine[Any, Any, None]) -> None:
        """A settlement that must wait, run by a task of its own (referenced until done)."""
        task = asyncio.get_running_loop().create_task(settling)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _forget(self, msg: Msg) -> None:
        if self._held.pop(msg.reply, None) is not None and not self._held:
            self._none_held.set()

    def _error(self, text: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= _ERROR_LOG_INTERVAL:
            self._last_error_log = now
            self._log.warning(text, error=describe(exc))
