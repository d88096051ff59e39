"""`krt-runner up` end to end: real processes, an embedded nats-server, both examples."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import shlex
import shutil
import signal
import subprocess
import sys
import uuid

import pytest
from conftest import KRT_RUNNER, ROOT, greeter_pb2
from up_helpers import UpRun, leftovers, run_up, up_env

from krt_runner.client import Client

GREETER = ROOT / "examples" / "greeter"
IRIS = ROOT / "examples" / "iris"


@pytest.fixture
def start_up(tmp_path):
    runs: list[UpRun] = []

    def start(*args: str) -> UpRun:
        runs.append(UpRun(*args, cwd=tmp_path))
        return runs[-1]

    yield start
    for run in runs:
        run.stop()


def test_up_with_a_request_answers_through_both_greeter_nodes_then_stops_everything_in_order(tmp_path):
    marker = uuid.uuid4().hex

    done = run_up(str(GREETER), "--request", '{"name": "Ada"}', cwd=tmp_path, marker=marker)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"greeting": "** Hello, Ada! **"}
    stops = [line for line in done.stderr.splitlines() if line.startswith("up ") and "stop" in line]
    assert [line.split("| ")[1] for line in stops] == [
        "stopping greet", "stopping decorate", "mongo_writer stopped: 0 documents saved", "nats-server stopped",
    ]
    assert re.search(r"^greet +\| .* node ready", done.stderr, re.MULTILINE)
    assert not (tmp_path / "data.sqlite").exists(), "nothing was saved: no local store is made"
    assert leftovers(marker) == []


def test_up_runs_the_iris_model_end_to_end(tmp_path):
    pytest.importorskip("sklearn")
    iris = tmp_path / "iris"
    shutil.copytree(IRIS, iris, ignore=shutil.ignore_patterns("models", "__pycache__"))
    trained = subprocess.run([sys.executable, "train.py", "--out", "models/model.joblib"], cwd=iris, timeout=120)
    assert trained.returncode == 0

    flower = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.8, "petal_width": 2.2}
    done = run_up(str(iris), "--request", json.dumps(flower), cwd=tmp_path, marker=uuid.uuid4().hex)

    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["species"] == "virginica"
    assert set(answer["probabilities"]) == {"setosa", "versicolor", "virginica"}
    assert sum(answer["probabilities"].values()) == pytest.approx(1.0)
    assert "iris_predictions,species=virginica" in (tmp_path / "measurements.lp").read_text()


def test_the_printed_call_line_works_as_pasted(start_up, tmp_path):
    up = start_up(str(GREETER))
    line = up.wait_for_call_line()

    args = shlex.split(line.replace('{"name": ""}', '{"name": "Grace"}'))
    done = subprocess.run([*KRT_RUNNER, *args[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"greeting": "** Hello, Grace! **"}


def test_sigterm_stops_every_replica_and_the_server_exits_0_and_leaves_no_process(start_up):
    up = start_up(str(GREETER), "--replicas", "greet=2")
    subject, url = _subject_and_url(up.wait_for_call_line())

    answers = asyncio.run(_greet_many(url, subject, 60))
    up.process.send_signal(signal.SIGTERM)

    assert up.wait() == 0
    assert {a.greeting for a in answers} == {f"** Hello, n{i}! **" for i in range(60)}
    received = {label: _received(up.err, label) for label in ("greet#1", "greet#2", "decorate")}
    assert received["greet#1"] > 0 and received["greet#2"] > 0, received
    assert received["greet#1"] + received["greet#2"] == received["decorate"] == 60
    assert leftovers(up.marker) == []


def test_a_node_that_dies_is_reported_with_its_exit_code_and_last_lines_and_up_exits_1(tmp_path):
    krt = tmp_path / "dying"
    (krt / "src").mkdir(parents=True)
    (krt / "proto").mkdir()
    shutil.copy(GREETER / "proto" / "greeter.proto", krt / "proto")
    shutil.copy(GREETER / "src" / "greeter_pb2.py", krt / "src")
    (krt / "src" / "crash.py").write_text(
        "import os\n\ndef handler(ctx, data):\n    ctx.logger.info('about to crash')\n    os._exit(3)\n"
    )
    (krt / "src" / "after.py").write_text("def handler(ctx, data):\n    return data\n")
    (krt / "krt.yml").write_text(
        "version: dying-v1\ndescription: crashes\nentrypoint: {proto: proto/greeter.proto, image: e}\n"
        "nodes:\n  - {name: crash, image: i, src: src/crash.py}\n  - {name: after, image: i, src: src/after.py}\n"
        "workflows:\n  - {name: main, entrypoint: Greet, sequential: [crash, after]}\n"
    )

    marker = uuid.uuid4().hex

    done = run_up(str(krt), "--request", '{"name": "x"}', cwd=tmp_path, marker=marker)

    assert done.returncode == 1
    assert "up    | crash exited with code 3; its last lines:" in done.stderr
    assert re.search(r"^up +\|  +.*about to crash", done.stderr, re.MULTILINE)
    assert "stopping everything else" in done.stderr
    assert leftovers(marker) == []


HELPER = "import subprocess, sys\nHELPER = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"


def one_node_krt(root, handler: str):
    (root / "src").mkdir(parents=True)
    (root / "proto").mkdir()
    shutil.copy(GREETER / "proto" / "greeter.proto", root / "proto")
    shutil.copy(GREETER / "src" / "greeter_pb2.py", root / "src")
    (root / "src" / "node.py").write_text(handler)
    (root / "krt.yml").write_text(
        f"version: {root.name}-v1\ndescription: one node\nentrypoint: {{proto: proto/greeter.proto, image: e}}\n"
        "nodes:\n  - {name: node, image: i, src: src/node.py}\n"
        "workflows:\n  - {name: main, entrypoint: Greet, sequential: [node]}\n"
    )
    return root


def test_a_node_that_dies_leaving_a_process_it_started_on_its_output_is_reported_and_that_process_ended(tmp_path):
    # the helper holds the node's output open: up waited for its end to see the node's (and killed the node only)
    krt = one_node_krt(tmp_path / "spawner", HELPER + "import os\n\ndef handler(ctx, data):\n    os._exit(3)\n")
    marker = uuid.uuid4().hex

    done = run_up(str(krt), "--request", '{"name": "x"}', cwd=tmp_path, marker=marker)

    assert done.returncode == 1
    assert "node exited with code 3; its last lines:" in done.stderr
    assert leftovers(marker) == []


def test_sigterm_stops_a_node_that_started_a_process_of_its_own_at_once_and_that_process_too(start_up, tmp_path):
    krt = one_node_krt(tmp_path / "helped", HELPER + "\ndef handler(ctx, data):\n    return data\n")
    run = start_up(str(krt))
    run.wait_for_call_line()

    run.process.send_signal(signal.SIGTERM)

    assert run.process.wait(timeout=20) == 0
    assert leftovers(run.marker) == []


def test_check_of_a_module_that_starts_a_process_as_it_is_imported_ends_with_the_import_and_ends_that_process(
    tmp_path
):
    krt = one_node_krt(tmp_path / "starter", HELPER + "\ndef handler(ctx, data):\n    return data\n")
    marker = uuid.uuid4().hex

    checked = subprocess.run([*KRT_RUNNER, "check", str(krt)], env=up_env(marker), capture_output=True, text=True,
                             timeout=60)  # the helper held the import's pipe: 120 s, then "took over 120s"

    assert checked.returncode == 0, checked.stderr
    assert leftovers(marker) == []


def test_up_on_a_paused_terminal_still_answers(tmp_path):
    # up's event loop printed the nodes' lines: blocked on a terminal nobody reads (Ctrl-S), it sent no request
    chatty = "def init(ctx):\n    for n in range(3000):\n        ctx.logger.info('warming up', n=n, pad='x' * 150)\n"
    answer = "\nfrom greeter_pb2 import Response\n\ndef handler(ctx, data):\n    return Response(greeting='hi')\n"
    krt = one_node_krt(tmp_path / "chatty", chatty + answer)
    terminal, screen = pty.openpty()
    marker = uuid.uuid4().hex
    try:
        done = subprocess.run([*KRT_RUNNER, "up", str(krt), "--request", '{"name": "Ada"}', "--no-entrypoint"],
                              cwd=tmp_path, env=up_env(marker), stdout=subprocess.PIPE, stderr=screen, text=True,
                              timeout=60)
    finally:
        os.close(screen)
        os.close(terminal)

    assert done.returncode == 0
    assert json.loads(done.stdout) == {"greeting": "hi"}
    assert leftovers(marker) == []


def test_a_node_that_stops_on_its_idle_timeout_is_no_death_up_stops_the_rest_and_exits_0(tmp_path):
    marker = uuid.uuid4().hex
    env = {**up_env(marker), "KRT_IDLE_TIMEOUT": "1"}  # reaches every node, as any KRT_* variable does

    done = subprocess.run(
        [*KRT_RUNNER, "up", str(GREETER), "--grpc-port", "0"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=90,
    )

    assert done.returncode == 0, done.stderr
    assert re.search(r"^up +\| (greet|decorate) stopped on its idle timeout \(KRT_IDLE_TIMEOUT\)$", done.stderr, re.M)
    assert "exited with code" not in done.stderr
    assert "stopping everything else" in done.stderr and "nats-server stopped" in done.stderr
    assert leftovers(marker) == []


def test_a_krt_that_cannot_start_exits_2_before_starting_anything(tmp_path):
    done = run_up(str(GREETER), "--replicas", "ghost=2", "--request", '{"nom": 1}', cwd=tmp_path, marker="none")

    assert done.returncode == 2
    assert "--replicas ghost: no node 'ghost' in krt.yml" in done.stderr
    assert "nats-server" not in done.stderr


def _subject_and_url(call_line: str) -> tuple[str, str]:
    args = shlex.split(call_line)
    return args[2], args[args.index("--nats") + 1]


async def _greet_many(url: str, subject: str, count: int) -> list[greeter_pb2.Response]:
    async with await Client.connect(url) as client:
        calls = (client.call(subject, greeter_pb2.Request(name=f"n{i}"), greeter_pb2.Response) for i in range(count))
        return list(await asyncio.gather(*calls))


def _received(stderr_lines: list[str], label: str) -> int:
    for line in stderr_lines:
        if line.startswith(f"{label} ") and " stopped received=" in line:
            return int(line.split(" stopped received=")[1].split()[0])
    raise AssertionError(f"no summary line of {label}:\n" + "\n".join(stderr_lines))


def test_up_shows_control_characters_a_request_carried_as_escapes_never_raw():
    # a tracking_id could clear the screen, or start a line that reads like up's own
    import io

    from krt_runner.local_krt.node_process import Printer, render

    shown = io.StringIO()
    text, _ = render('{"event": "error in node", "tracking_id": "evil\\u001b[2J\\r\\nup    | FORGED\\u0007"}')
    Printer(shown, ["greet"]).line("greet", text)

    assert "\x1b" not in shown.getvalue() and "\x07" not in shown.getvalue()
    assert shown.getvalue().count("\n") == 1 and "tracking_id=evil\\x1b[2J\\r\\nup    | FORGED\\x07" in shown.getvalue()
