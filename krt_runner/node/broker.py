"""A node's NATS connection: connect, subscribe, publish, drain, close, and what the server reports.

Reconnects are nats-py's own, told never to give up. Failures that retrying cannot fix (bad credentials, an untrusted
certificate, TLS asked for but not offered) stop the first connect with :class:`BrokerConnectError` instead of looping
and hiding the cause. A connection that closes for good outside shutdown, or a subscription the server revokes, sets
:attr:`Broker.failed`: the node then stops and exits 1, for its supervisor to restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError, SlowConsumerError
from nats.errors import TimeoutError as NatsTimeoutError

from krt_runner.config import redact_url
from krt_runner.errors import BrokerConnectError, CallTimeout, NoResponders, NotConnected, describe
from krt_runner.node.cancelling import cancel_until_done
from krt_runner.node.lost_messages import PublishRefusals, SlowConsumerDrops
from krt_runner.node.nats_connection import DirectCallback, NodeClient
from krt_runner.node.nats_settings import (
    ConnectionSettings,
    connect_options,
    explain,
    is_fatal,
    servers_and_credentials,
    tls_required,
)
from krt_runner.node.request_mux import RequestMux

__all__ = ["Broker", "MessageCallback", "Msg", "Subscription"]

MessageCallback = Callable[[Msg], Awaitable[None]]
# One line per this many seconds at most for repeated errors (connect retries, slow consumer, bad frames).
_ERROR_LOG_INTERVAL = 5.0
# Seconds a drain cut short by close() gets to end.
_CLOSE_WAIT = 1.0
# Seconds between PINGs to the server, and how many may go unanswered before the connection counts as lost.
PING_INTERVAL = 5.0
MAX_OUTSTANDING_PINGS = 2
# How nats-server words a subscription it does not allow.
_SUBSCRIPTION_REFUSED = "permissions violation for subscription"
# The NATS Services API's subjects (krt_runner.node.discovery).
_DISCOVERY_PREFIX = '"$srv.'  # as nats-py words it: lower case



class Broker:
    """A NATS connection for one node (or the entrypoint), with logged life-cycle events."""

    def __init__(self, settings: ConnectionSettings, logger: Any) -> None:
        self._settings = settings
        self._log = logger
        self._nc = NodeClient()
        self._nc.require_tls = tls_required(settings)
        self._nc.on_bad_frame = self._on_bad_frame
        self._requests = RequestMux(self._nc)
        # publish_now(subject, payload): queue ``payload`` for ``subject`` at once, for nats-py's flusher (no round trip
        # per message). ``None`` when queued, else an awaitable to await (see NodeClient.publish_now): the hot path
        # awaits no coroutine when there is nothing to wait for. The client's own method (the same object for the
        # connection's life, reconnects included), no call of ours between.
        self.publish_now: Callable[[str, bytes], Awaitable[None] | None] = self._nc.publish_now
        self._subscription: Subscription | None = None
        self._connected_once = False
        self._closing = False
        self._said_closed = False
        self._fatal: asyncio.Future[BaseException] | None = None
        self._last_error_log = 0.0
        limits = dict(pending_msgs_limit=settings.pending_msgs_limit, pending_bytes_limit=settings.pending_bytes_limit)
        self.drops = SlowConsumerDrops(logger, self._error_log_due, _ERROR_LOG_INTERVAL, limits)
        self.refusals = PublishRefusals(self, logger, self._error_log_due)
        self._refused_subscription = ""  # the server's words, once it refused our subscription
        self._subscribed = False  # the server has taken the subscription
        self._discovery_refused = False
        self.failed = asyncio.Event()  # the connection closed for good, or the subscription was revoked
        self.on_connection_change: Callable[[bool], None] | None = None  # called with is_connected on each change

    @property
    def max_payload(self) -> int:
        """The server's, as nats-py keeps it (read once per answer: not through nats-py's own property)."""
        return self._nc._max_payload

    @property
    def is_connected(self) -> bool:
        return bool(self._nc.is_connected)

    @property
    def client(self) -> NodeClient:
        return self._nc

    @property
    def bad_frames(self) -> int:
        """Messages the server sent that could not be decoded, dropped."""
        return self._nc.bad_frames

    async def connect(self) -> None:
        """Connect, retrying an unreachable server without end; fail fast on auth and TLS errors."""
        self._fatal = asyncio.get_running_loop().create_future()
        servers, credentials = servers_and_credentials(self._settings.nats_servers)
        options = {**self._client_options(), **credentials}  # a URL's own credentials first, as nats-py does
        attempt = asyncio.ensure_future(self._nc.connect(servers=servers, **options))
        waiters: set[asyncio.Future[Any]] = {attempt, self._fatal}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:  # stopped while connecting, or refused for good: nats-py's retries end with the attempt
            refused = not attempt.done()
            await cancel_until_done(attempt)
        if refused:
            await self._close_quietly()
            raise BrokerConnectError(self._fatal_message(self._fatal.result()))
        attempt.result()
        self._connected_once = True
        self._log.info("connected to NATS", server=self._server_url(), max_payload=self.max_payload)

    def _client_options(self) -> dict[str, Any]:
        return dict(
            name=f"krt-runner:{self._settings.node_name}", allow_reconnect=True,
            max_reconnect_attempts=-1,  # nats-py gives up after 60 unless told otherwise
            reconnect_time_wait=self._settings.reconnect_wait,
            error_cb=self._on_error, disconnected_cb=self._on_disconnected, reconnected_cb=self._on_reconnected,
            closed_cb=self._on_closed,
            drain_timeout=self._settings.drain_timeout,  # seconds, fractions included
            # A server that stops answering without closing the connection (frozen, or a partition without a reset)
            # is noticed within about 15 s, not nats-py's default 6 minutes: the health check then tells the truth.
            ping_interval=PING_INTERVAL,
            max_outstanding_pings=MAX_OUTSTANDING_PINGS,
            # nats-py would run a regular expression over every published subject. This node publishes only to
            # its output subject (checked by config), to reply subjects the server delivered (no whitespace can
            # pass its protocol), and to envelope reply subjects (checked by answers.publishable).
            skip_subject_validation=True,
            **connect_options(self._settings),
        )

    def _fatal_message(self, error: BaseException) -> str:
        servers = ", ".join(redact_url(url) for url in self._settings.nats_servers)
        return f"cannot connect to NATS at {servers}: {explain(error)}"

    async def subscribe(
        self, subject: str, *, queue: str, direct: DirectCallback, callback: MessageCallback,
        pending_limits: tuple[int, int],
    ) -> Subscription:
        """The node's input subscription: ``direct`` takes messages first (see :meth:`NodeClient.subscribe_direct`),
        ``callback`` those it declines, of which nats-py holds up to ``pending_limits`` (messages, bytes)."""
        msgs, size = pending_limits
        self._subscription = await self._nc.subscribe_direct(subject, direct, cb=callback, queue=queue,
                                                             pending_msgs_limit=msgs, pending_bytes_limit=size)
        # One round trip so the server has the interest before we call ourselves ready, and has said if it refuses.
        await self._nc.write_pending()  # the SUB first: flush() writes its PING ahead of what is still queued
        await self._nc.flush()
        if self._refused_subscription:
            raise BrokerConnectError(
                f"NATS refused this node's subscription to {subject!r} ({self._refused_subscription}); give its NATS "
                f"user permission to subscribe to {subject!r} (and to its queue group {queue!r})"
            )
        self._subscribed = True
        self._log.info("subscribed", subject=subject, queue=queue)
        return self._subscription

    async def subscribe_each(self, subjects: list[str], callback: MessageCallback) -> None:
        """Plain subscriptions (no queue group) for what every instance answers itself: the discovery subjects.

        A refusal by the server (a NATS user without permission for them) is logged once, never fatal."""
        for subject in subjects:
            await self._nc.subscribe(subject, cb=callback)

    def publish(self, subject: str, payload: bytes) -> Awaitable[None]:
        """``publish_now``, to await: ``NodeClient.publish_bytes``'s own coroutine, no frame of ours between."""
        return self._nc.publish_bytes(subject, payload)

    async def request(self, subject: str, payload: bytes, *, timeout: float) -> bytes:
        """One core NATS request: the answer's bytes, or :class:`NoResponders`, :class:`CallTimeout` or
        :class:`NotConnected` (the connection is closed or draining).

        Every answer comes to one inbox subscription (:class:`RequestMux`), so any number of requests can be in
        flight.
        """
        try:
            reply = await self._requests.request(subject, payload, timeout=timeout)
        except NoRespondersError:
            raise NoResponders(f"no one listens on {subject!r}") from None
        except NatsTimeoutError:
            raise CallTimeout(f"no answer on {subject!r} within {timeout:g}s") from None
        except NatsError as exc:
            raise NotConnected(f"cannot send on {subject!r}: {describe(exc)}") from None
        return reply

    async def stop_intake(self) -> None:
        """Unsubscribe and let nats-py run the callbacks of messages it already holds."""
        if self._subscription is None or self._nc.is_closed:
            return
        try:
            await self._subscription.drain()  # type: ignore[no-untyped-call]  # nats-py leaves it untyped
        except Exception as exc:  # a connection lost mid-shutdown must not stop the shutdown
            self._log.warning("could not drain subscription", error=describe(exc))

    async def close(self, timeout: float | None = None) -> None:
        """Flush what is queued for the server, then close; within ``timeout`` seconds when given (what is left
        of the drain: a server that stopped answering must not hold a stop for nats-py's own timeouts too)."""
        self._closing = True
        if self._nc.is_closed:
            return
        if not (self._nc.is_connected or self._nc.is_reconnecting):  # it never connected: nothing to drain
            await self._close_quietly()
            return
        # nats-py's drain takes its own timeouts, and a cancelled one still flushes, for up to 10 s more: a drain
        # out of time is left to end with the connection, which close() ends now.
        if timeout is not None:
            self._nc.options["drain_timeout"] = timeout
        draining = asyncio.ensure_future(self._nc.drain())
        await asyncio.wait({draining}, timeout=timeout)
        error = draining.exception() if draining.done() else None
        if not draining.done() or error is not None:
            self._log.warning("could not drain connection; closing", error=describe(error) if error else
                              f"not done within {timeout:g}s")
            await self._close_quietly()
            await asyncio.wait({draining}, timeout=_CLOSE_WAIT)

    async def _close_quietly(self) -> None:
        with contextlib.suppress(Exception):  # closing a connection that never opened
            await self._nc.close()

    def _server_url(self) -> str:
        url = self._nc.connected_url
        return redact_url(url.geturl()) if url is not None else ""

    async def _on_error(self, error: Exception) -> None:
        if isinstance(error, SlowConsumerError):
            self.drops.add()
            return
        if self.refusals.take(str(error)):
            return
        if _SUBSCRIPTION_REFUSED in str(error).lower():
            self._on_subscription_refused(str(error))
            return
        if not self._connected_once and self._fatal is not None:
            if self._fatal.done():  # start-up already fails with the first fatal error; the rest is its echo
                return
            if is_fatal(error):
                self._fatal.set_result(error)
                return
        if self._error_log_due():
            self._log.warning("NATS error", error=describe(error), connected=self.is_connected)

    def _on_subscription_refused(self, error: str) -> None:
        if _DISCOVERY_PREFIX in error.lower():  # the Services API subjects are optional: serve without them
            if not self._discovery_refused:
                self._discovery_refused = True
                self._log.warning("NATS refused the services discovery subjects; serving without them "
                                  "(nats micro will not list this node)", error=error)
            return
        if not self._subscribed or self._refused_subscription:  # subscribe() reports it, at start-up
            self._refused_subscription = self._refused_subscription or error
            return
        self._fail(f"NATS revoked this node's subscription: {error}")

    def _on_bad_frame(self, error: BaseException) -> None:
        if self._error_log_due():
            self._log.error("message dropped: the server sent a frame nats-py cannot decode",
                            error=describe(error), bad_frames=self.bad_frames)

    def fail(self, reason: str) -> None:
        """Stop the node as a connection closed for good does (exit 1): it can serve no more."""
        self._fail(reason)

    def _fail(self, reason: str) -> None:
        if not self.failed.is_set():
            self._log.error(reason)
            self.failed.set()

    def _error_log_due(self) -> bool:
        now = time.monotonic()
        if now - self._last_error_log < _ERROR_LOG_INTERVAL:
            return False
        self._last_error_log = now
        return True

    async def _on_disconnected(self) -> None:
        if self._connected_once and not self._closing:
            self._log.warning("disconnected from NATS; reconnecting")
        self._tell_connection_change()

    async def _on_reconnected(self) -> None:
        self._log.info("reconnected to NATS", server=self._server_url())
        self._tell_connection_change()

    def _tell_connection_change(self) -> None:
        if self.on_connection_change is not None:
            self.on_connection_change(self.is_connected)

    async def _on_closed(self) -> None:
        if self._connected_once and not self._closing:
            error = self._nc.last_error
            self._fail(f"NATS connection closed for good: {describe(error) if error else 'closed by the server'}")
        elif self._connected_once and not self._said_closed:  # once, though a drain cut short closes twice
            self._said_closed = True
            self._log.info("NATS connection closed")
