"""Faults injected for real: a killed nats-server, SIGTERM under load, a burst far above a node's rate,
a CPU-bound handler. Each test states what it measured in its assertion messages (and prints it: -s).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
import pytest
import pytest_asyncio
from conftest import ROOT, NodeFactory, NodeProcess, greeter_pb2, node_env, request_envelope, unpack
from probes import AnswerLog, summary_line

from krt_runner.local_krt.embedded import EmbeddedNats

HANDLERS = ROOT / "tests" / "handlers"
# A server that PINGs every 200 ms and drops a client after 3 unanswered PINGs (~0.6 s of silence);
# debug logging names the stale connections it closes.
IMPATIENT_SERVER = 'ping_interval: "200ms"\nping_max: 2\ndebug: true\nlogfile: "{logfile}"\n'


def request(name: str) -> bytes:
    return request_envelope(greeter_pb2.Request(name=name)).SerializeToString()


async def connect_log(server: EmbeddedNats) -> AnswerLog:
    nc = await nats.connect(
        server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1, connect_timeout=1, error_cb=_ignore
    )
    return await AnswerLog(nc).start()


async def _ignore(error: Exception) -> None:
    """The requester's own reconnect errors while the server is down are expected."""


@pytest_asyncio.fixture
async def answer_logs() -> AsyncIterator[Callable[[EmbeddedNats], Awaitable[AnswerLog]]]:
    """Requesters on a given server; closed at the end of the test."""
    opened: list[AnswerLog] = []

    async def open_log(server: EmbeddedNats) -> AnswerLog:
        log = await connect_log(server)
        opened.append(log)
        return log

    yield open_log
    for log in opened:
        with contextlib.suppress(Exception):
            await log.nc.close()


async def send_steadily(log: AnswerLog, subject: str, *, name: str, per_second: float, stop: asyncio.Event) -> int:
    """Send requests at a steady rate until ``stop``; returns how many sends failed on the client."""
    failed = 0
    data = request(name)
    while not stop.is_set():
        try:
            await log.send(subject, data)
        except Exception:  # the requester's own connection may be down for a moment
            failed += 1
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1 / per_second)
    return failed


def node_exit(node: NodeProcess, timeout: float = 30) -> asyncio.Future[int]:
    """The node's exit code, awaited without blocking the event loop the requester runs on."""
    return asyncio.ensure_future(asyncio.to_thread(node.wait, timeout))


# -- nats-server killed and restarted ------------------------------------------------------------


async def test_node_survives_nats_server_sigkill_and_answers_again_soon_after_restart(
    nats_server: EmbeddedNats, start_node: NodeFactory, answer_logs
) -> None:
    node = start_node(**node_env(nats_server, HANDLERS, "behaviours.py", input="flow", KRT_CONCURRENCY="4"))
    log = await answer_logs(nats_server)
    stop = asyncio.Event()
    sender = asyncio.ensure_future(send_steadily(log, "flow", name="steady", per_second=50, stop=stop))

    await asyncio.sleep(1.0)
    answered_before_kill = log.answered
    nats_server.stop(kill=True)
    await asyncio.sleep(1.0)
    await asyncio.to_thread(nats_server.start)
    back = time.monotonic()
    while time.monotonic() - back < 15 and not any(log.count(r) for r in log.sent if log.sent[r] >= back):
        await asyncio.sleep(0.05)
    first_new = min((log.answers[r][0].at for r in log.sent if log.sent[r] >= back and log.count(r)), default=None)
    recovery = first_new - back if first_new is not None else float("inf")
    await asyncio.sleep(2.0)  # steady traffic after recovery
    stop.set()
    failed_sends = await sender
    steady_from = (first_new or back) + 1.0
    steady = [reply for reply, at in log.sent.items() if at >= steady_from]
    await log.wait_answered(steady, timeout=5)
    node.signal(signal.SIGTERM)
    exit_code = await node_exit(node)

    unanswered_steady = [reply for reply in steady if not log.count(reply)]
    sent_after_back = [reply for reply, at in log.sent.items() if at >= back]
    measured = (
        f"sent={len(log.sent)} answered={log.answered} answered_before_kill={answered_before_kill} "
        f"duplicates={len(log.duplicates)} recovery={recovery:.2f}s after the server's return "
        f"sent_after_return={len(sent_after_back)} unanswered_once_recovered={len(unanswered_steady)} "
        f"failed_sends={failed_sends} no_responders={log.no_responders} "
        f"unaccounted={len(log.sent) - log.answered - log.no_responders}"
    )
    print(measured)
    assert answered_before_kill > 0, measured
    assert exit_code == 0, f"{measured}\n{node.output}"
    assert not log.duplicates, measured
    assert recovery < 8.0, f"{measured}\n{node.output}"
    assert steady and not unanswered_steady, measured
    assert "reconnected to NATS" in node.output, node.output


# -- SIGTERM under steady load -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "concurrency"), [("behaviours.py", 1), ("behaviours.py", 2), ("behaviours_sync.py", 1)]
)
async def test_sigterm_under_steady_load_answers_every_message_taken_and_exits_0(
    nats_server: EmbeddedNats, start_node: NodeFactory, answer_logs, module: str, concurrency: int
) -> None:
    # 50 ms per message, 60 offered per second: a backlog is queued when SIGTERM comes. With one slot it waits in
    # nats-py; with two, two messages are in the handler and more wait in the workers' queue as well; a sync
    # handler has one more taken, waiting for its thread.
    slots = {"KRT_CONCURRENCY": str(concurrency)}
    node = start_node(**node_env(nats_server, HANDLERS, module, input="load", name="loaded", **slots))
    log = await answer_logs(nats_server)
    stop = asyncio.Event()
    sender = asyncio.ensure_future(send_steadily(log, "load", name="sleep:0.05", per_second=60, stop=stop))

    await asyncio.sleep(1.5)
    node.signal(signal.SIGTERM)
    exiting = node_exit(node)
    await asyncio.sleep(0.5)  # keep sending while the node drains: those are not taken
    stop.set()
    await sender
    exit_code = await exiting
    await log.wait_answered(list(log.sent), timeout=1.0)  # answers were flushed before exit; let them land

    summary = summary_line(node.output)
    measured = (
        f"sent={len(log.sent)} taken={summary['received']} answered_by_node={summary['answered']} "
        f"answers_received={log.total_answers} duplicates={len(log.duplicates)} errors={summary['errors']}"
    )
    print(measured)
    assert exit_code == 0, f"{measured}\n{node.output}"
    assert summary["received"] == summary["answered"] == log.total_answers, measured
    assert summary["errors"] == 0, measured
    assert not log.duplicates, measured
    assert all(not got[0].message.error for got in log.answers.values()), measured


@pytest.mark.parametrize(
    ("module", "concurrency"), [("behaviours.py", 1), ("behaviours.py", 2), ("behaviours_sync.py", 2)]
)
async def test_at_the_drain_timeout_every_message_taken_gets_an_error_answer_and_the_node_exits_0(
    nats_server: EmbeddedNats, start_node: NodeFactory, answer_logs, module: str, concurrency: int
) -> None:
    # Handlers that outlast KRT_DRAIN_TIMEOUT: some messages are in a handler, the rest wait behind them.
    env = {"KRT_CONCURRENCY": str(concurrency), "KRT_DRAIN_TIMEOUT": "1"}
    node = start_node(**node_env(nats_server, HANDLERS, module, input="stuck", name="stuck", **env))
    log = await answer_logs(nats_server)
    for _ in range(5):
        await log.send("stuck", request("sleep:30"))
    await asyncio.sleep(0.5)  # the first ones are in their handlers

    node.signal(signal.SIGTERM)
    exit_code = await node_exit(node, timeout=15)
    await log.wait_answered(list(log.sent), timeout=2.0)

    errors = [got[0].message.error for got in log.answers.values()]
    summary = summary_line(node.output)
    assert exit_code == 0, node.output
    assert len(errors) == 5 and not log.duplicates, f"{errors}\n{node.output}"
    assert all("KRT_DRAIN_TIMEOUT (1s)" in error for error in errors), errors
    # only those in a handler say so: a pipelined sync handler's one more message, waiting for a thread, was not
    assert sum("before its handler finished" in error for error in errors) == concurrency, errors
    assert sum("before this message was handled" in error for error in errors) == 5 - concurrency, errors
    assert summary["received"] == summary["errors"] == 5, summary


async def test_sigterm_exits_at_once_while_a_timed_out_sync_handler_is_still_running(
    nats_server: EmbeddedNats, start_node: NodeFactory, requester
) -> None:
    node = start_node(**node_env(nats_server, HANDLERS, "hostile_sync.py", input="stuck", KRT_HANDLER_TIMEOUT="0.5"))
    answer = await requester.greet("stuck", "sleep:60")  # its thread cannot be stopped: it sleeps on
    assert "timed out after 0.5s" in answer.error

    node.signal(signal.SIGTERM)

    assert await node_exit(node, timeout=15) == 0, node.output  # the abandoned thread does not hold up the exit
    assert summary_line(node.output)["abandoned_threads"] == 1, node.output


async def test_sigterm_with_the_server_frozen_stops_within_the_drain_timeout_and_a_little_more(
    start_node: NodeFactory,
) -> None:
    # nats-py's drain would add its own drain timeout and a 10 s flush: past a grace period set above the drain
    # timeout, as the docs advise, the node would be killed before its measurements were flushed
    with EmbeddedNats() as server:
        node = start_node(**node_env(server, ROOT / "examples" / "greeter", "src/greet.py", input="frozen-in",
                                     KRT_DRAIN_TIMEOUT="2"))
        assert server.process is not None
        server.process.send_signal(signal.SIGSTOP)  # its socket stays open, nothing answers
        try:
            signalled = time.monotonic()
            node.signal(signal.SIGTERM)
            code = await node_exit(node, timeout=30)
            took = time.monotonic() - signalled
        finally:
            server.process.send_signal(signal.SIGCONT)

    assert code == 0, node.output
    assert took < 2 + 6, node.output  # the drain timeout, a second for the connection's drain, and slack
    assert '"could not drain connection; closing"' in node.output and "not done within" in node.output
    assert "answering unfinished messages" not in node.output  # nothing was unfinished
    print(f"stopped {took:.1f}s after SIGTERM")


# -- a burst far above the node's rate --------------------------------------------------------------


async def test_burst_above_a_slow_handlers_rate_drops_are_logged_and_counted_not_a_silent_disconnect(
    nats_server: EmbeddedNats, start_node: NodeFactory, answer_logs
) -> None:
    burst, pending_limit = 400, 20
    limits = {"KRT_PENDING_MSGS_LIMIT": str(pending_limit)}
    node = start_node(**node_env(nats_server, HANDLERS, "behaviours.py", input="burst", name="slow", **limits))
    log = await answer_logs(nats_server)

    data = request("sleep:0.05")
    started = time.monotonic()
    for _ in range(burst):
        await log.send("burst", data)
    await log.nc.flush()
    await _until_quiet(log, quiet=1.0, limit=20)
    await asyncio.sleep(max(0.0, 6.0 - (time.monotonic() - started)))  # past the one-line-per-5-s interval
    node.signal(signal.SIGTERM)
    exit_code = await node_exit(node)

    summary = summary_line(node.output)
    taken, drops = summary["received"], summary["slow_consumer_drops"]
    measured = (
        f"burst={burst} pending_msgs_limit={pending_limit} taken={taken} slow_consumer_drops={drops} "
        f"answers_received={log.total_answers} duplicates={len(log.duplicates)}"
    )
    print(measured)
    assert exit_code == 0, f"{measured}\n{node.output}"
    assert isinstance(drops, int) and drops > 0, measured
    assert taken + drops == burst, f"every message delivered was either taken or counted as dropped: {measured}"
    assert log.total_answers == taken and not log.duplicates, measured
    told = [int(found) for line in node.output.splitlines() if "slow consumer: NATS" in line
            for found in re.findall(r'"dropped_total": (\d+)', line)]
    assert told and told[-1] == drops, f"the burst's last drops are told within the interval: {told} {measured}"
    assert f'"pending_msgs_limit": {pending_limit}' in node.output, node.output
    assert "disconnected from NATS" not in node.output, node.output
    assert "Slow Consumer" not in nats_server.log_text(), nats_server.log_text()


async def _until_quiet(log: AnswerLog, *, quiet: float, limit: float) -> None:
    """Until no answer arrived for ``quiet`` seconds (or ``limit`` seconds passed)."""
    deadline = time.monotonic() + limit
    seen = -1
    while time.monotonic() < deadline and seen != log.total_answers:
        seen = log.total_answers
        await asyncio.sleep(quiet)


# -- a CPU-bound handler ---------------------------------------------------------------------------------


class ImpatientNats(EmbeddedNats):
    def __init__(self, directory: Path) -> None:
        self.logfile = directory / "impatient.log"
        config = directory / "impatient.conf"
        config.write_text(IMPATIENT_SERVER.format(logfile=self.logfile))
        super().__init__(extra_args=["-c", str(config)])

    def stale_closures(self) -> int:
        return self.logfile.read_text().count("Stale Client Connection") if self.logfile.exists() else 0


@pytest.fixture
def impatient_server(tmp_path: Path):
    with ImpatientNats(tmp_path) as server:
        yield server


async def test_cpu_bound_sync_handler_keeps_its_connection_and_the_other_replica_keeps_serving(
    impatient_server: EmbeddedNats, start_node: NodeFactory, answer_logs
) -> None:
    replicas = {
        name: start_node(**node_env(impatient_server, HANDLERS, "behaviours_sync.py", input="cpu", name=name))
        for name in ("cpu1", "cpu2")
    }
    log = await answer_logs(impatient_server)

    busy = await log.send("cpu", request("busy:2"))
    started = time.monotonic()
    quick = []
    while time.monotonic() - started < 1.8:  # while the busy replica spins
        quick.append(await log.send("cpu", request("quick")))
        await asyncio.sleep(0.05)
    busy_answer = await log.first_answer(busy, timeout=15)
    busy_done = log.answers[busy][0].at
    await log.wait_answered(quick, timeout=10)

    busy_replica = unpack(busy_answer, greeter_pb2.Request).name.rsplit(">", 1)[-1]
    served_meanwhile = [r for r in quick if log.count(r) and log.answers[r][0].at < busy_done]
    measured = (
        f"busy replica={busy_replica} quick requests={len(quick)} answered={sum(1 for r in quick if log.count(r))} "
        f"answered while the busy replica spun={len(served_meanwhile)} "
        f"busy answer after {busy_done - started:.2f}s duplicates={len(log.duplicates)}"
    )
    print(measured)
    assert busy_answer.error == "", measured
    assert len(served_meanwhile) >= 5, measured
    assert all(log.count(r) == 1 for r in quick), measured
    for name, node in replicas.items():
        assert "disconnected from NATS" not in node.output, f"{name} lost its connection: {measured}\n{node.output}"
    assert impatient_server.stale_closures() == 0, measured


async def test_the_impatient_server_does_drop_a_node_whose_event_loop_is_blocked(
    impatient_server: EmbeddedNats, start_node: NodeFactory, answer_logs
) -> None:
    """The control for the test above: blocking the loop (an async handler that never awaits) is caught."""
    node = start_node(**node_env(impatient_server, HANDLERS, "hostile.py", input="blocked", name="blocker"))
    log = await answer_logs(impatient_server)

    await log.send("blocked", request("block:2"))
    await asyncio.to_thread(node.wait_for_line, "disconnected from NATS", 15)
    await asyncio.to_thread(node.wait_for_line, "reconnected to NATS", 15)

    assert impatient_server.stale_closures() >= 1
