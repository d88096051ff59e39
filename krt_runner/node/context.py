"""What ``init`` and ``handler`` receive: store, paths, logger, measurements, early reply, ``db`` and
``prediction``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

from krt_runner.errors import NothingStoredError, ReplyError
from krt_runner.measurements.points import Measurement
from krt_runner.node.data_context import Database, DataServices, Prediction
from krt_runner.node.loop_calls import awaitable_or_result

ReplyFunction = Callable[[Message], Coroutine[Any, Any, None]]


class NodeState:
    """What every message of one node shares: the ``set``/``get`` store, paths, logger, measurements, and what
    ``ctx.db`` and ``ctx.prediction`` use."""

    def __init__(self, *, base_path: Path, logger: Any, measurement: Measurement, data: DataServices) -> None:
        self.base_path = base_path
        self.logger = logger
        self.measurement = measurement
        self.data = data
        self.store: dict[str, Any] = {}
        self.loop: asyncio.AbstractEventLoop | None = None


class HandlerContext:
    """The ``ctx`` argument of ``init(ctx)`` and ``handler(ctx, data)``.

    One is made per message (cheaply: it holds references only); the store
    behind :meth:`set` and :meth:`get` is shared by all of them.
    """

    __slots__ = ("_logger", "_node", "_replier", "tracking_id")

    def __init__(self, node: NodeState, tracking_id: str = "", replier: ReplyFunction | None = None) -> None:
        self._node = node
        self._replier = replier
        self._logger: Any = None
        self.tracking_id = tracking_id

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
        """``relative`` joined onto the node's base path (``KRT_BASE_PATH``)."""
        return str(self._node.base_path / relative)

    def reply(self, message: Message) -> Any:
        """Answer the requester now, before the workflow ends (at most once per request).

        ``await ctx.reply(msg)`` in an async handler; a sync handler, which runs
        on a worker thread, calls ``ctx.reply(msg)`` and it returns when sent.
        """
        if self._replier is None:
            raise ReplyError("ctx.reply() works inside handler() only, for a message that was a request")
        return awaitable_or_result(self._replier(message), self._node.loop)
