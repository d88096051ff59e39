"""krt-runner: run a Python ``init``/``handler`` module as a KRT v1 workflow node on NATS."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # first: modules imported below read it (the services API's version)

from krt_runner.errors import KrtRunnerError
from krt_runner.krt.dsl import KRT
from krt_runner.local_krt.dev import serve
from krt_runner.node.batch_context import BatchContext
from krt_runner.node.context import HandlerContext
from krt_runner.processor import Processor

if TYPE_CHECKING:
    from krt_runner.local_krt.running_krt import as_completed, connect, local, wait

__all__ = [
    "KRT", "BatchContext", "HandlerContext", "KrtRunnerError", "Processor", "as_completed", "connect", "local", "serve",
    "wait",
]

# Imported on first use: a node process (`krt-runner run`) never needs them.
_FROM_FUTURES = ("as_completed", "connect", "local", "wait")


def __getattr__(name: str) -> Any:
    if name in _FROM_FUTURES:
        return getattr(importlib.import_module("krt_runner.local_krt.running_krt"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
