"""The requester: keeps W requests in flight and checks every answer.

Greeter requests by default (``n<i>`` answered ``n<i>``); another :class:`Traffic` sends other messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import nats
from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.message import Message
from greeter_pb2 import Request, Response

from krt_runner._proto.kre_nats_msg_pb2 import KreNatsMessage

# A run with no answer for this long counts what is missing as lost.
STALL_SECONDS = 15.0
_MAX_PAYLOAD = 1024 * 1024  # nats-server's default: larger envelopes are gzip-compressed, as KRE v1 does
_WORDS = [f"w{index:02d}" for index in range(64)]


@dataclass
class LoadResult:
    sent: int = 0
    answered: int = 0
    wrong: int = 0
    duplicates: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.sent - self.answered

    @property
    def per_second(self) -> float:
        return self.answered / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


def _greeting_is_right(payload: AnyMessage, index: int) -> bool:
    response = Response()
    return payload.Unpack(response) and response.greeting == f"n{index}"


@dataclass(frozen=True)
class Traffic:
    """What the requester sends as its ``i``-th request, and whether an answer's payload is right for it."""

    request: Callable[[int], Message] = lambda i: Request(name=f"n{i}")
    is_right: Callable[[AnyMessage, int], bool] = _greeting_is_right
    distinct: int = 0  # requests built before the clock starts, used in turn; 0: one per request


GREETINGS = Traffic()


def large_greetings(payload_bytes: int, distinct: int = 32) -> Traffic:
    """Greeter requests padded with words (about 3x compressible, as text) to ``payload_bytes``; ``distinct`` of
    them are built, once, so the requester's own cost stays out of the figures."""

    def name(index: int) -> str:
        index %= distinct
        words = random.Random(index).choices(_WORDS, k=payload_bytes // 4 + 1)
        return f"n{index} {' '.join(words)}"[:payload_bytes]

    def is_right(payload: AnyMessage, index: int) -> bool:
        response = Response()
        return payload.Unpack(response) and response.greeting == name(index)

    return Traffic(request=lambda i: Request(name=name(i)), is_right=is_right, distinct=distinct)


def requests(count: int, traffic: Traffic = GREETINGS) -> list[bytes]:
    """Envelopes as a KRE v1 entrypoint sends them (gzip over the max payload), built before the clock starts."""
    built = []
    for i in range(min(count, traffic.distinct) if traffic.distinct else count):
        message = KreNatsMessage(tracking_id=f"bench-{i}")
        message.tracking.add(
            node_name="entrypoint", start="2026-01-01T00:00:00.000000", end="2026-01-01T00:00:00.000001"
        )
        message.payload.Pack(traffic.request(i))
        data = message.SerializeToString()
        built.append(gzip.compress(data, compresslevel=1) if len(data) > _MAX_PAYLOAD else data)
    return built


async def drive(
    url: str, subject: str, *, count: int, window: int, hops: int, traffic: Traffic = GREETINGS
) -> LoadResult:
    """Send ``count`` requests with ``window`` in flight; ``hops`` tracking entries expected per answer.

    The first ``window`` requests go out at once; after that, each answer sends the next request from its
    callback, so the window stays full without a wake-up of another task per request.
    """
    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    result = LoadResult()
    payloads = requests(count, traffic)
    sent_at: dict[int, float] = {}
    finished = asyncio.Event()
    prefix = f"_INBOX.bench{uuid.uuid4().hex[:8]}"

    async def send_next() -> None:
        index = result.sent
        if index < count:
            result.sent += 1
            sent_at[index] = time.perf_counter()
            await nc.publish(subject, payloads[index % len(payloads)], reply=f"{prefix}.{index}")

    async def on_answer(msg) -> None:
        index = int(msg.subject.rsplit(".", 1)[1])
        started = sent_at.pop(index, None)
        if started is None:
            result.duplicates += 1
            return
        result.latencies.append(time.perf_counter() - started)
        result.answered += 1
        result.wrong += not _is_right(msg.data, index, hops, traffic, len(payloads))
        if result.answered == count:
            finished.set()
        await send_next()

    await nc.subscribe(f"{prefix}.*", cb=on_answer, pending_msgs_limit=1_000_000)
    await nc.flush()
    began = time.perf_counter()
    for _ in range(min(window, count)):
        await send_next()
    await _wait(finished, result)
    result.seconds = time.perf_counter() - began
    await asyncio.sleep(0.2)  # a late duplicate would show up here
    await nc.close()
    return result


async def _wait(finished: asyncio.Event, result: LoadResult) -> None:
    last = -1
    while not finished.is_set() and result.answered != last:
        last = result.answered
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(finished.wait(), STALL_SECONDS)


def _is_right(data: bytes, index: int, hops: int, traffic: Traffic, built: int) -> bool:
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    answer = KreNatsMessage.FromString(data)
    return (
        not answer.error
        and traffic.is_right(answer.payload, index)
        and len(answer.tracking) == hops + 1
        and answer.tracking_id == f"bench-{index % built}"
    )
