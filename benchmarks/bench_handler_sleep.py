"""An async handler that awaits 5 ms: throughput should scale with KRT_CONCURRENCY."""

import asyncio

from bench_handler import read_name
from greeter_pb2 import Response


async def handler(ctx, data):
    await asyncio.sleep(0.005)
    return Response(greeting=read_name(data))
