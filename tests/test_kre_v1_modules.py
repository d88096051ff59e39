"""KRE v1 modules on protobuf 7: ``MessageToDict``/``MessageToJson`` with ``including_default_value_fields``.

The KRT v1 SDK documentation's own handler example (tests/market_price/src/market_price.py) runs through a real
``krt-runner run`` on a real nats-server, and the fields it measures at their default value reach a real
InfluxDB-write-compatible store. The same keyword works under ``krt_runner.testing``, ``serve()`` and ``check``,
and ``KRT_PROTOBUF_COMPAT=false`` leaves protobuf's functions as they ship.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import joblib
import pytest
from conftest import GREETER_SRC, KRT_RUNNER, ROOT, node_env, unpack
from google.protobuf import json_format
from google.protobuf.wrappers_pb2 import StringValue
from test_influx import measured

from krt_runner.node import protobuf_compat
from krt_runner.testing import run_node

MARKET_PRICE = ROOT / "tests" / "market_price"
sys.path.insert(0, str(MARKET_PRICE / "src"))
from internal_nodes_pb2 import ModelOutput  # noqa: E402  (the fixture KRT's generated modules)
from public_input_pb2 import Request, Response  # noqa: E402

# A listing with four numbers at their default (0): MessageToDict drops them unless asked to keep them.
LISTING = Request(room_type="Entire home/apt", bedrooms=0, bathrooms=1.5, accommodates=2, beds=0,
                  neighbourhood="Harlem", latitude=40.8, longitude=-73.9, tv=1, elevator=0, internet=0)
ZEROS = ("bedrooms", "beds", "elevator", "internet")
EVERY_FIELD = {"room_type": "", "bedrooms": 0, "bathrooms": 0.0, "accommodates": 0, "beds": 0, "neighbourhood": "",
               "latitude": 0.0, "longitude": 0.0, "tv": 0, "elevator": 0, "internet": 0}


@pytest.fixture
def market_price_krt(tmp_path: Path) -> Path:
    """A copy of the fixture KRT with the model its init loads (any joblib file will do: the handler ignores it)."""
    krt = tmp_path / "market_price"
    shutil.copytree(MARKET_PRICE, krt, ignore=shutil.ignore_patterns("__pycache__"))
    (krt / "models").mkdir()
    joblib.dump({"stand_in": "model"}, krt / "models" / "model.joblib")
    return krt


@pytest.fixture
def compat_state() -> Iterator[None]:
    """The layer is process-wide: each test that changes it leaves it as it found it."""
    was_installed = protobuf_compat.installed()
    yield
    protobuf_compat.apply(enabled=was_installed)


# -- through krt-runner run ----------------------------------------------------------------------


async def test_the_sdk_market_price_example_answers_and_measures_the_fields_at_their_default(
    nats_server, start_node, requester, influx_server, market_price_krt
):
    start_node(**node_env(nats_server, market_price_krt, "src/market_price.py", input="price-in", name="price",
                          OUTPUT_PRICE_CURRENCY="USD", **measured(influx_server)))

    answer = await requester.request("price-in", ModelOutput(request=LISTING, price_category=2))

    assert answer.error == ""
    assert unpack(answer, Response) == Response(
        success=True, message="Predicted market price", market_price="181-400 USD", category="high"
    )
    for field in ZEROS:
        assert influx_server.wait_for_samples(f"features_{field}", 1) == [0], field
    assert influx_server.samples("features_bathrooms") == [1.5]
    assert influx_server.samples("features_tv") == [1]
    (series,) = influx_server.export('{__name__="features_bedrooms"}')
    assert series.labels == {"version": "v1"}  # MEASUREMENT_TAGS' version is the node's, as on KRE v1


async def test_with_protobuf_compat_off_the_old_keyword_is_protobufs_type_error(
    nats_server, start_node, requester, market_price_krt
):
    start_node(args=("--protobuf-compat", "false"),
               **node_env(nats_server, market_price_krt, "src/market_price.py", input="price-in", name="price"))

    answer = await requester.request("price-in", ModelOutput(request=LISTING, price_category=2))

    assert answer.error.startswith("error in node 'price': handler raised TypeError:")
    assert "including_default_value_fields" in answer.error


# -- the layer itself ----------------------------------------------------------------------------


def as_dict(function_name: str, message: Request, **keywords: bool) -> dict:
    """What ``json_format.<function_name>`` makes of ``message``, as a dict (JSON parsed back)."""
    made = getattr(json_format, function_name)(message, preserving_proto_field_name=True, **keywords)
    return json.loads(made) if isinstance(made, str) else made


@pytest.mark.parametrize("keyword", [protobuf_compat.OLD_KEYWORD, protobuf_compat.NEW_KEYWORD])
@pytest.mark.parametrize("function_name", ["MessageToDict", "MessageToJson"])
def test_either_keyword_keeps_the_fields_at_their_default(compat_state, keyword, function_name):
    protobuf_compat.install()
    message = Request(bedrooms=2)

    kept = as_dict(function_name, message, **{keyword: True})
    dropped = as_dict(function_name, message, **{keyword: False})

    assert kept == {**EVERY_FIELD, "bedrooms": 2}
    assert dropped == {"bedrooms": 2}


@pytest.mark.parametrize("name", ["MessageToDict", "MessageToJson"])
def test_installing_twice_wraps_once_and_uninstalling_restores_protobufs_function(compat_state, name):
    protobuf_compat.install()
    protobuf_compat.install()
    wrapped = getattr(json_format, name)

    protobuf_compat.uninstall()

    assert inspect.unwrap(wrapped) is getattr(json_format, name) is wrapped.__wrapped__
    assert not protobuf_compat.installed()
    with pytest.raises(TypeError, match="including_default_value_fields"):
        getattr(json_format, name)(Request(), including_default_value_fields=True)


def test_both_keywords_at_once_are_refused_naming_both(compat_state):
    protobuf_compat.install()

    with pytest.raises(TypeError, match="including_default_value_fields and always_print_fields_with_no_presence"):
        json_format.MessageToDict(Request(), including_default_value_fields=True,
                                  always_print_fields_with_no_presence=True)


# -- testing, serve(), check ---------------------------------------------------------------------


def test_krt_runner_testing_runs_the_sdk_example_with_the_fields_at_their_default(compat_state, market_price_krt):
    with run_node(market_price_krt, "src/market_price.py") as node:
        answer = node.call(ModelOutput(request=LISTING, price_category=0), Response)

    assert answer.market_price == "10-90 EUR" and answer.category == "low"
    (point,) = node.points
    assert point.measurement == "features"
    assert {field: point.fields[field] for field in ZEROS} == dict.fromkeys(ZEROS, 0)
    assert point.fields["prediction"] == "low"


def test_krt_runner_testing_with_protobuf_compat_off_raises_protobufs_type_error(compat_state, market_price_krt):
    with run_node(market_price_krt, "src/market_price.py", protobuf_compat=False) as node, pytest.raises(
        TypeError, match="including_default_value_fields"
    ):
        node.call(ModelOutput(request=LISTING, price_category=0), Response)


def test_serve_points_the_scripts_own_imports_at_the_layer(tmp_path):
    shutil.copy(GREETER_SRC / "greeter_pb2.py", tmp_path / "greeter_pb2.py")
    script = tmp_path / "node.py"
    script.write_text(textwrap.dedent("""
        import json

        from google.protobuf.json_format import MessageToDict   # bound before serve() runs
        from greeter_pb2 import Request, Response

        import krt_runner


        def handler(ctx, req: Request) -> Response:
            return Response(greeting=json.dumps(MessageToDict(req, including_default_value_fields=True)))


        if __name__ == "__main__":
            krt_runner.serve(handler)
    """))
    env = {key: value for key, value in os.environ.items() if not key.startswith("KRT_")}

    done = subprocess.run([sys.executable, str(script), "--request", "{}"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"greeting": '{"name": ""}'}


def test_check_imports_a_module_that_uses_the_old_keyword_when_it_loads(tmp_path):
    krt = tmp_path / "greeter"
    shutil.copytree(ROOT / "examples" / "greeter", krt, ignore=shutil.ignore_patterns("__pycache__", "dist"))
    greet = krt / "src" / "greet.py"
    greet.write_text("from google.protobuf.json_format import MessageToJson\n"
                     "EMPTY = MessageToJson(__import__('greeter_pb2').Request(), including_default_value_fields=True)\n"
                     + greet.read_text())

    done = subprocess.run([*KRT_RUNNER, "check", str(krt)], cwd=tmp_path, capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr


def test_ctx_logger_answers_the_standard_librarys_level_checks_as_kre_v1s_logging_logger_did(tmp_path):
    (tmp_path / "node.py").write_text(textwrap.dedent("""
        import logging
        from google.protobuf.wrappers_pb2 import StringValue

        def init(ctx):
            ctx.logger.setLevel(logging.DEBUG)  # accepted; KRT_LOG_LEVEL decides
            ctx.logger.info("logger %s", ctx.logger.name)

        def handler(ctx, data):
            if ctx.logger.isEnabledFor(logging.DEBUG):
                ctx.logger.debug("detail %s", "costly")
            return StringValue(value=f"{ctx.logger.getEffectiveLevel()} {ctx.logger.isEnabledFor(logging.ERROR)}")
    """))
    with run_node(tmp_path, "node.py") as node:
        answer = node.call(StringValue(value="x"), StringValue)

    assert answer.value.split()[1] == "True"
    assert int(answer.value.split()[0]) <= logging.ERROR


def test_ctx_logger_has_the_attributes_kre_v1_code_reads_and_sets_on_a_logging_logger(tmp_path):
    (tmp_path / "node.py").write_text(textwrap.dedent("""
        from google.protobuf.wrappers_pb2 import StringValue

        def init(ctx):
            ctx.logger.propagate = False  # accepted and left alone, as setLevel
            ctx.logger.addFilter(lambda record: True)
            ctx.logger.removeFilter(None)

        def handler(ctx, data):
            log = ctx.logger
            seen = (log.hasHandlers(), log.level, log.propagate, log.disabled, log.filters, log.handlers)
            return StringValue(value=repr(seen))
    """))
    with run_node(tmp_path, "node.py") as node:
        answer = node.call(StringValue(value="x"), StringValue)

    has_handlers, level, _propagate, disabled, filters, handlers = eval(answer.value)
    assert has_handlers is True and isinstance(level, int) and disabled is False and filters == handlers == []


async def test_a_kre_v1_modules_logging_lines_are_written_and_a_bad_format_fails_no_request(
    nats_server, start_node, requester, tmp_path
):
    # KRE v1's ctx.logger was a logging.Logger, whose % mistakes never raised; and its root logger wrote INFO
    (tmp_path / "chatty.py").write_text(textwrap.dedent("""
        import logging
        log = logging.getLogger(__name__)

        def init(ctx):
            if not ctx.logger.handlers:  # KRE v1 modules added handlers of their own: accepted, the node writes
                ctx.logger.addHandler(logging.StreamHandler())

        def handler(ctx, data):
            ctx.logger.info("user %s scored %d", "ada")  # one argument short
            log.info("module logger line")
            logging.info("root logger line %s", 7)
            ctx.logger.getChild("model").info("child line")
            ctx.logger.getChild("model").getChild("io").info("grandchild line")
            ctx.logger.warning("where am I", stack_info=True)
            ctx.logger.info("with extra", extra={"user": "ada", "event": "not the text"}, stacklevel=2)
            ctx.logger.log(logging.WARNING, "clashing extra", extra={"level": "high", "node": "other", "self": 1,
                                                                      "extra": "mine"})
            logging.LoggerAdapter(ctx.logger, {"method_name": "m"}).info("adapted")
            ctx.logger.info("no extra", extra=None)
            ctx.logger.error(ValueError("an exception as the message"))  # logging writes str(msg)
            ctx.logger.log(logging.ERROR, KeyError("k"))
            ctx.logger.info(Unprintable())  # logging never raises into its caller
            ctx.logger.info("argument %s", Unprintable())
            ctx.logger.info("field", model=Unprintable())
            return data

        class Unprintable:
            def __str__(self):
                raise RuntimeError("no text")

            def __repr__(self):
                raise RuntimeError("no text")
    """))
    node = start_node(**node_env(nats_server, tmp_path, "chatty.py", input="chatty-in", name="chatty"))

    answer = await requester.greet("chatty-in", "Ada")
    node.signal()
    assert node.wait() == 0

    assert answer.error == ""
    lines = {line["event"]: line for line in map(json.loads, node.output.splitlines()) if "event" in line}
    assert lines["user %s scored %d"]["format_error"] == "TypeError: not enough arguments for format string"
    assert lines["module logger line"]["node"] == "chatty" and lines["module logger line"]["logger"] == "chatty"
    assert lines["root logger line 7"]["workflow"] == "test-workflow"
    assert lines["child line"]["logger"] == "krt_runner.model" and lines["child line"]["node"] == "chatty"
    assert lines["grandchild line"]["logger"] == "krt_runner.model.io"
    assert "Stack (most recent call last)" in lines["where am I"]["stack"] and "stack_info" not in lines["where am I"]
    assert lines["with extra"]["user"] == "ada" and lines["with extra"]["extra"] == {"event": "not the text"}
    assert "stacklevel" not in lines["with extra"]
    clashing = lines["clashing extra"]  # the line's own fields kept; the clashing keys kept beside them
    assert (clashing["level"], clashing["node"]) == ("warning", "chatty")
    assert clashing["extra"] == {"level": "high", "node": "other", "self": 1, "extra": "mine"}
    assert lines["adapted"]["extra"] == {"method_name": "m"} and "extra" not in lines["no extra"]
    assert lines["an exception as the message"]["level"] == "error" and "'k'" in lines
    assert any(event.startswith("<chatty.Unprintable object at ") for event in lines)
    assert lines["argument %s"]["format_error"] == "RuntimeError: no text"
    assert lines["field"]["log_error"] == "the line's fields could not be rendered: RuntimeError"
