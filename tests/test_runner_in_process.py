"""The runner's Node in this process, on a real nats-server: faults of the runner's own that no request can cause."""

from __future__ import annotations

import asyncio

from conftest import Requester, greeter_pb2, unpack

from krt_runner.config import load_settings
from krt_runner.local_krt.embedded import EmbeddedNats
from krt_runner.measurements import MemorySink
from krt_runner.node.lifecycle import RunningNode
from krt_runner.node.user_code import user_code_from


async def greet(ctx, request: greeter_pb2.Request) -> greeter_pb2.Request:
    await asyncio.sleep(0.01)
    return greeter_pb2.Request(name=f"{request.name}>node")


async def test_a_worker_outlives_a_bug_of_the_runners_own_and_keeps_taking_messages(
    nats_server: EmbeddedNats, requester: Requester
) -> None:
    settings = load_settings(
        env={
            "KRT_NATS_SERVER": nats_server.url,
            "KRT_NATS_INPUT": "in",
            "KRT_HANDLER_PATH": "in-process",
            "KRT_CONCURRENCY": "2",
            "KRT_DRAIN_TIMEOUT": "2",  # should the workers die, stop() gives up on what they left soon
            "KRT_LOG_LEVEL": "error",
        }
    )
    node = RunningNode(settings, user_code_from(greet, name="node", source="test"), sink=MemorySink())
    failures = []

    def broken_timing(*args):  # after the answer is published: the message is answered, then our code raises
        failures.append(args[0].tracking_id)
        raise RuntimeError("a bug in the runner's measuring")

    node.pipeline.recorder.record_soon = broken_timing  # type: ignore[method-assign]  # every message, on both workers
    await node.start()
    try:
        answers = await asyncio.gather(*(requester.greet("in", f"r{i}", timeout=5) for i in range(8)))
    finally:
        await node.stop()

    assert sorted(unpack(a, greeter_pb2.Request).name for a in answers) == sorted(f"r{i}>node" for i in range(8))
    assert len(failures) == 8  # every message hit the bug; the two workers lived on and took the rest
