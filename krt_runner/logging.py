"""structlog set-up: JSON lines in containers, readable console output on a terminal.

Logging never raises and never blocks (:mod:`krt_runner.log_stream`), so a log shipper that stops reading (a
full pipe) or goes away (a closed one, a full disk) cannot take a message, a callback or a worker with it. Every
value is cut to :data:`MAX_VALUE` characters: a message's fields (its ``tracking_id``) cannot make a line of
megabytes. Lines of other libraries (nats-py, asyncio) go through the same renderer, so a JSON log holds nothing
but JSON.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from krt_runner.log_stream import NeverBlockingStream
from krt_runner.logger_manners import with_standard_manners

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# Libraries whose INFO and DEBUG lines say nothing a node's user needs (per request, per connection).
_QUIET_LIBRARIES = ("asyncio", "urllib3", "influxdb_client", "nats", "grpc", "pymongo")
# The node a process runs, for the standard library's lines (see node_logger).
_IDENTITY: dict[str, str] = {}
# How configure_logging renders lines: {"json": bool, "notice": a renderer of one event}, for capture_output.
_RENDERED: dict[str, Any] = {}
# Characters of one value in a line (a traceback fits; a hostile message's 60 MB tracking_id does not).
MAX_VALUE = 10_000


def _bounded_values(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Each text value cut to :data:`MAX_VALUE` characters, saying how long it was."""
    for key, value in event.items():
        if isinstance(value, str) and len(value) > MAX_VALUE:
            event[key] = f"{value[:MAX_VALUE]}... ({len(value)} characters)"
    return event


def configure_logging(*, log_format: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog and the standard library's logging once per process; ``auto`` means JSON unless
    ``stream`` is a terminal."""
    stream = stream or sys.stderr
    use_json = log_format == "json" or (log_format == "auto" and not stream.isatty())
    _RENDERED["json"] = use_json
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    _RENDERED["notice"] = lambda event: renderer(None, "warning", dict(event))
    output: Any = never_blocking(stream)
    exceptions: Any = structlog.processors.format_exc_info if use_json else structlog.dev.set_exc_info
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            exceptions,
            _bounded_values,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(output),
        cache_logger_on_first_use=True,
    )
    _route_standard_logging(output, renderer, exceptions, _LEVELS[level])


def never_blocking(stream: TextIO) -> NeverBlockingStream:
    """A :class:`NeverBlockingStream` onto ``stream`` whose line about lines it dropped is rendered as this process's
    log lines are, naming the node."""
    return NeverBlockingStream(stream, identity=_IDENTITY.copy, notice=_RENDERED.get("notice", json.dumps))


def json_log() -> bool:
    """Whether configure_logging chose JSON lines."""
    return bool(_RENDERED.get("json", False))


def _route_standard_logging(output: Any, renderer: Any, exceptions: Any, level: int) -> None:
    """The standard library's lines, rendered as our own (their tracebacks inside them), naming the node: a handler
    module's ``logging.info`` at the node's level, as KRE v1 logged it; other libraries' warnings and errors."""
    handler = logging.StreamHandler(output)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            _node_identity,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, exceptions, _bounded_values,
                    renderer],
    ))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    for library in _QUIET_LIBRARIES:
        logging.getLogger(library).setLevel(max(level, logging.WARNING))


def _node_identity(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in _IDENTITY.items():
        event.setdefault(key, value)
    return event


def node_logger(*, node: str, workflow: str, version: str) -> Any:
    """The base logger of a node; every line it writes names node, workflow and version, and so does every line
    of the standard library's logging from now on."""
    _IDENTITY.update(node=node, workflow=workflow, version=version)
    wrapper = with_standard_manners(structlog.get_config()["wrapper_class"])
    logger = structlog.wrap_logger(None, wrapper_class=wrapper, logger_factory_args=("krt_runner",))
    return logger.bind(node=node, workflow=workflow, version=version)
