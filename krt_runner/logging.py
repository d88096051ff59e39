"""structlog set-up: JSON lines in containers, readable console output on a terminal.

Logging never raises: a write to a closed pipe or a full disk is dropped, so a log shipper that goes away
cannot take a message, a callback or a worker with it. Lines of other libraries (nats-py, asyncio) go through
the same renderer, so a JSON log holds nothing but JSON.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _NeverRaising:
    """A stream whose writes and flushes swallow ``OSError`` (``BrokenPipeError`` included) and ``ValueError``
    (a closed file)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError):
            return 0

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()

    def isatty(self) -> bool:
        try:
            return self._stream.isatty()
        except (OSError, ValueError):
            return False


def configure_logging(*, log_format: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog and the standard library's logging once per process; ``auto`` means JSON unless
    ``stream`` is a terminal."""
    stream = stream or sys.stderr
    use_json = log_format == "json" or (log_format == "auto" and not stream.isatty())
    output: Any = _NeverRaising(stream)
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    exceptions: Any = structlog.processors.format_exc_info if use_json else structlog.dev.set_exc_info
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            exceptions,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(output),
        cache_logger_on_first_use=True,
    )
    _route_standard_logging(output, renderer, exceptions)


def _route_standard_logging(output: Any, renderer: Any, exceptions: Any) -> None:
    """Warnings and errors of other libraries, rendered as our own lines (their tracebacks inside them)."""
    handler = logging.StreamHandler(output)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, exceptions, renderer],
    ))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)


def node_logger(*, node: str, workflow: str, version: str) -> Any:
    """The base logger of a node; every line it writes names node, workflow and version."""
    return structlog.get_logger("krt_runner").bind(node=node, workflow=workflow, version=version)
