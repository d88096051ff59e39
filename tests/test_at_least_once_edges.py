"""At-least-once at its edges, for real (a nats-server with JetStream per test, node processes): a next stream that
refuses answers, a requester whose server restarts, a node left at most once, stream copies on one server."""

from __future__ import annotations

import asyncio
import json
import shutil

import nats
import pytest
from conftest import greeter_pb2, node_env
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import DeliverPolicy, DiscardPolicy
from test_at_least_once import (  # noqa: F401  (js_server, call_log, requester: fixtures used here)
    HANDLER,
    HANDLERS,
    call_log,
    call_many,
    calls,
    js_server,
    requester,
    start_nodes,
)

from krt_runner.client import Client
from krt_runner.errors import ErrorAnswer, NoResponders
from krt_runner.jetstream_names import consumer_name, stream_name
from krt_runner.local_krt.embedded import EmbeddedNats
from krt_runner.node import jetstream


async def test_an_answer_the_next_stream_refuses_for_good_gets_one_error_answer_and_its_handler_runs_once(
    js_server, start_node, call_log, requester
) -> None:
    nc = await nats.connect(js_server.url)
    js = nc.jetstream()  # the next node's stream, full: one message, no room for more, no node taking it
    await js.add_stream(name=stream_name("in-b"), subjects=["in-b"], retention="workqueue", max_msgs=1,
                        discard="new")
    await js.publish("in-b", b"the one message it has room for")
    await nc.close()
    node = start_node(**node_env(js_server, HANDLERS, HANDLER, input="in-a", output="in-b", name="a",
                                 KRT_DELIVERY="at-least-once", KRT_JETSTREAM_ACK_WAIT="1", CALL_LOG=str(call_log)))

    with pytest.raises(ErrorAnswer) as refused:
        await requester.call("in-a", greeter_pb2.Request(name="refused"), greeter_pb2.Request, timeout=20)

    await asyncio.sleep(2.5)  # past two ack waits: a delivery again would have run the handler again by now
    ran = [node for node, _, _, name in calls(call_log) if name == "refused"]
    assert "error in node 'a': the next node's stream refused this node's answer: maximum messages exceeded" \
        in str(refused.value)
    assert ran == ["a"]  # once, not once per delivery
    node.signal()
    assert node.wait() == 0
    stopped = next(json.loads(line) for line in node.lines if '"stopped"' in line)
    assert (stopped["received"], stopped["answered"], stopped["errors"]) == (1, 0, 1)  # not answered and an error


async def test_a_stream_a_node_made_refuses_answers_in_words_once_an_operator_limits_it(
    js_server, start_node, call_log, requester
) -> None:
    nodes = start_nodes(start_node, js_server, call_log, ["a", "b"])
    nodes["b"][0].stop()
    nc = await nats.connect(js_server.url)
    js = nc.jetstream()
    info = await js.stream_info(stream_name("in-b"))
    assert info.config.discard == DiscardPolicy.NEW  # discard=old would drop stored requests unanswered
    info.config.max_msgs = 1  # what `nats stream edit KRT_in-b --max-msgs 1` does
    await js.update_stream(info.config)
    await js.publish("in-b", b"the one message it has room for")
    await nc.close()

    with pytest.raises(ErrorAnswer) as refused:
        await requester.call("in-a", greeter_pb2.Request(name="refused"), greeter_pb2.Request, timeout=20)

    assert "error in node 'a': the next node's stream refused this node's answer: maximum messages exceeded" \
        in str(refused.value)


async def test_requests_sent_while_the_server_is_down_are_stored_once_it_is_back_and_not_sent_twice(
    js_server, start_node, call_log
) -> None:
    start_nodes(start_node, js_server, call_log, ["a"])
    client = await Client.connect(js_server.url, delivery="at-least-once", reconnect_time_wait=0.1,
                                  error_cb=_ignore)
    try:
        js_server.stop(kill=True)
        names = [f"down{i}" for i in range(10)]
        sent = asyncio.ensure_future(call_many(client, names, window=10, timeout=30))
        await asyncio.sleep(1.0)
        await asyncio.to_thread(js_server.start)
        answers = await sent
        ignored = client.ignored_answers
    finally:
        await client.close()

    runs = [name for node, _, _, name in calls(call_log) if name.startswith("down")]
    assert answers == [f"{name}>a" for name in names]
    assert sorted(runs) == sorted(names), runs  # each handled once: none was sent again as a new message
    assert ignored == 0


async def _ignore(error: Exception) -> None:
    """The requester's own reconnect errors while the server is down are expected."""


async def test_an_at_most_once_node_whose_input_a_stream_captures_warns_at_start_up_saying_which_kind(
    js_server, start_node, call_log
) -> None:
    nc = await nats.connect(js_server.url)
    await nc.jetstream().add_stream(name=stream_name("in-c"), subjects=["in-c"], retention="workqueue")
    await nc.jetstream().add_stream(name="AUDIT", subjects=["in-d"])  # limits retention: it acks requests first
    await nc.close()

    mixed = start_node(**node_env(js_server, HANDLERS, HANDLER, input="in-c", name="c", CALL_LOG=str(call_log)))
    audited = start_node(**node_env(js_server, HANDLERS, HANDLER, input="in-d", name="d", CALL_LOG=str(call_log)))

    assert "a work-queue JetStream stream captures this node's input" in mixed.output
    assert "set KRT_DELIVERY=at-least-once" in mixed.output and stream_name("in-c") in mixed.output
    assert "work-queue JetStream stream" not in audited.output
    assert "a JetStream stream captures this node's input: a request to it gets the stream's acknowledgement" \
        in audited.output and "AUDIT" in audited.output


async def test_on_a_stream_that_keeps_handled_requests_a_consumer_made_again_does_not_handle_them_again(
    js_server, start_node, call_log, requester
) -> None:
    nc = await nats.connect(js_server.url)
    await nc.jetstream().add_stream(name="ARCHIVE", subjects=["in-a"])  # limits retention: acked requests stay
    node = start_nodes(start_node, js_server, call_log, ["a"])["a"][0]
    first = await requester.call("in-a", greeter_pb2.Request(name="first"), greeter_pb2.Request, timeout=10)
    node.stop()
    await nc.jetstream().delete_consumer("ARCHIVE", consumer_name("in-a"))  # as `nats consumer rm` does
    await nc.close()

    start_nodes(start_node, js_server, call_log, ["a"])
    second = await requester.call("in-a", greeter_pb2.Request(name="second"), greeter_pb2.Request, timeout=10)
    await asyncio.sleep(0.5)

    assert (first.name, second.name) == ("first>a", "second>a")
    assert [name for *_, name in calls(call_log)] == ["first", "second"]  # "first" is not handled again


async def test_on_a_stream_that_keeps_handled_requests_a_consumer_deleted_under_load_loses_no_waiting_request(
    js_server, start_node, call_log, requester
) -> None:
    nc = await nats.connect(js_server.url)
    await nc.jetstream().add_stream(name="ARCHIVE", subjects=["in-a"])  # limits retention: acked requests stay
    start_nodes(start_node, js_server, call_log, ["a"], KRT_CONCURRENCY="1", KRT_TEST_DELAY="0.05")
    names = [f"r{n}" for n in range(60)]
    calls_made = [asyncio.ensure_future(requester.call("in-a", greeter_pb2.Request(name=name), greeter_pb2.Request,
                                                       timeout=60)) for name in names]
    await asyncio.sleep(0.5)  # some handled, most waiting in the stream

    await nc.jetstream().delete_consumer("ARCHIVE", consumer_name("in-a"))  # as `nats consumer rm` does
    answers = await asyncio.gather(*calls_made)
    await nc.close()

    assert [answer.name for answer in answers] == [f"{name}>a" for name in names]  # the waiting ones were skipped
    assert set(names) <= {name for *_, name in calls(call_log)}


@pytest.mark.parametrize(("stored", "resume_at", "starts_at"), [
    (3, 0, 4),  # a consumer made at the first start: the next message
    (3, 2, 2),  # made again after its deletion: after the last message the node took
    (1, 4, 1),  # made again on a stream made again by hand, its sequences anew: its first message
], ids=["first-start", "made-again", "stream-made-again"])
async def test_on_a_stream_that_keeps_handled_requests_a_consumer_made_here_starts_where_nothing_is_skipped(
    js_server, stored, resume_at, starts_at
) -> None:
    nc = await nats.connect(js_server.url)
    js = nc.jetstream()
    await js.add_stream(name="ARCHIVE", subjects=["in-a"])  # limits retention: acked requests stay
    for number in range(stored):
        await js.publish("in-a", b"request %d" % number)

    opened = await jetstream.open_input(nc, subject="in-a", ack_wait=10, max_deliver=5, resume_at=resume_at)
    made = await js.consumer_info("ARCHIVE", consumer_name("in-a"))
    await nc.close()

    assert (made.config.deliver_policy, made.config.opt_start_seq) == (DeliverPolicy.BY_START_SEQUENCE, starts_at)
    assert opened.resume_at == starts_at


async def test_a_user_allowed_only_the_jetstream_requests_a_node_needs_to_serve_can_restart_it(
    tmp_path, start_node, call_log
) -> None:
    allowed = ["$JS.API.INFO", "$JS.API.STREAM.NAMES", "$JS.API.STREAM.CREATE.>", "$JS.API.CONSUMER.CREATE.>",
               "$JS.API.CONSUMER.DURABLE.CREATE.>", "$JS.API.CONSUMER.MSG.NEXT.>", "$JS.ACK.>", "_INBOX.>", "$SRV.>"]
    config = tmp_path / "users.conf"
    node_user = '{user: "node", password: "pw", permissions: {publish: {allow: ' + json.dumps(allowed) + '}}}'
    config.write_text(f"authorization {{ users = [ {node_user} ] }}\n")
    with EmbeddedNats(jetstream=True, extra_args=["-c", str(config)]) as server:
        env = node_env(server, HANDLERS, HANDLER, input="in-a", name="a", KRT_DELIVERY="at-least-once",
                       KRT_NATS_USER="node", KRT_NATS_PASSWORD="pw", CALL_LOG=str(call_log))
        for start in ("makes its stream", "finds it"):
            node = start_node(**env)  # ready, or the fixture fails
            assert "JetStream input ready" in node.output, start
            node.stop()


async def test_stream_copies_a_single_server_cannot_keep_stop_start_up_with_exit_2_saying_what_to_set(
    js_server, start_node, call_log
) -> None:
    node = start_node(wait=False, **node_env(js_server, HANDLERS, HANDLER, input="in-a", name="a",
                                             KRT_DELIVERY="at-least-once", KRT_JETSTREAM_REPLICAS="3",
                                             CALL_LOG=str(call_log)))

    assert node.wait() == 2
    assert "replicas > 1 not supported in non-clustered mode" in node.output
    assert "set KRT_JETSTREAM_REPLICAS=1, or use a NATS cluster" in node.output


async def test_an_answer_no_stream_takes_for_a_while_is_published_again_and_its_handler_runs_once(
    js_server, start_node, call_log, requester
) -> None:
    # As on a NATS cluster electing a stream's leader for seconds after a server died: no stream takes b's input.
    start_node(**node_env(js_server, HANDLERS, HANDLER, input="in-a", output="in-b", name="a",
                          KRT_DELIVERY="at-least-once", KRT_JETSTREAM_ACK_WAIT="1", CALL_LOG=str(call_log)))
    asking = asyncio.ensure_future(
        requester.call("in-a", greeter_pb2.Request(name="patient"), greeter_pb2.Request, timeout=30))
    await asyncio.sleep(3)  # a's answer finds no stream, again and again
    start_node(**node_env(js_server, HANDLERS, HANDLER, input="in-b", name="b", KRT_DELIVERY="at-least-once",
                          CALL_LOG=str(call_log)))

    answer = await asking

    assert answer.name == "patient>a>b"
    assert [node for node, _, _, name in calls(call_log) if name.startswith("patient")] == ["a", "b"]


async def test_a_server_restarted_without_its_store_gets_the_nodes_stream_and_consumer_again(
    js_server, start_node, call_log
) -> None:
    nodes = start_nodes(start_node, js_server, call_log, ["a"])
    assert js_server.store_dir is not None
    js_server.stop(kill=True)
    shutil.rmtree(js_server.store_dir)  # a pod with no volume, a wiped store: no stream, no consumer
    js_server.store_dir.mkdir()
    await asyncio.to_thread(js_server.start)
    client = await Client.connect(js_server.url, delivery="at-least-once", reconnect_time_wait=0.1,
                                  error_cb=_ignore)
    try:
        # The node's pull requests get 503s until it finds its consumer gone and makes both again (a few seconds);
        # meanwhile no stream takes the requests: the client is told so, and asks again.
        answer = None
        for _ in range(40):  # bounded: 20 s
            try:
                answer = await client.call("in-a", greeter_pb2.Request(name="again"), greeter_pb2.Request, timeout=5)
                break
            except NoResponders:
                await asyncio.sleep(0.5)
    finally:
        await client.close()

    assert answer is not None and answer.name == "again>a", nodes["a"][0].output
    assert "the node's JetStream consumer was deleted: making it again" in nodes["a"][0].output


async def test_a_jetstream_request_left_unanswered_is_asked_again_and_then_blamed_on_the_server(monkeypatch) -> None:
    monkeypatch.setattr(jetstream, "_API_RETRY_PAUSE", 0)
    outcomes = [NatsTimeoutError(), NatsTimeoutError(), "made"]

    async def request() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def never_answered() -> str:
        raise NatsTimeoutError

    assert await jetstream.answered(request) == "made"
    with pytest.raises(NatsTimeoutError):
        await jetstream.answered(never_answered)
    text = jetstream._api_text(NatsTimeoutError())
    assert "JetStream did not answer, 6 times in a row: a busy or unreachable server, or a user not allowed to " \
           "publish that request to $JS.API" in text  # a refusal by permissions gets no answer either
    assert jetstream._api_text(NatsTimeoutError(), attempts=1).startswith("JetStream did not answer: ")


async def test_a_core_taker_is_found_for_an_account_without_jetstream_on_a_server_with_it(tmp_path) -> None:
    config = tmp_path / "accounts.conf"
    config.write_text(f"jetstream {{ store_dir: {tmp_path / 'store'} }}\n"
                      "accounts { JS: { jetstream: enabled, users: [{user: js, password: js}] }\n"
                      "           CORE: { users: [{user: core, password: core}] } }\n")
    with EmbeddedNats(extra_args=["-c", str(config)]) as server:
        kre = await nats.connect(server.url, user="core", password="core")

        async def answer(msg) -> None:
            await msg.respond(b"an error answer")

        await kre.subscribe("kre-entry", cb=answer)
        client = await Client.connect(server.url, user="core", password="core")
        try:
            # JetStream answers this account with an error, not a stream: the probe is safe, and finds the taker.
            assert await client.has_responders("kre-entry")
            assert not await client.has_responders("nobody-here")
        finally:
            await client.close()
            await kre.close()
