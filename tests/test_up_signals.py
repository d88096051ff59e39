"""Stopping `up` (issue 26): the first Ctrl-C drains in order and says how to stop now; the second stops at once."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import nats
import pytest
from conftest import KRT_RUNNER, ROOT, greeter_pb2
from up_helpers import UpRun, leftovers, up_env

from krt_runner.client import Client
from krt_runner.jetstream_names import consumer_name, stream_name

SLOW_GREET = """\
import asyncio

from greeter_pb2 import Request, Response


async def handler(ctx, data):
    ctx.logger.info("handler sleeping")
    await asyncio.sleep(60)
    return Response(greeting="late")
"""


def wait_for_err(up: UpRun, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in line for line in up.err):
        assert time.monotonic() < deadline, f"no {text!r}:\n" + "\n".join(up.err)
        time.sleep(0.05)


@pytest.mark.parametrize(("command", "signum"), [("check", signal.SIGINT), ("up", signal.SIGTERM),
                                                  ("build", signal.SIGHUP)])
def test_a_stop_while_the_nodes_import_ends_the_command_in_one_line_and_leaves_nothing_in_tmp(
    tmp_path, command, signum
):
    folder = tmp_path / "slow"
    shutil.copytree(ROOT / "examples" / "greeter", folder, ignore=shutil.ignore_patterns("__pycache__", "*.lp"))
    greet = folder / "src" / "greet.py"
    greet.write_text("import os, time\ntime.sleep(float(os.environ.get('IMPORT_SECONDS', '60')))  # a model loaded\n"
                     + greet.read_text())
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    target = str(folder)
    if command == "up":  # a package: unpacked into a temporary folder first
        subprocess.run([*KRT_RUNNER, "build", target, "--output", str(tmp_path / "dist") + "/"], check=True,
                       capture_output=True, timeout=120, env={**os.environ, "IMPORT_SECONDS": "0"})
        target = str(next((tmp_path / "dist").glob("*.krt")))
    more = {"up": ["--request", '{"name": "x"}'], "build": ["--output", str(tmp_path / "out") + "/"]}.get(command, [])
    process = subprocess.Popen([*KRT_RUNNER, command, target, *more], env={**os.environ, "TMPDIR": str(scratch)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not any(path.name.startswith("krt-check-") for path in scratch.iterdir()):  # importing now
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        process.send_signal(signum)  # to krt-runner alone, as `kill PID` and `docker stop` send it
        stopped = time.monotonic()
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()

    assert process.returncode == 128 + signum and time.monotonic() - stopped < 20  # not the import's 60 s
    assert str(tmp_path) not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert err.strip().splitlines() == [f"krt-runner {command}: stopped by {signal.Signals(signum).name}"]
    assert list(scratch.iterdir()) == []


def test_a_second_ctrl_c_while_up_drains_kills_what_is_left_at_once_and_exits_130(tmp_path):
    krt = tmp_path / "slow"
    shutil.copytree(ROOT / "examples" / "greeter", krt, ignore=shutil.ignore_patterns("__pycache__", "dist"))
    (krt / "src" / "greet.py").write_text(SLOW_GREET)
    up = UpRun(str(krt), "--no-entrypoint", cwd=tmp_path)
    caller = None
    try:
        args = shlex.split(up.wait_for_call_line())
        caller = subprocess.Popen([*KRT_RUNNER, *args[1:], "--timeout", "90"], cwd=tmp_path, env=up_env("caller"),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_err(up, "handler sleeping")

        up.process.send_signal(signal.SIGINT)
        wait_for_err(up, "press Ctrl-C again to stop now")
        wait_for_err(up, "draining")  # greet drains: its handler sleeps a minute more
        started = time.monotonic()
        up.process.send_signal(signal.SIGINT)
        code = up.wait(timeout=30)
    finally:
        up.stop()
        if caller is not None:
            caller.kill()
            caller.wait()

    assert code == 130, "\n".join(up.err)
    assert time.monotonic() - started < 15
    assert any("second signal: stopping now" in line for line in up.err)
    assert leftovers(up.marker) == []


def test_a_stop_while_build_checks_its_package_leaves_no_package(tmp_path):
    folder = tmp_path / "slow"
    shutil.copytree(ROOT / "examples" / "greeter", folder, ignore=shutil.ignore_patterns("__pycache__", "*.lp", "dist"))
    greet = folder / "src" / "greet.py"
    greet.write_text("import os, time\nif __file__.startswith(os.environ['TMPDIR']):  # in the unpacked package\n"
                     "    time.sleep(60)\n" + greet.read_text())
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    process = subprocess.Popen([*KRT_RUNNER, "build", str(folder)], env={**os.environ, "TMPDIR": str(scratch)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not any(path.name.startswith("krt-check-") for path in scratch.iterdir()) or \
                not (folder / "dist").exists():  # the package written, and being checked
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()

    assert process.returncode == 130 and err.strip() == "krt-runner build: stopped by SIGINT"
    assert not (folder / "dist").exists() and list(scratch.iterdir()) == []


def test_ctrl_c_while_the_nodes_start_fails_a_request_it_never_sent_and_says_no_node_is_ready(tmp_path):
    krt = tmp_path / "slow-init"
    shutil.copytree(ROOT / "examples" / "greeter", krt, ignore=shutil.ignore_patterns("__pycache__", "dist"))
    greet = krt / "src" / "greet.py"
    greet.write_text(greet.read_text() + "\n\ndef init(ctx):\n    import time\n    ctx.logger.info('init slow')\n"
                     "    time.sleep(30)\n")
    up = UpRun(str(krt), "--request", '{"name": "Ada"}', cwd=tmp_path)
    try:
        wait_for_err(up, "init slow")
        up.process.send_signal(signal.SIGINT)
        code = up.wait(timeout=60)
    finally:
        up.stop()

    assert code == 130, "\n".join(up.err)
    assert any("the request was interrupted before it was sent" in line for line in up.err)
    assert not any("node processes ready" in line or "sending the request" in line for line in up.err)
    assert up.out == [] and leftovers(up.marker) == []


def test_up_killed_with_sigkill_leaves_nothing_running(tmp_path):
    up = UpRun(str(ROOT / "examples" / "greeter"), cwd=tmp_path)  # nats-server, two nodes and the entrypoint
    try:
        up.wait_for_line("gRPC entrypoint: ")
        assert len(leftovers(up.marker)) == 5, "up itself and what it started"
        up.process.kill()
        up.wait(timeout=10)
        deadline = time.monotonic() + 40  # each stops as on SIGTERM: a node drains
        while leftovers(up.marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = leftovers(up.marker)
    finally:
        up.stop()
        for pid in marked_pids(up.marker):  # a failed test stops what it left too
            os.kill(pid, signal.SIGKILL)

    assert left == []


def marked_pids(marker: str) -> list[int]:
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if f"UP_TEST_MARKER={marker}\0".encode() in (proc / "environ").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_up_whose_output_reader_went_away_goes_on_serving_and_stops_cleanly(tmp_path):
    marker = uuid.uuid4().hex
    up = subprocess.Popen([*KRT_RUNNER, "up", str(ROOT / "examples" / "greeter"), "--no-entrypoint"], cwd=tmp_path,
                          env=up_env(marker), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert up.stderr is not None and up.stdout is not None
        first = up.stderr.readline()  # "up | nats-server on nats://...", as `| head -1` would take it
        url = first.split()[-1]
        up.stderr.close()
        up.stdout.close()
        answer = None
        deadline = time.monotonic() + 60
        while answer is None and time.monotonic() < deadline and up.poll() is None:
            done = subprocess.run([*KRT_RUNNER, "call", "greeter-v1-Greet-entrypoint", "--nats", url, "--proto",
                                   str(ROOT / "examples/greeter/src/greeter_pb2.py"), "--method", "Greet",
                                   "--request", '{"name": "Ada"}', "--timeout", "5"], capture_output=True, text=True,
                                  timeout=30)
            answer = done.stdout if done.returncode == 0 else None
            time.sleep(0.2)
        up.send_signal(signal.SIGTERM)
        code = up.wait(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()

    assert answer is not None and "Hello, Ada!" in answer
    assert code == 0
    assert leftovers(marker) == []


def test_up_whose_nats_server_dies_says_so_stops_every_node_and_exits_1(tmp_path):
    up = UpRun(str(ROOT / "examples" / "greeter"), "--no-entrypoint", cwd=tmp_path)
    try:
        up.wait_for_line("krt-runner call")  # printed once every node is ready
        (server,) = [pid for pid in marked_pids(up.marker)
                     if b"nats-server" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]]
        os.kill(server, signal.SIGKILL)
        code = up.wait(timeout=60)
    finally:
        up.stop()

    said = "\n".join(up.err)
    assert code == 1, said
    assert "nats-server was killed by SIGKILL (out of memory?): no node can serve without it" in said
    assert "nats-server had exited already" in said
    assert leftovers(up.marker) == []


SLOW_DECORATE = """\
import asyncio

from greeter_pb2 import Response


async def handler(ctx, data):
    response = Response()
    data.Unpack(response)
    await asyncio.sleep(0.02)
    return Response(greeting=f"** {response.greeting} **")
"""


def test_at_least_once_up_stopped_answers_every_request_stored_inside_the_workflow_first(tmp_path):
    krt = tmp_path / "slow-last"
    shutil.copytree(ROOT / "examples" / "greeter", krt, ignore=shutil.ignore_patterns("__pycache__", "dist"))
    (krt / "src" / "decorate.py").write_text(SLOW_DECORATE)
    up = UpRun(str(krt), "--delivery", "at-least-once", "--no-entrypoint", cwd=tmp_path)
    try:
        args = shlex.split(up.wait_for_call_line())
        url = args[args.index("--nats") + 1]
        answers = asyncio.run(_answers_across_a_stop(up, url, [f"n{i}" for i in range(150)]))
        code = up.wait(timeout=90)
    finally:
        up.stop()

    assert answers == [f"** Hello, n{i}! **" for i in range(150)], "\n".join(up.err[-30:])
    assert code == 0
    # greet answered all 150 at once into decorate's stream; up waited for decorate to take them all.
    assert any("decorate: " in line and "requests stored for it; answering them before it stops" in line
               for line in up.err), "\n".join(up.err)
    assert leftovers(up.marker) == []


async def _answers_across_a_stop(up: UpRun, url: str, names: list[str], during=None) -> list[str]:
    """Send every request, stop up (SIGTERM) once the first answer is in, run ``during(up, url)``, and return the
    answers."""
    client = await Client.connect(url, delivery="at-least-once")
    try:
        calls = [asyncio.ensure_future(client.call("greeter-v1-Greet-entrypoint", greeter_pb2.Request(name=name),
                                                   greeter_pb2.Response, timeout=90)) for name in names]
        await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
        up.process.send_signal(signal.SIGTERM)
        if during is not None:
            await during(up, url)
        return [answer.greeting for answer in await asyncio.gather(*calls)]
    finally:
        await client.close()


def test_at_least_once_up_waits_for_stored_requests_across_a_deleted_consumer_and_counts_replicas_once(tmp_path):
    krt = tmp_path / "slow-last"
    shutil.copytree(ROOT / "examples" / "greeter", krt, ignore=shutil.ignore_patterns("__pycache__", "dist"))
    (krt / "src" / "decorate.py").write_text(SLOW_DECORATE)
    up = UpRun(str(krt), "--delivery", "at-least-once", "--no-entrypoint", "--replicas", "decorate=2", cwd=tmp_path)
    try:
        args = shlex.split(up.wait_for_call_line())
        url = args[args.index("--nats") + 1]
        answers = asyncio.run(_answers_across_a_stop(up, url, [f"n{i}" for i in range(150)],
                                                     during=_delete_decorates_consumer))
        code = up.wait(timeout=120)
    finally:
        up.stop()

    # The consumer deleted during the wait: the requests were counted from the stream, and the node made it again.
    assert answers == [f"** Hello, n{i}! **" for i in range(150)], "\n".join(up.err[-30:])
    assert code == 0
    counts = [int(line.split(": ")[1].split()[0]) for line in up.err
              if "decorate#1, decorate#2: " in line and "requests stored for it" in line]
    assert counts and 0 < counts[0] <= 150  # each request once, not once per replica


def test_a_second_ctrl_c_while_at_least_once_up_waits_for_stored_requests_stops_at_once_and_leaves_no_store(tmp_path):
    krt = tmp_path / "slow-last"
    shutil.copytree(ROOT / "examples" / "greeter", krt, ignore=shutil.ignore_patterns("__pycache__", "dist"))
    (krt / "src" / "decorate.py").write_text(SLOW_DECORATE.replace("0.02", "1"))
    up = UpRun(str(krt), "--delivery", "at-least-once", "--no-entrypoint", cwd=tmp_path)
    try:
        args = shlex.split(up.wait_for_call_line())
        url = args[args.index("--nats") + 1]
        store = next(line for line in up.err if "its store in" in line).rsplit("its store in ", 1)[1].rstrip(")")
        asyncio.run(_send_then(url, [f"n{i}" for i in range(20)], up, signal.SIGINT))
        wait_for_err(up, "requests stored for it")
        up.process.send_signal(signal.SIGINT)
        code = up.wait(timeout=30)
    finally:
        up.stop()

    assert code == 130, "\n".join(up.err)
    assert not any("Traceback" in line for line in up.err), "\n".join(up.err)
    assert not Path(store).exists()
    assert leftovers(up.marker) == []


async def _delete_decorates_consumer(up: UpRun, url: str) -> None:
    await asyncio.to_thread(wait_for_err, up, "requests stored for it")
    nc = await nats.connect(url)
    try:
        await nc.jetstream().delete_consumer(stream_name("greeter-v1-greet-decorate"),
                                             consumer_name("greeter-v1-greet-decorate"))
    finally:
        await nc.close()


async def _send_then(url: str, names: list[str], up: UpRun, signum: int) -> None:
    """Send the requests (stored once JetStream acknowledges them), then signal up; the answers are not awaited."""
    client = await Client.connect(url, delivery="at-least-once")
    try:
        calls = [asyncio.ensure_future(client.call("greeter-v1-Greet-entrypoint", greeter_pb2.Request(name=name),
                                                   greeter_pb2.Response, timeout=60)) for name in names]
        await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
        up.process.send_signal(signum)
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await client.close()
