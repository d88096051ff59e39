"""The per-message cost of a node, in this process: from nats-py's callback to nats-py's publish, with no socket.

    .venv/bin/python benchmarks/pipeline_cost.py 20000                 # microseconds per message (noisy on a VM)
    valgrind --tool=callgrind .venv/bin/python benchmarks/pipeline_cost.py 1000
    valgrind --tool=callgrind .venv/bin/python benchmarks/pipeline_cost.py 6000
        # instructions per message: (total of the second - total of the first) / 5000
    .venv/bin/python benchmarks/pipeline_cost.py 2000 --bytecodes      # bytecodes per message, by function
    .venv/bin/python benchmarks/pipeline_cost.py 2000 --measurements-off   # what measuring adds to the node

A middle node (``--middle``) or the last node (the default), a typed async handler, measurements on (unless
``--measurements-off``) and their points dropped (the writer thread's work is not counted). No NATS server: each
message goes in as the node's intake takes it from nats-py's parser (``Workers.on_direct``), 64 between two passes
of the event loop, and each answer out through nats-py's ``publish`` of a client with no socket
(benchmarks/in_process.py), so the runner's work and nats-py's per-message publishing are counted, as in
benchmarks/floor_variants.py for the hand-written floor (whose messages go in through its subscription callback:
nats-py's parsing and ``Msg`` are counted on neither side).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "greeter" / "src"))

import greeter_pb2
from in_process import counting_bytecodes, print_bytecodes, publishing_client, request_bytes, written
from nats.aio.subscription import Subscription

from krt_runner.config import load_settings
from krt_runner.measurements import NullSink
from krt_runner.node.lifecycle import RunningNode
from krt_runner.node.user_code import user_code_from

WARM_UP = 2000
# Messages between two passes of the event loop, as a busy node takes them from nats-py.
PASS = 64


async def greet(ctx: Any, request: greeter_pb2.Request) -> greeter_pb2.Response:
    return greeter_pb2.Response(greeting=request.name)



class DroppingSink(NullSink):
    def put_many(self, lines: Sequence[Any]) -> None:
        pass


async def main(count: int, *, middle: bool, measurements: bool = True, bytecodes: bool = False) -> None:
    settings = load_settings(env={
        "KRT_NATS_SERVER": "nats://127.0.0.1:1", "KRT_NATS_INPUT": "in", "KRT_HANDLER_PATH": "greet",
        "KRT_NATS_OUTPUT": "next" if middle else "", "KRT_LOG_LEVEL": "error",
        "KRT_MEASUREMENTS_ENABLED": str(measurements).lower(),
    })
    node = RunningNode(settings, user_code_from(greet, name="greet", source="bench"), sink=DroppingSink())
    node.state.loop = asyncio.get_running_loop()
    nc = publishing_client(skip_subject_validation=True, client=node.broker.client)  # as the broker connects
    node.intake.watch(Subscription(None, id=1, subject="in"))  # nats-py's own, with nothing held
    node.intake.start()
    on_direct, data = node.intake.on_direct, request_bytes()
    for index in range(WARM_UP):
        on_direct(1, b"in", b"_INBOX.bench", data, b"")
        if index % PASS == PASS - 1:
            await asyncio.sleep(0)
            written(nc)
    with counting_bytecodes() if bytecodes else contextlib.nullcontext() as counts:
        started = time.perf_counter()
        for index in range(count):
            on_direct(1, b"in", b"_INBOX.bench", data, b"")
            if index % PASS == PASS - 1:
                await asyncio.sleep(0)  # the workers handle the pass's messages, as after one read on a busy node
                written(nc)
        await asyncio.sleep(0)  # the last pass
        elapsed = time.perf_counter() - started
    if counts is not None:
        print_bytecodes(counts, count, harness=main)
    else:
        print(f"{elapsed / count * 1e6:.2f} µs per message over {count}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("count", type=int)
    parser.add_argument("--middle", action="store_true", help="a middle node (default: the last node)")
    parser.add_argument("--measurements-off", action="store_true", help="KRT_MEASUREMENTS_ENABLED=false")
    parser.add_argument("--bytecodes", action="store_true", help="count bytecodes per message instead of timing")
    args = parser.parse_args()
    asyncio.run(main(args.count, middle=args.middle, measurements=not args.measurements_off, bytecodes=args.bytecodes))
