"""The manners of KRE v1's ``ctx.logger``, a standard library ``logging.Logger``, on structlog's filtering logger.

A KRE v1 handler may call ``isEnabledFor``, ``getEffectiveLevel``, ``setLevel``, ``addHandler``, ``hasHandlers``,
``addFilter`` or ``getChild``, read ``name``, ``level``, ``handlers``, ``filters``, ``propagate`` or ``disabled``,
pass ``extra={...}`` (its keys become the line's fields, but for those the line has) or ``stacklevel``; and a log
call whose ``%`` arguments do not fit its text (``logger.info("%s scored %d", name)``) never raised there: the
standard library reports it and carries on. Here such a line is written with its text as it was and its arguments
beside it, and the handler goes on. Only the levels the logger writes are wrapped: a call below them stays
structlog's ``return None``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

# The methods that take a text and its % arguments, with their level; exception() goes through error().
_LEVEL_METHODS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
                  "warn": logging.WARNING, "error": logging.ERROR, "critical": logging.CRITICAL,
                  "fatal": logging.CRITICAL}


@functools.cache
def with_standard_manners(wrapper: Any) -> Any:
    """``wrapper`` (structlog's filtering logger class), with the standard library's names and forgiveness."""
    if hasattr(wrapper, "isEnabledFor") or not hasattr(wrapper, "is_enabled_for"):
        return wrapper  # the standard library's own, or a logger class someone configured: left as it is
    least = wrapper.get_effective_level(None)
    manners: dict[str, Any] = {
        "isEnabledFor": wrapper.is_enabled_for,
        "getEffectiveLevel": wrapper.get_effective_level,
        "setLevel": _level_is_the_nodes,
        "addHandler": _handlers_are_the_nodes,
        "removeHandler": _handlers_are_the_nodes,
        "handlers": property(lambda self: [], _ignored),
        "hasHandlers": _has_handlers,
        "addFilter": _handlers_are_the_nodes,
        "removeFilter": _handlers_are_the_nodes,
        "filters": property(lambda self: [], _ignored),
        "level": property(lambda self: least, _ignored),
        "propagate": property(lambda self: False, _ignored),
        "disabled": property(lambda self: False, _ignored),
        "getChild": _child,
        "name": "krt_runner",
        "log": _forgiving_log(wrapper.log),
    }
    for name, level in _LEVEL_METHODS.items():
        if level >= least and hasattr(wrapper, name):
            manners[name] = _forgiving(getattr(wrapper, name))
    return type(wrapper.__name__, (wrapper,), manners)


def _level_is_the_nodes(self: Any, level: Any) -> None:
    """Accepted, as KRE v1 code calls it, and left alone: KRT_LOG_LEVEL sets a node's level."""


def _handlers_are_the_nodes(self: Any, handler: Any) -> None:
    """Accepted and left alone: the node writes every line itself (KRT_LOG_FORMAT), to its standard error."""


def _has_handlers(self: Any) -> bool:
    """True: the node writes every line it is given."""
    return True


def _ignored(self: Any, value: Any) -> None:
    """An attribute a KRE v1 handler may set on its logger (``propagate``, ``level``, ...): accepted, left alone."""


def _child(self: Any, suffix: str) -> Any:
    """``logging.Logger.getChild``: the same logger, its lines naming ``krt_runner.<suffix>`` (a child's child,
    ``krt_runner.<suffix>.<suffix>``)."""
    return self.bind(logger=f"{self._context.get('logger', 'krt_runner')}.{suffix}")


def _forgiving(method: Callable[..., Any]) -> Callable[..., Any]:
    def call(self: Any, event: Any, *args: Any, **kw: Any) -> Any:
        return _logged(functools.partial(method, self), self, event, args, kw)

    return call


def _forgiving_log(method: Callable[..., Any]) -> Callable[..., Any]:
    def call(self: Any, level: int, event: Any, *args: Any, **kw: Any) -> Any:
        return _logged(functools.partial(method, self, level), self, event, args, kw)

    return call


def _logged(log: Callable[..., Any], logger: Any, event: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
    """One line as the standard library's logging takes it (``str(msg)``, ``msg % args``, ``extra=``), written by
    ``log`` (structlog's method, its logger and level given); never raising into the code that logs."""
    if not isinstance(event, str):
        event = _text(event)
    if args:
        event = _interpolated(event, args, kw)
    if kw:
        _as_fields(logger._context, kw)
    try:
        return log(event, **kw)
    except Exception as exc:
        return _without_fields(functools.partial(log, event), kw, exc)


def _without_fields(log: Callable[..., Any], kw: dict[str, Any], exc: Exception) -> Any:
    """A line whose fields could not be rendered (a ``repr`` that raises), written without them (its traceback
    kept): as the standard library's logging, a log call fails no request."""
    kept = {key: kw[key] for key in ("exc_info", "stack_info") if key in kw}
    with contextlib.suppress(Exception):
        return log(**kept, log_error=f"the line's fields could not be rendered: {type(exc).__name__}")
    return None


def _text(message: Any) -> str:
    """What the standard library logs for a message that is no text, ``str(msg)`` (an exception's text, not its
    repr); never raising: a log line fails no request."""
    try:
        return str(message)
    except Exception:
        return object.__repr__(message)


# Keys an ``extra`` may not make fields of: structlog's own arguments, and what every line has.
_NOT_FIELDS = frozenset({"event", "level", "self", "method_name", "timestamp", "logger", "exception", "stack",
                         "exc_info", "stack_info", "extra"})


def _as_fields(context: Mapping[str, Any], kw: dict[str, Any]) -> None:
    """The standard library's keywords that are not fields: ``extra``'s keys become the line's own, but for those
    the line has already (its node, workflow, tracking_id, ... and the call's own keywords) or structlog's, which
    stay together in an ``extra`` field; ``extra=None`` is none; ``stacklevel`` goes (a line names no caller)."""
    kw.pop("stacklevel", None)
    if "extra" not in kw:
        return
    extra = kw.pop("extra")
    if not isinstance(extra, Mapping):
        if extra is not None:
            kw["extra"] = extra
        return
    kept = {}
    for key, value in extra.items():
        name = str(key)
        if name in _NOT_FIELDS or name in kw or name in context:
            kept[name] = value
        else:
            kw[name] = value
    if kept:
        kw["extra"] = kept


def _interpolated(event: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
    """``event % args`` as structlog and the standard library make it (one mapping: by name); when they do not
    fit, the text as it is, and the arguments and the error added to ``kw``."""
    try:
        return event % (args[0] if len(args) == 1 and isinstance(args[0], Mapping) and args[0] else args)
    except Exception as exc:  # a wrong format, or an argument whose str() raises
        kw["args"] = _text(args)
        kw["format_error"] = f"{type(exc).__name__}: {exc}"
        return event
