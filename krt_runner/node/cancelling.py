"""Going on after a cancellation that was meant for a message or a call, not for the task handling it."""

from __future__ import annotations

import asyncio
from typing import Any


def uncancel() -> None:
    """Forget the cancellation just caught, so the task's later awaits behave as usual (Python 3.11+)."""
    task = asyncio.current_task()
    if task is not None and hasattr(task, "uncancel"):
        task.uncancel()


def cancelled_from_outside() -> bool:
    """Whether the running task is being cancelled (a stop), rather than handed a ``CancelledError`` raised by code
    it awaited (a library's own); on Python 3.10, which cannot tell, always ``True``."""
    task = asyncio.current_task()
    return task is None or not hasattr(task, "cancelling") or task.cancelling() > 0


async def cancel_until_done(task: asyncio.Future[Any], *, pause: float = 0.05) -> None:
    """Cancel ``task`` and wait for it to end, cancelling it again while it goes on: a cancellation that lands just
    as the call it awaits completes is lost (``asyncio.wait_for`` before Python 3.12, which nats-py's connect
    retries in a loop without end)."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=pause)
