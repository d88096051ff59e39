"""A node's settlements in at-least-once mode (krt_runner.node.acking.Acker), against a real nats-server with
JetStream: an answer the next stream acknowledged acks its message, one it refused releases it for another
delivery, and a delivery released from the read loop (``release_soon``) goes back at once.
"""

from __future__ import annotations

import asyncio

import nats
import pytest
from conftest import until
from nats.js import api

from krt_runner.config import load_settings
from krt_runner.local_krt.embedded import EmbeddedNats
from krt_runner.logging import node_logger
from krt_runner.node.acking import Acker
from krt_runner.node.broker import Broker

_SMALL = 64  # the refusing stream's largest message, in bytes


@pytest.fixture
async def broker():
    with EmbeddedNats(jetstream=True) as server:
        settings = load_settings(env={"KRT_NATS_SERVER": server.url, "KRT_NATS_INPUT": "in", "KRT_HANDLER_PATH": "x",
                                      "KRT_LOG_LEVEL": "error"})
        node_broker = Broker(settings, node_logger(node="n", workflow="w", version="v"))
        await node_broker.connect()
        js = node_broker.client.jetstream()
        await js.add_stream(api.StreamConfig(name="IN", subjects=["in"]))
        await js.add_stream(api.StreamConfig(name="NEXT", subjects=["next"]))
        await js.add_stream(api.StreamConfig(name="SMALL", subjects=["small"], max_msg_size=_SMALL))
        yield node_broker
        await node_broker.close()


async def deliveries(broker, count: int) -> list:
    """``count`` messages published to the input stream, fetched by one durable pull consumer."""
    js = broker.client.jetstream()
    for i in range(count):
        await js.publish("in", b"request %d" % i)
    consumer = await js.pull_subscribe("in", durable="node", config=api.ConsumerConfig(ack_wait=60))
    return await consumer.fetch(count, timeout=5)


async def delivered_again(url: str, timeout: float = 5.0) -> list[tuple[bytes, int]]:
    """What the consumer delivers next (on a connection of its own), with each message's delivery count."""
    async with await nats.connect(url) as nc:
        consumer = await nc.jetstream().pull_subscribe("in", durable="node")
        messages = await consumer.fetch(10, timeout=timeout)
    return [(msg.data, msg.metadata.num_delivered) for msg in messages]


async def test_an_acknowledged_answer_acks_its_message_and_a_refused_one_releases_it(broker):
    acker = Acker(broker, ack_wait=60, log=node_logger(node="n", workflow="w", version="v"))
    await acker.start()
    accepted, refused = await deliveries(broker, 2)
    acker.hold(accepted)
    acker.hold(refused)

    await acker.forward("next", b"answer", "t-1:n:1", accepted)
    await acker.forward("small", b"x" * (_SMALL * 2), "t-2:n:2", refused)  # over the stream's max_msg_size
    await until(lambda: acker.held == 0)

    # The refused one again, after RETRY_DELAY; the accepted one was acked.
    assert await delivered_again(broker.client.connected_url.geturl()) == [(b"request 1", 2)]
    await acker.close()


async def test_a_delivery_released_from_the_read_loop_goes_back_at_once(broker):
    acker = Acker(broker, ack_wait=60, log=node_logger(node="n", workflow="w", version="v"))
    await acker.start()
    (msg,) = await deliveries(broker, 1)

    url = broker.client.connected_url.geturl()
    acker.release_soon(msg)  # as the intake does with what arrives once it stops listening: no await
    await broker.close()  # what was queued goes out first

    assert await delivered_again(url, timeout=1.0) == [(b"request 0", 2)]


@pytest.mark.parametrize(("reply", "stored"), [
    (b'{"stream":"KRT_in","seq":12}', True),
    (b'{"stream":"KRT_in","seq":12,"duplicate":true}', True),
    (b'{"stream": "KRT_in", "seq": 12}', True),  # another server's spacing: read as JSON
    (b'{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},"stream":"S","seq":0}', False),
    (b'{"name": "{\\"stream\\":\\"S\\",\\"seq\\":1}"}', False),  # a subscriber's JSON holding an acknowledgement
    (b'{"seq": 1}', False),
    (b'\n$a-tracking-id', False),  # a subscriber's envelope
])
def test_only_a_stream_s_acknowledgement_reads_as_one(reply, stored):
    from krt_runner.node.publish_acks import publish_ack

    read = publish_ack(reply)
    assert (read is not None and "error" not in read) is stored


def test_a_stream_still_storing_the_first_publish_of_an_id_is_no_refusal_and_the_answer_goes_out_again():
    from nats.js.errors import APIError

    from krt_runner.errors import CallError
    from krt_runner.jetstream_requests import _unless_in_process
    from krt_runner.node.publish_acks import stream_refusal

    in_process = b'{"error":{"code":503,"err_code":10158,"description":"duplicate message id is in process"}}'
    full = b'{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}'

    assert stream_refusal(in_process) == ""  # published again, as when no stream took it
    assert stream_refusal(full) == "maximum messages exceeded (JetStream error 10077)"
    _unless_in_process(APIError(code=503, err_code=10158, description="duplicate message id is in process"), "s")
    with pytest.raises(CallError, match="maximum messages exceeded"):
        _unless_in_process(APIError(code=503, err_code=10077, description="maximum messages exceeded"), "s")


@pytest.mark.parametrize(("answer", "none"), [
    ("NotFoundError", True),  # JetStream says no stream captures the subject
    ("ServiceUnavailableError", False),  # JetStream unavailable for now (a cluster without its meta leader)
    ("TimeoutError", False),
    ("a stream", False),
])
async def test_only_jetstream_s_own_word_that_no_stream_captures_a_subject_counts_as_none(answer, none):
    from nats.js import errors

    from krt_runner.node.jetstream import none_captures

    class Lookup:  # the one JetStream request none_captures makes, answered as a server would
        async def find_stream_name_by_subject(self, subject: str) -> str:
            if answer == "TimeoutError":
                raise asyncio.TimeoutError
            if answer != "a stream":
                raise getattr(errors, answer)(code=404 if answer == "NotFoundError" else 503)
            return "KRT_in"

    class Connection:
        def jetstream(self, timeout: float) -> Lookup:
            return Lookup()

    assert await none_captures(Connection(), "in") is none  # type: ignore[arg-type]
