"""Core NATS requests over one wildcard inbox whose answers are taken straight from nats-py's parser.

What nats-py's ``request`` does (one inbox subscription for every request, a token per request), without its
per-request costs: a token read from the OS (``secrets.token_hex``), a ``Msg`` made for each answer and a hop
through its subscription's queue and task, and ``asyncio.wait_for``'s extra future and callbacks. Here a request
is a counter's token, a future and a timer; its answer sets the future from the read loop.

Errors are nats-py's own, so that callers map them as they would nats-py's ``request``: ``NoRespondersError``
(the server's 503 status: no one subscribes to the subject), ``TimeoutError``, and whatever its ``publish`` raises.
"""

from __future__ import annotations

import asyncio
import itertools

from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from krt_runner.node.nats_connection import NodeClient

_NO_RESPONDERS = b"NATS/1.0 503"  # the status line of the server's answer when no one subscribes


class RequestMux:
    """Requests over one connection, any number in flight; the inbox is subscribed at the first request."""

    def __init__(self, client: NodeClient) -> None:
        self._client = client
        self._prefix = ""
        self._token_at = 0
        self._waiting: dict[str, asyncio.Future[bytes]] = {}
        self._tokens = itertools.count()
        self._subscribing = asyncio.Lock()

    @property
    def in_flight(self) -> int:
        """Requests sent and not answered, timed out or given up yet."""
        return len(self._waiting)

    async def request(self, subject: str, payload: bytes, *, timeout: float) -> bytes:
        """Publish ``payload`` with a reply inbox of this connection; the answer's bytes."""
        if not self._prefix:
            await self._subscribe()
        token = str(next(self._tokens))
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[bytes] = loop.create_future()
        self._waiting[token] = answer
        timer = loop.call_later(timeout, _expire, answer)
        try:
            await self._client.publish_bytes(subject, payload, reply=self._prefix + token)
            return await answer
        finally:
            timer.cancel()
            self._waiting.pop(token, None)

    async def _subscribe(self) -> None:
        async with self._subscribing:
            if self._prefix:
                return
            prefix = self._client.new_inbox() + "."
            await self._client.subscribe_direct(prefix + "*", self._on_answer, cb=_ignore)
            self._token_at = len(prefix)
            self._prefix = prefix

    def _on_answer(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
        answer = self._waiting.get(subject[self._token_at :].decode())
        if answer is None or answer.done():  # too late: timed out or given up
            return True
        if headers and headers.startswith(_NO_RESPONDERS):
            answer.set_exception(NoRespondersError())
        else:
            answer.set_result(data)
        return True


def _expire(answer: asyncio.Future[bytes]) -> None:
    if not answer.done():
        answer.set_exception(NatsTimeoutError())


async def _ignore(msg: Msg) -> None:
    """Nothing is declined by the direct callback; nats-py's path never gets a message."""
