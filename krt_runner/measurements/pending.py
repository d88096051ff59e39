"""What a sink is given: a finished line, or the values of points that the writer thread renders later."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

Renderer = Callable[[Sequence[Any]], list[str]]


# One point still to render: its renderer, which makes the lines of many such values at once, in order, and its
# values. A plain pair: one or two are made per message, and a tuple subclass costs several times a tuple.
Deferred = tuple[Renderer, Any]
# The runner's own points are Deferred: the message path only keeps their values; a user's point is a finished line.
PendingLine = str | Deferred


def rendered(item: PendingLine) -> str:
    """The line-protocol text of what a sink was given."""
    if isinstance(item, str):
        return item
    render, values = item
    return render([values])[0]


# Points rendered between two pauses of the writer thread, and the pause: rendering holds the GIL, and the event
# loop's thread must never wait long for it.
RENDER_SLICE = 200
_RENDER_PAUSE = 0.0002


def render_all(items: Sequence[PendingLine], *, on_bad_point: Callable[[str], None]) -> list[str]:
    """The lines of ``items``, in order: finished lines as they are, each renderer's points through one call per
    slice. A point its renderer cannot render is left out and reported to ``on_bad_point``."""
    lines: list[str] = []
    for start in range(0, len(items), RENDER_SLICE):
        if start:
            time.sleep(_RENDER_PAUSE)
        lines.extend(_render_slice(items[start:start + RENDER_SLICE], on_bad_point))
    return lines


def _render_slice(items: Sequence[PendingLine], on_bad_point: Callable[[str], None]) -> list[str]:
    lines: list[str] = []
    by_renderer: dict[Renderer, list[Any]] = {}
    for item in items:
        if isinstance(item, str):
            lines.append(item)
        else:
            render, values = item
            by_renderer.setdefault(render, []).append(values)
    for render, values in by_renderer.items():
        lines.extend(_render_points(render, values, on_bad_point))
    return lines


def _render_points(render: Renderer, values: list[Any], on_bad_point: Callable[[str], None]) -> list[str]:
    """A bug in a renderer costs its own points, never the thread or the batch: a failing group is retried one
    point at a time, and only the points that fail alone are left out."""
    try:
        return list(render(values))
    except Exception as exc:
        if len(values) > 1:
            return [line for value in values for line in _render_points(render, [value], on_bad_point)]
        on_bad_point(f"cannot render a point: {type(exc).__name__}: {exc}")
        return []
