"""The only module that talks to NATS: connect, subscribe, publish, drain, close.

Reconnects are nats-py's own, told never to give up. Failures that retrying
cannot fix (bad credentials, an untrusted certificate) stop the first connect
with :class:`BrokerConnectError` instead of looping and hiding the cause.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import SlowConsumerError

from .config import Settings, redact_url
from .errors import BrokerConnectError

MessageCallback = Callable[[Msg], Awaitable[None]]
# One line per this many seconds at most for repeated errors (connect retries, slow consumer).
_ERROR_LOG_INTERVAL = 5.0
_FATAL_MARKERS = ("authorization violation", "authentication", "certificate", "tls", "ssl", "user credentials")


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """An SSL context for the TLS settings, or ``None`` when none are set."""
    if not (settings.nats_tls_ca or settings.nats_tls_cert):
        return None
    context = ssl.create_default_context(cafile=str(settings.nats_tls_ca) if settings.nats_tls_ca else None)
    if settings.nats_tls_cert and settings.nats_tls_key:
        context.load_cert_chain(str(settings.nats_tls_cert), str(settings.nats_tls_key))
    return context


def connect_options(settings: Settings) -> dict[str, Any]:
    """nats-py ``connect`` keyword arguments for the auth and TLS settings."""
    options: dict[str, Any] = {}
    if settings.nats_user:
        options.update(user=settings.nats_user, password=settings.nats_password or "")
    if settings.nats_token:
        options["token"] = settings.nats_token
    if settings.nats_nkey_seed:
        options["nkeys_seed"] = str(settings.nats_nkey_seed)
    if settings.nats_creds:
        options["user_credentials"] = str(settings.nats_creds)
    context = tls_context(settings)
    if context is not None:
        options["tls"] = context
    return options


class Broker:
    """A NATS connection for one node, with logged life-cycle events."""

    def __init__(self, settings: Settings, logger: Any) -> None:
        self._settings = settings
        self._log = logger
        self._nc: Client = nats.NATS()
        self._subscription: Subscription | None = None
        self._connected_once = False
        self._fatal: asyncio.Future[BaseException] | None = None
        self._last_error_log = 0.0
        self.slow_consumer_drops = 0

    @property
    def max_payload(self) -> int:
        return int(self._nc.max_payload)

    @property
    def is_connected(self) -> bool:
        return bool(self._nc.is_connected)

    @property
    def client(self) -> Client:
        return self._nc

    async def connect(self) -> None:
        """Connect, retrying an unreachable server without end; fail fast on auth and TLS errors."""
        self._fatal = asyncio.get_running_loop().create_future()
        servers = list(self._settings.nats_servers)
        attempt = asyncio.ensure_future(self._nc.connect(servers=servers, **self._client_options()))
        await asyncio.wait({attempt, self._fatal}, return_when=asyncio.FIRST_COMPLETED)
        if not attempt.done():
            attempt.cancel()
            await self._close_quietly()
            raise BrokerConnectError(self._fatal_message(self._fatal.result()))
        attempt.result()
        self._connected_once = True
        self._log.info("connected to NATS", server=self._server_url(), max_payload=self.max_payload)

    def _client_options(self) -> dict[str, Any]:
        return dict(
            name=f"krt-runner:{self._settings.node_name}",
            allow_reconnect=True,
            max_reconnect_attempts=-1,  # nats-py gives up after 60 unless told otherwise
            reconnect_time_wait=self._settings.reconnect_wait,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            closed_cb=self._on_closed,
            drain_timeout=int(self._settings.drain_timeout),
            **connect_options(self._settings),
        )

    def _fatal_message(self, error: BaseException) -> str:
        servers = ", ".join(redact_url(url) for url in self._settings.nats_servers)
        return f"cannot connect to NATS at {servers}: {_describe(error)}; check the credentials and TLS settings"

    async def subscribe(self, subject: str, *, queue: str, callback: MessageCallback) -> None:
        self._subscription = await self._nc.subscribe(
            subject,
            queue=queue,
            cb=callback,
            pending_msgs_limit=self._settings.pending_msgs_limit,
            pending_bytes_limit=self._settings.pending_bytes_limit,
        )
        # One round trip so the server has the interest before we call ourselves ready.
        await self._nc.flush()
        self._log.info("subscribed", subject=subject, queue=queue)

    async def publish(self, subject: str, payload: bytes) -> None:
        """Queue ``payload`` for ``subject``; nats-py's flusher writes it (no round trip per message)."""
        await self._nc.publish(subject, payload)

    async def stop_intake(self) -> None:
        """Unsubscribe and let nats-py run the callbacks of messages it already holds."""
        if self._subscription is None or self._nc.is_closed:
            return
        try:
            await self._subscription.drain()
        except Exception as exc:  # a connection lost mid-shutdown must not stop the shutdown
            self._log.warning("could not drain subscription", error=_describe(exc))

    async def close(self) -> None:
        """Flush what is queued for the server, then close."""
        if self._nc.is_closed:
            return
        try:
            await self._nc.drain()
        except Exception as exc:
            self._log.warning("could not drain connection; closing", error=_describe(exc))
            await self._close_quietly()

    async def _close_quietly(self) -> None:
        try:
            await self._nc.close()
        except Exception:  # noqa: S110 - closing a connection that never opened
            pass

    def _server_url(self) -> str:
        url = self._nc.connected_url
        return redact_url(url.geturl()) if url is not None else ""

    async def _on_error(self, error: Exception) -> None:
        if isinstance(error, SlowConsumerError):
            self._on_slow_consumer()
            return
        if not self._connected_once and _is_fatal(error) and self._fatal and not self._fatal.done():
            self._fatal.set_result(error)
            return
        if self._error_log_due():
            self._log.warning("NATS error", error=_describe(error), connected=self.is_connected)

    def _on_slow_consumer(self) -> None:
        self.slow_consumer_drops += 1
        if self._error_log_due():
            self._log.error(
                "slow consumer: NATS dropped messages this node could not take in time",
                dropped_total=self.slow_consumer_drops,
                pending_msgs_limit=self._settings.pending_msgs_limit,
                pending_bytes_limit=self._settings.pending_bytes_limit,
            )

    def _error_log_due(self) -> bool:
        now = time.monotonic()
        if now - self._last_error_log < _ERROR_LOG_INTERVAL:
            return False
        self._last_error_log = now
        return True

    async def _on_disconnected(self) -> None:
        if self._connected_once:
            self._log.warning("disconnected from NATS; reconnecting")

    async def _on_reconnected(self) -> None:
        self._log.info("reconnected to NATS", server=self._server_url())

    async def _on_closed(self) -> None:
        if self._connected_once:
            self._log.info("NATS connection closed")


def _is_fatal(error: BaseException) -> bool:
    if isinstance(error, ssl.SSLError):
        return True
    text = str(error).lower()
    return any(marker in text for marker in _FATAL_MARKERS)


def _describe(error: BaseException) -> str:
    text = str(error).strip() or repr(error)
    return f"{type(error).__name__}: {text}"
