"""Measurement points: ``ctx.measurement`` and the runner's own timing points.

Points are turned into InfluxDB line protocol at once (a few string joins, no
client objects) and handed to a :class:`PointSink`, which writes them in the
background. Saving never blocks the handler.
"""

from __future__ import annotations

import asyncio
import time as _time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, Protocol

from .errors import KrtRunnerError

_NS_PER = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n"})
_KEY_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n"})


class MeasurementError(KrtRunnerError, ValueError):
    """A point that InfluxDB would reject: raised in the caller, never in the writer."""


class PointSink(Protocol):
    """Where finished line-protocol lines go. ``put`` must return at once."""

    def put(self, line: str) -> None: ...

    async def close(self, timeout: float) -> None: ...


class NullSink:
    """Measurements turned off: every point is discarded."""

    def put(self, line: str) -> None:
        pass

    async def close(self, timeout: float) -> None:
        pass


class MemorySink:
    """Keeps every line; used by :mod:`krt_runner.testing` and tests."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def put(self, line: str) -> None:
        self.lines.append(line)

    async def close(self, timeout: float) -> None:
        pass


def _escape_key(value: str) -> str:
    return value.translate(_KEY_ESCAPES)


def _field_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise MeasurementError(f"field {key!r} is {value}, which InfluxDB cannot store")
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise MeasurementError(f"field {key!r} has type {type(value).__name__}; use bool, int, float or str")


def _timestamp_ns(moment: datetime | int | float | None, precision: str) -> int:
    if moment is None:
        return _time.time_ns()
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return int(moment.timestamp() * 1_000_000) * 1_000
    if isinstance(moment, (int, float)) and not isinstance(moment, bool):
        return int(moment * _NS_PER[precision])
    raise MeasurementError(f"time must be a datetime or a number in {precision}, not {type(moment).__name__}")


def line_protocol(
    measurement: str,
    fields: Mapping[str, Any],
    tags: Mapping[str, Any] | None = None,
    time_ns: int | None = None,
) -> str:
    """One point as a line of InfluxDB line protocol, checked for what InfluxDB rejects."""
    if not isinstance(measurement, str) or not measurement:
        raise MeasurementError("measurement name must be a non-empty string")
    if not isinstance(fields, Mapping) or not fields:
        raise MeasurementError(f"measurement {measurement!r} needs at least one field")
    head = measurement.translate(_MEASUREMENT_ESCAPES)
    for key in sorted(tags or {}):
        value = (tags or {})[key]
        if not isinstance(key, str) or not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise MeasurementError(f"tag {key!r} must map a string to a string, not {type(value).__name__}")
        if str(value) != "":
            head += f",{_escape_key(key)}={_escape_key(str(value))}"
    body = ",".join(f"{_escape_key(str(key))}={_field_value(key, value)}" for key, value in fields.items())
    return f"{head} {body} {time_ns if time_ns is not None else _time.time_ns()}"


class Measurement:
    """``ctx.measurement``: save a point with the KRE v1 signature; a ``version`` tag is added."""

    S = "s"
    MS = "ms"
    US = "us"
    NS = "ns"

    def __init__(self, *, sink: PointSink, version: str) -> None:
        self._sink = sink
        self._version = version

    def save(
        self,
        measurement: str,
        fields: Mapping[str, Any],
        tags: Mapping[str, Any] | None = None,
        time: datetime | int | float | None = None,
        precision: str = NS,
    ) -> None:
        """Queue one point; raises :class:`MeasurementError` at once for a point InfluxDB would reject."""
        if precision not in _NS_PER:
            raise MeasurementError(f"precision must be one of s, ms, us, ns, not {precision!r}")
        all_tags = {**(tags or {}), "version": self._version}
        self._sink.put(line_protocol(measurement, fields, all_tags, _timestamp_ns(time, precision)))


class NodePoints:
    """The runner's own points, with KRE v1's names: ``node_elapsed_time`` and ``workflow_elapsed_time``."""

    def __init__(self, *, sink: PointSink, workflow: str, version: str, node: str, last_node: bool) -> None:
        self._sink = sink
        self._node_tags = {"workflow": workflow, "version": version, "node": node}
        self._workflow_tags = {"workflow": workflow, "version": version}
        self._last_node = last_node

    def record(
        self,
        *,
        tracking_id: str,
        node_from: str,
        elapsed_ms: float,
        waiting_ms: float,
        workflow_ms: float | None,
        error: str = "",
    ) -> None:
        """Queue this message's points; ``error`` is ``""``, ``"invalid"`` or ``"failed"``."""
        now = _time.time_ns()
        fields = {
            "tracking_id": tracking_id,
            "node_from": node_from,
            "elapsed_ms": elapsed_ms,
            "waiting_ms": waiting_ms,
            "success": not error,
            "error": error,
        }
        self._sink.put(line_protocol("node_elapsed_time", fields, self._node_tags, now))
        if self._last_node and workflow_ms is not None:
            workflow_fields = {"elapsed_ms": workflow_ms, "tracking_id": tracking_id, "success": not error}
            self._sink.put(line_protocol("workflow_elapsed_time", workflow_fields, self._workflow_tags, now))


class FileSink:
    """Appends line protocol to a file that ``influx write`` can import later.

    Lines are collected in memory and written by a background task every
    ``interval`` seconds on a worker thread, so saving never waits for the disk.
    """

    def __init__(self, path: str, *, interval: float = 1.0, max_buffered: int = 100_000) -> None:
        self.path = path
        self._interval = interval
        self._max_buffered = max_buffered
        self._lines: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def put(self, line: str) -> None:
        if len(self._lines) >= self._max_buffered:
            self.dropped += 1
            return
        self._lines.append(line)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._flush_forever())

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self._flush()

    async def _flush(self) -> None:
        lines, self._lines = self._lines, []
        if lines:
            await asyncio.to_thread(self._append, lines)

    def _append(self, lines: list[str]) -> None:
        with open(self.path, "a", encoding="utf-8") as out:
            out.write("\n".join(lines) + "\n")

    async def close(self, timeout: float) -> None:
        if self._task is not None:
            self._task.cancel()
        await asyncio.wait_for(self._flush(), timeout)


def make_sink(settings: Any, logger: Any) -> PointSink:
    """The sink the settings ask for: none, InfluxDB, or the line-protocol file."""
    if not settings.measurements_enabled:
        logger.info("measurements off (KRT_MEASUREMENTS_ENABLED=false)")
        return NullSink()
    path = settings.measurements_file or "measurements.lp"
    logger.info("measurements go to a line-protocol file", path=path)
    return FileSink(path, interval=settings.influx_flush_interval, max_buffered=settings.influx_max_buffered_points)
