"""Bad input: whatever a node is sent, the requester gets exactly one error answer and the node keeps serving.

Two long-lived nodes (an async and a sync handler) take every case in turn;
each case checks the answer, listens on for a second one, asks the node a valid
question and compares the node's memory before and after.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import nats
import pytest
import pytest_asyncio
from conftest import KRT_RUNNER, ROOT, NodeProcess, greeter_pb2, node_env, request_envelope, unpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from probes import MB, AnswerLog, peak_rss, rss

from krt_runner.envelope import AnyMessage, EnvelopeError, KreNatsMessage, decode
from krt_runner.local_krt.embedded import EmbeddedNats
from krt_runner.node.answers import publishable

HANDLERS = ROOT / "tests" / "handlers"
GREETER = ROOT / "examples" / "greeter"
HANDLER_TIMEOUT = 0.5
DECOMPRESSED_CAP = 16 * MB
# How long to keep listening for a second answer after the first.
QUIET_WINDOW = 0.5
# A node's RSS may wobble by allocator caching; far less than any case's bulk (16 MB to 256 MB).
RSS_TOLERANCE = 24 * MB
# A gzip bomb: 256 MB of zeros, about 250 kB on the wire.
BOMB_INFLATED = 256 * MB


# -- what is sent --------------------------------------------------------------------------------


def valid(name: str = "fine", **fields: str) -> bytes:
    return request_envelope(greeter_pb2.Request(name=name), **fields).SerializeToString()


def envelope_with(payload: AnyMessage | None) -> bytes:
    message = KreNatsMessage(tracking_id="t-bad")
    if payload is not None:
        message.payload.CopyFrom(payload)
    return message.SerializeToString()


def packed(message: object) -> AnyMessage:
    wrapped = AnyMessage()
    wrapped.Pack(message)
    return wrapped


@cache
def gzip_bomb() -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(MB)
    parts = [compressor.compress(zeros) for _ in range(BOMB_INFLATED // MB)]
    return b"".join(parts) + compressor.flush()


def over_cap() -> bytes:
    """A legitimate, compressible request whose envelope inflates past the node's cap."""
    text = "all work and no play " * (20 * MB // 21)
    return gzip.compress(valid(text), compresslevel=1)


@dataclass(frozen=True)
class Case:
    id: str
    node: str  # "async" or "sync"
    data: Callable[[], bytes]
    cause: str
    # A handler still running past its timeout must not answer later: listen that long.
    quiet: float = QUIET_WINDOW


CASES = [
    Case("random-bytes", "async", lambda: b"\xff\xfe\xfd random bytes, not protobuf \x00", "not a KreNatsMessage"),
    Case("truncated-envelope", "async", lambda: valid("cut short")[:-5], "not a KreNatsMessage"),
    Case("empty-payload", "async", lambda: envelope_with(None), "expected greeter.Request"),
    Case("wrong-payload-type", "async", lambda: envelope_with(packed(KreNatsMessage())), "expected greeter.Request"),
    Case(
        "unknown-type-url",
        "async",
        lambda: envelope_with(AnyMessage(type_url="type.googleapis.com/no.such.Type", value=b"\x0a\x01x")),
        "expected greeter.Request, got type.googleapis.com/no.such.Type",
    ),
    Case("corrupt-gzip", "async", lambda: b"\x1f\x8b\x08\x00" + b"\xde\xad\xbe\xef" * 16, "not valid gzip"),
    Case("truncated-gzip", "async", lambda: gzip.compress(valid("cut"))[:-12], "gzip message is truncated"),
    Case("gzip-bomb", "async", gzip_bomb, "inflates to more than 16777216 bytes"),
    Case("over-the-size-cap", "async", over_cap, "inflates to more than 16777216 bytes"),
    Case("handler-returns-none", "async", lambda: valid("none"), "returned None"),
    Case("handler-returns-non-protobuf", "async", lambda: valid("notproto"), "returned a builtins.dict"),
    Case("handler-returns-oversized", "async", lambda: valid("oversized:3000000"), "answer too large: the message is"),
    Case("handler-raises", "async", lambda: valid("boom"), "ValueError: boom requested"),
    Case("sync-handler-raises", "sync", lambda: valid("boom"), "ValueError: boom requested"),
    Case("sync-handler-raises-stopiteration", "sync", lambda: valid("stop-iteration"), "StopIteration: no more"),
    Case("async-handler-times-out", "async", lambda: valid("sleep:3"), "timed out after 0.5s", quiet=3.0),
    Case("sync-handler-times-out", "sync", lambda: valid("sleep:2"), "timed out after 0.5s", quiet=2.5),
    Case("sync-handler-replies-late", "sync", lambda: valid("late-reply:2"), "timed out after 0.5s", quiet=2.5),
]


# -- the nodes under test ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nats_server() -> Iterator[EmbeddedNats]:
    """One nats-server for the whole module (overrides conftest's per-test one)."""
    with EmbeddedNats() as server:
        yield server


def launch(server: EmbeddedNats, base: Path, handler: str, *, input: str, cwd: Path, **extra: str) -> NodeProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("KRT_")}
    env.update({"KRT_LOG_FORMAT": "json", "KRT_MEASUREMENTS_ENABLED": "false"})
    env.update(node_env(server, base, handler, input=input, **extra))
    node = NodeProcess([*KRT_RUNNER, "run"], env, cwd=cwd)
    node.wait_for_line('"node ready"')
    return node


@pytest.fixture(scope="module")
def nodes(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NodeProcess]]:
    limits = {"KRT_HANDLER_TIMEOUT": str(HANDLER_TIMEOUT), "KRT_MAX_DECOMPRESSED_BYTES": str(DECOMPRESSED_CAP)}
    cwd = tmp_path_factory.mktemp("bad-input")
    started: dict[str, NodeProcess] = {}
    try:
        started["async"] = launch(nats_server, HANDLERS, "hostile.py", input="bad-async", cwd=cwd, **limits)
        started["sync"] = launch(nats_server, HANDLERS, "hostile_sync.py", input="bad-sync", cwd=cwd, **limits)
        yield started
    finally:
        for node in started.values():
            node.stop()


SUBJECTS = {"async": "bad-async", "sync": "bad-sync"}
NAMES = {"async": "hostile", "sync": "hostile_sync"}


@pytest_asyncio.fixture
async def answer_log(nats_server: EmbeddedNats) -> AsyncIterator[AnswerLog]:
    nc = await nats.connect(nats_server.url)
    yield await AnswerLog(nc).start()
    await nc.close()


async def ask_valid(log: AnswerLog, which: str, name: str) -> KreNatsMessage:
    reply = await log.send(SUBJECTS[which], valid(name))
    return await log.first_answer(reply, timeout=10)


async def warm_up(log: AnswerLog, which: str) -> None:
    """Let the node reach its steady memory: imports, buffers and caches of the first messages."""
    for i in range(20):
        await ask_valid(log, which, f"warm-up {i}")


# -- the table -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_bad_input_gets_exactly_one_error_answer_and_the_node_keeps_serving(
    nodes: dict[str, NodeProcess], answer_log: AnswerLog, case: Case
) -> None:
    node, subject, name = nodes[case.node], SUBJECTS[case.node], NAMES[case.node]
    data = case.data()
    await warm_up(answer_log, case.node)
    before = rss(node.process.pid)

    reply = await answer_log.send(subject, data)
    answer = await answer_log.first_answer(reply, timeout=15)
    after_answer = await ask_valid(answer_log, case.node, "next")
    await asyncio.sleep(case.quiet)

    assert f"error in node '{name}'" in answer.error, answer.error
    assert case.cause in answer.error, answer.error
    assert answer_log.count(reply) == 1, [a.message for a in answer_log.answers[reply]]
    assert unpack(after_answer, greeter_pb2.Request).name == f"next>{name}"
    assert node.process.poll() is None, node.output
    await ask_valid(answer_log, case.node, "settle")
    grown = rss(node.process.pid) - before
    print(f"{case.id}: one answer; RSS {before / MB:.1f} MB, {grown / MB:+.1f} MB after")
    assert grown < RSS_TOLERANCE, f"RSS grew by {grown / MB:.1f} MB after {case.id} (before {before / MB:.1f} MB)"


async def test_a_gzip_bomb_is_refused_without_inflating_it(
    nodes: dict[str, NodeProcess], answer_log: AnswerLog
) -> None:
    node = nodes["async"]
    bomb = gzip_bomb()
    await warm_up(answer_log, "async")
    before = rss(node.process.pid)

    reply = await answer_log.send("bad-async", bomb)
    answer = await answer_log.first_answer(reply, timeout=15)

    peak_growth = peak_rss(node.process.pid) - before
    print(f"gzip bomb: {len(bomb) / 1024:.0f} kB -> {BOMB_INFLATED // MB} MB; peak RSS {peak_growth / MB:+.1f} MB")
    assert "inflates to more than" in answer.error
    # Inflating it all would take 256 MB; the cap (16 MB) plus one chunk is what may be held.
    assert peak_growth < 4 * DECOMPRESSED_CAP, (
        f"peak RSS grew by {peak_growth / MB:.1f} MB for a {len(bomb) / 1024:.0f} kB bomb of {BOMB_INFLATED // MB} MB"
    )


async def test_an_envelope_past_the_cap_sent_along_a_chain_gets_its_error_answer_at_its_envelopes_reply(
    nodes: dict[str, NodeProcess], answer_log: AnswerLog
) -> None:
    """A node before it gzips an answer over the max payload: the requester is only in the envelope, whose leading
    fields (id, tracking, reply) come before the payload that takes it past the cap."""
    reply = f"{answer_log.prefix}.chain"
    answer_log.sent[reply] = 0.0
    message = request_envelope(greeter_pb2.Request(name="x" * (20 * MB)), tracking_id="t-past-the-cap")
    message.reply = reply

    await answer_log.nc.publish(SUBJECTS["async"], gzip.compress(message.SerializeToString(), compresslevel=1))
    answer = await answer_log.first_answer(reply, timeout=15)
    await asyncio.sleep(QUIET_WINDOW)

    assert "inflates to more than 16777216 bytes" in answer.error
    assert answer.tracking_id == "t-past-the-cap"
    assert [entry.node_name for entry in answer.tracking] == ["entrypoint", "hostile"]
    assert answer_log.count(reply) == 1


async def test_an_envelope_past_the_cap_whose_reply_is_refused_says_why_no_error_answer_went(
    nodes: dict[str, NodeProcess], answer_log: AnswerLog
) -> None:
    message = request_envelope(greeter_pb2.Request(name="x" * (20 * MB)), tracking_id="t-looping-reply")
    message.reply = SUBJECTS["async"]  # its answer would come back to the node
    lines_before = len(nodes["async"].lines)

    await answer_log.nc.publish(SUBJECTS["async"], gzip.compress(message.SerializeToString(), compresslevel=1))
    await asyncio.to_thread(nodes["async"].wait_for_line, "t-looping-reply", count=3)

    said = "\n".join(nodes["async"].lines[lines_before:])
    assert "inflates to more than" in said and "is one this node listens on" in said


@pytest.mark.parametrize(
    "timestamp", ["not a time", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", ""]
)
async def test_unreadable_tracking_timestamps_do_not_disturb_the_answer(
    nodes: dict[str, NodeProcess], answer_log: AnswerLog, timestamp: str
) -> None:
    node = nodes["async"]
    message = request_envelope(greeter_pb2.Request(name="odd-times"))
    message.tracking[0].start = message.tracking[0].end = timestamp
    lines_before = len(node.lines)

    reply = await answer_log.send("bad-async", message.SerializeToString())
    answer = await answer_log.first_answer(reply)
    await asyncio.sleep(QUIET_WINDOW)

    assert answer.error == ""
    assert unpack(answer, greeter_pb2.Request).name == "odd-times>hostile"
    assert answer_log.count(reply) == 1
    logged = "\n".join(node.lines[lines_before:])
    assert '"error"' not in logged and '"warning"' not in logged, logged


async def test_a_reply_subject_that_would_inject_protocol_is_refused_and_logged(
    nodes: dict[str, NodeProcess], answer_log: AnswerLog
) -> None:
    node = nodes["async"]
    seen: list[bytes] = []

    async def spy(msg: object) -> None:
        seen.append(msg.data)

    await answer_log.nc.subscribe("victim", cb=spy)
    message = request_envelope(greeter_pb2.Request(name="inject"))
    message.reply = "x 0\r\nPUB victim 6\r\ninject\r\nPUB y"

    await answer_log.nc.publish("bad-async", message.SerializeToString())  # no inbox: the envelope's reply counts
    await answer_log.nc.flush()
    await asyncio.to_thread(node.wait_for_line, "is not a valid NATS subject", 10)
    answer = await ask_valid(answer_log, "async", "after")

    assert seen == []
    assert unpack(answer, greeter_pb2.Request).name == "after>hostile"


# -- random and mutated envelopes --------------------------------------------------------------------

TIMESTAMPS = st.one_of(
    st.sampled_from(["2026-01-02T03:04:05.000001", "2026-01-02T03:04:05Z", "0001-01-01T00:00:00+01:00", ""]),
    st.text(max_size=40),
)
TRACKING = st.tuples(st.text(max_size=20), TIMESTAMPS, TIMESTAMPS)
PAYLOADS = st.one_of(
    st.none(),
    st.text(max_size=200).map(lambda name: packed(greeter_pb2.Request(name=name))),
    st.builds(AnyMessage, type_url=st.text(max_size=60), value=st.binary(max_size=200)),
)


@st.composite
def envelopes(draw: st.DrawFn) -> bytes:
    message = KreNatsMessage(
        tracking_id=draw(st.text(max_size=40)), error=draw(st.text(max_size=20)), replied=draw(st.booleans())
    )
    for node_name, start, end in draw(st.lists(TRACKING, max_size=4)):
        message.tracking.add(node_name=node_name, start=start, end=end)
    payload = draw(PAYLOADS)
    if payload is not None:
        message.payload.CopyFrom(payload)
    data: bytes = message.SerializeToString()
    return data


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(envelopes()))
    for _ in range(draw(st.integers(0, 4))):
        where = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "cut", "insert"]))
        if kind == "flip" and where < len(data):
            data[where] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[where:]
        else:
            data[where:where] = draw(st.binary(min_size=1, max_size=8))
    if draw(st.booleans()):
        squeezed = gzip.compress(bytes(data))
        return squeezed[: draw(st.integers(2, len(squeezed)))]
    return bytes(data)


ANYTHING = st.one_of(st.binary(max_size=512), envelopes(), mutated())


def expected_answers(data: bytes) -> int:
    """0 when the envelope says it was already answered (its last node stays silent), otherwise 1."""
    try:
        request = decode(data, max_decompressed=DECOMPRESSED_CAP)
    except EnvelopeError:
        return 1
    return 0 if request.replied else 1


def test_random_and_mutated_envelopes_each_get_at_most_one_answer_and_the_node_survives(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    node = launch(nats_server, GREETER, "src/greet.py", input="fuzz", cwd=tmp_path, KRT_HANDLER_TIMEOUT="2")
    loop = asyncio.new_event_loop()
    log = loop.run_until_complete(_connect(nats_server))
    expected: dict[str, int] = {}

    @settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=ANYTHING)
    def one_message(data: bytes) -> None:
        reply = loop.run_until_complete(log.send("fuzz", data))
        expected[reply] = expected_answers(data)
        if expected[reply]:
            answer = loop.run_until_complete(log.first_answer(reply, timeout=10))
            assert not answer.error or "error in node 'greet'" in answer.error, answer.error
        assert node.process.poll() is None, node.output

    try:
        loop.run_until_complete(_greet(log, "warm-up", 20))
        before = rss(node.process.pid)
        one_message()
        loop.run_until_complete(_greet(log, "after", 5))
        loop.run_until_complete(asyncio.sleep(QUIET_WINDOW))
        grown = rss(node.process.pid) - before
    finally:
        loop.run_until_complete(log.nc.close())
        loop.close()
        node.stop()

    wrong = {reply: (log.count(reply), want) for reply, want in expected.items() if log.count(reply) != want}
    answers = sum(log.count(reply) for reply in expected)
    errors = sum(1 for reply in expected if log.count(reply) and log.answers[reply][0].message.error)
    print(f"fuzz: {len(expected)} messages, {answers} answers ({errors} errors), RSS {grown / MB:+.1f} MB")
    assert not wrong, f"answers (got, expected) per request: {wrong}"
    assert grown < RSS_TOLERANCE, f"RSS grew by {grown / MB:.1f} MB over {len(expected)} random messages"


async def _connect(server: EmbeddedNats) -> AnswerLog:
    return await AnswerLog(await nats.connect(server.url)).start()


async def _greet(log: AnswerLog, name: str, times: int) -> None:
    for _ in range(times):
        reply = await log.send("fuzz", valid(name))
        answer = await log.first_answer(reply)
        assert unpack(answer, greeter_pb2.Response).greeting == f"Hello, {name}!"


@pytest.mark.parametrize("subject", ["_INBOX.7Hj3kLmN9pQrStUvWx.12", "reply", "a.b-c_d.é"])
def test_a_plain_reply_subject_ispublishable(subject):
    assert publishable(subject) == subject


@pytest.mark.parametrize(
    "subject",
    ["a b", "a\r\nPUB x 1", "a\tb", "a\u00a0b", "a\u2028b", "a.*", "a.>", "*", "a..b", ".a", "a.", "a\x00b"],
)
def test_a_reply_subject_that_could_break_or_widen_a_publish_is_refused(subject):
    with pytest.raises(EnvelopeError, match="not a valid NATS subject"):
        publishable(subject)
