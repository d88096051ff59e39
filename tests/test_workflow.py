"""krt.yml (KRT v1): validation, subjects, the environment `up` gives nodes, `up`'s plan and `krt-runner check`."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT

from krt_runner.errors import KrtFileError, UpError
from krt_runner.krt.krt_reader import load_krt
from krt_runner.krt.model import NODE_WIRING, entry_subject, wiring
from krt_runner.local_krt.plan import UpOptions, make_plan, parse_replicas

GREETER = ROOT / "examples" / "greeter"
VALID: dict[str, Any] = {
    "version": "demo-v1",
    "description": "three steps",
    "entrypoint": {"proto": "proto/demo.proto", "image": "entrypoint:1"},
    "config": {"variables": ["API_KEY"], "files": ["CERT"]},
    "nodes": [
        {"name": "first", "image": "node:1", "src": "src/first.py"},
        {"name": "second", "image": "node:1", "src": "src/second.py", "gpu": True},
        {"name": "third", "image": "node:1", "src": "src/third.py"},
    ],
    "workflows": [{"name": "main", "entrypoint": "Run", "sequential": ["first", "second", "third"]}],
}
HANDLER = "def handler(ctx, data):\n    return data\n"

KrtFactory = Callable[..., Path]


@pytest.fixture
def krt_dir(tmp_path: Path) -> KrtFactory:
    """Write a KRT directory: ``VALID`` changed by ``edit``, with its proto and handler files."""

    def write(edit: Callable[[dict[str, Any]], None] | None = None, *, raw: str | None = None) -> Path:
        document = copy.deepcopy(VALID)
        if edit is not None:
            edit(document)
        (tmp_path / "proto").mkdir(exist_ok=True)
        (tmp_path / "proto" / "demo.proto").write_text('syntax = "proto3";\n')
        (tmp_path / "src").mkdir(exist_ok=True)
        for name in ("first", "second", "third"):
            (tmp_path / "src" / f"{name}.py").write_text(HANDLER)
        (tmp_path / "krt.yml").write_text(raw if raw is not None else yaml.safe_dump(document))
        return tmp_path

    return write


def problems_of(directory: Path) -> list[str]:
    with pytest.raises(KrtFileError) as caught:
        load_krt(directory)
    return caught.value.problems


def test_the_greeter_example_is_valid_and_wired_as_kre_v1():
    krt = load_krt(GREETER)

    wired = [(w.node.name, w.input, w.output) for w in wiring(krt)]

    assert wired == [
        ("greet", "greeter-v1-Greet-entrypoint", "greeter-v1-greet-decorate"),
        ("decorate", "greeter-v1-greet-decorate", ""),
    ]


def test_the_first_node_listens_where_a_kre_v1_entrypoint_publishes(krt_dir):
    krt = load_krt(krt_dir())

    assert entry_subject(krt.version, krt.workflows[0]) == "demo-v1-Run-entrypoint"
    assert wiring(krt)[0].input == "demo-v1-Run-entrypoint"


def test_each_node_reads_what_the_one_before_writes_and_the_last_answers_the_requester(krt_dir):
    wired = wiring(load_krt(krt_dir()))

    assert [w.output for w in wired] == ["demo-v1-main-second", "demo-v1-main-third", ""]
    assert [w.input for w in wired[1:]] == [w.output for w in wired[:-1]]


def test_a_node_environment_has_the_kre_v1_variables_and_the_config_values(krt_dir):
    wired = wiring(load_krt(krt_dir()))[1]

    env = wired.environment(nats_url="nats://nats:4222", base_path="/krt", config={"API_KEY": "k", "CERT": "pem"})

    assert env == {
        "KRT_NATS_SERVER": "nats://nats:4222",
        "KRT_NATS_INPUT": "demo-v1-main-second",
        "KRT_NATS_OUTPUT": "demo-v1-main-third",
        "KRT_BASE_PATH": "/krt",
        "KRT_HANDLER_PATH": "src/second.py",
        "KRT_NODE_NAME": "second",
        "KRT_WORKFLOW_NAME": "main",
        "KRT_VERSION": "demo-v1",
        "KRT_VERSION_ID": "demo-v1",
        "API_KEY": "k",
        "CERT": "pem",
    }
    assert set(env) - {"API_KEY", "CERT"} == set(NODE_WIRING)  # what check refuses as config names


def test_every_problem_is_reported_at_once_naming_the_field(krt_dir):
    def break_it(doc: dict[str, Any]) -> None:
        doc["version"] = "Demo_V1"
        doc["nodes"][1]["name"] = "first"
        doc["nodes"][2]["src"] = "src/missing.py"
        doc["workflows"][0]["sequential"].append("ghost")
        doc["config"]["variables"] = ["api-key"]
        del doc["description"]

    problems = problems_of(krt_dir(break_it))

    assert any(p.startswith("version: 'Demo_V1' is not a valid name") for p in problems)
    assert "description: is required" in problems
    assert "nodes: node 'first' appears 2 times; each must be unique" in problems
    assert any(p.startswith("nodes[2].src: 'src/missing.py' does not exist") for p in problems)
    assert "workflows[0].sequential[1]: node 'second' is not defined in nodes" in problems  # it was renamed
    assert "workflows[0].sequential[3]: node 'ghost' is not defined in nodes" in problems
    assert any(p.startswith("config.variables[0]: 'api-key'") for p in problems)
    assert len(problems) == 7


def test_the_error_message_names_the_file_and_lists_each_problem(krt_dir):
    directory = krt_dir(lambda doc: doc["workflows"][0].update(sequential=[]))

    with pytest.raises(KrtFileError) as caught:
        load_krt(directory)

    assert str(caught.value).startswith(f"{directory / 'krt.yml'} is invalid (1 problem(s)):")
    assert "workflows[0].sequential: must be a list with at least one entry" in str(caught.value)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d["workflows"].append(dict(d["workflows"][0])), "workflow name 'main' appears 2 times"),
        (lambda d: d["workflows"][0].update(sequential=["first", "first"]), "node 'first' appears 2 times"),
        (lambda d: d["workflows"][0].update(entrypoint="Run.now"), "must be letters, digits, '_' or '-'"),
        (lambda d: d["entrypoint"].update(proto="proto/demo.txt"), "must be a .proto file"),
        (lambda d: d["entrypoint"].update(proto="proto/other.proto"), "'proto/other.proto' does not exist"),
        (lambda d: d["nodes"][0].update(gpu="yes"), "nodes[0].gpu: must be true or false"),
        (lambda d: d["nodes"][0].update(subscriptions=["x"]), "nodes[0].subscriptions: is a KRT v2 field"),
        (lambda d: d.update(krtVersion="v2"), "krtVersion: is 'v2'"),
        (lambda d: d.update(extra=1), "extra: unknown field"),
        (lambda d: d["nodes"][0].update(name="a-very-long-node-name"), "at most 19 characters"),
    ],
    ids=[
        "duplicate-workflow",
        "node-twice-in-a-workflow",
        "entrypoint-with-a-dot",
        "proto-not-a-proto",
        "proto-missing",
        "gpu-not-a-bool",
        "krt-v2-field",
        "krt-v2-file",
        "unknown-field",
        "name-too-long",
    ],
)
def test_a_single_mistake_is_named(krt_dir, edit, expected):
    problems = problems_of(krt_dir(edit))

    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("version: [unclosed", "not valid YAML"), ("- a list", "(top level): must be a mapping")],
)
def test_a_file_that_is_not_a_krt_mapping_is_one_problem(krt_dir, raw, expected):
    problems = problems_of(krt_dir(raw=raw))

    assert any(expected in problem for problem in problems), problems


def test_a_directory_without_krt_yml_is_a_problem(tmp_path):
    (tmp_path / "handler.py").write_text("")

    assert problems_of(tmp_path) == ["does not exist: a KRT v1 directory has a krt.yml at its top"]
    assert problems_of(tmp_path / "missing") == ["no such folder"]
    assert problems_of(tmp_path / "handler.py") == [
        "is a file, not a KRT folder (a folder with krt.yml at its top, or a .krt)"]


# -- up's plan: checked before any process starts -----------------------------------------------


def test_up_plans_one_process_per_replica(krt_dir):
    plan = make_plan(UpOptions(directory=krt_dir(), replicas={"second": 3}), environ={"API_KEY": "k", "CERT": "c"})

    assert [label for _, label in plan.replicas] == ["first", "second#1", "second#2", "second#3", "third"]
    assert plan.config == {"API_KEY": "k", "CERT": "c"}


def test_up_lists_every_reason_it_cannot_start(krt_dir):
    directory = krt_dir(lambda doc: doc["nodes"][2].update(src="bin/third"))
    (directory / "bin").mkdir()
    (directory / "bin" / "third").write_text("")

    with pytest.raises(UpError) as caught:
        make_plan(UpOptions(directory=directory, replicas={"ghost": 2}, workflow="nope"), environ={"API_KEY": "k"})

    assert caught.value.problems == [
        "node 'third' (src bin/third) is not a Python node; krt-runner up runs Python nodes only",
        "--replicas ghost: no node 'ghost' in krt.yml",
        "config of krt.yml without a value: export CERT before krt-runner up",
        "--workflow nope: no such workflow (workflows: main)",
    ]


def test_replicas_flags_are_parsed_and_malformed_ones_named():
    assert parse_replicas(["greet=2", "decorate=1"]) == {"greet": 2, "decorate": 1}
    with pytest.raises(ValueError, match="expected NODE=N"):
        parse_replicas(["greet:2"])


# -- krt-runner check -------------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "krt_runner", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_check_passes_the_greeter_example_and_prints_its_wiring():
    done = run_cli("check", "examples/greeter")

    assert done.returncode == 0, done.stderr
    assert "greet/greet: greeter-v1-Greet-entrypoint -> greeter-v1-greet-decorate" in done.stdout


def test_check_imports_every_handler_without_running_init_and_reports_each_broken_one(krt_dir):
    directory = krt_dir()
    (directory / "src" / "first.py").write_text("def init(ctx):\n    raise SystemExit('init ran')\n" + HANDLER)
    (directory / "src" / "second.py").write_text("def handler(ctx, data)\n")
    (directory / "src" / "third.py").write_text(textwrap.dedent("import not_installed_anywhere\n" + HANDLER))

    done = run_cli("check", str(directory))

    assert done.returncode == 2
    assert "2 problem(s)" in done.stderr
    assert "node 'second': cannot load handler 'src/second.py': syntax error at line 1" in done.stderr
    assert "node 'third': cannot load handler 'src/third.py': import failed: ModuleNotFoundError" in done.stderr


def test_check_reports_krt_yml_problems_with_exit_code_2(krt_dir):
    done = run_cli("check", str(krt_dir(lambda doc: doc.pop("workflows"))))

    assert done.returncode == 2
    assert "workflows: must be a list with at least one entry" in done.stderr
