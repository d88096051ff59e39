"""At least once, before ``up`` stops a node: the requests stored for it taken and answered.

A draining node finishes the messages it holds, not those still stored in its stream. Once the nodes before it
have stopped, only requesters outside the KRT add to that stream, so ``up`` waits until it is empty (at most
:data:`STORED_WAIT` seconds) before it stops the node: requests already inside the workflow get their answers,
and none is left in an embedded server's store that is removed with it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any

from krt_runner.errors import ClientConnectError
from krt_runner.local_krt.node_process import NodeProcess
from krt_runner.node.jetstream import requests_stored
from krt_runner.requester_connection import connect_requester

# Seconds up waits for the requests stored for one step of the workflows before it stops that step's nodes anyway.
STORED_WAIT = 60.0
_POLL = 0.1
_CONNECT_TIMEOUT = 5.0


class StoredRequests:
    """A connection of up's own that reads how many requests wait in the nodes' streams."""

    def __init__(self, nc: Any) -> None:
        self._nc = nc  # connect_requester's nats-py connection (only the broker modules import nats-py), or None

    @classmethod
    async def connect(cls, url: str, options: Mapping[str, Any]) -> StoredRequests:
        """Reads nothing (every count 0) when it cannot connect: the nodes are stopped as at most once."""
        try:
            return cls(await connect_requester(url, connect_timeout=_CONNECT_TIMEOUT, **options))
        except ClientConnectError:
            return cls(None)

    async def wait_taken(
        self, nodes: list[NodeProcess], *, label: str, say: Callable[[str], None], stopping: Callable[[], bool]
    ) -> None:
        """Until no request is stored for ``nodes`` (the replicas of one step share their subject), all of them have
        exited, :data:`STORED_WAIT` passed, or ``stopping()`` (stop now)."""
        subjects = sorted({node.subject for node in nodes if node.subject})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STORED_WAIT
        left = await self._count(subjects)
        if left:
            say(f"{label}: {left} requests stored for it; answering them before it stops (at most {STORED_WAIT:g}s)")
        while left and not stopping() and loop.time() < deadline and _any_running(nodes):
            await asyncio.sleep(_POLL)
            left = await self._count(subjects)
        if left and not stopping():
            why = f"after {STORED_WAIT:g}s" if _any_running(nodes) else "and it has exited"
            say(f"{label}: {left} requests still stored {why}: stopping it all the same")

    async def close(self) -> None:
        """Close the connection; quietly when its server is gone (killed by a second Ctrl-C, or dead)."""
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()

    async def _count(self, subjects: list[str]) -> int:
        if self._nc is None:
            return 0
        return sum([await requests_stored(self._nc, subject) for subject in subjects])


def _any_running(nodes: list[NodeProcess]) -> bool:
    return any(node.process.returncode is None for node in nodes)
