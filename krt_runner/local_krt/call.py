"""``krt-runner call``: send one request (or many, with a latency summary) as a KRE v1 entrypoint would."""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, TextIO

from google.protobuf.message import Message

from krt_runner.client import Client
from krt_runner.config import requester_connect_options
from krt_runner.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CallError,
    CallTimeout,
    ConfigError,
    ErrorAnswer,
    ProtoError,
)
from krt_runner.krt.protos import MessageTypes, load_file, parse_json, select_types
from krt_runner.local_krt.ask import read_request, send_one
from krt_runner.setting_values import nats_servers

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class CallOptions:
    """What ``krt-runner call`` was asked to do."""

    subject: str
    nats: str
    proto: str
    request: str = "{}"
    method: str | None = None
    request_type: str | None = None
    response_type: str | None = None
    timeout: float = 30.0
    repeat: int = 1
    concurrency: int = 1
    delivery: str = "at-most-once"  # at-least-once: through JetStream, to nodes in that mode


def run_call(options: CallOptions, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run the ``call`` command; returns its exit code (0 answered, 1 no usable answer, 2 bad usage)."""
    try:
        types = select_types(
            load_file(options.proto),
            method=options.method,
            request=options.request_type,
            response=options.response_type,
        )
        request = parse_json(read_request(options.request), types.request)
        nats_servers(options.nats)
        credentials = requester_connect_options()
    except (ProtoError, OSError, ConfigError) as exc:
        print(f"krt-runner call: {exc}", file=err)
        return EXIT_USAGE
    except ValueError as exc:  # the URL's
        print(f"krt-runner call: --nats (KRT_NATS_SERVER): {exc}", file=err)
        return EXIT_USAGE
    return asyncio.run(_call(options, types, request, credentials, out=out, err=err))


async def _call(
    options: CallOptions, types: MessageTypes, request: Message, credentials: dict[str, Any], *, out: TextIO,
    err: TextIO,
) -> int:  # fmt: skip
    try:
        client = await Client.connect(options.nats, delivery=options.delivery, **credentials)
    except CallError as exc:
        print(f"krt-runner call: {exc}", file=err)
        return EXIT_FAILED
    async with client:
        if options.repeat == 1:
            subject, timeout = options.subject, options.timeout
            return await send_one(client, subject, request, types.response, timeout=timeout, out=out, err=err)
        return await _send_many(client, options, request, types.response, out=out, err=err)


async def _send_many(
    client: Client, options: CallOptions, request: Message, response_type: type[Message], *, out: TextIO, err: TextIO
) -> int:
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    first_failure: list[str] = []
    tickets = iter(range(options.repeat))

    async def worker() -> None:
        for _ in tickets:  # one shared iterator: the workers together send exactly `repeat`
            started = time.perf_counter()
            try:
                await client.call(options.subject, request, response_type, timeout=options.timeout)
                latencies.append((time.perf_counter() - started) * 1000)
            except CallError as exc:
                failures[_failure_kind(exc)] += 1
                if not first_failure:
                    first_failure.append(str(exc))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(options.concurrency, options.repeat))))
    print(summary(latencies, failures, time.perf_counter() - started), file=out, flush=True)
    if first_failure:
        print(f"first failure: {first_failure[0]}", file=err)
    return EXIT_FAILED if failures else EXIT_OK


def _failure_kind(exc: CallError) -> str:
    if isinstance(exc, ErrorAnswer):
        return "error answers"
    if isinstance(exc, CallTimeout):
        return "timeouts"
    return "other failures"


def percentile(sorted_values: list[float], percent: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    rank = max(1, math.ceil(percent / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summary(latencies_ms: list[float], failures: Counter[str], seconds: float) -> str:
    """Two lines: counts and throughput, then latency percentiles of the answered requests."""
    total = len(latencies_ms) + sum(failures.values())
    counts = ", ".join(f"{failures[kind]} {kind}" for kind in ("error answers", "timeouts", "other failures"))
    head = (
        f"{total} requests in {seconds:.2f}s ({total / seconds if seconds else 0:.1f} requests/s): "
        f"{len(latencies_ms)} answered, {counts}"
    )
    if not latencies_ms:
        return head
    ordered = sorted(latencies_ms)
    spread = "  ".join(f"p{p} {percentile(ordered, p):.1f}" for p in PERCENTILES)
    return f"{head}\nlatency ms (answered): {spread}  max {ordered[-1]:.1f}"
