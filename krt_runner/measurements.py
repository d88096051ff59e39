"""Measurement points: ``ctx.measurement`` and the runner's own timing points.

A user's point is checked and turned into one line of InfluxDB line protocol
at once, in the caller (a few string joins, no client objects), and handed to a
:class:`PointSink`. The runner's own points, one or two per message, are handed
over as their values and rendered by the sink's writer thread (see
:data:`PendingLine`). A point InfluxDB would reject raises
:class:`MeasurementError` right there, in the handler, so a bad point never
reaches a batch of good ones. The sinks write in the background
(:mod:`krt_runner._batching`); saving never waits for the network or the disk.

Values follow influxdb-client's ``Point``, which KRE v1 used: ``None`` fields
and non-finite floats are skipped, empty tags are left out, numpy numbers are
numbers.
"""

from __future__ import annotations

import functools
import math
import numbers
import re
import time as _time
from collections.abc import Mapping
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from .config import Settings
from .envelope import epoch_seconds
from .errors import KrtRunnerError

_NS_PER = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# InfluxDB integers are signed 64-bit; a larger one would get the whole batch rejected.
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
# Keys InfluxDB reserves for itself: a point using one is rejected by the server.
_RESERVED_KEYS = frozenset({"time", "_measurement", "_field"})
# Line protocol has no newline inside a point: like influxdb-client, keys and
# tags get "\n" as two characters; so do string fields (which it left raw).
_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"})
_KEY_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"})
_STRING_ESCAPES = str.maketrans({'"': r"\"", "\\": r"\\", "\n": r"\n", "\r": r"\r"})
# translate() is slow and most names and values need no escaping: look first.
_MEASUREMENT_SPECIALS = re.compile(r"[, \n\t\r]")
_KEY_SPECIALS = re.compile(r"[,= \n\t\r]")
_STRING_SPECIALS = re.compile(r'["\\\n\r]')
DEFAULT_MEASUREMENTS_FILE = "measurements.lp"


class MeasurementError(KrtRunnerError, ValueError):
    """A point that InfluxDB would reject: raised in the caller, never in the writer."""


# What a sink takes: a finished line, or a tuple ``(render, ...)`` whose line ``render(that_tuple)`` makes later,
# on the writer thread. The runner's own points take the second form: the message path only keeps their values.
PendingLine = str | tuple[Any, ...]


def rendered(item: PendingLine) -> str:
    """The line-protocol text of what a sink was given."""
    return item if isinstance(item, str) else item[0](item)


class PointSink(Protocol):
    """Where points go. ``put`` must return at once, from any thread."""

    def put(self, line: PendingLine) -> None: ...

    async def close(self, timeout: float) -> None: ...


class NullSink:
    """Measurements turned off: every point is discarded."""

    def put(self, line: PendingLine) -> None:
        pass

    async def close(self, timeout: float) -> None:
        pass


class MemorySink:
    """Keeps every line; used by :mod:`krt_runner.testing` and tests."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def put(self, line: PendingLine) -> None:
        self.lines.append(rendered(line))

    async def close(self, timeout: float) -> None:
        pass


# -- line protocol ----------------------------------------------------------------------------


def _escaped(text: str, specials: re.Pattern[str], table: dict[int, str]) -> str:
    return text.translate(table) if specials.search(text) else text


@functools.lru_cache(maxsize=4096)  # a handler uses a few names over and over
def _key(kind: str, key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise MeasurementError(f"{kind} names must be non-empty strings, not {key!r}")
    if key in _RESERVED_KEYS:
        raise MeasurementError(f"{kind} name {key!r} is reserved by InfluxDB; choose another name")
    return _escaped(key, _KEY_SPECIALS, _KEY_ESCAPES)


def _tag_value(key: str, value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, (numbers.Number, bool)):
        text = str(value)
    else:
        raise MeasurementError(f"tag {key!r} must be a string or a number, not {type(value).__name__}")
    escaped = _escaped(text, _KEY_SPECIALS, _KEY_ESCAPES)
    # A trailing backslash would escape the separator after it; influxdb-client adds a space too.
    return escaped + " " if escaped.endswith("\\") else escaped


def _tag_set(tags: Mapping[str, Any]) -> str:
    if not isinstance(tags, Mapping):
        raise MeasurementError(f"tags must be a dict of strings, not {type(tags).__name__}")
    parts = []
    for key in sorted(tags, key=str):  # sorted, as InfluxDB prefers
        value = tags[key]
        if value is None or (isinstance(value, str) and not value):  # InfluxDB has no empty tags: leave them out
            continue
        parts.append(f",{_key('tag', key)}={_tag_value(key, value)}")
    return "".join(parts)


def _string(value: str) -> str:
    return '"' + _escaped(value, _STRING_SPECIALS, _STRING_ESCAPES) + '"'


def _duration(value: float) -> str:
    """Milliseconds to the microsecond, as the tracking timestamps; a clock gone wrong must not spoil a batch."""
    return f"{value:.3f}" if math.isfinite(value) else "0.0"


def _integer(key: str, value: int) -> str:
    if not _INT_MIN <= value <= _INT_MAX:
        raise MeasurementError(f"field {key!r} is {value}, beyond InfluxDB's 64-bit integers; save it as a float")
    return f"{value}i"


def _field_value(key: str, value: Any) -> str | None:
    """Line-protocol text of one field value; ``None`` for a value that is skipped."""
    if isinstance(value, bool):  # before int: a bool is an int
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, numbers.Integral):  # int, numpy integers
        return _integer(key, int(value))
    if isinstance(value, (numbers.Real, Decimal)):  # numpy floats, Decimal
        return _field_value(key, float(value))
    if getattr(getattr(value, "dtype", None), "kind", "") == "b":  # numpy.bool_
        return _field_value(key, bool(value))
    raise MeasurementError(f"field {key!r} has type {type(value).__name__}; use bool, int, float or str")


def _field_set(measurement: str, fields: Mapping[str, Any]) -> str:
    if not isinstance(fields, Mapping) or not fields:
        raise MeasurementError(f"measurement {measurement!r} needs a dict with at least one field")
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        text = _field_value(key, value)
        if text is not None:
            parts.append(f"{_key('field', key)}={text}")
    return ",".join(parts)


def _head(measurement: str, tags: Mapping[str, Any] | None) -> str:
    if not isinstance(measurement, str) or not measurement:
        raise MeasurementError("measurement name must be a non-empty string")
    if measurement.startswith("#"):
        raise MeasurementError(f"measurement name {measurement!r} starts with '#', which makes the line a comment")
    return _escaped(measurement, _MEASUREMENT_SPECIALS, _MEASUREMENT_ESCAPES) + _tag_set(tags or {})


def line_protocol(
    measurement: str,
    fields: Mapping[str, Any],
    tags: Mapping[str, Any] | None = None,
    time_ns: int | None = None,
) -> str:
    """One point as a line of InfluxDB line protocol, checked for what InfluxDB rejects.

    Returns ``""`` when every field was skipped (``None``, NaN, infinity): there is nothing to store.
    """
    head = _head(measurement, tags)
    body = _field_set(measurement, fields)
    if not body:
        return ""
    return f"{head} {body} {time_ns if time_ns is not None else _time.time_ns()}"


# -- time ---------------------------------------------------------------------------------------


def _datetime_ns(moment: datetime) -> int:
    if moment.tzinfo is None:  # naive means UTC, as datetime.utcnow() in KRE v1 handlers
        moment = moment.replace(tzinfo=timezone.utc)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def _timestamp_ns(moment: datetime | int | float | None, precision: str) -> int:
    """Nanoseconds since the epoch, cut to ``precision`` as InfluxDB would store them."""
    if moment is None:
        ns = _time.time_ns()
    elif isinstance(moment, datetime):
        ns = _datetime_ns(moment)
    elif isinstance(moment, numbers.Integral) and not isinstance(moment, bool):
        ns = int(moment) * _NS_PER[precision]  # exact, however large
    elif isinstance(moment, numbers.Real):
        ns = int(float(moment) * _NS_PER[precision])
    else:
        raise MeasurementError(f"time must be a datetime or a number of {precision}, not {type(moment).__name__}")
    return ns - ns % _NS_PER[precision]


# -- the two producers ---------------------------------------------------------------------------


class Measurement:
    """``ctx.measurement``: save a point with the KRE v1 signature; a ``version`` tag is added."""

    S = "s"
    MS = "ms"
    US = "us"
    NS = "ns"
    # KRE v1 handlers spell them ctx.measurement.PRECISION_MS etc.
    PRECISION_S = S
    PRECISION_MS = MS
    PRECISION_US = US
    PRECISION_NS = NS

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
        """Queue one point and return at once.

        ``time`` is a datetime (naive means UTC) or a number in ``precision``
        units; by default, now. Raises :class:`MeasurementError`
        at once for a point InfluxDB would reject, so the handler sees it.
        """
        if precision not in _NS_PER:
            raise MeasurementError(f"precision must be one of s, ms, us, ns, not {precision!r}")
        if tags is not None and not isinstance(tags, Mapping):
            raise MeasurementError(f"tags must be a dict of strings, not {type(tags).__name__}")
        all_tags = {**(tags or {}), "version": self._version}
        line = line_protocol(measurement, fields, all_tags, _timestamp_ns(time, precision))
        if line:
            self._sink.put(line)


class NodePoints:
    """The runner's own points, with KRE v1's names: ``node_elapsed_time`` and ``workflow_elapsed_time``.

    KRE v1 fields keep their names and meanings; ``success`` (bool) and
    ``error`` (``""``; ``"invalid"``: the request was rejected before the
    handler ran; ``"failed"``: anything else went wrong) are added.

    :meth:`record` runs once per message on every node, so it only keeps the
    values; the writer thread parses the timestamps and writes the lines, a
    whole batch at a time.
    """

    def __init__(self, *, sink: PointSink, workflow: str, version: str, node: str, last_node: bool) -> None:
        self._sink = sink
        # Tags never change: their part of the line is built once.
        self._node_head = _head("node_elapsed_time", {"workflow": workflow, "version": version, "node": node})
        self._workflow_head = _head("workflow_elapsed_time", {"workflow": workflow, "version": version})
        self._last_node = last_node
        self._node_line = self._render_node_line  # bound once, not once per message
        self._workflow_line = self._render_workflow_line

    def record(
        self,
        *,
        tracking_id: str,
        node_from: str,
        elapsed_ms: float,
        previous_end: str,
        started_ns: int,
        first_start: str | None,
        error: str = "",
    ) -> None:
        """Queue this message's points.

        ``previous_end`` is the previous node's tracking ``end`` (``waiting_ms``
        runs from it to ``started_ns``), ``first_start`` the first tracking
        entry's ``start`` (``workflow_elapsed_time``, written by the last node
        only; ``None`` when the message had no tracking) and ``error`` is ``""``, ``"invalid"`` or ``"failed"``.
        """
        now = _time.time_ns()
        self._sink.put((self._node_line, tracking_id, node_from, elapsed_ms, previous_end, started_ns, error, now))
        if self._last_node and first_start is not None:
            self._sink.put((self._workflow_line, tracking_id, first_start, error, now))

    def _render_node_line(self, point: tuple[Any, ...]) -> str:
        _, tracking_id, node_from, elapsed_ms, previous_end, started_ns, error, now = point
        return (
            f"{self._node_head} tracking_id={_string(tracking_id)},node_from={_quoted_name(node_from)},"
            f"elapsed_ms={_duration(elapsed_ms)},waiting_ms={_duration(_ms_since(previous_end, started_ns))},"
            f"{_node_outcome(error)} {now}"
        )

    def _render_workflow_line(self, point: tuple[Any, ...]) -> str:
        _, tracking_id, first_start, error, now = point
        return (
            f"{self._workflow_head} elapsed_ms={_duration(_ms_since(first_start, now))},"
            f"tracking_id={_string(tracking_id)},success={'false' if error else 'true'} {now}"
        )


@functools.lru_cache(maxsize=256)  # node names: a workflow has a handful
def _quoted_name(name: str) -> str:
    return _string(name)


@functools.lru_cache(maxsize=8)  # "", "invalid", "failed"
def _node_outcome(error: str) -> str:
    return f"success={'false' if error else 'true'},error={_string(error)}"


def _ms_since(start: str, end_ns: int) -> float:
    """Milliseconds from a tracking timestamp to ``end_ns``; 0 when it is missing or unreadable."""
    if not start:
        return 0.0
    try:
        return (end_ns / 1e9 - epoch_seconds(start)) * 1000
    except ValueError:
        return 0.0


# -- choosing a sink -----------------------------------------------------------------------------


def make_sink(settings: Settings, logger: Any) -> PointSink:
    """The sink the settings ask for: none, InfluxDB, or the line-protocol file."""
    from . import _batching

    if not settings.measurements_enabled:
        logger.info("measurements off (KRT_MEASUREMENTS_ENABLED=false)")
        return NullSink()
    destination: _batching.Destination
    if settings.influx_uri:
        from .influx import InfluxDestination

        destination = InfluxDestination.from_settings(settings)
    else:
        path = Path(settings.measurements_file or DEFAULT_MEASUREMENTS_FILE).resolve()
        destination = _batching.FileDestination(path)
    logger.info("measurements go to " + destination.description, **destination.details)
    return _batching.BatchWriter(
        destination,
        logger=logger,
        batch_size=settings.influx_batch_size,
        flush_interval=settings.influx_flush_interval,
        max_buffered=settings.influx_max_buffered_points,
        shutdown_timeout=settings.influx_shutdown_timeout,
    )
