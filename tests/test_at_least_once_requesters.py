"""Everything that sends requests speaks at-least-once: up, call, the Python client, local() and connect(), and
the gRPC entrypoint; and the client's own part of the guarantee (a second answer ignored)."""

from __future__ import annotations

import asyncio
import io
import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import nats
import pytest
from conftest import KRT_RUNNER, ROOT, NodeProcess, greeter_pb2, node_env
from entrypoint_helpers import GREET_SUBJECT, entrypoint_env, greet_call, start_entrypoint, write_krt
from up_helpers import leftovers, run_up, up_env

import krt_runner
from krt_runner.client import Client
from krt_runner.envelope import KreNatsMessage
from krt_runner.errors import NoResponders, UnexpectedAnswer
from krt_runner.local_krt.embedded import EmbeddedNats
from krt_runner.local_krt.running_krt import RunningKrt

GREETER = ROOT / "examples" / "greeter"
SUBJECT = "greeter-v1-Greet-entrypoint"
NO_MEASUREMENTS = {"KRT_MEASUREMENTS_ENABLED": "false"}


def test_up_with_delivery_at_least_once_answers_a_request_and_removes_its_jetstream_store(tmp_path):
    marker = uuid.uuid4().hex

    done = run_up(str(GREETER), "--delivery", "at-least-once", "--request", '{"name": "Ada"}', cwd=tmp_path,
                  marker=marker)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"greeting": "** Hello, Ada! **"}
    store = re.search(r"nats-server on \S+ \(JetStream, its store in (\S+)\)", done.stderr)
    assert store, done.stderr
    assert not Path(store.group(1)).exists()
    assert len(re.findall(r"\| .* pulling stream=KRT_", done.stderr)) == 2, "both nodes take their input from a stream"
    assert leftovers(marker) == []


@pytest.fixture(scope="module")
def krt(tmp_path_factory) -> Iterator[RunningKrt]:
    """The greeter under local(), every node, the entrypoint and submit() at-least-once."""
    output = io.StringIO()
    with krt_runner.local(GREETER, env=NO_MEASUREMENTS, output=output, delivery="at-least-once") as running:
        running.output = output  # type: ignore[attr-defined]  # for the tests' assertions
        yield running


def test_local_at_least_once_runs_every_node_and_the_entrypoint_in_that_mode_and_submit_is_answered(krt):
    answer = krt.workflow("greet").submit({"name": "local"}).result(30)

    assert answer.greeting == "** Hello, local! **"
    text = krt.output.getvalue()
    assert re.search(r"^greet +\| .* pulling stream=KRT_greeter-v1-Greet-entrypoint", text, re.MULTILINE)
    assert re.search(r"^entrypoint +\| .* entrypoint ready .*delivery=at-least-once", text, re.MULTILINE)


def test_call_with_delivery_at_least_once_is_answered(krt):
    command = [*KRT_RUNNER, "call", SUBJECT, "--nats", krt.url, "--proto", str(GREETER / "proto" / "greeter.proto"),
               "--request", '{"name": "call"}', "--delivery", "at-least-once"]

    done = subprocess.run(command, env=up_env("none"), capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"greeting": "** Hello, call! **"}


def test_the_grpc_entrypoint_at_least_once_is_answered(krt):
    with grpc.insecure_channel(krt.grpc_address) as channel:
        answer = greet_call(channel)(greeter_pb2.Request(name="grpc"), timeout=30)

    assert answer.greeting == "** Hello, grpc! **"


def test_connect_at_least_once_to_a_running_krt_is_answered(krt):
    with krt_runner.connect(krt.url, GREETER, delivery="at-least-once") as attached:
        answer = attached.workflow("greet").submit(greeter_pb2.Request(name="connect")).result(30)

    assert answer.greeting == "** Hello, connect! **"


@pytest.fixture
def js_server() -> Iterator[EmbeddedNats]:
    with EmbeddedNats(jetstream=True) as server:
        yield server


async def test_the_client_returns_the_first_answer_and_ignores_a_second_for_the_same_request(js_server):
    nc = await nats.connect(js_server.url)
    js = nc.jetstream()
    await js.add_stream(name="DUP", subjects=["dup-in"])
    pulled = await js.pull_subscribe("dup-in", "dup")
    client = await Client.connect(js_server.url, delivery="at-least-once")
    calling = asyncio.ensure_future(client.call("dup-in", greeter_pb2.Request(name="x"), greeter_pb2.Request))

    [msg] = await pulled.fetch(1, timeout=10)
    request = KreNatsMessage.FromString(msg.data)
    for name in ("first", "second"):  # as a handler that ran twice would answer
        answer = KreNatsMessage(tracking_id=request.tracking_id)
        answer.payload.Pack(greeter_pb2.Request(name=name))
        await nc.publish(request.reply, answer.SerializeToString())
    result = await calling
    await nc.flush()
    await asyncio.sleep(0.2)

    assert result.name == "first"
    assert client.ignored_answers == 1
    assert msg.headers["Nats-Msg-Id"] == request.tracking_id and request.reply.startswith("_INBOX.")
    await client.close()
    await nc.close()


async def test_the_client_says_no_responders_when_no_stream_captures_the_subject(js_server):
    client = await Client.connect(js_server.url, delivery="at-least-once")

    with pytest.raises(NoResponders, match="no JetStream stream took 'nowhere': none captures it"):
        await client.call("nowhere", greeter_pb2.Request(name="x"), greeter_pb2.Request, timeout=5)
    await client.close()


async def test_an_unknown_delivery_mode_is_refused():
    with pytest.raises(ValueError, match="delivery must be one of at-most-once, at-least-once"):
        await Client.connect("nats://127.0.0.1:1", delivery="exactly-once")


def test_an_at_least_once_entrypoint_on_a_server_without_jetstream_stops_start_up_with_exit_2(tmp_path):
    krt = write_krt(tmp_path / "krt")
    with EmbeddedNats() as server:
        env = entrypoint_env(server, KRT_DELIVERY="at-least-once")
        done = subprocess.run([*KRT_RUNNER, "entrypoint", str(krt)], env=env, capture_output=True, text=True,
                              timeout=60)

    assert done.returncode == 2, done.stderr
    assert "the NATS server has no JetStream, which at-least-once delivery needs" in done.stderr + done.stdout
    assert "entrypoint ready" not in done.stderr + done.stdout


async def test_an_at_most_once_entrypoint_calling_an_at_least_once_workflow_says_so(tmp_path):
    krt = write_krt(tmp_path / "krt")
    with EmbeddedNats(jetstream=True) as server:
        nc = await nats.connect(server.url)
        await nc.jetstream().add_stream(name="STORED", subjects=[GREET_SUBJECT])  # as at-least-once nodes make it
        await nc.close()
        process, address = start_entrypoint(krt, server)
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await greet_call(channel)(greeter_pb2.Request(name="x"), timeout=10)
        finally:
            process.stop()

    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "runs at-least-once; start the entrypoint with KRT_DELIVERY=at-least-once" in caught.value.details()


async def test_an_at_least_once_entrypoint_and_client_calling_an_at_most_once_workflow_say_so(tmp_path):
    krt = write_krt(tmp_path / "krt")
    with EmbeddedNats(jetstream=True) as server:  # no stream: the at-most-once node answers the publish itself
        node = NodeProcess([*KRT_RUNNER, "run"], node_env(server, krt, "src/node.py", input=GREET_SUBJECT,
                                                          name="greet"), cwd=krt)
        process, address = start_entrypoint(krt, server, KRT_DELIVERY="at-least-once")
        try:
            node.wait_for_line("node ready")
            async with grpc.aio.insecure_channel(address) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await greet_call(channel)(greeter_pb2.Request(name="x"), timeout=10)
            client = await Client.connect(server.url, delivery="at-least-once")
            with pytest.raises(UnexpectedAnswer, match="runs at-most-once") as refused:
                await client.call(GREET_SUBJECT, greeter_pb2.Request(name="y"), greeter_pb2.Response, timeout=5)
            with pytest.raises(UnexpectedAnswer, match="did not answer the publish in time"):  # slower than 2 s
                await client.call(GREET_SUBJECT, greeter_pb2.Request(name="sleep:3"), greeter_pb2.Response,
                                  timeout=10)
            await client.close()
        finally:
            process.stop()
            node.stop()

    assert caught.value.code() == grpc.StatusCode.INTERNAL, caught.value.details()
    assert f"a node took the request on {GREET_SUBJECT!r}, not a JetStream stream" in caught.value.details()
    assert "JSONDecodeError" not in process.output and "Traceback" not in process.output
    assert "send it at-most-once too" in str(refused.value)


def test_leaving_an_at_least_once_local_block_does_not_wait_for_requests_whose_futures_failed(tmp_path):
    krt = tmp_path / "slow-last"
    shutil.copytree(GREETER, krt, ignore=shutil.ignore_patterns("__pycache__", "dist"))
    decorate = krt / "src" / "decorate.py"
    slow = decorate.read_text().replace("    response = Response()", "    time.sleep(0.5)\n    response = Response()")
    decorate.write_text("import time\n" + slow)
    output = io.StringIO()
    with krt_runner.local(krt, delivery="at-least-once", output=output, grpc_port=None) as running:
        futures = [running.workflow("greet").submit({"name": f"n{i}"}) for i in range(30)]
        futures[0].result(timeout=60)
        leaving = time.monotonic()

    assert time.monotonic() - leaving < 15  # the drain of the request in flight, not 29 stored ones at 0.5 s each
    assert "requests stored for it" not in output.getvalue()
    assert sum(future.exception() is not None for future in futures) > 20
