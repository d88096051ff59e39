"""`krt-runner call` and the client API against real nodes on a real nats-server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import nats
import pytest
from conftest import KRT_RUNNER, ROOT, NodeProcess, greeter_pb2, node_env

from krt_runner.client import (
    BlockingClient,
    CallTimeout,
    Client,
    ClientConnectError,
    ErrorAnswer,
    NoResponders,
    UnexpectedAnswer,
    request_envelope,
)
from krt_runner.errors import KrtRunnerError, NotConnected, ProtoError
from krt_runner.krt.protos import load_file, select_types
from krt_runner.local_krt.call import percentile, summary
from krt_runner.local_krt.embedded import EmbeddedNats, free_port

GREETER = ROOT / "examples" / "greeter"
HANDLERS = ROOT / "tests" / "handlers"
GREETER_PB2 = str(GREETER / "src" / "greeter_pb2.py")
ECHO_TYPES = ("--proto", GREETER_PB2, "--request-type", "Request", "--response-type", "greeter.Request")


@pytest.fixture(scope="module")
def nodes(tmp_path_factory) -> Iterator[tuple[EmbeddedNats, str, str]]:
    """One nats-server with the greeter's two nodes and an echo node, shared by this module's tests.

    greeter: the example's workflow, wired as krt.yml says. echo: tests/handlers/behaviours.py,
    where "boom" fails, "sleep:S" sleeps and anything else is echoed.
    """
    cwd = tmp_path_factory.mktemp("nodes")
    env = {key: value for key, value in os.environ.items() if not key.startswith("KRT_")}
    env.update({"KRT_LOG_FORMAT": "json", "KRT_MEASUREMENTS_ENABLED": "false"})
    with EmbeddedNats() as server:
        started = [
            NodeProcess([*KRT_RUNNER, "run"], {**env, **node_env(server, *args, **extra)}, cwd=cwd)
            for args, extra in [
                ((GREETER, "src/greet.py"), {"input": "g-in", "output": "g-mid", "name": "greet"}),
                ((GREETER, "src/decorate.py"), {"input": "g-mid", "name": "decorate"}),
                ((HANDLERS, "behaviours.py"), {"input": "echo", "name": "echo", "KRT_CONCURRENCY": "4"}),
            ]
        ]
        try:
            for node in started:
                node.wait_for_line('"node ready"')
            yield server, "g-in", "echo"
        finally:
            for node in started:
                node.stop()


@pytest.fixture
def nats_server(nodes) -> EmbeddedNats:
    return nodes[0]


@pytest.fixture
def greeter(nodes) -> str:
    return nodes[1]


@pytest.fixture
def echo(nodes) -> str:
    return nodes[2]


def call(nats_server, subject: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [*KRT_RUNNER, "call", subject, "--nats", nats_server.url, *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)


# -- krt-runner call ------------------------------------------------------------------------------


def test_call_prints_the_answer_as_json(nats_server, greeter):
    done = call(nats_server, greeter, "--proto", GREETER_PB2, "--method", "Greet", "--request", '{"name": "Ada"}')

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"greeting": "** Hello, Ada! **"}


def test_call_on_a_full_or_closed_stdout_says_so_and_fails(nats_server, greeter):
    command = [*KRT_RUNNER, "call", greeter, "--nats", nats_server.url, "--proto", GREETER_PB2, "--method", "Greet",
               "--request", '{"name": "Ada"}']
    with open("/dev/full", "w") as full:
        on_full = subprocess.run(command, cwd=ROOT, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    closed = subprocess.run(["sh", "-c", '"$@" >&-', "sh", *command], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    up = subprocess.run(["sh", "-c", '"$@" >&-', "sh", *KRT_RUNNER, "up", "examples/greeter", "--request", "{}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=60)

    assert on_full.returncode == 1 and on_full.stderr.strip() == \
        "krt-runner call: cannot write to stdout: No space left on device"
    assert closed.returncode == 2 and "krt-runner call: stdout is closed: the answer would be lost" in closed.stderr
    assert up.returncode == 2 and "krt-runner up: stdout is closed: the answer would be lost" in up.stderr


def test_call_compiles_a_proto_file_on_the_fly(nats_server, greeter):
    pytest.importorskip("grpc_tools")
    proto = str(GREETER / "proto" / "greeter.proto")

    done = call(nats_server, greeter, "--proto", proto, "--request", '{"name": "Lin"}')

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"greeting": "** Hello, Lin! **"}


def test_call_takes_a_nested_type_by_its_name_in_the_package_or_its_full_name(tmp_path):
    pytest.importorskip("grpc_tools")
    proto = tmp_path / "nested.proto"
    proto.write_text('syntax = "proto3";\npackage shop;\nmessage Outer { message Inner { string name = 1; } }\n')
    file = load_file(str(proto))

    for name in ("Outer.Inner", "shop.Outer.Inner"):
        types = select_types(file, request=name, response=name)

        assert types.request.DESCRIPTOR.full_name == types.response.DESCRIPTOR.full_name == "shop.Outer.Inner"
    with pytest.raises(ProtoError, match=r"no message 'Outer\.Missing' in nested\.proto"):
        select_types(file, request="Outer.Missing", response="Outer")


def test_call_prints_an_error_answer_and_exits_1(nats_server, echo):
    done = call(nats_server, echo, *ECHO_TYPES, "--request", '{"name": "boom"}')

    assert done.returncode == 1
    assert "error in node 'echo': handler raised ValueError: boom requested" in done.stderr
    assert done.stdout == ""


def test_call_exits_1_with_a_clear_message_on_a_timeout(nats_server, echo):
    done = call(nats_server, echo, *ECHO_TYPES, "--request", '{"name": "sleep:1"}', "--timeout", "0.3")

    assert done.returncode == 1
    assert "no answer on 'echo' within 0.3s" in done.stderr


def test_call_exits_1_when_no_node_listens(nats_server):
    done = call(nats_server, "nobody-here", *ECHO_TYPES)

    assert done.returncode == 1
    assert "no node listens on 'nobody-here'" in done.stderr


@pytest.mark.parametrize("url", ["nats://127.0.0.1:598850", "http://127.0.0.1:4222"])
def test_call_refuses_a_url_that_is_not_a_nats_url_with_exit_2_in_one_line(url):
    done = subprocess.run([*KRT_RUNNER, "call", "any", "--nats", url, *ECHO_TYPES], capture_output=True, text=True,
                          timeout=60)

    assert done.returncode == 2
    assert done.stderr.startswith("krt-runner call: --nats (KRT_NATS_SERVER): ") and done.stderr.count("\n") == 1


def test_call_rejects_a_request_that_does_not_fit_its_type_with_exit_2(nats_server):
    done = call(nats_server, "any", "--proto", GREETER_PB2, "--method", "Greet", "--request", '{"nom": "x"}')

    assert done.returncode == 2
    assert "not a valid greeter.Request" in done.stderr and "nom" in done.stderr


def test_call_repeat_with_concurrency_prints_a_latency_summary(nats_server, greeter):
    done = call(nats_server, greeter, "--proto", GREETER_PB2, "--repeat", "200", "--concurrency", "8")

    assert done.returncode == 0, done.stderr
    first, second = done.stdout.strip().splitlines()
    assert first.startswith("200 requests in ") and "200 answered, 0 error answers, 0 timeouts" in first
    assert "requests/s" in first
    assert second.startswith("latency ms (answered): p50 ") and " p90 " in second and " p99 " in second


def test_call_repeat_counts_error_answers_and_exits_1(nats_server, echo):
    done = call(nats_server, echo, *ECHO_TYPES, "--request", '{"name": "boom"}', "--repeat", "5")

    assert done.returncode == 1
    assert "5 requests in" in done.stdout and "0 answered, 5 error answers" in done.stdout
    assert "first failure: error in node 'echo'" in done.stderr


def test_percentiles_use_the_nearest_rank():
    values = [float(v) for v in range(1, 101)]

    assert [percentile(values, p) for p in (50, 90, 99, 100)] == [50.0, 90.0, 99.0, 100.0]
    assert percentile([7.0], 99) == 7.0
    assert summary([], Counter(timeouts=2), 1.0).startswith("2 requests in 1.00s (2.0 requests/s): 0 answered")


# -- the client API -------------------------------------------------------------------------------


def test_a_request_looks_like_a_kre_v1_entrypoint_request():
    first = request_envelope(greeter_pb2.Request(name="x"))
    second = request_envelope(greeter_pb2.Request(name="x"))

    assert first.tracking_id != second.tracking_id
    assert [entry.node_name for entry in first.tracking] == ["entrypoint"]
    assert first.tracking[0].start <= first.tracking[0].end
    assert first.payload.Is(greeter_pb2.Request.DESCRIPTOR)


async def test_many_calls_in_flight_on_one_connection_each_get_their_own_answer(nats_server, greeter):
    async with await Client.connect(nats_server.url) as client:
        names = [f"caller-{i}" for i in range(500)]

        answers = await asyncio.gather(
            *(client.call(greeter, greeter_pb2.Request(name=n), greeter_pb2.Response, timeout=20) for n in names)
        )

    assert [a.greeting for a in answers] == [f"** Hello, {n}! **" for n in names]


async def test_the_raw_answer_carries_the_tracking_of_every_node(nats_server, greeter):
    async with await Client.connect(nats_server.url) as client:
        answer = await client.call_raw(greeter, greeter_pb2.Request(name="t"))

    assert [entry.node_name for entry in answer.tracking] == ["entrypoint", "greet", "decorate"]


async def test_an_error_answer_raises_error_answer_with_the_tracking_id(nats_server, echo):
    async with await Client.connect(nats_server.url) as client:
        with pytest.raises(ErrorAnswer) as caught:
            await client.call(echo, greeter_pb2.Request(name="boom"), greeter_pb2.Request)

    assert isinstance(caught.value, KrtRunnerError)
    assert "boom requested" in caught.value.error and caught.value.tracking_id


async def test_a_slow_answer_raises_call_timeout_and_the_client_keeps_working(nats_server, echo):
    async with await Client.connect(nats_server.url) as client:
        with pytest.raises(CallTimeout):
            await client.call(echo, greeter_pb2.Request(name="sleep:1"), greeter_pb2.Request, timeout=0.2)
        answer = await client.call(echo, greeter_pb2.Request(name="after"), greeter_pb2.Request, timeout=5)

    assert answer.name == "after>echo"


async def test_no_listener_raises_no_responders_and_a_wrong_type_unexpected_answer(nats_server, echo):
    async with await Client.connect(nats_server.url) as client:
        with pytest.raises(NoResponders):
            await client.call("nobody", greeter_pb2.Request(), greeter_pb2.Response, timeout=2)
        with pytest.raises(UnexpectedAnswer, match=r"answer is greeter\.Request, not the expected greeter\.Response"):
            await client.call(echo, greeter_pb2.Request(name="x"), greeter_pb2.Response)


async def test_connecting_to_no_server_fails_fast_with_a_typed_error():
    started = time.monotonic()

    with pytest.raises(ClientConnectError, match=r"cannot connect to NATS at nats://127\.0\.0\.1:"):
        await Client.connect(f"nats://127.0.0.1:{free_port()}", connect_timeout=1)

    assert time.monotonic() - started < 5


async def test_a_port_that_takes_the_connection_and_says_nothing_is_named_as_no_nats_server():
    listener = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel's backlog), never sends NATS's INFO
    try:
        with pytest.raises(ClientConnectError, match=r"no NATS server answered within 0\.5s \(does something else "
                                                     r"listen there\?\)"):
            await Client.connect(f"nats://127.0.0.1:{listener.getsockname()[1]}", connect_timeout=0.5)
    finally:
        listener.close()


def test_the_blocking_client_serves_many_threads_at_once(nats_server, greeter):
    with BlockingClient(nats_server.url) as client, ThreadPoolExecutor(max_workers=8) as pool:
        names = [f"thread-{i}" for i in range(100)]

        answers = list(
            pool.map(lambda n: client.call(greeter, greeter_pb2.Request(name=n), greeter_pb2.Response), names)
        )

    assert [a.greeting for a in answers] == [f"** Hello, {n}! **" for n in names]


async def test_a_default_client_calling_a_subject_a_jetstream_stream_takes_is_told_to_call_at_least_once():
    with EmbeddedNats(jetstream=True) as server:
        nc = await nats.connect(server.url)
        await nc.jetstream().add_stream(name="STORED", subjects=["stored-in"])
        await nc.close()
        async with await Client.connect(server.url) as client:
            with pytest.raises(UnexpectedAnswer, match="its workflow runs at-least-once; call it with delivery="):
                await client.call("stored-in", greeter_pb2.Request(name="x"), greeter_pb2.Response)


async def test_a_closed_client_says_so_with_a_call_error(nats_server):
    client = await Client.connect(nats_server.url)
    await client.close()
    blocking = BlockingClient(nats_server.url)
    blocking.close()

    with pytest.raises(NotConnected, match="this client is closed"):
        await client.call("any", greeter_pb2.Request(), greeter_pb2.Response)
    with pytest.raises(NotConnected, match="this client is closed"):
        blocking.call("any", greeter_pb2.Request(), greeter_pb2.Response)


@pytest.mark.parametrize(("request_", "timeout", "error", "text"), [
    ("Ada", 5, TypeError, "a request is a protobuf message (such as the workflow's request type), not str"),
    ({"name": "Ada"}, 5, TypeError, "not dict"),
    (greeter_pb2.Request(name="Ada"), "5", TypeError, "timeout is a number of seconds, not str"),
    (greeter_pb2.Request(name="Ada"), -1, ValueError, "timeout must be above 0 seconds, not -1"),
])
def test_a_call_with_a_request_or_timeout_of_the_wrong_kind_is_refused_before_anything_is_sent(
    nats_server, request_, timeout, error, text
):
    client = BlockingClient(nats_server.url)
    try:
        with pytest.raises(error, match=re.escape(text)):
            client.call("nobody-listens", request_, greeter_pb2.Response, timeout=timeout)
    finally:
        client.close()
