"""At-most-once against at-least-once: the same 3-node krt-runner chain in both delivery modes, on one nats-server
with JetStream, in alternating pairs.

The at-least-once requester does what krt_runner's client does: each request published through JetStream
with its inbox in the envelope and ``Nats-Msg-Id`` = its tracking id, the answers taken on the inbox. It is as
lean as the core requester it is compared with (a publish and a callback per request): the publish
acknowledgements come to a wildcard inbox of their own and are counted there, none awaited one at a time.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from typing import Any

import nats
from bench import spread
from greeter_pb2 import Request, Response
from load import LoadResult, _wait, drive

from krt_runner._proto.kre_nats_msg_pb2 import KreNatsMessage

MODES = ("at-most-once", "at-least-once")
TMPFS = "at-least-once-tmpfs"
GOAL = 0.5  # at-least-once answers/s at W=128, as a share of at-most-once's


async def drive_js(url: str, subject: str, *, count: int, window: int, hops: int) -> LoadResult:
    """As :func:`load.drive`, through JetStream: ``count`` requests, ``window`` in flight."""
    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    requester = _Requester(nc, subject, count=count, hops=hops)
    await nc.subscribe(f"{requester.prefix}.*", cb=requester.on_answer, pending_msgs_limit=1_000_000)
    await nc.subscribe(f"{requester.ack_prefix}.*", cb=requester.on_ack, pending_msgs_limit=1_000_000)
    await nc.flush()
    result = requester.result
    began = time.perf_counter()
    for _ in range(min(window, count)):
        await requester.send_next()
    await _wait(requester.finished, result)
    result.seconds = time.perf_counter() - began
    await asyncio.sleep(0.2)  # a late duplicate would show up here
    result.wrong += requester.refused + (result.sent - requester.acked)  # every publish acknowledged, none refused
    await nc.close()
    return result


class _Requester:
    """Each answer sends the next request from its callback, as load.drive does."""

    def __init__(self, nc: Any, subject: str, *, count: int, hops: int) -> None:
        self.nc, self.subject, self.count, self.hops = nc, subject, count, hops
        self.run = uuid.uuid4().hex[:8]
        self.prefix, self.ack_prefix = f"_INBOX.benchjs{self.run}", f"_INBOX.benchjsack{self.run}"
        self.payloads = _requests(count, self.run, self.prefix)
        self.result = LoadResult()
        self.sent_at: dict[int, float] = {}
        self.acked = self.refused = 0
        self.finished = asyncio.Event()

    async def send_next(self) -> None:
        index = self.result.sent
        if index < self.count:
            self.result.sent += 1
            self.sent_at[index] = time.perf_counter()
            await self.nc.publish(self.subject, self.payloads[index], reply=f"{self.ack_prefix}.{index}",
                                  headers={"Nats-Msg-Id": f"{self.run}-{index}"})

    async def on_ack(self, msg: Any) -> None:
        self.acked += 1
        self.refused += b'"error"' in msg.data or bool(msg.headers)  # refused, or no stream (a 503 status)

    async def on_answer(self, msg: Any) -> None:
        index = int(msg.subject.rsplit(".", 1)[1])
        started = self.sent_at.pop(index, None)
        result = self.result
        if started is None:
            result.duplicates += 1
            return
        result.latencies.append(time.perf_counter() - started)
        result.answered += 1
        result.wrong += not _is_right(msg.data, index, self.hops, self.run)
        if result.answered == self.count:
            self.finished.set()
        await self.send_next()


def _requests(count: int, run: str, prefix: str) -> list[bytes]:
    built = []
    for i in range(count):
        message = KreNatsMessage(tracking_id=f"{run}-{i}", reply=f"{prefix}.{i}")
        message.tracking.add(node_name="entrypoint", start="2026-01-01T00:00:00.000000",
                             end="2026-01-01T00:00:00.000001")
        message.payload.Pack(Request(name=f"n{i}"))
        built.append(message.SerializeToString())
    return built


def _is_right(data: bytes, index: int, hops: int, run: str) -> bool:
    answer = KreNatsMessage.FromString(data)
    response = Response()
    return (not answer.error and answer.payload.Unpack(response) and response.greeting == f"n{index}"
            and len(answer.tracking) == hops + 1 and answer.tracking_id == f"{run}-{index}")


def delivery_modes(bench: Any, tmpfs_bench: Any | None, *, quick: bool) -> list[dict[str, Any]]:
    """The 3-node chain at W=1 and W=128, at-most-once and at-least-once alternating; answers/s and latency.

    A diagnostic side at W=128, when ``tmpfs_bench`` is given: at-least-once on a nats-server whose JetStream store
    is in a memory file system, which shows how much of the difference is the server's writes to its disk.
    """
    rows = []
    for window in (1, 128):
        repeats = 1 if quick else (5 if window == 128 else 3)  # the goal is judged on the W=128 pairs
        count = (100 if window == 1 else 1500) if quick else (1000 if window == 1 else 10000)
        sides = [(MODES[0], bench), (MODES[1], bench)]
        if window == 128 and tmpfs_bench is not None:
            sides.append((TMPFS, tmpfs_bench))
        samples: dict[str, list[Any]] = {side: [] for side, _ in sides}
        for repeat in range(repeats):
            for side, on in sides if repeat % 2 == 0 else sides[::-1]:
                samples[side].append(_measure(on, side, window, count))
        rows.append(_row(window, samples))
    return rows


def _measure(bench: Any, side: str, window: int, count: int) -> Any:
    mode = MODES[0] if side == MODES[0] else MODES[1]
    driver = drive if mode == MODES[0] else drive_js
    run = bench.measure("krt", 3, window, count, env={"KRT_DELIVERY": mode}, driver=driver, label=side)
    asyncio.run(_delete_streams(bench.nats.url))
    return run


def _row(window: int, samples: dict[str, list[Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {"nodes": 3, "window": window, "repeats": len(samples[MODES[0]])}
    for side, runs in samples.items():
        figures = [run.figures() for run in runs]
        row[side] = {key: statistics.median(f[key] for f in figures) for key in figures[0]}
    for side, key in ((MODES[1], "throughput_ratio"), (TMPFS, "tmpfs_throughput_ratio")):
        if side in samples:
            pairs = zip(samples[MODES[0]], samples[side], strict=True)
            ratios = [js.figures()["answers_per_s"] / core.figures()["answers_per_s"] for core, js in pairs]
            row[key] = spread(ratios)
    return row


async def _delete_streams(url: str) -> None:
    """Each run's chain has subjects of its own: its streams go, so that the server stays as lean as at the start."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    for info in await js.streams_info():
        await js.delete_stream(info.config.name)
    await nc.close()


def report(rows: list[dict[str, Any]]) -> list[str]:
    """The section of BENCHMARKS.md."""
    lines = [
        "## Delivery: at-most-once against at-least-once (3-node chain)",
        "",
        "The same chain, measurements on, in each delivery mode on one nats-server with JetStream (file storage, in "
        "the system's temporary directory), alternating. At-least-once: requests published through JetStream "
        "(their acknowledgements counted as they come, none awaited one at a time), every node pulling from its "
        f"stream and acking each message once its answer was acknowledged by the next stream (middle nodes) or sent "
        f"(the last). `{TMPFS}`, a diagnostic: the same on a nats-server whose store is in /dev/shm.",
        "",
        "| W | delivery | answers/s | p50 ms | p99 ms | nodes' CPU s/1000 msgs | nats-server CPU µs/answer | "
        "lost/wrong/dup |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        for side in (*MODES, TMPFS):
            if side in row:
                f = row[side]
                lines.append(f"| {row['window']} | {side} | {f['answers_per_s']:.0f} | {f['p50_ms']:.2f} | "
                             f"{f['p99_ms']:.2f} | {f['cpu_s_per_1000']:.3f} | {f['nats_cpu_us']:.0f} | "
                             f"{f['lost']:.0f}/{f['wrong']:.0f}/{f['duplicates']:.0f} |")
    row = next(row for row in rows if row["window"] == 128)
    target = row["throughput_ratio"]
    met = "yes" if target["median"] >= GOAL else "NO"
    lines += [
        "",
        "| goal | measured: median of pairs [min - max] | met |",
        "| --- | --- | --- |",
        f"| W=128: at-least-once >= {GOAL}x at-most-once answers/s | {target['median']:.2f}x "
        f"[{target['min']:.2f} - {target['max']:.2f}] | {met} |",
    ]
    if "tmpfs_throughput_ratio" in row:
        ratio = row["tmpfs_throughput_ratio"]
        lines.append(f"| (diagnostic) the same, JetStream store in /dev/shm | {ratio['median']:.2f}x "
                     f"[{ratio['min']:.2f} - {ratio['max']:.2f}] | |")
    return lines
