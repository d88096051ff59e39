"""The writer's bounded memory: points waiting, and the batch being written or retried.

Safe from any thread: every change happens under one lock, held for an
append (or the appends of a list) and never for I/O. What is put is a line
(one point) or the pending points of a pass of the event loop (many); the
buffer counts points. At most ``max_buffered`` points are held, the batch
being retried included; when full, the oldest waiting points make room for
the new ones. Users' points, lines of up to 64 KB each, are bounded by their
text too: at most :data:`MAX_WAITING_TEXT` characters of them wait, and
:data:`MAX_BATCH_TEXT` go in one batch. Every point that will not be written
is counted, by reason.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence

from krt_runner.measurements.pending import PendingLine, points_in, text_in

# Characters of users' lines that may wait (the runner's own points are a few hundred each: their count bounds them).
MAX_WAITING_TEXT = 64 << 20
# Characters of users' lines in one batch: at most 8 MB of UTF-8 beside the runner's own points (5000 of them, about
# 1 MB), under the request sizes stores take (InfluxDB 1.x: 25 MB; VictoriaMetrics: 32 MB).
MAX_BATCH_TEXT = 2 << 20


class PointBuffer:
    """Points waiting for the writer thread, bounded and counted."""

    def __init__(self, *, max_buffered: int, batch_size: int, wake_at: int) -> None:
        self.max_buffered = max_buffered
        self.batch_size = min(batch_size, max_buffered)
        self.wake_at = min(wake_at, self.batch_size)  # points waiting that are worth the writer's while
        self.counts = {"written": 0, "dropped_full": 0, "dropped_rejected": 0, "dropped_at_close": 0}
        self._lock = threading.Lock()
        self._queue: deque[PendingLine] = deque()
        self._waiting = 0  # points in the queue
        self._held = 0  # points taken out of the queue and not yet settled
        self._text = 0  # characters of the lines (users' points) in the queue
        self._closed = False

    def put(self, item: PendingLine) -> bool:
        """:meth:`put_many` of one item (once per pass of the event loop, and per user's point)."""
        if isinstance(item, str):
            return self._admit((item,), 1, len(item))
        return self._admit((item,), item.count, 0)

    def put_many(self, items: Sequence[PendingLine]) -> bool:
        """Queue items in order; ``True`` when ``wake_at`` points are waiting (worth the writer's while)."""
        return self._admit(items, sum(map(points_in, items)), sum(map(text_in, items)))

    def _admit(self, items: Sequence[PendingLine], points: int, text: int) -> bool:
        with self._lock:
            if self._closed:
                self.counts["dropped_at_close"] += points
                return False
            if self._waiting + self._held + points <= self.max_buffered and self._text + text <= MAX_WAITING_TEXT:
                self._queue.extend(items)
                self._waiting += points
                self._text += text
            else:
                for item in items:
                    self._append_making_room(item)
            return self._waiting >= self.wake_at

    def _append_making_room(self, item: PendingLine) -> None:
        """Under the lock, with the buffer full or nearly: the oldest waiting points go to make room."""
        points, text = points_in(item), text_in(item)
        if points > self.max_buffered - self._held:  # it cannot fit beside the batch being retried: it goes
            self.counts["dropped_full"] += points
            return
        while self._waiting + self._held + points > self.max_buffered or self._text + text > MAX_WAITING_TEXT:
            oldest = self._queue.popleft()
            self._waiting -= points_in(oldest)
            self._text -= text_in(oldest)
            self.counts["dropped_full"] += points_in(oldest)
        self._queue.append(item)
        self._waiting += points
        self._text += text

    def take(self, *, at_least: int = 0, text: int = MAX_BATCH_TEXT) -> list[PendingLine]:
        """What is waiting, up to a batch of points or ``text`` characters of users' lines (or one item more), or
        nothing when fewer than ``at_least`` points are; it is held until :meth:`settle`."""
        items: list[PendingLine] = []
        points = taken_text = 0
        with self._lock:
            if self._waiting < at_least:
                return items
            queue = self._queue
            while queue and points < self.batch_size and taken_text < text:
                item = queue.popleft()
                items.append(item)
                points += points_in(item)
                taken_text += text_in(item)
            self._waiting -= points
            self._held += points
            self._text -= taken_text
        return items

    def settle(self, count: int, outcome: str) -> None:
        """``count`` held points are done with: ``written`` or ``dropped_rejected``."""
        with self._lock:
            self._held -= count
            self.counts[outcome] += count

    def close(self) -> bool:
        """Take no more points; ``False`` if it was closed already."""
        with self._lock:
            closed, self._closed = self._closed, True
            return not closed

    def drop_the_rest(self) -> None:
        """At the end of the shutdown bound: whatever is still held or waiting is counted as dropped at close."""
        with self._lock:
            self.counts["dropped_at_close"] += self._waiting + self._held
            self._queue.clear()
            self._waiting = self._held = self._text = 0

    @property
    def buffered(self) -> int:
        """Points in memory: waiting, plus the batch being written or retried."""
        with self._lock:
            return self._waiting + self._held

    @property
    def dropped(self) -> int:
        """Points that will never be written, for any reason."""
        return self.counts["dropped_full"] + self.counts["dropped_rejected"] + self.counts["dropped_at_close"]
