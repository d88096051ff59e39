"""`krt-runner entrypoint` at its edges: an rpc described by its full name, an address it cannot listen on, a
subjects file with a bad entry, a node whose code is not there, an answer that inflates past the setting."""

from __future__ import annotations

import gzip
import json
import socket
import subprocess

import grpc
import nats
import pytest
from conftest import KRT_RUNNER, greeter_pb2
from entrypoint_helpers import GREET_SUBJECT, entrypoint_env, greet_call, start_entrypoint, write_krt
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from krt_runner.envelope import KreNatsMessage


@pytest.fixture
def krt(tmp_path):
    return write_krt(tmp_path / "krt")


def test_reflection_finds_the_file_of_an_rpc_by_its_full_name_as_grpcurl_describe_asks(nats_server, krt):
    process, address = start_entrypoint(krt, nats_server)
    try:
        with grpc.insecure_channel(address) as channel:
            described = ProtoReflectionDescriptorDatabase(channel).FindFileContainingSymbol("greeter.Entrypoint.Greet")
            with pytest.raises(KeyError):
                ProtoReflectionDescriptorDatabase(channel).FindFileContainingSymbol("greeter.Entrypoint.Nothing")
    finally:
        process.stop()

    assert [method.name for method in described.service[0].method] == ["Greet", "Absent"]


def test_an_address_it_cannot_listen_on_is_one_line_with_the_systems_cause_and_what_to_set(krt):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        in_use = subprocess.run([*KRT_RUNNER, "entrypoint", str(krt)], capture_output=True, text=True, timeout=60,
                                env=entrypoint_env(None, KRT_NATS_SERVER="nats://127.0.0.1:1",
                                                   KRT_ENTRYPOINT_PORT=str(port)))
    unknown = subprocess.run([*KRT_RUNNER, "entrypoint", str(krt)], capture_output=True, text=True, timeout=60,
                             env=entrypoint_env(None, KRT_NATS_SERVER="nats://127.0.0.1:1",
                                                KRT_ENTRYPOINT_HOST="no-such-host.invalid"))

    assert in_use.returncode == 1 and unknown.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use; another process listens there" \
        in in_use.stderr
    assert "cannot resolve 'no-such-host.invalid'" in unknown.stderr and "set KRT_ENTRYPOINT_HOST" in unknown.stderr
    for done in (in_use, unknown):  # gRPC's own C-core line and its GRPC_VERBOSITY advice are not shown
        assert "GRPC_VERBOSITY" not in done.stderr and "add_port" not in done.stderr


def test_a_subjects_file_entry_that_is_no_subject_is_named_with_its_rpc(krt, tmp_path):
    subjects = tmp_path / "subjects.json"
    subjects.write_text(json.dumps({"Greet": "a..b", "Absent": ""}))

    done = subprocess.run([*KRT_RUNNER, "entrypoint", str(krt)], capture_output=True, text=True, timeout=60,
                          env=entrypoint_env(None, KRT_NATS_SERVER="nats://127.0.0.1:1",
                                             KRT_NATS_SUBJECTS_FILE=str(subjects)))

    assert done.returncode == 2
    assert "rpc Absent's subject is '': expected a subject (a non-empty string)" in done.stderr
    assert "rpc Greet's subject: 'a..b'" in done.stderr  # both at once, not one per run


async def test_it_serves_without_its_nodes_code_and_inflates_answers_up_to_its_setting(nats_server, krt):
    (krt / "src" / "node.py").unlink()  # a Go node's binary, say, built elsewhere: the entrypoint reads the proto
    nc = await nats.connect(nats_server.url)

    async def answer_big(msg) -> None:  # a node whose gzip answer inflates to 5000 bytes and more
        answer = KreNatsMessage(tracking_id="t")
        answer.payload.Pack(greeter_pb2.Response(greeting="x" * 5000))
        await msg.respond(gzip.compress(answer.SerializeToString()))

    await nc.subscribe(GREET_SUBJECT, cb=answer_big)
    await nc.flush()
    process, address = start_entrypoint(krt, nats_server, KRT_MAX_DECOMPRESSED_BYTES="1000")
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await greet_call(channel)(greeter_pb2.Request(name="Ada"), timeout=10)
    finally:
        process.stop()
        await nc.close()

    assert refused.value.code() == grpc.StatusCode.INTERNAL
    assert "inflates to more than 1000 bytes (KRT_MAX_DECOMPRESSED_BYTES)" in refused.value.details()
