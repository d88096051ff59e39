"""The pieces of ctx.db apart from NATS: the mongo-writer's wire format, equality matching, the local SQLite store,
and the MongoDB reader's errors (against a port nothing listens on: no MongoDB can be installed here)."""

from __future__ import annotations

import gzip
import json
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from krt_runner.config import load_settings
from krt_runner.errors import ConfigError, DatabaseError
from krt_runner.local_krt.embedded import free_port
from krt_runner.mongo import wire
from krt_runner.mongo.local_store import LocalStore, find
from krt_runner.mongo.matching import matches
from krt_runner.mongo.prediction import rfc3339
from krt_runner.mongo.readers import MongoReader

REQUIRED = {"KRT_NATS_SERVER": "nats://127.0.0.1:4222", "KRT_NATS_INPUT": "in", "KRT_HANDLER_PATH": "h.py"}


def test_the_writer_side_reads_plain_and_gzipped_requests_alike():
    body = json.dumps({"coll": "c", "doc": {"a": 1}}).encode()

    assert wire.decode(body, max_bytes=100) == wire.decode(gzip.compress(body), max_bytes=100) == ("c", {"a": 1})


@pytest.mark.parametrize(("body", "reason"), [
    (b"not json", "not JSON"),
    (b'{"coll": "", "doc": {}}', 'not {"coll"'),
    (b'{"coll": "c", "doc": [1]}', "is not a JSON object"),
    (gzip.compress(b'{"coll": "c", "doc": {"s": "' + b"x" * 200 + b'"}}', mtime=0), "inflates to more than 100 bytes"),
    (b"\x1f\x8bnot gzip", "not valid gzip"),
    (b'{"coll": "c", "doc": {"score": NaN}}', "NaN is not JSON"),
    (b'{"coll": "c", "doc": {"score": -Infinity}}', "-Infinity is not JSON"),
], ids=["not-json", "no-coll", "not-an-object", "gzip-bomb", "bad-gzip", "nan", "infinity"])
def test_the_writer_side_refuses_what_kres_mongo_writer_cannot_insert(body, reason):
    with pytest.raises(ValueError, match=reason):
        wire.decode(body, max_bytes=100)


@pytest.mark.parametrize(("reply", "success"), [
    (b'{"success":true}', True), (b'{"success": false}', False), (b"{}", False), (b"oops", False), (b"[]", False),
], ids=["true", "false", "empty", "not-json", "not-an-object"])
def test_only_success_true_counts_as_saved(reply, success):
    assert wire.succeeded(reply) is success


@pytest.mark.parametrize(("query", "expected"), [
    ({"label": "cat"}, True),
    ({"label": "dog"}, False),
    ({"meta.model": "v3"}, True),
    ({"tags": "b"}, True),
    ({"tags": ["a", "b"]}, True),
    ({"absent": None}, True),
    ({"flag": 1}, False),
    ({"count": 1.0}, True),
    ({"label": "cat", "count": 2}, False),
])
def test_equality_matching_follows_mongodb_for_fields_dotted_paths_and_arrays(query, expected):
    doc = {"label": "cat", "meta": {"model": "v3"}, "tags": ["a", "b"], "flag": True, "count": 1}

    assert matches(doc, query) is expected


def test_the_local_store_gives_documents_back_in_order_with_an_id(tmp_path):
    store = LocalStore(tmp_path / "data.sqlite")
    for doc in ({"label": "cat", "n": 1}, {"label": "dog"}, {"label": "cat", "n": 2, "_id": "mine"}):
        store.insert("pets", doc)
    store.insert("other", {"label": "cat"})

    found = find(tmp_path / "data.sqlite", "pets", {"label": "cat"})
    store.close()

    assert found == [{"_id": 1, "label": "cat", "n": 1}, {"_id": "mine", "label": "cat", "n": 2}]


def test_the_local_store_refuses_query_operators_instead_of_answering_wrong(tmp_path):
    LocalStore(tmp_path / "data.sqlite").close()

    with pytest.raises(DatabaseError, match=r"'n' uses a query operator; the local store matches fields by equality"):
        find(tmp_path / "data.sqlite", "pets", {"n": {"$gt": 1}})


def test_a_local_store_nothing_was_saved_to_yet_holds_no_documents_and_reading_makes_none(tmp_path):
    assert find(tmp_path / "missing.sqlite", "pets", {"a": 1}) == []
    assert not (tmp_path / "missing.sqlite").exists()


def test_a_file_that_is_no_local_store_is_a_clear_error(tmp_path):
    (tmp_path / "notes.sqlite").write_text("not a database, just notes")

    with pytest.raises(DatabaseError, match=r"cannot read the local store .*notes.sqlite \(KRT_LOCAL_DB_FILE\)"):
        find(tmp_path / "notes.sqlite", "pets", {"a": 1})


def test_an_unreachable_mongodb_fails_within_the_timeout_naming_it_without_its_password():
    reader = MongoReader(f"mongodb://admin:secret@127.0.0.1:{free_port()}/admin", timeout=0.3)
    started = time.monotonic()

    with pytest.raises(DatabaseError) as raised:
        reader.find("greeter", {"a": 1})

    assert time.monotonic() - started < 3
    text = str(raised.value)
    assert text.startswith("ctx.db.find: cannot reach MongoDB at mongodb://admin:***@127.0.0.1:")
    assert "within 0.3s (KRT_MONGO_TIMEOUT)" in text and "secret" not in text


def test_without_the_mongo_extra_find_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pymongo", None)  # what `import pymongo` meets when it is not installed

    with pytest.raises(DatabaseError, match=r"needs pymongo: install krt-runner with its mongo extra"):
        MongoReader("mongodb://127.0.0.1:1", timeout=0.3).find("greeter", {"a": 1})


def test_krt_mongo_uri_must_be_a_mongodb_uri_and_is_logged_without_its_password():
    with pytest.raises(ConfigError, match=r"KRT_MONGO_URI \(--mongo-uri\)='http://mongo' is invalid"):
        load_settings({**REQUIRED, "KRT_MONGO_URI": "http://mongo"})

    settings = load_settings({**REQUIRED, "KRT_MONGO_URI": "mongodb://admin:123456@mongo:27017/admin"})

    assert settings.describe()["mongo_uri"] == "mongodb://admin:***@mongo:27017/admin"
    assert "123456" not in repr(settings)


@pytest.mark.parametrize(("date", "text"), [
    (datetime(2020, 4, 7), "2020-04-07T00:00:00.000000Z"),
    (datetime(2020, 4, 6, 9, 2, 9, 277853, tzinfo=timezone.utc), "2020-04-06T09:02:09.277853Z"),
])
def test_prediction_dates_are_kres_rfc3339_with_microseconds(date, text):
    assert rfc3339(date) == text


def test_a_prediction_date_in_another_zone_or_not_a_date_is_refused():
    with pytest.raises(ValueError, match="is not in UTC"):
        rfc3339(datetime(2020, 4, 7, tzinfo=timezone(timedelta(hours=2))))
    with pytest.raises(TypeError, match="utcdate must be a datetime in UTC, not str"):
        rfc3339("2020-04-07")  # type: ignore[arg-type]
