"""The background writer behind every measurement sink.

``put`` appends a point (a finished line of line protocol, or the values of
one that the writer renders: see ``measurements.PendingLine``) to a bounded
buffer, under a lock held for an append (``put_many``: for the appends of a
list), and returns: it never waits for the
network or the disk, and it is safe from any thread (sync handlers run on
worker threads).
One thread, ``krt-measurements``, takes whole batches and hands them to a
:class:`Destination` (InfluxDB, or the line-protocol file), retrying with
backoff while that fails.

Memory is bounded: at most ``max_buffered`` lines are held, the batch being
retried included. When the buffer is full the oldest waiting line makes room
for the new one. Every line that is not written is counted; the counts are
logged now and then (:mod:`~krt_runner.measurements.report`), never once per line.

Close: the thread writes what is left within the shutdown bound, closes the
destination (and with it influxdb-client's connections) and ends.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

from krt_runner.errors import WriteError
from krt_runner.measurements.pending import PendingLine, Renderer
from krt_runner.measurements.report import WriterReport

# Waits between retries of a failed write: doubling from the first to the last.
_FIRST_RETRY_WAIT = 0.5
_LAST_RETRY_WAIT = 8.0
# Points rendered between two pauses of the writer, and the pause: see BatchWriter._render.
_RENDER_SLICE = 200
_RENDER_PAUSE = 0.0002
# How often close() looks whether the writer thread has finished.
_CLOSE_POLL = 0.01



class Destination(Protocol):
    """Where batches go. ``write`` blocks (it runs on the writer thread) and raises :class:`WriteError`."""

    description: str  # for the start-up line: "InfluxDB", "a line-protocol file"
    details: dict[str, Any]  # log-safe: no token, no password

    def write(self, lines: list[str]) -> None: ...

    def close(self) -> None: ...


class _Backoff:
    def __init__(self, first: float, last: float) -> None:
        self._first = first
        self._last = last
        self._next = first

    def reset(self) -> None:
        self._next = self._first

    def next_wait(self) -> float:
        wait, self._next = self._next, min(self._next * 2, self._last)
        return wait * random.uniform(0.75, 1.0)  # jitter: replicas do not retry in step


class BatchWriter:
    """A :class:`~krt_runner.measurements.points.PointSink` that writes to a :class:`Destination` in the background."""

    def __init__(
        self,
        destination: Destination,
        *,
        logger: Any,
        batch_size: int,
        flush_interval: float,
        max_buffered: int,
        shutdown_timeout: float,
        retry_waits: tuple[float, float] = (_FIRST_RETRY_WAIT, _LAST_RETRY_WAIT),
    ) -> None:
        self._destination = destination
        self._log = logger
        self._max_buffered = max_buffered
        self._batch_size = min(batch_size, max_buffered)
        self._flush_interval = flush_interval
        self._shutdown_timeout = shutdown_timeout
        self._backoff = _Backoff(*retry_waits)
        self._lock = threading.Lock()
        self._queue: deque[PendingLine] = deque()
        self._held = 0  # lines taken out of the queue and not yet written
        self._closed = False
        self._deadline = float("inf")  # set by close(): the writer stops trying then
        self._wake = threading.Event()
        self._closing = threading.Event()
        self.counts = {"written": 0, "dropped_full": 0, "dropped_rejected": 0, "dropped_at_close": 0}
        self._report = WriterReport(logger, destination.description, max_buffered=max_buffered)
        self._thread = threading.Thread(target=self._run, name="krt-measurements", daemon=True)
        self._thread.start()

    # -- any thread ---------------------------------------------------------------------------

    def put(self, line: PendingLine) -> None:
        """Queue one point; when the buffer is full the oldest waiting one is dropped and counted."""
        self.put_many((line,))

    def put_many(self, lines: Sequence[PendingLine]) -> None:
        """Queue points in order, under one hold of the lock; see :meth:`put`."""
        with self._lock:
            if self._closed:
                self.counts["dropped_at_close"] += len(lines)
                return
            if len(self._queue) + self._held + len(lines) <= self._max_buffered:
                self._queue.extend(lines)
            else:
                for line in lines:
                    self._append_making_room(line)
            full = len(self._queue) >= self._batch_size
        if full and not self._wake.is_set():
            self._wake.set()

    def _append_making_room(self, line: PendingLine) -> None:
        """Under the lock, with the buffer full or nearly: the oldest waiting line goes to make room."""
        if len(self._queue) + self._held >= self._max_buffered:
            self.counts["dropped_full"] += 1
            if not self._queue:  # all held lines are the batch being retried: the new one goes
                return
            self._queue.popleft()
        self._queue.append(line)

    @property
    def buffered(self) -> int:
        """Lines in memory: waiting, plus the batch being written or retried."""
        with self._lock:
            return len(self._queue) + self._held

    @property
    def dropped(self) -> int:
        """Lines that will never be written, for any reason."""
        return self.counts["dropped_full"] + self.counts["dropped_rejected"] + self.counts["dropped_at_close"]

    async def close(self, timeout: float) -> None:
        """Write what is buffered within ``min(timeout, shutdown_timeout)`` seconds, then stop the thread."""
        budget = min(timeout, self._shutdown_timeout)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._deadline = time.monotonic() + budget
        self._closing.set()
        self._wake.set()
        while self._thread.is_alive() and time.monotonic() < self._deadline + _CLOSE_POLL * 10:
            await asyncio.sleep(_CLOSE_POLL)
        if self._thread.is_alive():  # stuck in a request: the daemon thread ends with the process
            self._log.error("measurements: writer still busy after shutdown bound; unwritten points are lost",
                            seconds=budget, unwritten=self.buffered)

    # -- the writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        pending: list[str] = []
        try:
            pending = self._serve()
            self._flush_at_close(pending)
        finally:
            self._destination.close()
            self._report.closed(self.counts, self.dropped)

    def _serve(self) -> list[str]:
        """Write batches until close; returns a failed batch still to be retried."""
        pending: list[str] = []
        next_flush = time.monotonic() + self._flush_interval
        while not self._closing.is_set():
            if pending:  # close() interrupts the pause
                self._closing.wait(self._backoff.next_wait())
            else:
                self._wake.wait(max(0.0, next_flush - time.monotonic()))
                self._wake.clear()
            partial = time.monotonic() >= next_flush
            if partial:
                next_flush = time.monotonic() + self._flush_interval
            pending = self._write_batches(pending, partial=partial)
            self._report.drops(self.counts, self.buffered)
        return pending

    def _flush_at_close(self, pending: list[str]) -> None:
        while time.monotonic() < self._deadline:
            pending = self._write_batches(pending, partial=True)
            if pending:
                time.sleep(max(0.0, min(self._backoff.next_wait(), self._deadline - time.monotonic())))
            elif not self.buffered:
                break
        with self._lock:
            left = len(self._queue) + self._held
            self._queue.clear()
            self._held = 0
            self.counts["dropped_at_close"] += left

    def _write_batches(self, pending: list[str], *, partial: bool) -> list[str]:
        """Write full batches and, if ``partial``, one short batch; returns a batch that failed.

        One short batch per call: on a busy node, what arrives while a short
        batch is being sent waits for the next flush or a full batch, instead of
        going out as a stream of requests of a few points each.
        """
        batch = pending or self._take(partial=partial)
        while batch and time.monotonic() < self._deadline:
            if not self._send(batch):
                return batch
            if len(batch) < self._batch_size:
                partial = False
            batch = self._take(partial=partial)
        return batch

    def _take(self, *, partial: bool) -> list[str]:
        with self._lock:
            size = min(len(self._queue), self._batch_size)
            if size == 0 or (size < self._batch_size and not partial):
                return []
            self._held += size
            taken = [self._queue.popleft() for _ in range(size)]
        return self._render(taken)

    def _render(self, taken: list[PendingLine]) -> list[str]:
        """Lines for what was taken, made off the lock (``put`` never waits for this).

        A slice at a time with a pause between: rendering holds the GIL, and the
        event loop's thread must never wait long for it.
        """
        lines: list[str] = []
        for start in range(0, len(taken), _RENDER_SLICE):
            if start:
                time.sleep(_RENDER_PAUSE)
            lines.extend(self._render_slice(taken[start:start + _RENDER_SLICE]))
        return lines

    def _render_slice(self, items: list[PendingLine]) -> list[str]:
        """Finished lines as they are, then each renderer's points through one call."""
        lines: list[str] = []
        by_renderer: dict[Renderer, list[Any]] = {}
        for item in items:
            if isinstance(item, str):
                lines.append(item)
            else:
                by_renderer.setdefault(item.render, []).append(item.values)
        for render, values in by_renderer.items():
            lines.extend(self._render_points(render, values))
        return lines

    def _render_points(self, render: Renderer, values: list[Any]) -> list[str]:
        """A bug in a renderer costs its own points, never the thread or the batch: a failing group is retried
        one point at a time, and only the points that fail alone are dropped."""
        try:
            return list(render(values))
        except Exception as exc:
            if len(values) > 1:
                return [line for value in values for line in self._render_points(render, [value])]
            self._settle(values, "dropped_rejected")
            self._report.rejected(f"cannot render a point: {type(exc).__name__}: {exc}", 1)
            return []

    def _send(self, batch: list[str]) -> bool:
        """Try one batch: ``True`` when it is done with (written or refused), ``False`` to retry it."""
        try:
            self._destination.write(batch)
        except WriteError as exc:
            if exc.retry:
                self._report.failing(str(exc), self.buffered)
                return False
            self._settle(batch, "dropped_rejected")
            self._report.rejected(str(exc), len(batch))
            return True
        except Exception as exc:  # a bug in a destination must not end the thread: retried like a failure
            self._report.failing(f"{type(exc).__name__}: {exc}", self.buffered)
            return False
        self._settle(batch, "written")
        self._backoff.reset()
        self._report.written(len(batch))
        return True

    def _settle(self, batch: list[Any], outcome: str) -> None:
        with self._lock:
            self._held -= len(batch)
            self.counts[outcome] += len(batch)
