"""The calls in flight on each client connection, so that a stopping entrypoint does not lose the last answers.

When the server stops, gRPC closes a connection as soon as its last call has
sent its answer. A client that has just read an earlier answer may still be
sending a frame (gRPC clients send a BDP ping on the first data they read);
closing a socket with such a frame unread makes the kernel reset the
connection, and a gRPC client that reads the last answers together with the
reset drops them ("Stream removed ... Connection reset by peer"). So, once
stopping, the last call of a connection waits :data:`LAST_ANSWER_DELAY`
before it answers: the server reads what the client sent meanwhile, and the
connection closes cleanly after that answer.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

# Long enough for a client's frames to reach a busy server and be read; paid once per connection, when stopping.
LAST_ANSWER_DELAY = 0.25


class OpenCalls:
    """Counts calls in flight per connection (a gRPC peer address); see the module's docstring."""

    def __init__(self, last_answer_delay: float = LAST_ANSWER_DELAY) -> None:
        self.stopping = False
        self._delay = last_answer_delay
        self._by_peer: Counter[str] = Counter()

    @asynccontextmanager
    async def call(self, peer: str) -> AsyncIterator[None]:
        """Around one call's work, up to its answer (or its error status) but not past it."""
        self._by_peer[peer] += 1
        cancelled = False
        try:
            yield
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            if self.stopping and not cancelled and self._by_peer[peer] == 1:
                await asyncio.sleep(self._delay)
            self._by_peer[peer] -= 1
            if not self._by_peer[peer]:
                del self._by_peer[peer]
