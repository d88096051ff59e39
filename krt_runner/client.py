"""Request a workflow from Python, as a KRE v1 entrypoint does.

:class:`Client` (asyncio) and :class:`BlockingClient` (plain threads) keep one
NATS connection for all their calls; any number of calls can be in flight at
once (nats-py routes every answer to its caller through one inbox
subscription). With ``delivery="at-least-once"`` the requests go through
JetStream, to workflows whose nodes run in that mode, and a second answer to a
request is ignored (see :mod:`krt_runner.jetstream_requests`). Each call sends a ``KreNatsMessage`` with a fresh
``tracking_id`` and an ``entrypoint`` tracking entry, and returns the answer's
payload as ``response_type``. A call that gets no usable answer raises a
:class:`~krt_runner.errors.CallError`:

- :class:`ErrorAnswer`: the workflow answered with an error (``.error``, ``.tracking_id``);
- :class:`CallTimeout`: no answer within ``timeout`` seconds;
- :class:`NoResponders`: no node listens on the subject;
- :class:`UnexpectedAnswer`: the payload is not a ``response_type``;
- :class:`ClientConnectError`: NATS could not be reached.

Nodes talk to NATS through :mod:`krt_runner.node.broker`; this module is the
requester's side of the same wire.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, TypeVar

from google.protobuf.message import Message
from nats import errors as nats_errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from krt_runner import envelope
from krt_runner.envelope import KreNatsMessage
from krt_runner.errors import (
    CallError,
    CallTimeout,
    ClientConnectError,
    ErrorAnswer,
    JetStreamError,
    NoResponders,
    NotConnected,
    UnexpectedAnswer,
)
from krt_runner.jetstream_requests import JetStreamRequests
from krt_runner.node.jetstream import consumer_pulling, stream_of
from krt_runner.requester_connection import connect_requester
from krt_runner.requester_envelope import check_timeout, decoded_answer, request_envelope, unpack_answer
from krt_runner.setting_values import AT_LEAST_ONCE, DELIVERY_MODES

__all__ = [
    "BlockingClient",
    "CallError",
    "CallTimeout",
    "Client",
    "ClientConnectError",
    "ErrorAnswer",
    "NoResponders",
    "UnexpectedAnswer",
    "request_envelope",
]

ResponseT = TypeVar("ResponseT", bound=Message)
ResultT = TypeVar("ResultT")
# Seconds a call waits for its answer unless told otherwise.
DEFAULT_TIMEOUT = 30.0
# Seconds the first connection may take before the client gives up.
CONNECT_TIMEOUT = 5.0
# Seconds has_responders waits: a no-responders status comes at once, a node's error answer soon after.
PROBE_TIMEOUT = 2.0
# Bytes that do not parse as a KreNatsMessage, so no node runs a handler for them.
_PROBE = b"krt-runner: is anyone taking requests here?"


class Client:
    """An asyncio client: ``async with await Client.connect(url) as client: await client.call(...)``."""

    def __init__(self, nc: NatsClient, *, jetstream: JetStreamRequests | None = None) -> None:
        self._nc = nc
        self._jetstream = jetstream
        self._closed = False
        self._requests: set[asyncio.Future[Any]] = set()  # the requests in flight, which close() ends
        self._closed_requests: set[asyncio.Future[Any]] = set()  # those close() cancelled

    @property
    def ignored_answers(self) -> int:
        """At-least-once: answers ignored, to requests already answered (a handler that ran twice) or given up."""
        return self._jetstream.ignored_answers if self._jetstream is not None else 0

    @classmethod
    async def connect(
        cls, servers: str | Sequence[str], *, connect_timeout: float = CONNECT_TIMEOUT, delivery: str = "at-most-once",
        **options: Any,
    ) -> Client:
        """Connect to NATS (``servers``: a URL, comma-separated URLs or a list); ``options`` go to nats-py.

        ``delivery``: ``"at-most-once"`` (core NATS requests, as KRE v1) or ``"at-least-once"`` (through
        JetStream, for nodes with ``KRT_DELIVERY=at-least-once``).
        """
        if delivery not in DELIVERY_MODES:
            raise ValueError(f"delivery must be one of {', '.join(DELIVERY_MODES)}, not {delivery!r}")
        nc = await connect_requester(servers, connect_timeout=connect_timeout, **options)
        if delivery != AT_LEAST_ONCE:
            return cls(nc)
        jetstream = JetStreamRequests(nc)
        try:
            await jetstream.start()
        except JetStreamError as exc:
            await nc.close()
            raise ClientConnectError(str(exc)) from None
        return cls(nc, jetstream=jetstream)

    async def call(
        self,
        subject: str,
        request: Message,
        response_type: type[ResponseT],
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> ResponseT:
        """Send ``request`` to the workflow listening on ``subject``; return its answer as ``response_type``."""
        return unpack_answer(await self.call_raw(subject, request, timeout=timeout), response_type)

    async def call_raw(self, subject: str, request: Message, *, timeout: float = DEFAULT_TIMEOUT) -> KreNatsMessage:
        """Like :meth:`call`, but return the whole answer envelope (tracking, error) unchecked."""
        if self._nc.is_closed or self._closed:
            raise NotConnected("this client is closed: connect again")
        if not self._nc.is_connected and self._jetstream is None:  # nats-py would lose it: CallTimeout, much later
            raise NotConnected("the NATS connection is down (reconnecting): the request cannot be sent now; retry "
                               "in a moment")
        check_timeout(timeout)
        message, max_payload = request_envelope(request), int(self._nc.max_payload)
        if self._jetstream is not None:
            data = await self._unless_closed(
                self._jetstream.request(subject, message, timeout=timeout, max_payload=max_payload))
            return decoded_answer(data, subject)
        data = envelope.encode(message, max_payload=max_payload)
        try:
            reply = await self._unless_closed(self._nc.request(subject, data, timeout=timeout))
        except nats_errors.NoRespondersError:
            raise NoResponders(f"no node listens on {subject!r}: is the workflow running? (a node whose NATS "
                               "server just died is away until it reconnects, a moment: a retry may find it)") from None
        except nats_errors.TimeoutError:
            raise CallTimeout(f"no answer on {subject!r} within {timeout:g}s") from None
        return decoded_answer(reply.data, subject)

    async def _unless_closed(self, request: Awaitable[ResultT]) -> ResultT:
        """``request``'s result; :class:`NotConnected` as soon as the client closes (nats-py would leave it waiting
        its whole timeout)."""
        task = asyncio.ensure_future(request)
        self._requests.add(task)
        try:
            return await task
        except asyncio.CancelledError:
            if task in self._closed_requests:  # by close(), not the caller's own cancellation
                raise NotConnected("the client was closed before the answer came") from None
            raise
        except (nats_errors.ConnectionClosedError, nats_errors.ConnectionDrainingError):  # closed as it was sent
            raise NotConnected("the client was closed before the answer came") from None
        finally:
            self._requests.discard(task)
            self._closed_requests.discard(task)

    async def has_responders(self, subject: str, *, timeout: float = PROBE_TIMEOUT) -> bool:
        """Whether anything takes requests on ``subject``: a request gets anything but NATS's no-responders status.

        Its bytes are no ``KreNatsMessage``: a krt-runner or KRE node answers it with an error and runs no handler.
        A subject a JetStream stream captures is not probed (the stream would store the probe and hand it to the
        next node to start as a request): it is taken when its nodes' durable consumer is pulled from; ``False``
        when JetStream does not say in ``timeout`` whether a stream captures it.
        """
        stream = await stream_of(self._nc, subject, timeout=timeout)
        if stream is None:
            return False
        if stream:
            return await consumer_pulling(self._nc, stream, subject)
        try:
            await self._nc.request(subject, _PROBE, timeout=timeout)
        except nats_errors.NoRespondersError:
            return False
        except nats_errors.TimeoutError:  # taken, and not answered in time
            return True
        return True

    async def answer(self, subject: str, answer: Callable[[bytes], bytes]) -> None:
        """Answer every request on ``subject`` with ``answer(body)`` until the client closes (``up``'s local
        mongo-writer); a message sent without a reply subject is passed to ``answer`` all the same."""

        async def respond(msg: Msg) -> None:
            reply = answer(msg.data)
            if msg.reply:
                await self._nc.publish(msg.reply, reply)

        await self._nc.subscribe(subject, cb=respond)
        await self._nc.flush()  # the server has the interest before anyone is told it is there

    async def close(self) -> None:
        """Close the connection; a call in flight raises :class:`NotConnected` at once."""
        self._closed = True
        for request in self._requests:
            self._closed_requests.add(request)
            request.cancel()
        with contextlib.suppress(OSError):  # the server went away meanwhile: the connection is closed all the same
            await self._nc.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class BlockingClient:
    """A client for code without asyncio; safe to share between threads.

    It runs its own event loop on a background thread; :meth:`call` blocks the
    calling thread only, so many threads can have calls in flight at once.
    """

    def __init__(self, servers: str | Sequence[str], **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="krt-client", daemon=True)
        self._lock = threading.Lock()  # over _closed and _waiting: a close() meets no call half-started
        self._closed = False
        self._waiting: set[concurrent.futures.Future[Any]] = set()  # calls in flight, failed by close()
        self._thread.start()
        try:
            self._client = self._run(Client.connect(servers, **options))
        except BaseException:
            self._stop_loop()
            raise

    def call(
        self, subject: str, request: Message, response_type: type[ResponseT], *, timeout: float = DEFAULT_TIMEOUT
    ) -> ResponseT:
        """Send ``request`` and wait for the answer; see :meth:`Client.call`."""
        return self._run(self._client.call(subject, request, response_type, timeout=timeout))

    def call_raw(self, subject: str, request: Message, *, timeout: float = DEFAULT_TIMEOUT) -> KreNatsMessage:
        """See :meth:`Client.call_raw`."""
        return self._run(self._client.call_raw(subject, request, timeout=timeout))

    @property
    def ignored_answers(self) -> int:
        """See :attr:`Client.ignored_answers`."""
        return self._client.ignored_answers

    def close(self) -> None:
        """Close the connection and stop the background loop; a call in flight on another thread raises
        :class:`NotConnected`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            closing = asyncio.run_coroutine_threadsafe(self._client.close(), self._loop)
        try:
            closing.result()
        finally:
            self._stop_loop()

    def _run(self, coroutine: Coroutine[Any, Any, ResultT]) -> ResultT:
        with self._lock:
            if self._closed:
                coroutine.close()
                raise NotConnected("this client is closed: make a new one")
            future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
            self._waiting.add(future)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise NotConnected("the client was closed before the answer came") from None
        finally:
            with self._lock:
                self._waiting.discard(future)

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        with self._lock:
            self._closed = True
            for future in self._waiting:  # what the stopped loop will never finish
                future.cancel()
        self._loop.close()

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
