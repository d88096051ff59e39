"""What ``ctx.db.find`` reads: MongoDB through pymongo (``KRT_MONGO_URI``, as KRE v1), or the local store that
``up`` writes (``KRT_LOCAL_DB_FILE``), or nothing, with a sentence saying what to set.

The MongoDB read is a thin call into pymongo (KRE v1's ``MongoClient(KRT_MONGO_URI)["data"][coll].find(query)``),
bounded by ``KRT_MONGO_TIMEOUT``. It has been tested against unreachable servers only, never a live MongoDB.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Protocol

from krt_runner.config import Settings, redact_url
from krt_runner.errors import DatabaseError, describe

# KRE v1's database for ctx.db (mongo_data_db_name).
DATABASE = "data"


class DocumentReader(Protocol):
    """Answers ``ctx.db.find``; called on a worker thread, never on the event loop."""

    def find(self, coll: str, query: dict[str, Any]) -> list[dict[str, Any]]: ...


def reader_for(settings: Settings) -> DocumentReader:
    """MongoDB when ``KRT_MONGO_URI`` is set, else the local store when ``KRT_LOCAL_DB_FILE`` is, else none."""
    if settings.mongo_uri:
        return MongoReader(settings.mongo_uri, timeout=settings.mongo_timeout)
    if settings.local_db_file:
        return LocalReader(Path(settings.local_db_file))
    return NoReader()


class MongoReader:
    """pymongo, connected on the first find (the ``mongo`` extra is needed only then)."""

    def __init__(self, uri: str, *, timeout: float) -> None:
        self._uri = uri
        self._timeout = timeout
        self._client: Any = None
        self._lock = threading.Lock()  # finds run on several threads; one client serves them all

    def find(self, coll: str, query: dict[str, Any]) -> list[dict[str, Any]]:
        connection = self._connection()  # without the mongo extra, a DatabaseError that says to install it
        from pymongo.errors import PyMongoError, ServerSelectionTimeoutError

        try:
            return list(connection[DATABASE][coll].find(query))
        except ServerSelectionTimeoutError as exc:
            reason = str(exc).split(", Timeout:")[0]
            raise DatabaseError(f"ctx.db.find: cannot reach MongoDB at {redact_url(self._uri)} within "
                                f"{self._timeout:g}s (KRT_MONGO_TIMEOUT): {reason}") from None
        except PyMongoError as exc:
            raise DatabaseError(f"ctx.db.find on {DATABASE}.{coll} failed: {describe(exc)}") from None

    def _connection(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def _connect(self) -> Any:
        try:
            import pymongo
        except ImportError:
            raise DatabaseError("ctx.db.find with KRT_MONGO_URI needs pymongo: install krt-runner with its mongo "
                                "extra (pip install '.[mongo]' in a clone of krt-runner)") from None
        milliseconds = int(self._timeout * 1000)
        try:
            return pymongo.MongoClient(self._uri, serverSelectionTimeoutMS=milliseconds,
                                       connectTimeoutMS=milliseconds, appname="krt-runner")
        except pymongo.errors.PyMongoError as exc:  # a URI pymongo cannot use
            raise DatabaseError(f"ctx.db.find: KRT_MONGO_URI {redact_url(self._uri)}: {describe(exc)}") from None


class LocalReader:
    """The SQLite store that ``krt-runner up`` writes (equality on fields only)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def find(self, coll: str, query: dict[str, Any]) -> list[dict[str, Any]]:
        from krt_runner.mongo import local_store  # sqlite3 is loaded by the nodes that read it, not by every node

        return local_store.find(self.path, coll, query)


class NoReader:
    """Neither ``KRT_MONGO_URI`` nor ``KRT_LOCAL_DB_FILE`` is set."""

    def find(self, coll: str, query: dict[str, Any]) -> list[dict[str, Any]]:
        raise DatabaseError("ctx.db.find needs a database: set KRT_MONGO_URI to the MongoDB that KRE's mongo-writer "
                            "fills (and install the mongo extra); under krt-runner up it reads up's local store")
