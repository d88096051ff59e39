"""The greeter behind `krt-runner up`'s gRPC entrypoint, called by clients generated from its proto:
grpcio stubs made at test time, and the gRPC team's Node.js client (@grpc/grpc-js with @grpc/proto-loader)."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import shutil
import subprocess
import sys

import grpc
import nats
import pytest
from conftest import ROOT, node_env
from entrypoint_helpers import GREET_SUBJECT, address_of, generate_stubs, start_entrypoint, write_krt
from up_helpers import UpRun

from krt_runner.entrypoint.calls import MAX_DETAILS_BYTES
from krt_runner.envelope import KreNatsMessage

GREETER = ROOT / "examples" / "greeter"
GREETER_PROTO = GREETER / "proto" / "greeter.proto"
NODE_CLIENTS = ROOT / "tests" / "node_clients"


@pytest.fixture(scope="module")
def greeter_up(tmp_path_factory):
    """One `up` of the greeter for the module, its gRPC entrypoint on a free port; stopped at the end."""
    run = UpRun(str(GREETER), "--grpc-port", "0", cwd=tmp_path_factory.mktemp("up"))
    try:
        yield run, address_of(run.wait_for_line("gRPC entrypoint:"))
    finally:
        run.stop()


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    out = tmp_path_factory.mktemp("stubs")
    generate_stubs(GREETER_PROTO, out)
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("greeter_pb2"), importlib.import_module("greeter_pb2_grpc")
    finally:
        sys.path.remove(str(out))


def test_up_prints_the_grpc_address_and_a_grpcurl_line(greeter_up):
    run, address = greeter_up

    grpcurl = run.wait_for_line("grpcurl")

    assert grpcurl == f"grpcurl -plaintext -d '{{\"name\": \"\"}}' {address} greeter.Entrypoint/Greet"
    assert address.startswith("127.0.0.1:")


async def test_generated_grpcio_stubs_get_one_answer_then_500_concurrent_answers_each_its_own(greeter_up, stubs):
    _, address = greeter_up
    messages, services = stubs

    async with grpc.aio.insecure_channel(address) as channel:
        stub = services.EntrypointStub(channel)
        one = await stub.Greet(messages.Request(name="Ada"), timeout=10)
        many = await asyncio.gather(
            *(stub.Greet(messages.Request(name=f"n{index}"), timeout=60) for index in range(500))
        )

    assert one.greeting == "** Hello, Ada! **"
    assert [answer.greeting for answer in many] == [f"** Hello, n{index}! **" for index in range(500)]


def node_call(address: str, requests: list[dict], rpc: str = "Greet", proto=GREETER_PROTO) -> list[dict]:
    if not (NODE_CLIENTS / "node_modules" / "@grpc" / "grpc-js").is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail("the Node.js gRPC client is not installed: scripts/install_test_servers.sh installs it")
        pytest.skip("the Node.js gRPC client is not installed (scripts/install_test_servers.sh)")
    node = shutil.which("node")
    assert node, "node not found"
    command = [node, "grpc_call.js", address, str(proto), "greeter.Entrypoint", rpc, json.dumps(requests)]
    done = subprocess.run(command, cwd=NODE_CLIENTS, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_node_js_grpc_client_gets_its_answers_and_tracking_ids(greeter_up):
    _, address = greeter_up

    results = node_call(address, [{"name": f"js{index}"} for index in range(50)])

    assert [result["response"]["greeting"] for result in results] == [f"** Hello, js{index}! **" for index in range(50)]
    assert all(len(result["trackingId"]) == 36 for result in results)
    assert len({result["trackingId"] for result in results}) == 50


def test_the_node_js_client_sees_internal_and_unavailable_with_the_tracking_id(tmp_path, nats_server, start_node):
    krt = write_krt(tmp_path / "krt")
    node = start_node(**node_env(nats_server, krt, "src/node.py", input=GREET_SUBJECT))
    entrypoint, address = start_entrypoint(krt, nats_server)
    proto = krt / "proto" / "svc.proto"
    try:
        failed = node_call(address, [{"name": "boom"}], proto=proto)[0]
        absent = node_call(address, [{"name": "x"}], rpc="Absent", proto=proto)[0]
    finally:
        entrypoint.stop()

    assert failed["code"] == "INTERNAL" and "boom requested" in failed["details"]
    node.wait_for_line(failed["trackingId"])
    assert absent["code"] == "UNAVAILABLE" and len(absent["trackingId"]) == 36


async def test_a_node_error_longer_than_grpcs_trailers_take_is_cut_to_fit_for_both_clients(tmp_path, nats_server):
    """A KRE v1 node does not cut its error text: past 8 KiB grpcio refused the status (RESOURCE_EXHAUSTED), past
    about 100 KB grpc-js got none until its deadline, and its next call on the channel neither."""
    krt = write_krt(tmp_path / "krt")
    nc = await nats.connect(nats_server.url)

    async def kre_v1_node(msg) -> None:  # a stand-in for a node built elsewhere: an uncut error text
        request = KreNatsMessage.FromString(msg.data)
        answer = KreNatsMessage(tracking_id=request.tracking_id, error="é" + "E" * 100_000)
        await msg.respond(answer.SerializeToString())

    await nc.subscribe(GREET_SUBJECT, cb=kre_v1_node)
    entrypoint, address = start_entrypoint(krt, nats_server)
    try:
        from_js = await asyncio.to_thread(node_call, address, [{"name": "a"}, {"name": "b"}],
                                          proto=krt / "proto" / "svc.proto")
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.unary_unary("/greeter.Entrypoint/Greet")
            with pytest.raises(grpc.aio.AioRpcError) as from_python:
                await call(b"", timeout=10)
    finally:
        entrypoint.stop()
        await nc.close()

    cut = "... (cut: 100001 characters in all, in the entrypoint's 'call failed' line)"
    assert [(result["code"], len(result["trackingId"])) for result in from_js] == [("INTERNAL", 36)] * 2
    assert all(result["details"].startswith("éEEE") and result["details"].endswith(cut) for result in from_js)
    assert from_python.value.code() == grpc.StatusCode.INTERNAL and from_python.value.details().endswith(cut)
    assert len(from_python.value.details().encode()) < MAX_DETAILS_BYTES
