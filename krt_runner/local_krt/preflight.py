"""What ``up`` looks at on a NATS server it did not start (``--nats``), before it starts anything there.

- Whether a server answers at all: a TCP connection and, for ``nats://``, the
  ``INFO`` line every NATS server sends first. Without this a wrong URL costs
  the whole ready timeout (the nodes retry their connection without end).
- Whether something already takes requests on a workflow's entry subject
  (another ``up``, a KRE): the nodes started here would share its requests,
  each request going to one or the other.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from krt_runner.client import Client
from krt_runner.errors import CallError
from krt_runner.setting_values import nats_servers
from krt_runner.url_parts import redact_url

# Seconds a server gets to accept the probe's connection and send its INFO line.
PROBE_TIMEOUT = 3.0
_DEFAULT_PORTS = {"nats": 4222, "tls": 4222, "ws": 80, "wss": 443}


def unanswered(servers: str, *, timeout: float = PROBE_TIMEOUT) -> str:
    """Why no NATS server answered at ``servers`` (comma-separated URLs): ``""`` when one did.

    Only ``nats://`` is asked for its ``INFO`` line: a ``tls://`` server may want the TLS handshake first, and a
    ``ws://`` one speaks HTTP, so a connection is all that can be told there.
    """
    try:
        urls = nats_servers(servers)
    except ValueError as exc:
        return str(exc)
    reasons = [_reason(url, timeout) for url in urls]
    if all(reasons):
        shown = ", ".join(redact_url(url) for url in urls)
        return f"no NATS server answered at {shown} ({'; '.join(reasons)})"
    return ""


def _reason(url: str, timeout: float) -> str:
    parts = urlsplit(url)
    address = (parts.hostname or "", parts.port or _DEFAULT_PORTS[parts.scheme])
    try:
        connection = socket.create_connection(address, timeout=timeout)
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    with connection:
        if parts.scheme != "nats":
            return ""
        try:
            if connection.recv(4).startswith(b"INFO"):
                return ""
        except OSError:  # no line in time
            pass
    return f"something listens at {address[0]}:{address[1]}, but it sent no NATS INFO line"


async def warn_when_taken(
    url: str, subjects: list[str], *, say: Callable[[str], None], options: Mapping[str, Any]
) -> None:
    """Say which of ``subjects`` something already takes requests on, at ``url`` (nats-py ``options``: credentials);
    nothing when it cannot tell."""
    try:
        async with await Client.connect(url, **options) as client:
            taken = [subject for subject in subjects if await client.has_responders(subject)]
    except CallError:  # the nodes will report what is wrong with the connection
        return
    for subject in taken:
        say(f"warning: something already takes requests on {subject} (another krt-runner up, or KRE?): "
            "the nodes started here will share them with it, each request going to one or the other")
