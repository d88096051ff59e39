"""The node's NATS client's own paths (krt_runner.node.nats_connection.NodeClient), against a real nats-server:
direct subscriptions, publishing with a ready-made header block, and messages that wait for the next write.

What each path must keep of nats-py's: the bytes on the wire, its errors, and a connection that survives a frame it
cannot decode.
"""

from __future__ import annotations

import asyncio
import json
import time

import nats
import pytest
from conftest import synced, until
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import api
from raw_nats import RawClient

from krt_runner.errors import PayloadTooLargeError
from krt_runner.local_krt.embedded import EmbeddedNats
from krt_runner.node.nats_connection import NodeClient
from krt_runner.node.request_mux import RequestMux


@pytest.fixture
async def client(nats_server):
    node_client = NodeClient()
    await node_client.connect(nats_server.url, skip_subject_validation=True)
    yield node_client
    if not node_client.is_closed:
        await node_client.close()


@pytest.fixture
async def listener(nats_server):
    plain = await nats.connect(nats_server.url)
    yield plain
    await plain.close()


class Taken:
    """A direct callback that takes the messages with a reply subject and declines the rest."""

    def __init__(self) -> None:
        self.direct: list[tuple[bytes, bytes, bytes]] = []
        self.declined: list[nats.aio.msg.Msg] = []

    def take(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> bool:
        if not reply:
            return False
        self.direct.append((subject, reply.decode(), data))
        return True

    async def on_declined(self, msg) -> None:
        self.declined.append(msg)


async def test_a_direct_subscription_takes_what_its_callback_takes_and_the_rest_goes_to_the_plain_callback(
    client, listener
):
    taken = Taken()
    await client.subscribe_direct("direct.in", taken.take, cb=taken.on_declined)
    await synced(client)

    await listener.publish("direct.in", b"one", reply="reply.1")
    await listener.publish("direct.in", b"two", headers={"Status": "408"})
    await listener.publish("direct.in", b"three", reply="reply.3")
    await until(lambda: len(taken.direct) == 2 and len(taken.declined) == 1)

    assert taken.direct == [(b"direct.in", "reply.1", b"one"), (b"direct.in", "reply.3", b"three")]
    assert taken.declined[0].data == b"two" and taken.declined[0].headers == {"Status": "408"}
    assert client.stats["in_msgs"] == 3


async def test_a_coroutine_function_is_refused_as_a_direct_callback(client):
    async def waits(*frame) -> bool:
        return True

    with pytest.raises(TypeError, match="must not wait"):
        await client.subscribe_direct("direct.async", waits, cb=Taken().on_declined)
    assert client.direct_callbacks == {}


async def test_a_direct_subscription_unsubscribed_gets_nothing_more(client, listener):
    taken = Taken()
    subscription = await client.subscribe_direct("direct.gone", taken.take, cb=taken.on_declined)
    await synced(client)
    await listener.publish("direct.gone", b"before", reply="r")
    await until(lambda: len(taken.direct) == 1)

    await subscription.unsubscribe()
    await synced(client)
    await listener.publish("direct.gone", b"after", reply="r")
    await synced(listener)
    await asyncio.sleep(0.2)

    assert [data for _, _, data in taken.direct] == [b"before"]
    assert client.direct_callbacks == {}


async def test_a_frame_the_direct_callback_cannot_decode_costs_that_message_alone(nats_server, client):
    taken = Taken()
    await client.subscribe_direct("direct.bad", taken.take, cb=taken.on_declined)
    await synced(client)

    with RawClient(nats_server.url) as raw:
        raw.send(b"PUB direct.bad _INBOX.\xff\xfe 3\r\nbad\r\n")
        raw.send(b"PUB direct.bad reply.ok 2\r\nok\r\n")
    await until(lambda: len(taken.direct) == 1)

    assert taken.direct == [(b"direct.bad", "reply.ok", b"ok")]
    assert client.bad_frames == 1
    assert client.is_connected


async def test_publish_bytes_sends_the_payload_the_reply_and_the_msg_id_header(client, listener):
    got = await listener.subscribe("bytes.out")
    await synced(listener)

    await client.publish_bytes("bytes.out", b"with id", reply="answer.here", msg_id="t-1:node:7")
    await client.publish_bytes("bytes.out", b"plain")
    first, second = await got.next_msg(timeout=5), await got.next_msg(timeout=5)

    assert (first.data, first.reply, first.headers) == (b"with id", "answer.here", {"Nats-Msg-Id": "t-1:node:7"})
    assert (second.data, second.reply, second.headers) == (b"plain", "", None)


async def test_a_msg_id_with_a_line_break_cannot_add_a_header(client, listener):
    got = await listener.subscribe("bytes.inject")
    await synced(listener)

    await client.publish_bytes("bytes.inject", b"x", msg_id="id\r\nNats-Expected-Stream: other")
    msg = await got.next_msg(timeout=5)

    assert list(msg.headers) == ["Nats-Msg-Id"]


async def test_the_msg_id_makes_jetstream_drop_a_repeated_publish():
    with EmbeddedNats(jetstream=True) as js_server:
        node_client = NodeClient()
        await node_client.connect(js_server.url)
        js = node_client.jetstream()
        await js.add_stream(api.StreamConfig(name="DEDUPE", subjects=["dedupe.in"]))
        acks = await node_client.subscribe("acks.*")

        for _ in range(2):
            await node_client.publish_bytes("dedupe.in", b"once", reply="acks.1", msg_id="same-id")
        replies = [await acks.next_msg(timeout=5) for _ in range(2)]
        info = await js.stream_info("DEDUPE")
        await node_client.close()

    assert info.state.messages == 1
    assert [json.loads(reply.data).get("duplicate", False) for reply in replies] == [False, True]


async def test_publish_bytes_refuses_what_the_server_would_close_the_connection_over_and_keeps_nats_py_errors(client):
    with pytest.raises(PayloadTooLargeError, match="with 0 of headers"):
        await client.publish_bytes("too.big", b"x" * (client.max_payload + 1))
    with pytest.raises(PayloadTooLargeError, match=f"is {client.max_payload} bytes with 30 of headers"):
        await client.publish_bytes("fits.alone", b"x" * client.max_payload, msg_id="big")  # its headers count too
    await client.close()
    with pytest.raises(ConnectionClosedError):
        await client.publish_bytes("closed", b"x")
    with pytest.raises(ConnectionClosedError):
        await client.publish_with_next_write("closed", b"x", within=0.001)


async def test_a_message_for_the_next_write_goes_out_alone_within_its_delay(client, listener):
    got = await listener.subscribe("later.out")
    await synced(listener)

    sent = time.monotonic()
    assert client.publish_with_next_write("later.out", b"+ACK", within=0.05) is None  # queued
    msg = await got.next_msg(timeout=5)

    assert msg.data == b"+ACK"
    assert time.monotonic() - sent < 2.0  # written by its timer: nothing else was published


async def test_messages_for_the_next_write_keep_their_order_with_the_other_publishes(client, listener):
    got = await listener.subscribe("order.>")
    await synced(listener)

    assert client.publish_with_next_write("order.ack", b"1", within=10.0) is None
    assert client.publish_with_next_write("order.ack", b"2", within=10.0) is None
    await client.publish("order.answer", b"3")  # the write that takes them along, long before their timer
    received = [await got.next_msg(timeout=2) for _ in range(3)]

    assert [(m.subject, m.data) for m in received] == [("order.ack", b"1"), ("order.ack", b"2"),
                                                         ("order.answer", b"3")]


# -- requests over one inbox (krt_runner.node.request_mux) ---------------------------------------------------------


async def test_many_requests_in_flight_each_get_their_own_answer_and_none_is_left_waiting(client, listener):
    async def echo(msg):
        headers = {"Kind": "echo"} if msg.data.endswith(b"7") else None  # an answer with headers is an answer too
        await listener.publish(msg.reply, b"re:" + msg.data, headers=headers)

    await listener.subscribe("svc", cb=echo)
    await synced(listener)
    mux = RequestMux(client)

    answers = await asyncio.gather(*(mux.request("svc", b"%d" % i, timeout=5) for i in range(500)))

    assert answers == [b"re:%d" % i for i in range(500)]
    assert mux.in_flight == 0


async def test_a_request_no_one_listens_to_fails_at_once_with_nats_py_s_no_responders(client):
    mux = RequestMux(client)
    started = time.monotonic()

    with pytest.raises(NoRespondersError):
        await mux.request("nobody.here", b"x", timeout=5)

    assert time.monotonic() - started < 2 and mux.in_flight == 0


async def test_an_unanswered_request_times_out_and_its_late_answer_is_ignored(client, listener):
    held = []

    async def hold(msg):
        held.append(msg)

    await listener.subscribe("slow", cb=hold)
    await synced(listener)
    mux = RequestMux(client)

    with pytest.raises(NatsTimeoutError):
        await mux.request("slow", b"x", timeout=0.2)
    await listener.publish(held[0].reply, b"too late")
    answer = asyncio.ensure_future(mux.request("slow", b"y", timeout=5))
    await until(lambda: len(held) == 2)
    await listener.publish(held[1].reply, b"in time")

    assert await answer == b"in time"
    assert mux.in_flight == 0 and client.bad_frames == 0


async def test_requests_are_answered_again_once_a_restarted_server_is_back(nats_server):
    # The inbox's subscription is one of nats-py's: a reconnect subscribes it again, and requests go on.
    client = NodeClient()
    await client.connect(nats_server.url, reconnect_time_wait=0.1, max_reconnect_attempts=-1)
    mux = RequestMux(client)

    async def serve() -> nats.NATS:
        answerer = await nats.connect(nats_server.url)

        async def echo(msg):
            await msg.respond(b"re:" + msg.data)

        await answerer.subscribe("svc.restart", cb=echo)
        await synced(answerer)
        return answerer

    answerer = await serve()
    assert await mux.request("svc.restart", b"before", timeout=5) == b"re:before"
    await answerer.close()
    nats_server.stop(kill=True)
    nats_server.start()
    answerer = await serve()
    deadline = time.monotonic() + 15
    while not client.is_connected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)

    assert await mux.request("svc.restart", b"after", timeout=5) == b"re:after"
    assert mux.in_flight == 0
    await answerer.close()
    await client.close()
