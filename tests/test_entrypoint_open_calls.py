"""When the entrypoint stops, each connection's last call waits before it answers (see OpenCalls), and a call that
arrives then is refused."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import structlog
from conftest import greeter_pb2

from krt_runner.config import load_settings
from krt_runner.entrypoint.calls import Forwarder, Refused
from krt_runner.entrypoint.open_calls import OpenCalls
from krt_runner.entrypoint.service import Rpc
from krt_runner.node.broker import Broker

FOREVER = 3600.0


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


class Calls:
    """Calls held open until released, each on a peer of :class:`OpenCalls`."""

    def __init__(self, open_calls: OpenCalls) -> None:
        self.open_calls = open_calls
        self.released: dict[str, asyncio.Event] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str, peer: str, error: Exception | None = None) -> None:
        released = self.released[name] = asyncio.Event()

        async def call() -> None:
            async with self.open_calls.call(peer):
                await released.wait()
                if error is not None:
                    raise error

        self.tasks[name] = asyncio.create_task(call())

    async def release(self, *names: str) -> None:
        for name in names:
            self.released[name].set()
        await settle()

    def finished(self) -> set[str]:
        return {name for name, task in self.tasks.items() if task.done()}

    async def cancel(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)


async def test_while_serving_no_call_waits():
    calls = Calls(OpenCalls(last_answer_delay=FOREVER))
    calls.start("a", "ipv4:127.0.0.1:1000")
    await settle()
    await calls.release("a")
    assert calls.finished() == {"a"}


async def test_when_stopping_only_the_last_call_of_each_connection_waits_even_with_an_error():
    open_calls = OpenCalls(last_answer_delay=FOREVER)
    calls = Calls(open_calls)
    calls.start("a1", "ipv4:127.0.0.1:1000")
    calls.start("a2", "ipv4:127.0.0.1:1000")
    calls.start("b", "ipv4:127.0.0.1:2000", error=RuntimeError("refused"))
    await settle()
    open_calls.stopping = True

    await calls.release("a1")
    assert calls.finished() == {"a1"}
    await calls.release("a2", "b")
    assert calls.finished() == {"a1"}  # a2 and b are their connections' last: they wait
    await calls.cancel()


async def one_call_open_while_stopping(name: str, *, delay: float) -> Calls:
    """Calls of a stopping :class:`OpenCalls` (whose last call of a connection waits ``delay``), ``name`` open."""
    open_calls = OpenCalls(last_answer_delay=delay)
    open_calls.stopping = True
    calls = Calls(open_calls)
    calls.start(name, "ipv4:127.0.0.1:1000")
    await settle()
    return calls


async def test_the_last_call_answers_once_the_delay_is_over():
    calls = await one_call_open_while_stopping("last", delay=0.01)
    await calls.release("last")
    await asyncio.wait_for(calls.tasks["last"], timeout=10)


async def test_a_cancelled_call_does_not_wait():
    calls = await one_call_open_while_stopping("cancelled", delay=FOREVER)
    calls.tasks["cancelled"].cancel()
    await settle()
    assert calls.tasks["cancelled"].cancelled()


async def test_a_call_that_came_in_before_the_server_stopped_taking_new_ones_is_refused_as_unavailable():
    settings = load_settings(env={"KRT_NATS_SERVER": "nats://127.0.0.1:1", "KRT_NATS_INPUT": "in",
                                  "KRT_HANDLER_PATH": "x"})
    forwarder = Forwarder(Broker(settings, structlog.get_logger()), request_timeout=5.0, logger=structlog.get_logger())
    rpc = Rpc(name="Greet", workflow="greeting", subject="greeting-entry", request_class=greeter_pb2.Request,
              request_type_url="type.googleapis.com/greeter.Request", response_name="greeter.Response",
              response_type_url="type.googleapis.com/greeter.Response", response_class=greeter_pb2.Response)
    forwarder.open_calls.stopping = True  # as EntrypointServer.stop() sets it, before gRPC stops taking calls

    with pytest.raises(Refused) as refused:
        await forwarder._forward(rpc, greeter_pb2.Request(name="late").SerializeToString(), "t-1", 5.0)

    assert (refused.value.code, refused.value.details) == (grpc.StatusCode.UNAVAILABLE,
                                                           "the entrypoint is stopping; try again")


async def test_a_call_that_opens_as_the_drain_finds_none_open_is_waited_for_not_given_up_on():
    calls = await one_call_open_while_stopping("earlier", delay=0.01)
    open_calls = calls.open_calls
    late: list[asyncio.Task[None]] = []
    answered = []

    async def refused_call() -> None:  # arrives after the stop: refused at once, then its connection's last delay
        async with open_calls.call("late-peer"):
            pass
        answered.append("refused")

    class LetsOneCallIn(asyncio.Event):
        def set(self) -> None:  # the earlier call ended: the drain wakes, and a late call opens in the same turn
            super().set()
            if not late:
                late.append(asyncio.ensure_future(refused_call()))

    open_calls._none_open = LetsOneCallIn()  # cleared, as the earlier call left it
    draining = asyncio.ensure_future(open_calls.drain(FOREVER))
    await settle()
    await calls.release("earlier")

    assert await asyncio.wait_for(draining, 5) == 0
    assert late and not open_calls.gave_up and not late[0].cancelled() and answered == ["refused"]


def test_an_answer_is_checked_for_proto2s_required_fields_and_a_large_one_by_its_type_name_alone():
    from google.protobuf.descriptor_pb2 import UninterpretedOption

    from krt_runner.entrypoint.calls import MAX_CHECKED_ANSWER, _check_bytes, _response
    from krt_runner.envelope import KreNatsMessage

    part = UninterpretedOption.NamePart  # proto2: name_part and is_extension are required
    rpc = Rpc(name="Get", workflow="w", subject="s", request_class=part, request_type_url="", response_name=
              "google.protobuf.UninterpretedOption.NamePart", response_type_url="type.googleapis.com/"
              "google.protobuf.UninterpretedOption.NamePart", response_class=part)

    _check_bytes(rpc, part(name_part="x", is_extension=False).SerializeToString())
    with pytest.raises(Refused, match=r"required fields missing: is_extension$"):
        _check_bytes(rpc, part(name_part="x").SerializePartialToString())
    with pytest.raises(Refused, match=r"required fields missing: name_part, is_extension$"):
        _check_bytes(rpc, b"")
    large = KreNatsMessage()
    large.payload.type_url = rpc.response_type_url
    large.payload.value = b"\xff" * (MAX_CHECKED_ANSWER + 1)  # not parsed: several times its size in memory
    assert _response(rpc, large.SerializeToString(), 64 << 20) == large.payload.value
