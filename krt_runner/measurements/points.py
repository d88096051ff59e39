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


# A batch is rendered column by column, each column by C code (map, operator, attrgetter, str.__mod__): no Python
# bytecode runs per point, a fifth less CPU per point than one comprehension (docs/performance.md, Measurements).
# The durations are finite by construction (differences of clock readings and parsed timestamps), so %.3f is safe.
_MS_PER_NS = 1e-6
_TRACKING_ID, _NODE_FROM, _PREVIOUS_END, _FIRST_START = map(
    operator.attrgetter, ("tracking_id", "node_from", "previous_end", "first_start"))
_ELAPSED_NS, _STARTED_NS, _ERROR_FIELD = map(operator.attrgetter, ("elapsed_ns", "started_ns", "outcome.error_field"))


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
        # Tags never change: their part of the line is made once, into a %-format of the rest.
        node_head = line_head("node_elapsed_time", {"workflow": workflow, "version": version, "node": node})
        workflow_head = line_head("workflow_elapsed_time", {"workflow": workflow, "version": version})
        self._node_line = _percent_escaped(node_head) + ' tracking_id="%s",node_from="%s",elapsed_ms=%.3f,' \
            "waiting_ms=%.3f%s %d"
        self._workflow_line = _percent_escaped(workflow_head) + ' elapsed_ms=%.3f,tracking_id="%s"%s %d'
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
        elapsed_ns, started_ns = list(map(_ELAPSED_NS, timings)), list(map(_STARTED_NS, timings))
        columns = zip(
            escaped_strings(list(map(_TRACKING_ID, timings))),
            escaped_strings(list(map(_NODE_FROM, timings))),
            map(operator.mul, elapsed_ns, itertools.repeat(_MS_PER_NS)),
            _ms_from_each(list(map(_PREVIOUS_END, timings)), started_ns),
            map(_ERROR_FIELD, timings),
            map(operator.add, started_ns, elapsed_ns),
            strict=True,
        )
        return list(map(self._node_line.__mod__, columns))

    def _render_workflow_lines(self, timings: Sequence[Timing]) -> list[str]:
        ended_ns = list(map(operator.add, map(_STARTED_NS, timings), map(_ELAPSED_NS, timings)))
        columns = zip(
            _ms_from_each(list(map(_FIRST_START, timings)), ended_ns),
            escaped_strings(list(map(_TRACKING_ID, timings))),
            map(_ERROR_FIELD, timings),
            ended_ns,
            strict=True,
        )
        return list(map(self._workflow_line.__mod__, columns))


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
