"""The writer's bounded memory: points waiting, and the batch being written or retried.

Safe from any thread: every change happens under one lock, held for an
append (or the appends of a list) and never for I/O. At most
``max_buffered`` points are held, the batch being retried included; when
full, the oldest waiting point makes room for the new one. Every point that
will not be written is counted, by reason.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence

from krt_runner.measurements.pending import PendingLine


class PointBuffer:
    """Points waiting for the writer thread, bounded and counted."""

    def __init__(self, *, max_buffered: int, batch_size: int, wake_at: int) -> None:
        self.max_buffered = max_buffered
        self.batch_size = min(batch_size, max_buffered)
        self._wake_at = min(wake_at, self.batch_size)
        self.counts = {"written": 0, "dropped_full": 0, "dropped_rejected": 0, "dropped_at_close": 0}
        self._lock = threading.Lock()
        self._queue: deque[PendingLine] = deque()
        self._held = 0  # points taken out of the queue and not yet settled
        self._closed = False

    def put_many(self, lines: Sequence[PendingLine]) -> bool:
        """Queue points in order; ``True`` when ``wake_at`` of them are waiting (worth the writer's while)."""
        with self._lock:
            if self._closed:
                self.counts["dropped_at_close"] += len(lines)
                return False
            if len(self._queue) + self._held + len(lines) <= self.max_buffered:
                self._queue.extend(lines)
            else:
                for line in lines:
                    self._append_making_room(line)
            return len(self._queue) >= self._wake_at

    def _append_making_room(self, line: PendingLine) -> None:
        """Under the lock, with the buffer full or nearly: the oldest waiting point goes to make room."""
        if len(self._queue) + self._held >= self.max_buffered:
            self.counts["dropped_full"] += 1
            if not self._queue:  # all held points are the batch being retried: the new one goes
                return
            self._queue.popleft()
        self._queue.append(line)

    def take(self) -> list[PendingLine]:
        """What is waiting, up to a batch; it is held until :meth:`settle`."""
        with self._lock:
            size = min(len(self._queue), self.batch_size)
            self._held += size
            return [self._queue.popleft() for _ in range(size)]

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
            self.counts["dropped_at_close"] += len(self._queue) + self._held
            self._queue.clear()
            self._held = 0

    @property
    def buffered(self) -> int:
        """Points in memory: waiting, plus the batch being written or retried."""
        with self._lock:
            return len(self._queue) + self._held

    @property
    def dropped(self) -> int:
        """Points that will never be written, for any reason."""
        return self.counts["dropped_full"] + self.counts["dropped_rejected"] + self.counts["dropped_at_close"]
