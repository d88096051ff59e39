"""Start-up shared by ``krt-runner run`` and ``serve()``: settings, logging, then the node."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine, Mapping
from typing import Any

import structlog

from krt_runner.config import Settings, load_settings
from krt_runner.errors import ConfigError
from krt_runner.logging import configure_logging
from krt_runner.node.user_code import UserCode


def read_settings(overrides: Mapping[str, Any]) -> Settings | None:
    """Settings with logging configured from them; ``None`` after printing every problem."""
    try:
        settings = load_settings(overrides=overrides)
    except ConfigError as exc:
        print(f"krt-runner: {exc}", file=sys.stderr)
        return None
    configure_logging(log_format=settings.log_format, level=settings.log_level)
    structlog.get_logger("krt_runner").info("settings read", **settings.describe())
    return settings


# A sync handler busy in Python holds the GIL on its worker thread, and goes from one call to the next without
# letting go (see Node._pipelined). The event loop's thread, which answers and takes the next message, then gets the
# GIL only when the interpreter forces a switch: after 1 ms instead of Python's 5, it keeps the worker supplied.
# (benchmarks, busy 2 ms handler: 412 -> 445 answers/s.)
_SYNC_HANDLER_SWITCH_INTERVAL = 0.001


def serve_node(settings: Settings, code: UserCode) -> int:
    """Run the node to its end on uvloop when installed; return the exit code."""
    structlog.get_logger("krt_runner").info(
        "handler module loaded", handler=code.source, request=code.request_name, init=code.init is not None
    )
    if not code.handler_is_async:
        sys.setswitchinterval(min(sys.getswitchinterval(), _SYNC_HANDLER_SWITCH_INTERVAL))
    return run_event_loop(_node_main(settings, code))


async def _node_main(settings: Settings, code: UserCode) -> int:
    from krt_runner.measurements.points import make_sink
    from krt_runner.node.runner import run_node

    sink = make_sink(settings, structlog.get_logger("krt_runner"))
    try:
        return await run_node(settings, code, sink=sink)
    finally:  # also when start-up failed: points saved by init are written, the writer thread ends
        await sink.close(timeout=settings.influx_shutdown_timeout)


def run_event_loop(coroutine: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop  # optional: the 'speed' extra
    except ImportError:
        return int(asyncio.run(coroutine))
    return int(uvloop.run(coroutine))
