"""One frame, one envelope, one setting or one closed pipe must never leave a node alive but out of service.

Every test runs a real nats-server and a real ``krt-runner run``; frames that nats-py refuses to send go over a
plain socket.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import multiprocessing
import os
import pty
import select
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid

import nats
import pytest
from conftest import KRT_RUNNER, ROOT, NodeProcess, Requester, greeter_pb2, node_env, request_envelope, unpack
from raw_nats import RawClient

from krt_runner.config import redact_url
from krt_runner.envelope import KreNatsMessage
from krt_runner.local_krt.embedded import EmbeddedNats
from krt_runner.log_stream import MAX_QUEUED, NeverBlockingStream

HANDLERS = ROOT / "tests" / "handlers"


def summary(node: NodeProcess) -> dict:
    node.signal()
    assert node.wait() == 0, node.output
    return next(json.loads(line) for line in node.lines if '"stopped"' in line)


async def all_answered(requester: Requester, subject: str, count: int) -> list[str]:
    answers = await asyncio.gather(*(requester.greet(subject, f"r{i}", timeout=5) for i in range(count)))
    return [unpack(answer, greeter_pb2.Request).name for answer in answers]


def behaviours(server: EmbeddedNats, subject: str, **extra: str) -> dict:
    return node_env(server, HANDLERS, "behaviours.py", input=subject, name="n", **extra)


# -- 1. frames that nats-py cannot decode ----------------------------------------------------------


def hpub(subject: bytes, reply: bytes, headers: bytes, payload: bytes) -> bytes:
    sizes = b"%d %d" % (len(headers), len(headers) + len(payload))
    return b"HPUB %s %s %s\r\n%s%s\r\n" % (subject, reply, sizes, headers, payload)


BAD_FRAMES = {
    "reply subject not UTF-8": b"PUB bad-in _INBOX.\xff\xfe 5\r\nhello\r\n",
    "header status line not UTF-8": hpub(b"bad-in", b"_INBOX.x", b"NATS/1.0 \xff\xfe\r\n\r\n", b"hello"),
}


@pytest.mark.parametrize("frame", BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
async def test_a_frame_nats_py_cannot_decode_costs_that_message_alone(nats_server, start_node, requester, frame):
    node = start_node(**behaviours(nats_server, "bad-in"))

    with RawClient(nats_server.url) as raw:
        raw.send(frame)
    names = await all_answered(requester, "bad-in", 20)

    assert names == [f"r{i}>n" for i in range(20)]
    assert summary(node)["bad_frames"] == 1


async def test_a_read_loop_that_fails_reconnects_instead_of_going_deaf(nats_server):
    from krt_runner.config import load_settings
    from krt_runner.logging import node_logger
    from krt_runner.node.broker import Broker

    settings = load_settings(env={"KRT_NATS_SERVER": nats_server.url, "KRT_NATS_INPUT": "in", "KRT_HANDLER_PATH": "x",
                                  "KRT_NATS_RECONNECT_WAIT": "0.1", "KRT_LOG_LEVEL": "error"})
    broker = Broker(settings, node_logger(node="n", workflow="w", version="v"))
    await broker.connect()
    got: list[bytes] = []

    async def take(msg):
        got.append(msg.data)

    def decline(*frame):  # every message nats-py's way, to ``take``
        return False

    await broker.subscribe("in", queue="q", direct=decline, callback=take, pending_limits=(1000, 1 << 20))
    parser = broker.client._ps
    original = parser.parse

    async def fail_once(data=b""):
        parser.parse = original
        raise RuntimeError("a bug in the parser")

    parser.parse = fail_once
    async with await nats.connect(nats_server.url) as other:
        await other.publish("in", b"lost to the bug")
        await other.flush()
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            await other.publish("in", b"after")
            await other.flush()
            await asyncio.sleep(0.2)
    await broker.close()

    assert b"after" in got


# -- 2. an envelope reply the server would refuse, a connection closed outside shutdown -------------


async def test_an_envelope_reply_too_long_to_publish_to_is_refused_and_the_node_stays_connected(
    nats_server, start_node, requester
):
    node = start_node(**behaviours(nats_server, "long-in"))
    envelope = request_envelope(greeter_pb2.Request(name="long"))
    envelope.reply = "_INBOX." + "a" * 5000

    await requester.nc.publish("long-in", envelope.SerializeToString())
    names = await all_answered(requester, "long-in", 20)

    assert names == [f"r{i}>n" for i in range(20)]
    assert "reply subject" in node.output and "5007 characters" in node.output
    assert summary(node)["dropped"] == 1


async def test_a_connection_the_server_closes_for_good_ends_the_node_with_exit_1(tmp_path, start_node):
    config = tmp_path / "small-lines.conf"
    config.write_text("max_control_line: 256\n")
    with EmbeddedNats(extra_args=["-c", str(config)]) as server:
        node = start_node(**behaviours(server, "close-in", KRT_NATS_OUTPUT="o" * 300))
        async with await nats.connect(server.url) as requester:
            await requester.publish("close-in", request_envelope(greeter_pb2.Request(name="x")).SerializeToString())
            await requester.flush()

        assert node.wait(timeout=20) == 1
    assert "NATS connection closed" in node.output


# -- 3. a closed log pipe -------------------------------------------------------------------------


def node_with_its_log_on_a_pipe(server: EmbeddedNats, subject: str, concurrency: str, cwd) -> subprocess.Popen:
    """A node whose log is a pipe this test holds, read up to "node ready"."""
    env = {**behaviours(server, subject, KRT_CONCURRENCY=concurrency), "KRT_LOG_FORMAT": "json",
           "KRT_MEASUREMENTS_ENABLED": "false", "PATH": "/usr/bin:/bin"}
    process = subprocess.Popen([*KRT_RUNNER, "run"], env=env, cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    assert process.stdout is not None
    while b'"node ready"' not in process.stdout.readline():
        assert process.poll() is None
    return process


@pytest.mark.parametrize("concurrency", ["1", "4"])
async def test_a_closed_log_pipe_loses_no_request(nats_server, requester, tmp_path, concurrency):
    process = node_with_its_log_on_a_pipe(nats_server, "pipe-in", concurrency, tmp_path)
    try:
        assert process.stdout is not None
        process.stdout.close()  # the log's reader goes away

        answers = await asyncio.gather(*(requester.greet("pipe-in", name, timeout=5)
                                         for name in ["boom:1", "ok1", "boom:2", "ok2", "ok3"] * 2))

        assert [answer.error != "" for answer in answers] == [True, False, True, False, False] * 2
        assert process.poll() is None
    finally:
        process.kill()
        process.wait()


async def test_a_node_started_with_its_log_stream_closed_serves(nats_server, requester, tmp_path):
    # 2>&- : Python has no sys.stderr at all; the node exited 1 at its first log line, saying nothing
    env = {key: value for key, value in os.environ.items() if not key.startswith("KRT_")}
    env.update(node_env(nats_server, HANDLERS, "hostile.py", input="closed-in", name="n"))
    command = " ".join(shlex.quote(part) for part in [*KRT_RUNNER, "run"])
    process = subprocess.Popen(["sh", "-c", f"exec {command} 2>&-"], env=env, cwd=tmp_path,
                               stdout=subprocess.DEVNULL)
    try:
        answer = await until_answered(requester, "closed-in", process)

        assert answer.error == "" and process.poll() is None
    finally:
        process.kill()
        process.wait()


async def until_answered(requester: Requester, subject: str, process: subprocess.Popen) -> KreNatsMessage:
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, f"the node exited with {process.returncode}"
        try:
            return await requester.greet(subject, "ok", timeout=1)
        except Exception:  # not subscribed yet
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)


# -- 4. error answers of any size -------------------------------------------------------------------


def with_tracking(name: str, entries: int) -> bytes:
    envelope = request_envelope(greeter_pb2.Request(name=name))
    for index in range(entries):
        envelope.tracking.add(node_name=f"node-{index}", start="2026-01-02T03:04:05.000001",
                              end="2026-01-02T03:04:05.000002")
    return gzip.compress(envelope.SerializeToString())


@pytest.mark.parametrize(("name", "entries"), [("boom", 100_000), ("oversized:3000000", 30_000)])
async def test_every_request_gets_its_error_answer_however_much_tracking_it_carries(
    nats_server, start_node, requester, name, entries
):
    start_node(**node_env(nats_server, HANDLERS, "hostile.py", input="big-in", name="n"))

    answer = await requester.request_raw("big-in", with_tracking(name, entries), timeout=20)

    assert answer.error.startswith("error in node 'n'")


def test_an_error_answer_too_large_even_compressed_goes_without_its_tracking():
    from krt_runner.node.answers import Answers
    from krt_runner.node.job import Job

    class Broker:
        max_payload = 4096

    job = Job("_INBOX.r")
    job.request = KreNatsMessage(tracking_id="t")
    for _ in range(1000):
        job.request.tracking.add(node_name=uuid.uuid4().hex, start=uuid.uuid4().hex, end=uuid.uuid4().hex)
    job.hops = 1000

    answer = KreNatsMessage.FromString(Answers(node_name="n", output_subject="", broker=Broker()).for_error(job, "e"))

    assert answer.error == "e" and answer.tracking_id == "t" and len(answer.tracking) == 0


# -- 5 and 6. answers that would come back to the node itself -----------------------------------------


@pytest.mark.parametrize(("subject", "reply"), [("loop-in", "loop-in"), ("loop.>", "loop.back")])
async def test_an_envelope_reply_the_node_listens_on_is_refused_and_does_not_loop(
    nats_server, start_node, requester, subject, reply
):
    node = start_node(**behaviours(nats_server, subject))
    seen: list[bytes] = []

    async def count(msg) -> None:
        seen.append(msg.data)

    await requester.nc.subscribe(reply, cb=count)
    envelope = request_envelope(greeter_pb2.Request(name="loop"))
    envelope.reply = reply

    await requester.nc.publish(reply, envelope.SerializeToString())
    await asyncio.sleep(1.5)

    assert len(seen) == 1  # the request itself, and nothing the node sent back
    assert "refused" in node.output
    assert summary(node)["dropped"] == 1


def test_an_output_the_wildcard_input_matches_is_refused_at_start(tmp_path):
    env = {"KRT_NATS_SERVER": "nats://127.0.0.1:1", "KRT_NATS_INPUT": "ov.>", "KRT_NATS_OUTPUT": "ov.b",
           "KRT_HANDLER_PATH": "node.py", "PATH": "/usr/bin:/bin"}

    done = subprocess.run([*KRT_RUNNER, "run"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)

    assert done.returncode == 2
    assert "KRT_NATS_OUTPUT 'ov.b' is matched by KRT_NATS_INPUT 'ov.>'" in done.stderr


# -- 7. passwords with reserved characters -----------------------------------------------------------


@pytest.mark.parametrize("secret", ["pa/ss", "pa#ss", "pa?ss", "pa@ss", "pa:ss", "p/a#s?s@w:d"])
def test_a_password_with_reserved_characters_is_redacted(secret):
    assert secret not in redact_url(f"nats://user:{secret}@host:4222")
    assert redact_url(f"nats://user:{secret}@host:4222") == "nats://user:***@host:4222"


@pytest.mark.parametrize("variable", ["KRT_NATS_SERVER", "KRT_INFLUX_URI"])
def test_a_password_with_a_slash_never_reaches_the_output(tmp_path, variable):
    scheme = "nats" if variable == "KRT_NATS_SERVER" else "http"
    env = {"KRT_NATS_SERVER": "nats://127.0.0.1:1", "KRT_NATS_INPUT": "in", "KRT_HANDLER_PATH": "node.py",
           variable: f"{scheme}://user:se/cr#et?@127.0.0.1:1", "PATH": "/usr/bin:/bin"}

    done = subprocess.run([*KRT_RUNNER, "run"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)

    assert done.returncode == 2
    assert "se/cr" not in done.stdout + done.stderr and variable in done.stderr


# -- 8. a subscription the server does not allow -----------------------------------------------------


def test_a_node_that_may_not_subscribe_to_its_input_exits_2_naming_it(tmp_path, start_node):
    config = tmp_path / "users.conf"
    config.write_text('authorization { users = [ {user: "node", password: "pw", '
                      'permissions: {subscribe: {deny: ["secret-in"]}}} ] }\n')
    with EmbeddedNats(extra_args=["-c", str(config)]) as server:
        env = behaviours(server, "secret-in", KRT_NATS_USER="node", KRT_NATS_PASSWORD="pw")
        node = start_node(wait=False, **env)

        assert node.wait(timeout=20) == 2, node.output
    assert "secret-in" in node.output and "permission to subscribe" in node.output


def test_a_subscription_revoked_while_the_node_serves_stops_it_with_exit_1(tmp_path, start_node):
    config = tmp_path / "users.conf"
    user = '{user: "node", password: "pw"%s}'
    config.write_text(f"authorization {{ users = [ {user % ''} ] }}\n")
    with EmbeddedNats(extra_args=["-c", str(config)]) as server:
        node = start_node(**behaviours(server, "revoked-in", KRT_NATS_USER="node", KRT_NATS_PASSWORD="pw"))
        denied = user % ', permissions: {subscribe: {deny: ["revoked-in"]}}'
        config.write_text(f"authorization {{ users = [ {denied} ] }}\n")

        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)  # nats-server reloads its configuration

        assert node.wait(timeout=20) == 1
    assert "NATS revoked this node's subscription" in node.output


async def test_a_middle_node_that_may_not_publish_to_its_output_answers_with_an_error_and_counts_what_was_lost(
    tmp_path, start_node
):
    config = tmp_path / "users.conf"
    config.write_text('authorization { users = [ {user: "node", password: "pw", permissions: {publish: '
                      '{allow: ["_INBOX.>"]}}}, {user: "client", password: "pw"} ] }\n')
    with EmbeddedNats(extra_args=["-c", str(config)]) as server:
        env = behaviours(server, "perm-in", output="perm-out", KRT_NATS_USER="node", KRT_NATS_PASSWORD="pw")
        node = start_node(**env)
        nc = await nats.connect(server.url, user="client", password="pw")
        requester = Requester(nc)
        with pytest.raises(nats.errors.TimeoutError):  # handed to NATS before its refusal came back: lost
            await requester.greet("perm-in", "first", timeout=1)

        answers = [await requester.greet("perm-in", f"then-{i}", timeout=5) for i in range(3)]
        await nc.close()
        stopped = summary(node)

    for answer in answers:
        assert "NATS refuses this node's publishes to its output subject 'perm-out'" in answer.error, answer.error
        assert "permissions violation for publish" in answer.error.lower()
    assert stopped["refused_publishes"] == 1 and stopped["errors"] == 3
    assert node.output.count("NATS refuses this node's publishes to its output subject:") == 1


# -- 9 and 10. a sub-second drain, SIGHUP ------------------------------------------------------------


async def test_a_sub_second_drain_timeout_stops_in_time_and_writes_only_json(nats_server, start_node, requester):
    node = start_node(**behaviours(nats_server, "quick-in", KRT_DRAIN_TIMEOUT="0.5"))
    pending = [asyncio.ensure_future(requester.greet("quick-in", "sleep:0.3", timeout=5)) for _ in range(5)]
    await asyncio.sleep(0.1)

    started = time.monotonic()
    node.signal()
    code = node.wait(timeout=20)

    assert code == 0 and time.monotonic() - started < 4
    assert len(await asyncio.gather(*pending)) == 5  # each answered, by its handler or with the drain's error
    assert all(line.startswith("{") for line in node.lines if line), node.output


async def test_sighup_drains_like_sigterm(nats_server, start_node, requester):
    node = start_node(**behaviours(nats_server, "hup-in"))
    pending = asyncio.ensure_future(requester.greet("hup-in", "sleep:0.5", timeout=5))
    await asyncio.sleep(0.2)

    node.signal(signal.SIGHUP)

    assert node.wait(timeout=20) == 0
    assert unpack(await pending, greeter_pb2.Request).name == "sleep:0.5>n"




@pytest.mark.parametrize("concurrency", ["1", "4"])
async def test_a_log_reader_that_stops_reading_holds_up_no_answer_and_no_stop(nats_server, requester, tmp_path,
                                                                              concurrency):
    process = node_with_its_log_on_a_pipe(nats_server, "stall-in", concurrency, tmp_path)
    try:
        # From here on nobody reads the log: its pipe (64 KiB) fills with the failures' lines and tracebacks.
        names = [f"boom:{index}" for index in range(300)] + ["ok"]
        answers = await asyncio.gather(*(requester.greet("stall-in", name, timeout=10) for name in names))

        assert sum(answer.error != "" for answer in answers) == 300
        assert unpack(answers[-1], greeter_pb2.Request).name == "ok>n"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 15) == 0
    finally:
        process.kill()
        process.wait()


def test_lines_dropped_on_a_stalled_log_are_counted_in_a_line_naming_the_node_and_when():
    read_end, write_end = os.pipe()
    out = open(write_end, "w")  # noqa: SIM115  # closed at the end, once the stream has written
    stream = NeverBlockingStream(out, identity=lambda: {"node": "n1", "workflow": "w"})
    line = "x" * 1000 + "\n"
    # The pipe's 64 KiB, up to 1 MB the writer thread took out to write, 1 MB waiting, then drops, whenever the
    # writer thread takes its lines.
    for _ in range(4 * MAX_QUEUED // len(line)):
        stream.write(line)
    with open(read_end, "rb") as reader:
        notice = None
        while notice is None:
            text = reader.readline()
            assert text, "the stream ended without saying how many lines it dropped"
            if text.startswith(b"{"):
                notice = json.loads(text)
        drain = threading.Thread(target=reader.read, daemon=True)  # the rest, to the end: no line left to write
        drain.start()
        stream.wait_written(5)
        out.close()
        drain.join(5)

    assert notice["event"] == "log lines dropped: the log stream did not keep up" and notice["dropped"] > 0
    assert (notice["node"], notice["workflow"], notice["level"]) == ("n1", "w", "warning")
    assert notice["timestamp"].endswith("Z") and notice["timestamp"][:4].isdigit()


def read_all_later(read_end: int, after: float) -> tuple[threading.Thread, list[bytes]]:
    """A reader that starts reading ``after`` seconds from now (a slow terminal, a log shipper catching up)."""
    chunks: list[bytes] = []

    def read() -> None:
        time.sleep(after)
        with open(read_end, "rb") as reader:
            chunks.extend(iter(lambda: reader.read(65536), b""))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, chunks


def test_one_line_longer_than_the_waiting_limit_is_written_whole_when_nothing_else_waits():
    read_end, write_end = os.pipe()
    reader, chunks = read_all_later(read_end, 0.2)
    out = open(write_end, "w")  # noqa: SIM115  # closed once written
    stream = NeverBlockingStream(out)
    stream.write("L" * (MAX_QUEUED + 100_000) + "\n")
    stream.wait_written(10)  # while it waits, lines after it count against the limit as usual
    stream.write("after\n")
    stream.wait_written(10)
    out.close()
    reader.join(10)

    assert b"".join(chunks) == b"L" * (MAX_QUEUED + 100_000) + b"\nafter\n"


def test_two_streams_on_one_pipe_nobody_reads_never_block_their_callers():
    # stdout's and stderr's streams on one pipe: both may see its last free room; only one may write into it
    read_end, write_end = os.pipe()
    outs = [open(os.dup(write_end), "w") for _ in range(2)]  # noqa: SIM115  # closed at the end
    streams = [NeverBlockingStream(out) for out in outs]
    line = "x" * 3000 + "\n"  # under PIPE_BUF, too large to share a page of the pipe with another

    def spam(stream: NeverBlockingStream) -> None:
        for _ in range(400):
            stream.write(line)

    for _ in range(10):
        callers = [threading.Thread(target=spam, args=(stream,), daemon=True) for stream in streams]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(10)
        assert not any(caller.is_alive() for caller in callers), "a caller blocked on the full pipe"
    os.close(read_end)  # the writer threads, blocked on the pipe, get EPIPE and drop the rest
    for stream, out in zip(streams, outs, strict=True):
        stream.wait_written(10)
        out.close()
    os.close(write_end)


def test_a_paused_terminal_never_blocks_the_code_that_logs():
    # select() calls a terminal writable with less room than a line; nobody reads this one (Ctrl-S, a stalled ssh)
    terminal, screen = pty.openpty()
    out = open(screen, "w")  # noqa: SIM115  # closed at the end
    stream = NeverBlockingStream(out)
    caller = threading.Thread(target=lambda: [stream.write("y" * 400 + "\n") for _ in range(2000)], daemon=True)
    caller.start()
    caller.join(10)

    assert not caller.is_alive(), "a caller blocked on the paused terminal"
    reader = threading.Thread(target=lambda: iter_until_quiet(terminal), daemon=True)
    reader.start()
    stream.wait_written(10)
    out.close()
    reader.join(10)
    os.close(terminal)


def test_on_a_terminal_the_lines_written_just_before_os_exit_are_out():
    terminal, screen = pty.openpty()
    script = ("import os, sys\nfrom krt_runner.log_stream import NeverBlockingStream\n"
              "out, err = NeverBlockingStream(sys.stdout), NeverBlockingStream(sys.stderr)\n"
              "for n in range(3):\n    out.write(f'print {n}\\n'); err.write(f'log {n}\\n')\nos._exit(3)\n")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=screen, stderr=screen)
    os.close(screen)
    shown = b""
    while select.select([terminal], [], [], 10)[0]:
        try:
            read = os.read(terminal, 65536)
        except OSError:  # the terminal's other end closed: all read
            break
        if not read:
            break
        shown += read
    os.close(terminal)

    assert child.wait(10) == 3
    assert shown.replace(b"\r\n", b"\n").decode().splitlines() == [f"{kind} {n}" for n in range(3)
                                                                     for kind in ("print", "log")]


def iter_until_quiet(descriptor: int) -> None:
    """Read a terminal until nothing comes for half a second."""
    while select.select([descriptor], [], [], 0.5)[0]:
        try:
            os.read(descriptor, 65536)
        except OSError:
            return


def test_a_forked_worker_writes_its_last_lines_before_it_ends():
    read_end, write_end = os.pipe()
    out = open(write_end, "w")  # noqa: SIM115  # closed once the worker is done
    stream = NeverBlockingStream(out)
    lines = [f"line {index:05d} " + "x" * 90 + "\n" for index in range(3000)]  # 300 KB: past the pipe's 64 KiB

    def worker() -> None:
        for line in lines:
            stream.write(line)

    reader, chunks = read_all_later(read_end, 0.5)  # the worker has ended with most of its lines waiting by then
    child = multiprocessing.get_context("fork").Process(target=worker)
    child.start()
    child.join(30)
    out.close()
    reader.join(10)

    assert child.exitcode == 0 and b"".join(chunks).decode() == "".join(lines)


def test_lines_of_two_processes_on_one_stalled_pipe_never_land_inside_each_other():
    read_end, write_end = os.pipe()
    out = open(write_end, "w")  # noqa: SIM115  # closed once both have written
    stream = NeverBlockingStream(out)

    def write(tag: str) -> None:
        for index in range(2000):  # 600 KB each: past the pipe's 64 KiB, under the 1 MB that may wait
            stream.write(f"{tag}{index:05d}{'x' * 290}\n")

    reader, chunks = read_all_later(read_end, 0.5)
    child = multiprocessing.get_context("fork").Process(target=write, args=("C",))
    child.start()
    write("P")
    child.join(30)
    stream.wait_written(10)
    out.close()
    reader.join(10)

    lines = b"".join(chunks).decode().splitlines()
    assert child.exitcode == 0 and len(lines) == 4000
    assert all(len(line) == 296 and line[0] in "CP" and line[6:] == "x" * 290 for line in lines)


async def test_a_megabyte_tracking_id_makes_no_megabyte_log_line(nats_server, start_node, requester):
    node = start_node(**behaviours(nats_server, "long-id-in"))
    request = request_envelope(greeter_pb2.Request(name="boom"))
    request.tracking_id = "x" * 1_000_000

    answer = await requester.request_raw("long-id-in", request.SerializeToString(), timeout=10)
    await asyncio.to_thread(node.wait_for_line, "boom requested")

    assert answer.error and answer.tracking_id == request.tracking_id  # the answer is the requester's to match
    longest = max(map(len, node.lines))
    assert longest < 30_000, f"a log line of {longest} characters"
    assert "... (1000000 characters)" in node.output
