"""The measurement writer's log lines: on a change of state, and drops and repeated refusals at most once per
``_REPORT_EVERY``."""

from __future__ import annotations

import time
from typing import Any

# Seconds between two log lines about dropped points, or about the same refusal.
_REPORT_EVERY = 10.0


class WriterReport:
    """What the writer tells the log."""

    def __init__(self, logger: Any, destination: str, *, max_buffered: int) -> None:
        self._log = logger
        self._destination = destination
        self._max_buffered = max_buffered
        self._failing_since: float | None = None
        self._failed_attempts = 0
        self._first_written = False
        self._reported_drops = 0
        self._last_report = 0.0
        self._closed = False
        self._last_refusal = ""
        self._last_refusal_at = 0.0
        self._refused_points = 0  # since the last line about a refusal
        self._refused_batches = 0

    def written(self, lines: int) -> None:
        if self._failing_since is not None:
            self._log.info("measurements: writes succeed again", destination=self._destination,
                           failed_attempts=self._failed_attempts,
                           outage_seconds=round(time.monotonic() - self._failing_since, 1))
            self._failing_since = None
            self._failed_attempts = 0
        elif not self._first_written:
            self._log.info("measurements: first batch written", destination=self._destination, points=lines)
        self._first_written = True

    def failing(self, error: str, buffered: int) -> None:
        self._failed_attempts += 1
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            self._log.error("measurements: write failed; points are kept and retried",
                            destination=self._destination, error=error, buffered=buffered)

    def rejected(self, error: str, lines: int) -> None:
        """A refusal now; the same refusal again (a wrong token, batch after batch) at most once per
        ``_REPORT_EVERY``, with what was dropped meanwhile (every drop is in :meth:`closed`'s counts)."""
        if error != self._last_refusal and self._refused_points:  # the refusals held back, under their own error
            self._log_refusals()
        self._refused_points += lines
        self._refused_batches += 1
        if error != self._last_refusal or time.monotonic() - self._last_refusal_at >= _REPORT_EVERY:
            self._last_refusal = error
            self._log_refusals()

    def _log_refusals(self) -> None:
        self._log.error("measurements: batch refused for good; its points are dropped",
                        destination=self._destination, error=self._last_refusal, dropped=self._refused_points,
                        batches=self._refused_batches)
        self._last_refusal_at = time.monotonic()
        self._refused_points = self._refused_batches = 0

    def now_and_then(self, counts: dict[str, int], buffered: int) -> None:
        """Drops and refusals held back, once :data:`_REPORT_EVERY` has passed since their last line."""
        if self._refused_points and time.monotonic() - self._last_refusal_at >= _REPORT_EVERY:
            self._log_refusals()
        self._drops(counts, buffered)

    def _drops(self, counts: dict[str, int], buffered: int) -> None:
        """Points dropped to make room; those dropped at close are in :meth:`closed`'s line, not here."""
        total = counts["dropped_full"]
        now = time.monotonic()
        if total == self._reported_drops or now - self._last_report < _REPORT_EVERY:
            return
        self._log.warning("measurements: buffer full, oldest points dropped",
                          dropped=total - self._reported_drops, dropped_total=total, buffered=buffered,
                          max_buffered=self._max_buffered)
        self._reported_drops = total
        self._last_report = now

    def closed(self, counts: dict[str, int], dropped: int) -> None:
        """The last line, once: from the writer thread, or from close() when that thread is stuck."""
        if self._closed:
            return
        self._closed = True
        self._log.info("measurements closed", destination=self._destination, dropped=dropped, **counts)
