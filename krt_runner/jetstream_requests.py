"""The requester's side of at-least-once delivery: requests published through JetStream, answers on an inbox.

Used by :class:`~krt_runner.client.Client` (so ``krt-runner call``, ``up --request``, ``local()`` and
``connect()``) and by the gRPC entrypoint, when they are told ``at-least-once``.

A request is published to the workflow's first subject through JetStream with the requester's inbox in the
envelope's ``reply`` (a stored message's own reply subject is JetStream's ack subject) and ``Nats-Msg-Id`` set to
its ``tracking_id``. The answer comes back on the inbox by core NATS, from the last node.

- The first answer of a request is its answer. Another one (a handler that ran twice after a crash) is ignored
  and counted in :attr:`JetStreamRequests.ignored_answers`, as are answers that come after the call timed out.
- A publish not acknowledged in time is repeated with the same ``Nats-Msg-Id``: JetStream stores it once.
- A reconnect while a request waits for its answer (stored, acknowledged) sends it again, as a new message
  (``Nats-Msg-Id`` ``<tracking_id>:<n>``): an answer on its way when the connection went is lost, since the last
  node answers by core NATS and acks right after. The workflow may then handle that request twice; the first
  answer counts. A request published while the connection is down is stored once it is back, and not sent again.
- No stream captures the subject: :class:`~krt_runner.errors.NoResponders` at once. No JetStream on the server
  at all: :meth:`JetStreamRequests.start` says so.
"""

from __future__ import annotations

import asyncio
import itertools

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, ConnectionDrainingError, OutboundBufferLimitError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError, NoStreamResponseError

from krt_runner import envelope
from krt_runner.envelope import KreNatsMessage
from krt_runner.errors import CallError, CallTimeout, NoResponders, NotConnected, UnexpectedAnswer
from krt_runner.jetstream_names import msg_id_header
from krt_runner.node.jetstream import none_captures, require_jetstream
from krt_runner.node.publish_acks import IN_PROCESS

# Seconds one publish waits for JetStream's acknowledgement before it is repeated (same Nats-Msg-Id).
PUBLISH_TIMEOUT = 2.0
# Seconds between two looks, while an answer is awaited, for a reconnect that may have lost it.
_RECONNECT_CHECK = 0.5
# Seconds before a publish is repeated when JetStream is not there yet (a server still starting).
_UNAVAILABLE_PAUSE = 0.2
_MSG_ID = "Nats-Msg-Id"


# How a client (krt_runner.Client, call, up, local()) chooses at-most-once delivery instead.
_CLIENT_SETTING = 'delivery="at-most-once" (krt-runner call --delivery)'


class JetStreamRequests:
    """Requests through JetStream over one NATS connection; any number in flight (one inbox subscription)."""

    def __init__(self, nc: NatsClient, *, setting: str = _CLIENT_SETTING) -> None:
        """``setting``: how its user chooses at-most-once instead, for the error when the server has no JetStream."""
        self._nc = nc
        self._setting = setting
        self._js = nc.jetstream()
        self._prefix = ""
        self._tokens = itertools.count()
        self._waiting: dict[str, asyncio.Future[bytes]] = {}
        self.ignored_answers = 0  # answers to requests already answered, or no longer waited for

    async def start(self) -> None:
        """Subscribe to this requester's inbox (once connected); :class:`~krt_runner.errors.JetStreamError` when
        the server has no JetStream."""
        await require_jetstream(self._nc, setting=self._setting)
        self._prefix = self._nc.new_inbox()
        await self._nc.subscribe(f"{self._prefix}.*", cb=self._on_answer)
        await self._nc.flush()

    async def request(self, subject: str, message: KreNatsMessage, *, timeout: float, max_payload: int) -> bytes:
        """Send ``message`` (its ``reply`` is set here) to ``subject``; the answer's bytes.

        Raises :class:`CallTimeout`, :class:`NoResponders` (no stream captures ``subject``), :class:`NotConnected`
        or :class:`CallError` (JetStream refused it), and ``PayloadTooLargeError``.
        """
        token = str(next(self._tokens))
        message.reply = f"{self._prefix}.{token}"
        # room for the Nats-Msg-Id header of any attempt (tracking_id:attempt)
        data = envelope.encode(message, max_payload=max_payload - len(msg_id_header(f"{message.tracking_id}:{10**9}")))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        answer: asyncio.Future[bytes] = loop.create_future()
        self._waiting[token] = answer
        try:
            for attempt in itertools.count():
                msg_id = message.tracking_id if attempt == 0 else f"{message.tracking_id}:{attempt}"
                await self._publish(subject, data, msg_id, deadline, first=attempt == 0)
                # Counted once stored: a request published while the connection was down is stored after the
                # reconnect, and its answer comes on the new connection; only a later reconnect may lose it.
                reconnects = self._reconnects()
                if await self._answered(answer, deadline, reconnects, subject, timeout):
                    break
            return answer.result()
        finally:
            del self._waiting[token]

    def _reconnects(self) -> int:
        return int(self._nc.stats["reconnects"])

    async def _publish(self, subject: str, data: bytes, msg_id: str, deadline: float, *, first: bool) -> None:
        """Until JetStream acknowledged it (the same ``msg_id`` each time: stored once)."""
        loop = asyncio.get_running_loop()
        while (left := deadline - loop.time()) > 0:
            try:
                await self._js.publish(subject, data, timeout=min(PUBLISH_TIMEOUT, left), headers={_MSG_ID: msg_id})
                return
            except NoStreamResponseError:
                if first:
                    raise NoResponders(f"no JetStream stream took {subject!r}: none captures it (is the workflow "
                                       "running, with KRT_DELIVERY=at-least-once?), or, on a NATS cluster, the "
                                       "servers holding its stream are down (KRT_JETSTREAM_REPLICAS)") from None
                await asyncio.sleep(_UNAVAILABLE_PAUSE)
            except NatsTimeoutError:
                await self._captured(subject)
                first = False  # the connection may be down: once it is back, JetStream may still be starting
            except APIError as exc:
                _unless_in_process(exc, subject)
                first = False
            except ValueError:  # the answer is no JetStream acknowledgement (JSON): a node took the publish itself
                raise _taken_by_a_node(subject, "and answered it") from None
            except (ConnectionClosedError, ConnectionDrainingError, OutboundBufferLimitError) as exc:
                raise NotConnected(f"cannot send on {subject!r}: {type(exc).__name__}") from None
        raise CallTimeout(f"JetStream did not take the request on {subject!r} in time")

    async def _captured(self, subject: str) -> None:
        """After a publish nothing acknowledged in time: :class:`UnexpectedAnswer` when JetStream says no stream
        captures ``subject`` (a node took it, at-most-once, and is still at it: published again, it would take it
        again)."""
        if await none_captures(self._nc, subject):
            raise _taken_by_a_node(subject, "and did not answer the publish in time")

    async def _answered(
        self, answer: asyncio.Future[bytes], deadline: float, reconnects: int, subject: str, timeout: float
    ) -> bool:
        """``True`` once answered; ``False`` after a reconnect (send it again); :class:`CallTimeout` at the deadline."""
        loop = asyncio.get_running_loop()
        while not answer.done():
            left = deadline - loop.time()
            if left <= 0:
                raise CallTimeout(f"no answer on {subject!r} within {timeout:g}s")
            if self._reconnects() != reconnects:
                return False
            await asyncio.wait((answer,), timeout=min(left, _RECONNECT_CHECK))
        return True

    async def _on_answer(self, msg: Msg) -> None:
        waiting = self._waiting.get(msg.subject[len(self._prefix) + 1 :])
        if waiting is None or waiting.done():
            self.ignored_answers += 1
            return
        waiting.set_result(msg.data)


def _taken_by_a_node(subject: str, what_then: str) -> UnexpectedAnswer:
    return UnexpectedAnswer(f"a node took the request on {subject!r}, not a JetStream stream, {what_then}: the "
                            "workflow runs at-most-once; send it at-most-once too (KRT_DELIVERY, --delivery)")


def _unless_in_process(exc: APIError, subject: str) -> None:
    """:class:`CallError` for a refusal, but for "in process" (the first publish is still being stored): then the
    same publish again."""
    if exc.err_code != IN_PROCESS:
        raise CallError(f"JetStream refused the request on {subject!r}: {exc.description or exc}") from None
