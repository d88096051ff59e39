"""The KRE v1 wire format: KreNatsMessage bytes in and out, gzip, tracking, timestamps."""

from __future__ import annotations

import gzip
import time
import zlib
from datetime import datetime, timezone

from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.message import DecodeError, Message

from krt_runner._proto.kre_nats_msg_pb2 import KreNatsMessage
from krt_runner.errors import EnvelopeError, PayloadTooLargeError

__all__ = [
    "AnyMessage",
    "KreNatsMessage",
    "decode",
    "encode",
    "pack",
    "pack_into",
    "parse_timestamp",
    "timestamp",
    "timestamp_ns",
    "type_url",
]

GZIP_MAGIC = b"\x1f\x8b"
# Inflating in chunks bounds memory to one chunk past the cap, whatever the ratio.
_INFLATE_CHUNK = 1024 * 1024
# Members a gzip message may have (KRE v1's senders write one; concatenated files make a few).
_MAX_GZIP_MEMBERS = 16
# Tracking entries an envelope may carry: one per node passed (KRE v1 workflows have a handful). Counted on the wire,
# before parsing, in envelopes over _SCANNED_ABOVE bytes (smaller ones cannot hold enough to matter).
MAX_TRACKING_ENTRIES = 10_000
_SCANNED_ABOVE = 64 * 1024
# Top-level fields an envelope may have: its tracking entries and others (unknown ones included), walked in about 5 ms.
_MAX_FIELDS = MAX_TRACKING_ENTRIES + 1000
_TRACKING_FIELD = 2
# An envelope inflating past the cap is refused, its leading fields read from its first bytes (their wire types by
# field number) so that the error answer reaches its requester: the payload (4) comes after them.
_HEADING_FIELDS = {1: 2, 2: 2, 3: 2, 6: 0}
_HEADING_BYTES = 1024 * 1024
# gzip's fastest level first: on 2 MB of text level 6 took 190 ms and level 1 20 ms, for 30% more bytes. Only an
# answer that level 1 cannot fit under the max payload pays for the smallest (level 9).
_GZIP_FAST, _GZIP_SMALLEST = 1, 9
# Any's type URLs, as Any.Pack writes them, by message class (a handler answers with a few classes).
_TYPE_URL_PREFIX = "type.googleapis.com/"
_TYPE_URLS: dict[type[Message], str] = {}
_TYPE_URLS_KEPT = 256
# The envelope's parse and serialization, looked up once: on an instance, protobuf's upb looks a field of the name up
# first (about 50 ns a call, twice per message on every node).
_parse = KreNatsMessage.FromString
_serialize = KreNatsMessage.SerializeToString
# Naive UTC with microseconds always present, as KRE v1's Python and Go runners write and parse.
_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%f"


def timestamp(moment: datetime | int | None = None) -> str:
    """An ISO 8601 UTC timestamp as KRE v1 writes it: ``2026-01-02T03:04:05.123456``.

    ``moment`` is a datetime, nanoseconds since the epoch (``time.time_ns()``), or ``None`` for now.
    """
    if moment is None:
        return timestamp_ns(time.time_ns())
    if isinstance(moment, datetime):
        return moment.astimezone(timezone.utc).strftime(_TIMESTAMP_FORMAT)
    return timestamp_ns(moment)


def timestamp_ns(moment: int) -> str:
    """:func:`timestamp` of nanoseconds since the epoch: the message path's, twice per message.

    The whole second is formatted once per second, the microseconds from the nanoseconds since that second began (a
    small int); str() of 1_000_000 + micros, first digit cut, pads to 6 digits.
    """
    global _cached_second_ns, _cached_prefix  # noqa: PLW0603 - a one-entry cache
    rest = moment - _cached_second_ns
    if not 0 <= rest < 1_000_000_000:
        whole = moment // 1_000_000_000
        _cached_prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(whole))
        _cached_second_ns = whole * 1_000_000_000
        rest = moment - _cached_second_ns
    return _cached_prefix + str(rest // 1000 + 1_000_000)[1:]


_NAIVE_EPOCH = datetime(1970, 1, 1)
_cached_second_ns = -(10**18)  # no timestamp's second: the first call fills the cache
_cached_prefix = ""


def epoch_seconds(text: str) -> float:
    """Seconds since the epoch of a tracking timestamp (see :func:`parse_timestamp`)."""
    if len(text) == 26 and text[10] == "T":  # the naive form KRE v1 writes: the fast path
        return (datetime.fromisoformat(text) - _NAIVE_EPOCH).total_seconds()
    return parse_timestamp(text).timestamp()


def parse_timestamp(text: str) -> datetime:
    """Read a tracking timestamp: naive (taken as UTC), with ``Z``, or with an offset.

    Raises ``ValueError`` for anything else, including times that leave the
    datetime range once moved to UTC (``0001-01-01T00:00:00+01:00``).
    """
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    moment = datetime.fromisoformat(_trim_fraction(value))
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    try:
        return moment.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError(f"timestamp {text!r} is out of range in UTC") from None


def _trim_fraction(value: str) -> str:
    """Python 3.10 reads at most 6 fractional digits; Go writes up to 9."""
    if "." not in value:
        return value
    head, tail = value.split(".", 1)
    digits = len(tail) - len(tail.lstrip("0123456789"))
    return f"{head}.{tail[:min(digits, 6)]:0<6}{tail[digits:]}"


def decode(data: bytes, *, max_decompressed: int) -> KreNatsMessage:
    """Parse received bytes, inflating gzip (capped at ``max_decompressed`` bytes) first.

    An envelope of over :data:`_SCANNED_ABOVE` bytes is refused without being parsed when it carries more than
    :data:`MAX_TRACKING_ENTRIES` tracking entries: a few bytes each on the wire, tens of bytes each once parsed,
    60 MB of empty ones would cost gigabytes of memory and seconds of the event loop.
    """
    if data[:2] == GZIP_MAGIC:
        data = _gunzip(data, max_decompressed)
    if len(data) > _SCANNED_ABOVE and _tracking_entries(data) > MAX_TRACKING_ENTRIES:
        raise EnvelopeError(f"message carries more than {MAX_TRACKING_ENTRIES} tracking entries: refused unread")
    try:
        return _parse(data)
    except DecodeError as exc:
        raise EnvelopeError(f"message is not a KreNatsMessage ({len(data)} bytes): {exc}") from None


def _tracking_entries(data: bytes) -> int:
    """How many tracking entries (field 2) the envelope's top level has, counted up to one over the limit; 0 for
    bytes that are no protobuf message (the parser says what is wrong with them). An :class:`EnvelopeError` for more
    top-level fields than :data:`_MAX_FIELDS` (tens of millions of two-byte ones would hold this walk for seconds)."""
    position, end, count = 0, len(data), 0
    try:
        for _ in range(_MAX_FIELDS):
            if position >= end or count > MAX_TRACKING_ENTRIES:
                return count
            key, position = _varint(data, position)
            position = _past_value(data, position, key & 7)
            if position < 0 or key < 8:  # a wire type no field has, or field number 0: no protobuf message
                return 0
            count += key >> 3 == _TRACKING_FIELD
    except IndexError:
        return 0
    if position >= end or count > MAX_TRACKING_ENTRIES:
        return count
    raise EnvelopeError(f"message has more than {_MAX_FIELDS} top-level fields: refused unread")


def _past_value(data: bytes, position: int, kind: int) -> int:
    """Where a field's value of wire type ``kind`` starting at ``position`` ends; -1 for a wire type no field has."""
    if kind == 2:  # length-delimited: the payload, the strings, the tracking entries
        length, position = _varint(data, position)
        return position + length
    if kind == 0:
        return _varint(data, position)[1]
    if kind in (1, 5):
        return position + (8 if kind == 1 else 4)
    return -1


def _heading(chunks: list[bytes]) -> bytes:
    """The leading fields of an envelope inflated past the cap (``chunks``: its first bytes): the whole fields before
    the first that does not fit in :data:`_HEADING_BYTES` or is neither ``tracking_id``, ``tracking``, ``reply`` nor
    ``replied``, as they are on the wire (an envelope of their own, when they are valid)."""
    first, size = [], 0
    for chunk in chunks:
        first.append(chunk)
        size += len(chunk)
        if size >= _HEADING_BYTES:
            break
    data = b"".join(first)
    position, end = 0, 0
    try:
        for _ in range(MAX_TRACKING_ENTRIES + len(_HEADING_FIELDS)):  # an envelope of more is refused unread anyway
            key, position = _varint(data, position)
            if _HEADING_FIELDS.get(key >> 3) != key & 7:
                break
            position = _past_value(data, position, key & 7)
            if position > min(len(data), _HEADING_BYTES):
                break
            end = position
        else:
            return b""
    except IndexError:
        pass
    return data[:end]


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def _gunzip(data: bytes, limit: int) -> bytes:
    """``data`` inflated, up to ``limit`` bytes in all. A gzip of several members (RFC 1952; Go's reader reads them
    all) is read to its last, up to :data:`_MAX_GZIP_MEMBERS` (each member's end copies what follows it); bytes after
    the last member that start no member are left, as a single gzip's would be."""
    chunks: list[bytes] = []
    size, members = 0, 0
    pending = data
    try:
        while pending[:2] == GZIP_MAGIC:
            members += 1
            if members > _MAX_GZIP_MEMBERS:
                raise EnvelopeError(f"gzip message of more than {_MAX_GZIP_MEMBERS} members: refused")
            inflater = zlib.decompressobj(wbits=31)
            while pending and not inflater.eof:
                chunk = inflater.decompress(pending, _INFLATE_CHUNK)
                size += len(chunk)
                chunks.append(chunk)
                if size > limit:
                    error = EnvelopeError(f"gzip message inflates to more than {limit} bytes "
                                          "(KRT_MAX_DECOMPRESSED_BYTES)")
                    error.heading = _heading(chunks)
                    raise error
                pending = inflater.unconsumed_tail
            if not inflater.eof:
                raise EnvelopeError("gzip message is truncated")
            pending = inflater.unused_data
    except zlib.error as exc:
        raise EnvelopeError(f"message has a gzip header but is not valid gzip: {exc}") from None
    return b"".join(chunks)


def is_jetstream_ack(data: bytes) -> bool:
    """Whether ``data`` is how JetStream acknowledges a message it stored: what a core request to a stream's subject
    gets back instead of a node's answer (its workflow runs at-least-once, the requester does not)."""
    return data.startswith(b'{"stream"')


def encode(message: KreNatsMessage, *, max_payload: int) -> bytes:
    """Serialize, gzip-compressing when over ``max_payload``; raise when still too large."""
    data: bytes = _serialize(message)
    if len(data) <= max_payload:
        return data
    compressed = gzip.compress(data, compresslevel=_GZIP_FAST, mtime=0)
    if len(compressed) > max_payload:
        compressed = gzip.compress(data, compresslevel=_GZIP_SMALLEST, mtime=0)
    if len(compressed) > max_payload:
        raise PayloadTooLargeError(
            f"the message is {len(data)} bytes, {len(compressed)} compressed, over the server's max payload of "
            f"{max_payload}"
        )
    return compressed


def pack(result: Message) -> AnyMessage:
    """Wrap a handler result in ``Any``; an ``Any`` is used as is."""
    if isinstance(result, AnyMessage):
        return result
    wrapped = AnyMessage()
    pack_into(wrapped, result)
    return wrapped


def pack_into(payload: AnyMessage, result: Message) -> None:
    """Make ``payload`` hold ``result``: what ``payload.Pack(result)`` makes, or a copy of an ``Any``.

    Once per message on every node: the type URL is worked out once per class, where ``Any.Pack`` (Python code)
    formats it from the descriptor on every call.
    """
    if isinstance(result, AnyMessage):
        payload.CopyFrom(result)
        return
    payload.type_url = _TYPE_URLS.get(type(result)) or type_url(type(result))
    payload.value = result.SerializeToString()


def type_url(message_class: type[Message]) -> str:
    """The type URL ``Any.Pack`` writes for ``message_class``, worked out once per class."""
    url = _TYPE_URLS.get(message_class)
    if url is None:
        url = _TYPE_URL_PREFIX + message_class.DESCRIPTOR.full_name
        if len(_TYPE_URLS) < _TYPE_URLS_KEPT:
            _TYPE_URLS[message_class] = url
    return url
