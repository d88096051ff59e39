"""The floor: the least a hand-written nats-py node does for the KRT v1 contract.

Subscribe with a queue group, parse the envelope, call the handler, pack the
result, append a tracking entry, publish to the next subject or to ``reply``.
No logging, no measurements, no error handling beyond the contract's minimum.

    python benchmarks/floor_node.py NATS_URL INPUT OUTPUT NODE_NAME
"""

from __future__ import annotations

import asyncio
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path

import nats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_handler import handler

from krt_runner._proto.kre_nats_msg_pb2 import KreNatsMessage


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")


async def main(url: str, subject_in: str, subject_out: str, node: str) -> None:
    nc = await nats.connect(url)

    async def on_message(msg) -> None:
        start = now()
        request = KreNatsMessage()
        request.ParseFromString(msg.data)
        if msg.reply:
            request.reply = msg.reply
        result = await handler(None, request.payload)
        request.payload.Pack(result)
        request.tracking.add(node_name=node, start=start, end=now())
        await nc.publish(subject_out or request.reply, request.SerializeToString())

    await nc.subscribe(subject_in, queue=f"queue_{subject_in}", cb=on_message)
    await nc.flush()
    print("node ready", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "", sys.argv[4]))
