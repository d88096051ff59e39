"""Measurements against a real InfluxDB-write-compatible server (VictoriaMetrics, see influx_server.py).

VictoriaMetrics stores every field as a series ``<measurement>_<field>`` with
the point's tags as labels; string fields come back as 0, so they are checked
for presence only.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.server
import json
import re
import signal
import socket
import ssl
import threading
import time
import uuid
from typing import Any

import pytest
from conftest import ROOT, greeter_pb2, node_env
from credentials import make_pki
from influx_server import VictoriaMetrics
from test_measurements import RecordingLogger

from krt_runner import envelope
from krt_runner.envelope import KreNatsMessage
from krt_runner.errors import WriteError
from krt_runner.local_krt.embedded import free_port
from krt_runner.measurements import buffer as buffer_module
from krt_runner.measurements import writer as writer_module
from krt_runner.measurements.influx import InfluxDestination
from krt_runner.measurements.writer import BatchWriter

HANDLERS = ROOT / "tests" / "handlers"
GREETER = ROOT / "examples" / "greeter"
TOKEN = "krt-user:s3cret-password"  # 1.8 style; VictoriaMetrics accepts any
# VictoriaMetrics keeps milliseconds: points of one series are spaced by one.
MS = 1_000_000


def measured(server: VictoriaMetrics, **extra: str) -> dict[str, str]:
    """Node variables that send measurements to ``server`` quickly."""
    return {
        "KRT_MEASUREMENTS_ENABLED": "true",
        "KRT_INFLUX_URI": server.url,
        "KRT_INFLUX_TOKEN": TOKEN,
        "KRT_INFLUX_FLUSH_INTERVAL": "0.2",
        **extra,
    }


def fresh_request(name: str) -> bytes:
    """A request as a KRE v1 entrypoint sends it, stamped now so that waiting times are real."""
    request = KreNatsMessage(tracking_id=uuid.uuid4().hex)
    now = envelope.timestamp()
    request.tracking.add(node_name="entrypoint", start=now, end=now)
    request.payload.Pack(greeter_pb2.Request(name=name))
    return request.SerializeToString()


def log_events(node: Any, event: str) -> list[dict[str, Any]]:
    """The node's JSON log lines whose event is ``event``."""
    found = []
    for line in node.lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event:
            found.append(record)
    return found


def influx_writer(server_url: str, logger: Any, **options: Any) -> BatchWriter:
    destination = InfluxDestination(url=server_url, token=TOKEN, org="kre", bucket="kre", timeout=2.0)
    settings = {"batch_size": 10, "flush_interval": 0.1, "max_buffered": 100, "shutdown_timeout": 5.0,
                "retry_waits": (0.05, 0.2), **options}
    return BatchWriter(destination, logger=logger, **settings)


async def wait_until(predicate: Any, timeout: float = 10.0, explain: Any = lambda: "") -> None:
    """Poll ``predicate`` until it holds; past ``timeout``, fail with what ``explain()`` returns."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"condition not met in {timeout}s\n{explain()}"
        await asyncio.sleep(0.05)


# -- through a running node ----------------------------------------------------------------------


async def test_user_points_arrive_with_their_tags_and_the_version_tag(
    nats_server, start_node, requester, influx_server
):
    start_node(**node_env(nats_server, GREETER, "src/greet.py", input="greet-in",
                          **measured(influx_server, KRT_INFLUX_BUCKET="kre/autogen")))

    for name in ("Ada", "Grace"):
        assert (await requester.greet("greet-in", name)).error == ""

    assert sorted(influx_server.wait_for_samples("greetings_name_length", 2)) == [3, 5]
    (series,) = influx_server.export('{__name__="greetings_name_length"}')
    assert series.labels == {"node": "greet", "version": "v1"}


async def test_a_three_node_chain_records_node_and_workflow_elapsed_time(
    nats_server, start_node, requester, influx_server
):
    for name, subject_in, subject_out in [("a", "s1", "s2"), ("b", "s2", "s3"), ("c", "s3", "")]:
        start_node(**node_env(nats_server, HANDLERS, "behaviours.py", input=subject_in, output=subject_out,
                              name=name, **measured(influx_server)))
    started = time.monotonic()

    for number in range(3):
        assert (await requester.request_raw("s1", fresh_request(f"r{number}"))).error == ""
    took_ms = (time.monotonic() - started) * 1000

    tags = {"workflow": "test-workflow", "version": "v1"}
    for node in ("a", "b", "c"):
        elapsed = influx_server.wait_for_samples("node_elapsed_time_elapsed_ms", 3, node=node, **tags)
        waiting = influx_server.samples("node_elapsed_time_waiting_ms", node=node, **tags)
        assert len(elapsed) == 3 and all(0 < value < took_ms for value in elapsed), elapsed
        assert len(waiting) == 3 and all(-1 < value < took_ms for value in waiting), waiting
    workflow = influx_server.wait_for_samples("workflow_elapsed_time_elapsed_ms", 3, **tags)
    assert len(workflow) == 3 and all(0 < value < took_ms for value in workflow), workflow  # the last node only
    (series,) = influx_server.export('{__name__="workflow_elapsed_time_elapsed_ms"}')
    assert series.labels == tags
    names = influx_server.names()
    for string_field in ("node_elapsed_time_tracking_id", "node_elapsed_time_node_from",
                         "workflow_elapsed_time_tracking_id"):
        assert string_field in names
    assert not [name for name in names if name.endswith("_error")], names  # nothing failed: no error field


async def test_a_failed_message_is_recorded_with_an_error_field(nats_server, start_node, requester, influx_server):
    start_node(**node_env(nats_server, HANDLERS, "behaviours.py", input="in", **measured(influx_server)))

    assert (await requester.request_raw("in", fresh_request("fine"))).error == ""
    assert "boom requested" in (await requester.request_raw("in", fresh_request("boom"))).error

    influx_server.wait_for_samples("node_elapsed_time_elapsed_ms", 2)
    # The store keeps a string field as a sample of value 0: one error sample, for the one that failed.
    assert influx_server.wait_for_samples("node_elapsed_time_error", 1, node="behaviours") == [0]
    assert influx_server.wait_for_samples("workflow_elapsed_time_error", 1) == [0]


async def test_a_bad_point_fails_its_request_and_spoils_no_batch(
    nats_server, start_node, requester, influx_server, handler_dir
):
    base = handler_dir("""
        from greeter_pb2 import Request

        def handler(ctx, data):
            request = Request()
            data.Unpack(request)
            if request.name == "bad":
                ctx.measurement.save("scores", {"value": {"not": "a number"}})
            ctx.measurement.save("scores", {"value": 1.5}, {"model": "m1"})
            return request
    """)
    start_node(**node_env(nats_server, base, "src/node.py", input="in", **measured(influx_server)))

    answers = [await requester.greet("in", name) for name in ("good", "bad", "good")]

    assert [answer.error == "" for answer in answers] == [True, False, True]
    assert "field 'value' has type dict" in answers[1].error
    assert influx_server.wait_for_samples("scores_value", 2, model="m1", version="v1") == [1.5, 1.5]


async def test_with_the_server_down_requests_are_answered_and_points_after_its_return_arrive(
    nats_server, start_node, requester, influx_server
):
    cap = 40
    node = start_node(**node_env(nats_server, HANDLERS, "behaviours.py", input="in", **measured(
        influx_server, KRT_INFLUX_MAX_BUFFERED_POINTS=str(cap), KRT_INFLUX_BATCH_SIZE="10")))
    assert (await requester.request_raw("in", fresh_request("before"))).error == ""
    influx_server.wait_for_samples("node_elapsed_time_elapsed_ms", 1)

    influx_server.stop()
    answers = [await requester.request_raw("in", fresh_request(f"down{n}"), timeout=5) for n in range(150)]
    node.wait_for_line("measurements: buffer full, oldest points dropped", timeout=10)
    influx_server.start()
    back_ms = int(time.time() * 1000)  # whole ms, as the server stores stamps: a point made in this ms counts
    for number in range(5):
        assert (await requester.request_raw("in", fresh_request(f"after{number}"))).error == ""

    assert [answer.error for answer in answers] == [""] * 150  # every request answered while it was down
    await wait_until(lambda: len(points_since(influx_server, back_ms)) >= 5, timeout=20,
                     explain=lambda: f"points since its return: {points_since(influx_server, back_ms)}\n"
                                     f"node:\n{node.output[-6000:]}\nserver:\n{influx_server.log_text()[-2000:]}")
    node.signal(signal.SIGTERM)
    assert node.wait() == 0
    (closed,) = log_events(node, "measurements closed")
    assert closed["written"] + closed["dropped"] == 2 * (1 + 150 + 5)  # every point accounted for
    assert closed["dropped"] >= 2 * 150 - cap - 10  # at most the cap (and a batch) was kept through the outage
    (failed,) = log_events(node, "measurements: write failed; points are kept and retried")
    assert (failed["node"], failed["workflow"], failed["version"]) == ("behaviours", "test-workflow", "v1")
    drops = log_events(node, "measurements: buffer full, oldest points dropped")
    assert 1 <= len(drops) <= 3 and all(record["buffered"] <= cap for record in drops)  # rate-limited
    assert "s3cret" not in node.output


def points_since(server: VictoriaMetrics, since_ms: float) -> list[int]:
    return [
        stamp
        for series in server.export('{__name__="node_elapsed_time_elapsed_ms"}')
        for stamp in series.timestamps
        if stamp >= since_ms
    ]


async def test_sigterm_flushes_the_points_still_buffered(nats_server, start_node, requester, influx_server):
    node = start_node(**node_env(nats_server, HANDLERS, "behaviours.py", input="in",
                                 **measured(influx_server, KRT_INFLUX_FLUSH_INTERVAL="600")))
    for number in range(5):
        assert (await requester.request_raw("in", fresh_request(f"r{number}"))).error == ""
    assert influx_server.samples("node_elapsed_time_elapsed_ms") == []  # nothing written yet

    node.signal(signal.SIGTERM)

    assert node.wait() == 0
    assert len(influx_server.wait_for_samples("node_elapsed_time_elapsed_ms", 5)) == 5
    assert len(influx_server.samples("workflow_elapsed_time_elapsed_ms")) == 5
    (closed,) = log_events(node, "measurements closed")
    assert (closed["written"], closed["dropped"]) == (10, 0)
    assert (closed["node"], closed["workflow"], closed["version"]) == ("behaviours", "test-workflow", "v1")
    assert log_events(node, "handler module loaded")[0]["node"] == "behaviours"


async def test_without_influx_uri_points_go_to_a_file_that_imports_into_influxdb(
    nats_server, start_node, requester, influx_server, tmp_path
):
    path = tmp_path / "points.lp"
    node = start_node(**node_env(nats_server, GREETER, "src/greet.py", input="greet-in",
                                 KRT_MEASUREMENTS_ENABLED="true", KRT_MEASUREMENTS_FILE=str(path)))
    assert log_events(node, "measurements go to a line-protocol file")[0]["path"] == str(path)
    for name in ("Ada", "Grace", "Alan"):
        assert (await requester.greet("greet-in", name)).error == ""
    node.signal(signal.SIGTERM)
    assert node.wait() == 0

    influx_server.write(path.read_bytes())  # what `influx write --file points.lp` sends

    assert len(path.read_text().splitlines()) == 9
    assert sorted(influx_server.wait_for_samples("greetings_name_length", 3)) == [3, 4, 5]
    assert len(influx_server.wait_for_samples("node_elapsed_time_elapsed_ms", 3, node="greet")) == 3
    assert len(influx_server.wait_for_samples("workflow_elapsed_time_elapsed_ms", 3)) == 3


async def test_elapsed_ms_ends_at_each_answer_when_messages_share_a_pass_of_the_event_loop(
    nats_server, start_node, requester, tmp_path
):
    path = tmp_path / "points.lp"
    node = start_node(**node_env(nats_server, HANDLERS, "behaviours.py", input="in",
                                 KRT_MEASUREMENTS_ENABLED="true", KRT_MEASUREMENTS_FILE=str(path)))

    answers = await asyncio.gather(*(requester.request_raw("in", fresh_request("spin:0.05")) for _ in range(4)))
    node.signal(signal.SIGTERM)
    assert node.wait() == 0

    assert [answer.error for answer in answers] == [""] * 4
    # Points are made once the pass has answered all its messages; each one's time still ends at its own answer.
    elapsed = [float(re.search(r"elapsed_ms=([0-9.]+)", line)[1])  # type: ignore[index]
               for line in path.read_text().splitlines() if line.startswith("node_elapsed_time")]
    assert len(elapsed) == 4 and all(50 <= value < 100 for value in elapsed), elapsed


# -- the InfluxDB writer in-process ---------------------------------------------------------------


async def test_memory_stays_under_the_cap_while_the_server_is_down_and_writing_resumes(influx_server):
    logger = RecordingLogger()
    sink = influx_writer(influx_server.url, logger, max_buffered=100)
    sink.put("probe f=1i 1")
    await wait_until(lambda: sink.counts["written"] == 1)

    influx_server.stop()
    sizes = []
    start_ns = time.time_ns()
    for number in range(2000):
        sink.put(f"outage f={number}i {start_ns + number * MS}")
        sizes.append(sink.buffered)
    influx_server.start()
    await wait_until(lambda: sink.buffered == 0, timeout=15)
    await sink.close(timeout=5)

    assert max(sizes) <= 100
    assert sink.counts["dropped_full"] >= 2000 - 100
    assert sink.counts["written"] + sink.dropped == 2001
    assert len(influx_server.wait_for_samples("outage_f", sink.counts["written"] - 1)) == sink.counts["written"] - 1


async def test_close_writes_everything_and_leaves_no_thread_behind(influx_server):
    before = set(threading.enumerate())
    sink = influx_writer(influx_server.url, RecordingLogger(), flush_interval=60)

    start_ns = time.time_ns()
    for number in range(25):
        sink.put(f"closing f={number}i {start_ns + number * MS}")
    await sink.close(timeout=5)

    assert set(threading.enumerate()) == before
    assert len(influx_server.wait_for_samples("closing_f", 25)) == 25


async def test_a_batch_the_server_refuses_is_dropped_and_counted_not_retried(influx_server):
    logger = RecordingLogger()
    sink = influx_writer(f"{influx_server.url}/no-such-prefix", logger)  # VictoriaMetrics answers 400

    for number in range(15):
        sink.put(f"refused f={number}i 1")
    await sink.close(timeout=5)

    assert sink.counts["dropped_rejected"] == 15 and sink.counts["written"] == 0
    refusals = [fields for level, event, fields in logger.records if event.startswith("measurements: batch refused")]
    # one line for the first batch of ten, not one per point; the same refusal again is said within 10 s no more
    assert len(refusals) == 1 and "HTTP 400" in refusals[0]["error"] and refusals[0]["dropped"] == 10


class ClosingListener:
    """A loopback TCP server that ends every connection at once, or with ``tls`` after its TLS handshake's first
    message (a certificate its client does not trust): a store restarting behind a proxy, or one misconfigured."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self._socket.getsockname()[1]}"
        self._tls = tls
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            with contextlib.suppress(OSError), connection:
                if self._tls is not None:
                    self._tls.wrap_socket(connection, server_side=True).close()

    def close(self) -> None:
        self._socket.close()
        self._thread.join(timeout=5)


@pytest.mark.parametrize("store", ["closes", "untrusted"])
def test_a_store_that_ends_the_tls_handshake_is_retried_not_refused_for_good(tmp_path, store):
    tls = None
    if store == "untrusted":
        pki = make_pki(tmp_path)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(pki.server_cert, pki.server_key)
    listener = ClosingListener(tls)
    destination = InfluxDestination(url=listener.url, token=TOKEN, org="kre", bucket="kre", timeout=2.0)
    try:
        with pytest.raises(WriteError) as failed:
            destination.write(["m f=1i 1"])
    finally:
        destination.close()
        listener.close()

    assert failed.value.retry, str(failed.value)
    if store == "untrusted":
        assert "CERTIFICATE_VERIFY_FAILED" in str(failed.value) and "SSL_CERT_FILE" in str(failed.value)


def test_a_timeout_under_a_millisecond_is_one_millisecond_not_none():
    destination = InfluxDestination(url="http://127.0.0.1:1", token="", org="kre", bucket="kre", timeout=0.0004)

    assert destination._client.api_client.configuration.timeout == 1  # influxdb-client reads 0 as no timeout
    destination.close()


async def test_the_token_never_reaches_the_logs():
    logger = RecordingLogger()
    sink = influx_writer(f"http://127.0.0.1:{free_port()}", logger)  # nothing listens there

    sink.put("m f=1i 1")
    await wait_until(lambda: logger.events("error"))
    await sink.close(timeout=0.5)

    assert "s3cret" not in logger.text()
    assert "Connection refused" in logger.text() or "NewConnectionError" in logger.text()


class RecordingStore:
    """An HTTP server on a free loopback port that records each write's headers and answers with the next of
    ``answers`` (status, headers, and a body if given), then 204: to see what reaches a store, and how the writer
    takes a refusal."""

    def __init__(self, answers: list[tuple[Any, ...]] = ()) -> None:
        self.requests: list[tuple[float, dict[str, str], bytes]] = []
        answers, requests = list(answers), self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                requests.append((time.monotonic(), dict(self.headers), body))
                status, headers, *body = answers.pop(0) if answers else (204, {})
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(b"".join(body)))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(b"".join(body))

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> RecordingStore:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


async def test_influx_1_8_credentials_in_the_uri_are_sent_as_its_token_not_in_the_url():
    with RecordingStore() as store:
        url = store.url.replace("http://", "http://krt-user:p%40ss%2Fword@")
        destination = InfluxDestination(url=url, token="", org="kre", bucket="kre", timeout=2.0)
        sink = BatchWriter(destination, logger=RecordingLogger(), batch_size=10, flush_interval=0.1, max_buffered=100,
                           shutdown_timeout=5.0)
        sink.put("m f=1i 1")
        await sink.close(timeout=5)

    assert sink.counts["written"] == 1
    ((_, headers, _),) = store.requests
    assert headers["Authorization"] == "Token krt-user:p@ss/word"


async def test_users_large_points_go_in_batches_of_bounded_text_each_written_once(monkeypatch):
    monkeypatch.setattr(writer_module, "MAX_BATCH_TEXT", 1000)
    monkeypatch.setattr(buffer_module, "MAX_BATCH_TEXT", 1000)
    with RecordingStore([(204, {}), (503, {})]) as store:  # the second batch is asked again
        destination = InfluxDestination(url=store.url, token="", org="kre", bucket="kre", timeout=2.0)
        sink = BatchWriter(destination, logger=RecordingLogger(), batch_size=10, flush_interval=0.1, max_buffered=100,
                           shutdown_timeout=5.0, retry_waits=(0.05, 0.1))
        for number in range(10):
            sink.put(f"m s=\"{'x' * 300}\",n={number}i 1")  # 10 lines of about 320 characters
        await sink.close(timeout=5)

    assert sink.counts["written"] == 10 and sink.dropped == 0
    sizes = [len(body.splitlines()) for _, _, body in store.requests]
    assert sizes[1] == sizes[2] and sum(sizes) - sizes[1] == 10  # each line once, the refused batch once again
    assert max(len(body) for _, _, body in store.requests) < 1400


async def test_a_store_that_asks_to_retry_after_some_seconds_is_left_alone_that_long():
    with RecordingStore([(429, {"Retry-After": "1"}), (503, {"Retry-After": "1"})]) as store:
        logger = RecordingLogger()
        sink = influx_writer(store.url, logger)  # its own backoff: 0.05 to 0.2 s
        sink.put("m f=1i 1")
        await wait_until(lambda: len(store.requests) == 3, timeout=15)
        await sink.close(timeout=5)

    assert sink.counts["written"] == 1
    first, second, third = (at for at, _, _ in store.requests)
    assert second - first >= 0.95 and third - second >= 0.95


@pytest.mark.parametrize("body", [b"\xff\xfe\x00 a binary error page", gzip.compress(b"Bad Gateway")],
                         ids=["binary", "gzip"])
async def test_a_server_error_whose_body_is_not_utf8_is_retried_not_refused_for_good(body):
    with RecordingStore([(500, {}, body), (502, {}, body)]) as store:
        logger = RecordingLogger()
        sink = influx_writer(store.url, logger)
        sink.put("m f=1i 1")
        await wait_until(lambda: len(store.requests) == 3, timeout=15)
        await sink.close(timeout=5)

    assert sink.counts["written"] == 1 and sink.dropped == 0
    assert "a body that is not UTF-8" in logger.text()
