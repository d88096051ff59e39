"""The health file and `krt-runner health`: the exec probe for readiness and liveness."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

from conftest import KRT_RUNNER, ROOT, NodeProcess, node_env, until

from krt_runner.local_krt.embedded import EmbeddedNats
from krt_runner.node.broker import MAX_OUTSTANDING_PINGS, PING_INTERVAL
from krt_runner.node.health import DEFAULT_MAX_AGE, HealthFile, check

GREETER = ROOT / "examples" / "greeter"


def health(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {key: value for key, value in os.environ.items() if not key.startswith("KRT_")}
    command = [*KRT_RUNNER, "health", *args]
    return subprocess.run(command, env={**base, **(env or {})}, capture_output=True, text=True, timeout=30)


async def test_the_file_is_touched_while_healthy_and_deleted_on_stop(tmp_path):
    path = tmp_path / "healthy"
    healthy = [True]
    keeper = HealthFile(str(path), is_healthy=lambda: healthy[0], logger=None, interval=0.05)

    keeper.start()
    await asyncio.sleep(0.1)
    touched = path.stat().st_mtime
    healthy[0] = False
    await asyncio.sleep(0.2)
    untouched = path.stat().st_mtime
    await keeper.stop()

    assert touched == untouched, "an unhealthy node must not refresh the file"
    assert not path.exists()


def test_check_accepts_a_fresh_file_and_names_what_is_wrong_otherwise(tmp_path):
    path = tmp_path / "healthy"
    path.touch()
    fresh = check(str(path), max_age=5)
    os.utime(path, (time.time() - 60, time.time() - 60))

    assert fresh is None
    assert "is 60.0s old (limit 5s)" in check(str(path), max_age=5)
    assert "does not exist" in check(str(tmp_path / "missing"))
    assert "set KRT_HEALTH_FILE" in check("")


def test_health_passes_while_the_node_serves_and_fails_once_it_stops(nats_server, start_node, tmp_path):
    path = tmp_path / "node.health"
    node = start_node(**node_env(nats_server, GREETER, "src/greet.py", input="in", KRT_HEALTH_FILE=str(path)))

    serving = health(env={"KRT_HEALTH_FILE": str(path)})
    node.signal()
    assert node.wait() == 0
    stopped = health("--health-file", str(path))

    assert serving.returncode == 0, serving.stderr
    assert stopped.returncode == 1
    assert "does not exist: the node is starting, draining or stopped" in stopped.stderr


async def test_health_fails_soon_after_the_node_loses_nats_and_passes_soon_after_it_is_back(start_node, tmp_path):
    path = tmp_path / "node.health"
    with EmbeddedNats() as server:
        start_node(**node_env(server, GREETER, "src/greet.py", input="in", KRT_HEALTH_FILE=str(path),
                              KRT_NATS_RECONNECT_WAIT="0.2"))
        passing = health("--health-file", str(path))

        server.stop()
        lost = time.monotonic()
        await until(lambda: health("--health-file", str(path)).returncode == 1, timeout=DEFAULT_MAX_AGE + 5)
        failing_after = time.monotonic() - lost
        await asyncio.to_thread(server.start)
        back = time.monotonic()
        await until(lambda: health("--health-file", str(path)).returncode == 0, timeout=10)
        passing_after = time.monotonic() - back

    assert passing.returncode == 0, passing.stderr
    print(f"health failed {failing_after:.1f}s after the server stopped, passed {passing_after:.1f}s after its return")


async def test_health_fails_soon_after_the_server_stops_answering_without_closing_the_connection(start_node, tmp_path):
    path = tmp_path / "node.health"
    with EmbeddedNats() as server:
        start_node(**node_env(server, GREETER, "src/greet.py", input="in", KRT_HEALTH_FILE=str(path)))
        assert server.process is not None
        server.process.send_signal(signal.SIGSTOP)  # frozen: its socket stays open, nothing answers
        try:
            frozen = time.monotonic()
            await until(lambda: health("--health-file", str(path)).returncode == 1, timeout=40)
            failed_after = time.monotonic() - frozen
        finally:
            server.process.send_signal(signal.SIGCONT)

    assert failed_after < (MAX_OUTSTANDING_PINGS + 1) * PING_INTERVAL + DEFAULT_MAX_AGE + 5
    print(f"health failed {failed_after:.1f}s after the server froze")


def test_a_restarted_node_still_importing_fails_health_as_starting_and_sigterm_ends_it_with_exit_0(
    nats_server, start_node, tmp_path
):
    # A model loaded at import; the health file its killed predecessor left (an emptyDir outlives a container).
    (tmp_path / "slow_import.py").write_text(
        "import sys, time\nprint('importing', file=sys.stderr, flush=True)\ntime.sleep(60)\n"
        "def handler(ctx, data): return data\n"
    )
    path = tmp_path / "node.health"
    path.touch()
    node = start_node(wait=False, **node_env(nats_server, tmp_path, "slow_import.py", input="in",
                                             KRT_HEALTH_FILE=str(path)))
    node.wait_for_line("importing")

    starting = health("--health-file", str(path))
    node.signal(signal.SIGTERM)

    assert "does not exist: the node is starting" in starting.stderr and starting.returncode == 1
    assert node.wait() == 0, node.output
    assert '"stopped before start-up finished"' in node.output and '"signal": "SIGTERM"' in node.output


def test_sigterm_while_the_first_connect_retries_fast_ends_the_node_and_the_entrypoint(start_node, tmp_path):
    # nats-py's connect retries in a loop: a stop landing as an attempt failed was lost, and the process retried for
    # good (about one run in two at a millisecond's wait). Three of each.
    nowhere = EmbeddedNats()  # a free port nothing listens on: never started
    (tmp_path / "node.py").write_text("def handler(ctx, data): return data\n")
    fast = {"KRT_NATS_RECONNECT_WAIT": "0.001", "KRT_MEASUREMENTS_ENABLED": "false", "KRT_LOG_FORMAT": "json"}
    processes = [start_node(wait=False, **node_env(nowhere, tmp_path, "node.py", input="in", **fast))
                 for _ in range(3)]
    env = {key: value for key, value in os.environ.items() if not key.startswith("KRT_")}
    entrypoints = [NodeProcess([*KRT_RUNNER, "entrypoint", str(ROOT / "examples" / "greeter"), "--port", "0"],
                               {**env, **fast, "KRT_NATS_SERVER": nowhere.url}, cwd=tmp_path) for _ in range(3)]
    try:
        for process in processes + entrypoints:
            process.wait_for_line("NATS error")  # retrying
        for process in processes + entrypoints:
            process.signal(signal.SIGTERM)
        codes = [process.wait(timeout=20) for process in processes + entrypoints]
    finally:
        for entrypoint in entrypoints:
            entrypoint.stop()

    assert codes == [0] * 6
