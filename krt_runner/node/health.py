"""A readiness and liveness signal for exec probes: a file kept fresh while the node can serve.

The node touches ``KRT_HEALTH_FILE`` every :data:`TOUCH_INTERVAL` seconds while
it is subscribed and connected to NATS, and deletes it when it starts to drain.
``krt-runner health`` exits 0 when the file was touched within ``--max-age``
seconds: a node that is starting, disconnected, draining, gone, or whose event
loop is stuck fails the check. No port to open, nothing to serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Seconds between touches; a probe's max age should be a few of these. With the default max age, a check fails
# within 3 s of a disconnection and passes within 1 s of the reconnection (a liveness probe gives a reconnecting node
# longer with its own --max-age).
TOUCH_INTERVAL = 1.0
DEFAULT_MAX_AGE = 3 * TOUCH_INTERVAL


class HealthFile:
    """Keeps ``path`` fresh while ``is_healthy()`` is true; a no-op when ``path`` is empty."""

    def __init__(
        self, path: str, *, is_healthy: Callable[[], bool], logger: Any, interval: float = TOUCH_INTERVAL,
        content: str = "",
    ) -> None:  # fmt: skip
        self.path = Path(path) if path else None
        self._is_healthy = is_healthy
        self._content = content  # written whole when the file is made (the entrypoint's address, for up)
        self._log = logger
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Touch the file now and then every interval (call once the node is subscribed)."""
        if self.path is not None and self._task is None and self._touch():
            self._task = asyncio.get_running_loop().create_task(self._touch_forever())

    async def _touch_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            if not self._touch():
                return

    def _touch(self) -> bool:
        """Refresh the file when healthy; ``False`` when it cannot be written (logged once)."""
        assert self.path is not None
        if not self._is_healthy():
            return True
        try:
            if self._content and not self.path.exists():
                staged = self.path.with_name(self.path.name + ".new")
                staged.write_text(self._content)
                staged.replace(self.path)  # whole or not at all, for a reader waiting for the file to appear
            else:
                self.path.touch()
        except OSError as exc:
            self._log.error("cannot write KRT_HEALTH_FILE", path=str(self.path), error=str(exc))
            return False
        return True

    async def stop(self) -> None:
        """Stop touching and delete the file: a draining node is not ready."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.path is not None:
            try:
                self.path.unlink(missing_ok=True)
            except OSError as exc:  # the stop goes on: a probe still sees the file go stale
                self._log.warning("cannot delete KRT_HEALTH_FILE", path=str(self.path), error=str(exc))


def remove_leftover(path: str) -> None:
    """Delete the file an earlier run of this container left (killed before it could delete it, as an OOM kill
    does): until this run serves, a probe must fail as starting, and ``up`` must not read an old address."""
    if path:
        with contextlib.suppress(OSError):  # not there, or a folder it cannot write: said once it serves
            Path(path).unlink(missing_ok=True)


def check(path: str, *, max_age: float = DEFAULT_MAX_AGE) -> str | None:
    """``None`` when ``path`` was touched within ``max_age`` seconds, else why the node is not healthy."""
    if not path:
        return "no health file: set KRT_HEALTH_FILE (or pass --health-file) for the node and the check"
    try:
        age = time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return f"{path} does not exist: the node is starting, draining or stopped"
    if age > max_age:
        return f"{path} is {age:.1f}s old (limit {max_age:g}s): the node is disconnected from NATS or stuck"
    return None
