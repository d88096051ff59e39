"""Going on after a cancellation that was meant for a message or a call, not for the task handling it."""

from __future__ import annotations

import asyncio


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
