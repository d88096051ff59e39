"""The node client's parser (krt_runner.node.direct_parser): direct subscriptions' MSG frames on a short path,
everything else nats-py's way, and the same messages in the same order however the reads cut the stream.

Bytes are fed to the parser of a real, unconnected NodeClient, as its read loop would feed them; the paths it
shares with a real server are in test_node_client.py and test_hostile_input.py.
"""

from __future__ import annotations

import pytest
from nats.errors import ProtocolError
from nats.protocol.parser import AWAITING_CONTROL_LINE

from krt_runner.node.direct_parser import DirectParser
from krt_runner.node.nats_connection import NodeClient


class Recorder:
    """Direct callbacks: two that take (sids 1 and 2), and one that declines (sid 3)."""

    def __init__(self) -> None:
        self.taken: list[tuple[int, bytes, bytes, bytes]] = []
        self.headers: list[bytes | None] = []
        self.declined: list[tuple[int, bytes]] = []

    def take(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
        self.taken.append((sid, subject, reply, data))
        self.headers.append(headers)
        return True

    def decline(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
        self.declined.append((sid, data))
        return False


def client_with(recorder: Recorder) -> NodeClient:
    client = NodeClient()
    assert isinstance(client._ps, DirectParser)
    client.direct_callbacks.update({1: recorder.take, 2: recorder.take, 3: recorder.decline})
    return client


STREAM = (
    b"MSG in.a 1 reply.1 5\r\nhello\r\n"
    b"MSG in.b 2 0\r\n\r\n"  # another direct subscription, no reply, an empty payload
    b"+OK\r\n"  # another operation: nats-py's
    b"MSG in.c 9 3\r\nabc\r\n"  # a sid with no direct callback: nats-py's (no such subscription: dropped)
    b"MSG in.a 1 reply.2 12\r\nwith\r\nCRLF!!\r\n"  # CR LF inside the payload
    b"MSG in.d 3 reply.3 4\r\nnope\r\n"  # declined: nats-py's way
    b"MSG  in.a\t1   reply.4  2\r\nok\r\n"  # odd spacing, which nats-py's regular expression also reads
    b"HMSG in.e 2 reply.5 20 25\r\nNATS/1.0\r\nKey: v\r\n\r\nfirst\r\n"  # a header block
    b"HMSG in.f 3 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"  # a status, declined: nats-py's way
)
EXPECTED = [
    (1, b"in.a", b"reply.1", b"hello"),
    (2, b"in.b", b"", b""),
    (1, b"in.a", b"reply.2", b"with\r\nCRLF!!"),
    (1, b"in.a", b"reply.4", b"ok"),
    (2, b"in.e", b"reply.5", b"first"),
]


async def test_every_direct_message_is_taken_in_order_and_the_rest_goes_nats_py_s_way():
    recorder = Recorder()
    client = client_with(recorder)

    await client._ps.parse(STREAM)

    assert recorder.taken == EXPECTED
    assert recorder.headers == [None, None, None, None, b"NATS/1.0\r\nKey: v\r\n\r\n"]
    assert recorder.declined == [(3, b"nope"), (3, b"")]
    assert client.stats["in_msgs"] == 8  # every message, as nats-py counts them
    assert not client._ps.buf


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
async def test_a_read_may_end_anywhere(cut):
    recorder = Recorder()
    client = client_with(recorder)

    await client._ps.parse(STREAM[:cut])
    await client._ps.parse(STREAM[cut:])

    assert recorder.taken == EXPECTED
    assert recorder.declined == [(3, b"nope"), (3, b"")]
    assert not client._ps.buf


async def test_one_byte_at_a_time():
    recorder = Recorder()
    client = client_with(recorder)

    for index in range(len(STREAM)):
        await client._ps.parse(STREAM[index : index + 1])

    assert recorder.taken == EXPECTED


async def test_a_payload_larger_than_the_short_path_takes_goes_nats_py_s_way_and_the_next_ones_do_not():
    recorder = Recorder()
    client = client_with(recorder)
    big = b"x" * (300 * 1024)
    stream = b"MSG in.a 1 reply.1 %d\r\n%b\r\nMSG in.a 1 reply.2 2\r\nok\r\n" % (len(big), big)

    for start in range(0, len(stream), 32768):  # nats-py's read size
        await client._ps.parse(stream[start : start + 32768])

    assert recorder.taken == [(1, b"in.a", b"reply.1", big), (1, b"in.a", b"reply.2", b"ok")]


async def test_a_callback_that_raises_costs_its_message_alone():
    recorder = Recorder()
    client = client_with(recorder)

    def broken(*frame):
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    client.direct_callbacks[4] = broken
    await client._ps.parse(b"MSG in.x 4 \xff 1\r\nx\r\nMSG in.a 1 reply.1 2\r\nok\r\n")

    assert recorder.taken == [(1, b"in.a", b"reply.1", b"ok")]
    assert client.bad_frames == 1


async def test_a_malformed_control_line_is_nats_py_s_to_refuse():
    recorder = Recorder()
    client = client_with(recorder)

    with pytest.raises(ProtocolError):
        await client._ps.parse(b"MSG in.a 1 reply.1 -5\r\nhello\r\n")
    assert recorder.taken == []


async def test_direct_frames_take_the_short_path_and_an_incomplete_one_waits_untouched():
    recorder = Recorder()
    client = client_with(recorder)

    await client._ps.parse(b"MSG in.a 1 reply.1 5\r\nhello\r\nMSG in.a 1 reply.2 5\r\nhel")

    assert recorder.taken == [(1, b"in.a", b"reply.1", b"hello")]
    # nats-py's parser would have read the second control line and be waiting for its payload
    assert client._ps.state == AWAITING_CONTROL_LINE
    assert bytes(client._ps.buf) == b"MSG in.a 1 reply.2 5\r\nhel"
