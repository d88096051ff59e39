"""The part of MongoDB's ``find`` that the local store and ``krt_runner.testing`` offer: equality on fields.

``{"label": "cat", "meta.model": "v3"}`` matches documents whose ``label`` is ``"cat"`` (or a list holding it) and
whose ``meta`` holds ``model: "v3"``. Query operators (``$gt``, ``$in``...) need a real MongoDB (``KRT_MONGO_URI``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from krt_runner.errors import DatabaseError

_MISSING = object()


def check_collection(call: str, coll: Any) -> None:
    """A collection name is a non-empty string, as KRE v1 required."""
    if not isinstance(coll, str):
        raise TypeError(f"{call}: the collection must be a string, not {type(coll).__name__}")
    if not coll:
        raise ValueError(f"{call}: the collection name is empty")


def check_query(query: Any) -> None:
    """A query is a non-empty dict, as KRE v1 required."""
    if not isinstance(query, Mapping):
        raise TypeError(f"ctx.db.find: the query must be a dict, not {type(query).__name__}")
    if not query:
        raise ValueError("ctx.db.find: the query is empty; KRE v1 requires at least one field to match")


def check_equality_query(query: Mapping[str, Any]) -> None:
    """Refuse what equality matching cannot answer, instead of answering it wrong."""
    for key, value in query.items():
        if key.startswith("$") or (isinstance(value, Mapping) and any(str(k).startswith("$") for k in value)):
            raise DatabaseError(
                f"ctx.db.find: {key!r} uses a query operator; the local store matches fields by equality only "
                "(set KRT_MONGO_URI to query a MongoDB)"
            )


def matches(doc: Mapping[str, Any], query: Mapping[str, Any]) -> bool:
    """Whether ``doc`` has every field of ``query`` equal to its value (see the module)."""
    return all(_field_matches(_lookup(doc, key), wanted) for key, wanted in query.items())


def _lookup(doc: Mapping[str, Any], key: str) -> Any:
    value: Any = doc
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _field_matches(value: Any, wanted: Any) -> bool:
    if value is _MISSING:
        return wanted is None  # as MongoDB: {"field": None} matches a document without the field
    if _equal(value, wanted):
        return True
    return isinstance(value, list) and not isinstance(wanted, list) and any(_equal(item, wanted) for item in value)


def _equal(value: Any, wanted: Any) -> bool:
    """JSON equality: ``true`` is not ``1``, as in MongoDB."""
    if isinstance(value, bool) or isinstance(wanted, bool):
        return type(value) is type(wanted) and value == wanted
    return bool(value == wanted)
