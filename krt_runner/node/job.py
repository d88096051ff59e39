"""One message on its way through the node: what the pipeline knows of it, from arrival to answer."""

from __future__ import annotations

import time
from typing import Any

from krt_runner.envelope import KreNatsMessage
from krt_runner.measurements.timing import Outcome


class Job:
    """One message on its way through the node: what the pipeline knows of it. Once answered, it adds its timing to
    its pass's (:meth:`record`)."""

    __slots__ = (
        "handler_done", "hops", "queued", "reply", "request", "started", "started_ns", "tracking", "tracking_id",
    )
    queued: bool  # set only while a pipelined sync handler's message waits for its thread (read with getattr)

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.request: KreNatsMessage | None = None
        self.tracking: Any = ()  # the request's tracking entries, once decoded: read once, used three times
        self.tracking_id = ""  # the request's, once decoded
        self.hops = 0  # tracking entries received, before this node's own
        self.handler_done = False  # after this, a late ctx.reply() (a timed-out sync handler's) is refused
        self.started = time.perf_counter_ns()  # for durations (set here too, not by a call: once per message)
        self.started_ns = time.time_ns()  # for timestamps

    def restart(self) -> None:
        """Its clocks start again now: when a pipelined message's handler starts."""
        self.started = time.perf_counter_ns()
        self.started_ns = time.time_ns()

    def record(self, timings: list[Any], elapsed_ns: int, outcome: Outcome, last_node: bool) -> None:
        """Add its timing to a pass's flat ``timings``, in :data:`~krt_runner.measurements.timing.TIMING_FIELDS`'
        order."""
        if self.request is not None and self.hops:
            previous = self.tracking[self.hops - 1]
            timings += (self.tracking_id, previous.node_name, elapsed_ns, previous.end, self.started_ns,
                        self.tracking[0].start if last_node else None, outcome.error_field)
        else:  # undecodable, or no tracking to measure from
            timings += (self.tracking_id, "", elapsed_ns, "", self.started_ns, None, outcome.error_field)
