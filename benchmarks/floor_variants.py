"""Plain hand-written ways to do a node's work for the KRT v1 contract, costed in this process, to pick the floor.

    valgrind --tool=callgrind --callgrind-out-file=/tmp/fv.%p .venv/bin/python benchmarks/floor_variants.py VARIANT 1000
    valgrind --tool=callgrind --callgrind-out-file=/tmp/fv.%p .venv/bin/python benchmarks/floor_variants.py VARIANT 6000
        # instructions per message: (total of the second - total of the first) / 5000
    .venv/bin/python benchmarks/floor_variants.py --all 20000   # microseconds per message (noisy on a VM)
    .venv/bin/python benchmarks/floor_variants.py isoformat-in-place 2000 --bytecodes   # bytecodes per message

Each variant is what ``floor_node.py``'s message callback could be: parse the envelope, take the reply subject,
call the benchmark's handler, pack its result, add a tracking entry, publish. The publish is nats-py's
``nc.publish`` of a connection that is never connected (its bytes go into the pending buffer, which is emptied
now and then), so nats-py's own work per publish is counted as in a real node.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "greeter" / "src"))

from bench_handler import handler
from floor_node import answering
from in_process import Msg, counting_bytecodes, print_bytecodes, publishing_client, request_bytes, written

from krt_runner._proto.kre_nats_msg_pb2 import KreNatsMessage

NODE = "node1"
WARM_UP = 2000
# Messages between two passes of the event loop, as a busy node takes them from nats-py (as in pipeline_cost.py).
PASS = 64


def strftime_in_place(nc: Any) -> Callable[[Msg], Awaitable[None]]:
    """The previous floor: both timestamps by ``strftime``, the request envelope becomes the answer."""

    def now() -> str:
        return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")

    async def on_message(msg: Msg) -> None:
        start = now()
        request = KreNatsMessage()
        request.ParseFromString(msg.data)
        if msg.reply:
            request.reply = msg.reply
        result = await handler(None, request.payload)
        request.payload.Pack(result)
        request.tracking.add(node_name=NODE, start=start, end=now())
        await nc.publish(request.reply, request.SerializeToString())

    return on_message


def isoformat_new_envelope(nc: Any) -> Callable[[Msg], Awaitable[None]]:
    """The answer as a new envelope: the request's id, reply and tracking copied over (``tracking.extend``)."""

    async def on_message(msg: Msg) -> None:
        start = datetime.utcnow().isoformat()
        request = KreNatsMessage.FromString(msg.data)
        answer = KreNatsMessage(tracking_id=request.tracking_id, reply=msg.reply or request.reply)
        answer.tracking.extend(request.tracking)
        answer.payload.Pack(await handler(None, request.payload))
        answer.tracking.add(node_name=NODE, start=start, end=datetime.utcnow().isoformat())
        await nc.publish(answer.reply, answer.SerializeToString())

    return on_message


def raw_echo(nc: Any) -> Callable[[Msg], Awaitable[None]]:
    """Not the contract: the request's bytes sent back untouched. What the transport alone costs a Python node."""

    async def on_message(msg: Msg) -> None:
        await nc.publish(msg.reply, msg.data)

    return on_message


VARIANTS = {
    "strftime-in-place": strftime_in_place,
    "isoformat-in-place": lambda nc: answering(nc, NODE),  # what floor_node.py does: its own callback
    "isoformat-new-envelope": isoformat_new_envelope,
    "raw-echo": raw_echo,
}


async def cost(variant: str, count: int, *, bytecodes: bool = False) -> float:
    """Microseconds per message of ``variant`` over ``count`` messages, after a warm-up; with ``bytecodes``, the
    bytecodes per message are printed (and the time, slowed by counting them, means nothing)."""
    nc = publishing_client()
    on_message, msg = VARIANTS[variant](nc), Msg(request_bytes(), "_INBOX.bench")
    for _ in range(WARM_UP):
        await on_message(msg)
        written(nc)
    with counting_bytecodes() if bytecodes else contextlib.nullcontext() as counts:
        started = time.perf_counter()
        for index in range(count):
            await on_message(msg)
            written(nc)
            if index % PASS == PASS - 1:
                await asyncio.sleep(0)
        elapsed = time.perf_counter() - started
    if counts is not None:
        print_bytecodes(counts, count, harness=cost)
    return elapsed / count * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", nargs="?", choices=sorted(VARIANTS))
    parser.add_argument("count", type=int)
    parser.add_argument("--all", action="store_true", help="every variant, one after the other")
    parser.add_argument("--bytecodes", action="store_true", help="count bytecodes per message instead of timing")
    args = parser.parse_args()
    for variant in sorted(VARIANTS) if args.all else [args.variant]:
        micros = asyncio.run(cost(variant, args.count, bytecodes=args.bytecodes))
        if not args.bytecodes:
            print(f"{variant:>24}: {micros:.2f} µs per message")
    return 0


if __name__ == "__main__":
    sys.exit(main())
