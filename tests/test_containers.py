"""The Dockerfile and examples/greeter/docker-compose.yml, checked statically (no Docker engine here).

The compose file must wire the nodes exactly as `krt-runner up` does: the same
services, subjects and KRT_* variables, from the same krt.yml.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from conftest import ROOT

from krt_runner.krt.krt_reader import load_krt
from krt_runner.krt.model import wiring

GREETER = ROOT / "examples" / "greeter"
# The services that are not nodes.
INFRASTRUCTURE = {"nats", "influxdb", "entrypoint"}


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


@pytest.fixture(scope="module")
def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions(ROOT / "Dockerfile")
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[last_from:]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((GREETER / "docker-compose.yml").read_text())


def test_the_image_runs_krt_runner_as_pid_1_in_exec_form(final_stage):
    entrypoints = [args for name, args in final_stage if name == "ENTRYPOINT"]

    assert len(entrypoints) == 1
    assert json.loads(entrypoints[0]) == ["krt-runner", "run"]  # a JSON array: no shell in between
    assert not [args for name, args in final_stage if name == "CMD"]


def test_the_image_is_slim_and_runs_as_a_non_root_user(final_stage):
    users = [args for name, args in final_stage if name == "USER"]

    assert "-slim" in final_stage[0][1]
    assert users and users[-1].split(":")[0] not in ("root", "0")


def test_the_image_has_a_health_check_using_the_health_file(final_stage):
    healthcheck = next(args for name, args in final_stage if name == "HEALTHCHECK")
    env = " ".join(args for name, args in final_stage if name == "ENV")

    assert json.loads(healthcheck.split("CMD", 1)[1]) == ["krt-runner", "health"]
    assert "KRT_HEALTH_FILE=" in env


def test_what_the_image_copies_exists_and_the_rest_is_ignored():
    copies = [args.split() for name, args in dockerfile_instructions(ROOT / "Dockerfile") if name == "COPY"]
    sources = [part for args in copies if not args[0].startswith("--from") for part in args[:-1]]
    ignored = (ROOT / ".dockerignore").read_text().split()

    assert sources and all((ROOT / source).exists() for source in sources), sources
    assert {".git", ".venv", "tests"} <= set(ignored)


def test_compose_has_one_service_per_node_of_krt_yml(compose):
    labels = {wired.label for wired in wiring(load_krt(GREETER))}

    assert set(compose["services"]) - INFRASTRUCTURE == labels


def test_compose_wires_each_node_exactly_as_up_does(compose):
    for wired in wiring(load_krt(GREETER)):
        service = compose["services"][wired.label]
        expected = wired.environment(nats_url="nats://nats:4222", base_path="/krt", config={})

        shown = {key: str(value) for key, value in service["environment"].items() if key in expected}

        assert shown == expected, wired.label


def test_compose_nodes_reach_nats_and_influxdb_with_the_initialised_org_bucket_and_token(compose):
    influx = compose["services"]["influxdb"]["environment"]
    for wired in wiring(load_krt(GREETER)):
        env = compose["services"][wired.label]["environment"]

        assert urlsplit(env["KRT_NATS_SERVER"]).hostname in compose["services"]
        assert urlsplit(env["KRT_INFLUX_URI"]).hostname == "influxdb"
        assert influx["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
        assert env["KRT_INFLUX_ORG"] == influx["DOCKER_INFLUXDB_INIT_ORG"]
        assert env["KRT_INFLUX_BUCKET"] == influx["DOCKER_INFLUXDB_INIT_BUCKET"]
        assert env["KRT_INFLUX_TOKEN"] == influx["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]


def test_compose_nodes_run_the_repository_image_with_the_example_mounted_at_the_base_path(compose):
    for wired in wiring(load_krt(GREETER)):
        service = compose["services"][wired.label]
        source, target = service["volumes"][0].split(":")[:2]

        assert (GREETER / service["build"]["context"] / "Dockerfile").resolve() == ROOT / "Dockerfile"
        assert (GREETER / source).resolve() == GREETER
        assert target == service["environment"]["KRT_BASE_PATH"]
        assert (GREETER / source / wired.node.src).is_file()


def test_the_image_serves_the_entrypoint_port_and_installs_the_entrypoint_extra():
    instructions = dockerfile_instructions(ROOT / "Dockerfile")

    assert ("EXPOSE", "9000") in instructions
    extras = [args.split("=", 1)[1] for name, args in instructions if name == "ARG" and args.startswith("EXTRAS=")]
    assert extras and all("entrypoint" in value.split(",") for value in extras)


def test_compose_runs_the_entrypoint_from_the_same_image_on_port_9000_against_the_same_krt(compose):
    service = compose["services"]["entrypoint"]
    krt = load_krt(GREETER)

    assert service["entrypoint"] == ["krt-runner", "entrypoint", "/krt"]
    assert (GREETER / service["build"]["context"] / "Dockerfile").resolve() == ROOT / "Dockerfile"
    assert service["volumes"][0].split(":")[:2] == ["./", "/krt"]
    assert service["environment"]["KRT_VERSION"] == krt.version
    assert urlsplit(service["environment"]["KRT_NATS_SERVER"]).hostname in compose["services"]
    assert service["ports"] == ["127.0.0.1:9000:9000"]
