"""What a sink is given: a finished line, or points whose lines the writer thread makes later, many at once."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from typing import Protocol, cast


class PendingPoints(Protocol):
    """Points still to render: the runner's own, one such per pass of the event loop, as their values."""

    @property
    def count(self) -> int:
        """The lines it makes."""

    def lines(self) -> list[str]:
        """Its lines, in order; may raise (a bug in the renderer)."""

    def parts(self, size: int) -> Sequence[PendingPoints]:
        """The same points cut into parts of about ``size`` lines (a message's points stay together), in order."""

    @property
    def renderer(self) -> object:
        """What makes its lines: pending points with the same renderer can be rendered in one call."""

    def joined(self, others: Sequence[PendingPoints]) -> PendingPoints:
        """Itself and ``others`` after it (all with its renderer) as one."""


# The runner's own points are PendingPoints: the message path only keeps their values; a user's point is a line.
PendingLine = str | PendingPoints


def points_in(item: PendingLine) -> int:
    """How many points (lines to write) ``item`` holds."""
    return 1 if isinstance(item, str) else item.count


def text_in(item: PendingLine) -> int:
    """Characters of a user's line (the runner's own points, a few hundred each, are bounded by their count)."""
    return len(item) if isinstance(item, str) else 0


def rendered(item: PendingLine) -> list[str]:
    """The line-protocol text of what a sink was given."""
    return [item] if isinstance(item, str) else item.lines()


# Points rendered between two pauses of the writer thread, and the pause: rendering holds the GIL, and the event
# loop's thread must never wait long for it.
RENDER_SLICE = 200
_RENDER_PAUSE = 0.0002


def render_all(items: Sequence[PendingLine], *, on_bad_points: Callable[[str, int], None]) -> list[str]:
    """The lines of ``items``, in order, rendered in slices of about :data:`RENDER_SLICE` points. Points their
    renderer cannot render are left out and reported to ``on_bad_points`` (why, and how many)."""
    lines: list[str] = []
    since_pause = 0
    for item in _joined(items):
        if isinstance(item, str):
            lines.append(item)
            continue
        for part in item.parts(RENDER_SLICE) if item.count > RENDER_SLICE else (item,):
            if since_pause >= RENDER_SLICE:
                time.sleep(_RENDER_PAUSE)
                since_pause = 0
            lines += _render_points(part, on_bad_points)
            since_pause += part.count
    return lines


def _joined(items: Sequence[PendingLine]) -> list[PendingLine]:
    """``items`` with each run of pending points of one renderer made one: a busy node's passes hold many messages
    each, an idle node's one, and rendering one message alone costs several times its share of many."""
    joined: list[PendingLine] = []
    for renderer, run in itertools.groupby(items, key=_renderer_of):
        if renderer is None:  # finished lines
            joined += run
        else:
            first, *rest = cast("list[PendingPoints]", list(run))
            joined.append(first.joined(rest) if rest else first)
    return joined


def _renderer_of(item: PendingLine) -> object:
    return None if isinstance(item, str) else item.renderer


def _render_points(points: PendingPoints, on_bad_points: Callable[[str, int], None]) -> list[str]:
    """A bug in a renderer costs its own points, never the thread or the batch: failing points are retried one
    message at a time, and only the messages whose points fail alone are left out."""
    try:
        return points.lines()
    except Exception as exc:
        pieces = points.parts(1)
        if len(pieces) > 1:
            return [line for piece in pieces for line in _render_points(piece, on_bad_points)]
        on_bad_points(f"cannot render a point: {type(exc).__name__}: {exc}", points.count)
        return []
