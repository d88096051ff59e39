"""The two producers of points: ``ctx.measurement`` (a user's points) and the runner's own timing points.

A user's point becomes one line of line protocol at once, in the caller, and
is handed to a :class:`~krt_runner.measurements.sinks.PointSink`. The runner's
own points, one or two per message, are handed over as their values, a pass
of the event loop's at once (:mod:`~krt_runner.measurements.timing`), and
rendered by the sink's writer thread, many at a time. Saving never waits for
the network or the disk.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from krt_runner.envelope import epoch_seconds
from krt_runner.errors import MeasurementError
from krt_runner.measurements.lines import NS_PER, datetime_ns, escaped_strings, line_head, line_protocol, timestamp_ns
from krt_runner.measurements.pending import PendingPoints
from krt_runner.measurements.sinks import PointSink
from krt_runner.measurements.timing import (
    ELAPSED_NS,
    ERROR_FIELD,
    FIRST_START,
    NODE_FROM,
    PREVIOUS_END,
    STARTED_NS,
    STRIDE,
    TRACKING_ID,
)

# Bytes of a user's point in line protocol (UTF-8): what the writer holds of each, at most, while the store is away.
MAX_USER_POINT = 65_536


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
        time: datetime | timedelta | str | int | float | None = None,
        precision: str = NS,
    ) -> None:
        """Queue one point and return at once.

        ``time`` is a datetime (naive means UTC), a timedelta since the epoch, an
        ISO 8601 text or a number in ``precision`` units; by default, now. Raises :class:`MeasurementError`
        at once for a point InfluxDB would reject, so the handler sees it.
        """
        if precision not in NS_PER:
            raise MeasurementError(f"precision must be one of s, ms, us, ns, not {precision!r}")
        if tags is not None and not isinstance(tags, Mapping):
            raise MeasurementError(f"tags must be a dict of strings, not {type(tags).__name__}")
        all_tags = {**(tags or {}), "version": self._version} if self._version else tags
        line = line_protocol(measurement, fields, all_tags, timestamp_ns(time, precision))
        if len(line) > MAX_USER_POINT // 4 and len(line.encode()) > MAX_USER_POINT:  # UTF-8: 1 to 4 bytes a character
            raise MeasurementError(f"point {measurement!r} is {len(line.encode())} bytes of line protocol; at most "
                                   f"{MAX_USER_POINT} (InfluxDB keeps at most 64 KB of a string): keep large values "
                                   "elsewhere, such as ctx.db")
        if line:
            self._sink.put(line)


# Points are rendered column by column, each column sliced out of a pass's flat timings and computed by C code
# (map, operator, str.__mod__): no Python bytecode runs per point, a fifth less CPU per point than one comprehension
# (docs/performance.md, Measurements). The durations are finite by construction (differences of clock readings and
# parsed timestamps), so %.3f is safe.
_MS_PER_NS = 1e-6
# Characters a point keeps of a text that came with a request (a tracking id is 36; InfluxDB keeps up to 64 KB).
MAX_POINT_TEXT = 256


class NodePoints:
    """The runner's own points, with KRE v1's names: ``node_elapsed_time`` and ``workflow_elapsed_time``.

    KRE v1 fields keep their names and meanings. A message that ended in an
    error adds an ``error`` field to both: ``"invalid"`` when the request was
    rejected before the handler ran, ``"failed"`` for anything else. A
    successful one writes no such field, so that the store keeps only
    KRE v1's samples for it.

    :meth:`record` runs on the event loop's thread, so it only hands over the
    values; the writer thread parses the timestamps and makes the lines, many
    at a time.
    """

    def __init__(self, *, sink: PointSink, workflow: str, version: str, node: str, last_node: bool) -> None:
        self._sink = sink
        # Tags never change: their part of the line is made once, into a %-format of the rest.
        node_head = line_head("node_elapsed_time", {"workflow": workflow, "version": version, "node": node})
        workflow_head = line_head("workflow_elapsed_time", {"workflow": workflow, "version": version})
        self._node_line = _percent_escaped(node_head) + ' tracking_id="%s",node_from="%s",elapsed_ms=%.3f,' \
            "waiting_ms=%.3f%s %d"
        self._workflow_line = _percent_escaped(workflow_head) + ' elapsed_ms=%.3f,tracking_id="%s"%s %d'
        self.last_node = last_node

    def record(self, timings: list[Any]) -> None:
        """Queue the points of a pass's messages (flat ``timings``: see :mod:`~krt_runner.measurements.timing`):
        ``node_elapsed_time`` for each, and on the last node ``workflow_elapsed_time`` for each that had tracking
        (a ``first_start``)."""
        # Rendered as they come, points keep only bounded texts; piling up while the store is away, they are cut now.
        backlog = getattr(self._sink, "backlogged", False)
        self._sink.put(_PassPoints(self, _with_bounded_texts(timings) if backlog else timings))

    def render(self, timings: list[Any]) -> list[str]:
        """The lines of these messages: every ``node_elapsed_time``, then (last node) every
        ``workflow_elapsed_time``. Columns both kinds use are read and computed once."""
        timings = _with_bounded_texts(timings)
        tracking_ids = escaped_strings(timings[TRACKING_ID::STRIDE])
        started_ns, elapsed_ns = timings[STARTED_NS::STRIDE], timings[ELAPSED_NS::STRIDE]
        ended_ns = list(map(operator.add, started_ns, elapsed_ns))
        error_fields = timings[ERROR_FIELD::STRIDE]
        lines = list(map(self._node_line.__mod__, zip(
            tracking_ids,
            escaped_strings(timings[NODE_FROM::STRIDE]),
            map(operator.mul, elapsed_ns, itertools.repeat(_MS_PER_NS)),
            _ms_from_each(timings[PREVIOUS_END::STRIDE], started_ns),
            error_fields,
            ended_ns,
            strict=True,
        )))
        if self.last_node:
            lines += self._workflow_lines(timings[FIRST_START::STRIDE], tracking_ids, error_fields, ended_ns)
        return lines

    def _workflow_lines(self, first_starts: list[str | None], tracking_ids: Sequence[str], error_fields: list[str],
                        ended_ns: list[int]) -> list[str]:  # fmt: skip
        columns: tuple[Sequence[Any], ...] = (first_starts, tracking_ids, error_fields, ended_ns)
        if None in first_starts:  # messages without tracking have no workflow point
            tracked = list(map(operator.is_not, first_starts, itertools.repeat(None)))
            columns = tuple(list(itertools.compress(column, tracked)) for column in columns)
        starts, ids, errors, ends = columns
        return list(map(self._workflow_line.__mod__, zip(_ms_from_each(starts, ends), ids, errors, ends, strict=True)))


class _PassPoints:
    """The points of one pass's messages, as the writer thread is given them
    (:class:`~krt_runner.measurements.pending.PendingPoints`)."""

    __slots__ = ("_points", "_timings", "count")

    def __init__(self, points: NodePoints, timings: list[Any]) -> None:
        self._points = points
        self._timings = timings
        messages = len(timings) // STRIDE
        self.count = messages
        if points.last_node:
            self.count += messages - timings[FIRST_START::STRIDE].count(None)

    def lines(self) -> list[str]:
        return self._points.render(self._timings)

    def parts(self, size: int) -> list[_PassPoints]:
        """Parts of even sizes: a short last part would cost more per point (a call's own work is shared by fewer)."""
        messages = len(self._timings) // STRIDE
        pieces = -(-self.count // size)  # rounded up
        step = -(-messages // pieces) * STRIDE
        timings = self._timings
        return [_PassPoints(self._points, timings[start:start + step]) for start in range(0, len(timings), step)]

    @property
    def renderer(self) -> NodePoints:
        return self._points

    def joined(self, others: Sequence[PendingPoints]) -> _PassPoints:
        timings = self._timings.copy()
        for other in others:
            assert isinstance(other, _PassPoints)
            timings += other._timings
        return _PassPoints(self._points, timings)


def _with_bounded_texts(timings: list[Any]) -> list[Any]:
    """``timings``, its texts from the requests (ids, node names, timestamps) cut to :data:`MAX_POINT_TEXT`
    characters: a request's 900 KB ``tracking_id`` would otherwise make a line the store refuses with the good ones
    of its batch, and be kept by its point, 100,000 points deep, while the store is away. One look per column and
    pass, in C (on the writer's thread, or the event loop's while the store is away); the cut only for such a pass."""
    texts = itertools.chain(timings[TRACKING_ID::STRIDE], timings[NODE_FROM::STRIDE], timings[PREVIOUS_END::STRIDE],
                            filter(None, timings[FIRST_START::STRIDE]))  # None on all but the last node
    if max(map(len, texts), default=0) <= MAX_POINT_TEXT:
        return timings
    bounded = list(timings)
    for column in (TRACKING_ID, NODE_FROM, PREVIOUS_END, FIRST_START):
        bounded[column::STRIDE] = [text[:MAX_POINT_TEXT] if text else text for text in timings[column::STRIDE]]
    return bounded


def _percent_escaped(text: str) -> str:
    return text.replace("%", "%%")


def _ms_from_each(starts: Sequence[str], ends_ns: Sequence[int]) -> list[float]:
    """Milliseconds from each tracking timestamp to its ``ends_ns``; 0 for one that is missing or unreadable.

    The usual batch is parsed by datetime's C code and measured from its first timestamp, whose time since the
    epoch is worked out once: small differences, exact to the microsecond, each column made by C code.
    """
    if not starts:
        return []
    try:
        moments = list(map(datetime.fromisoformat, starts))
        base = moments[0]
        base_ns = datetime_ns(base)
        ends_ms = map(operator.mul, map(operator.sub, ends_ns, itertools.repeat(base_ns)),
                      itertools.repeat(_MS_PER_NS))
        starts_ms = map(operator.mul, map(timedelta.total_seconds, map(operator.sub, moments, itertools.repeat(base))),
                        itertools.repeat(1000))
        return list(map(operator.sub, ends_ms, starts_ms))
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
