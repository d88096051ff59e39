"""The floor: the fastest plain nats-py node for the KRT v1 contract, written as a user would write it.

Subscribe with a queue group, parse the envelope, take the reply subject, call the handler, pack the result,
append a tracking entry, publish to the next subject or to ``reply``. No logging, no measurements, no error
handling beyond the contract's minimum, on asyncio's default event loop.

    python benchmarks/floor_node.py NATS_URL INPUT OUTPUT NODE_NAME

Each choice is the cheapest plain one, measured against the others by ``benchmarks/floor_variants.py`` under
callgrind (instructions per message, in-process, nats-py's publish included; docs/performance.md has the table):

- timestamps by ``datetime.utcnow().isoformat()``, the plainest: ``strftime`` cost a third more per message;
- the request envelope becomes the answer in place (``payload.Pack``, ``tracking.add``): a new envelope with
  ``tracking.extend`` costs more than it saves;
- gzip only when the contract needs it, at its fastest level: a request that starts with gzip's magic is
  inflated, an answer over the server's max payload is compressed (KRE v1 nodes do both).
"""

from __future__ import annotations

import asyncio
import gzip
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import nats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_handler import handler

from krt_runner._proto.kre_nats_msg_pb2 import KreNatsMessage


def answering(nc: Any, node: str, subject_out: str = "") -> Callable[[Any], Awaitable[None]]:
    """The floor's callback for each message nats-py hands over (also costed by ``floor_variants.py``)."""

    async def on_message(msg: Any) -> None:
        start = datetime.utcnow().isoformat()
        data = msg.data
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        request = KreNatsMessage()
        request.ParseFromString(data)
        if msg.reply:
            request.reply = msg.reply
        result = await handler(None, request.payload)
        request.payload.Pack(result)
        request.tracking.add(node_name=node, start=start, end=datetime.utcnow().isoformat())
        answer = request.SerializeToString()
        if len(answer) > nc.max_payload:
            answer = gzip.compress(answer, compresslevel=1)  # the fastest level (the runner's first try too)
        await nc.publish(subject_out or request.reply, answer)

    return on_message


async def main(url: str, subject_in: str, subject_out: str, node: str) -> None:
    nc = await nats.connect(url)
    on_message = answering(nc, node, subject_out)

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
