"""The requester's NATS connection: the servers read as a node reads ``KRT_NATS_SERVER``, and a refusal said once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from nats import errors as nats_errors
from nats.aio.client import Client as NatsClient

from krt_runner.errors import ClientConnectError
from krt_runner.node.nats_settings import explain, is_fatal, servers_and_credentials
from krt_runner.setting_values import nats_servers, nats_url
from krt_runner.url_parts import redact_url


async def connect_requester(servers: str | Sequence[str], *, connect_timeout: float, **options: Any) -> NatsClient:
    """A connection to ``servers`` (a URL, comma-separated URLs or a list), retried without end once made;
    :class:`ClientConnectError` with the reason when the first one cannot be made in ``connect_timeout`` seconds.
    ``options`` go to nats-py."""
    urls = _server_urls(servers)
    last_error: list[Exception] = []  # only one: the callback lives as long as the connection

    async def remember(error: Exception) -> None:
        if not (last_error and is_fatal(last_error[0])):  # a refusal, not the reset that follows it
            last_error[:] = [error]

    nc = NatsClient()
    addresses, credentials = servers_and_credentials(urls)  # a percent-encoded password, decoded
    settings = {"name": "krt-runner-client", "max_reconnect_attempts": -1, "error_cb": remember, **options,
                **credentials}
    try:
        await asyncio.wait_for(nc.connect(servers=addresses, **settings), timeout=connect_timeout)
    except (asyncio.TimeoutError, OSError, nats_errors.Error) as exc:
        with contextlib.suppress(Exception):  # a client that never connected may refuse to close
            await nc.close()
        cause = last_error[0] if last_error else exc
        shown = ", ".join(redact_url(url) for url in urls)
        reason = explain(cause) if is_fatal(cause) else _unreachable(cause, connect_timeout)
        raise ClientConnectError(f"cannot connect to NATS at {shown}: {reason}") from None
    return nc


def _unreachable(cause: BaseException, connect_timeout: float) -> str:
    if isinstance(cause, asyncio.TimeoutError) and not str(cause):  # a port that takes the connection, then nothing
        return f"no NATS server answered within {connect_timeout:g}s (does something else listen there?)"
    return f"{type(cause).__name__}: {cause}"


def _server_urls(servers: str | Sequence[str]) -> list[str]:
    """Each server as a node reads ``KRT_NATS_SERVER`` (``host:port`` is ``nats://host:port``, ``NATS://`` is
    ``nats://``); :class:`ClientConnectError` naming what is not a NATS URL."""
    try:
        if isinstance(servers, str):
            return [*nats_servers(servers)]
        if not servers:
            raise ValueError("must name at least one server, e.g. nats://127.0.0.1:4222")
        return [nats_url(server.strip()) for server in servers]  # each entry one server, commas and all
    except ValueError as exc:
        raise ClientConnectError(f"cannot connect to NATS: {exc}") from None
