"""The local store: every document a local mongo-writer receives, in one SQLite file (the standard library's).

``krt-runner up`` and ``local()`` write it; nodes read it for ``ctx.db.find`` (``KRT_LOCAL_DB_FILE``). One table,
``documents(id, coll, doc, saved_at)``, with each document as JSON text: ``sqlite3 data.sqlite "select doc from
documents where coll='greeter'"`` shows them. WAL mode lets the nodes read while up writes.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from krt_runner.errors import DatabaseError
from krt_runner.mongo.matching import check_equality_query, matches

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    coll TEXT NOT NULL,
    doc TEXT NOT NULL,
    saved_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS documents_coll ON documents (coll, id);
"""
# Seconds a reader or the writer waits for the other's lock.
_BUSY_TIMEOUT = 10.0


class LocalStore:
    """The SQLite file, opened for writing (made when missing) on the local mongo-writer's thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, timeout=_BUSY_TIMEOUT)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # a local run: durable across a crash of up, not of the OS
        self._db.executescript(_SCHEMA)

    def insert(self, coll: str, doc: dict[str, Any]) -> None:
        saved_at = datetime.now(timezone.utc).isoformat()
        with self._db:
            self._db.execute("INSERT INTO documents (coll, doc, saved_at) VALUES (?, ?, ?)",
                             (coll, json.dumps(doc), saved_at))

    def close(self) -> None:
        self._db.close()


def find(path: Path, coll: str, query: dict[str, Any]) -> list[dict[str, Any]]:
    """The documents of ``coll`` in the store at ``path`` that match ``query`` (equality on fields), in the order
    they were saved; each has an ``_id`` (its row number) unless it was saved with one. A store not made yet (nothing
    saved so far) holds no documents, as a MongoDB collection never written to."""
    check_equality_query(query)
    if not path.exists():
        return []
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=_BUSY_TIMEOUT)
        try:
            rows = db.execute("SELECT id, doc FROM documents WHERE coll = ? ORDER BY id", (coll,)).fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        if "no such table" in str(exc):  # made this instant by the first save, its table not yet
            return []
        raise DatabaseError(f"ctx.db.find: cannot read the local store {path} (KRT_LOCAL_DB_FILE): {exc}") from None
    found = []
    for row_id, text in rows:
        doc = json.loads(text)
        if matches(doc, query):
            found.append({"_id": row_id, **doc})
    return found
