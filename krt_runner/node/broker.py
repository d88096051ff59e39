"""The only module that talks to NATS: connect, subscribe, publish, drain, close.

Reconnects are nats-py's own, told never to give up. Failures that retrying
cannot fix (bad credentials, an untrusted certificate, TLS asked for but not
offered) stop the first connect with :class:`BrokerConnectError` instead of
looping and hiding the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import SlowConsumerError

from krt_runner.config import Settings, redact_url
from krt_runner.errors import BrokerConnectError, describe

__all__ = ["Broker", "MessageCallback", "Msg", "connect_options", "tls_context", "tls_required"]

MessageCallback = Callable[[Msg], Awaitable[None]]
# One line per this many seconds at most for repeated errors (connect retries, slow consumer).
_ERROR_LOG_INTERVAL = 5.0
_FATAL_MARKERS = ("authorization violation", "authentication", "certificate", "tls", "ssl", "user credentials")
_NO_TLS = "the server does not offer TLS"
_CREDENTIAL_SETTINGS = (
    "KRT_NATS_USER and KRT_NATS_PASSWORD, KRT_NATS_TOKEN, KRT_NATS_NKEY_SEED, KRT_NATS_CREDS "
    "or the user:password in KRT_NATS_SERVER"
)
_TLS_SETTINGS = "KRT_NATS_TLS_CA (the CA that signed the server's certificate), KRT_NATS_TLS_CERT and KRT_NATS_TLS_KEY"


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """An SSL context for the TLS settings, or ``None`` when none are set."""
    if not (settings.nats_tls_ca or settings.nats_tls_cert):
        return None
    context = ssl.create_default_context(cafile=str(settings.nats_tls_ca) if settings.nats_tls_ca else None)
    if settings.nats_tls_cert and settings.nats_tls_key:
        context.load_cert_chain(str(settings.nats_tls_cert), str(settings.nats_tls_key))
    return context


def tls_required(settings: Settings) -> bool:
    """TLS settings or a ``tls://`` URL: the connection must be encrypted, never plaintext."""
    return bool(settings.nats_tls_ca or settings.nats_tls_cert) or any(
        url.startswith("tls://") for url in settings.nats_servers
    )


class _Client(Client):
    """nats-py's client, refusing a server that does not offer TLS when TLS is asked for (as nats.go does).

    nats-py upgrades to TLS only when the server's first INFO says so, and would
    otherwise send the credentials in clear to a server without TLS or to
    anyone who rewrites that INFO. The check runs before CONNECT is sent, on
    every connect and reconnect.
    """

    require_tls = False

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        if initial_connection and self.require_tls and not self._will_encrypt(info):
            raise NatsError(f"nats: {_NO_TLS}, and this node's settings require TLS")
        await super()._process_info(info, initial_connection=initial_connection)

    def _will_encrypt(self, info: dict[str, Any]) -> bool:
        scheme = self._current_server.uri.scheme if self._current_server is not None else ""
        if scheme in ("ws", "wss"):  # websocket TLS is the transport's: wss is encrypted already, ws never
            return scheme == "wss"
        return bool(info.get("tls_required"))


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
        self._nc: Client = _Client()
        self._nc.require_tls = tls_required(settings)
        self._subscription: Subscription | None = None
        self._connected_once = False
        self._closing = False
        self._fatal: asyncio.Future[BaseException] | None = None
        self._last_error_log = 0.0
        self.slow_consumer_drops = 0

    @property
    def max_payload(self) -> int:
        return self._nc.max_payload

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
        waiters: set[asyncio.Future[Any]] = {attempt, self._fatal}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
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
            # nats-py would run a regular expression over every published subject. This node publishes only to
            # its output subject (checked by config), to reply subjects the server delivered (no whitespace can
            # pass its protocol), and to envelope reply subjects (checked by runner._publishable).
            skip_subject_validation=True,
            **connect_options(self._settings),
        )

    def _fatal_message(self, error: BaseException) -> str:
        servers = ", ".join(redact_url(url) for url in self._settings.nats_servers)
        return f"cannot connect to NATS at {servers}: {_explain(error)}"

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

    def publish(self, subject: str, payload: bytes) -> Awaitable[None]:
        """Queue ``payload`` for ``subject``; nats-py's flusher writes it (no round trip per message).

        Returns nats-py's own coroutine to await: no frame of ours in between, once per message.
        """
        return self._nc.publish(subject, payload)

    async def stop_intake(self) -> None:
        """Unsubscribe and let nats-py run the callbacks of messages it already holds."""
        if self._subscription is None or self._nc.is_closed:
            return
        try:
            await self._subscription.drain()  # type: ignore[no-untyped-call]  # nats-py leaves it untyped
        except Exception as exc:  # a connection lost mid-shutdown must not stop the shutdown
            self._log.warning("could not drain subscription", error=describe(exc))

    async def close(self) -> None:
        """Flush what is queued for the server, then close."""
        self._closing = True
        if self._nc.is_closed:
            return
        try:
            await self._nc.drain()
        except Exception as exc:
            self._log.warning("could not drain connection; closing", error=describe(exc))
            await self._close_quietly()

    async def _close_quietly(self) -> None:
        with contextlib.suppress(Exception):  # closing a connection that never opened
            await self._nc.close()

    def _server_url(self) -> str:
        url = self._nc.connected_url
        return redact_url(url.geturl()) if url is not None else ""

    async def _on_error(self, error: Exception) -> None:
        if isinstance(error, SlowConsumerError):
            self._on_slow_consumer()
            return
        if not self._connected_once and self._fatal is not None:
            if self._fatal.done():  # start-up already fails with the first fatal error; the rest is its echo
                return
            if _is_fatal(error):
                self._fatal.set_result(error)
                return
        if self._error_log_due():
            self._log.warning("NATS error", error=describe(error), connected=self.is_connected)

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
        if self._connected_once and not self._closing:
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


def _explain(error: BaseException) -> str:
    """One sentence for a fatal connect error: what went wrong and which settings to look at."""
    text = str(error).strip()
    if "authorization violation" in text.lower():
        return f"the server refused the credentials (Authorization Violation); check {_CREDENTIAL_SETTINGS}"
    if _NO_TLS in text:
        return f"{_NO_TLS} but TLS is set ({_TLS_SETTINGS} or a tls:// URL); nothing was sent in clear"
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"the server's TLS certificate is not trusted ({error.verify_message}); check {_TLS_SETTINGS}"
    if isinstance(error, ssl.SSLError):
        return (
            f"the TLS handshake failed ({error.reason or text}): the server did not accept this node's certificate; "
            f"check {_TLS_SETTINGS}"
        )
    return f"{describe(error)}; check the credentials and TLS settings"
