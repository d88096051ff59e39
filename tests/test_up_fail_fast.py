"""`up` and `check` say what is wrong before starting anything (issue 26): no NATS at --nats, a handler that does not
import, config without a value, another up on the same server; and --workflow starts that workflow's nodes only."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import ROOT
from entrypoint_helpers import write_krt
from up_helpers import UpRun, leftovers, run_up, up_env

from krt_runner.local_krt.embedded import EmbeddedNats, free_port

GREETER = ROOT / "examples" / "greeter"


def copy_of_greeter(tmp_path):
    target = tmp_path / "greeter"
    shutil.copytree(GREETER, target, ignore=shutil.ignore_patterns("__pycache__", "dist"))
    return target


def test_up_with_no_nats_server_at_the_url_exits_2_at_once_and_starts_nothing(tmp_path):
    url = f"nats://127.0.0.1:{free_port()}"
    marker = uuid.uuid4().hex
    started = time.monotonic()

    done = run_up(str(GREETER), "--nats", url, cwd=tmp_path, marker=marker)

    assert done.returncode == 2, done.stderr
    assert time.monotonic() - started < 15
    assert f"krt-runner up: no NATS server answered at {url} (Connection refused)" in done.stderr
    assert "starting" not in done.stderr
    assert leftovers(marker) == []


def test_up_refuses_a_handler_that_does_not_import_before_starting_nats_or_any_node(tmp_path):
    krt = copy_of_greeter(tmp_path)
    (krt / "src" / "decorate.py").write_text("def handler(ctx, data:\n    return data\n")

    done = run_up(str(krt), "--request", '{"name": "Ada"}', cwd=tmp_path, marker=uuid.uuid4().hex)

    assert done.returncode == 2
    assert "node 'decorate': cannot load handler 'src/decorate.py': syntax error at line 1" in done.stderr
    assert "nats-server" not in done.stderr and "starting" not in done.stderr


def krt_with_config(tmp_path):
    krt = copy_of_greeter(tmp_path)
    text = (krt / "krt.yml").read_text().replace("variables: []", "variables: [GREETING_API_KEY]")
    (krt / "krt.yml").write_text(text)
    return krt


def run_check(krt, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {key: value for key, value in os.environ.items() if key != "GREETING_API_KEY"}
    return subprocess.run([sys.executable, "-m", "krt_runner", "check", str(krt)], env={**environ, **env},
                          capture_output=True, text=True, timeout=60)


def test_check_warns_about_a_config_variable_without_a_value_and_still_passes(tmp_path):
    krt = krt_with_config(tmp_path)

    done = run_check(krt)

    assert done.returncode == 0, done.stderr
    assert "warning: config of krt.yml without a value here: GREETING_API_KEY" in done.stderr
    assert "OK" in done.stdout


def test_check_says_nothing_about_config_that_has_a_value(tmp_path):
    done = run_check(krt_with_config(tmp_path), GREETING_API_KEY="secret")

    assert done.returncode == 0 and "warning" not in done.stderr


def test_check_refuses_a_config_variable_named_like_a_nodes_wiring(tmp_path):
    krt = copy_of_greeter(tmp_path)
    names = "[KRT_NATS_INPUT, KRT_LOG_LEVEL, KRT_DELIVERY]"
    (krt / "krt.yml").write_text((krt / "krt.yml").read_text().replace("variables: []", f"variables: {names}"))

    done = run_check(krt, KRT_NATS_INPUT="shared", KRT_LOG_LEVEL="info", KRT_DELIVERY="at-least-once")

    assert done.returncode == 2, done.stderr
    assert "config.variables[0]: 'KRT_NATS_INPUT' is set by krt-runner for each node (its wiring)" in done.stderr
    assert "config.variables[2]: 'KRT_DELIVERY' is set on every node by up's and manifests' --delivery" in done.stderr
    assert "KRT_LOG_LEVEL" not in done.stderr  # a setting every node may share


def test_a_second_up_on_the_same_nats_server_warns_that_the_entry_subject_already_has_responders(tmp_path):
    with EmbeddedNats() as server:
        first = UpRun(str(GREETER), "--nats", server.url, "--no-entrypoint", cwd=tmp_path)
        try:
            first.wait_for_call_line()

            second = run_up(str(GREETER), "--nats", server.url, "--request", '{"name": "Ada"}', cwd=tmp_path,
                            marker=uuid.uuid4().hex)
        finally:
            first.stop()

    assert second.returncode == 0, second.stderr
    assert "warning: something already takes requests on greeter-v1-Greet-entrypoint" in second.stderr
    assert "warning" not in "\n".join(first.err)


def test_at_least_once_up_warns_of_a_running_up_only_and_never_feeds_its_probe_to_the_first_node(tmp_path):
    at_least_once = ("--delivery", "at-least-once", "--request", '{"name": "Ada"}')
    with EmbeddedNats(jetstream=True) as server:
        first = run_up(str(GREETER), "--nats", server.url, *at_least_once, cwd=tmp_path, marker=uuid.uuid4().hex)
        again = run_up(str(GREETER), "--nats", server.url, *at_least_once, cwd=tmp_path, marker=uuid.uuid4().hex)
        running = UpRun(str(GREETER), "--nats", server.url, "--delivery", "at-least-once", "--no-entrypoint",
                        cwd=tmp_path)
        try:
            running.wait_for_call_line()
            beside = run_up(str(GREETER), "--nats", server.url, *at_least_once, cwd=tmp_path,
                            marker=uuid.uuid4().hex)
        finally:
            running.stop()

    assert [first.returncode, again.returncode, beside.returncode] == [0, 0, 0], beside.stderr
    # The streams stay between runs; a probe request would be stored, warn of a responder and reach greet as junk.
    assert "warning" not in again.stderr and " errors=0 " in again.stderr, again.stderr
    assert "not a KreNatsMessage" not in again.stderr
    assert "warning: something already takes requests on greeter-v1-Greet-entrypoint" in beside.stderr


def test_up_refuses_more_node_processes_than_one_machine_runs_before_starting_any(tmp_path):
    marker = uuid.uuid4().hex
    started = time.monotonic()
    done = run_up(str(GREETER), "--replicas", "greet=2147483647", "--no-entrypoint", cwd=tmp_path, marker=marker)

    assert done.returncode == 2 and time.monotonic() - started < 30  # counted, not one entry made per process
    assert "2147483648 node processes asked for (replicas of krt.yml and --replicas): up runs each on this machine, " \
           "at most 64" in done.stderr
    assert "starting" not in done.stderr and leftovers(marker) == []


def test_up_with_workflow_starts_the_nodes_of_that_workflow_only(tmp_path):
    krt = write_krt(tmp_path / "two", workflows=("Greet", "Absent"))

    done = run_up(str(krt), "--workflow", "absent", "--request", '{"name": "Ada"}', cwd=tmp_path,
                  marker=uuid.uuid4().hex)

    assert done.returncode == 0, done.stderr
    assert "starting absent-greet" in done.stderr
    assert "greet-greet" not in done.stderr
    assert "all 1 node processes ready" in done.stderr


def test_up_on_a_server_with_a_password_in_its_url_never_prints_the_password(tmp_path):
    with EmbeddedNats(extra_args=["--user", "alice", "--pass", "s3cret-pw"]) as server:
        url = server.url.replace("nats://", "nats://alice:s3cret-pw@")
        done = run_up(str(GREETER), "--nats", url, "--request", '{"name": "Ada"}', cwd=tmp_path,
                      marker=uuid.uuid4().hex)

    assert done.returncode == 0, done.stderr
    assert "using NATS at nats://alice:***@" in done.stderr
    assert "s3cret-pw" not in done.stderr + done.stdout


@pytest.mark.parametrize(("password", "code"), [("s3cret-pw", 0), ("wrong", 2)])
def test_up_on_a_server_of_its_own_logs_in_with_krt_nats_user_and_password_as_its_nodes_do(tmp_path, password, code):
    marker = uuid.uuid4().hex
    with EmbeddedNats(extra_args=["--user", "alice", "--pass", "s3cret-pw"]) as server:
        done = run_up(str(GREETER), "--nats", server.url, "--request", '{"name": "Ada"}', cwd=tmp_path,
                      marker=marker, KRT_NATS_USER="alice", KRT_NATS_PASSWORD=password)

    assert done.returncode == code, done.stderr
    if code:
        assert "the server refused the credentials (Authorization Violation); check KRT_NATS_USER" in done.stderr
        assert "starting" not in done.stderr
    assert password not in done.stderr
    assert leftovers(marker) == []


def test_check_and_up_run_alike_from_a_folder_whose_python_files_are_named_like_modules(tmp_path):
    # the stdlib's, an optional dependency's, the launcher's own, one protoc imports
    for name in ("inspect", "uvloop", "runpy", "random"):
        (tmp_path / f"{name}.py").write_text(f"raise SystemExit('{name} shadowed from the current folder')\n")
    console_script = str(Path(sys.executable).parent / "krt-runner")  # as a user runs it: not python -m, which would
    marker = uuid.uuid4().hex  # itself import from the current folder

    checked = subprocess.run([console_script, "check", str(GREETER)], cwd=tmp_path, capture_output=True, text=True,
                             timeout=120, env=up_env(marker))
    done = subprocess.run([console_script, "up", str(GREETER), "--request", '{"name": "Ada"}'], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=up_env(marker))

    assert checked.returncode == 0, checked.stderr
    assert done.returncode == 0, done.stderr
    assert '"greeting": "** Hello, Ada! **"' in done.stdout
    assert "shadowed" not in checked.stderr + done.stderr
    assert "krt-runner entrypoint would refuse" not in checked.stderr  # protoc ran
    assert leftovers(marker) == []


def test_check_imports_a_handler_from_the_users_pythonpath_under_pythonsafepath_too(tmp_path):
    krt = copy_of_greeter(tmp_path)
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "helper_from_pythonpath.py").write_text("GREETING = 'Hello'\n")
    greet = krt / "src" / "greet.py"
    greet.write_text("import helper_from_pythonpath\n" + greet.read_text())
    env = {**up_env(uuid.uuid4().hex), "PYTHONSAFEPATH": "1", "PYTHONPATH": str(tmp_path / "lib")}

    checked = subprocess.run([sys.executable, "-m", "krt_runner", "check", str(krt)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120, env=env)

    assert checked.returncode == 0, checked.stderr  # the first PYTHONPATH folder is not taken for the current one
