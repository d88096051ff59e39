"""One ``ctx`` call for async and sync handlers alike: an async handler awaits what it returns; a sync handler,
on a worker thread, gets the result once the node's event loop has run the coroutine."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def awaitable_or_result(coroutine: Coroutine[Any, Any, Any], loop: asyncio.AbstractEventLoop | None) -> Any:
    """``coroutine`` itself on the event loop (to await); elsewhere, its result, run on ``loop``."""
    if loop is None or on_event_loop():
        return coroutine
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result()


def on_event_loop() -> bool:
    """Whether the caller runs on an event loop (an async handler) rather than a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
