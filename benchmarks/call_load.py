"""Call the greeter workflow W at a time, through its gRPC entrypoint or straight over NATS, and report.

    python benchmarks/call_load.py grpc 127.0.0.1:9000 --count 5000 --window 128
    python benchmarks/call_load.py nats nats://127.0.0.1:4222 --subject greeter-v1-Greet-entrypoint ...

Both sides are what a user would write: a grpcio aio stub over one channel, or
krt_runner's own Client over one NATS connection; W calls in flight, each
answer checked. Prints one JSON line: answers/s, p50/p99 in ms, wrong answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "greeter" / "src"))
import greeter_pb2

Call = Callable[[greeter_pb2.Request], Awaitable[greeter_pb2.Response]]


async def measure(call: Call, *, count: int, window: int) -> dict[str, float]:
    """``count`` calls, ``window`` at a time; every answer must greet its own name."""
    latencies: list[float] = []
    wrong = 0
    next_index = 0

    async def worker() -> None:
        nonlocal next_index, wrong
        while next_index < count:
            index, next_index = next_index, next_index + 1
            started = time.perf_counter()
            answer = await call(greeter_pb2.Request(name=f"n{index}"))
            latencies.append(time.perf_counter() - started)
            wrong += answer.greeting != f"** Hello, n{index}! **"

    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(window)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    latencies.sort()
    return {
        "answers_per_s": count / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "wrong": wrong,
        "cpu_s_per_1000": 1000 * cpu / count,
    }


async def through_grpc(address: str, count: int, window: int, warm_up: int) -> dict[str, float]:
    import grpc

    async with grpc.aio.insecure_channel(address) as channel:
        greet = channel.unary_unary(
            "/greeter.Entrypoint/Greet",
            request_serializer=greeter_pb2.Request.SerializeToString,
            response_deserializer=greeter_pb2.Response.FromString,
        )

        async def call(request: greeter_pb2.Request) -> greeter_pb2.Response:
            response: greeter_pb2.Response = await greet(request, timeout=30)
            return response

        await measure(call, count=warm_up, window=16)
        return await measure(call, count=count, window=window)


async def through_nats(url: str, subject: str, count: int, window: int, warm_up: int) -> dict[str, float]:
    from krt_runner.client import Client

    async with await Client.connect(url) as client:

        async def call(request: greeter_pb2.Request) -> greeter_pb2.Response:
            return await client.call(subject, request, greeter_pb2.Response)

        await measure(call, count=warm_up, window=16)
        return await measure(call, count=count, window=window)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("via", choices=("grpc", "nats"))
    parser.add_argument("address", help="host:port of the entrypoint, or the NATS URL")
    parser.add_argument("--subject", default="greeter-v1-Greet-entrypoint", help="with nats: the entry subject")
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--warm-up", type=int, default=300, help="calls before the measured ones (16 at a time)")
    args = parser.parse_args()
    if args.via == "grpc":
        result = asyncio.run(through_grpc(args.address, args.count, args.window, args.warm_up))
    else:
        result = asyncio.run(through_nats(args.address, args.subject, args.count, args.window, args.warm_up))
    print(json.dumps(result))
    return 1 if result["wrong"] else 0


if __name__ == "__main__":
    sys.exit(main())
