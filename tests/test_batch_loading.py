"""Batch functions at load time, what their results come to per request, and calling them with
krt_runner.testing. No server."""

from __future__ import annotations

import itertools
import textwrap

import pytest
from conftest import ROOT, greeter_pb2

from krt_runner.config import load_settings
from krt_runner.errors import (
    BatchResultError,
    ConfigError,
    HandlerError,
    HandlerLoadError,
    InvalidRequestError,
    InvalidResultError,
    ReplyError,
)
from krt_runner.node.batch_results import Validated, item_error, outcomes
from krt_runner.node.batching import batcher_for
from krt_runner.node.calling import Caller
from krt_runner.node.user_code import UserCode, load_user_code
from krt_runner.testing import run_node

_NAMES = itertools.count()
HANDLERS = ROOT / "tests" / "handlers"


@pytest.fixture
def load(tmp_path):
    """Write a module (dedented, greeter_pb2 importable) under a unique name and load it."""

    def write_and_load(source: str) -> UserCode:
        name = f"batch_mod_{next(_NAMES)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        return load_user_code(f"{name}.py", tmp_path)

    return write_and_load


# -- loading ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        ("list[Request]", greeter_pb2.Request),
        ("typing.List[Request]", greeter_pb2.Request),
        ("typing.Sequence[Request]", greeter_pb2.Request),
        ("'list[Request]'", greeter_pb2.Request),
        ("list", None),
        ("list[any_pb2.Any]", None),
        ("typing.Any", None),
    ],
    ids=["list", "List", "Sequence", "string", "bare-list", "list-of-Any", "Any"],
)
def test_the_request_type_of_a_batch_function_is_that_of_its_list_items(load, annotation, expected):
    code = load(f"""
        import typing
        from google.protobuf import any_pb2
        from greeter_pb2 import Request
        def handler_batch(ctx, requests: {annotation}):
            return requests
    """)

    assert code.batch is not None and code.batch.name == "handler_batch"
    assert code.request_type is expected


def test_a_batch_function_annotated_with_one_request_says_to_annotate_a_list(load):
    with pytest.raises(HandlerLoadError) as caught:
        load("from greeter_pb2 import Request\ndef handler_batch(ctx, requests: Request):\n    return requests\n")

    assert "handler_batch: parameter 'requests' is annotated" in str(caught.value)
    assert "annotate it list[Request]" in str(caught.value)


def test_a_handler_and_a_handler_batch_taking_different_requests_is_a_load_error(load):
    with pytest.raises(HandlerLoadError) as caught:
        load("""
            from greeter_pb2 import Request, Response
            def handler(ctx, req: Request): return req
            def handler_batch(ctx, requests: list[Response]): return requests
        """)

    assert "handler_batch takes greeter.Response but handler takes greeter.Request" in str(caught.value)


def test_a_module_with_only_handler_batch_answers_one_request_through_a_batch_of_one(tmp_path):
    (tmp_path / "only_batch.py").write_text(textwrap.dedent("""
        from greeter_pb2 import Request, Response
        def handler_batch(ctx, requests: list[Request]) -> list[Response]:
            return [Response(greeting=f"{r.name} of {len(requests)}") for r in requests]
    """))

    with run_node(tmp_path, "only_batch.py") as node:
        answer = node.call(greeter_pb2.Request(name="Ada"), greeter_pb2.Response)

    assert answer.greeting == "Ada of 1" and not node.code.handler_is_async


def test_a_processor_with_only_process_batch_loads_with_its_request_type():
    code = load_user_code("batch_processor.py", HANDLERS)

    assert code.batch is not None and code.batch.name == "Greeter.process_batch"
    assert code.request_type is greeter_pb2.Request and not code.batch.is_async


def test_process_and_process_batch_taking_different_requests_is_a_load_error(load):
    with pytest.raises(HandlerLoadError) as caught:
        load("""
            from greeter_pb2 import Request, Response
            from krt_runner import Processor
            class Mixed(Processor):
                def process(self, ctx, req: Request): return req
                def process_batch(self, ctx, requests: list[Response]): return requests
        """)

    assert "process_batch takes greeter.Response but process takes greeter.Request" in str(caught.value)


# -- results per request ----------------------------------------------------------------------------


def test_one_result_per_request_is_taken_as_it_is_and_any_other_count_names_both():
    assert outcomes("handler_batch", ("a", "b"), 2) == ["a", "b"]
    with pytest.raises(BatchResultError, match="handler_batch returned 1 results for a batch of 2 requests"):
        outcomes("handler_batch", ["a"], 2)
    with pytest.raises(BatchResultError, match=r"returned None, not a list with one result per request \(a batch "
                                               r"of 1 request\)"):
        outcomes("handler_batch", None, 1)


def test_a_returned_exception_becomes_a_handler_error_naming_it_and_our_own_errors_stay_as_they_are():
    cause = ValueError("bad one")
    invalid = InvalidRequestError("invalid request: nope")

    error = item_error("P.process_batch", cause)

    assert isinstance(error, HandlerError) and error.__cause__ is cause
    assert str(error) == "P.process_batch returned an error for this request: ValueError: bad one"
    assert item_error("P.process_batch", invalid) is invalid


def test_rejected_requests_keep_their_places_and_a_wrong_count_of_the_others_fails_only_them():
    invalid = InvalidRequestError("invalid request: nope")

    merged = outcomes("P.process_batch", Validated({1: invalid}, [0, 2], returned=["a"]), 3)

    assert merged[1] is invalid
    assert [str(merged[0]), str(merged[2])] == [
        "P.process_batch returned 1 results for a batch of 2 requests: it must return one result per request, "
        "in the order of the requests"
    ] * 2


# -- settings -----------------------------------------------------------------------------------------

ENV = {"KRT_NATS_SERVER": "nats://127.0.0.1:4222", "KRT_NATS_INPUT": "in", "KRT_HANDLER_PATH": "src/node.py"}


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, event: str, **fields: object) -> None:
        self.lines.append(event)

    warning = info


@pytest.mark.parametrize(("raw", "capacity"), [(None, 64), ("8", 16), ("1", None)])
def test_a_batch_function_batches_32_requests_unless_krt_batch_max_size_says_otherwise(raw, capacity):
    code = load_user_code("batch_processor.py", HANDLERS)
    settings = load_settings({**ENV, **({"KRT_BATCH_MAX_SIZE": raw} if raw else {})})

    batcher = batcher_for(settings, code, caller=Caller(workers=1), state=None, log=Log())

    assert (batcher.capacity if batcher else None) == capacity, "(KRT_CONCURRENCY + 1) batches of requests at most"


@pytest.mark.parametrize(("concurrency", "capacity"), [("3124", 3125 * 32), ("10000", 10001 * 9)])
def test_an_unset_batch_size_keeps_what_a_node_holds_under_100000_requests(concurrency, capacity):
    code = load_user_code("batch_processor.py", HANDLERS)
    settings = load_settings({**ENV, "KRT_CONCURRENCY": concurrency})

    batcher = batcher_for(settings, code, caller=Caller(workers=1), state=None, log=Log())

    assert batcher is not None and batcher.capacity == capacity <= 100_000


def test_krt_batch_max_size_for_code_with_no_batch_function_is_ignored_with_a_warning():
    code = load_user_code("typed.py", HANDLERS)
    log = Log()

    batcher = batcher_for(load_settings({**ENV, "KRT_BATCH_MAX_SIZE": "8"}), code, caller=Caller(workers=1),
                          state=None, log=log)

    assert batcher is None
    assert log.lines == ["KRT_BATCH_MAX_SIZE=8 is ignored: typed.py defines no handler_batch(ctx, requests) and no "
                         "Processor.process_batch(self, ctx, requests)"]


@pytest.mark.parametrize(("variable", "value"), [("KRT_BATCH_MAX_SIZE", "0"), ("KRT_BATCH_MAX_WAIT_MS", "-1")])
def test_a_bad_batch_setting_stops_start_up_naming_it(variable, value):
    with pytest.raises(ConfigError, match=f"{variable} .*='{value}' is invalid"):
        load_settings({**ENV, variable: value})


# -- krt_runner.testing ---------------------------------------------------------------------------------


def test_call_batch_runs_validate_per_request_and_the_batch_function_once_with_the_rest():
    requests = [greeter_pb2.Request(name=name) for name in ("Ada", "bad-one", "Bob")]

    with run_node(HANDLERS, "batch_processor.py") as node:
        answers = node.call_batch(requests, greeter_pb2.Response)
        single = node.call(greeter_pb2.Request(name="Cy"), greeter_pb2.Response)

    assert [answers[0].greeting, answers[2].greeting] == ["Hello, Ada! batch of 2", "Hello, Bob! batch of 2"]
    assert isinstance(answers[1], InvalidRequestError) and "name 'bad-one' is not allowed" in str(answers[1])
    assert single.greeting == "Hello, Cy! batch of 1"


def test_call_batch_returns_exceptions_in_their_places_and_raises_what_the_call_raised():
    names = ["a", "fail-b"]

    with run_node(HANDLERS, "batches.py") as node:
        answers = node.call_batch([greeter_pb2.Request(name=name) for name in names], greeter_pb2.Response)
        with pytest.raises(RuntimeError, match="boom for the whole batch"):
            node.call_batch([greeter_pb2.Request(name="boom")])
        with pytest.raises(BatchResultError, match="returned 1 results for a batch of 2 requests"):
            node.call_batch([greeter_pb2.Request(name="short"), greeter_pb2.Request(name="x")])

    assert answers[0].greeting.startswith("a@1/2")
    assert isinstance(answers[1], ValueError) and str(answers[1]) == "cannot greet fail-b"


def test_call_batch_answers_a_request_of_another_type_and_a_result_that_is_no_message_alone_as_a_node_does():
    requests = [greeter_pb2.Request(name="a"), greeter_pb2.Response(greeting="x"), greeter_pb2.Request(name="none")]

    with run_node(HANDLERS, "batches.py") as node:
        typed = node.call_batch(requests, greeter_pb2.Response)
        untyped = node.call_batch([greeter_pb2.Request(name="none")])

    assert typed[0].greeting.startswith("a@1/2")  # the batch holds the two requests of its type
    assert isinstance(typed[1], InvalidRequestError) and "expected greeter.Request" in str(typed[1])
    assert isinstance(typed[2], InvalidResultError) and isinstance(untyped[0], InvalidResultError)
    assert str(untyped[0]) == "handler_batch returned None for this request, not a protobuf message"


def test_call_batch_with_no_request_is_refused_as_a_node_never_calls_a_batch_function_with_none():
    with run_node(HANDLERS, "batches.py") as node, pytest.raises(ValueError, match="at least one request"):
        node.call_batch([])

    assert node.store == {}


def test_call_batch_on_code_without_a_batch_function_says_what_to_call():
    with run_node(HANDLERS, "typed.py") as node, pytest.raises(TypeError, match="defines no handler_batch"):
        node.call_batch([greeter_pb2.Request(name="Ada")])


def test_a_batch_function_s_ctx_reply_is_refused_in_testing_too():
    with run_node(HANDLERS, "batches.py") as node, pytest.raises(ReplyError, match="not offered in batch mode"):
        node.call_batch([greeter_pb2.Request(name="reply")])
