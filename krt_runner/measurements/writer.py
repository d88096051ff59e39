"""The background writer behind every measurement sink.

``put`` adds a point (a finished line of line protocol), or the values of
many that the writer renders (see :mod:`~krt_runner.measurements.pending`), to a
bounded :class:`~krt_runner.measurements.buffer.PointBuffer` and returns: it
never waits for the network or the disk, and it is safe from any thread (sync
handlers run on worker threads). One thread, ``krt-measurements``, renders
the points as soon as a slice of them is waiting, keeps the lines until they
make a whole batch (or the flush interval passed), and hands batches to a
:class:`Destination` (InfluxDB, or the line-protocol file), retrying with
backoff while that fails. What it does is logged now and then
(:mod:`~krt_runner.measurements.report`), never once per point.

Rendering as the points come spreads the writer's work, which holds the
GIL, in short slices, instead of a whole batch's at once.

Close: the thread writes what is left within the shutdown bound, closes the
destination (and with it influxdb-client's connections) and ends.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

from krt_runner.errors import WriteError
from krt_runner.measurements.buffer import MAX_BATCH_TEXT, PointBuffer
from krt_runner.measurements.pending import RENDER_SLICE, PendingLine, render_all, text_in
from krt_runner.measurements.report import WriterReport

# Waits between retries of a failed write: doubling from the first to the last.
_FIRST_RETRY_WAIT = 0.5
_LAST_RETRY_WAIT = 8.0
# The longest wait a server's Retry-After is followed for: meanwhile points keep arriving, bounded in memory.
_CLOSE_RETRY_PAUSE = 0.5  # seconds between tries at shutdown, whatever the backoff had reached
_LONGEST_RETRY_AFTER = 60.0
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
    """A :class:`~krt_runner.measurements.sinks.PointSink` that writes to a :class:`Destination` in the background."""

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
        self._buffer = PointBuffer(max_buffered=max_buffered, batch_size=batch_size, wake_at=RENDER_SLICE)
        self._ready: list[str] = []  # rendered lines, taken from the buffer, waiting to make a whole batch
        self._ready_text = 0  # characters of users' lines among them (a batch holds at most MAX_BATCH_TEXT)
        self._flush_interval = flush_interval
        self._shutdown_timeout = shutdown_timeout
        self._backoff = _Backoff(*retry_waits)
        self._retry_after: float | None = None  # what the destination's last refusal asked for
        # True while writes fail: the points waiting pile up (read by the event loop's thread: see NodePoints.record)
        self.backlogged = False
        self._deadline = float("inf")  # set by close(): the writer stops trying then
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._report = WriterReport(logger, destination.description, max_buffered=max_buffered)
        self._thread = threading.Thread(target=self._run, name="krt-measurements", daemon=True)
        self._thread.start()

    # -- any thread ---------------------------------------------------------------------------

    def put(self, line: PendingLine) -> None:
        """Queue a point, or pending points; when the buffer is full the oldest waiting ones are dropped and
        counted."""
        if self._buffer.put(line) and not self._wake.is_set():
            self._wake.set()

    def put_many(self, lines: Sequence[PendingLine]) -> None:
        """Queue points in order, under one hold of the lock; see :meth:`put`."""
        if self._buffer.put_many(lines) and not self._wake.is_set():
            self._wake.set()

    @property
    def counts(self) -> dict[str, int]:
        """Points ``written``, ``dropped_full``, ``dropped_rejected`` and ``dropped_at_close``."""
        return self._buffer.counts

    @property
    def buffered(self) -> int:
        """Points in memory: waiting, plus the batch being written or retried."""
        return self._buffer.buffered

    @property
    def dropped(self) -> int:
        """Points that will never be written, for any reason."""
        return self._buffer.dropped

    async def close(self, timeout: float) -> None:
        """Write what is buffered within ``min(timeout, shutdown_timeout)`` seconds, then stop the thread."""
        budget = min(timeout, self._shutdown_timeout)
        if not self._buffer.close():
            return
        self._deadline = time.monotonic() + budget
        self._closing.set()
        self._wake.set()
        while self._thread.is_alive() and time.monotonic() < self._deadline + _CLOSE_POLL * 10:
            await asyncio.sleep(_CLOSE_POLL)
        if self._thread.is_alive():  # stuck in a request: the daemon thread ends with the process
            self._log.error("measurements: writer still busy after shutdown bound; unwritten points are lost",
                            seconds=budget, unwritten=self.buffered)
            self._buffer.drop_the_rest()
            self._report.closed(self.counts, self.dropped)  # the thread's own line would come too late, if ever

    # -- the writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._flush_at_close(self._serve())
        finally:
            self._destination.close()
            self._report.closed(self.counts, self.dropped)

    def _serve(self) -> list[str]:
        """Write batches until close; returns a failed batch still to be retried."""
        pending: list[str] = []
        next_flush = time.monotonic() + self._flush_interval
        while not self._closing.is_set():
            if pending:  # close() interrupts the pause
                self._closing.wait(self._retry_wait())
            else:
                self._wake.wait(max(0.0, next_flush - time.monotonic()))
                self._wake.clear()
            partial = time.monotonic() >= next_flush
            if partial:
                next_flush = time.monotonic() + self._flush_interval
            pending = self._write_batches(pending, partial=partial)
            self._report.now_and_then(self.counts, self.buffered)
        return pending

    def _flush_at_close(self, pending: list[str]) -> None:
        """Write what is left before the deadline. An outage's backoff (or a ``Retry-After``) may be as long as the
        whole budget: a store back within it is tried again at least every ``_CLOSE_RETRY_PAUSE``."""
        while time.monotonic() < self._deadline:
            pending = self._write_batches(pending, partial=True)
            if pending:
                pause = min(self._retry_wait(), _CLOSE_RETRY_PAUSE, self._deadline - time.monotonic())
                time.sleep(max(0.0, pause))
            elif not self.buffered:
                break
        self._buffer.drop_the_rest()

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
            if len(batch) < self._buffer.batch_size:
                partial = False
            batch = self._take(partial=partial)
        return batch

    def _take(self, *, partial: bool) -> list[str]:
        """The next batch's lines: a whole batch, or with ``partial`` what is ready up to one. What is waiting is
        rendered first, off the lock (``put`` never waits for this): when ``partial``, whatever is waiting at first;
        otherwise, and after that, only while at least a slice's worth is (``wake_at``). Points keep arriving
        meanwhile: taken as they come, a few at a time, they would be rendered a few at a time, at several times the
        cost per point."""
        size, buffer = self._buffer.batch_size, self._buffer
        at_least = 0 if partial else buffer.wake_at
        while len(self._ready) < size and self._ready_text < MAX_BATCH_TEXT:
            items = buffer.take(at_least=at_least, text=MAX_BATCH_TEXT - self._ready_text)
            if not items:
                break
            self._ready_text += sum(map(text_in, items))
            self._ready += render_all(items, on_bad_points=self._drop_bad_points)
            at_least = buffer.wake_at
        if len(self._ready) < size and self._ready_text < MAX_BATCH_TEXT and not partial:
            return []
        batch, self._ready = self._ready[:size], self._ready[size:]
        self._ready_text = sum(map(len, self._ready)) if self._ready else 0  # what is left: counted in full
        return batch

    def _retry_wait(self) -> float:
        """The backoff's next wait, or what the server asked for (``Retry-After``) when longer, up to a minute."""
        wait = self._backoff.next_wait()
        if self._retry_after is not None:
            wait = max(wait, min(self._retry_after, _LONGEST_RETRY_AFTER))
        return wait

    def _drop_bad_points(self, error: str, count: int) -> None:
        self._buffer.settle(count, "dropped_rejected")
        self._report.rejected(error, count)

    def _send(self, batch: list[str]) -> bool:
        """Try one batch: ``True`` when it is done with (written or refused), ``False`` to retry it."""
        try:
            self._destination.write(batch)
        except WriteError as exc:
            self._retry_after = exc.retry_after
            if exc.retry:
                self.backlogged = True
                self._report.failing(str(exc), self.buffered)
                return False
            self._buffer.settle(len(batch), "dropped_rejected")
            self._report.rejected(str(exc), len(batch))
            return True
        except Exception as exc:  # a bug in a destination must not end the thread: retried like a failure
            self.backlogged = True
            self._report.failing(f"{type(exc).__name__}: {exc}", self.buffered)
            return False
        self._buffer.settle(len(batch), "written")
        self.backlogged = False
        self._backoff.reset()
        self._report.written(len(batch))
        return True
