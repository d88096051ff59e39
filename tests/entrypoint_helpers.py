"""A KRT made for the entrypoint tests, a `krt-runner entrypoint` process, and a grpcio client of its rpcs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
from conftest import GREETER_SRC, KRT_RUNNER, NodeProcess, greeter_pb2

from krt_runner.local_krt.embedded import EmbeddedNats

VERSION = "ep-v1"
GREET_SUBJECT = f"{VERSION}-Greet-entrypoint"
SERVICE_PROTO = """\
syntax = "proto3";
package greeter;

service Entrypoint {
  rpc Greet (Request) returns (Response) {};
  rpc Absent (Request) returns (Response) {};
}

message Request {
  string name = 1;
}

message Response {
  string greeting = 1;
}
"""
# A node whose behaviour the request's name chooses.
NODE_SOURCE = """\
import asyncio
from google.protobuf.any_pb2 import Any
from greeter_pb2 import Request, Response

async def handler(ctx, data):
    request = Request()
    data.Unpack(request)
    command, _, argument = request.name.partition(":")
    if command == "boom":
        raise ValueError("boom requested")
    if command == "sleep":
        await asyncio.sleep(float(argument))
    if command == "wrongtype":
        return Request(name="not a Response")
    if command == "badbytes":  # labelled a Response, as a node built elsewhere might answer
        return Any(type_url="type.googleapis.com/greeter.Response", value=b"\\xff\\xff\\xff")
    return Response(greeting=f"Hello, {request.name}!")
"""


def write_krt(root: Path, *, proto: str = SERVICE_PROTO, workflows: tuple[str, ...] = ("Greet", "Absent")) -> Path:
    """A KRT folder: one node, one workflow per rpc name in ``workflows`` (all through that node)."""
    (root / "src").mkdir(parents=True)
    (root / "proto").mkdir()
    (root / "proto" / "svc.proto").write_text(proto)
    shutil.copy(GREETER_SRC / "greeter_pb2.py", root / "src")
    (root / "src" / "node.py").write_text(NODE_SOURCE)
    flows = "".join(f"  - {{name: {name.lower()}, entrypoint: {name}, sequential: [greet]}}\n" for name in workflows)
    (root / "krt.yml").write_text(
        f"version: {VERSION}\ndescription: entrypoint tests\nentrypoint: {{proto: proto/svc.proto, image: e}}\n"
        f"nodes:\n  - {{name: greet, image: i, src: src/node.py}}\nworkflows:\n{flows}"
    )
    return root


def entrypoint_env(server: EmbeddedNats | None, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("KRT_")}
    env.update({"KRT_LOG_FORMAT": "json", "KRT_ENTRYPOINT_HOST": "127.0.0.1", "KRT_ENTRYPOINT_PORT": "0"})
    if server is not None:
        env["KRT_NATS_SERVER"] = server.url
    return {**env, **extra}


def start_entrypoint(krt: Path, server: EmbeddedNats, **extra: str) -> tuple[NodeProcess, str]:
    """A running entrypoint and the address its 'entrypoint ready' line gives."""
    process = NodeProcess([*KRT_RUNNER, "entrypoint", str(krt)], entrypoint_env(server, **extra), cwd=krt)
    process.wait_for_line('"entrypoint ready"')
    ready = next(json.loads(line) for line in process.lines if '"entrypoint ready"' in line)
    return process, ready["address"]


def run_entrypoint(krt: Path) -> subprocess.CompletedProcess[str]:
    """An entrypoint expected to refuse to start (no NATS needed for that)."""
    env = entrypoint_env(None, KRT_NATS_SERVER="nats://127.0.0.1:1")
    return subprocess.run([*KRT_RUNNER, "entrypoint", str(krt)], env=env, capture_output=True, text=True, timeout=60)


def greet_call(channel: grpc.Channel | grpc.aio.Channel, rpc: str = "Greet"):  # type: ignore[no-untyped-def]
    return channel.unary_unary(
        f"/greeter.Entrypoint/{rpc}",
        request_serializer=greeter_pb2.Request.SerializeToString,
        response_deserializer=greeter_pb2.Response.FromString,
    )


def tracking_id(metadata) -> str:  # type: ignore[no-untyped-def]
    return dict(metadata or ())["krt-tracking-id"]


def generate_stubs(proto: Path, out: Path) -> None:
    """greeter_pb2 and greeter_pb2_grpc from the example's proto, as a user of the KRT would make them."""
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "grpc_tools.protoc", f"-I{proto.parent}", f"--python_out={out}",
               f"--grpc_python_out={out}", str(proto)]
    subprocess.run(command, check=True, capture_output=True)


def address_of(line: str) -> str:
    match = re.search(r"gRPC entrypoint: (\S+)", line)
    assert match, line
    return match.group(1)
