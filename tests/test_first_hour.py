"""Bugs a newcomer met in the first hour (issue 26), each pinned by a test."""

from __future__ import annotations

import pytest
from conftest import ROOT, greeter_pb2, node_env

from krt_runner.config import load_settings
from krt_runner.errors import ConfigError

HANDLERS = ROOT / "tests" / "handlers"


@pytest.mark.parametrize("url", ["nats//127.0.0.1:4222", "127.0.0.1/4222"])
def test_a_nats_url_that_lost_its_scheme_colon_is_refused(url):
    with pytest.raises(ConfigError, match="is not a NATS URL"):
        load_settings(env={"KRT_NATS_SERVER": url, "KRT_NATS_INPUT": "in", "KRT_HANDLER_PATH": "x.py"})


def test_a_host_and_port_without_a_scheme_is_still_a_nats_url():
    settings = load_settings(env={"KRT_NATS_SERVER": "127.0.0.1:4222", "KRT_NATS_INPUT": "in", "KRT_HANDLER_PATH": "x"})

    assert settings.nats_servers == ("nats://127.0.0.1:4222",)


async def test_without_uvloop_a_handlers_traceback_does_not_start_with_uvloops_import_error(
    nats_server, start_node, requester, tmp_path
):
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['uvloop'] = None\n")  # no speed extra
    env = node_env(nats_server, HANDLERS, "behaviours.py", input="default-loop", name="n")
    node = start_node(**env, PYTHONPATH=str(tmp_path))

    answer = await requester.greet("default-loop", "boom")

    assert "boom requested" in answer.error
    node.wait_for_line("ValueError: boom requested")  # the traceback, logged once the error answer is out
    assert "uvloop" not in node.output, [line for line in node.lines if "uvloop" in line]




GREET = """
    import json
    import uuid

    from greeter_pb2 import Request


    async def handler(ctx, req: Request) -> Request:
        json.dumps({})
        return Request(name=f"{req.name}>{uuid.uuid4().hex[:0]}{__name__.rsplit('_', 1)[-1]}")
"""
STDLIB_NAMES = ["json", "uuid", "types", "string", "random", "email", "logging", "time", "signal"]


@pytest.mark.parametrize("stem", STDLIB_NAMES)
async def test_a_handler_named_like_a_standard_library_module_loads_and_answers(
    nats_server, start_node, requester, handler_dir, stem
):
    base = handler_dir(GREET, name=f"{stem}.py")
    start_node(**node_env(nats_server, base, f"src/{stem}.py", input=f"std-{stem}"))

    answer = await requester.greet(f"std-{stem}", "Ada")

    assert answer.error == ""
    assert greeter_pb2.Request.FromString(answer.payload.value).name == f"Ada>{stem}"


def test_check_imports_a_handler_named_like_a_standard_library_module(tmp_path, handler_dir):
    import subprocess
    import sys

    base = handler_dir(GREET, name="json.py")
    (base / "krt.yml").write_text(KRT_YML)
    (base / "proto").mkdir()
    (base / "proto" / "greeter.proto").write_text("syntax = \"proto3\";\n")

    done = subprocess.run([sys.executable, "-m", "krt_runner", "check", str(base)], capture_output=True, text=True,
                          timeout=60)

    assert done.returncode == 0, done.stderr


KRT_YML = """\
version: std-v1
description: a node named like the json module
entrypoint: {proto: proto/greeter.proto, image: konstellation/kre-entrypoint:latest}
nodes:
  - {name: json-node, image: krt-runner:dev, src: src/json.py}
workflows:
  - {name: greet, entrypoint: Greet, sequential: [json-node]}
"""
