"""Measurement points: ``ctx.measurement`` and the runner's own timing points.

A user's point is checked and turned into one line of InfluxDB line protocol
at once, in the caller (a few string joins, no client objects), and handed to a
:class:`PointSink`. The runner's own points, one or two per message, are handed
over as their values and rendered by the sink's writer thread, many at a time
(see :data:`PendingLine`). A point InfluxDB would reject raises
:class:`MeasurementError` right there, in the handler, so a bad point never
reaches a batch of good ones. The sinks write in the background
(:mod:`krt_runner.measurements.writer`); saving never waits for the network or the disk.

Values follow influxdb-client's ``Point``, which KRE v1 used: ``None`` fields
and non-finite floats are skipped, empty tags are left out, numpy numbers are
numbers.
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
import operator
import re
import time as _time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from krt_runner.config import Settings
from krt_runner.errors import KrtRunnerError
from krt_runner.node.envelope import epoch_seconds

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
_STRING_SPECIAL_CHARS = '"\\\n\r'  # what _STRING_ESCAPES rewrites
_STRING_SPECIALS = re.compile(f"[{re.escape(_STRING_SPECIAL_CHARS)}]")
DEFAULT_MEASUREMENTS_FILE = "measurements.lp"


class MeasurementError(KrtRunnerError, ValueError):
    """A point that InfluxDB would reject: raised in the caller, never in the writer."""


# What a sink takes: a finished line, or a tuple ``(render, ...)`` whose line the writer thread makes later, with
# ``render(tuples)``: one call for all the tuples of a batch that share ``render``, returning their lines in order.
# The runner's own points take the second form: the message path only keeps their values.
PendingLine = str | tuple[Any, ...]


def rendered(item: PendingLine) -> str:
    """The line-protocol text of what a sink was given."""
    return item if isinstance(item, str) else item[0]([item])[0]


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
        self.lines.append(rendered(line))

    def put_many(self, lines: Sequence[PendingLine]) -> None:
        self.lines.extend(map(rendered, lines))

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


# A batch is rendered by one comprehension over its columns, not a Python call per point. The durations are finite
# by construction (differences of clock readings and parsed timestamps), so :.3f is safe for them.
_MS_PER_NS = 1e-6
# The error field of a message that failed; none for one that did not. The runner's three outcomes only.
_ERROR_FIELDS = {"": "", "invalid": ',error="invalid"', "failed": ',error="failed"'}


# One message's timing, as the runner hands it over (a plain tuple: one is made per message):
# tracking_id, node_from (the previous node's name), elapsed_ns (to the answer), previous_end (the previous node's
# tracking end: waiting_ms runs from it to started_ns), started_ns, first_start (the first tracking entry's start, on
# the last node, for workflow_elapsed_time; None otherwise or without tracking), error ("", "invalid" or "failed").
# Both points are stamped with the time of the answer, started_ns + elapsed_ns.
Timing = tuple[str, str, int, str, int, str | None, str]


class NodePoints:
    """The runner's own points, with KRE v1's names: ``node_elapsed_time`` and ``workflow_elapsed_time``.

    KRE v1 fields keep their names and meanings. A message that ended in an
    error adds an ``error`` field to both: ``"invalid"`` when the request was
    rejected before the handler ran, ``"failed"`` for anything else. A
    successful one writes no such field, so that the store keeps only
    KRE v1's samples for it.

    :meth:`record` runs on the event loop's thread, so it only keeps the
    values; the writer thread parses the timestamps and writes the lines, a
    whole batch at a time.
    """

    def __init__(self, *, sink: PointSink, workflow: str, version: str, node: str, last_node: bool) -> None:
        self._sink = sink
        # Tags never change: their part of the line is made once.
        self._node_head = _head("node_elapsed_time", {"workflow": workflow, "version": version, "node": node})
        self._workflow_head = _head("workflow_elapsed_time", {"workflow": workflow, "version": version})
        self._last_node = last_node
        self._node_line = self._render_node_lines  # bound once, not once per message
        self._workflow_line = self._render_workflow_lines

    def record(self, timings: Sequence[Timing]) -> None:
        """Queue the points of these messages: ``node_elapsed_time`` for each, and on the last node
        ``workflow_elapsed_time`` for each that had tracking (a ``first_start``)."""
        node_line = self._node_line
        items: list[PendingLine] = [(node_line, timing) for timing in timings]
        if self._last_node:
            workflow_line = self._workflow_line
            items += [(workflow_line, timing) for timing in timings if timing[5] is not None]
        self._sink.put_many(items)

    def _render_node_lines(self, points: list[tuple[Any, Timing]]) -> list[str]:
        tracking_ids, nodes_from, elapsed_ns, previous_ends, started_ns, _, errors = _columns(points)
        head, ms_per_ns, error_field = self._node_head, _MS_PER_NS, _ERROR_FIELDS
        return [
            f'{head} tracking_id="{tracking_id}",node_from="{node_from}",elapsed_ms={elapsed * ms_per_ns:.3f},'
            f"waiting_ms={waiting:.3f}{error_field[error]} {started + elapsed}"
            for tracking_id, node_from, elapsed, waiting, error, started in zip(
                _escaped_strings(tracking_ids), _escaped_strings(nodes_from), elapsed_ns,
                _ms_from_each(previous_ends, started_ns), errors, started_ns, strict=True)
        ]

    def _render_workflow_lines(self, points: list[tuple[Any, Timing]]) -> list[str]:
        tracking_ids, _, elapsed_ns, _, started_ns, first_starts, errors = _columns(points)
        ended_ns = list(map(operator.add, started_ns, elapsed_ns))
        head, error_field = self._workflow_head, _ERROR_FIELDS
        return [
            f'{head} elapsed_ms={elapsed:.3f},tracking_id="{tracking_id}"{error_field[error]} {ended}'
            for elapsed, tracking_id, error, ended in zip(
                _ms_from_each(first_starts, ended_ns), _escaped_strings(tracking_ids), errors, ended_ns, strict=True)
        ]


def _columns(points: list[tuple[Any, Timing]]) -> list[tuple[Any, ...]]:
    """A batch's timings as columns, in :data:`Timing`'s order."""
    return list(zip(*[timing for _, timing in points], strict=True))


def _escaped_strings(texts: tuple[str, ...]) -> tuple[str, ...] | list[str]:
    """String-field contents, escaped; one scan of the whole batch per special character when, as usual, none
    needs it (``in`` is many times faster than a regular expression here)."""
    joined = "".join(texts)
    if not any(char in joined for char in _STRING_SPECIAL_CHARS):
        return texts
    return [_escaped(text, _STRING_SPECIALS, _STRING_ESCAPES) for text in texts]


def _ms_from_each(starts: Sequence[str], ends_ns: Sequence[int]) -> list[float]:
    """Milliseconds from each tracking timestamp to its ``ends_ns``; 0 for one that is missing or unreadable.

    The usual batch is parsed by datetime's C code and measured from its first timestamp, whose time since the
    epoch is worked out once: small differences, exact to the microsecond, and little arithmetic per point.
    """
    if not starts:
        return []
    try:
        moments = list(map(datetime.fromisoformat, starts))
        base = moments[0]
        base_ns = _datetime_ns(base)
        return [(end - base_ns) * _MS_PER_NS - seconds * 1000 for end, seconds in zip(
            ends_ns, map(timedelta.total_seconds, map(operator.sub, moments, itertools.repeat(base))), strict=True)]
    except (ValueError, TypeError):  # an empty, malformed or mixed-zone one in the batch: one at a time
        return list(map(_ms_since, starts, ends_ns))


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
    from krt_runner.measurements import writer as _batching

    if not settings.measurements_enabled:
        logger.info("measurements off (KRT_MEASUREMENTS_ENABLED=false)")
        return NullSink()
    destination: _batching.Destination
    if settings.influx_uri:
        from krt_runner.measurements.influx import InfluxDestination

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
