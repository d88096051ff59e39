"""Measurements: ``ctx.measurement``'s points and the runner's own, written in batches off the hot path.

``lines`` makes line protocol, ``points`` the two producers, ``sinks`` chooses
where points go, ``writer`` writes them in the background to a destination
(``influx`` or ``file``), ``report`` logs what the writer does.
"""

from krt_runner.measurements.points import Measurement, NodePoints
from krt_runner.measurements.sinks import MemorySink, NullSink, PointSink, make_sink
from krt_runner.measurements.timing import Outcome, Timing

__all__ = ["Measurement", "MemorySink", "NodePoints", "NullSink", "Outcome", "PointSink", "Timing", "make_sink"]
