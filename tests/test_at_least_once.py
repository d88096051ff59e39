"""At-least-once delivery on JetStream, for real: a nats-server with JetStream per test, node processes, crashes.

Each test counts, from the handler's own call log (tests/handlers/at_least_once.py), how many times each
request's handler ran, and prints what it measured (-s).
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
import pytest_asyncio
from conftest import ROOT, NodeFactory, NodeProcess, greeter_pb2, node_env

from krt_runner.client import Client
from krt_runner.errors import ClientConnectError, ErrorAnswer, NoResponders
from krt_runner.jetstream_names import consumer_name, stream_name
from krt_runner.local_krt.embedded import EmbeddedNats

HANDLERS = ROOT / "tests" / "handlers"
HANDLER = "at_least_once.py"


@pytest.fixture
def js_server() -> Iterator[EmbeddedNats]:
    """A nats-server with JetStream, its store in a temporary directory (kept across a restart)."""
    with EmbeddedNats(jetstream=True) as server:
        yield server


@pytest.fixture
def call_log(tmp_path: Path) -> Path:
    return tmp_path / "calls.log"


@pytest_asyncio.fixture
async def requester(js_server: EmbeddedNats) -> AsyncIterator[Client]:
    """A client sending through JetStream, quick to reconnect."""
    client = await Client.connect(js_server.url, delivery="at-least-once", reconnect_time_wait=0.1,
                                  error_cb=_ignore)
    yield client
    await client.close()


async def _ignore(error: Exception) -> None:
    """The requester's own reconnect errors while the server is down are expected."""


def start_nodes(
    start_node: NodeFactory, server: EmbeddedNats, call_log: Path, chain: list[str], *, replicas: int = 1,
    **env: str,
) -> dict[str, list[NodeProcess]]:  # fmt: skip
    """The chain ``a -> b -> ...`` (node names), each node ``replicas`` times, all at-least-once; once all ready."""
    subjects = [f"in-{name}" for name in chain] + [""]
    common = {"KRT_DELIVERY": "at-least-once", "CALL_LOG": str(call_log), "KRT_NATS_RECONNECT_WAIT": "0.2", **env}
    nodes = {
        name: [
            start_node(wait=False, **node_env(server, HANDLERS, HANDLER, input=subjects[i], output=subjects[i + 1],
                                              name=name, **common))
            for _ in range(replicas)
        ]
        for i, name in enumerate(chain)
    }
    for replica in (node for group in nodes.values() for node in group):
        replica.wait_for_line('"node ready"')
    return nodes


def calls(call_log: Path) -> list[tuple[str, str, str, str]]:
    """(node, pid, tracking_id, name) of every handler call so far."""
    if not call_log.exists():
        return []
    return [tuple(line.split(" ", 3)) for line in call_log.read_text().splitlines()]  # type: ignore[misc]


def ran_twice(call_log: Path) -> dict[str, int]:
    """Per node, how many requests its handler ran for more than once."""
    counts = Counter((node, tracking_id) for node, _, tracking_id, _ in calls(call_log))
    twice: Counter[str] = Counter()
    for (node, _), count in counts.items():
        if count > 1:
            twice[node] += 1
    return dict(twice)


async def consumer_state(server: EmbeddedNats, subject: str) -> tuple[int, int, int]:
    """The node's consumer: (messages waiting, delivered and not acked, redelivered)."""
    nc = await nats.connect(server.url)
    try:
        info = await nc.jetstream().consumer_info(stream_name(subject), consumer_name(subject))
    finally:
        await nc.close()
    return info.num_pending or 0, info.num_ack_pending or 0, info.num_redelivered or 0


async def settled(server: EmbeddedNats, subject: str, timeout: float = 5) -> bool:
    """Whether the node's consumer has nothing waiting and nothing unacked, within ``timeout`` seconds (the last
    acks may still be on their way when the last answer arrives)."""
    for _ in range(int(timeout / 0.1)):
        waiting, unacked, _ = await consumer_state(server, subject)
        if waiting == unacked == 0:
            return True
        await asyncio.sleep(0.1)
    return False


async def call_many(client: Client, names: list[str], *, window: int, timeout: float = 60) -> list[object]:
    """Each name's answer name (or its exception), with ``window`` calls in flight."""
    slots = asyncio.Semaphore(window)

    async def one(name: str) -> object:
        async with slots:
            try:
                answer = await client.call("in-a", greeter_pb2.Request(name=name), greeter_pb2.Request,
                                           timeout=timeout)
            except Exception as exc:
                return exc
            return answer.name

    return list(await asyncio.gather(*(one(name) for name in names)))


async def test_a_chain_of_two_replicas_per_node_answers_each_request_once_when_a_middle_replica_is_killed(
    js_server, start_node, call_log, requester
) -> None:
    nodes = start_nodes(start_node, js_server, call_log, ["a", "b", "c"], replicas=2, KRT_CONCURRENCY="4",
                        KRT_TEST_DELAY="0.005", KRT_JETSTREAM_ACK_WAIT="2")
    names = [f"n{i}" for i in range(1000)]
    running = asyncio.ensure_future(call_many(requester, names, window=64))
    while sum(node == "c" for node, *_ in calls(call_log)) < 300 and not running.done():
        await asyncio.sleep(0.02)
    nodes["b"][0].signal(signal.SIGKILL)
    killed_at = len(calls(call_log))

    answers = await running

    wrong = [(name, answer) for name, answer in zip(names, answers, strict=True) if answer != f"{name}>a>b>c"]
    twice = ran_twice(call_log)
    measured = (f"answers={len(answers)} wrong={len(wrong)} killed after {killed_at} handler calls; "
                f"handlers that ran twice per node: {twice}; duplicate answers ignored: {requester.ignored_answers}")
    print(measured)
    assert not wrong, f"{measured}: {wrong[:5]}"
    assert set(twice) <= {"a", "b", "c"}, measured
    assert all([await settled(js_server, f"in-{name}") for name in "abc"]), "messages left in a stream or unacked"


async def test_no_request_is_lost_when_nats_server_is_killed_and_restarted_on_its_store(
    js_server, start_node, call_log, requester
) -> None:
    nodes = start_nodes(start_node, js_server, call_log, ["a", "b"], KRT_CONCURRENCY="4", KRT_TEST_DELAY="0.005",
                        KRT_JETSTREAM_ACK_WAIT="2")
    names = [f"n{i}" for i in range(300)]
    running = asyncio.ensure_future(call_many(requester, names, window=32))
    while sum(node == "b" for node, *_ in calls(call_log)) < 100 and not running.done():
        await asyncio.sleep(0.02)
    js_server.stop(kill=True)
    await asyncio.sleep(0.5)
    await asyncio.to_thread(js_server.start)

    answers = await running

    answered = sum(answer == f"{name}>a>b" for name, answer in zip(names, answers, strict=True))
    failures = [answer for answer in answers if isinstance(answer, Exception)]
    measured = (f"answered {answered} of {len(names)}; failures {failures[:3]}; handlers that ran twice per node: "
                f"{ran_twice(call_log)}; duplicate answers ignored: {requester.ignored_answers}")
    print(measured)
    assert answered == len(names), measured
    assert all("reconnected to NATS" in node.output for group in nodes.values() for node in group)


async def test_a_handler_that_raises_gets_one_error_answer_and_its_message_is_acked_not_redelivered(
    js_server, start_node, call_log, requester
) -> None:
    start_nodes(start_node, js_server, call_log, ["a"], KRT_JETSTREAM_ACK_WAIT="0.5")

    with pytest.raises(ErrorAnswer, match="boom requested"):
        await requester.call("in-a", greeter_pb2.Request(name="boom"), greeter_pb2.Request, timeout=10)
    await asyncio.sleep(1.5)  # three ack waits: a message left unacked would have come again by now

    assert [name for *_, name in calls(call_log)] == ["boom"]
    assert requester.ignored_answers == 0
    assert await consumer_state(js_server, "in-a") == (0, 0, 0)


@pytest.mark.parametrize("name", ["mixed", '{"stream": "S", "seq": 1}', "sleep:8"], ids=["plain", "json", "slow"])
async def test_a_middle_node_whose_next_subject_is_answered_by_an_at_most_once_node_gives_an_error_answer(
    js_server, start_node, call_log, requester, name
) -> None:
    start_nodes(start_node, js_server, call_log, ["a"], KRT_NATS_OUTPUT="in-b")  # b: at-most-once, no stream
    node_b = start_node(**node_env(js_server, HANDLERS, HANDLER, input="in-b", name="b", CALL_LOG=str(call_log)))

    # b's answer, a JSON text in it, or late: past the 5 s ack timeout and the 2 s pause before a publish again
    with pytest.raises(ErrorAnswer) as refused:
        await requester.call("in-a", greeter_pb2.Request(name=name), greeter_pb2.Request, timeout=20)

    assert str(refused.value).startswith("error in node 'a': the answer published on 'in-b' was answered by a "
                                         "subscriber there, not stored by a JetStream stream")
    await asyncio.sleep(1)  # an answer published again meanwhile would have reached b by now
    assert [node for node, *_ in calls(call_log)] == ["a", "b"]  # b handled it once: its answer was taken for an ack
    assert await settled(js_server, "in-a")
    node_b.signal()


async def test_a_reply_with_headers_from_a_subscriber_of_the_next_subject_gives_an_error_answer(
    js_server, start_node, call_log, requester
) -> None:
    start_nodes(start_node, js_server, call_log, ["a"], KRT_NATS_OUTPUT="in-b")
    responder = await nats.connect(js_server.url)
    answered: list[bytes] = []

    async def micro_error(msg) -> None:  # as a NATS services endpoint answers an error
        answered.append(msg.data)
        headers = {"Nats-Service-Error": "oops", "Nats-Service-Error-Code": "500"}
        await responder.publish(msg.reply, b"", headers=headers)

    await responder.subscribe("in-b", cb=micro_error)
    try:
        with pytest.raises(ErrorAnswer, match="was answered by a subscriber there"):
            await requester.call("in-a", greeter_pb2.Request(name="micro"), greeter_pb2.Request, timeout=10)
        await asyncio.sleep(1)
    finally:
        await responder.close()

    assert len(answered) == 1


async def test_a_message_a_node_dies_on_every_time_is_terminated_after_max_deliver_with_an_error_answer(
    js_server, start_node, call_log, requester
) -> None:
    nodes = start_nodes(start_node, js_server, call_log, ["a"], replicas=3, KRT_JETSTREAM_ACK_WAIT="0.5",
                        KRT_JETSTREAM_MAX_DELIVER="2")

    with pytest.raises(ErrorAnswer, match=r"delivered 2 times .* never answered.*terminated") as answer:
        await requester.call("in-a", greeter_pb2.Request(name="die"), greeter_pb2.Request, timeout=30)
    await asyncio.sleep(1.0)  # two ack waits more: a message not terminated would come again

    dead = [node for node in nodes["a"] if node.process.poll() is not None]
    assert len(calls(call_log)) == 2 and len(dead) == 2, calls(call_log)
    assert "error in node 'a'" in answer.value.error
    assert (await consumer_state(js_server, "in-a"))[:2] == (0, 0)


async def test_a_handler_slower_than_the_ack_wait_is_not_delivered_twice_while_it_runs(
    js_server, start_node, call_log, requester
) -> None:
    start_nodes(start_node, js_server, call_log, ["a"], KRT_CONCURRENCY="2", KRT_JETSTREAM_ACK_WAIT="0.5")

    answer = await requester.call("in-a", greeter_pb2.Request(name="sleep:2"), greeter_pb2.Request, timeout=10)

    assert answer.name == "sleep:2>a"
    assert len(calls(call_log)) == 1 and requester.ignored_answers == 0
    assert await settled(js_server, "in-a")  # the last ack may still be on its way as the answer arrives
    assert await consumer_state(js_server, "in-a") == (0, 0, 0)


async def test_tracking_measurements_early_replies_and_handler_timeouts_work_as_in_the_default_mode(
    js_server, start_node, call_log, requester, tmp_path
) -> None:
    nodes = start_nodes(start_node, js_server, call_log, ["a", "b"], KRT_HANDLER_TIMEOUT="0.5",
                        KRT_MEASUREMENTS_ENABLED="true", KRT_MEASUREMENTS_FILE=str(tmp_path / "points.lp"))

    answer = await requester.call_raw("in-a", greeter_pb2.Request(name="plain"), timeout=10)
    early = await requester.call("in-a", greeter_pb2.Request(name="early"), greeter_pb2.Request, timeout=10)
    with pytest.raises(ErrorAnswer, match=r"error in node 'a': handler timed out after 0\.5s"):
        await requester.call("in-a", greeter_pb2.Request(name="sleep:2"), greeter_pb2.Request, timeout=10)
    await asyncio.sleep(0.5)  # the last node's silence after the early answer, and any stray answer
    for node in (node for group in nodes.values() for node in group):
        node.signal(signal.SIGTERM)
        assert await asyncio.to_thread(node.wait) == 0

    assert [entry.node_name for entry in answer.tracking] == ["entrypoint", "a", "b"] and not answer.error
    assert early.name == "early from a" and requester.ignored_answers == 0
    points = (tmp_path / "points.lp").read_text()
    assert points.count("node_elapsed_time,") == 5, points  # a: 3 messages, b: 2
    assert f'tracking_id="{answer.tracking_id}"' in points and "workflow_elapsed_time," in points
    assert [name for node, *_, name in calls(call_log) if node == "b"] == ["plain>a", "early>a"]


async def test_sigterm_finishes_and_acks_what_the_replica_holds_and_leaves_the_rest_to_the_other_replica(
    js_server, start_node, call_log, requester
) -> None:
    nodes = start_nodes(start_node, js_server, call_log, ["a"], replicas=2, KRT_TEST_DELAY="0.1")
    names = [f"n{i}" for i in range(30)]
    running = asyncio.ensure_future(call_many(requester, names, window=30))
    stopping = nodes["a"][0]
    while not any(pid == str(stopping.process.pid) for _, pid, *_ in calls(call_log)):
        await asyncio.sleep(0.01)
    stopping.signal(signal.SIGTERM)

    answers = await running

    assert answers == [f"{name}>a" for name in names]
    assert await asyncio.to_thread(stopping.wait) == 0, stopping.output
    assert ran_twice(call_log) == {} and requester.ignored_answers == 0
    took = sum(pid == str(stopping.process.pid) for _, pid, *_ in calls(call_log))
    assert 0 < took < len(names), f"the stopping replica handled {took}"
    assert await settled(js_server, "in-a")


async def test_at_the_drain_timeout_a_running_message_goes_back_to_jetstream_and_another_replica_answers_it(
    js_server, start_node, call_log, requester
) -> None:
    points = call_log.parent / "points.lp"
    nodes = start_nodes(start_node, js_server, call_log, ["a"], replicas=2, KRT_DRAIN_TIMEOUT="0.5",
                        KRT_MEASUREMENTS_ENABLED="true", KRT_MEASUREMENTS_FILE=str(points))
    running = asyncio.ensure_future(
        requester.call("in-a", greeter_pb2.Request(name="sleep:1.5"), greeter_pb2.Request, timeout=20))
    while not calls(call_log):
        await asyncio.sleep(0.01)
    first = next(node for node in nodes["a"] if str(node.process.pid) == calls(call_log)[0][1])
    first.signal(signal.SIGTERM)

    answer = await running

    assert answer.name == "sleep:1.5>a", "answered, not an error: the other replica took it"
    assert await asyncio.to_thread(first.wait) == 0, first.output
    assert "released=1" in first.output or '"released": 1' in first.output, first.output
    assert len(calls(call_log)) == 2 and requester.ignored_answers == 0
    # Handed back, it is no failure: the replica that answers it makes its points (a failed one was made too).
    written = points.read_text() if points.exists() else ""  # the answering replica's may not be flushed yet
    assert 'error="failed"' not in written, written


async def test_messages_handed_back_at_the_drain_timeout_reach_the_other_replica_well_before_the_ack_wait(
    js_server, start_node, call_log, requester
) -> None:
    # Handed back at once, JetStream gave some straight to the stopping replica's pull requests, still open on the
    # server until they expire: lost there until the ack wait (30 s), past the callers' timeout.
    nodes = start_nodes(start_node, js_server, call_log, ["a", "b"], replicas=2, KRT_CONCURRENCY="4",
                        KRT_DRAIN_TIMEOUT="1")
    names = [f"sleep:2.{i}" for i in range(8)]
    running = asyncio.ensure_future(call_many(requester, names, window=8, timeout=25))
    while len(calls(call_log)) < 8:  # four running on each replica of a
        await asyncio.sleep(0.01)
    stopping = nodes["a"][0]
    stopping.signal(signal.SIGTERM)

    answers = await running

    assert answers == [f"{name}>a>b" for name in names]
    assert await asyncio.to_thread(stopping.wait) == 0, stopping.output
    assert '"released": 4' in stopping.output, stopping.output


async def test_at_least_once_against_a_server_without_jetstream_stops_start_up_with_exit_2(
    nats_server, start_node, call_log
) -> None:
    node = start_node(wait=False, **node_env(nats_server, HANDLERS, HANDLER, input="in-a", name="a",
                                             KRT_DELIVERY="at-least-once", CALL_LOG=str(call_log)))

    assert node.wait() == 2
    assert "the NATS server has no JetStream, which at-least-once delivery needs" in node.output
    assert "start nats-server with -js" in node.output and "node ready" not in node.output
    assert "or deliver at most once (KRT_DELIVERY=at-most-once)" in node.output


async def test_a_stream_that_cannot_be_created_stops_start_up_with_exit_2_naming_it(
    js_server, start_node, call_log
) -> None:
    nc = await nats.connect(js_server.url)
    await nc.jetstream().add_stream(name=stream_name("in-a"), subjects=["elsewhere"])  # the name, taken
    await nc.close()

    node = start_node(wait=False, **node_env(js_server, HANDLERS, HANDLER, input="in-a", name="a",
                                             KRT_DELIVERY="at-least-once", CALL_LOG=str(call_log)))

    assert node.wait() == 2
    assert f"cannot create JetStream stream '{stream_name('in-a')}' for the input subject 'in-a'" in node.output
    assert "exists and captures other subjects: delete or rename it, or add 'in-a' to its subjects" in node.output


async def test_an_at_least_once_requester_on_a_server_without_jetstream_is_told_so_when_it_connects(nats_server):
    with pytest.raises(ClientConnectError, match="the NATS server has no JetStream, which at-least-once") as no:
        await Client.connect(nats_server.url, delivery="at-least-once")
    assert 'deliver at most once (delivery="at-most-once" (krt-runner call --delivery))' in str(no.value)


async def test_an_at_least_once_node_tells_nats_micro_its_endpoint_is_read_through_its_stream_and_consumer(
    js_server, start_node, call_log
) -> None:
    start_nodes(start_node, js_server, call_log, ["a"])
    nc = await nats.connect(js_server.url)
    try:
        reply = await nc.request("$SRV.INFO", b"", timeout=5)
    finally:
        await nc.close()

    info = json.loads(reply.data)
    assert info["metadata"]["delivery"] == "at-least-once"
    assert info["endpoints"] == [{"name": "a", "subject": "in-a", "queue_group": "", "metadata": {
        "delivery": "at-least-once", "stream": stream_name("in-a"), "consumer": consumer_name("in-a")}}]


async def test_requests_and_answers_near_the_max_payload_leave_room_for_the_nats_msg_id_header(
    js_server, start_node, call_log, requester
) -> None:
    # NATS counts a publish's headers in its max payload: an envelope that fits alone but not with its Nats-Msg-Id
    # would make the server close the publisher's connection. Names sized across the last few hundred bytes below
    # the limit put the requester's envelope, and then node a's answer, in that window for some of them.
    nodes = start_nodes(start_node, js_server, call_log, ["a", "b"])
    max_payload = 1024 * 1024  # nats-server's default, which EmbeddedNats keeps
    sizes = range(max_payload - 400, max_payload, 16)

    for size in sizes:
        answer = await requester.call("in-a", greeter_pb2.Request(name="x" * size), greeter_pb2.Request, timeout=20)
        assert answer.name == "x" * size + ">a>b"

    assert all(node.process.poll() is None for group in nodes.values() for node in group)
    assert await settled(js_server, "in-a")  # node a acks once b's stream took its answer: b may answer first
    assert await consumer_state(js_server, "in-a") == (0, 0, 0)


@pytest.mark.parametrize("deleted", ["consumer", "stream"])
async def test_a_node_whose_consumer_or_stream_is_deleted_makes_them_again_and_serves(
    js_server, start_node, call_log, requester, deleted
) -> None:
    nodes = start_nodes(start_node, js_server, call_log, ["a"])
    assert await requester.call("in-a", greeter_pb2.Request(name="before"), greeter_pb2.Request, timeout=10)
    nc = await nats.connect(js_server.url)
    js = nc.jetstream()
    if deleted == "consumer":
        await js.delete_consumer(stream_name("in-a"), consumer_name("in-a"))
    else:
        await js.delete_stream(stream_name("in-a"))
    await nc.close()

    answer = await call_when_served(requester, "after")

    assert answer.name == "after>a"
    # once, though each of its open pull requests ended with the server's word of it
    assert nodes["a"][0].output.count("the node's JetStream consumer was deleted: making it again") == 1


async def call_when_served(requester: Client, name: str, timeout: float = 20) -> greeter_pb2.Request:
    """Once the stream is there again (a request sent before it is would find no stream)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await requester.call("in-a", greeter_pb2.Request(name=name), greeter_pb2.Request, timeout=5)
        except NoResponders:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.1)
