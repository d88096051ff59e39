"""What ``init`` and ``handler`` receive: store, paths, logger, measurements, early reply, ``db`` and
``prediction``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

from krt_runner.errors import NothingStoredError, ReplyError
from krt_runner.measurements.points import Measurement
from krt_runner.node.data_context import Database, DataServices, Prediction
from krt_runner.node.loop_calls import awaitable_or_result

# Answers early: called with the context's ``message`` (what its maker gave: the pipeline's Job) and the answer.
ReplyFunction = Callable[[Any, Message], Coroutine[Any, Any, None]]


class NodeState:
    """What every message of one node shares: the ``set``/``get`` store, paths, logger, measurements, and what
    ``ctx.db`` and ``ctx.prediction`` use."""

    def __init__(
        self, *, base_path: Path, logger: Any, measurement: Measurement, data: DataServices, config: Any = None
    ) -> None:
        self.base_path = base_path
        self.logger = logger
        self.measurement = measurement
        self.data = data
        self.config = config  # what KRE v1 handlers read as ctx.__config__ (see kre_config)
        self.store: dict[str, Any] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.init_context: HandlerContext | None = None  # the ctx init got: its own attributes are every message's

    def context_for_init(self) -> HandlerContext:
        """The ``ctx`` of ``init``: attributes it is given (KRE v1 handlers' ``ctx.model = ...``) are read by every
        message's ``ctx`` after it, as KRE v1's copy of one context per message gave them."""
        self.init_context = HandlerContext(self)
        return self.init_context


class HandlerContext:
    """The ``ctx`` argument of ``init(ctx)`` and ``handler(ctx, data)``.

    One is made per message (cheaply: it holds references only); the store
    behind :meth:`set` and :meth:`get` is shared by all of them. As in KRE v1, a
    handler may give it attributes of its own (``ctx.started = ...``), for that
    message; those ``init`` gave its ``ctx`` are read by every message's.
    """

    __slots__ = ("__dict__", "_logger", "_message", "_node", "_replier", "tracking_id")

    def __init__(
        self, node: NodeState, tracking_id: str = "", replier: ReplyFunction | None = None, message: Any = None
    ) -> None:
        """``message``: what ``replier`` is called with, beside the answer (a running node's Job, which holds the
        request's envelope; under ``krt_runner.testing``, the envelope itself)."""
        self._node = node
        self._replier = replier
        self._logger: Any = None
        self._message = message
        self.tracking_id = tracking_id

    def __getattr__(self, name: str) -> Any:
        """An attribute ``init`` gave its ``ctx`` (only called for a name this one does not have)."""
        try:
            shared = object.__getattribute__(self, "_node").init_context
        except AttributeError:  # a copy being made (copy.copy, pickle): nothing set yet
            raise AttributeError(name) from None
        if shared is not None and shared is not self and name in shared.__dict__:
            return shared.__dict__[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute {name!r}: set it in init "
                             f"(ctx.{name} = ...) or use ctx.set / ctx.get")

    @property
    def __request_msg__(self) -> Any:
        """KRE v1's name for the request's envelope (a ``KreNatsMessage``; ``None`` in ``init``). As in KRE v1, its
        ``reply`` is the requester's inbox on the first node too, and ``replied`` is set by :meth:`reply`."""
        request = getattr(self._message, "request", self._message)
        requester = getattr(self._message, "reply", None)  # a running node's Job: the subject it answers on
        if requester and request is not None and request.reply != requester:  # a NATS reply wins, as for the answer
            request.reply = requester
        return request

    @property
    def __config__(self) -> Any:
        """KRE v1's node settings object: ``krt_version``, ``krt_node_name``, ``nats_input``, ``base_path``..."""
        return self._node.config

    @property
    def logger(self) -> Any:
        """A structlog logger bound to node, workflow, version and this message's ``tracking_id``."""
        if self._logger is None:
            base = self._node.logger
            self._logger = base.bind(tracking_id=self.tracking_id) if self.tracking_id else base
        return self._logger

    @property
    def measurement(self) -> Measurement:
        """Save InfluxDB points: ``ctx.measurement.save(name, fields, tags)``."""
        return self._node.measurement

    @property
    def db(self) -> Database:
        """KRE v1's ``ctx.db``: ``await ctx.db.save(coll, doc)`` and ``await ctx.db.find(coll, query)``."""
        return Database(self._node.data, self._node.loop, self.logger)

    @property
    def prediction(self) -> Prediction:
        """KRE v1's ``ctx.prediction``: ``await ctx.prediction.save(predicted_value=..., true_value=...)``."""
        return Prediction(self._node.data, self._node.loop, self.logger)

    def set(self, key: str, value: Any) -> None:
        """Keep ``value`` for every later message (a loaded model, a client, a cache)."""
        self._node.store[key] = value

    def get(self, key: str) -> Any:
        """Return what :meth:`set` stored; :class:`~krt_runner.errors.NothingStoredError` (a ``KeyError`` and an
        ``AttributeError``) naming ``key`` if nothing was."""
        try:
            return self._node.store[key]
        except KeyError:
            raise NothingStoredError(
                f"ctx.get({key!r}): nothing is stored under {key!r}; call ctx.set({key!r}, value) first, e.g. in init"
            ) from None

    def path(self, relative: str) -> str:
        """``relative`` joined onto the node's base path (``KRT_BASE_PATH``) as KRE v1 joined it
        (``os.path.join``: a trailing ``/`` is kept, so ``ctx.path("models/") + name`` works)."""
        return os.path.join(self._node.base_path, relative)

    def reply(self, message: Message) -> Any:
        """Answer the requester now, before the workflow ends (at most once per request).

        ``await ctx.reply(msg)`` in an async handler; a sync handler, which runs
        on a worker thread, calls ``ctx.reply(msg)`` and it returns when sent.
        """
        if self._replier is None:
            raise ReplyError("ctx.reply() works inside handler() only, for a message that was a request")
        return awaitable_or_result(self._replier(self._message, message), self._node.loop)
