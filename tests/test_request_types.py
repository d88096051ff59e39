"""Typed handlers and Processor classes at load time: annotations, discovery, validate/process. No server."""

from __future__ import annotations

import functools
import itertools
import textwrap
from pathlib import Path

import pytest
from conftest import greeter_pb2  # also puts the greeter's folder on sys.path
from google.protobuf.any_pb2 import Any as AnyMessage

from krt_runner.errors import HandlerLoadError, InvalidRequestError
from krt_runner.node.calling import Caller
from krt_runner.node.request_types import request_type_of, unpack_request
from krt_runner.node.user_code import UserCode, load_user_code

_NAMES = itertools.count()


@pytest.fixture
def load(tmp_path):
    """Write a module (dedented, greeter_pb2 importable) under a unique name and load it."""

    def write_and_load(source: str, suffix: str = "") -> UserCode:
        name = f"typed_mod_{next(_NAMES)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        return load_user_code(f"{name}.py{suffix}", tmp_path)

    return write_and_load


# -- the request parameter's annotation ------------------------------------------------------------


@pytest.mark.parametrize(
    ("signature", "expected"),
    [
        ("def handler(ctx, data):", None),
        ("def handler(ctx, req: Request):", greeter_pb2.Request),
        ("async def handler(ctx, req: Request) -> Response:", greeter_pb2.Request),
        ("def handler(ctx, req: 'Request'):", greeter_pb2.Request),
        ("def handler(ctx, data: any_pb2.Any):", None),
        ("def handler(ctx, data: typing.Any):", None),
        ("def handler(ctx, data: Message):", None),
        ("def handler(ctx, data: any):", None),  # the builtin, as kre-py's own code annotated
        ("def handler(ctx: 'OnlyForTypeCheckers', req: Request) -> 'AlsoMissing':", greeter_pb2.Request),
        ("def handler(*args):", None),
    ],
    ids=[
        "untyped", "message-class", "async-with-return", "string", "any_pb2.Any", "typing.Any", "Message-base",
        "builtin-any", "other-annotations-unresolvable", "varargs",
    ],
)
@pytest.mark.parametrize("future_import", [False, True], ids=["eager", "future-annotations"])
def test_the_request_type_is_read_from_the_second_parameter(load, signature, expected, future_import):
    header = "from __future__ import annotations\n" if future_import else ""
    code = load(
        f"""{header}import typing
from google.protobuf import any_pb2
from google.protobuf.message import Message
from greeter_pb2 import Request, Response
{signature}
    return None
"""
    )

    assert code.request_type is expected


def test_a_bound_method_skips_self():
    class Node:
        def handle(self, ctx, req: greeter_pb2.Request) -> None: ...

    assert request_type_of(Node().handle, where="test") is greeter_pb2.Request


def test_a_partial_without_annotations_is_untyped():
    def handler(prefix, ctx, data): ...

    assert request_type_of(functools.partial(handler, "x"), where="test") is None


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        ("req: NoSuchName", "cannot resolve the annotation 'NoSuchName' of parameter 'req'"),
        ("req: int", "parameter 'req' is annotated <class 'int'>"),
    ],
    ids=["unresolvable", "not-a-message"],
)
def test_a_request_annotation_that_is_not_a_message_class_is_a_load_error(load, annotation, expected):
    with pytest.raises(HandlerLoadError) as caught:
        load(f"from __future__ import annotations\ndef handler(ctx, {annotation}):\n    pass\n")

    assert "handler" in str(caught.value) and expected in str(caught.value)


# -- unpacking a payload ---------------------------------------------------------------------------


def packed(message) -> AnyMessage:
    payload = AnyMessage()
    payload.Pack(message)
    return payload


@pytest.mark.parametrize("prefix", ["type.googleapis.com/", "example.com/types/"])
def test_a_payload_of_the_annotated_type_is_unpacked_whatever_the_type_url_prefix(prefix):
    payload = AnyMessage()
    payload.Pack(greeter_pb2.Request(name="Ada"), type_url_prefix=prefix)

    request = unpack_request(payload, greeter_pb2.Request)

    assert request == greeter_pb2.Request(name="Ada")


def test_a_payload_of_the_annotated_type_that_does_not_parse_is_an_invalid_request():
    payload = AnyMessage(type_url="type.googleapis.com/greeter.Request", value=b"\xff\xff\xff")

    with pytest.raises(InvalidRequestError, match=r"payload is not a valid greeter\.Request"):
        unpack_request(payload, greeter_pb2.Request)


@pytest.mark.parametrize(
    ("payload", "received"),
    [(packed(greeter_pb2.Response(greeting="hi")), "received greeter.Response"), (AnyMessage(), "an empty payload")],
    ids=["other-type", "empty"],
)
def test_a_payload_of_another_type_is_an_invalid_request_naming_both_types(payload, received):
    with pytest.raises(InvalidRequestError) as caught:
        unpack_request(payload, greeter_pb2.Request)

    assert str(caught.value).startswith("invalid request: expected greeter.Request")
    assert received in str(caught.value)


# -- Processor classes -----------------------------------------------------------------------------

PROCESSOR = """
from greeter_pb2 import Request, Response
from krt_runner import Processor


class Greeter(Processor):
    {setup}def setup(self, ctx):
        self.ready = True

    {validate}def validate(self, ctx, req: Request):
        if not req.name:
            raise ValueError("name is empty")

    {process}def process(self, ctx, req: Request) -> Response:
        if req.name == "boom":
            raise RuntimeError("boom requested")
        return Response(greeting=f"hello {{req.name}} ready={{self.ready}}")
"""


def processor_source(*, validate_async: bool, process_async: bool) -> str:
    return PROCESSOR.format(
        setup="", validate="async " if validate_async else "", process="async " if process_async else ""
    )


@pytest.fixture
async def caller():
    caller = Caller(workers=2)
    yield caller
    caller.close()


@pytest.mark.parametrize("validate_async", [False, True], ids=["sync-validate", "async-validate"])
@pytest.mark.parametrize("process_async", [False, True], ids=["sync-process", "async-process"])
async def test_a_processor_validates_then_processes_whatever_mix_of_sync_and_async(
    load, caller, validate_async, process_async
):
    code = load(processor_source(validate_async=validate_async, process_async=process_async))
    await caller.call(code.init, None)

    answer = await caller.call(code.handler, None, greeter_pb2.Request(name="Ada"))
    with pytest.raises(InvalidRequestError, match=r"^invalid request: ValueError: name is empty$"):
        await caller.call(code.handler, None, greeter_pb2.Request(name=""))
    with pytest.raises(RuntimeError, match="boom requested"):
        await caller.call(code.handler, None, greeter_pb2.Request(name="boom"))

    assert answer == greeter_pb2.Response(greeting="hello Ada ready=True")
    assert code.request_type is greeter_pb2.Request


def test_a_module_with_one_processor_and_no_handler_is_found_without_a_suffix(load):
    code = load(processor_source(validate_async=False, process_async=False))

    assert code.init is not None and code.init.__name__ == "setup"
    assert code.request_name == "greeter.Request"


def test_path_colon_name_picks_one_of_several_processors(tmp_path):
    pair = Path(__file__).parent / "handlers" / "processor_pair.py"

    shout = load_user_code(f"{pair}:Shout", tmp_path)
    whisper = load_user_code(f"{pair}:Whisper", tmp_path)

    assert shout.handler(None, greeter_pb2.Request(name="hey")) == greeter_pb2.Response(greeting="HEY!")
    assert whisper.handler_is_async and not shout.handler_is_async
    assert shout.init is None  # no setup defined: nothing to run at start-up


def test_several_processors_and_no_handler_is_a_load_error_that_names_them(tmp_path):
    pair = Path(__file__).parent / "handlers" / "processor_pair.py"

    with pytest.raises(HandlerLoadError) as caught:
        load_user_code(str(pair), tmp_path)

    assert "several Processor classes (Shout, Whisper)" in str(caught.value)
    assert "processor_pair.py:Shout" in str(caught.value)


def test_a_handler_function_wins_over_a_processor_class_in_the_same_module(load):
    code = load(processor_source(validate_async=False, process_async=False) + "\ndef handler(ctx, data):\n    pass\n")

    assert code.handler.__name__ == "handler" and code.request_type is None


@pytest.mark.parametrize(
    ("source", "suffix", "expected"),
    [
        ("x = 1\n", ":Missing", "no krt_runner.Processor subclass 'Missing'"),
        ("from krt_runner import Processor\nclass Empty(Processor):\n    pass\n", "", "Empty defines no process"),
        (
            "from krt_runner import Processor\nclass Broken(Processor):\n"
            "    def __init__(self):\n        raise OSError('no model file')\n"
            "    def process(self, ctx, req):\n        pass\n",
            "",
            "Broken() raised OSError: no model file",
        ),
        (
            "from greeter_pb2 import Request, Response\nfrom krt_runner import Processor\nclass Mixed(Processor):\n"
            "    def validate(self, ctx, req: Response): pass\n    def process(self, ctx, req: Request): pass\n",
            "",
            "validate takes greeter.Response but process takes greeter.Request",
        ),
        ("x = 1\n", "", "defines no handler(ctx, data) function, no handler_batch(ctx, requests) function and no "
                       "krt_runner.Processor subclass"),
    ],
    ids=["unknown-class", "no-process", "constructor-raises", "types-disagree", "nothing-to-run"],
)
def test_each_processor_loading_failure_is_one_clear_load_error(load, source, suffix, expected):
    with pytest.raises(HandlerLoadError) as caught:
        load(source, suffix)

    assert expected in str(caught.value)


def test_the_request_type_comes_from_validate_when_process_is_untyped(load):
    code = load(
        "from greeter_pb2 import Request\nfrom krt_runner import Processor\nclass Half(Processor):\n"
        "    def validate(self, ctx, req: Request): pass\n    def process(self, ctx, req): return req\n"
    )

    assert code.request_type is greeter_pb2.Request
