"""KRE v1's mongo-writer protocol, byte for byte: a request is the UTF-8 JSON ``{"coll": ..., "doc": ...}`` as
``json.dumps`` writes it, gzip-compressed (level 9) when over 1 MiB; the answer is ``{"success": true|false}``."""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any, NamedTuple

from krt_runner.errors import PayloadTooLargeError

DEFAULT_SUBJECT = "mongo_writer"
# KRE v1's threshold: NATS's default max payload. Larger requests are compressed; still larger ones refused.
COMPRESS_THRESHOLD = 1024 * 1024
_COMPRESS_LEVEL = 9
GZIP_MAGIC = b"\x1f\x8b"
# What KRE's mongo-writer (Go's json.Marshal) answers.
SUCCESS = b'{"success":true}'
FAILURE = b'{"success":false}'


class SavedDocument(NamedTuple):
    """One document a mongo-writer received: its collection and the document as JSON gives it back."""

    coll: str
    doc: Any


def encode(coll: str, doc: Any, *, compress: bool = True) -> bytes:
    """The request body for ``doc`` in ``coll``; a ``TypeError`` when ``doc`` is not JSON-serializable, a
    ``ValueError`` when it holds NaN or an infinity (Python's ``json`` writes them; KRE's Go mongo-writer refuses the
    request, and the document would be lost)."""
    try:
        body = json.dumps({"coll": coll, "doc": doc}, allow_nan=False).encode("utf-8")
    except ValueError as exc:
        if "Out of range float values" not in str(exc):  # json's words for NaN and the infinities
            raise
        raise ValueError(f"the document for collection {coll!r} holds NaN or an infinity, which JSON cannot hold: "
                         "write None or a string instead") from None
    if not compress or len(body) <= COMPRESS_THRESHOLD:
        return body
    packed = gzip.compress(body, compresslevel=_COMPRESS_LEVEL, mtime=0)  # no timestamp: same document, same bytes
    if len(packed) > COMPRESS_THRESHOLD:
        raise PayloadTooLargeError(
            f"document for collection {coll!r} is {len(body)} bytes, {len(packed)} compressed: over the "
            f"{COMPRESS_THRESHOLD} bytes a mongo-writer request may take"
        )
    return packed


def decode(body: bytes, *, max_bytes: int) -> SavedDocument:
    """A request as the mongo-writer reads it: gunzipped when it starts with the gzip magic (up to ``max_bytes``),
    then ``{"coll": a non-empty string, "doc": an object}``; a ``ValueError`` says what is wrong."""
    if body[:2] == GZIP_MAGIC:
        body = _gunzip(body, max_bytes)
    try:
        request = json.loads(body, parse_constant=_not_json)
    except ValueError as exc:  # UnicodeDecodeError included
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("coll"), str) or not request["coll"]:
        raise ValueError('not {"coll": "<collection>", "doc": {...}}')
    if not isinstance(request.get("doc"), dict):
        raise ValueError(f"the document for collection {request['coll']!r} is not a JSON object")
    return SavedDocument(request["coll"], request["doc"])


def _not_json(constant: str) -> None:
    """``NaN`` and the infinities, which Python's ``json`` reads and KRE's Go mongo-writer refuses."""
    raise ValueError(f"{constant} is not JSON")


def _gunzip(body: bytes, max_bytes: int) -> bytes:
    inflater = zlib.decompressobj(wbits=31)
    try:
        data = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise ValueError(f"a gzip header but not valid gzip: {exc}") from None
    if len(data) > max_bytes:
        raise ValueError(f"inflates to more than {max_bytes} bytes")
    if not inflater.eof:
        raise ValueError("truncated gzip")
    return data


def succeeded(reply: bytes) -> bool:
    """Whether a mongo-writer's answer says ``success``; anything unreadable counts as failure."""
    try:
        answer = json.loads(reply)
    except ValueError:
        return False
    return isinstance(answer, dict) and answer.get("success") is True
