"""ctx.db and ctx.prediction in a running node: KRE v1's mongo-writer requests, byte for byte, against a responder
this test starts on a real nats-server; what is not saved is logged, and the request is still answered once."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
from datetime import datetime, timedelta, timezone

import nats
import pytest
import pytest_asyncio
from conftest import ROOT, greeter_pb2, node_env, request_envelope, synced, unpack
from test_node import answers_to

from krt_runner.local_krt.embedded import free_port

HANDLERS = ROOT / "tests" / "handlers"
MIB = 1024 * 1024
# What every request asks of ctx.db and ctx.prediction, by its name; sync and async handlers share it.
CALLS = """
import base64, json, os
from datetime import datetime
from greeter_pb2 import Request, Response

DATE = datetime(2020, 4, 6, 9, 2, 9, 277853)
DOC = {"greeting": "Hello, Ada ñ", "n": 1, "ratio": 0.5, "ok": True, "none": None, "tags": ["a", 2]}


def calls(ctx, name):
    kind, _, arg = name.partition(":")
    if kind == "save":
        return [ctx.db.save("greeter", DOC)]
    if kind == "predict":
        return [ctx.prediction.save(predicted_value="class_x", true_value="class_y", extra={"p": 0.9}, utcdate=DATE)]
    if kind == "predict-error":
        return [ctx.prediction.save(error=ctx.prediction.ERR_NEW_LABELS)]
    if kind == "big":  # a request body of exactly int(arg) bytes
        filler = int(arg) - len(json.dumps({"coll": "big", "doc": {"s": ""}}))
        return [ctx.db.save("big", {"s": "x" * filler})]
    if kind == "noise":  # 2 MiB that gzip cannot shrink under 1 MiB
        return [ctx.db.save("noise", {"s": base64.b64encode(os.urandom(1536 * 1024)).decode()})]
    if kind == "coll":
        return [ctx.db.save(json.loads(arg), {"a": 1})]
    if kind == "prediction":
        return [ctx.prediction.save(**json.loads(arg))]
    if kind == "nan":  # what Python's json writes and KRE's Go mongo-writer refuses
        return [ctx.db.save("scores", {"score": float(arg)})]
    if kind == "circular":
        doc = {}
        doc["self"] = doc
        return [ctx.db.save("loops", doc)]
    if kind == "find":
        return [ctx.db.find("greeter", {"greeting": "Hello"})]
    raise ValueError(name)
"""
ASYNC_HANDLER = CALLS + """

async def handler(ctx, req: Request) -> Response:
    return Response(greeting=json.dumps([await call for call in calls(ctx, req.name)]))
"""
SYNC_HANDLER = CALLS + """

def handler(ctx, req: Request) -> Response:
    return Response(greeting=json.dumps(calls(ctx, req.name)))
"""
STYLES = {"async": ASYNC_HANDLER, "sync": SYNC_HANDLER}
DOC = {"greeting": "Hello, Ada ñ", "n": 1, "ratio": 0.5, "ok": True, "none": None, "tags": ["a", 2]}


class MongoWriter:
    """A stand-in for KRE's mongo-writer on the test's nats-server: keeps every request body, answers ``answer``."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.answer = b'{"success":true}'
        self.delay = 0.0

    async def on_request(self, msg) -> None:
        self.bodies.append(msg.data)
        await asyncio.sleep(self.delay)
        await msg.respond(self.answer)


@pytest_asyncio.fixture
async def mongo_writer(nats_server):
    nc = await nats.connect(nats_server.url)
    writer = MongoWriter()
    await nc.subscribe("mongo_writer", cb=writer.on_request)
    await synced(nc)
    yield writer
    await nc.close()


@pytest.fixture
def db_node(nats_server, start_node, handler_dir):
    """A node running the CALLS handler (async or sync) with ``env`` over KRE's variables."""

    def start(style: str = "async", **env: str):
        base = handler_dir(STYLES[style])
        return start_node(**node_env(nats_server, base, "src/node.py", input="db-in", **env))

    return start


def request(name: str) -> bytes:
    return request_envelope(greeter_pb2.Request(name=name)).SerializeToString()


async def ask(requester, name: str):
    answers = await answers_to(requester, "db-in", request(name))
    assert len(answers) == 1
    return answers[0]


def logged(node, event_part: str) -> list[dict]:
    events = [json.loads(line) for line in node.lines if line.startswith("{")]
    return [event for event in events if event_part in event.get("event", "")]


@pytest.mark.parametrize("style", ["async", "sync"])
async def test_db_save_sends_kres_exact_json_and_the_request_is_answered(db_node, mongo_writer, requester, style):
    db_node(style)

    answer = await ask(requester, "save")

    assert answer.error == ""
    assert json.loads(unpack(answer, greeter_pb2.Response).greeting) == [None]
    assert mongo_writer.bodies == [json.dumps({"coll": "greeter", "doc": DOC}).encode("utf-8")]


@pytest.mark.parametrize("style", ["async", "sync"])
async def test_prediction_save_sends_kres_document_in_kres_key_order(db_node, mongo_writer, requester, style):
    db_node(style, KRT_VERSION="greeter-v1", KRT_VERSION_ID="id-1")

    answer = await ask(requester, "predict")

    assert answer.error == ""
    doc = {"date": "2020-04-06T09:02:09.277853Z", "error": "", "predictedValue": "class_x", "trueValue": "class_y",
           "extra": {"p": 0.9}, "versionId": "id-1", "versionName": "greeter-v1"}
    assert mongo_writer.bodies == [json.dumps({"coll": "classificationMetrics", "doc": doc}).encode()]


async def test_a_prediction_without_a_date_is_dated_now_in_rfc3339_with_microseconds(db_node, mongo_writer,
                                                                                      requester):
    db_node()
    before = datetime.now(timezone.utc)

    await ask(requester, "predict-error")

    doc = json.loads(mongo_writer.bodies[0])["doc"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", doc["date"])
    date = datetime.strptime(doc["date"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert before - timedelta(seconds=1) <= date <= datetime.now(timezone.utc)
    assert (doc["error"], doc["predictedValue"], doc["trueValue"]) == ("new_labels", "", "")


async def test_a_body_of_exactly_1_mib_goes_as_it_is_and_one_byte_more_goes_gzipped(db_node, mongo_writer,
                                                                                      requester):
    db_node()

    first = await ask(requester, f"big:{MIB}")
    second = await ask(requester, f"big:{MIB + 1}")

    assert (first.error, second.error) == ("", "")
    plain, packed = mongo_writer.bodies
    assert len(plain) == MIB and json.loads(plain)["coll"] == "big"
    assert packed[:2] == b"\x1f\x8b" and len(packed) < MIB
    filler = MIB + 1 - len(json.dumps({"coll": "big", "doc": {"s": ""}}))
    assert gzip.decompress(packed) == json.dumps({"coll": "big", "doc": {"s": "x" * filler}}).encode()


async def test_a_document_too_large_even_gzipped_is_an_error_answer(db_node, mongo_writer, requester):
    db_node()

    answer = await ask(requester, "noise")

    assert "PayloadTooLargeError" in answer.error and "collection 'noise'" in answer.error
    assert mongo_writer.bodies == []


INVALID_CALLS = {
    'coll:""': "ValueError: ctx.db.save: the collection name is empty",
    "coll:5": "TypeError: ctx.db.save: the collection must be a string, not int",
    'prediction:{"true_value": "y"}': "ValueError: ctx.prediction.save: predicted_value='' must be a non-empty",
    'prediction:{"predicted_value": "x", "true_value": 3}': "ValueError: ctx.prediction.save: true_value=3 must",
    "nan:nan": "ValueError: the document for collection 'scores' holds NaN or an infinity, which JSON cannot hold",
    "nan:-inf": "ValueError: the document for collection 'scores' holds NaN or an infinity",
    "circular": "ValueError: Circular reference detected",
    'prediction:{"error": "wrong"}': "ValueError: ctx.prediction.save: error='wrong' is none of missing_values, "
                                     "new_labels",
}


@pytest.mark.parametrize("name", list(INVALID_CALLS))
@pytest.mark.parametrize("style", ["async", "sync"])
async def test_invalid_arguments_raise_in_the_handler_and_send_nothing(db_node, mongo_writer, requester, style, name):
    db_node(style)

    answer = await ask(requester, name)

    assert INVALID_CALLS[name] in answer.error
    assert mongo_writer.bodies == []


@pytest.mark.parametrize("style", ["async", "sync"])
async def test_no_mongo_writer_is_a_warning_naming_the_collection_and_the_request_is_answered(db_node, requester,
                                                                                              style):
    node = db_node(style)

    answer = await ask(requester, "save")

    assert answer.error == ""
    warnings = logged(node, "no mongo-writer listens")
    assert [(w["level"], w["collection"], w["subject"]) for w in warnings] == [("warning", "greeter", "mongo_writer")]
    assert warnings[0]["tracking_id"] == answer.tracking_id


async def test_a_success_false_answer_is_a_warning_and_the_request_is_answered(db_node, mongo_writer, requester):
    node = db_node()
    mongo_writer.answer = b'{"success":false}'

    answers = [await ask(requester, "save"), await ask(requester, "predict")]

    assert [answer.error for answer in answers] == ["", ""]
    warnings = logged(node, "answered without success")
    assert [w["collection"] for w in warnings] == ["greeter", "classificationMetrics"]


async def test_a_mongo_writer_slower_than_predictions_1s_timeout_is_a_warning_and_the_request_is_answered(
    db_node, mongo_writer, requester
):
    node = db_node("sync")
    mongo_writer.delay = 1.5

    answer = await ask(requester, "predict")

    assert answer.error == ""
    warnings = logged(node, "did not answer in time")
    assert [(w["collection"], w["timeout"]) for w in warnings] == [("classificationMetrics", 1.0)]


async def test_the_mongo_writer_subject_is_a_setting(db_node, nats_server, requester):
    nc = await nats.connect(nats_server.url)
    bodies = []

    async def on_request(msg):
        bodies.append(msg.data)
        await msg.respond(b'{"success":true}')

    await nc.subscribe("mongo_writer_data.runtime-1", cb=on_request)
    db_node(KRT_NATS_MONGO_WRITER="mongo_writer_data.runtime-1")

    answer = await ask(requester, "save")
    await nc.close()

    assert answer.error == "" and len(bodies) == 1


@pytest.mark.parametrize("style", ["async", "sync"])
async def test_find_on_an_unreachable_mongodb_is_a_clear_error_within_krt_mongo_timeout(db_node, requester, style):
    uri = f"mongodb://admin:secret@127.0.0.1:{free_port()}/admin"
    db_node(style, KRT_MONGO_URI=uri, KRT_MONGO_TIMEOUT="0.5")

    started = asyncio.get_running_loop().time()
    answer = await ask(requester, "find")

    assert asyncio.get_running_loop().time() - started < 5
    assert "DatabaseError: ctx.db.find: cannot reach MongoDB at mongodb://admin:***@127.0.0.1:" in answer.error
    assert "within 0.5s (KRT_MONGO_TIMEOUT)" in answer.error and "secret" not in answer.error


async def test_find_without_a_database_says_what_to_set(db_node, requester):
    db_node()

    answer = await ask(requester, "find")

    assert "DatabaseError: ctx.db.find needs a database: set KRT_MONGO_URI" in answer.error


async def test_kres_greeter_template_handler_runs_unchanged(nats_server, start_node, mongo_writer, requester):
    start_node(**node_env(nats_server, HANDLERS, "kre_template_greeter.py", input="template-in",
                          KRT_VERSION="greeter-v1", KRT_VERSION_ID="id-1"))

    answer = await requester.greet("template-in", "Ada")

    assert unpack(answer, greeter_pb2.Response).greeting == "Hello Ada!"
    requests = [json.loads(body) for body in mongo_writer.bodies]
    assert [(r["coll"], r["doc"].get("error")) for r in requests] == [
        ("classificationMetrics", ""), ("classificationMetrics", "missing_values"),
        ("classificationMetrics", "new_labels"), ("greeter", None),
    ]
    assert requests[1]["doc"]["date"] == "2020-04-07T00:00:00.000000Z"
    assert requests[3]["doc"] == {"greeting": "Hello Ada!"}
