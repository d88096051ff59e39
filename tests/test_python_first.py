"""Python-first nodes end to end: typed handlers, Processor classes, serve() and dev mode, idle shutdown.

Real nats-server, real `krt-runner run` and `python node.py` processes; each is stopped by the test.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import ROOT, NodeProcess, Requester, greeter_pb2, node_env, request_envelope, unpack

import krt_runner
from krt_runner.config import load_settings
from krt_runner.envelope import KreNatsMessage, decode
from krt_runner.errors import ConfigError

HANDLERS = ROOT / "tests" / "handlers"
# How long to keep listening for a second, unwanted answer.
SECOND_ANSWER_WINDOW = 0.5
# A dev-mode run starts nats-server, the node and answers: generous on a busy 2-core machine.
DEV_TIMEOUT = 60.0


async def all_answers(requester: Requester, subject: str, message) -> list[KreNatsMessage]:
    """Send one request; collect every answer until a quiet window after the first."""
    nc = requester.nc
    inbox = nc.new_inbox()
    received: list[KreNatsMessage] = []
    first = asyncio.Event()

    async def collect(msg) -> None:
        received.append(decode(msg.data, max_decompressed=1024 * 1024))
        first.set()

    sub = await nc.subscribe(inbox, cb=collect)
    await nc.publish(subject, request_envelope(message).SerializeToString(), reply=inbox)
    await asyncio.wait_for(first.wait(), timeout=10)
    await asyncio.sleep(SECOND_ANSWER_WINDOW)
    await sub.unsubscribe()
    return received


def json_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


# -- typed handlers ---------------------------------------------------------------------------------


async def test_typed_handlers_in_a_three_node_chain_receive_unpacked_requests(nats_server, start_node, requester):
    for name, subject_in, subject_out in [("a", "t1", "t2"), ("b", "t2", "t3"), ("c", "t3", "")]:
        start_node(**node_env(nats_server, HANDLERS, "typed.py", input=subject_in, output=subject_out, name=name))

    answer = await requester.greet("t1", "x")

    assert answer.error == ""
    assert unpack(answer, greeter_pb2.Request).name == "x>a>b>c"
    assert [entry.node_name for entry in answer.tracking] == ["entrypoint", "a", "b", "c"]


async def test_a_request_of_the_wrong_type_gets_one_error_answer_naming_both_types(nats_server, start_node, requester):
    start_node(**node_env(nats_server, HANDLERS, "typed.py", input="typed-in", name="typed"))

    answers = await all_answers(requester, "typed-in", greeter_pb2.Response(greeting="not a request"))
    after = await requester.greet("typed-in", "fine")

    assert len(answers) == 1
    assert answers[0].error == (
        "error in node 'typed': invalid request: expected greeter.Request, received greeter.Response"
    )
    assert unpack(after, greeter_pb2.Request).name == "fine>typed"


async def test_a_sync_handler_with_string_annotations_is_typed_too(nats_server, start_node, requester):
    start_node(**node_env(nats_server, HANDLERS, "typed_strings.py", input="s-in", name="strings"))

    answer = await requester.greet("s-in", "Ada")
    wrong = await requester.request("s-in", greeter_pb2.Response())

    assert unpack(answer, greeter_pb2.Response).greeting == "Hi, Ada! via strings"
    assert "expected greeter.Request, received greeter.Response" in wrong.error


# -- Processor classes -----------------------------------------------------------------------------


async def test_a_processor_rejects_an_invalid_request_and_accepts_the_next(
    nats_server, start_node, requester, tmp_path
):
    points = tmp_path / "points.lp"
    node = start_node(**node_env(
        nats_server, HANDLERS, "classifier.py", input="cls-in", name="classify",
        KRT_MEASUREMENTS_ENABLED="true", KRT_MEASUREMENTS_FILE=str(points),
    ))

    rejected = await all_answers(requester, "cls-in", greeter_pb2.Request(name="bad-name"))
    accepted = await requester.greet("cls-in", "Ada")
    failed = await requester.greet("cls-in", "boom")
    unreadable = await requester.request_raw("cls-in", b"\xff\xff not an envelope")
    node.signal()

    assert len(rejected) == 1
    assert rejected[0].error == "error in node 'classify': invalid request: ValueError: name 'bad-name' is not allowed"
    assert unpack(accepted, greeter_pb2.Response).greeting == "Hello, Ada! setups=1"
    assert failed.error == "error in node 'classify': handler raised RuntimeError: boom requested"
    assert node.wait() == 0
    errors = {line["event"]: line for line in json_lines(node.output) if line.get("level") == "error"}
    assert "exception" not in errors[rejected[0].error], "an invalid request is bad input: one line, no traceback"
    assert "RuntimeError: boom requested" in errors[failed.error]["exception"]
    elapsed = [line for line in points.read_text().splitlines() if line.startswith("node_elapsed_time")]
    errors_recorded = [found[1] if (found := re.search(r'error="(\w*)"', line)) else None for line in elapsed]
    assert "message is not a KreNatsMessage" in unreadable.error
    assert errors_recorded == ["invalid", None, "failed", "invalid"], elapsed  # refused before the handler ran


async def test_path_colon_class_names_the_processor_to_run(nats_server, start_node, requester):
    start_node(**node_env(nats_server, HANDLERS, "processor_pair.py:Shout", input="shout-in", name="shout"))

    answer = await requester.greet("shout-in", "hey")
    rejected = await requester.greet("shout-in", "HEY")

    assert unpack(answer, greeter_pb2.Response).greeting == "HEY!"
    assert rejected.error == "error in node 'shout': invalid request: ValueError: already shouting"


# -- serve(): as a node, and local dev mode ---------------------------------------------------------


@pytest.fixture
def start_script(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Run ``python SCRIPT`` (a file calling krt_runner.local_krt.dev) with KRT_* variables, as a deployment would."""
    started: list[NodeProcess] = []

    def start(script: Path, **env_vars: str) -> NodeProcess:
        env = {key: value for key, value in os.environ.items() if not key.startswith("KRT_")}
        env.update({"KRT_LOG_FORMAT": "json", "KRT_MEASUREMENTS_ENABLED": "false", **env_vars})
        node = NodeProcess([sys.executable, str(script)], env, cwd=tmp_path)
        started.append(node)
        node.wait_for_line('"node ready"')
        return node

    yield start
    for node in started:
        node.stop()


async def test_serve_runs_the_file_as_a_node_when_krt_settings_are_present(nats_server, start_script, requester):
    env = node_env(nats_server, HANDLERS, "unused", input="served-in", name="served")
    del env["KRT_HANDLER_PATH"]  # serve() is given the code: no handler path needed
    node = start_script(HANDLERS / "classifier.py", **env)

    answer = await requester.greet("served-in", "Ada")
    node.signal()

    assert unpack(answer, greeter_pb2.Response).greeting == "Hello, Ada! setups=1"
    assert node.wait() == 0


@pytest.fixture
def run_dev(tmp_path: Path) -> Iterator[Callable[..., subprocess.CompletedProcess[str]]]:
    """Run ``python SCRIPT ARGS`` with no KRT_* variables (dev mode), feeding ``stdin``."""
    running: list[subprocess.Popen[str]] = []

    def run(script: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("KRT_")}
        process = subprocess.Popen(
            [sys.executable, str(script), *args], env=env, cwd=tmp_path, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        running.append(process)
        out, err = process.communicate(stdin, timeout=DEV_TIMEOUT)
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    yield run
    for process in running:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # dev mode stops its nats-server on SIGTERM
            try:
                process.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()


def dev_server_port(stderr: str) -> int:
    found = re.search(r"nats://127\.0\.0\.1:(\d+)", stderr)
    assert found, f"no server URL in the logs:\n{stderr}"
    return int(found.group(1))


def test_dev_mode_answers_a_request_given_on_the_command_line(run_dev):
    result = run_dev(HANDLERS / "classifier.py", "--request", '{"name": "Ada"}')

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ['{"greeting": "Hello, Ada! setups=1"}']
    assert "node ready" in result.stderr and not result.stderr.lstrip().startswith("{"), "logs read as text"
    with pytest.raises(OSError):  # the embedded nats-server was stopped too
        socket.create_connection(("127.0.0.1", dev_server_port(result.stderr)), timeout=2).close()


def test_dev_mode_answers_each_stdin_line_with_one_json_line(run_dev):
    lines = ['{"name": "Ada"}', '{"name": "bad-one"}', "", "{not json", '{"name": "boom"}', '{"name": "Bob"}']

    result = run_dev(HANDLERS / "classifier.py", stdin="\n".join(lines) + "\n")

    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert answers[0] == {"greeting": "Hello, Ada! setups=1"}
    assert answers[1] == {
        "error": "error in node 'classifier': invalid request: ValueError: name 'bad-one' is not allowed"
    }
    assert answers[2]["error"].startswith("request is not a greeter.Request in JSON:")
    assert answers[3] == {"error": "error in node 'classifier': handler raised RuntimeError: boom requested"}
    assert answers[4] == {"greeting": "Hello, Bob! setups=1"}
    assert len(answers) == 5
    assert result.returncode == 1, "some requests failed"


def test_dev_mode_serves_a_typed_handler_function_with_its_init(run_dev):
    result = run_dev(HANDLERS / "typed_strings.py", "--request", '{"name": "Ada"}', "--request", "{}")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ['{"greeting": "Hi, Ada! via node"}', '{"greeting": "Hi, ! via node"}']


def test_dev_mode_answers_through_a_processor_s_process_batch_after_its_validate(run_dev):
    result = run_dev(HANDLERS / "batch_processor.py", "--request", '{"name": "Ada"}', "--request", '{"name": "bad"}')

    assert result.stdout.splitlines() == [
        '{"greeting": "Hello, Ada! batch of 1"}',
        '{"error": "error in node \'batch_processor\': invalid request: ValueError: name \'bad\' is not allowed"}',
    ]
    assert result.returncode == 1, "a request failed"
    assert "requests are handled in batches" in result.stderr


def test_dev_mode_serves_a_module_s_handler_batch_given_to_serve(run_dev, handler_dir):
    base = handler_dir(
        """
        import krt_runner
        from greeter_pb2 import Request, Response

        async def handler_batch(ctx, requests: list[Request]) -> list[Response]:
            return [Response(greeting=f"Hi, {req.name} ({len(ctx.tracking_ids)} in batch)") for req in requests]

        if __name__ == "__main__":
            krt_runner.serve(handler_batch=handler_batch)
        """
    )

    result = run_dev(base / "src" / "node.py", "--request", '{"name": "Ada"}')

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ['{"greeting": "Hi, Ada (1 in batch)"}']


def test_dev_mode_with_an_untyped_handler_says_what_to_annotate(run_dev, handler_dir):
    base = handler_dir(
        """
        import krt_runner

        def handler(ctx, data):
            return data

        if __name__ == "__main__":
            krt_runner.serve(handler)
        """
    )

    result = run_dev(base / "src" / "node.py", "--request", "{}")

    assert result.returncode == 2
    assert "dev mode needs the request type" in result.stderr and "req: Request" in result.stderr
    assert result.stdout == ""


def test_dev_mode_answers_ctx_db_from_a_local_store_as_up_does(run_dev, handler_dir, tmp_path):
    base = handler_dir(
        """
        import json
        import krt_runner
        from greeter_pb2 import Request, Response

        async def handler(ctx, req: Request) -> Response:
            await ctx.db.save("people", {"name": req.name})
            return Response(greeting=json.dumps(await ctx.db.find("people", {"name": req.name})))

        if __name__ == "__main__":
            krt_runner.serve(handler)
        """
    )

    result = run_dev(base / "src" / "node.py", "--request", '{"name": "Ada"}', "--request", '{"name": "Ada"}')

    assert result.returncode == 0, result.stderr
    found = [json.loads(json.loads(line)["greeting"]) for line in result.stdout.splitlines()]
    assert found == [[{"_id": 1, "name": "Ada"}], [{"_id": 1, "name": "Ada"}, {"_id": 2, "name": "Ada"}]]
    assert f"documents go to {tmp_path / 'data.sqlite'}" in result.stderr


# -- idle shutdown ----------------------------------------------------------------------------------

IDLE_TIMEOUT = 2.0
# Exit is due at the timeout; allow for drain, close and a loaded machine on top.
IDLE_SLACK = 5.0
# The test sees "node ready" (or the answer) a little after the node's idle clock starts.
IDLE_EARLY_SLACK = 0.5


def idle_node_env(server) -> dict:
    return node_env(server, HANDLERS, "typed.py", input="idle-in", KRT_IDLE_TIMEOUT=str(IDLE_TIMEOUT))


@pytest.mark.parametrize(("raw", "expected"), [(None, None), ("0", None), ("2.5", 2.5)])
def test_idle_timeout_is_off_by_default_and_0_turns_it_off(raw, expected):
    env = {"KRT_NATS_SERVER": "nats://127.0.0.1:4222", "KRT_NATS_INPUT": "in", "KRT_HANDLER_PATH": "src/node.py"}
    if raw is not None:
        env["KRT_IDLE_TIMEOUT"] = raw

    assert load_settings(env).idle_timeout == expected


def test_a_negative_idle_timeout_is_a_settings_error():
    env = {"KRT_NATS_SERVER": "nats://127.0.0.1:4222", "KRT_NATS_INPUT": "in", "KRT_HANDLER_PATH": "src/node.py"}

    with pytest.raises(ConfigError, match=r"KRT_IDLE_TIMEOUT \(--idle-timeout\)='-1' is invalid"):
        load_settings({**env, "KRT_IDLE_TIMEOUT": "-1"})


async def test_an_idle_node_drains_and_exits_0_after_its_idle_timeout(nats_server, start_node):
    node = start_node(**idle_node_env(nats_server))
    ready_at = time.monotonic()

    code = await asyncio.to_thread(node.wait, IDLE_TIMEOUT + IDLE_SLACK + 10)
    waited = time.monotonic() - ready_at

    assert code == 0
    assert IDLE_TIMEOUT - IDLE_EARLY_SLACK <= waited <= IDLE_TIMEOUT + IDLE_SLACK
    reasons = [line for line in json_lines(node.output) if line["event"].startswith("idle timeout")]
    assert reasons and reasons[0]["idle_timeout"] == IDLE_TIMEOUT
    assert any(line["event"] == "stopped" for line in json_lines(node.output))


async def test_a_message_restarts_the_idle_clock(nats_server, start_node, requester):
    node = start_node(**idle_node_env(nats_server))
    await asyncio.sleep(IDLE_TIMEOUT / 2)

    answer = await requester.greet("idle-in", "still wanted")
    answered_at = time.monotonic()
    code = await asyncio.to_thread(node.wait, IDLE_TIMEOUT + IDLE_SLACK + 10)
    waited = time.monotonic() - answered_at

    assert unpack(answer, greeter_pb2.Request).name.startswith("still wanted>")
    assert code == 0
    assert IDLE_TIMEOUT - IDLE_EARLY_SLACK <= waited <= IDLE_TIMEOUT + IDLE_SLACK


def test_local_refuses_an_unknown_delivery_before_starting_anything():
    with pytest.raises(ValueError, match="delivery must be one of at-most-once, at-least-once, not 'exactly-once'"):
        krt_runner.local(ROOT / "examples" / "greeter", delivery="exactly-once")
