"""Where points go: nowhere, memory, or a background writer to InfluxDB or a line-protocol file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from krt_runner.config import Settings
from krt_runner.measurements.file import FileDestination
from krt_runner.measurements.pending import PendingLine, rendered
from krt_runner.measurements.writer import BatchWriter, Destination

DEFAULT_MEASUREMENTS_FILE = "measurements.lp"


class PointSink(Protocol):
    """Where points go. ``put`` and ``put_many`` must return at once, from any thread."""

    def put(self, line: PendingLine) -> None: ...

    def put_many(self, lines: Sequence[PendingLine]) -> None: ...

    async def close(self, timeout: float) -> None: ...


class NullSink:
    """Measurements turned off: every point is discarded."""

    def put(self, line: PendingLine) -> None:
        pass

    def put_many(self, lines: Sequence[PendingLine]) -> None:
        pass

    async def close(self, timeout: float) -> None:
        pass


class MemorySink:
    """Keeps every line; used by :mod:`krt_runner.testing` and tests."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def put(self, line: PendingLine) -> None:
        self.lines += rendered(line)

    def put_many(self, lines: Sequence[PendingLine]) -> None:
        for line in lines:
            self.lines += rendered(line)

    async def close(self, timeout: float) -> None:
        pass


def make_sink(settings: Settings, logger: Any) -> PointSink:
    """The sink the settings ask for: none, InfluxDB, or the line-protocol file."""
    if not settings.measurements_enabled:
        logger.info("measurements off (KRT_MEASUREMENTS_ENABLED=false)")
        return NullSink()
    destination: Destination
    if settings.influx_uri:
        # Imported only when used: influxdb-client takes a while to import, and a node writing a file never needs it.
        from krt_runner.measurements.influx import InfluxDestination

        destination = InfluxDestination.from_settings(settings)
    else:
        destination = FileDestination(Path(settings.measurements_file or DEFAULT_MEASUREMENTS_FILE).resolve())
    logger.info("measurements go to " + destination.description, **destination.details)
    return BatchWriter(
        destination,
        logger=logger,
        batch_size=settings.influx_batch_size,
        flush_interval=settings.influx_flush_interval,
        max_buffered=settings.influx_max_buffered_points,
        shutdown_timeout=settings.influx_shutdown_timeout,
    )
