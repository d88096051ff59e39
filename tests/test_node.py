"""A node end to end: real nats-server, real `krt-runner run` processes."""

from __future__ import annotations

import asyncio
import gzip
import json
import signal
from pathlib import Path

import pytest
from conftest import ROOT, Requester, greeter_pb2, node_env, request_envelope, unpack

from krt_runner.envelope import KreNatsMessage, decode, epoch_seconds
from krt_runner.node.intake import DIRECT_MAX_BYTES, DIRECT_MAX_MSGS

HANDLERS = ROOT / "tests" / "handlers"
GREETER = ROOT / "examples" / "greeter"
# How long to keep listening for a second, unwanted answer.
SECOND_ANSWER_WINDOW = 0.5


async def answers_to(requester: Requester, subject: str, data: bytes, *, expect: int = 1) -> list[KreNatsMessage]:
    """Publish ``data`` with a fresh inbox; collect every answer for a while after the first."""
    nc = requester.nc
    inbox = nc.new_inbox()
    received: list[KreNatsMessage] = []
    got_enough = asyncio.Event()

    async def collect(msg) -> None:
        received.append(decode(msg.data, max_decompressed=64 * 1024 * 1024))
        if len(received) >= expect:
            got_enough.set()

    sub = await nc.subscribe(inbox, cb=collect)
    await nc.publish(subject, data, reply=inbox)
    await asyncio.wait_for(got_enough.wait(), timeout=10)
    await asyncio.sleep(SECOND_ANSWER_WINDOW)
    await sub.unsubscribe()
    return received


def names(answer: KreNatsMessage) -> list[str]:
    return [entry.node_name for entry in answer.tracking]


async def test_single_node_round_trip_answers_the_requester(nats_server, start_node, requester):
    start_node(**node_env(nats_server, GREETER, "src/greet.py", input="greet-in"))

    answer = await requester.greet("greet-in", "Ada")

    assert answer.error == ""
    assert unpack(answer, greeter_pb2.Response).greeting == "Hello, Ada!"
    assert names(answer) == ["entrypoint", "greet"]


async def test_three_node_chain_answers_with_every_tracking_entry_in_order(nats_server, start_node, requester):
    for name, subject_in, subject_out in [("a", "s1", "s2"), ("b", "s2", "s3"), ("c", "s3", "")]:
        start_node(**node_env(nats_server, HANDLERS, "behaviours.py", input=subject_in, output=subject_out, name=name))

    answer = await requester.greet("s1", "x")

    assert unpack(answer, greeter_pb2.Request).name == "x>a>b>c"
    assert names(answer) == ["entrypoint", "a", "b", "c"]
    for entry in answer.tracking[1:]:
        assert entry.start <= entry.end
    assert answer.tracking[1].end <= answer.tracking[2].start


@pytest.mark.parametrize("module", ["behaviours.py", "behaviours_sync.py"])
async def test_init_runs_once_before_any_message(nats_server, start_node, requester, module):
    start_node(**node_env(nats_server, HANDLERS, module, input="in"))

    answers = await asyncio.gather(*(requester.greet("in", "init") for _ in range(5)))

    assert {unpack(a, greeter_pb2.Request).name for a in answers} == {"init_calls=1 ready=yes"}


async def test_sync_handler_runs_on_a_worker_thread(nats_server, start_node, requester):
    start_node(**node_env(nats_server, HANDLERS, "behaviours_sync.py", input="in"))

    answer = await requester.greet("in", "thread")

    assert unpack(answer, greeter_pb2.Request).name.startswith("krt-handler")


@pytest.mark.parametrize(("module", "interval"), [("behaviours_sync.py", "0.001"), ("behaviours.py", "0.005")])
async def test_a_node_with_a_sync_handler_switches_threads_every_millisecond(
    nats_server, start_node, requester, module, interval
):
    # A busy sync handler holds the GIL from one call to the next: the event loop's thread must get it back soon.
    start_node(**node_env(nats_server, HANDLERS, module, input="in"))

    answer = await requester.greet("in", "switchinterval")

    assert unpack(answer, greeter_pb2.Request).name == interval  # an async handler's node keeps Python's default


async def test_what_start_up_made_is_frozen_for_the_garbage_collector_once_init_is_done(
    nats_server, start_node, requester
):
    # init's model and state live as long as the node: full collections must not walk them again and again.
    start_node(**node_env(nats_server, HANDLERS, "behaviours.py", input="in"))

    answer = await requester.greet("in", "frozen")

    during_init, serving = map(int, unpack(answer, greeter_pb2.Request).name.split())
    assert during_init == 0 and serving > 1000


PIPELINED = ["message received", "message received", "answer published", "answer published"]
ONE_AFTER_THE_OTHER = ["message received", "answer published", "message received", "answer published"]


@pytest.mark.parametrize(("timeout", "events"), [("0", PIPELINED), ("5", ONE_AFTER_THE_OTHER)])
async def test_a_sync_handler_takes_the_next_message_while_it_runs_unless_a_timeout_is_set(
    nats_server, start_node, requester, timeout, events
):
    node = start_node(**node_env(nats_server, HANDLERS, "behaviours_sync.py", input="in", KRT_LOG_LEVEL="debug",
                                 KRT_HANDLER_TIMEOUT=timeout))

    answers = await asyncio.gather(requester.greet("in", "sleep:0.3"), requester.greet("in", "sleep:0.3"))

    assert [unpack(answer, greeter_pb2.Request).name for answer in answers] == ["others=0", "others=0"]
    first, second = sorted((epoch_seconds(a.tracking[-1].start), epoch_seconds(a.tracking[-1].end)) for a in answers)
    assert second[0] >= first[0] + 0.3  # one call at a time
    assert second[1] - second[0] < 0.45  # its time in the node is its own call, not its wait for the first
    node.wait_for_line("answer published", timeout=5, count=2)  # the answer can arrive before the log line is read
    logged = [json.loads(line)["event"] for line in node.lines if "tracking_id" in line]
    assert [event for event in logged if event in ("message received", "answer published")] == events


async def test_a_pipelined_sync_handler_still_makes_at_most_krt_concurrency_calls_at_once(
    nats_server, start_node, requester
):
    start_node(**node_env(nats_server, HANDLERS, "behaviours_sync.py", input="in", KRT_CONCURRENCY="2"))

    answers = await asyncio.gather(*(requester.greet("in", "sleep:0.2") for _ in range(6)))

    others = [unpack(answer, greeter_pb2.Request).name for answer in answers]
    assert "others=1" in others and "others=2" not in others, others  # two at a time, never three


@pytest.mark.parametrize(
    ("module", "concurrency"), [("behaviours.py", "1"), ("behaviours.py", "2"), ("behaviours_sync.py", "1")]
)
async def test_a_handler_raising_cancelled_error_gets_an_error_answer_and_the_node_keeps_taking_messages(
    nats_server, start_node, requester, module, concurrency
):
    node = start_node(**node_env(nats_server, HANDLERS, module, input="in", KRT_CONCURRENCY=concurrency))

    failed = await asyncio.gather(*(requester.greet("in", "cancelled", timeout=5) for _ in range(3)))
    answered = await requester.greet("in", "after", timeout=5)

    assert all("handler raised CancelledError" in answer.error for answer in failed), failed
    assert unpack(answered, greeter_pb2.Request).name == f"after>{module.removesuffix('.py')}"
    node.signal()
    assert node.wait() == 0
    assert _summary(node.output)["abandoned_threads"] == 0  # a sync call that raised it ended: not taken for a timeout


async def test_an_async_handler_runs_krt_concurrency_calls_at_once_and_never_more(nats_server, start_node, requester):
    start_node(**node_env(nats_server, HANDLERS, "behaviours.py", input="in", KRT_CONCURRENCY="3"))

    answers = await asyncio.gather(*(requester.greet("in", "wait:0.3") for _ in range(9)))

    others = sorted(unpack(answer, greeter_pb2.Request).name for answer in answers)
    assert others[-1] == "others=2", others  # three at a time, never four


@pytest.mark.parametrize("module", ["behaviours.py", "behaviours_sync.py"])
async def test_one_message_at_a_time_answers_in_the_order_the_requests_came(
    nats_server, start_node, requester, module
):
    start_node(**node_env(nats_server, HANDLERS, module, input="in"))
    nc = requester.nc
    inbox = nc.new_inbox()
    answered: list[str] = []
    all_answered = asyncio.Event()

    async def collect(msg) -> None:
        answered.append(decode(msg.data, max_decompressed=1 << 20).tracking_id)
        if len(answered) == 200:
            all_answered.set()

    await nc.subscribe(inbox, cb=collect)
    for i in range(200):
        request = request_envelope(greeter_pb2.Request(name=f"r{i}"), tracking_id=str(i))
        await nc.publish("in", request.SerializeToString(), reply=inbox)
    await asyncio.wait_for(all_answered.wait(), timeout=30)

    assert answered == [str(i) for i in range(200)]


@pytest.mark.parametrize("module", ["behaviours.py", "behaviours_sync.py"])
async def test_a_backlog_past_the_workers_queue_is_answered_in_the_order_it_came(
    nats_server, start_node, requester, module
):
    """More requests, and more bytes, than the workers' queue takes straight from nats-py's parser pile up behind a
    slow one: the rest wait in nats-py, behind them, and every answer still comes in the order of the requests."""
    start_node(**node_env(nats_server, HANDLERS, module, input="in", name="n"))
    nc = requester.nc
    inbox = nc.new_inbox()
    count, pad = DIRECT_MAX_MSGS + 200, "x" * (2 * DIRECT_MAX_BYTES // DIRECT_MAX_MSGS)
    answered: list[str] = []
    all_answered = asyncio.Event()

    async def collect(msg) -> None:
        answered.append(decode(msg.data, max_decompressed=1 << 20).tracking_id)
        if len(answered) == count + 1:
            all_answered.set()

    await nc.subscribe(inbox, cb=collect, pending_msgs_limit=10_000)
    slow = request_envelope(greeter_pb2.Request(name="sleep:1"), tracking_id="slow")
    await nc.publish("in", slow.SerializeToString(), reply=inbox)
    for i in range(count):
        request = request_envelope(greeter_pb2.Request(name=f"r{i}|{pad}"), tracking_id=str(i))
        await nc.publish("in", request.SerializeToString(), reply=inbox)
    await asyncio.wait_for(all_answered.wait(), timeout=60)

    assert answered == ["slow"] + [str(i) for i in range(count)]


async def test_ctx_path_joins_onto_the_base_path(nats_server, start_node, requester):
    start_node(**node_env(nats_server, HANDLERS, "behaviours.py", input="in"))

    answer = await requester.greet("in", "path:models/model.joblib")

    assert unpack(answer, greeter_pb2.Request).name == str(HANDLERS / "models" / "model.joblib")


async def test_ctx_get_of_a_missing_key_is_an_error_naming_the_key(nats_server, start_node, requester):
    start_node(**node_env(nats_server, HANDLERS, "behaviours.py", input="in", name="getter"))

    answer = await requester.greet("in", "get:nothing-here")
    caught = await requester.greet("in", "getor:nothing-here")

    assert "getter" in answer.error
    assert "NothingStoredError" in answer.error and "nothing-here" in answer.error
    assert unpack(caught, greeter_pb2.Request).name == "default", "KRE v1 code catching AttributeError goes on"


@pytest.mark.parametrize("module", ["behaviours.py", "behaviours_sync.py"])
async def test_handler_exception_gives_one_error_answer_and_the_node_keeps_serving(
    nats_server, start_node, requester, module
):
    start_node(**node_env(nats_server, HANDLERS, module, input="in", name="failing"))

    answers = await answers_to(requester, "in", request_envelope(greeter_pb2.Request(name="boom")).SerializeToString())
    after = await requester.greet("in", "fine")

    assert len(answers) == 1
    assert "failing" in answers[0].error and "ValueError: boom requested" in answers[0].error
    assert answers[0].tracking_id
    assert unpack(after, greeter_pb2.Request).name == "fine>failing"


@pytest.mark.parametrize("setup", [  # module, KRT_CONCURRENCY, KRT_HANDLER_TIMEOUT
    ("behaviours.py", "1", "0"), ("behaviours.py", "4", "0"), ("behaviours.py", "1", "5"),
    ("behaviours_sync.py", "1", "0"), ("behaviours_sync.py", "2", "5"),
])
async def test_sys_exit_or_keyboard_interrupt_in_a_handler_is_an_error_answer_and_the_node_keeps_serving(
    nats_server, start_node, requester, setup
):
    module, concurrency, handler_timeout = setup
    node = start_node(**node_env(nats_server, HANDLERS, module, input="in", name="exiting",
                                 KRT_CONCURRENCY=concurrency, KRT_HANDLER_TIMEOUT=handler_timeout))

    others = [asyncio.create_task(requester.greet("in", "sleep:0.3")) for _ in range(int(concurrency) - 1)]
    exited = await requester.greet("in", "exit")
    interrupted = await requester.greet("in", "interrupt")
    after = await requester.greet("in", "fine")

    assert "exiting" in exited.error and "SystemExit: 3" in exited.error
    assert "KeyboardInterrupt" in interrupted.error
    assert not any(answer.error for answer in await asyncio.gather(*others)), "the others were answered"
    assert unpack(after, greeter_pb2.Request).name == "fine>exiting"
    node.signal(signal.SIGTERM)
    assert node.wait() == 0, node.output


@pytest.mark.parametrize("handler_timeout", ["0", "5"], ids=["no-limit", "with-limit"])
async def test_a_timeout_error_raised_by_the_handler_is_a_handler_error_not_a_handler_timeout(
    nats_server, start_node, requester, handler_timeout
):
    start_node(**node_env(nats_server, HANDLERS, "behaviours.py", input="in", KRT_HANDLER_TIMEOUT=handler_timeout))

    answer = await requester.greet("in", "owntimeout")

    assert "handler raised TimeoutError: upstream service timed out" in answer.error
    assert "KRT_HANDLER_TIMEOUT" not in answer.error


async def test_an_exception_with_a_huge_message_still_gives_one_short_error_answer(nats_server, start_node, requester):
    start_node(**node_env(nats_server, HANDLERS, "behaviours.py", input="in", name="verbose"))

    answers = await answers_to(
        requester, "in", request_envelope(greeter_pb2.Request(name="bigerror")).SerializeToString()
    )

    assert len(answers) == 1
    assert answers[0].error.startswith("error in node 'verbose': handler raised ValueError: xxx")
    assert len(answers[0].error) < 10_000 and "more characters" in answers[0].error


@pytest.mark.parametrize(
    ("data", "cause"),
    [
        (b"\x00\xffnot a protobuf at all\xff", "not a KreNatsMessage"),
        (gzip.compress(b"x")[:8], "gzip"),
    ],
    ids=["random-bytes", "broken-gzip"],
)
async def test_undecodable_bytes_give_one_error_answer(nats_server, start_node, requester, data, cause):
    start_node(**node_env(nats_server, HANDLERS, "behaviours.py", input="in", name="decoder"))

    answers = await answers_to(requester, "in", data)
    after = await requester.greet("in", "still-here")

    assert len(answers) == 1
    assert "decoder" in answers[0].error and cause in answers[0].error
    assert unpack(after, greeter_pb2.Request).name == "still-here>decoder"


async def test_wrong_payload_type_gives_one_error_answer(nats_server, start_node, requester):
    start_node(**node_env(nats_server, HANDLERS, "behaviours.py", input="in", name="typed"))
    wrong = request_envelope(KreNatsMessage(tracking_id="a message of the wrong type"), tracking_id="t-wrong")

    answers = await answers_to(requester, "in", wrong.SerializeToString())

    assert len(answers) == 1
    assert answers[0].tracking_id == "t-wrong"
    assert "typed" in answers[0].error and "expected greeter.Request" in answers[0].error


@pytest.mark.parametrize(("command", "cause"), [("none", "returned None"), ("notproto", "not a protobuf message")])
async def test_a_result_that_is_not_a_protobuf_message_gives_an_error_answer(
    nats_server, start_node, requester, command, cause
):
    start_node(**node_env(nats_server, HANDLERS, "behaviours.py", input="in"))

    answers = await answers_to(requester, "in", request_envelope(greeter_pb2.Request(name=command)).SerializeToString())

    assert len(answers) == 1 and cause in answers[0].error


async def test_200_concurrent_requests_through_two_nodes_each_get_exactly_one_answer(
    nats_server, start_node, requester
):
    start_node(**node_env(nats_server, HANDLERS, "behaviours.py", input="c1", output="c2", name="one"))
    start_node(**node_env(nats_server, HANDLERS, "behaviours.py", input="c2", name="two", KRT_CONCURRENCY="8"))

    answers = await asyncio.gather(*(requester.greet("c1", f"r{i}") for i in range(200)))

    assert sorted(unpack(a, greeter_pb2.Request).name for a in answers) == sorted(f"r{i}>one>two" for i in range(200))


async def test_two_replicas_share_200_requests_each_handled_once(nats_server, start_node, requester):
    replicas = [
        start_node(**node_env(nats_server, HANDLERS, "behaviours.py", input="shared", name=f"replica{i}"))
        for i in (1, 2)
    ]

    answers = await asyncio.gather(*(requester.greet("shared", f"r{i}") for i in range(200)))

    handled_by = [unpack(a, greeter_pb2.Request).name.split(">")[1] for a in answers]
    assert sorted(unpack(a, greeter_pb2.Request).name.split(">")[0] for a in answers) == sorted(
        f"r{i}" for i in range(200)
    )
    assert handled_by.count("replica1") + handled_by.count("replica2") == 200
    assert handled_by.count("replica1") > 0 and handled_by.count("replica2") > 0, "one replica took everything"
    for replica in replicas:
        replica.signal()
        assert replica.wait() == 0
    received = sum(_summary(replica.output)["received"] for replica in replicas)
    assert received == 200


def _summary(output: str) -> dict:
    for line in output.splitlines():
        if '"stopped"' in line:
            return json.loads(line)
    raise AssertionError(f"no summary line in:\n{output}")


@pytest.mark.parametrize("module", ["behaviours.py", "behaviours_sync.py"])
async def test_early_reply_answers_at_once_and_the_last_node_stays_silent(nats_server, start_node, requester, module):
    first = start_node(**node_env(nats_server, HANDLERS, module, input="e1", output="e2", name="first",
                                  KRT_LOG_LEVEL="debug"))
    start_node(**node_env(nats_server, HANDLERS, "behaviours.py", input="e2", name="last"))

    sent = request_envelope(greeter_pb2.Request(name="early"))
    answers = await answers_to(requester, "e1", sent.SerializeToString())

    assert len(answers) == 1
    assert unpack(answers[0], greeter_pb2.Request).name == "early answer"
    assert answers[0].replied
    first.wait_for_line('"early answer published"')
    assert any(sent.tracking_id in line and '"early answer published"' in line for line in first.lines)


async def test_a_last_node_returning_none_after_its_early_reply_is_no_error(nats_server, start_node, requester):
    node = start_node(**node_env(nats_server, HANDLERS, "behaviours.py", input="in", name="last"))

    answers = await answers_to(requester, "in",
                               request_envelope(greeter_pb2.Request(name="earlynone")).SerializeToString())
    node.signal(signal.SIGTERM)
    assert node.wait() == 0

    assert [unpack(answer, greeter_pb2.Request).name for answer in answers] == ["early answer"]
    assert "handler returned None" not in node.output and "answer dropped" not in node.output
    assert '"errors": 0' in node.output or "errors=0" in node.output, node.output


async def test_a_second_early_reply_is_an_error_and_only_one_answer_is_sent(nats_server, start_node, requester):
    node = start_node(**node_env(nats_server, HANDLERS, "behaviours.py", input="in"))

    answers = await answers_to(requester, "in", request_envelope(greeter_pb2.Request(name="twice")).SerializeToString())

    assert [unpack(a, greeter_pb2.Request).name for a in answers] == ["first"]
    await asyncio.sleep(0.2)
    assert "already called" in node.output


async def test_an_early_reply_that_is_not_a_protobuf_message_is_one_error_answer_saying_so(
    nats_server, start_node, requester
):
    start_node(**node_env(nats_server, HANDLERS, "behaviours.py", input="in", name="replier"))

    answers = await answers_to(requester, "in",
                               request_envelope(greeter_pb2.Request(name="replydict")).SerializeToString())

    assert [answer.error for answer in answers] == [
        "error in node 'replier': handler raised ReplyError: ctx.reply() takes a protobuf message, not a builtins.dict"]


async def test_a_3mb_payload_through_two_nodes_is_compressed_on_the_wire_and_arrives_intact(
    nats_server, start_node, requester
):
    start_node(**node_env(nats_server, HANDLERS, "behaviours.py", input="big1", output="big2", name="n1"))
    start_node(**node_env(nats_server, HANDLERS, "behaviours.py", input="big2", name="n2"))
    wire: list[bytes] = []

    async def on_wire(msg) -> None:
        wire.append(msg.data)

    await requester.nc.subscribe("big2", cb=on_wire)
    name = "lorem ipsum dolor sit amet " * (3 * 1024 * 1024 // 27)
    request = gzip.compress(request_envelope(greeter_pb2.Request(name=name)).SerializeToString())

    answer = await requester.request_raw("big1", request, timeout=20)

    assert unpack(answer, greeter_pb2.Request).name == f"{name}>n1>n2"
    assert len(wire) == 1 and wire[0][:2] == b"\x1f\x8b" and len(wire[0]) < 1024 * 1024


async def test_sigterm_with_a_message_in_flight_delivers_its_answer_and_exits_0(nats_server, start_node, requester):
    node = start_node(**node_env(nats_server, HANDLERS, "behaviours.py", input="in", name="slow"))

    pending = asyncio.ensure_future(requester.greet("in", "sleep:1.5"))
    await asyncio.sleep(0.5)
    node.signal(signal.SIGTERM)
    answer = await pending

    assert unpack(answer, greeter_pb2.Request).name == "sleep:1.5>slow"
    assert await asyncio.to_thread(node.wait) == 0


async def test_node_serves_again_after_nats_server_restarts_on_the_same_port(nats_server, start_node, requester):
    node = start_node(**node_env(nats_server, HANDLERS, "behaviours.py", input="in", KRT_NATS_RECONNECT_WAIT="0.2"))
    assert unpack(await requester.greet("in", "before"), greeter_pb2.Request).name == "before>behaviours"

    nats_server.stop(kill=True)
    nats_server.start()
    answer = await _retry_greet(requester, "in", "after", attempts=40)

    assert unpack(answer, greeter_pb2.Request).name == "after>behaviours"
    assert "reconnected to NATS" in node.output


async def _retry_greet(requester: Requester, subject: str, name: str, *, attempts: int) -> KreNatsMessage:
    for _ in range(attempts):
        try:
            return await requester.greet(subject, name, timeout=0.5)
        except Exception:  # not reconnected yet: no responders, timeout or connection errors
            await asyncio.sleep(0.25)
    raise AssertionError(f"no answer after {attempts} attempts")


def test_undecodable_message_with_no_reply_subject_is_dropped_and_logged(nats_server, start_node):
    import nats as nats_client

    node = start_node(**node_env(nats_server, HANDLERS, "behaviours.py", input="in", KRT_LOG_LEVEL="info"))

    async def publish() -> None:
        nc = await nats_client.connect(nats_server.url)
        await nc.publish("in", b"\xff\xfe garbage")
        await nc.flush()
        await nc.close()

    asyncio.run(publish())
    node.wait_for_line("error not sent: no reply subject", timeout=10)
    assert node.process.poll() is None


def test_base_path_from_a_dotted_module_name(nats_server, start_node, tmp_path: Path):
    env = node_env(nats_server, HANDLERS, "behaviours", input="in")
    node = start_node(**env)
    assert node.process.poll() is None
