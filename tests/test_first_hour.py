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


def copy_of_greeter(tmp_path):
    import shutil

    target = tmp_path / "greeter"
    shutil.copytree(ROOT / "examples" / "greeter", target, ignore=shutil.ignore_patterns("__pycache__", "dist"))
    return target


def run_cli(*args, cwd):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "krt_runner", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_check_reports_a_workflow_entrypoint_that_is_no_rpc_of_the_entrypoint_service(tmp_path):
    krt = copy_of_greeter(tmp_path)
    krt_yml = krt / "krt.yml"
    krt_yml.write_text(krt_yml.read_text().replace("entrypoint: Greet", "entrypoint: GreetTypo"))

    done = run_cli("check", str(krt), cwd=tmp_path)

    assert done.returncode == 2
    assert "workflows[0].entrypoint: 'GreetTypo' is not an rpc of service Entrypoint in src/greeter_pb2.py" \
        " (rpcs: Greet)" in done.stderr


def test_build_leaves_out_the_measurements_file_a_local_run_wrote(tmp_path):
    import tarfile

    krt = copy_of_greeter(tmp_path)
    (krt / "measurements.lp").write_text("m f=1i 1\n" * 1000)

    done = run_cli("build", str(krt), "--output", str(tmp_path / "out.krt"), cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    with tarfile.open(tmp_path / "out.krt") as package:
        names = package.getnames()
    assert any(name.endswith("krt.yml") for name in names)
    assert not any(name.endswith("measurements.lp") for name in names)


def test_a_pb2_from_a_newer_protobuf_says_what_to_do_in_one_line(tmp_path):
    from krt_runner.errors import HandlerLoadError
    from krt_runner.node.user_code import load_user_code

    generated = (ROOT / "examples" / "greeter" / "src" / "greeter_pb2.py").read_text()
    (tmp_path / "newer_pb2.py").write_text(generated.replace("    7,\n    35,\n    1,\n", "    99,\n    0,\n    0,\n"))
    (tmp_path / "node.py").write_text("import newer_pb2\n\n\ndef handler(ctx, data):\n    return data\n")

    with pytest.raises(HandlerLoadError) as caught:
        load_user_code("node.py", tmp_path)

    assert "newer_pb2.py was generated for protobuf 99.0.0, newer than the installed" in str(caught.value)
    assert f"run `krt-runner protos {tmp_path}`" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_request_on_the_command_line_means_dev_mode_even_with_krt_nats_server_exported(tmp_path):
    import os
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if not key.startswith("KRT_")}
    env["KRT_NATS_SERVER"] = "nats://127.0.0.1:1"  # left exported from running a node

    done = subprocess.run([sys.executable, str(HANDLERS / "typed_strings.py"), "--request", '{"name": "Ada"}'],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1 and "Ada" in done.stdout


def test_ctrl_c_during_up_request_says_the_request_was_interrupted_and_exits_130(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    krt = copy_of_greeter(tmp_path)
    greet = krt / "src" / "greet.py"
    slow = "    import asyncio\n\n    await asyncio.sleep(3)\n    request = Request()\n"
    greet.write_text(greet.read_text().replace("    request = Request()\n", slow))
    env = {key: value for key, value in os.environ.items() if not key.startswith("KRT_")}
    env["KRT_MEASUREMENTS_ENABLED"] = "false"
    up = subprocess.Popen([sys.executable, "-m", "krt_runner", "up", str(krt), "--request", '{"name": "Ada"}'],
                          cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert up.stderr is not None
        lines = []
        deadline = time.monotonic() + 60
        while not any("sending the request" in line for line in lines) and time.monotonic() < deadline:
            lines.append(up.stderr.readline())
        time.sleep(0.5)
        up.send_signal(signal.SIGINT)
        out, err = up.communicate(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
            up.communicate()

    assert up.returncode == 130, "".join(lines) + err
    assert "the request was interrupted before its answer came" in err
    assert out == ""


def test_up_run_inside_the_krt_folder_writes_its_measurements_beside_it(tmp_path):
    import os
    import subprocess
    import sys

    krt = copy_of_greeter(tmp_path)
    env = {key: value for key, value in os.environ.items() if not key.startswith("KRT_")}

    done = subprocess.run([sys.executable, "-m", "krt_runner", "up", ".", "--request", '{"name": "Ada"}'],
                          cwd=krt, env=env, capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    assert not (krt / "measurements.lp").exists()
    assert "node_elapsed_time" in (tmp_path / "greeter.measurements.lp").read_text()
    assert f"measurements go to {tmp_path / 'greeter.measurements.lp'}" in done.stderr


def test_krt_runner_version_prints_the_package_version():
    import krt_runner

    done = run_cli("--version", cwd=ROOT)

    assert done.returncode == 0 and done.stdout.strip() == f"krt-runner {krt_runner.__version__}"


async def test_the_settings_line_names_only_what_differs_from_the_defaults(nats_server, start_node):
    import json

    node = start_node(**node_env(nats_server, HANDLERS, "behaviours.py", input="quiet-in", name="n"))

    line = json.loads(next(line for line in node.lines if '"settings read"' in line))

    assert line["input_subject"] == "quiet-in" and "nats_servers" in line
    assert "influx_batch_size" not in line and "pending_msgs_limit" not in line and "drain_timeout" not in line


def copied_testing_block() -> str:
    """The first Python block of writing-nodes.md's "Testing nodes without NATS", as a reader copies it."""
    import re

    page = (ROOT / "docs" / "writing-nodes.md").read_text()
    section = page.split("## Testing nodes without NATS", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block, "the testing section shows no Python block"
    return block.group(1)


def test_the_testing_example_of_the_docs_passes_when_copied_as_written(tmp_path):
    import os
    import subprocess
    import sys

    (tmp_path / "test_copied.py").write_text(copied_testing_block())
    env = {key: value for key, value in os.environ.items() if not key.startswith(("KRT_", "PYTEST_"))}

    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


def test_the_testing_docs_name_invalid_request_error():
    page = (ROOT / "docs" / "writing-nodes.md").read_text()
    section = page.split("## Testing nodes without NATS", 1)[1]

    assert "from krt_runner.errors import InvalidRequestError" in section


BAD_PIPELINE = """\
from krt_runner import KRT

krt = KRT(version="greeter-v1", description="d", proto="proto/greeter.proto", image="e")
greet = krt.node("greet", image="i", src="src/greet.py")
krt.workflow("greet", entrypoint="Greet", sequence=greet >> krt.node("shout", image="i", src="src/shout.py"))
krt.nodes.pop()  # shout is in the sequence but not among the nodes

if __name__ == "__main__":
    krt.write()
"""


def test_python_pipeline_py_on_a_krt_that_is_not_valid_says_so_in_one_line_and_exits_2(tmp_path):
    import subprocess
    import sys

    krt = copy_of_greeter(tmp_path)
    (krt / "krt.yml").unlink()
    (krt / "pipeline.py").write_text(BAD_PIPELINE)

    done = subprocess.run([sys.executable, "pipeline.py"], cwd=krt, capture_output=True, text=True, timeout=60)

    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"krt-runner: {krt / 'krt.yml'}: workflows[0].sequential[1]: node 'shout' is not defined in nodes"
    ]
    assert not (krt / "krt.yml").exists()


def dev_mode(tmp_path, **env_vars: str):
    import os
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if not key.startswith("KRT_")}
    return subprocess.run([sys.executable, str(HANDLERS / "typed_strings.py"), "--request", '{"name": "Ada"}'],
                          env={**env, **env_vars}, cwd=tmp_path, capture_output=True, text=True, timeout=60)


def test_dev_mode_says_in_one_line_that_it_turned_measurements_off(tmp_path):
    done = dev_mode(tmp_path)

    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if "dev mode sets KRT_MEASUREMENTS_ENABLED=false" in line]
    assert len(said) == 1 and "true writes them" in said[0]


def test_dev_mode_says_nothing_of_its_own_when_measurements_were_set_by_the_user(tmp_path):
    done = dev_mode(tmp_path, KRT_MEASUREMENTS_ENABLED="false")

    assert done.returncode == 0, done.stderr
    assert "dev mode sets" not in done.stderr


def test_a_script_that_writes_an_invalid_krt_from_a_function_gets_the_krt_file_error_to_catch(tmp_path):
    import subprocess
    import sys

    krt = copy_of_greeter(tmp_path)
    (krt / "krt.yml").unlink()
    (krt / "pipeline.py").write_text(BAD_PIPELINE)
    (krt / "build_all.py").write_text(
        "from krt_runner.errors import KrtFileError\nimport pipeline\n\n\ndef build():\n    try:\n"
        "        pipeline.krt.write()\n    except KrtFileError as exc:\n        print('caught', exc.problems)\n\n\n"
        "build()\nprint('goes on')\n"
    )

    done = subprocess.run([sys.executable, "build_all.py"], cwd=krt, capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["caught [\"workflows[0].sequential[1]: node 'shout' is not defined in nodes\"]",
                                        "goes on"]


def test_check_up_and_build_take_the_krt_yml_itself_for_its_folder(tmp_path):
    krt = copy_of_greeter(tmp_path)

    checked = run_cli("check", "greeter/krt.yml", cwd=tmp_path)
    built = run_cli("build", "greeter/krt.yml", "--output", str(tmp_path / "out") + "/", cwd=tmp_path)
    answered = run_cli("up", "greeter/krt.yml", "--request", '{"name": "Ada"}', cwd=tmp_path)

    assert checked.returncode == 0 and "KRT greeter-v1, 2 node(s), 1 workflow(s): OK" in checked.stdout
    assert built.returncode == 0 and (tmp_path / "out" / "greeter-v1.krt").is_file(), built.stderr
    assert answered.returncode == 0 and "Hello, Ada!" in answered.stdout, answered.stderr
    assert not (krt / "krt.yml" / "dist").exists()


def test_a_pb2_the_edited_proto_would_no_longer_generate_is_a_warning_of_check_and_up_naming_the_fix(tmp_path):
    krt = copy_of_greeter(tmp_path)
    proto = krt / "proto" / "greeter.proto"
    proto.write_text(proto.read_text().replace("string name = 1;", "string name = 1;\n  string title = 2;"))

    checked = run_cli("check", "greeter", cwd=tmp_path)
    answered = run_cli("up", "greeter", "--request", '{"name": "Ada"}', cwd=tmp_path)

    warning = ("src/greeter_pb2.py was not generated from proto/greeter.proto as it is now (they differ in Request): "
               "write it again with krt-runner protos on the KRT folder")
    assert checked.returncode == 0 and f"krt-runner check: warning: {warning}" in checked.stderr
    assert answered.returncode == 0 and f"warning: {warning}" in answered.stdout + answered.stderr
    regenerated = run_cli("protos", "greeter", cwd=tmp_path)
    assert regenerated.returncode == 0
    assert "warning" not in run_cli("check", "greeter", cwd=tmp_path).stderr
