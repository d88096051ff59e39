"""Closing a client, or a KRT under local(), while calls are in flight; and calling while NATS is away (fourth
outside audit)."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import threading
import time
from pathlib import Path

import nats
import pytest
from conftest import KRT_RUNNER, ROOT, greeter_pb2

import krt_runner
from krt_runner.client import BlockingClient, Client
from krt_runner.errors import KrtRunnerError, NotConnected
from krt_runner.local_krt.embedded import EmbeddedNats

# A call's own timeout in these tests: far longer than any of them should wait.
LONG = 30.0
NO_MEASUREMENTS = {"KRT_MEASUREMENTS_ENABLED": "false"}


async def _ignore(_msg) -> None:
    pass


async def _silent_listener(url: str) -> nats.NATS:
    """Something that takes requests on 'silent' and never answers them."""
    nc = await nats.connect(url)
    await nc.subscribe("silent", cb=_ignore)
    await nc.flush()
    return nc


async def test_a_call_in_flight_raises_not_connected_as_soon_as_its_client_closes(nats_server):
    listener = await _silent_listener(nats_server.url)
    client = await Client.connect(nats_server.url)
    try:
        call = asyncio.create_task(client.call("silent", greeter_pb2.Request(name="x"), greeter_pb2.Response,
                                               timeout=LONG))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await client.close()
        with pytest.raises(NotConnected, match="closed before the answer came"):
            await asyncio.wait_for(call, 5)
        assert time.monotonic() - started < 5
    finally:
        await listener.close()


async def test_a_call_while_nats_is_away_raises_not_connected_at_once():
    with EmbeddedNats() as server:
        client = await Client.connect(server.url, reconnect_time_wait=0.2)
        server.stop()
        for _ in range(100):  # bounded: until the client has seen the server go
            if not client._nc.is_connected:
                break
            await asyncio.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(NotConnected, match="connection is down"):
            await client.call("any", greeter_pb2.Request(name="x"), greeter_pb2.Response, timeout=LONG)
        assert time.monotonic() - started < 1
        await client.close()


def test_a_blocking_call_on_another_thread_ends_when_the_client_closes(nats_server):
    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, daemon=True)
    loop_thread.start()
    listener = asyncio.run_coroutine_threadsafe(_silent_listener(nats_server.url), loop).result(10)
    client = BlockingClient(nats_server.url)
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            client.call("silent", greeter_pb2.Request(name="x"), greeter_pb2.Response, timeout=LONG)
        except BaseException as exc:  # what the thread got is the test's result
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.3)
    client.close()
    caller.join(5)
    closer = threading.Thread(target=client.close)  # a second close, from any thread, is a no-op
    closer.start()
    closer.join(5)
    asyncio.run_coroutine_threadsafe(listener.close(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    loop_thread.join(5)
    loop.close()

    assert not caller.is_alive(), "the call still waits after close()"
    assert len(outcome) == 1 and isinstance(outcome[0], NotConnected), outcome
    with pytest.raises(NotConnected, match="closed"):
        client.call("silent", greeter_pb2.Request(name="x"), greeter_pb2.Response)


@pytest.fixture(scope="module")
def greeter_krt(tmp_path_factory):
    """Two KRTs as `krt-runner init` writes them: both have a proto/entrypoint.proto."""
    folder = tmp_path_factory.mktemp("two-krts")
    for name in ("one", "two"):
        subprocess.run([*KRT_RUNNER, "init", name], cwd=folder, check=True, capture_output=True, timeout=60)
    return folder


def test_two_krts_written_by_init_run_in_one_process_each_with_its_own_types(greeter_krt):
    answers = {}
    for name in ("one", "two"):
        with krt_runner.local(greeter_krt / name, env=NO_MEASUREMENTS, output=io.StringIO(), grpc_port=None) as krt:
            answers[name] = krt.workflow("greet").submit({"name": name}).result(LONG)

    assert {name: answer.greeting for name, answer in answers.items()} == {"one": "Hello, one!", "two": "Hello, two!"}
    assert type(answers["one"]).DESCRIPTOR.full_name == "one.Response"
    assert type(answers["two"]).DESCRIPTOR.full_name == "two.Response"
    assert not [entry for entry in sys.path if str(greeter_krt) in entry]


def refusals_in_a_done_callback(krt, greet) -> list[BaseException]:
    """What waiting and closing raise in a done callback on the KRT's own thread. A callback added once its future
    is answered runs at once on the adding thread instead (a quick answer can win that race): then it is tried
    again."""
    seen: list[BaseException] = []
    ran_here: list[bool] = []

    def on_done(_future) -> None:
        if threading.current_thread() is threading.main_thread():
            ran_here.append(True)
            return
        pending = greet.submit({"name": "later"})
        for attempt in (lambda: pending.result(LONG), pending.exception, lambda: krt_runner.wait([pending]),
                        krt.close):
            try:
                attempt()
            except KrtRunnerError as exc:
                seen.append(exc)

    for _ in range(20):
        ran_here.clear()
        first = greet.submit({"name": "first"})
        first.add_done_callback(on_done)
        assert first.result(LONG).greeting == "Hello, first!"
        if not ran_here:
            break
    deadline = time.monotonic() + 5
    while len(seen) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    return seen


def test_a_krt_refuses_to_wait_or_close_in_a_done_callback_and_closes_once_from_two_threads(greeter_krt):
    krt = krt_runner.local(greeter_krt / "one", env=NO_MEASUREMENTS, output=io.StringIO(), grpc_port=None)
    greet = krt.workflow("greet")

    seen = refusals_in_a_done_callback(krt, greet)
    assert greet.submit({"name": "still"}).result(LONG).greeting == "Hello, still!"  # the refused close undid nothing
    with pytest.raises(TypeError, match="timeout is a number"):
        greet.submit({"name": "x"}, timeout="3")
    closers = [threading.Thread(target=krt.close) for _ in range(2)]
    for closer in closers:
        closer.start()
    for closer in closers:
        closer.join(60)

    assert [str(exc).split(" on the KRT's own thread")[0] for exc in seen] == [
        "waiting for a request's answer", "waiting for a request's answer", "waiting for a request's answer",
        "closing the KRT"]
    assert not any(closer.is_alive() for closer in closers)
    with pytest.raises(NotConnected, match="is closed"):
        greet.submit({"name": "after"})


def test_local_names_the_argument_of_a_value_of_the_wrong_type(tmp_path: Path):
    with pytest.raises(TypeError, match=r"local\(env=...\): 'KRT_CONCURRENCY': 4 is not a str"):
        krt_runner.local(tmp_path, env={"KRT_CONCURRENCY": 4})
    with pytest.raises(TypeError, match=r"local\(replicas=...\): 'greet': '2' is not a whole number"):
        krt_runner.local(tmp_path, replicas={"greet": "2"})
    with pytest.raises(KrtRunnerError, match=r"local\(\)'s replicas ghost: no node 'ghost' in krt.yml"):
        krt_runner.local(ROOT / "examples" / "greeter", replicas={"ghost": 2})
