"""``krt-runner entrypoint DIR``: from settings and a KRT to a serving gRPC entrypoint, and its exit code.

Exit codes: 0 after SIGTERM, SIGINT or SIGHUP (calls in flight answered
first); 1 when it cannot listen on its port, or its NATS connection closed
for good; 2 for bad settings, a KRT or proto it cannot serve (no
``Entrypoint`` service, a streaming rpc, an rpc without a workflow), or a
NATS server that refuses its credentials.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from krt_runner.entrypoint.server import RunningEntrypoint
from krt_runner.entrypoint.service import EntrypointService, read_service
from krt_runner.entrypoint.settings import EntrypointSettings, load_entrypoint_settings
from krt_runner.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    BrokerConnectError,
    ConfigError,
    EntrypointError,
    KrtFileError,
    ListenError,
)
from krt_runner.krt.krt_reader import load_krt
from krt_runner.krt.package import open_krt
from krt_runner.logging import configure_logging
from krt_runner.node.health import remove_leftover
from krt_runner.node.main import run_event_loop, start_unless_stopped

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def run_entrypoint(source: Path, overrides: Mapping[str, Any]) -> int:
    """Serve the entrypoint of the KRT in ``source`` (a folder or a ``.krt``) until stopped; the exit code."""
    try:
        settings = load_entrypoint_settings(overrides=overrides)
    except ConfigError as exc:
        print(f"krt-runner entrypoint: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(log_format=settings.log_format, level=settings.log_level)
    remove_leftover(settings.health_file)
    try:
        with open_krt(source) as directory:
            krt = load_krt(directory, node_files=False)  # its nodes' code may be built elsewhere
            settings = replace(settings, version=settings.version or krt.version)
            service = read_service(krt, version=settings.version, subjects_file=settings.subjects_file)
    except (KrtFileError, EntrypointError) as exc:
        print(f"krt-runner entrypoint: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return run_event_loop(serve_entrypoint(settings, service))


async def serve_entrypoint(settings: EntrypointSettings, service: EntrypointService) -> int:
    """Serve until a stop signal or a connection lost for good; the exit code."""
    log = structlog.get_logger("krt_runner").bind(node="entrypoint", version=settings.version)
    log.info("settings read", **settings.describe(changed_only=True))
    log.debug("settings in full", **settings.describe())
    entrypoint = RunningEntrypoint(settings, service, log)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    started = await _start(entrypoint, stop)
    if started is None:
        failed = loop.create_task(entrypoint.broker.failed.wait())
        await asyncio.wait({failed, loop.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
        log.info("stopping: draining calls in flight" if stop.is_set() else "stopping: NATS connection lost")
    await entrypoint.stop()
    if started is not None:
        return started
    return EXIT_FAILED if entrypoint.broker.failed.is_set() else EXIT_OK


async def _start(entrypoint: RunningEntrypoint, stop: asyncio.Event) -> int | None:
    """``None`` once serving; else the exit code (a stop signal during start-up: 0)."""
    starting = await start_unless_stopped(entrypoint.start(), stop)
    if starting is None:
        return EXIT_OK
    error = starting.exception()
    if isinstance(error, BrokerConnectError):
        entrypoint.log.error(str(error))
        return EXIT_USAGE
    if isinstance(error, ListenError):
        entrypoint.log.error(str(error))
        return EXIT_FAILED
    if error is not None:
        raise error
    return None
