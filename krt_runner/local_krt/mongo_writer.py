"""``up``'s own mongo-writer: it answers KRE v1's ``ctx.db.save`` and ``ctx.prediction.save`` requests as KRE's
does (gunzip, ``{"coll", "doc"}``, ``{"success": ...}``) and keeps every document in the local SQLite store, which
the nodes read for ``ctx.db.find`` (``KRT_LOCAL_DB_FILE``).

It is not started when ``KRT_MONGO_URI`` is set: that KRT has a MongoDB, and a mongo-writer of its own.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from krt_runner.client import Client
from krt_runner.errors import KrtRunnerError
from krt_runner.mongo import wire
from krt_runner.mongo.local_store import LocalStore

# Cap on a gzip-compressed request's decompressed size (a request is at most 1 MiB compressed).
_MAX_BYTES = 256 * 1024 * 1024
STORE_NAME = "data.sqlite"  # KRE v1's database was "data"


def store_path(krt_directory: Path, environ: Mapping[str, str]) -> Path:
    """Where the local store goes: ``KRT_LOCAL_DB_FILE``; else beside the measurements file when one is set; else
    the working directory, or beside the KRT folder when up runs inside it (as the measurements)."""
    if environ.get("KRT_LOCAL_DB_FILE"):
        return Path(environ["KRT_LOCAL_DB_FILE"]).expanduser().resolve()
    if environ.get("KRT_MEASUREMENTS_FILE"):
        return Path(environ["KRT_MEASUREMENTS_FILE"]).expanduser().resolve().parent / STORE_NAME
    if Path.cwd().resolve().is_relative_to(krt_directory):
        return krt_directory.parent / f"{krt_directory.name}.{STORE_NAME}"
    return Path.cwd().resolve() / STORE_NAME


class LocalMongoWriter:
    """Answers mongo-writer requests on ``subject``, storing each document in the SQLite file at ``path``."""

    def __init__(self, path: Path, subject: str, *, say: Callable[[str], None]) -> None:
        self.path = path
        self.subject = subject
        self.saved = 0
        self.refused = 0
        self._say = say
        self._store: LocalStore | None = None
        self._client: Client | None = None

    async def start(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        """Take requests on NATS at ``url`` (nats-py ``options``: credentials). The store is made by the first save:
        a KRT that saves nothing leaves no file behind."""
        if not self.path.parent.is_dir():
            raise KrtRunnerError(f"the local store for ctx.db, {self.path}, is not in an existing folder; set "
                                 "KRT_LOCAL_DB_FILE to a file in one")
        self._client = await Client.connect(url, **(options or {}))
        await self._client.answer(self.subject, self._answer)

    def _answer(self, body: bytes) -> bytes:
        try:
            saved = wire.decode(body, max_bytes=_MAX_BYTES)
            if self._store is None:
                self._store = LocalStore(self.path)
            self._store.insert(saved.coll, saved.doc)
        except (ValueError, RecursionError, sqlite3.Error) as exc:  # RecursionError: JSON nested 1000 deep
            self.refused += 1
            self._say(f"mongo_writer: a document was not saved ({exc}); answered success false")
            return wire.FAILURE
        self.saved += 1
        return wire.SUCCESS

    async def close(self) -> None:
        """Stop taking requests, then close the store."""
        if self._client is not None:
            await self._client.close()
        if self._store is not None:
            self._store.close()
