"""The KRE v1 envelope: timestamps, gzip both ways, size limits, Any packing."""

from __future__ import annotations

import gzip
import os
from datetime import datetime, timedelta, timezone

import pytest
from conftest import greeter_pb2

from krt_runner import envelope
from krt_runner.envelope import AnyMessage, KreNatsMessage
from krt_runner.errors import EnvelopeError, PayloadTooLargeError


def test_timestamps_are_naive_utc_with_microseconds_always_present():
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)

    assert envelope.timestamp(moment) == "2026-01-02T03:04:05.000000"


@pytest.mark.parametrize(
    "text",
    [
        "2026-01-02T03:04:05.123456",
        "2026-01-02T03:04:05.123456Z",
        "2026-01-02T04:04:05.123456+01:00",
        "2026-01-02T03:04:05.123456789Z",
    ],
)
def test_timestamps_are_read_naive_with_z_or_with_an_offset(text):
    expected = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=timezone.utc)

    assert envelope.parse_timestamp(text) == expected


def test_a_timestamp_without_fraction_is_read():
    assert envelope.parse_timestamp("2026-01-02T03:04:05Z") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def test_timestamp_round_trip_keeps_order_within_a_microsecond():
    now = datetime.now(timezone.utc)

    assert abs(envelope.parse_timestamp(envelope.timestamp(now)) - now) < timedelta(microseconds=1)


def request(name: str = "Ada") -> KreNatsMessage:
    message = KreNatsMessage(tracking_id="t-1", reply="inbox")
    message.payload.Pack(greeter_pb2.Request(name=name))
    return message


def test_a_small_message_is_sent_uncompressed_and_decodes_back():
    data = envelope.encode(request(), max_payload=1024 * 1024)

    assert data[:2] != envelope.GZIP_MAGIC
    assert envelope.decode(data, max_decompressed=1024) == request()


def test_a_message_over_max_payload_is_gzipped_and_decodes_back():
    big = request("abc" * 500_000)

    data = envelope.encode(big, max_payload=1024 * 1024)

    assert data[:2] == envelope.GZIP_MAGIC and len(data) <= 1024 * 1024
    assert envelope.decode(data, max_decompressed=4 * 1024 * 1024) == big


def test_a_message_too_large_even_compressed_is_refused():
    incompressible = request(os.urandom(1_200_000).hex())

    with pytest.raises(PayloadTooLargeError, match="max payload"):
        envelope.encode(incompressible, max_payload=1024 * 1024)


def test_gzip_over_the_cap_is_refused_without_inflating_it_all():
    bomb = gzip.compress(b"\0" * (50 * 1024 * 1024))

    with pytest.raises(EnvelopeError, match="more than 1048576 bytes"):
        envelope.decode(bomb, max_decompressed=1024 * 1024)


def heading_past_the_cap(data: bytes, cap: int = 1000) -> bytes:
    with pytest.raises(EnvelopeError, match=f"more than {cap} bytes") as refused:
        envelope.decode(gzip.compress(data), max_decompressed=cap)
    return refused.value.heading


def test_an_envelope_past_the_cap_keeps_its_leading_fields_for_the_error_answer():
    message = request()
    message.reply = "_INBOX.asker"
    message.tracking.add(node_name="entrypoint", start="2026-01-02T03:04:05.000001", end="2026-01-02T03:04:05.000002")
    message.payload.value += b"x" * 5000

    heading = KreNatsMessage.FromString(heading_past_the_cap(message.SerializeToString()))

    assert (heading.tracking_id, heading.reply, len(heading.tracking)) == ("t-1", "_INBOX.asker", 1)
    assert not heading.HasField("payload")


@pytest.mark.parametrize("data", [
    b"\x0a\xff\xff\xff\x7f" + b"x" * 5000,  # a tracking_id longer than what was inflated
    b"\x22\x05" + b"x" * 5000,  # the payload first: nothing before it
    b"\xff" * 5000,  # no protobuf at all
    b"\x1a\x02" + b"\xff\xfe" + b"\x22\x05" + b"x" * 5000,  # a reply that is not UTF-8 (refused when read)
    b"\x12\x00" * 20_000 + b"\x1a\x01r",  # more tracking entries than an envelope may carry: not walked through
], ids=["long-id", "payload-first", "garbage", "bad-utf8", "too-many-entries"])
def test_an_envelope_past_the_cap_whose_heading_is_unreadable_is_refused_all_the_same(data):
    heading = heading_past_the_cap(data, cap=len(data) - 1)

    assert len(heading) <= 4


@pytest.mark.parametrize(
    "data",
    [b"\x1f\x8b\x08garbage-after-the-magic", gzip.compress(request().SerializeToString())[:-10]],
    ids=["corrupt", "truncated"],
)
def test_broken_gzip_is_an_envelope_error(data):
    with pytest.raises(EnvelopeError, match="gzip"):
        envelope.decode(data, max_decompressed=1024 * 1024)


def test_a_gzip_of_several_members_is_read_whole_as_gos_reader_reads_it():
    data = request("members").SerializeToString()

    joined = envelope.decode(gzip.compress(data[:7]) + gzip.compress(data[7:]), max_decompressed=1024)

    assert joined == request("members")
    with pytest.raises(EnvelopeError, match="more than 100 bytes"):  # the cap counts every member
        envelope.decode(gzip.compress(b"\0" * 60) + gzip.compress(b"\0" * 60), max_decompressed=100)
    with pytest.raises(EnvelopeError, match="truncated"):
        envelope.decode(gzip.compress(data[:7]) + gzip.compress(data[7:])[:-4], max_decompressed=1024)
    with pytest.raises(EnvelopeError, match="more than 16 members"):  # each member's end copies what follows it
        envelope.decode(gzip.compress(b"") * 50_000, max_decompressed=1024)


def test_an_envelope_with_tens_of_millions_of_tracking_entries_is_refused_before_it_is_parsed():
    bomb = KreNatsMessage(tracking_id="t").SerializeToString() + b"\x12\x00" * 30_000_000  # 60 MB of empty entries

    with pytest.raises(EnvelopeError, match="more than 10000 tracking entries: refused unread"):
        envelope.decode(gzip.compress(bomb), max_decompressed=64 << 20)


@pytest.mark.parametrize("filler", [b"\0" * 60_000_000, b"\x08\x00" * 30_000_000], ids=["zeros", "varints"])
def test_an_envelope_followed_by_tens_of_millions_of_tiny_fields_is_refused_without_walking_them(filler):
    # gzip makes 60 MB of them 60 KB on the wire; walking them one by one held the event loop for 10 s
    data = KreNatsMessage(tracking_id="t").SerializeToString() + filler

    with pytest.raises(EnvelopeError, match=r"not a KreNatsMessage|more than 11000 top-level fields: refused unread"):
        envelope.decode(gzip.compress(data, compresslevel=1), max_decompressed=64 << 20)


def test_a_large_envelope_with_its_tracking_under_the_limit_is_read():
    message = KreNatsMessage(tracking_id="t")
    message.payload.value = os.urandom(200_000)
    for index in range(envelope.MAX_TRACKING_ENTRIES):
        message.tracking.add(node_name=f"n{index}")

    decoded = envelope.decode(message.SerializeToString(), max_decompressed=64 << 20)

    assert len(decoded.tracking) == envelope.MAX_TRACKING_ENTRIES and decoded.payload.value == message.payload.value


def test_bytes_that_are_not_an_envelope_are_an_envelope_error():
    with pytest.raises(EnvelopeError, match="not a KreNatsMessage"):
        envelope.decode(b"\xff\xff\xff\xff", max_decompressed=1024)


def test_pack_wraps_a_message_and_keeps_an_any_as_it_is():
    wrapped = envelope.pack(greeter_pb2.Response(greeting="hi"))
    already = AnyMessage(type_url="type.googleapis.com/custom.Thing", value=b"\x01")

    assert wrapped.type_url == "type.googleapis.com/greeter.Response"
    assert envelope.pack(already) is already


@pytest.mark.parametrize("result", [
    greeter_pb2.Response(greeting="hi"), greeter_pb2.Request(name="Ada"), greeter_pb2.Response(),
    AnyMessage(type_url="type.googleapis.com/custom.Thing", value=b"\x01"),
])
def test_pack_into_makes_what_any_pack_makes_and_copies_an_any(result):
    expected = AnyMessage()
    if isinstance(result, AnyMessage):
        expected.CopyFrom(result)
    else:
        expected.Pack(result)

    for _ in range(2):  # the type URL worked out, then remembered
        target = KreNatsMessage(tracking_id="t")
        envelope.pack_into(target.payload, result)
        assert target.payload.SerializeToString() == expected.SerializeToString()
        assert target.payload.type_url == expected.type_url


def test_envelope_field_numbers_match_kre_v1():
    fields = {f.name: f.number for f in KreNatsMessage.DESCRIPTOR.fields}
    tracking = {f.name: f.number for f in KreNatsMessage.Tracking.DESCRIPTOR.fields}

    assert fields == {"tracking_id": 1, "tracking": 2, "reply": 3, "payload": 4, "error": 5, "replied": 6}
    assert tracking == {"node_name": 1, "start": 2, "end": 3}


def test_a_timestamp_from_nanoseconds_matches_one_from_a_datetime():
    moment = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=timezone.utc)
    nanoseconds = int(moment.timestamp()) * 1_000_000_000 + 123_456_789

    assert envelope.timestamp(nanoseconds) == envelope.timestamp(moment) == "2026-01-02T03:04:05.123456"
    assert envelope.timestamp_ns(nanoseconds) == "2026-01-02T03:04:05.123456"


def test_the_message_path_s_timestamps_cross_seconds_and_go_back_in_time():
    second = int(datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc).timestamp()) * 1_000_000_000
    # In, out and back into the second its cache holds (a pipelined message's start can come before the last end).
    moments = [second + 999_999_999, second + 1_000_000_000, second + 7_000, second - 1, second + 2_000_000_000]

    assert [envelope.timestamp_ns(moment) for moment in moments] == [
        "2026-01-02T03:04:05.999999",
        "2026-01-02T03:04:06.000000",
        "2026-01-02T03:04:05.000007",
        "2026-01-02T03:04:04.999999",
        "2026-01-02T03:04:07.000000",
    ]


@pytest.mark.parametrize("text", ["2026-01-02T03:04:05.123456", "2026-01-02T03:04:05.123456Z"])
def test_epoch_seconds_reads_both_forms(text):
    expected = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=timezone.utc).timestamp()

    assert envelope.epoch_seconds(text) == pytest.approx(expected, abs=1e-6)


def test_compression_is_fast_first_and_smallest_only_when_fast_does_not_fit():
    import random

    words = random.Random(7).choices([f"w{index:02d}" for index in range(64)], k=200_000)
    message = request(" ".join(words))
    data = message.SerializeToString()
    fast, smallest = (len(gzip.compress(data, compresslevel=level, mtime=0)) for level in (1, 9))
    assert smallest < fast < len(data)

    roomy = envelope.encode(message, max_payload=fast)
    tight = envelope.encode(message, max_payload=(fast + smallest) // 2)

    assert roomy == gzip.compress(data, compresslevel=1, mtime=0)
    assert len(tight) == smallest and envelope.decode(tight, max_decompressed=len(data)) == message
