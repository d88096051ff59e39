"""ctx.db and ctx.prediction under `krt-runner up` and krt_runner.local(): up answers KRE's mongo_writer itself,
keeps every document in a SQLite file beside its run, and ctx.db.find reads them back."""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import uuid

import pytest
from conftest import ROOT, greeter_pb2
from test_futures import marked, one_node_krt  # noqa: F401  (marked is a fixture)
from up_helpers import leftovers, run_up

import krt_runner
from krt_runner.errors import KrtRunnerError

GREETER = ROOT / "examples" / "greeter"
HANDLERS = ROOT / "tests" / "handlers"
# Reads what the template node before it saved, saves one more, and answers with what it found.
FINDER = """
import json
from greeter_pb2 import Response


def handler(ctx, res: Response) -> Response:
    greetings = ctx.db.find("greeter", {"greeting": res.greeting})
    labels = ctx.db.find("classificationMetrics", {"error": "new_labels", "versionName": "template-v1"})
    ctx.db.save("found", {"greetings": len(greetings), "new_labels": len(labels)})
    return Response(greeting=json.dumps({"greetings": greetings, "new_labels": len(labels)}))
"""
SAVE_AND_FIND = """
import json
from greeter_pb2 import Request, Response


async def handler(ctx, req: Request) -> Response:
    await ctx.db.save("people", {"name": req.name})
    return Response(greeting=json.dumps(await ctx.db.find("people", {"name": req.name})))
"""


def template_krt(tmp_path):
    """KRE's greeter template node, then a sync node that finds what it saved."""
    folder = tmp_path / "template"
    (folder / "src").mkdir(parents=True)
    shutil.copy(GREETER / "proto" / "greeter.proto", folder)
    shutil.copy(GREETER / "src" / "greeter_pb2.py", folder / "src")
    shutil.copy(HANDLERS / "kre_template_greeter.py", folder / "src" / "greeter.py")
    (folder / "src" / "finder.py").write_text(FINDER)
    (folder / "krt.yml").write_text(
        "version: template-v1\ndescription: KRE's template\nentrypoint: {proto: greeter.proto, image: e}\n"
        "nodes:\n  - {name: greeter, image: i, src: src/greeter.py}\n  - {name: finder, image: i, src: src/finder.py}\n"
        "workflows:\n  - {name: main, entrypoint: Greet, sequential: [greeter, finder]}\n"
    )
    return folder


def stored(path) -> list[tuple[str, dict]]:
    with sqlite3.connect(path) as db:
        return [(coll, json.loads(doc)) for coll, doc in db.execute("SELECT coll, doc FROM documents ORDER BY id")]


def test_under_up_kres_template_saves_to_the_local_store_and_the_next_node_finds_it(tmp_path):
    marker = uuid.uuid4().hex

    done = run_up(str(template_krt(tmp_path)), "--request", '{"name": "Ada"}', cwd=tmp_path, marker=marker)

    assert done.returncode == 0, done.stderr
    store = tmp_path / "data.sqlite"
    assert f"ctx.db and ctx.prediction documents go to {store} (SQLite, answering mongo_writer" in done.stderr
    answer = json.loads(json.loads(done.stdout)["greeting"])
    assert answer == {"greetings": [{"_id": 4, "greeting": "Hello Ada!"}], "new_labels": 1}
    documents = stored(store)
    assert [coll for coll, _ in documents] == ["classificationMetrics"] * 3 + ["greeter", "found"]
    assert documents[0][1]["versionName"] == documents[0][1]["versionId"] == "template-v1"
    assert "mongo_writer stopped: 5 documents saved" in done.stderr
    assert leftovers(marker) == []


def test_local_answers_mongo_writer_and_find_sees_every_earlier_save(marked, tmp_path):
    output = io.StringIO()

    with krt_runner.local(one_node_krt(tmp_path, SAVE_AND_FIND), output=output) as krt:
        main = krt.workflow("main")
        answers = [main.submit(greeter_pb2.Request(name=name)).result(60).greeting for name in ("Ada", "Bob", "Ada")]

    assert [len(json.loads(answer)) for answer in answers] == [1, 1, 2]
    assert json.loads(answers[2]) == [{"_id": 1, "name": "Ada"}, {"_id": 3, "name": "Ada"}]
    assert stored(tmp_path / "data.sqlite") == [("people", {"name": "Ada"}), ("people", {"name": "Bob"}),
                                                ("people", {"name": "Ada"})]
    assert f"documents go to {tmp_path / 'data.sqlite'}" in output.getvalue()


def test_with_krt_mongo_uri_set_up_leaves_ctx_db_to_that_mongodb(marked, tmp_path):
    output = io.StringIO()

    with krt_runner.local(one_node_krt(tmp_path, SAVE_AND_FIND), output=output,
                          env={"KRT_MONGO_URI": "mongodb://127.0.0.1:1", "KRT_MONGO_TIMEOUT": "0.2"}) as krt:
        failed = krt.workflow("main").submit(greeter_pb2.Request(name="Ada")).exception(60)

    assert "KRT_MONGO_URI is set: ctx.db goes to that MongoDB's mongo-writer" in output.getvalue()
    assert "no mongo-writer listens on its subject" in output.getvalue()
    assert "cannot reach MongoDB at mongodb://127.0.0.1:1" in str(failed)
    assert not (tmp_path / "data.sqlite").exists()


def test_a_local_store_in_a_folder_that_does_not_exist_stops_local_before_any_node_starts(marked, tmp_path):
    missing = tmp_path / "no-such-folder" / "data.sqlite"

    with pytest.raises(KrtRunnerError, match=r"the local store for ctx.db, .*no-such-folder/data.sqlite, is not in an"):
        krt_runner.local(one_node_krt(tmp_path, SAVE_AND_FIND), output=io.StringIO(),
                         env={"KRT_LOCAL_DB_FILE": str(missing)})

    assert leftovers(marked) == []


def test_ups_mongo_writer_answers_success_false_for_a_document_nested_too_deep_and_counts_it(tmp_path):
    from krt_runner.local_krt.mongo_writer import LocalMongoWriter
    from krt_runner.mongo import wire

    said: list[str] = []
    writer = LocalMongoWriter(tmp_path / "data.sqlite", "mongo_writer", say=said.append)
    nested = b'{"coll": "c", "doc": {"a": ' + b"[" * 5000 + b"]" * 5000 + b"}}"

    assert writer._answer(nested) == wire.FAILURE
    assert writer.refused == 1 and writer.saved == 0 and "recursion" in said[0]
