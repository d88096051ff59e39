"""The two producers of points: ``ctx.measurement`` (a user's points) and the runner's own timing points.

A user's point becomes one line of line protocol at once, in the caller, and
is handed to a :class:`~krt_runner.measurements.sinks.PointSink`. The runner's
own points, one or two per message, are handed over as their values
(:class:`~krt_runner.measurements.timing.Timing`) and rendered by the sink's
writer thread, many at a time. Saving never waits for the network or the disk.
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
from krt_runner.measurements.pending import PendingLine
from krt_runner.measurements.sinks import PointSink
from krt_runner.measurements.timing import Timing


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
        if precision not in NS_PER:
            raise MeasurementError(f"precision must be one of s, ms, us, ns, not {precision!r}")
        if tags is not None and not isinstance(tags, Mapping):
            raise MeasurementError(f"tags must be a dict of strings, not {type(tags).__name__}")
        all_tags = {**(tags or {}), "version": self._version}
        line = line_protocol(measurement, fields, all_tags, timestamp_ns(time, precision))
        if line:
            self._sink.put(line)


# A batch is rendered by one comprehension over its columns, not a Python call per point. The durations are finite
# by construction (differences of clock readings and parsed timestamps), so :.3f is safe for them.
_MS_PER_NS = 1e-6


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
        self._node_head = line_head("node_elapsed_time", {"workflow": workflow, "version": version, "node": node})
        self._workflow_head = line_head("workflow_elapsed_time", {"workflow": workflow, "version": version})
        self._last_node = last_node
        self._node_lines = self._render_node_lines  # bound once, not once per message
        self._workflow_lines = self._render_workflow_lines

    def record(self, timings: Sequence[Timing]) -> None:
        """Queue the points of these messages: ``node_elapsed_time`` for each, and on the last node
        ``workflow_elapsed_time`` for each that had tracking (a ``first_start``)."""
        node_lines = self._node_lines
        items: list[PendingLine] = [(node_lines, timing) for timing in timings]
        if self._last_node:
            workflow_lines = self._workflow_lines
            items += [(workflow_lines, timing) for timing in timings if timing.first_start is not None]
        self._sink.put_many(items)

    def _render_node_lines(self, timings: Sequence[Timing]) -> list[str]:
        tracking_ids, nodes_from, elapsed_ns, previous_ends, started_ns, _, outcomes = _columns(timings)
        head, ms_per_ns = self._node_head, _MS_PER_NS
        return [
            f'{head} tracking_id="{tracking_id}",node_from="{node_from}",elapsed_ms={elapsed * ms_per_ns:.3f},'
            f"waiting_ms={waiting:.3f}{outcome.error_field} {started + elapsed}"
            for tracking_id, node_from, elapsed, waiting, outcome, started in zip(
                escaped_strings(tracking_ids), escaped_strings(nodes_from), elapsed_ns,
                _ms_from_each(previous_ends, started_ns), outcomes, started_ns, strict=True)
        ]

    def _render_workflow_lines(self, timings: Sequence[Timing]) -> list[str]:
        tracking_ids, _, elapsed_ns, _, started_ns, first_starts, outcomes = _columns(timings)
        ended_ns = list(map(operator.add, started_ns, elapsed_ns))
        head = self._workflow_head
        return [
            f'{head} elapsed_ms={elapsed:.3f},tracking_id="{tracking_id}"{outcome.error_field} {ended}'
            for elapsed, tracking_id, outcome, ended in zip(
                _ms_from_each(first_starts, ended_ns), escaped_strings(tracking_ids), outcomes, ended_ns, strict=True)
        ]


# A batch of timings read as columns, in this order, by C code (no Python call per point).
_COLUMNS = operator.attrgetter(
    "tracking_id", "node_from", "elapsed_ns", "previous_end", "started_ns", "first_start", "outcome"
)


def _columns(timings: Sequence[Timing]) -> list[Any]:
    return list(zip(*map(_COLUMNS, timings), strict=True))


def _ms_from_each(starts: Sequence[str], ends_ns: Sequence[int]) -> list[float]:
    """Milliseconds from each tracking timestamp to its ``ends_ns``; 0 for one that is missing or unreadable.

    The usual batch is parsed by datetime's C code and measured from its first timestamp, whose time since the
    epoch is worked out once: small differences, exact to the microsecond.
    """
    if not starts:
        return []
    try:
        moments = list(map(datetime.fromisoformat, starts))
        base = moments[0]
        base_ns = datetime_ns(base)
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
