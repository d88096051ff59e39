"""One message on its way through the node: what the pipeline knows of it, from arrival to answer."""

from __future__ import annotations

import time
from typing import Any

from krt_runner.envelope import KreNatsMessage
from krt_runner.measurements.timing import Outcome


class Job:
    """One message on its way through the node; once answered, its own timing record for the measurements (a
    :class:`~krt_runner.measurements.timing.Timing`), with its envelope let go."""

    __slots__ = (
        "elapsed_ns", "first_start", "handler_done", "hops", "node_from", "outcome", "previous_end", "replied", "reply",
        "request", "started", "started_ns", "tracking", "tracking_id",
    )
    # Set by measured(), once the message is answered.
    elapsed_ns: int
    node_from: str
    previous_end: str
    first_start: str | None
    outcome: Outcome

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.request: KreNatsMessage | None = None
        self.tracking: Any = ()  # the request's tracking entries, once decoded: read once, used three times
        self.tracking_id = ""  # the request's, once decoded
        self.hops = 0  # tracking entries received, before this node's own
        self.replied = False
        self.handler_done = False  # after this, a late ctx.reply() (a timed-out sync handler's) is refused
        self.started = time.perf_counter_ns()  # for durations (set here too, not by a call: once per message)
        self.started_ns = time.time_ns()  # for timestamps

    def restart(self) -> None:
        """Its clocks start again now: when a pipelined message's handler starts."""
        self.started = time.perf_counter_ns()
        self.started_ns = time.time_ns()

    def measured(self, elapsed_ns: int, outcome: Outcome, last_node: bool) -> Job:
        """Itself as a timing record: the timing fields filled from the tracking, the envelope let go."""
        self.elapsed_ns = elapsed_ns
        self.outcome = outcome
        if self.request is not None and self.hops:
            previous = self.tracking[self.hops - 1]
            self.node_from = previous.node_name
            self.previous_end = previous.end
            self.first_start = self.tracking[0].start if last_node else None
        else:  # undecodable, or no tracking to measure from
            self.node_from = self.previous_end = ""
            self.first_start = None
        self.request = None
        self.tracking = ()
        return self
