"""The nats-py client as a node uses it: TLS enforced, bad frames survived, and connection errors explained.

With :mod:`~krt_runner.node.broker`, the only place that imports nats-py on the node's side.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from nats.aio.client import Client
from nats.errors import Error as NatsError

from krt_runner.errors import describe

# Failures of the first connect that retrying cannot fix.
_FATAL_MARKERS = ("authorization violation", "authentication", "certificate", "tls", "ssl", "user credentials")
_NO_TLS = "the server does not offer TLS"
_CREDENTIAL_SETTINGS = (
    "KRT_NATS_USER and KRT_NATS_PASSWORD, KRT_NATS_TOKEN, KRT_NATS_NKEY_SEED, KRT_NATS_CREDS "
    "or the user:password in KRT_NATS_SERVER"
)
_TLS_SETTINGS = "KRT_NATS_TLS_CA (the CA that signed the server's certificate), KRT_NATS_TLS_CERT and KRT_NATS_TLS_KEY"


class ConnectionSettings(Protocol):
    """The settings a NATS connection reads: a node's :class:`~krt_runner.config.Settings`, or the entrypoint's."""

    @property
    def nats_servers(self) -> tuple[str, ...]: ...
    @property
    def node_name(self) -> str: ...
    @property
    def reconnect_wait(self) -> float: ...
    @property
    def drain_timeout(self) -> float: ...
    @property
    def pending_msgs_limit(self) -> int: ...
    @property
    def pending_bytes_limit(self) -> int: ...
    @property
    def nats_user(self) -> str | None: ...
    @property
    def nats_password(self) -> str | None: ...
    @property
    def nats_token(self) -> str | None: ...
    @property
    def nats_nkey_seed(self) -> Path | None: ...
    @property
    def nats_creds(self) -> Path | None: ...
    @property
    def nats_tls_ca(self) -> Path | None: ...
    @property
    def nats_tls_cert(self) -> Path | None: ...
    @property
    def nats_tls_key(self) -> Path | None: ...


def tls_context(settings: ConnectionSettings) -> ssl.SSLContext | None:
    """An SSL context for the TLS settings, or ``None`` when none are set."""
    if not (settings.nats_tls_ca or settings.nats_tls_cert):
        return None
    context = ssl.create_default_context(cafile=str(settings.nats_tls_ca) if settings.nats_tls_ca else None)
    if settings.nats_tls_cert and settings.nats_tls_key:
        context.load_cert_chain(str(settings.nats_tls_cert), str(settings.nats_tls_key))
    return context


def tls_required(settings: ConnectionSettings) -> bool:
    """TLS settings or a ``tls://`` URL: the connection must be encrypted, never plaintext."""
    return bool(settings.nats_tls_ca or settings.nats_tls_cert) or any(
        url.startswith("tls://") for url in settings.nats_servers
    )


class NodeClient(Client):
    """nats-py's client, refusing a server that does not offer TLS when TLS is asked for (as nats.go does).

    nats-py upgrades to TLS only when the server's first INFO says so, and would
    otherwise send the credentials in clear to a server without TLS or to
    anyone who rewrites that INFO. The check runs before CONNECT is sent, on
    every connect and reconnect.
    """

    require_tls = False
    bad_frames = 0  # messages the server sent that could not be decoded: dropped
    on_bad_frame: Callable[[BaseException], None] | None = None

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        if initial_connection and self.require_tls and not self._will_encrypt(info):
            raise NatsError(f"nats: {_NO_TLS}, and this node's settings require TLS")
        await super()._process_info(info, initial_connection=initial_connection)

    def _will_encrypt(self, info: dict[str, Any]) -> bool:
        scheme = self._current_server.uri.scheme if self._current_server is not None else ""
        if scheme in ("ws", "wss"):  # websocket TLS is the transport's: wss is encrypted already, ws never
            return scheme == "wss"
        return bool(info.get("tls_required"))

    async def write_pending(self) -> None:
        """Hand every command still queued (a SUB) to the socket now. nats-py's ``flush()`` writes its PING
        straight to the socket, ahead of queued commands: its PONG can come before the server's answer to them."""
        await self._flush_pending(force_flush=True)

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        """A frame nats-py cannot decode (a reply subject or a header status that is not UTF-8) costs that one
        message, counted, instead of ending the read loop and leaving the connection deaf."""
        try:
            await super()._process_msg(sid, subject, reply, data, headers)
        except Exception as exc:
            self.bad_frames += 1
            if self.on_bad_frame is not None:
                self.on_bad_frame(exc)

    async def _read_loop(self) -> None:
        """nats-py's read loop, whose end on an error it does not handle becomes a reconnect, never a stall."""
        await super()._read_loop()
        if self._status == Client.CONNECTED:
            await self._process_op_err(NatsError("nats: the read loop ended on an unexpected error"))


def connect_options(settings: ConnectionSettings) -> dict[str, Any]:
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


def is_fatal(error: BaseException) -> bool:
    if isinstance(error, ssl.SSLError):
        return True
    text = str(error).lower()
    return any(marker in text for marker in _FATAL_MARKERS)


def explain(error: BaseException) -> str:
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
