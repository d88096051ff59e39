"""A message's outcome and timing: what the node hands to the measurements for each message it answered."""

from __future__ import annotations

import enum
from typing import NamedTuple, Protocol


class Outcome(enum.Enum):
    """How a message ended; its value is the ``error`` field of its points (none on success)."""

    ANSWERED = ""
    INVALID = "invalid"  # rejected before the handler ran: a payload of the wrong type, or validate() raised
    FAILED = "failed"  # anything else: undecodable, the handler raised or timed out, the answer could not be made

    def __init__(self, value: str) -> None:
        # Read per point when rendering: a plain attribute, where a dict keyed by members would hash each in Python.
        self.error_field = f',error="{value}"' if value else ""


class Timing(Protocol):
    """One message's timing, as the measurements read it. Both of its points are stamped with the time of the
    answer, ``started_ns + elapsed_ns``. The node's own record of a message (its ``Job``) is one, so that no
    object is made per message for the measurements; :class:`TimingValues` is one too."""

    @property
    def tracking_id(self) -> str: ...

    @property
    def node_from(self) -> str:
        """The previous node's name ("" without tracking)."""

    @property
    def elapsed_ns(self) -> int:
        """From the message's start in this node to its answer."""

    @property
    def previous_end(self) -> str:
        """The previous node's tracking end: ``waiting_ms`` runs from it to ``started_ns``."""

    @property
    def started_ns(self) -> int:
        """When this node started on the message, nanoseconds since the epoch."""

    @property
    def first_start(self) -> str | None:
        """The first tracking entry's start, on the last node only (``workflow_elapsed_time``)."""

    @property
    def outcome(self) -> Outcome: ...


class TimingValues(NamedTuple):
    """A :class:`Timing` made of plain values."""

    tracking_id: str
    node_from: str
    elapsed_ns: int
    previous_end: str
    started_ns: int
    first_start: str | None
    outcome: Outcome
