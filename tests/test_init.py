"""`krt-runner init NAME` (issue 26): from an empty folder to a checked KRT, an answer and a passing test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
from conftest import KRT_RUNNER
from up_helpers import leftovers, run_up


def run_cli(*args: str, cwd, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KRT_RUNNER, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def plain_pytest(*args: str, cwd) -> subprocess.CompletedProcess[str]:
    """pytest as a user runs it: no settings of this suite, no KRT_* variables."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("KRT_", "PYTEST_"))}
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_init_writes_a_krt_that_checks_answers_and_whose_test_passes_as_written(tmp_path):
    made = run_cli("init", "demo", cwd=tmp_path)

    assert made.returncode == 0, made.stderr
    assert made.stdout.splitlines()[-3:] == [
        "  krt-runner check demo", "  krt-runner up demo --request '{\"name\": \"Ada\"}'", "  pytest demo",
    ]
    assert (tmp_path / "demo" / "src" / "entrypoint_pb2.py").is_file()
    checked = run_cli("check", "demo", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    marker = uuid.uuid4().hex
    answered = run_up("demo", "--request", '{"name": "Ada"}', cwd=tmp_path, marker=marker)
    assert answered.returncode == 0, answered.stderr
    assert json.loads(answered.stdout) == {"greeting": "Hello, Ada!"}
    assert leftovers(marker) == []
    tested = plain_pytest("demo", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "2 passed" in tested.stdout
    assert "warning" not in (tested.stdout + tested.stderr).lower()  # pytest-asyncio's loop scope: in pytest.ini


def test_init_writes_into_an_empty_folder_and_leaves_no_staging_folder(tmp_path):
    (tmp_path / "empty").mkdir()

    made = run_cli("init", "empty", cwd=tmp_path)

    assert made.returncode == 0, made.stderr
    assert (tmp_path / "empty" / "krt.yml").read_text().count("version: empty-v1") == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty"]


def test_init_refuses_a_folder_that_is_not_empty_and_leaves_it_as_it_was(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")

    made = run_cli("init", "mine", cwd=tmp_path)

    assert made.returncode == 2
    assert "exists and is not an empty folder" in made.stderr
    assert [path.name for path in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mine"]


@pytest.mark.parametrize("name", ["Demo", "my_krt", "1st", "a-", "../up", "x" * 17, "a b"])
def test_init_refuses_a_name_that_is_not_a_krt_name(tmp_path, name):
    made = run_cli("init", name, cwd=tmp_path)

    assert made.returncode == 2
    assert "is not a KRT name: lowercase letters, digits and '-'" in made.stderr
    assert list(tmp_path.iterdir()) == []


def test_init_without_grpcio_tools_says_to_install_the_proto_extra(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text("import sys\nsys.modules['grpc_tools'] = None\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}

    made = run_cli("init", "demo", cwd=tmp_path, env=env)

    assert made.returncode == 2
    assert "grpcio-tools is not installed: install krt-runner with its proto extra" in made.stderr
    assert not (tmp_path / "demo").exists()
