"""Measurements: ``ctx.measurement``'s points and the runner's own, written in batches off the hot path.

``lines`` makes line protocol, ``points`` the two producers, ``timing`` what the
node hands over per message, ``pending`` points not yet rendered, ``sinks``
chooses where points go, ``writer`` writes them in the background from a
bounded ``buffer`` to a destination (``influx`` or ``file``), ``report`` logs
what the writer does.
"""

from krt_runner.measurements.points import Measurement, NodePoints
from krt_runner.measurements.sinks import MemorySink, NullSink, PointSink, make_sink
from krt_runner.measurements.timing import Outcome

__all__ = ["Measurement", "MemorySink", "NodePoints", "NullSink", "Outcome", "PointSink", "make_sink"]
