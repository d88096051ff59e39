"""Workflows as futures: krt_runner.local() and connect(), submit(), wait() and as_completed(), end to end."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import grpc
import pytest
from conftest import KRT_RUNNER, ROOT, greeter_pb2
from entrypoint_helpers import greet_call
from up_helpers import UpRun, leftovers

import krt_runner
from krt_runner.errors import CallError, ErrorAnswer, KrtRunnerError

GREETER = ROOT / "examples" / "greeter"
HANDLERS = ROOT / "tests" / "handlers"
# Seconds a test waits for answers that normally take well under one.
ANSWER_TIMEOUT = 60.0
# Threads a test process may have besides local()'s loop: main, pytest-timeout, child watchers...
THREAD_ALLOWANCE = 16
CRASH = """
import os
from greeter_pb2 import Request, Response

def handler(ctx, req: Request) -> Response:
    if req.name == "crash":
        ctx.logger.info("about to crash")
        os._exit(3)
    return Response(greeting=req.name)
"""


# Nodes started by these tests write no measurements (by default a measurements.lp in the working directory).
NO_MEASUREMENTS = {"KRT_MEASUREMENTS_ENABLED": "false"}


@pytest.fixture
def marked(monkeypatch, tmp_path) -> str:
    """A marker in the environment every process local() starts inherits (see test_up.leftovers); cwd tmp_path."""
    marker = uuid.uuid4().hex
    monkeypatch.setenv("UP_TEST_MARKER", marker)
    monkeypatch.chdir(tmp_path)
    for key in [key for key in os.environ if key.startswith("KRT_")]:
        monkeypatch.delenv(key)
    return marker


def one_node_krt(tmp_path: Path, source: Path | str, *, name: str = "node") -> Path:
    """A KRT of one node whose handler is ``source`` (a file, or the text of one), beside greeter_pb2."""
    folder = tmp_path / "krt"
    (folder / "src").mkdir(parents=True)
    shutil.copy(GREETER / "proto" / "greeter.proto", folder / "greeter.proto")
    shutil.copy(GREETER / "src" / "greeter_pb2.py", folder / "src")
    text = source.read_text() if isinstance(source, Path) else source
    (folder / "src" / f"{name}.py").write_text(text)
    (folder / "krt.yml").write_text(
        f"version: one-v1\ndescription: one node\nentrypoint: {{proto: greeter.proto, image: e}}\n"
        f"nodes:\n  - {{name: {name}, image: i, src: src/{name}.py}}\n"
        f"workflows:\n  - {{name: main, entrypoint: Greet, sequential: [{name}]}}\n"
    )
    return folder


def test_a_thousand_futures_through_local_are_each_answered_once_without_a_thread_each(marked, tmp_path):
    output = io.StringIO()
    with krt_runner.local(GREETER, env=NO_MEASUREMENTS, output=output) as krt:
        greet = krt.workflow("greet")
        futures = [greet.submit(greeter_pb2.Request(name=f"n{i}")) for i in range(1000)]
        threads_in_flight = threading.active_count()
        done, not_done = krt_runner.wait(futures, timeout=ANSWER_TIMEOUT)
        with grpc.insecure_channel(krt.grpc_address) as channel:
            through_grpc = greet_call(channel)(greeter_pb2.Request(name="grpc"), timeout=10)

    assert through_grpc.greeting == "** Hello, grpc! **"
    assert len(done) == 1000 and not not_done
    assert [future.result().greeting for future in futures] == [f"** Hello, n{i}! **" for i in range(1000)]
    assert threads_in_flight < THREAD_ALLOWANCE
    assert re.search(r"^decorate +\| .* stopped received=1001 answered=1001 ", output.getvalue(), re.MULTILINE)
    assert leftovers(marked) == []
    assert not (tmp_path / "measurements.lp").exists(), "env= reaches every node"


def test_local_leaves_no_process_behind_when_the_block_raises(marked):
    quiet = io.StringIO()
    with pytest.raises(RuntimeError, match="user code failed"), krt_runner.local(GREETER, output=quiet):
        assert len(leftovers(marked)) == 4, "nats-server, greet, decorate and the gRPC entrypoint"
        raise RuntimeError("user code failed")

    assert leftovers(marked) == []


def test_a_script_that_never_closes_local_stops_it_in_order_when_it_exits(marked, tmp_path):
    script = (
        "import sys, krt_runner\n"
        f"krt = krt_runner.local({str(GREETER)!r}, env={NO_MEASUREMENTS!r}, output=sys.stderr)\n"
        "print(krt.workflow('greet').submit({'name': 'Ada'}).result(60).greeting)\n"
    )

    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=90)

    assert done.returncode == 0, done.stderr
    assert done.stdout == "** Hello, Ada! **\n"
    # The nodes drain through nats-server, stopped last (it went first when a pool's thread that started it ended).
    assert "could not drain" not in done.stderr and "warning" not in done.stderr
    assert done.stderr.rstrip().endswith("up         | nats-server stopped"), done.stderr[-2000:]
    assert leftovers(marked) == []


@pytest.fixture(scope="module")
def processor_krt(tmp_path_factory):
    """tests/handlers/classifier.py under local(): rejects names starting with 'bad', fails on 'boom'."""
    folder = one_node_krt(tmp_path_factory.mktemp("classifier"), HANDLERS / "classifier.py", name="classify")
    with krt_runner.local(folder, env=NO_MEASUREMENTS, output=io.StringIO()) as krt:
        yield krt


def test_as_completed_yields_every_future_once_with_answers_and_typed_errors(processor_krt):
    classify = processor_krt.workflow("main")
    futures = {classify.submit(greeter_pb2.Request(name=name)): name for name in ("Ada", "boom", "bad-one", "Bob")}

    outcomes = {}
    for future in krt_runner.as_completed(futures, timeout=ANSWER_TIMEOUT):
        error = future.exception()
        outcomes[futures[future]] = error if error is not None else future.result().greeting

    assert outcomes["Ada"] == "Hello, Ada! setups=1"
    assert outcomes["Bob"] == "Hello, Bob! setups=1"
    assert isinstance(outcomes["boom"], ErrorAnswer)
    assert outcomes["boom"].error == "error in node 'classify': handler raised RuntimeError: boom requested"
    assert isinstance(outcomes["bad-one"], ErrorAnswer)
    assert "invalid request: ValueError: name 'bad-one' is not allowed" in outcomes["bad-one"].error
    with pytest.raises(ErrorAnswer):
        next(future for future, name in futures.items() if name == "boom").result()


def test_wait_first_completed_returns_as_soon_as_one_is_answered(processor_krt):
    classify = processor_krt.workflow("main")
    futures = [classify.submit({"name": f"w{i}"}) for i in range(3)]  # fields as a dict work too

    done, _ = krt_runner.wait(futures, timeout=ANSWER_TIMEOUT, return_when=concurrent.futures.FIRST_COMPLETED)
    all_done, not_done = krt_runner.wait(futures, timeout=ANSWER_TIMEOUT)

    assert done and done <= all_done and not not_done
    assert all(future.done() for future in futures)


async def test_futures_are_awaitable_in_async_code(processor_krt):
    classify = processor_krt.workflow("main")

    answers = await asyncio.gather(*(classify.submit(greeter_pb2.Request(name=n)) for n in ("Ada", "Bob")))

    assert [answer.greeting for answer in answers] == ["Hello, Ada! setups=1", "Hello, Bob! setups=1"]


def test_a_request_of_the_wrong_type_is_refused_at_submit(processor_krt):
    with pytest.raises(TypeError, match=r"takes a greeter\.Request, not a greeter\.Response"):
        processor_krt.workflow("main").submit(greeter_pb2.Response())
    with pytest.raises(KeyError, match="no workflow 'nope'"):
        processor_krt.workflow("nope")


def test_a_node_that_exits_fails_pending_and_later_futures_with_its_exit_code_and_last_lines(tmp_path, marked):
    folder = one_node_krt(tmp_path, CRASH, name="crash")

    with krt_runner.local(folder, env=NO_MEASUREMENTS, output=io.StringIO()) as krt:
        main = krt.workflow("main")
        assert main.submit({"name": "fine"}).result(ANSWER_TIMEOUT).greeting == "fine"
        crashed = main.submit({"name": "crash"})
        with pytest.raises(CallError) as caught:
            crashed.result(ANSWER_TIMEOUT)
        later = main.submit({"name": "fine"})

    assert not isinstance(caught.value, ErrorAnswer)
    assert str(caught.value).startswith("crash exited with code 3; its last lines:")
    assert "about to crash" in str(caught.value)
    assert later.exception(ANSWER_TIMEOUT) is caught.value
    assert leftovers(marked) == []


def test_local_raises_with_the_reason_when_the_krt_cannot_start(tmp_path, marked):
    folder = one_node_krt(tmp_path, "def init(ctx):\n    raise RuntimeError('no model')\n\n\ndef handler(ctx, d):\n"
                          "    return d\n")  # fmt: skip

    with pytest.raises(KrtRunnerError) as caught:
        krt_runner.local(folder, env=NO_MEASUREMENTS, output=io.StringIO())

    assert "cannot start" in str(caught.value) and "node exited with code 1" in str(caught.value)
    assert "no model" in str(caught.value)
    assert leftovers(marked) == []


def test_local_not_ready_in_time_names_its_own_ready_timeout_not_ups_flag(tmp_path, marked):
    folder = one_node_krt(tmp_path, "import time\n\n\ndef init(ctx):\n    time.sleep(30)\n\n\n"
                          "def handler(ctx, d):\n    return d\n")  # fmt: skip

    with pytest.raises(KrtRunnerError, match=re.escape("(see local()'s ready_timeout)")):
        krt_runner.local(folder, env=NO_MEASUREMENTS, output=io.StringIO(), ready_timeout=1)
    assert leftovers(marked) == []


def test_local_runs_a_krt_package(tmp_path, marked):
    package = tmp_path / "greeter.krt"
    built = subprocess.run([*KRT_RUNNER, "build", str(GREETER), "--output", str(package)], capture_output=True)
    assert built.returncode == 0, built.stderr

    with krt_runner.local(package, env=NO_MEASUREMENTS, output=io.StringIO()) as krt:
        answer = krt.workflow("greet").submit({"name": "Ada"}).result(ANSWER_TIMEOUT)
        unpacked = krt.krt.directory

    assert answer.greeting == "** Hello, Ada! **"
    assert not unpacked.exists()


def test_connect_attaches_to_a_krt_that_up_is_running(tmp_path):
    up = UpRun(str(GREETER), cwd=tmp_path)
    try:
        args = shlex.split(up.wait_for_call_line())
        with krt_runner.connect(args[args.index("--nats") + 1], GREETER) as krt:
            answer = krt.workflow("greet").submit(greeter_pb2.Request(name="Grace")).result(ANSWER_TIMEOUT)
    finally:
        up.stop()

    assert answer.greeting == "** Hello, Grace! **"
    assert up.process.returncode == 0
    assert leftovers(up.marker) == []
