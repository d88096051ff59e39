"""Going on after a cancellation that was meant for a message or a call, not for the task handling it."""

from __future__ import annotations

import asyncio


def uncancel() -> None:
    """Forget the cancellation just caught, so the task's later awaits behave as usual (Python 3.11+)."""
    task = asyncio.current_task()
    if task is not None and hasattr(task, "uncancel"):
        task.uncancel()
