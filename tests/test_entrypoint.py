"""`krt-runner entrypoint`: real gRPC clients, a real nats-server, a real node behind it."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import time

import grpc
import pytest
from conftest import KRT_RUNNER, greeter_pb2, node_env
from entrypoint_helpers import (
    GREET_SUBJECT,
    SERVICE_PROTO,
    entrypoint_env,
    greet_call,
    run_entrypoint,
    start_entrypoint,
    tracking_id,
    write_krt,
)
from google.protobuf import descriptor_pool
from google.protobuf.descriptor_pb2 import FileDescriptorProto
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase


@pytest.fixture
def krt(tmp_path):
    return write_krt(tmp_path / "krt")


@pytest.fixture
def greet_node(nats_server, start_node, krt):
    return start_node(**node_env(nats_server, krt, "src/node.py", input=GREET_SUBJECT, name="greet"))


@pytest.fixture
def entrypoint(nats_server, krt):
    started = []

    def start(**extra: str):
        process, address = start_entrypoint(krt, nats_server, **extra)
        started.append(process)
        return process, address

    yield start
    for process in started:
        process.stop()


async def call(address: str, name: str, *, timeout: float | None = 10, rpc: str = "Greet"):
    """The response and the call (for its trailing metadata)."""
    async with grpc.aio.insecure_channel(address) as channel:
        done = greet_call(channel, rpc)(greeter_pb2.Request(name=name), timeout=timeout)
        return await done, done


async def failure(address: str, name: str, **options) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call(address, name, **options)
    return failed.value


async def test_a_call_is_answered_by_the_workflow_with_the_tracking_id_in_the_trailing_metadata(
    greet_node, entrypoint
):
    process, address = entrypoint()

    response, done = await call(address, "Ada")

    assert response.greeting == "Hello, Ada!"
    assert len(tracking_id(await done.trailing_metadata())) == 36  # a uuid4, as KRE v1's entrypoint made
    assert "greeter.Entrypoint/Greet -> ep-v1-Greet-entrypoint" in process.output


async def test_at_debug_a_call_has_a_line_when_it_comes_in_and_one_when_it_is_answered(greet_node, entrypoint):
    process, address = entrypoint(KRT_LOG_LEVEL="debug")

    _, done = await call(address, "Ada")

    sent = tracking_id(await done.trailing_metadata())
    process.wait_for_line('"call answered"')
    lines = [json.loads(line) for line in process.lines if sent in line]
    assert [line["event"] for line in lines] == ["call received", "call answered"]
    assert lines[0]["rpc"] == "Greet" and lines[0]["workflow"] == "greet"


def test_grpcios_error_for_a_status_its_gone_client_cannot_get_is_not_logged():
    from grpc._cython.cygrpc import ExecuteBatchError

    from krt_runner.entrypoint.server import _ClientGone

    def record(exc: BaseException | None) -> logging.LogRecord:
        info = (type(exc), exc, None) if exc else None
        return logging.LogRecord("grpc._cython.cygrpc", logging.ERROR, __file__, 1, "raised by servicer", (), info)

    assert not _ClientGone().filter(record(ExecuteBatchError("Failed execute_batch")))
    assert _ClientGone().filter(record(RuntimeError("another error"))) and _ClientGone().filter(record(None))


async def test_a_burst_of_thousands_of_calls_at_once_is_answered_in_full(greet_node, entrypoint):
    _, address = entrypoint()

    async with grpc.aio.insecure_channel(address) as channel:
        greet = greet_call(channel)
        answers = await asyncio.gather(*(greet(greeter_pb2.Request(name=str(n)), timeout=60) for n in range(3000)),
                                       return_exceptions=True)

    failed = [answer for answer in answers if isinstance(answer, BaseException)]
    assert not failed, (len(failed), failed[0])  # grpc core's own limits cancelled some (2 to 9%) before
    assert [answer.greeting for answer in answers] == [f"Hello, {n}!" for n in range(3000)]


async def test_an_error_answer_is_internal_with_its_text_and_the_tracking_id_of_the_nodes_log(greet_node, entrypoint):
    _, address = entrypoint()

    error = await failure(address, "boom")

    assert error.code() == grpc.StatusCode.INTERNAL
    assert "boom requested" in error.details()
    sent = tracking_id(error.trailing_metadata())
    greet_node.wait_for_line(sent)
    assert any(sent in line and "boom requested" in line for line in greet_node.lines)


async def test_a_slow_workflow_is_deadline_exceeded_after_the_request_timeout(greet_node, entrypoint):
    _, address = entrypoint(KRT_REQUEST_TIMEOUT="0.5")
    started = time.monotonic()

    error = await failure(address, "sleep:3")

    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "did not answer within 0.5s" in error.details()
    assert time.monotonic() - started < 2.5
    assert tracking_id(error.trailing_metadata())


async def test_a_short_client_deadline_shortens_the_nats_timeout(greet_node, entrypoint):
    _, address = entrypoint()  # KRT_REQUEST_TIMEOUT 30
    started = time.monotonic()

    error = await failure(address, "sleep:3", timeout=0.5)

    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2.5
    response, _ = await call(address, "after")  # the entrypoint is not stuck on the abandoned request
    assert response.greeting == "Hello, after!"


async def test_no_node_subscribed_is_unavailable_naming_the_workflow(greet_node, entrypoint):
    _, address = entrypoint()

    error = await failure(address, "x", rpc="Absent")

    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "no node of workflow 'absent' listens on 'ep-v1-Absent-entrypoint'" in error.details()


async def test_a_request_too_large_even_compressed_is_resource_exhausted(greet_node, entrypoint):
    import base64
    import os

    _, address = entrypoint()
    incompressible = base64.b64encode(os.urandom(2 * 1024 * 1024)).decode()  # ~2.7 MB, gzip keeps ~2 MB

    error = await failure(address, incompressible)

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max payload of 1048576" in error.details()
    response, _ = await call(address, "x" * 3_000_000)  # as large, but compressible: gzip makes it fit
    assert response.greeting.startswith("Hello, xxx")


async def test_an_answer_of_the_wrong_type_is_internal_naming_both_types(greet_node, entrypoint):
    _, address = entrypoint()

    error = await failure(address, "wrongtype")

    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "the workflow answered greeter.Request, not the rpc's response type greeter.Response"


async def test_answer_bytes_that_are_not_the_response_type_are_internal_not_passed_on(greet_node, entrypoint):
    _, address = entrypoint()

    error = await failure(address, "badbytes")

    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details().startswith("the workflow's answer is not a valid greeter.Response: ")
    assert tracking_id(error.trailing_metadata())


async def test_request_bytes_that_are_not_the_request_type_are_invalid_argument(greet_node, entrypoint):
    _, address = entrypoint()

    async with grpc.aio.insecure_channel(address) as channel:
        raw = channel.unary_unary("/greeter.Entrypoint/Greet")
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await raw(b"\xff\xff\xff", timeout=10)

    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_reflection_lists_the_service_and_health_follows_the_nats_connection(nats_server, entrypoint):
    _, address = entrypoint(KRT_NATS_RECONNECT_WAIT="0.2")
    with grpc.insecure_channel(address) as channel:
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
        described = ProtoReflectionDescriptorDatabase(channel).FindFileContainingSymbol("greeter.Entrypoint")
        health = health_pb2_grpc.HealthStub(channel)

        def status(service: str = "") -> int:
            return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

        assert {"greeter.Entrypoint", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= set(
            services
        )
        assert [method.name for method in described.service[0].method] == ["Greet", "Absent"]
        assert status() == status("greeter.Entrypoint") == health_pb2.HealthCheckResponse.SERVING

        nats_server.stop()
        await wait_for(lambda: status() == health_pb2.HealthCheckResponse.NOT_SERVING)
        assert status("greeter.Entrypoint") == health_pb2.HealthCheckResponse.NOT_SERVING
        error = await failure(address, "while down")
        assert error.code() == grpc.StatusCode.UNAVAILABLE

        nats_server.start()
        await wait_for(lambda: status() == health_pb2.HealthCheckResponse.SERVING)


def test_reflection_answers_under_v1_too_and_describes_it(nats_server, entrypoint):
    # v1 and v1alpha are one protocol under two package names: v1alpha's messages are v1's bytes
    _, address = entrypoint()
    with grpc.insecure_channel(address) as channel:
        v1 = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        listed, described, entrypoint_file = v1(iter([
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.reflection.v1.ServerReflection"),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="greeter.Entrypoint"),
        ]), timeout=10)

    names = {service.name for service in listed.list_services_response.service}
    assert {"greeter.Entrypoint", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection",
            "grpc.health.v1.Health"} <= names
    pool = descriptor_pool.DescriptorPool()
    for file in described.file_descriptor_response.file_descriptor_proto:
        pool.Add(FileDescriptorProto.FromString(file))
    method = pool.FindServiceByName("grpc.reflection.v1.ServerReflection").methods_by_name["ServerReflectionInfo"]
    assert method.input_type.full_name == "grpc.reflection.v1.ServerReflectionRequest"
    assert method.input_type.fields_by_name["list_services"].number == 7
    assert entrypoint_file.file_descriptor_response.file_descriptor_proto


def test_a_second_entrypoint_on_a_port_one_already_serves_exits_1_instead_of_sharing_it(nats_server, entrypoint, krt):
    # grpcio's default SO_REUSEPORT would let it bind, and clients would be split between the two
    _, address = entrypoint()
    port = address.rsplit(":", 1)[1]
    env = entrypoint_env(nats_server, KRT_ENTRYPOINT_PORT=port)

    second = subprocess.run([*KRT_RUNNER, "entrypoint", str(krt)], env=env, capture_output=True, text=True,
                            timeout=60)

    assert second.returncode == 1, second.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in second.stderr


async def wait_for(condition, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_sigterm_refuses_new_calls_and_answers_every_call_in_flight_then_exits_0(
    nats_server, start_node, krt, entrypoint
):
    start_node(**node_env(nats_server, krt, "src/node.py", input=GREET_SUBJECT, KRT_CONCURRENCY="32"))
    process, address = entrypoint()
    async with grpc.aio.insecure_channel(address) as channel:
        greet = greet_call(channel)
        calls = [asyncio.ensure_future(greet(greeter_pb2.Request(name="sleep:3"), timeout=30)) for _ in range(20)]
        await taken_by_the_node(nats_server.url, 20)  # every call is inside the workflow, however busy the machine
        process.signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait_for_line, '"stopping: draining calls in flight"')
        late = await failure(address, "late", timeout=10)

        answers = await asyncio.gather(*calls, return_exceptions=True)

    failed = [answer for answer in answers if isinstance(answer, Exception)]
    assert not failed, f"{len(failed)} calls failed, the first: {failed[0]!r}\nentrypoint:\n{process.output}"
    assert [answer.greeting for answer in answers] == ["Hello, sleep:3!"] * 20
    assert late.code() == grpc.StatusCode.UNAVAILABLE, late.details()
    assert await asyncio.to_thread(process.wait, 30) == 0
    assert '"entrypoint stopped"' in process.output


async def taken_by_the_node(url: str, count: int, timeout: float = 20) -> None:
    """Until the node says (NATS services stats) it has taken ``count`` requests."""
    import json

    import nats

    nc = await nats.connect(url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            reply = await nc.request("$SRV.STATS", b"", timeout=5)
            if json.loads(reply.data)["endpoints"][0]["num_requests"] >= count:
                return
            assert time.monotonic() < deadline, "the node did not take every call"
            await asyncio.sleep(0.05)
    finally:
        await nc.close()


@pytest.mark.parametrize(
    ("proto", "workflows", "expected"),
    [
        (SERVICE_PROTO.replace("service Entrypoint", "service Other"), ("Greet", "Absent"),
         "proto/svc.proto has no service Entrypoint (services: Other)"),
        (SERVICE_PROTO.replace("rpc Absent (Request)", "rpc Absent (stream Request)"), ("Greet", "Absent"),
         "rpc Entrypoint.Absent is streaming: the entrypoint serves unary rpcs only"),
        (SERVICE_PROTO, ("Greet",), "rpc Entrypoint.Absent matches no workflow's entrypoint in krt.yml"),
    ],
    ids=["no-entrypoint-service", "streaming-rpc", "rpc-without-workflow"],
)
def test_start_up_refuses_a_proto_it_cannot_serve_with_exit_2_naming_the_rpc(tmp_path, proto, workflows, expected):
    krt = write_krt(tmp_path / "krt", proto=proto, workflows=workflows)

    done = run_entrypoint(krt)
    checked = subprocess.run([*KRT_RUNNER, "check", str(krt)], env=entrypoint_env(None), capture_output=True,
                             text=True, timeout=120)

    assert done.returncode == 2, done.stderr
    assert expected in done.stderr
    assert checked.returncode == 0, checked.stderr  # up runs such a KRT, without its entrypoint
    assert f"krt-runner check: warning: krt-runner entrypoint would refuse this KRT: {expected}" in checked.stderr


@pytest.mark.parametrize(("setting", "value", "expected"), [
    ("KRT_VERSION", "bad version", "rpc Greet's subject: 'bad version-Greet-entrypoint' is not a NATS subject"),
    ("KRT_NATS_SUBJECTS_FILE", {"Greet": "greet.*", "Absent": "absent"}, "rpc Greet's subject: 'greet.*' is not a"),
])
def test_an_rpc_subject_no_call_could_be_published_to_stops_start_up_with_exit_2(krt, tmp_path, setting, value,
                                                                                 expected):
    if isinstance(value, dict):
        (tmp_path / "subjects.json").write_text(json.dumps(value))
        value = str(tmp_path / "subjects.json")
    env = entrypoint_env(None, KRT_NATS_SERVER="nats://127.0.0.1:1", **{setting: value})

    done = subprocess.run([*KRT_RUNNER, "entrypoint", str(krt)], env=env, capture_output=True, text=True, timeout=60)

    assert done.returncode == 2, done.stderr
    assert expected in done.stderr


def test_without_the_entrypoint_extra_the_command_says_what_to_install_with_exit_2(krt):
    hide_grpc = ("import sys\nfor name in ('grpc', 'grpc_tools', 'grpc_reflection', 'grpc_health'):\n"
                 "    sys.modules[name] = None\nfrom krt_runner.cli import main\n"
                 f"sys.exit(main(['entrypoint', {str(krt)!r}]))")

    done = subprocess.run([sys.executable, "-c", hide_grpc], env=entrypoint_env(None), capture_output=True,
                          text=True, timeout=60)

    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == ("krt-runner entrypoint: it needs the entrypoint extra: pip install "
                                   "'krt-runner[entrypoint]' (in a clone: '.[entrypoint]')")


async def test_an_open_health_watch_does_not_hold_up_a_stop_with_no_call_in_flight(nats_server, entrypoint):
    process, address = entrypoint()
    async with grpc.aio.insecure_channel(address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        first = await watch.read()
        signalled = time.monotonic()
        process.signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 25)
        took = time.monotonic() - signalled

    assert first.status == health_pb2.HealthCheckResponse.SERVING
    assert code == 0, process.output
    assert took < 10, f"stopped {took:.1f}s after SIGTERM (KRT_DRAIN_TIMEOUT is 30s)"


async def test_a_call_still_waiting_at_the_drain_timeout_gets_unavailable_with_its_tracking_id_and_a_log_line(
    nats_server, start_node, krt, entrypoint
):
    start_node(**node_env(nats_server, krt, "src/node.py", input=GREET_SUBJECT))
    process, address = entrypoint(KRT_DRAIN_TIMEOUT="1")
    async with grpc.aio.insecure_channel(address) as channel:
        running = asyncio.ensure_future(greet_call(channel)(greeter_pb2.Request(name="sleep:5"), timeout=30))
        await taken_by_the_node(nats_server.url, 1)
        process.signal(signal.SIGTERM)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await running

    error = caught.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == "the entrypoint stopped: KRT_DRAIN_TIMEOUT ran out before the workflow answered"
    tracking = tracking_id(error.trailing_metadata())
    assert await asyncio.to_thread(process.wait, 30) == 0
    failed = [json.loads(line) for line in process.lines if '"call failed"' in line and tracking in line]
    assert failed and failed[0]["workflow"] == "greet", process.output  # as every line a message causes
