"""krt_runner.testing: a handler run in-process with a real context, no NATS."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT, greeter_pb2

from krt_runner.envelope import AnyMessage
from krt_runner.errors import MeasurementError
from krt_runner.testing import run_node

HANDLERS = ROOT / "tests" / "handlers"


@pytest.mark.parametrize("module", ["behaviours.py", "behaviours_sync.py"])
def test_init_runs_once_before_the_handler_and_its_store_is_shared(module):
    with run_node(HANDLERS, module, node_name="n") as node:
        answers = [node.call(greeter_pb2.Request(name="init"), greeter_pb2.Request).name for _ in range(3)]

    assert answers == ["init_calls=1 ready=yes"] * 3
    assert node.store["ready"] == "yes"


@pytest.mark.parametrize("module", ["behaviours.py", "behaviours_sync.py"])
def test_an_early_reply_is_captured(module):
    with run_node(HANDLERS, module) as node:
        node.call(greeter_pb2.Request(name="early"))

    assert node.replies == [greeter_pb2.Request(name="early answer")]


def test_an_early_reply_marks_the_request_envelope_replied_as_a_running_node_does(tmp_path):
    (tmp_path / "node.py").write_text(
        "from google.protobuf.wrappers_pb2 import StringValue\n\n\n"
        "def handler(ctx, data):\n"
        "    before = ctx.__request_msg__.replied\n"
        "    ctx.reply(StringValue(value='early'))\n"
        "    return StringValue(value=f'{before} {ctx.__request_msg__.replied}')\n"
    )
    from google.protobuf.wrappers_pb2 import StringValue

    with run_node(tmp_path, "node.py") as node:
        answer = node.call(StringValue(value="x"), StringValue)

    assert answer.value == "False True" and node.replies == [StringValue(value="early")]


def test_a_handler_exception_reaches_the_test_as_it_is():
    with run_node(HANDLERS, "behaviours.py") as node, pytest.raises(ValueError, match="boom requested"):
        node.call(greeter_pb2.Request(name="boom"))


def test_ctx_path_joins_onto_the_base_path():
    with run_node(HANDLERS, "behaviours.py") as node:
        answer = node.call(greeter_pb2.Request(name="path:models/m.joblib"), greeter_pb2.Request)

    assert answer.name == str(HANDLERS / "models" / "m.joblib")


def test_a_result_of_another_type_fails_with_a_type_error():
    with run_node(HANDLERS, "behaviours.py") as node, pytest.raises(TypeError, match="not Response"):
        node.call(greeter_pb2.Request(name="x"), greeter_pb2.Response)


def test_a_request_that_is_no_protobuf_message_or_a_call_after_the_block_is_refused_before_the_handler_runs():
    with run_node(HANDLERS, "behaviours.py") as node, pytest.raises(TypeError, match="protobuf message, not str"):
        node.call("Ada", greeter_pb2.Request)

    with pytest.raises(RuntimeError, match="stopped at the end of its run_node block"):
        node.call(greeter_pb2.Request(name="late"), greeter_pb2.Request)


def test_without_a_response_type_the_result_comes_back_unchanged():
    with run_node(HANDLERS, "behaviours.py", node_name="plain") as node:
        assert node.call(greeter_pb2.Request(name="x")) == greeter_pb2.Request(name="x>node")


def test_measurements_are_kept_as_points_and_as_line_protocol(handler_dir):
    base = handler_dir(
        """
        def handler(ctx, data):
            ctx.measurement.save("seen", {"count": 1}, {"kind": "a"})
            return data
        """
    )

    with run_node(base, "src/node.py", version="v7") as node:
        result = node.call(greeter_pb2.Request(name="x"))

    assert isinstance(result, AnyMessage)
    saved = [(p.measurement, p.fields, p.tags) for p in node.points]
    assert saved == [("seen", {"count": 1}, {"kind": "a", "version": "v7"})]
    assert node.lines[0].startswith("seen,kind=a,version=v7 count=1i ")


def test_a_point_influxdb_would_reject_fails_the_test(handler_dir):
    base = handler_dir(
        """
        def handler(ctx, data):
            ctx.measurement.save("bad", {"f": {"nested": 1}})
            return data
        """
    )

    with run_node(base, "src/node.py") as node, pytest.raises(MeasurementError, match="has type dict"):
        node.call(greeter_pb2.Request())


def test_kres_greeter_template_runs_and_its_documents_and_predictions_are_kept():
    with run_node(HANDLERS, "kre_template_greeter.py", version="greeter-v1", version_id="id-1") as node:
        answer = node.call(greeter_pb2.Request(name="Ada"), greeter_pb2.Response)

    assert answer.greeting == "Hello Ada!"
    assert [saved.coll for saved in node.saved] == ["classificationMetrics"] * 3 + ["greeter"]
    assert node.saved[-1] == ("greeter", {"greeting": "Hello Ada!"})
    assert node.predictions[0] == {
        "date": "2020-04-06T09:02:09.277853Z", "error": "", "predictedValue": "class_x", "trueValue": "class_y",
        "extra": None, "versionId": "id-1", "versionName": "greeter-v1",
    }
    assert [prediction["error"] for prediction in node.predictions] == ["", "missing_values", "new_labels"]


SAVE_AND_FIND = {
    "async": """
        import json
        from greeter_pb2 import Request, Response

        async def handler(ctx, req: Request) -> Response:
            await ctx.db.save("people", {"name": req.name, "visits": 1})
            return Response(greeting=json.dumps(await ctx.db.find("people", {"name": req.name})))
        """,
    "sync": """
        import json
        from greeter_pb2 import Request, Response

        def handler(ctx, req: Request) -> Response:
            ctx.db.save("people", {"name": req.name, "visits": 1})
            return Response(greeting=json.dumps(ctx.db.find("people", {"name": req.name})))
        """,
}


@pytest.mark.parametrize("style", ["async", "sync"])
def test_ctx_db_find_reads_back_what_was_saved_by_equality_on_fields(handler_dir, style):
    base = handler_dir(SAVE_AND_FIND[style])

    with run_node(base, "src/node.py") as node:
        node.call(greeter_pb2.Request(name="Ada"))
        node.call(greeter_pb2.Request(name="Bob"))
        answer = node.call(greeter_pb2.Request(name="Ada"), greeter_pb2.Response)

    ada = {"name": "Ada", "visits": 1}
    assert json.loads(answer.greeting) == [{"_id": 1, **ada}, {"_id": 3, **ada}]
    assert node.saved == [("people", ada), ("people", {"name": "Bob", "visits": 1}), ("people", ada)]


def test_invalid_ctx_db_and_ctx_prediction_calls_raise_in_the_test(handler_dir):
    base = handler_dir(
        """
        async def handler(ctx, data):
            if data.value:
                await ctx.prediction.save(predicted_value="cat")
            await ctx.db.save("", {"a": 1})
        """
    )

    with run_node(base, "src/node.py") as node:
        with pytest.raises(ValueError, match="the collection name is empty"):
            node.call(greeter_pb2.Request())
        with pytest.raises(ValueError, match="true_value='' must be a non-empty string"):
            node.call(greeter_pb2.Request(name="x"))

    assert node.saved == []


def test_a_result_that_is_no_protobuf_message_fails_the_test_as_a_node_would_answer_it_with_an_error(handler_dir):
    base = handler_dir(
        """
        def handler(ctx, data):
            return {"greeting": "x"}
        """
    )

    with run_node(base, "src/node.py") as node, pytest.raises(TypeError, match="handler returned dict, not a protobuf"):
        node.call(greeter_pb2.Request())
