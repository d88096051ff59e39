"""The most a grpcio aio server can do on this machine: the greeter's rpc answered at once, with no NATS and no node.

    python benchmarks/grpc_echo.py        # prints {"msg": "echo ready", "address": "127.0.0.1:PORT"}

A diagnostic beside the gRPC entrypoint in the benchmark (entrypoint_bench.py): the same client calls it the same
way, and whatever it reaches is the ceiling of any entrypoint built on grpcio here, before a single NATS request.
It answers as the greeter workflow does (``** Hello, <name>! **``), so the client checks every answer alike.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "greeter" / "src"))
import greeter_pb2

from krt_runner.node.main import run_event_loop


async def _greet(request: greeter_pb2.Request, context: Any) -> greeter_pb2.Response:
    return greeter_pb2.Response(greeting=f"** Hello, {request.name}! **")


async def serve() -> int:
    server = grpc.aio.server()
    greet = grpc.unary_unary_rpc_method_handler(_greet, request_deserializer=greeter_pb2.Request.FromString,
                                                response_serializer=greeter_pb2.Response.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("greeter.Entrypoint", {"Greet": greet}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(json.dumps({"msg": "echo ready", "address": f"127.0.0.1:{port}"}), flush=True)
    await server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(run_event_loop(serve()))  # the entrypoint's loop (uvloop when installed), as it serves
