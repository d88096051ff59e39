"""``ctx.db`` and ``ctx.prediction``, KRE v1's: documents saved through its mongo-writer, read back with ``find``.

Both are made when a handler uses them, from what the node keeps in :class:`DataServices`; a message that does not
use them costs nothing. In an async handler every call is awaited; a sync handler calls them plainly.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

from krt_runner.mongo import prediction, wire
from krt_runner.mongo.matching import check_collection, check_query
from krt_runner.mongo.readers import DocumentReader
from krt_runner.node.loop_calls import awaitable_or_result, on_event_loop

# Seconds KRE v1 waited for the mongo-writer's answer: to ctx.db.save, to ctx.prediction.save.
SAVE_TIMEOUT = 60.0
PREDICTION_TIMEOUT = 1.0


class DocumentWriter(Protocol):
    """Delivers a mongo-writer request body; logs, never raises, when the document is not saved."""

    async def send(self, coll: str, body: bytes, *, timeout: float, logger: Any) -> None: ...


@dataclass(frozen=True)
class DataServices:
    """What ``ctx.db`` and ``ctx.prediction`` of one node share."""

    writer: DocumentWriter
    reader: DocumentReader
    version: str = ""
    version_id: str = ""


class Database:
    """``ctx.db``: ``save(coll, data)`` through the mongo-writer, ``find(coll, query)`` from the database."""

    __slots__ = ("_logger", "_loop", "_services")

    def __init__(self, services: DataServices, loop: asyncio.AbstractEventLoop | None, logger: Any) -> None:
        self._services = services
        self._loop = loop
        self._logger = logger

    def save(self, coll: str, data: Any) -> Any:
        """Save ``data`` (JSON-serializable) in collection ``coll``: ``await ctx.db.save(coll, data)``.

        A ``TypeError`` or ``ValueError`` for a bad collection name or a document JSON cannot hold; a document the
        mongo-writer did not save (no answer, ``success`` false) is logged as a warning, not raised.
        """
        check_collection("ctx.db.save", coll)
        body = wire.encode(coll, data)
        sent = self._services.writer.send(coll, body, timeout=SAVE_TIMEOUT, logger=self._logger)
        return awaitable_or_result(sent, self._loop)

    def find(self, coll: str, query: dict[str, Any]) -> Any:
        """The documents of ``coll`` matching ``query`` (a non-empty dict), as a list: ``await ctx.db.find(...)``.

        It reads MongoDB (``KRT_MONGO_URI``) on a worker thread, or the local store of ``krt-runner up``.
        """
        check_collection("ctx.db.find", coll)
        check_query(query)
        reader, query = self._services.reader, dict(query)
        if on_event_loop():
            return asyncio.to_thread(reader.find, coll, query)
        return reader.find(coll, query)


class Prediction:
    """``ctx.prediction``: ``save(...)`` a classification result to ``classificationMetrics``, as KRE v1."""

    ERR_MISSING_VALUES = prediction.ERR_MISSING_VALUES
    ERR_NEW_LABELS = prediction.ERR_NEW_LABELS
    PREDICTION_ERRORS = prediction.PREDICTION_ERRORS

    __slots__ = ("_logger", "_loop", "_services")

    def __init__(self, services: DataServices, loop: asyncio.AbstractEventLoop | None, logger: Any) -> None:
        self._services = services
        self._loop = loop
        self._logger = logger

    def save(
        self, predicted_value: str = "", true_value: str = "", extra: Any = None, utcdate: Any = None, error: str = ""
    ) -> Any:
        """Save one prediction: ``await ctx.prediction.save(predicted_value="cat", true_value="dog")``.

        ``error`` is empty or ``ERR_MISSING_VALUES`` or ``ERR_NEW_LABELS``; without one, both values must be
        non-empty strings (else a ``ValueError``). ``utcdate`` (a UTC ``datetime``) defaults to now.
        """
        services = self._services
        doc = prediction.prediction_document(
            predicted_value=predicted_value, true_value=true_value, extra=extra, utcdate=utcdate, error=error,
            version_id=services.version_id, version=services.version,
        )  # fmt: skip
        body = wire.encode(prediction.PREDICTIONS_COLLECTION, doc, compress=False)
        sent = services.writer.send(prediction.PREDICTIONS_COLLECTION, body, timeout=PREDICTION_TIMEOUT,
                                    logger=self._logger)
        return awaitable_or_result(sent, self._loop)
