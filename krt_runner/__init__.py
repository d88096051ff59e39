"""krt-runner: run a Python ``init``/``handler`` module as a KRT v1 workflow node on NATS."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .context import HandlerContext
from .dsl import KRT
from .errors import KrtRunnerError
from .processor import Processor
from .serve import serve

if TYPE_CHECKING:
    from .futures import as_completed, connect, local, wait

__all__ = ["KRT", "HandlerContext", "KrtRunnerError", "Processor", "as_completed", "connect", "local", "serve", "wait"]
__version__ = "0.1.0"

# Imported on first use: a node process (`krt-runner run`) never needs them.
_FROM_FUTURES = ("as_completed", "connect", "local", "wait")


def __getattr__(name: str) -> Any:
    if name in _FROM_FUTURES:
        return getattr(importlib.import_module(".futures", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
