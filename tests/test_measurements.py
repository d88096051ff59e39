"""Measurement points without a server: line protocol, checks, the runner's points, the background writer."""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
import time
import weakref
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import greeter_pb2, request_envelope, until

from krt_runner.config import load_settings
from krt_runner.envelope import timestamp
from krt_runner.errors import ConfigError, MeasurementError, WriteError
from krt_runner.measurements import Measurement, MemorySink, NodePoints, NullSink, Outcome, make_sink
from krt_runner.measurements import buffer as buffer_module
from krt_runner.measurements import report as report_module
from krt_runner.measurements.buffer import PointBuffer
from krt_runner.measurements.file import FileDestination
from krt_runner.measurements.lines import line_protocol
from krt_runner.measurements.pending import RENDER_SLICE
from krt_runner.measurements.points import MAX_POINT_TEXT
from krt_runner.measurements.report import WriterReport
from krt_runner.measurements.timing import TIMING_FIELDS
from krt_runner.measurements.writer import BatchWriter
from krt_runner.node.job import Job

# measurement[,tag=value...] field=value[,field=value...] timestamp -- escapes allowed, no raw newline.
_ESCAPED = r"(?:[^\\ ,=\n]|\\.)+"
_FIELD_VALUE = r'(?:"(?:[^"\\\n]|\\.)*"|-?[0-9.e+-]+i?|true|false)'
LINE_PROTOCOL = re.compile(
    rf"^{_ESCAPED}(?:,{_ESCAPED}={_ESCAPED})* {_ESCAPED}={_FIELD_VALUE}(?:,{_ESCAPED}={_FIELD_VALUE})* \d+$"
)
NODE_ENV = {"KRT_NATS_SERVER": "h:4222", "KRT_NATS_INPUT": "in", "KRT_HANDLER_PATH": "x.py"}
T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=timezone.utc)
T0_NS = 1767323045123456000


class RecordingLogger:
    """Collects (level, event, fields) as structlog's bound logger would log them."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.records.append((level, event, fields))

    def events(self, level: str | None = None) -> list[str]:
        return [event for lvl, event, _ in self.records if level in (None, lvl)]

    def text(self) -> str:
        return repr(self.records)


class FlakyDestination:
    """Fails the first ``failures`` writes (retryable unless ``refuse``), then keeps what it gets."""

    description = "a test destination"

    def __init__(self, failures: int = 0, *, refuse: bool = False) -> None:
        self.details: dict[str, Any] = {}
        self.failures = failures
        self.refuse = refuse
        self.batches: list[list[str]] = []
        self.attempts = 0
        self.closed = False

    def write(self, lines: list[str]) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise WriteError("server says no", retry=not self.refuse)
        self.batches.append(list(lines))

    def close(self) -> None:
        self.closed = True

    @property
    def lines(self) -> list[str]:
        return [line for batch in self.batches for line in batch]


def writer(destination: Any, logger: Any = None, **options: Any) -> BatchWriter:
    settings = {"batch_size": 10, "flush_interval": 0.05, "max_buffered": 100, "shutdown_timeout": 2.0,
                "retry_waits": (0.01, 0.05), **options}
    return BatchWriter(destination, logger=logger or RecordingLogger(), **settings)


# -- line protocol ----------------------------------------------------------------------------


def test_a_point_becomes_one_line_with_sorted_tags_and_typed_fields():
    line = line_protocol("predictions", {"label": "cat", "score": 0.5, "count": 3, "ok": True}, {"z": "1", "a": "2"},
                         time_ns=T0_NS)

    assert line == f'predictions,a=2,z=1 label="cat",score=0.5,count=3i,ok=true {T0_NS}'
    assert LINE_PROTOCOL.match(line)


def test_special_characters_are_escaped_and_never_break_the_line():
    line = line_protocol("my measure,x", {"say": 'a "quote" \\ and\nnewline', "f k": 1.0}, {"t=k": "v, w\nx"},
                         time_ns=1)

    assert line == r'my\ measure\,x,t\=k=v\,\ w\nx say="a \"quote\" \\ and\nnewline",f\ k=1.0 1'
    assert "\n" not in line and LINE_PROTOCOL.match(line)


def test_a_trailing_backslash_in_a_tag_value_cannot_escape_the_separator():
    line = line_protocol("m", {"f": 1}, {"path": "C:\\"}, time_ns=1)

    assert LINE_PROTOCOL.match(line), line


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (np.int64(7), "7i"),
        (np.float32(0.5), "0.5"),
        (np.bool_(True), "true"),
        (Decimal("2.5"), "2.5"),
        (-(2**63), f"{-(2**63)}i"),
    ],
)
def test_numpy_numbers_and_decimals_are_numbers(value, text):
    assert line_protocol("m", {"f": value}, time_ns=1) == f"m f={text} 1"


def test_none_and_non_finite_fields_are_skipped_as_influxdb_client_does():
    assert line_protocol("m", {"a": None, "b": float("nan"), "c": float("inf"), "d": 1}, time_ns=1) == "m d=1i 1"
    assert line_protocol("m", {"b": float("nan")}, time_ns=1) == ""


def test_empty_and_none_tags_are_left_out():
    assert line_protocol("m", {"f": 1}, {"a": "", "b": None, "c": 3}, time_ns=1) == "m,c=3 f=1i 1"


@pytest.mark.parametrize(
    ("measurement", "fields", "tags", "message"),
    [
        ("m", {"f": {"nested": 1}}, None, "field 'f' has type dict"),
        ("m", {"f": [1, 2]}, None, "field 'f' has type list"),
        ("m", {"f": 2**63}, None, "beyond InfluxDB's 64-bit integers"),
        ("m", "not-a-dict", None, "needs a dict of fields, not str"),
        ("m", {"time": 1}, None, "'time' is reserved"),
        ("m", {"": 1}, None, "non-empty strings"),
        ("m", {"f": 1}, {"t": ["x"]}, "tag 't' must be a string or a number, not list"),
        ("m", {"f": 1}, {"_measurement": "x"}, "reserved"),
        ("m", {"f": 1}, "not-a-dict", "tags must be a dict"),
        ("", {"f": 1}, None, "non-empty string"),
        ("#m", {"f": 1}, None, "comment"),
        ("m\\", {"f": 1}, None, "measurement name 'm\\\\' ends with a backslash"),
        ("m", {"f\\": 1, "g": 2}, None, "field name 'f\\\\' ends with a backslash"),
        ("m", {"f": 1}, {"t\\": "x"}, "tag name 't\\\\' ends with a backslash"),
    ],
)
def test_a_point_influxdb_would_reject_raises_a_clear_error(measurement, fields, tags, message):
    with pytest.raises(MeasurementError, match=re.escape(message)):
        line_protocol(measurement, fields, tags, time_ns=1)


# -- ctx.measurement ----------------------------------------------------------------------------


def test_save_adds_the_version_tag_over_any_the_handler_gave():
    sink = MemorySink()

    Measurement(sink=sink, version="v7").save("m", {"f": 1}, {"version": "mine", "model": "a"}, time=T0)

    assert sink.lines == [f"m,model=a,version=v7 f=1i {T0_NS}"]


def test_a_point_with_no_fields_is_not_written_as_kre_v1s_was_not():
    sink = MemorySink()

    Measurement(sink=sink, version="v1").save("m", {}, time=T0)
    Measurement(sink=sink, version="v1").save("m", {"f": None}, time=T0)

    assert sink.lines == []


@pytest.mark.parametrize(("time", "precision", "expected"), [
    ("2026-12-05T03:00:00Z", "ns", 1_796_439_600_000_000_000),
    ("2026-12-05T04:00:00.5+01:00", "ms", 1_796_439_600_500_000_000),
    ("2026-12-05T03:00:00.123456", "us", 1_796_439_600_123_456_000),
    (timedelta(days=1, seconds=1, microseconds=5), "ns", 86_401_000_005_000),
])
def test_time_may_be_an_iso_text_or_a_timedelta_since_the_epoch_as_influxdb_clients_point_took_it(
    time, precision, expected
):
    sink = MemorySink()

    Measurement(sink=sink, version="v1").save("m", {"f": 1}, time=time, precision=precision)

    assert sink.lines == [f"m,version=v1 f=1i {expected}"]


@pytest.mark.parametrize(("time", "precision", "hint"), [
    (datetime(2300, 1, 1), "ns", ""),
    (datetime(1600, 1, 1), "ns", ""),
    ("2262-04-12T00:00:00Z", "ns", ""),
    (1_796_439_600_000_000_000, "ms", " (is it a number of ms?)"),  # nanoseconds given as milliseconds
])
def test_a_time_influxdb_cannot_store_raises_in_the_caller(time, precision, hint):
    # InfluxDB would refuse the line, and with it the whole batch: the runner's own points of other messages too
    with pytest.raises(MeasurementError, match=re.escape(f"{hint} is outside the times InfluxDB stores, 1677-09-21")):
        Measurement(sink=MemorySink(), version="v1").save("m", {"f": 1}, time=time, precision=precision)


def test_a_tag_value_ending_in_a_backslash_is_written_as_influxdb_clients_point_wrote_it():
    assert line_protocol("m", {"f": 1}, {"t": "x\\"}, time_ns=1) == "m,t=x\\  f=1i 1"


def test_a_time_text_that_is_not_iso_8601_raises_in_the_caller():
    with pytest.raises(MeasurementError, match="'yesterday' is not an ISO 8601 date and time"):
        Measurement(sink=MemorySink(), version="v1").save("m", {"f": 1}, time="yesterday")


def test_without_a_krt_version_the_handlers_own_version_tag_is_kept():
    sink = MemorySink()

    Measurement(sink=sink, version="").save("m", {"f": 1}, {"version": "mine"}, time=T0)
    Measurement(sink=sink, version="").save("m", {"f": 2}, time=T0)

    assert sink.lines == [f"m,version=mine f=1i {T0_NS}", f"m f=2i {T0_NS}"]


def test_a_bad_point_raises_in_the_caller_and_reaches_no_sink():
    sink = MemorySink()
    measurement = Measurement(sink=sink, version="v1")

    with pytest.raises(MeasurementError, match="field 'f'"):
        measurement.save("m", {"f": object()})

    assert sink.lines == []


def test_a_user_point_over_64k_characters_is_refused_in_the_caller_and_the_buffer_bounds_their_text(monkeypatch):
    sink = MemorySink()
    measurement = Measurement(sink=sink, version="v1")
    measurement.save("m", {"s": "x" * 60_000})  # under InfluxDB's 64 KB of a string: kept

    with pytest.raises(MeasurementError, match=r"point 'm' is 1000\d\d bytes of line protocol; at most 65536"):
        measurement.save("m", {"s": "x" * 100_000})
    with pytest.raises(MeasurementError, match=r"point 'm' is 800\d\d bytes"):  # 20,000 characters of 4 bytes
        measurement.save("m", {"s": "\U0001F600" * 20_000})
    assert len(sink.lines) == 1

    monkeypatch.setattr(buffer_module, "MAX_WAITING_TEXT", 200_000)  # three such points, not the cap's 100
    buffer = PointBuffer(max_buffered=100, batch_size=10, wake_at=10)
    buffer.put_many([sink.lines[0]] * 5)
    for _ in range(5):
        buffer.put_many([sink.lines[0]])

    assert buffer.buffered == 3 and buffer.counts["dropped_full"] == 7
    assert len(buffer.take()) == 3 and not buffer.take()


@pytest.mark.parametrize(
    ("time", "precision", "expected"),
    [
        (T0, Measurement.NS, T0_NS),
        (T0.replace(tzinfo=None), Measurement.NS, T0_NS),  # naive means UTC, as datetime.utcnow()
        (T0.astimezone(timezone(timedelta(hours=2))), Measurement.NS, T0_NS),
        (T0, Measurement.S, 1767323045_000000000),
        (T0, Measurement.PRECISION_MS, 1767323045123_000000),  # KRE v1 spelling
        (1767323045123, Measurement.MS, 1767323045123_000000),
        (1767323045.5, Measurement.S, 1767323045_000000000),
        (1767323045123456, Measurement.US, T0_NS),
    ],
)
def test_time_and_precision_give_the_timestamp_influxdb_would_store(time, precision, expected):
    sink = MemorySink()

    Measurement(sink=sink, version="v1").save("m", {"f": 1}, time=time, precision=precision)

    assert sink.lines[0].endswith(f" {expected}")


def test_an_unknown_precision_or_time_type_is_refused():
    measurement = Measurement(sink=MemorySink(), version="v1")

    with pytest.raises(MeasurementError, match="precision"):
        measurement.save("m", {"f": 1}, precision="minutes")
    with pytest.raises(MeasurementError, match="time must be a datetime, a timedelta, an ISO 8601 text or a number"):
        measurement.save("m", {"f": 1}, time=[2026])  # type: ignore[arg-type]


# -- the runner's own points --------------------------------------------------------------------


def timing(tracking_id: str = "t", *, node_from: str = "a", elapsed_ms: float = 1.0, previous_end: str = "",
           started_ns: int = 0, first_start: str | None = None, error: str = "") -> tuple[Any, ...]:
    """One message's timing, in the order a node adds it to a pass's flat timings."""
    values = {"tracking_id": tracking_id, "node_from": node_from, "elapsed_ns": round(elapsed_ms * 1e6),
              "previous_end": previous_end, "started_ns": started_ns, "first_start": first_start,
              "error_field": Outcome(error).error_field}
    return tuple(values[field] for field in TIMING_FIELDS)


def timings(*each: tuple[Any, ...]) -> list[Any]:
    """A pass's timings, as the node hands them over: one flat list."""
    return [value for one in each for value in one]


def test_node_elapsed_time_has_kre_v1_tags_and_fields_and_no_error_field_when_the_message_succeeded():
    sink = MemorySink()
    points = NodePoints(sink=sink, workflow="wf", version="v1", node="a", last_node=False)

    points.record(timings(timing("t-1", node_from="entrypoint", elapsed_ms=1.5, previous_end=timestamp(T0),
                          started_ns=T0_NS + 250_000, first_start=timestamp(T0))))

    (line,) = sink.lines
    assert line == (
        'node_elapsed_time,node=a,version=v1,workflow=wf tracking_id="t-1",node_from="entrypoint",'
        f"elapsed_ms=1.500,waiting_ms=0.250 {T0_NS + 1_750_000}"
    ), line


@pytest.mark.parametrize("previous_end", ["", "not a time", "2026-01-02T03:04:05Z"])
def test_durations_are_written_to_the_microsecond_and_an_unreadable_start_waits_zero(previous_end):
    sink = MemorySink()
    points = NodePoints(sink=sink, workflow="wf", version="v1", node="a", last_node=False)

    points.record(timings(timing(elapsed_ms=0.29717799998, previous_end=previous_end,
                          started_ns=T0_NS - 123456000 if previous_end.endswith("Z") else 0)))

    assert "elapsed_ms=0.297," in sink.lines[0] and "waiting_ms=0.000 " in sink.lines[0]


class BackloggedSink(MemorySink):
    """A sink whose writes fail: what it is given piles up."""

    backlogged = True

    def __init__(self) -> None:
        super().__init__()
        self.given: list[Any] = []

    def put(self, line: Any) -> None:
        self.given.append(line)
        super().put(line)


@pytest.mark.parametrize("sink", [MemorySink(), BackloggedSink()], ids=["rendered", "piling-up"])
def test_a_requests_long_texts_are_cut_in_its_points_so_no_line_is_refused_and_no_backlog_holds_them(sink):
    points = NodePoints(sink=sink, workflow="wf", version="v1", node="c", last_node=True)

    points.record(timings(timing("t" * 200_000, node_from="n" * 700_000, previous_end="e" * 5000,
                                 first_start="f" * 5000)))

    node, workflow = sink.lines
    assert f'tracking_id="{"t" * MAX_POINT_TEXT}",node_from="{"n" * MAX_POINT_TEXT}",' in node
    assert len(node) < 4 * MAX_POINT_TEXT and len(workflow) < 4 * MAX_POINT_TEXT
    for kept in getattr(sink, "given", ()):  # what waits for a store that is away
        assert max(len(value) for value in kept._timings if isinstance(value, str)) == MAX_POINT_TEXT


@pytest.mark.parametrize("error", ["invalid", "failed"])
def test_the_last_node_adds_workflow_elapsed_time_and_errors_are_recorded_in_both_points(error):
    sink = MemorySink()
    points = NodePoints(sink=sink, workflow="wf", version="v1", node="c", last_node=True)
    first_start = datetime.now(timezone.utc) - timedelta(milliseconds=12.5)

    points.record(timings(timing("t-2", elapsed_ms=2.0, started_ns=time.time_ns() - 2_000_000,
                          first_start=timestamp(first_start), error=error)))

    node, workflow = sink.lines
    assert re.fullmatch(rf'node_elapsed_time,node=c,version=v1,workflow=wf tracking_id="t-2",node_from="a",'
                        rf'elapsed_ms=2\.000,waiting_ms=\d+\.\d{{3}},error="{error}" \d+', node), node
    found = re.fullmatch(r'workflow_elapsed_time,version=v1,workflow=wf elapsed_ms=(\d+\.\d{3}),tracking_id="t-2",'
                         rf'error="{error}" \d+', workflow)
    assert found and 12.5 <= float(found[1]) < 5000, workflow
    assert all(LINE_PROTOCOL.match(line) for line in sink.lines)


def test_only_the_last_node_writes_workflow_elapsed_time_and_only_with_tracking():
    sink = MemorySink()
    middle = NodePoints(sink=sink, workflow="wf", version="v1", node="b", last_node=False)
    last = NodePoints(sink=sink, workflow="wf", version="v1", node="c", last_node=True)

    middle.record(timings(timing(first_start="")))
    last.record(timings(timing(first_start=None)))

    assert [line.split(",")[0] for line in sink.lines] == ["node_elapsed_time", "node_elapsed_time"]


def test_a_percent_sign_in_a_name_is_written_as_it_is_not_read_as_a_format():
    sink = MemorySink()
    points = NodePoints(sink=sink, workflow="w%s", version="v%d", node="n%%", last_node=True)

    points.record(timings(timing("t%s", node_from="f%d", elapsed_ms=1.0, started_ns=T0_NS, first_start=timestamp(T0))))

    node, workflow = sink.lines
    assert node.startswith('node_elapsed_time,node=n%%,version=v%d,workflow=w%s tracking_id="t%s",node_from="f%d",')
    assert workflow.startswith('workflow_elapsed_time,version=v%d,workflow=w%s elapsed_ms=1.000,tracking_id="t%s" ')


async def test_the_writer_renders_node_points_on_its_own_thread():
    destination = FlakyDestination()
    sink = writer(destination)
    points = NodePoints(sink=sink, workflow="wf", version="v1", node="a", last_node=True)

    points.record(timings(timing("t-3", first_start="")))
    await sink.close(timeout=2)

    assert [line.split(" ")[0] for line in destination.lines] == [
        "node_elapsed_time,node=a,version=v1,workflow=wf", "workflow_elapsed_time,version=v1,workflow=wf"]
    assert all(LINE_PROTOCOL.match(line) for line in destination.lines)


async def test_points_rendered_in_one_batch_read_each_timestamp_and_escape_each_string_on_its_own():
    destination = FlakyDestination()
    sink = writer(destination, batch_size=100)
    points = NodePoints(sink=sink, workflow="w f", version="100%", node="n%s", last_node=True)
    one_ms_later = T0_NS + 1_000_000
    cases = [  # tracking id, as written; the previous node's end; waiting_ms written
        ("plain", "plain", timestamp(T0), "1.000"),
        ('q"b\\n\n', 'q\\"b\\\\n\\n', timestamp(T0), "1.000"),
        ("zulu", "zulu", "2026-01-02T03:04:05.123456Z", "1.000"),
        ("offset", "offset", "2026-01-02T04:04:05.123456+01:00", "1.000"),
        ("missing", "missing", "", "0.000"),
        ("unreadable", "unreadable", "not a time", "0.000"),
    ]

    for tracking_id, _, previous_end, _ in cases:
        points.record(timings(timing(tracking_id, elapsed_ms=0.5, previous_end=previous_end, started_ns=one_ms_later,
                              first_start=timestamp(T0))))
    await sink.close(timeout=2)

    assert [line for line in destination.lines if line.startswith("node_elapsed_time")] == [
        f'node_elapsed_time,node=n%s,version=100%,workflow=w\\ f tracking_id="{written}",node_from="a",'
        f"elapsed_ms=0.500,waiting_ms={waiting} {one_ms_later + 500_000}"
        for _, written, _, waiting in cases
    ]
    assert [line for line in destination.lines if line.startswith("workflow_elapsed_time")] == [
        f'workflow_elapsed_time,version=100%,workflow=w\\ f elapsed_ms=1.500,tracking_id="{written}"'
        f" {one_ms_later + 500_000}"
        for _, written, _, _ in cases
    ]
    assert all(LINE_PROTOCOL.match(line) for line in destination.lines)


@pytest.mark.parametrize("zone", ["", "Z", "+01:00"])
async def test_waiting_ms_in_one_batch_is_exact_across_midnight_and_for_a_previous_end_after_the_start(zone):
    destination = FlakyDestination()
    sink = writer(destination, batch_size=100)
    points = NodePoints(sink=sink, workflow="wf", version="v1", node="a", last_node=False)
    midnight = datetime(2026, 1, 3, tzinfo=timezone.utc)
    midnight_ns = int(midnight.timestamp()) * 1_000_000_000
    offset = timedelta(hours=1) if zone == "+01:00" else timedelta(0)
    ends = [  # the previous node's end, and milliseconds from it to this node's start
        (midnight - timedelta(microseconds=1500), 1.500),
        (midnight + timedelta(days=1, microseconds=250), -0.250 - 86_400_000),
        (midnight - timedelta(seconds=3), 3000.0),
        (midnight + timedelta(microseconds=1), -0.001),
    ]

    points.record(timings(*[timing(f"t-{i}", previous_end=(end + offset).replace(tzinfo=None).isoformat() + zone,
                                   started_ns=midnight_ns) for i, (end, _) in enumerate(ends)]))
    await sink.close(timeout=2)

    assert len(destination.batches) == 1  # rendered together: the batch path, not one point at a time
    assert [line.split("waiting_ms=")[1].split(" ")[0] for line in destination.lines] == [
        f"{waiting:.3f}" for _, waiting in ends]


async def test_a_pass_larger_than_a_render_slice_is_rendered_in_parts_keeping_every_point_in_order():
    destination = FlakyDestination()
    sink = writer(destination, batch_size=1000, max_buffered=1000)
    points = NodePoints(sink=sink, workflow="wf", version="v1", node="c", last_node=True)

    points.record(timings(*[timing(f"t-{i}", first_start=timestamp(T0)) for i in range(450)]))  # 900 points
    points.record(timings(timing("t-450")))  # no tracking: no workflow point
    await sink.close(timeout=2)

    ids = {kind: [re.search(r'tracking_id="([^"]+)"', line)[1] for line in destination.lines if line.startswith(kind)]
           for kind in ("node_elapsed_time", "workflow_elapsed_time")}
    assert ids == {"node_elapsed_time": [f"t-{i}" for i in range(451)],
                   "workflow_elapsed_time": [f"t-{i}" for i in range(450)]}
    assert sink.counts["written"] == 901 and sink.buffered == 0


async def test_passes_of_one_message_each_are_rendered_together_not_one_call_each():
    # An idle node's passes hold one message each: rendered alone, each would cost several times its share.
    # (No flush during the test: a flush takes whatever is waiting, and a slow machine would flush several times.)
    destination = FlakyDestination()
    sink = writer(destination, batch_size=1000, max_buffered=1000, flush_interval=30)
    points = NodePoints(sink=sink, workflow="wf", version="v1", node="a", last_node=False)
    calls = []
    render = points.render
    points.render = lambda timings: calls.append(len(timings)) or render(timings)  # type: ignore[method-assign]

    for i in range(450):
        points.record(timings(timing(f"t-{i}")))
    sink.put("m f=1i 1")  # a user's point between passes: order is kept
    points.record(timings(timing("t-450")))
    await sink.close(timeout=2)

    assert [re.search(r'tracking_id="([^"]+)"', line)[1] for line in destination.lines[:450]] == [
        f"t-{i}" for i in range(450)]
    assert destination.lines[450] == "m f=1i 1" and 'tracking_id="t-450"' in destination.lines[451]
    assert len(calls) < 10, calls


async def test_points_that_arrive_while_the_writer_renders_wait_for_a_slice_of_their_own():
    # A busy node's passes keep coming while the writer renders. Taken as they came, they were rendered a pass or
    # two at a time, at several times the cost per point (and a timing-dependent test failed on a loaded machine).
    destination = FlakyDestination()
    sink = writer(destination, batch_size=1000, max_buffered=1000, flush_interval=30)
    points = NodePoints(sink=sink, workflow="wf", version="v1", node="a", last_node=False)
    calls: list[int] = []
    arriving = iter(range(300, 302))  # one pass arrives during each part's rendering
    render = points.render

    def render_while_a_pass_arrives(timings_: list[Any]) -> list[str]:
        calls.append(len(timings_))
        if (index := next(arriving, None)) is not None:
            points.record(timings(timing(f"t-{index}")))
        return render(timings_)

    points.render = render_while_a_pass_arrives  # type: ignore[method-assign]
    points.record(timings(*[timing(f"t-{i}") for i in range(300)]))  # over a slice: the writer wakes
    deadline = time.monotonic() + 10
    while len(calls) < 2 and time.monotonic() < deadline:  # the pass of 300, rendered in two parts of 150
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # time enough for the writer to take what arrived meanwhile, if it would
    rendered_before_close = len(calls)
    await sink.close(timeout=2)

    assert rendered_before_close == 2, calls
    assert [re.search(r'tracking_id="([^"]+)"', line)[1] for line in destination.lines] == [
        f"t-{i}" for i in range(302)]


def picky_line(value: Any) -> str:
    """One point's line; fails for "bad", as a renderer's bug would (for its whole group: see ListPoints)."""
    if value == "bad":
        raise RuntimeError("renderer bug")
    return f"m f={value} 1"


class ListPoints:
    """Pending points made of a list of values, rendered together by ``line``."""

    def __init__(self, values: list[Any], line: Any = picky_line) -> None:
        self.values = values
        self.line = line
        self.count = len(values)

    def lines(self) -> list[str]:
        return [self.line(value) for value in self.values]

    def parts(self, size: int) -> list[ListPoints]:
        return [ListPoints(self.values[start:start + size], self.line) for start in range(0, len(self.values), size)]

    @property
    def renderer(self) -> Any:
        return self.line

    def joined(self, others: list[ListPoints]) -> ListPoints:
        return ListPoints(self.values + [value for other in others for value in other.values], self.line)


async def test_a_point_that_cannot_be_rendered_is_dropped_and_counted_and_the_rest_are_written():
    destination = FlakyDestination()
    logger = RecordingLogger()
    sink = writer(destination, logger)

    sink.put("m f=0i 0")
    sink.put(ListPoints(["1i", "bad", "2i"]))
    await sink.close(timeout=2)

    assert destination.lines == ["m f=0i 0", "m f=1i 1", "m f=2i 1"]  # the bad one costs only itself
    assert sink.counts["dropped_rejected"] == 1 and sink.counts["written"] == 3 and sink.buffered == 0
    assert "cannot render a point: RuntimeError: renderer bug" in logger.text()


# -- choosing a sink ----------------------------------------------------------------------------


def test_measurements_disabled_means_a_null_sink():
    settings = load_settings({**NODE_ENV, "KRT_MEASUREMENTS_ENABLED": "false", "KRT_INFLUX_URI": "http://influx:8086"})
    logger = RecordingLogger()

    assert isinstance(make_sink(settings, logger), NullSink)
    assert logger.events() == ["measurements off (KRT_MEASUREMENTS_ENABLED=false)"]


async def test_without_influx_uri_points_go_to_the_file_whose_path_is_logged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(NODE_ENV)
    logger = RecordingLogger()

    sink = make_sink(settings, logger)
    sink.put("m f=1i 1")
    await sink.close(timeout=5)

    assert (tmp_path / "measurements.lp").read_text() == "m f=1i 1\n"
    assert ("info", "measurements go to a line-protocol file", {"path": str(tmp_path / "measurements.lp")}) \
        in logger.records


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("KRT_INFLUX_URI", "influxdb:8086"),
        ("KRT_INFLUX_URI", "udp://influxdb:8089"),
        ("KRT_MEASUREMENTS_FILE", "/no/such/directory/points.lp"),
        ("KRT_INFLUX_MAX_BUFFERED_POINTS", "0"),
        ("KRT_INFLUX_SHUTDOWN_TIMEOUT", "-1"),
    ],
)
def test_a_bad_measurement_setting_stops_start_up_naming_it(variable, value):
    with pytest.raises(ConfigError, match=variable):
        load_settings({**NODE_ENV, variable: value})


# -- the background writer ----------------------------------------------------------------------


async def test_every_line_put_is_written_once_in_batches_in_order():
    destination = FlakyDestination()
    sink = writer(destination)

    for number in range(95):
        sink.put(f"m f={number}i 1")
    await sink.close(timeout=5)

    assert destination.lines == [f"m f={number}i 1" for number in range(95)]
    assert max(len(batch) for batch in destination.batches) <= 10
    assert sink.counts["written"] == 95 and sink.dropped == 0 and destination.closed


class Values:
    """A point's values: an object the renderer reads."""

    def __init__(self, number: int) -> None:
        self.number = number


def values_line(value: Values) -> str:
    return f"m f={value.number}i 1"


async def test_points_are_rendered_as_soon_as_a_slice_of_them_waits_and_their_values_let_go_before_a_batch_is_full():
    destination = FlakyDestination()
    sink = writer(destination, batch_size=10_000, max_buffered=10_000, flush_interval=60)
    values = [Values(number) for number in range(RENDER_SLICE)]
    alive = [weakref.ref(value) for value in values]

    sink.put_many([ListPoints(values[:10], values_line), ListPoints(values[10:], values_line)])
    del values
    deadline = time.monotonic() + 5
    while any(ref() is not None for ref in alive) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)

    assert all(ref() is None for ref in alive) and destination.batches == []  # rendered, not yet written
    assert sink.buffered == RENDER_SLICE
    await sink.close(timeout=5)
    assert destination.lines == [f"m f={number}i 1" for number in range(RENDER_SLICE)]


class SlowDestination(FlakyDestination):
    """Takes ``seconds`` per write, as a real server does, and notes when each write began."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.began: list[float] = []

    def write(self, lines: list[str]) -> None:
        self.began.append(time.monotonic())
        time.sleep(self.seconds)
        super().write(lines)


async def test_a_busy_stream_goes_out_in_one_short_batch_per_flush_interval_not_a_request_per_few_points():
    # Points keep arriving while a short batch is written: they wait for the next flush instead of
    # going out at once as a stream of tiny requests (each costs the node and the server a whole request).
    destination = SlowDestination(seconds=0.02)
    sink = writer(destination, batch_size=10_000, max_buffered=10_000, flush_interval=0.1)

    def produce() -> None:
        for number in range(400):
            sink.put(f"m f={number}i 1")
            time.sleep(0.001)

    await asyncio.to_thread(produce)
    closing = time.monotonic()
    await sink.close(timeout=5)

    assert destination.lines == [f"m f={number}i 1" for number in range(400)]
    before_close = [began for began in destination.began if began < closing]
    gaps = [later - earlier for earlier, later in itertools.pairwise(before_close)]
    assert len(before_close) >= 2 and min(gaps) >= 0.08, gaps


async def test_close_writes_every_batch_left_whatever_their_sizes():
    destination = FlakyDestination(failures=1)
    sink = writer(destination, batch_size=10, flush_interval=60)

    for number in range(25):  # two full batches and a short one, the first write failing
        sink.put(f"m f={number}i 1")
    await sink.close(timeout=5)

    assert destination.lines == [f"m f={number}i 1" for number in range(25)]
    assert sink.dropped == 0


def test_a_batch_the_disk_cannot_take_whole_leaves_no_torn_line_and_its_retry_no_second_copy(tmp_path):
    # A file size limit (RLIMIT_FSIZE) makes a write stop half-way, as a full disk does; in a process of its own.
    import subprocess
    import sys

    script = f"""
import resource, signal
from pathlib import Path
from krt_runner.errors import WriteError
from krt_runner.measurements.file import FileDestination
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
path = Path({str(tmp_path / "points.lp")!r})
destination = FileDestination(path)
destination.write(["m f=0i 1"])
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 50, hard))
batch = [f"m f={{n}}i 1" for n in range(1, 40)]
try:
    destination.write(batch)
except WriteError:
    print("refused, file size", path.stat().st_size)
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
destination.write(batch)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "refused, file size 9"  # cut back to the first batch
    lines = (tmp_path / "points.lp").read_text().splitlines()
    assert lines == [f"m f={n}i 1" for n in range(40)]


async def test_lines_from_many_threads_are_all_written_to_the_file(tmp_path):
    path = tmp_path / "points.lp"
    sink = writer(FileDestination(path), max_buffered=10_000, batch_size=100)

    def produce(thread: int) -> None:
        for number in range(1000):
            sink.put(f"m,thread={thread} f={number}i 1")

    threads = [threading.Thread(target=produce, args=(thread,)) for thread in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    await sink.close(timeout=5)

    lines = path.read_text().splitlines()
    assert len(lines) == 4000 == len(set(lines))
    assert all(LINE_PROTOCOL.match(line) for line in lines)


async def test_failed_writes_are_retried_until_they_succeed():
    destination = FlakyDestination(failures=3)
    logger = RecordingLogger()
    sink = writer(destination, logger)

    for number in range(25):
        sink.put(f"m f={number}i 1")
    await sink.close(timeout=5)

    assert destination.lines == [f"m f={number}i 1" for number in range(25)]
    assert destination.attempts >= 4
    assert logger.events("error") == ["measurements: write failed; points are kept and retried"]
    assert "measurements: writes succeed again" in logger.events("info")


async def test_a_refused_batch_is_dropped_and_counted_and_later_batches_still_go():
    destination = FlakyDestination(failures=1, refuse=True)
    sink = writer(destination, flush_interval=60)  # the first batch is the first ten lines, exactly

    for number in range(15):
        sink.put(f"m f={number}i 1")
    await sink.close(timeout=5)

    assert sink.counts["dropped_rejected"] == 10
    assert destination.lines == [f"m f={number}i 1" for number in range(10, 15)]


async def test_put_many_past_the_cap_keeps_the_newest_in_order_and_counts_the_rest():
    destination = FlakyDestination()
    sink = writer(destination, batch_size=100, flush_interval=60, max_buffered=10)  # nothing is sent before close

    sink.put_many([f"m f={number}i 1" for number in range(6)])
    sink.put_many([f"m f={number}i 1" for number in range(6, 15)])  # crosses the cap of 10
    await sink.close(timeout=5)

    assert destination.lines == [f"m f={number}i 1" for number in range(5, 15)]
    assert sink.counts["dropped_full"] == 5 and sink.counts["written"] == 10


async def test_a_full_buffer_drops_whole_passes_oldest_first_counting_their_points():
    destination = FlakyDestination()
    sink = writer(destination, batch_size=100, flush_interval=60, max_buffered=10)  # nothing is sent before close

    for first in (0, 4, 8):  # 4 points each: the third pushes out the first
        sink.put(ListPoints([f"{number}i" for number in range(first, first + 4)]))
    sink.put(ListPoints(["big"] * 11))  # more than the whole cap: it never fits
    await sink.close(timeout=5)

    assert destination.lines == [f"m f={number}i 1" for number in range(4, 12)]
    assert sink.counts["dropped_full"] == 4 + 11 and sink.counts["written"] == 8 and sink.buffered == 0


def test_a_message_adds_its_timing_to_its_pass_field_after_field():
    request = request_envelope(greeter_pb2.Request(name="x"), tracking_id="t-1")
    request.tracking.add(node_name="a", start="2026-01-02T03:04:05.000003", end="2026-01-02T03:04:05.000004")
    job = Job("reply")
    job.request, job.tracking, job.tracking_id, job.hops = request, request.tracking, "t-1", 2
    pass_timings: list[Any] = []

    job.record(pass_timings, 1500, Outcome.FAILED, last_node=True)
    Job("").record(pass_timings, 7, Outcome.ANSWERED, last_node=True)  # undecodable: no tracking

    assert pass_timings == [
        *timing("t-1", node_from="a", elapsed_ms=0.0015, previous_end="2026-01-02T03:04:05.000004",
                started_ns=job.started_ns, first_start="2026-01-02T03:04:05.000001", error="failed"),
        *timing("", node_from="", elapsed_ms=7e-6, started_ns=pass_timings[-3]),
    ]


async def test_a_full_buffer_drops_the_oldest_counts_them_and_logs_once():
    destination = FlakyDestination(failures=10**9)  # the server never comes back
    logger = RecordingLogger()
    sink = writer(destination, logger, max_buffered=50, batch_size=10)

    sizes = []
    for number in range(1000):
        sink.put(f"m f={number}i 1")
        sizes.append(sink.buffered)
    await sink.close(timeout=0.2)

    assert max(sizes) == 50
    assert sink.counts["dropped_full"] == 950
    assert sink.counts["written"] == 0 and sink.dropped == 1000
    assert len([e for e in logger.events() if "dropped" in e]) <= 2  # rate-limited, not one line per point


async def test_close_is_bounded_when_the_destination_never_recovers():
    sink = writer(FlakyDestination(failures=10**9), shutdown_timeout=0.3)
    for number in range(30):
        sink.put(f"m f={number}i 1")

    await sink.close(timeout=30)

    assert not sink._thread.is_alive()
    assert sink.counts["dropped_at_close"] == 30


class ComesBackAt(FlakyDestination):
    """Refuses every write (retryable) until the monotonic time ``back``, then keeps what it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.back = float("inf")

    def write(self, lines: list[str]) -> None:
        if time.monotonic() < self.back:
            raise WriteError("server away", retry=True)
        self.batches.append(list(lines))


async def test_a_store_back_within_the_shutdown_window_gets_the_points_whatever_the_outages_backoff_reached():
    destination = ComesBackAt()
    # the outage's pause, 8 s, is longer than the whole shutdown window
    sink = writer(destination, shutdown_timeout=3.0, retry_waits=(8.0, 8.0))
    for number in range(20):
        sink.put(f"m f={number}i 1")
    await until(lambda: sink.backlogged)  # a write failed: the writer pauses 8 s before the next
    destination.back = time.monotonic() + 0.5  # back half a second into the shutdown

    started = time.monotonic()
    await sink.close(timeout=10)

    assert destination.lines == [f"m f={number}i 1" for number in range(20)]
    assert sink.dropped == 0 and time.monotonic() - started < 2.5


class StuckDestination(FlakyDestination):
    """A server that takes the request and never answers (until ``release``)."""

    def __init__(self) -> None:
        super().__init__()
        self.writing = threading.Event()
        self.release = threading.Event()

    def write(self, lines: list[str]) -> None:
        self.writing.set()
        self.release.wait(30)
        super().write(lines)


async def test_a_writer_stuck_in_a_request_at_shutdown_still_ends_with_the_closed_line_and_its_counts():
    logger = RecordingLogger()
    destination = StuckDestination()
    sink = writer(destination, logger, shutdown_timeout=0.3)
    for number in range(30):
        sink.put(f"m f={number}i 1")
    await until(destination.writing.is_set)

    await sink.close(timeout=30)
    destination.release.set()
    await asyncio.to_thread(sink._thread.join, 5)

    closed = [fields for _, event, fields in logger.records if event == "measurements closed"]
    assert "measurements: writer still busy after shutdown bound; unwritten points are lost" in logger.events()
    assert len(closed) == 1, "one closed line, not a second one when the thread ends"
    assert closed[0]["dropped_at_close"] == 30 and closed[0]["written"] == 0 and closed[0]["dropped"] == 30


async def test_points_put_after_close_are_counted_not_kept():
    destination = FlakyDestination()
    sink = writer(destination)
    await sink.close(timeout=1)

    sink.put("m f=1i 1")

    assert sink.counts["dropped_at_close"] == 1 and destination.lines == []


def test_the_buffer_full_warning_counts_only_points_dropped_to_make_room():
    # Points put after close are counted in the closing line; calling them "buffer full" would mislead.
    logger = RecordingLogger()
    report = WriterReport(logger, "InfluxDB", max_buffered=50)
    counts = {"written": 0, "dropped_full": 0, "dropped_rejected": 0, "dropped_at_close": 7}

    report.now_and_then(counts, buffered=0)
    assert not [e for e in logger.events() if "buffer full" in e]

    report.now_and_then({**counts, "dropped_full": 3}, buffered=50)
    warnings = [fields for _, event, fields in logger.records if "buffer full" in event]
    assert warnings == [{"dropped": 3, "dropped_total": 3, "buffered": 50, "max_buffered": 50}]


def test_a_refusal_held_back_is_logged_once_its_wait_is_over_or_a_new_refusal_comes(monkeypatch):
    monkeypatch.setattr(report_module, "_REPORT_EVERY", 0.2)
    logger = RecordingLogger()
    report = WriterReport(logger, "InfluxDB", max_buffered=50)
    counts = {"written": 0, "dropped_full": 0, "dropped_rejected": 0, "dropped_at_close": 0}

    def refusals() -> list[tuple[str, int, int]]:
        return [(fields["error"], fields["dropped"], fields["batches"]) for _, event, fields in logger.records
                if event == "measurements: batch refused for good; its points are dropped"]

    report.rejected("HTTP 400", 10)
    report.rejected("HTTP 400", 20)  # held back
    report.now_and_then(counts, buffered=0)
    assert refusals() == [("HTTP 400", 10, 1)]
    time.sleep(0.25)
    report.now_and_then(counts, buffered=0)
    assert refusals() == [("HTTP 400", 10, 1), ("HTTP 400", 20, 1)]
    report.rejected("HTTP 400", 5)  # held back again
    report.rejected("HTTP 413", 7)  # another refusal: the held ones first, under their own error
    assert refusals()[2:] == [("HTTP 400", 5, 1), ("HTTP 413", 7, 1)]


def test_the_file_is_valid_for_influx_write(tmp_path: Path):
    """``influx write --file`` reads line protocol at precision ns, one point per line."""
    path = tmp_path / "m.lp"
    destination = FileDestination(path)

    destination.write([line_protocol("m", {"s": "a\nb"}, {"t": "x y"}, time_ns=T0_NS), "n f=1i 2"])

    assert path.read_text() == f'm,t=x\\ y s="a\\nb" {T0_NS}\nn f=1i 2\n'
