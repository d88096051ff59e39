"""A message's outcome and timing: what the node hands to the measurements for each message it answered."""

from __future__ import annotations

import enum
from typing import NamedTuple


class Outcome(enum.Enum):
    """How a message ended; its value is the ``error`` field of its points (none on success)."""

    ANSWERED = ""
    INVALID = "invalid"  # rejected before the handler ran: a payload of the wrong type, or validate() raised
    FAILED = "failed"  # anything else: undecodable, the handler raised or timed out, the answer could not be made


class Timing(NamedTuple):
    """One message's timing. Both of its points are stamped with the time of the answer, ``started_ns + elapsed_ns``."""

    tracking_id: str
    node_from: str  # the previous node's name ("" without tracking)
    elapsed_ns: int  # from the message's start in this node to its answer
    previous_end: str  # the previous node's tracking end: waiting_ms runs from it to started_ns
    started_ns: int  # when this node started on the message, nanoseconds since the epoch
    first_start: str | None  # the first tracking entry's start, on the last node only (workflow_elapsed_time)
    outcome: Outcome
