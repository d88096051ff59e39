"""What a sink is given: a finished line, or the values of points that the writer thread renders later."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

Renderer = Callable[[Sequence[Any]], list[str]]


class Deferred(NamedTuple):
    """One point still to render: ``render`` makes the lines of many such values at once, in order."""

    render: Renderer
    values: Any


# The runner's own points are Deferred: the message path only keeps their values; a user's point is a finished line.
PendingLine = str | Deferred


def rendered(item: PendingLine) -> str:
    """The line-protocol text of what a sink was given."""
    return item if isinstance(item, str) else item.render([item.values])[0]
