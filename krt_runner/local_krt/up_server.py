"""The NATS server of an ``up``: the one at ``--nats``, or a nats-server of its own, started, watched and stopped."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from krt_runner.local_krt.embedded import EmbeddedNats
from krt_runner.local_krt.node_process import LAST_LINES, how_it_ended
from krt_runner.local_krt.plan import UpOptions
from krt_runner.setting_values import AT_LEAST_ONCE, redact_servers

# Seconds between two looks at whether up's own nats-server is still running.
_POLL = 0.5


class UpServer:
    """Where the nodes of an ``up`` connect; a nats-server of its own unless ``--nats`` names one."""

    def __init__(self, options: UpOptions, *, say: Callable[[str], None]) -> None:
        self._options = options
        self._say = say
        self.embedded: EmbeddedNats | None = None

    async def start(self) -> str:
        """The server's URL, once it accepts connections."""
        if self._options.nats:
            self._say(f"using NATS at {redact_servers(self._options.nats)}")
            return self._options.nats
        jetstream = self._options.delivery == AT_LEAST_ONCE
        self.embedded = EmbeddedNats(jetstream=jetstream, stop_with_owner=True)
        # Spawned here, on the loop's thread, which outlives the nodes (the server goes when its starting thread ends);
        # waited for on another.
        self.embedded.spawn()
        await asyncio.to_thread(self.embedded.wait_ready)
        store = f" (JetStream, its store in {self.embedded.store_dir})" if jetstream else ""
        self._say(f"nats-server on {self.embedded.url}{store}")
        return self.embedded.url

    @property
    def watched(self) -> bool:
        """Whether :meth:`exited` can end: only a server up started is up's to watch."""
        return self.embedded is not None and self.embedded.process is not None

    async def exited(self) -> None:
        """Once up's own nats-server has exited (see :attr:`watched`)."""
        assert self.embedded is not None and self.embedded.process is not None
        while self.embedded.process.poll() is None:
            await asyncio.sleep(_POLL)

    def explain_exit(self) -> list[str]:
        """How up's own nats-server ended, and its last lines."""
        assert self.embedded is not None and self.embedded.process is not None
        lines = [f"    {line}" for line in self.embedded.log_text().splitlines()[-LAST_LINES:]]
        return [f"nats-server {how_it_ended(self.embedded.process.returncode)}: no node can serve without it; its "
                "last lines:", *lines]

    def kill(self) -> None:
        if self.embedded is not None:
            self.embedded.kill()

    async def stop(self) -> None:
        """Stop up's own nats-server, if any (last: the nodes drain through it)."""
        if self.embedded is None:
            return
        exited = self.embedded.process is not None and self.embedded.process.poll() is not None
        try:
            await asyncio.to_thread(self.embedded.close)
        except RuntimeError:  # at interpreter exit (local() closed by atexit) no thread can start
            self.embedded.close()
        self._say("nats-server had exited already" if exited else "nats-server stopped")
