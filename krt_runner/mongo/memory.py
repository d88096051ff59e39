"""A mongo-writer and database in memory, for ``krt_runner.testing``: each request body is read as the real
mongo-writer reads it (so a document it would refuse is refused here too, with the same warning)."""

from __future__ import annotations

from typing import Any

from krt_runner.mongo import wire
from krt_runner.mongo.matching import check_equality_query, matches

# Cap on a gzip-compressed request's decompressed size: generous, the bodies come from the test's own handler.
_MAX_BYTES = 256 * 1024 * 1024


class MemoryStore:
    """Keeps every saved document, in order, in :attr:`saved`; ``find`` matches them by equality on fields."""

    def __init__(self) -> None:
        self.saved: list[wire.SavedDocument] = []

    async def send(self, coll: str, body: bytes, *, timeout: float, logger: Any) -> None:
        try:
            self.saved.append(wire.decode(body, max_bytes=_MAX_BYTES))
        except ValueError as exc:
            logger.warning("document not saved: the mongo-writer answered without success", collection=coll,
                           reason=str(exc))

    def find(self, coll: str, query: dict[str, Any]) -> list[dict[str, Any]]:
        check_equality_query(query)
        return [{"_id": number, **saved.doc} for number, saved in enumerate(self.saved, start=1)
                if saved.coll == coll and matches(saved.doc, query)]
