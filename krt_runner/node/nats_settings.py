"""What a NATS connection's settings become: nats-py's ``connect`` options, whether TLS is required, and a
sentence for a connect error that retrying cannot fix.

Shared by a node's and the entrypoint's :class:`~krt_runner.node.broker.Broker`.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from krt_runner.errors import describe
from krt_runner.url_parts import url_login

# Failures of the first connect that retrying cannot fix.
_FATAL_MARKERS = ("authorization violation", "authentication", "certificate", "tls", "ssl", "user credentials")
NO_TLS = "the server does not offer TLS"  # NodeClient's refusal says it, explain() reads it
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


def servers_and_credentials(urls: Iterable[str]) -> tuple[list[str], dict[str, str]]:
    """The server URLs for nats-py, and the credentials of a URL that percent-encodes its user part (``/ # ? @``
    in a password), taken out of it, decoded, as nats-py's ``user`` and ``password`` (or ``token``): nats-py sends
    a URL's user part as it is written."""
    servers: list[str] = []
    credentials: dict[str, str] = {}
    for url in urls:
        bare, user, password = url_login(url)
        if "%" not in url.rpartition("@")[0] or not user:
            servers.append(url)
            continue
        servers.append(bare)
        credentials.update(dict(user=user, password=password) if password is not None else dict(token=user))
    return servers, credentials


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
    if NO_TLS in text:
        return f"{NO_TLS} but TLS is set ({_TLS_SETTINGS} or a tls:// URL); nothing was sent in clear"
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"the server's TLS certificate is not trusted ({error.verify_message}); check {_TLS_SETTINGS}"
    if isinstance(error, ssl.SSLError):
        return (
            f"the TLS handshake failed ({error.reason or text}): the server did not accept this node's certificate; "
            f"check {_TLS_SETTINGS}"
        )
    return f"{describe(error)}; check the credentials and TLS settings"
