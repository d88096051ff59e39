"""A message's outcome and timing: what the node hands to the measurements for the messages it answered.

A pass of the event loop hands over its messages' timings in one flat list: :data:`TIMING_FIELDS`' values of each
message, one message after the other. The writer thread slices each field's column out of it (C code copying
pointers), where it read an attribute of one object per message, point after point (docs/performance.md,
Measurements).
"""

from __future__ import annotations

import enum


class Outcome(enum.Enum):
    """How a message ended; its value is the ``error`` field of its points (none on success)."""

    ANSWERED = ""
    # rejected before the handler ran: bytes that are no envelope, a reply subject it may not answer on, a payload of
    # the wrong type, validate() raised
    INVALID = "invalid"
    FAILED = "failed"  # anything else: the handler raised or timed out, the answer could not be made

    def __init__(self, value: str) -> None:
        # Kept in a message's timing: a plain string, where a dict keyed by members would hash each in Python.
        self.error_field = f',error="{value}"' if value else ""


# One message's timing. Both of its points are stamped with the time of the answer, started_ns + elapsed_ns.
TIMING_FIELDS = (
    "tracking_id",
    "node_from",  # the previous node's name ("" without tracking)
    "elapsed_ns",  # from the message's start in this node to its answer
    "previous_end",  # the previous node's tracking end: waiting_ms runs from it to started_ns
    "started_ns",  # when this node started on the message, nanoseconds since the epoch
    "first_start",  # the first tracking entry's start, on the last node only (workflow_elapsed_time); else None
    "error_field",  # the outcome's error_field
)
STRIDE = len(TIMING_FIELDS)
TRACKING_ID, NODE_FROM, ELAPSED_NS, PREVIOUS_END, STARTED_NS, FIRST_START, ERROR_FIELD = range(STRIDE)

