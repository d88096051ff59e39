"""What a workflow author gets wrong, and what check, build, protos and manifests say of it (fourth outside audit)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import KRT_RUNNER, ROOT

from krt_runner.errors import KrtFileError
from krt_runner.krt.krt_reader import load_krt

GREETER = ROOT / "examples" / "greeter"
TWO_WORKFLOWS = """
version: demo-v1
description: d
entrypoint: {proto: proto/greeter.proto, image: i}
nodes:
  - {name: greet, image: i, src: src/greet.py}
  - {name: b-c, image: i, src: src/decorate.py}
  - {name: c, image: i, src: src/decorate.py}
workflows:
  - {name: a, entrypoint: Greet, sequential: [greet, b-c]}
  - {name: a-b, entrypoint: Other, sequential: [greet, c]}
"""


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("KRT_")}
    return subprocess.run([*KRT_RUNNER, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def greeter(tmp_path: Path) -> Path:
    folder = tmp_path / "greeter"
    shutil.copytree(GREETER, folder, ignore=shutil.ignore_patterns("__pycache__", "dist"))
    return folder


def problems_of(folder: Path) -> list[str]:
    with pytest.raises(KrtFileError) as caught:
        load_krt(folder)
    return caught.value.problems


# -- krt.yml ------------------------------------------------------------------------------------------


def test_two_steps_that_would_share_a_subject_or_a_deployment_name_are_a_problem(greeter):
    (greeter / "krt.yml").write_text(TWO_WORKFLOWS)

    problems = problems_of(greeter)

    assert problems == ["workflows[1].sequential[1]: 'a-b/c' would listen on 'demo-v1-a-b-c', as 'a/b-c' does: the "
                        "two would take each other's messages; rename a node or a workflow"]


def test_two_first_steps_that_would_share_a_deployment_name_are_a_problem(greeter):
    text = TWO_WORKFLOWS.replace("name: b-c,", "name: b-greet,").replace("[greet, b-c]", "[b-greet]")
    (greeter / "krt.yml").write_text(text.replace("[greet, c]", "[greet]"))

    assert problems_of(greeter) == ["workflows[1].sequential[0]: 'a-b/greet' and 'a/b-greet' would both run as "
                                    "demo-v1-a-b-greet (a Deployment or service name): rename a node or a workflow"]


def test_a_node_named_entrypoint_after_a_workflow_named_as_its_entrypoint_would_read_its_own_answers(greeter):
    text = (GREETER / "krt.yml").read_text().replace("name: decorate", "name: entrypoint")
    text = text.replace("- decorate", "- entrypoint").replace("entrypoint: Greet", "entrypoint: greet")
    (greeter / "krt.yml").write_text(text)

    assert problems_of(greeter) == [
        "workflows[0].sequential[1]: 'greet/entrypoint' would listen on 'greeter-v1-greet-entrypoint', as "
        "'greet/greet' does: the two would take each other's messages; rename a node or a workflow"]


def test_a_kre_v1_template_entrypoint_with_its_src_passes_check(greeter):
    krt_yml = greeter / "krt.yml"
    krt_yml.write_text(krt_yml.read_text().replace("  image: konstellation/kre-entrypoint:latest\n",
                                                   "  image: konstellation/kre-entrypoint:latest\n"
                                                   "  src: src/entrypoint/entrypoint.py\n"))
    assert "src: src/entrypoint/entrypoint.py" in krt_yml.read_text()

    done = run_cli("check", str(greeter))

    assert done.returncode == 0, done.stderr
    assert load_krt(greeter).proto == "proto/greeter.proto"


def test_check_of_a_module_that_starts_a_thread_at_import_does_not_wait_for_it(greeter):
    greet = greeter / "src" / "greet.py"
    greet.write_text("import threading, time\nthreading.Thread(target=time.sleep, args=(3600,)).start()\n"
                     + greet.read_text())

    started = time.monotonic()
    done = run_cli("check", str(greeter))

    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 60  # the import check's limit is 120 s


def test_an_rpc_added_to_the_proto_and_not_generated_is_a_problem_with_the_hint_to_generate_it(greeter):
    pytest.importorskip("grpc_tools")
    proto = greeter / "proto" / "greeter.proto"
    proto.write_text(proto.read_text().replace("rpc Greet (Request) returns (Response) {};",
                                               "rpc Greet (Request) returns (Response) {};\n"
                                               "  rpc Greet2 (Request) returns (Response) {};"))
    krt_yml = greeter / "krt.yml"
    krt_yml.write_text(krt_yml.read_text().replace("entrypoint: Greet\n", "entrypoint: Greet2\n"))

    done = run_cli("check", str(greeter))

    assert done.returncode == 2
    assert "'Greet2' is not an rpc of service Entrypoint in src/greeter_pb2.py (rpcs: Greet)" in done.stderr
    assert "warning: src/greeter_pb2.py was not generated from proto/greeter.proto as it is now" in done.stderr
    assert "krt-runner protos" in done.stderr


def test_a_key_given_twice_is_a_problem_not_the_last_one_silently(greeter):
    text = (GREETER / "krt.yml").read_text()
    (greeter / "krt.yml").write_text(text + "workflows: []\n")

    [problem] = problems_of(greeter)

    assert problem.startswith("not valid YAML: key 'workflows' is given twice in one mapping"), problem


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_a_krt_yml_that_is_not_utf8_is_one_problem_and_exit_2(greeter, encoding):
    text = (GREETER / "krt.yml").read_text().replace("Greets a person", "Salue une personne, café")
    (greeter / "krt.yml").write_bytes(text.encode(encoding))

    done = run_cli("check", str(greeter))

    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "krt.yml: is not UTF-8 text (byte 0x" in done.stderr and "save it as UTF-8" in done.stderr


def test_check_of_a_krt_yml_path_names_the_file_once(greeter):
    (greeter / "krt.yml").write_text((GREETER / "krt.yml").read_text() + "node: x\n")

    done = run_cli("check", str(greeter / "krt.yml"))

    assert done.returncode == 2
    assert f"{greeter}/krt.yml: node: unknown field" in done.stderr and "krt.yml/krt.yml" not in done.stderr


# -- handler modules ------------------------------------------------------------------------------------


def test_check_reports_why_an_import_failed_not_what_the_module_printed_first(greeter):
    (greeter / "src" / "greet.py").write_text(
        "import sys, warnings\nprint('loading model...')\nprint('to stderr', file=sys.stderr)\n"
        "warnings.warn('old sklearn')\nimport notamodule_xyz\n")
    (greeter / "src" / "decorate.py").write_text("import sys\nprint('bye')\nsys.exit(0)\n")

    done = run_cli("check", str(greeter))

    assert done.returncode == 2
    assert ("node 'greet': cannot load handler 'src/greet.py': import failed: ModuleNotFoundError: No module named "
            "'notamodule_xyz'") in done.stderr, done.stderr
    assert "node 'decorate': cannot load handler 'src/decorate.py': import failed: SystemExit: 0" in done.stderr
    assert "loading model" not in done.stderr and "old sklearn" not in done.stderr


def test_a_handler_that_cannot_take_ctx_and_data_is_refused_at_load_not_in_every_answer(greeter):
    (greeter / "src" / "greet.py").write_text("def handler(req):\n    return req\n")

    done = run_cli("check", str(greeter))

    assert done.returncode == 2
    assert ("node 'greet': handler 'src/greet.py': handler(req) cannot be called as handler(ctx, data), as the runner "
            "calls it") in done.stderr, done.stderr


def test_a_processor_class_named_in_krt_yml_is_the_one_the_node_runs(greeter, tmp_path):
    (greeter / "src" / "greet.py").write_text(
        "from krt_runner import Processor\nfrom greeter_pb2 import Request, Response\n\n"
        "class Greeter(Processor):\n    def process(self, ctx, req: Request) -> Response:\n"
        "        return Response(greeting=f'Hello, {req.name}!')\n\n"
        "class Shouter(Processor):\n    def process(self, ctx, req: Request) -> Response:\n"
        "        return Response(greeting=req.name.upper())\n")
    krt_yml = greeter / "krt.yml"
    krt_yml.write_text(krt_yml.read_text().replace("src: src/greet.py", "src: src/greet.py:Shouter"))

    checked = run_cli("check", str(greeter))
    answered = run_cli("up", str(greeter), "--request", '{"name": "ada"}', cwd=tmp_path)
    built = run_cli("build", str(greeter))

    assert checked.returncode == 0, checked.stderr
    assert answered.returncode == 0 and '"greeting": "** ADA **"' in answered.stdout, answered.stderr
    assert built.returncode == 0, built.stderr


# -- build ------------------------------------------------------------------------------------------------


def test_a_folder_reached_through_a_link_first_is_packed_under_both_names_and_a_loop_is_not_followed(greeter):
    (greeter / "src" / "models").mkdir()
    (greeter / "src" / "models" / "m.bin").write_text("weights")
    (greeter / "assets").symlink_to("src/models")
    (greeter / "src" / "models" / "up").symlink_to("..")

    done = run_cli("build", str(greeter))

    assert done.returncode == 0, done.stderr
    with tarfile.open(greeter / "dist" / "greeter-v1.krt") as tar:
        names = tar.getnames()
    assert "assets/m.bin" in names and "src/models/m.bin" in names
    # src/models/up is src again, and assets/up/models is assets again: neither is walked into
    assert not any(name.startswith(("src/models/up", "assets/up/models")) for name in names), names


@pytest.mark.parametrize("target", ["..", "/"], ids=["the-folder-above", "the-root"])
def test_a_link_to_a_folder_above_the_krt_folder_is_not_followed(greeter, target):
    (greeter.parent / "private").mkdir()
    (greeter.parent / "private" / "secret.txt").write_text("not the KRT's")
    (greeter / "up").symlink_to(target)

    done = run_cli("build", str(greeter))

    assert done.returncode == 0, done.stderr
    with tarfile.open(greeter / "dist" / "greeter-v1.krt") as tar:
        names = tar.getnames()
    assert "krt.yml" in names and not any(name.startswith("up") for name in names), names
    assert "krt-runner build: left out up: a link to a folder that holds it" in done.stderr


def test_build_output_must_end_in_krt_and_a_package_written_into_the_folder_is_not_packed_again(greeter, tmp_path):
    refused = run_cli("build", str(greeter), "--output", str(tmp_path / "release.tgz"))
    first = run_cli("build", str(greeter), "--output", f"{greeter}/")
    second = run_cli("build", str(greeter), "--output", f"{greeter}/")

    assert refused.returncode == 2 and not (tmp_path / "release.tgz").exists()
    assert "--output" in refused.stderr and "a package's name ends in .krt" in refused.stderr
    assert "(.krtignore?)" not in refused.stderr
    assert first.returncode == second.returncode == 0
    assert first.stdout.split(":")[-1] == second.stdout.split(":")[-1], (first.stdout, second.stdout)


def test_a_krtignore_that_is_not_utf8_is_one_problem(greeter):
    (greeter / ".krtignore").write_bytes("# notes for the café\n*.md\n".encode("latin-1"))

    done = run_cli("build", str(greeter))

    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert ".krtignore: is not UTF-8 text" in done.stderr


# -- protos ------------------------------------------------------------------------------------------------


def test_the_command_protos_prints_for_an_imported_proto_makes_a_module_its_importer_loads(tmp_path):
    pytest.importorskip("grpc_tools")
    demo = tmp_path / "demo"
    assert run_cli("init", "demo", cwd=tmp_path).returncode == 0
    (demo / "proto" / "common").mkdir()
    (demo / "proto" / "common" / "money.proto").write_text(
        'syntax = "proto3";\npackage common;\nmessage Money { int64 cents = 1; }\n')
    proto = demo / "proto" / "entrypoint.proto"
    importing = proto.read_text().replace('syntax = "proto3";', 'syntax = "proto3";\nimport "common/money.proto";')
    proto.write_text(importing)

    hint = run_cli("protos", "demo", cwd=tmp_path)
    [command] = [line.split("e.g. ", 1)[1].split(";")[0] for line in hint.stdout.splitlines() if "e.g. " in line]
    assert command.startswith("python -m grpc_tools.protoc -I demo/proto "), command
    made = subprocess.run([sys.executable, *shlex.split(command)[1:]], cwd=tmp_path, capture_output=True, text=True)
    again = run_cli("protos", "demo", cwd=tmp_path)
    checked = run_cli("check", "demo", cwd=tmp_path)

    assert made.returncode == 0, made.stderr
    assert (demo / "src" / "common" / "money_pb2.py").is_file()
    assert again.returncode == 0 and checked.returncode == 0, again.stdout + checked.stderr


# -- manifests ---------------------------------------------------------------------------------------------


def test_manifests_refuse_an_influx_url_with_a_password_and_leave_a_go_node_out_with_a_line_saying_so(greeter):
    (greeter / "bin").mkdir()
    (greeter / "bin" / "gonode").write_text("binary")
    krt_yml = greeter / "krt.yml"
    krt_yml.write_text(krt_yml.read_text().replace("src: src/decorate.py", "src: bin/gonode"))

    refused = run_cli("manifests", str(greeter), "--image", "x", "--influx-url", "http://admin:s3cret@influx:8086")
    written = run_cli("manifests", str(greeter), "--image", "x", "--no-entrypoint")

    assert refused.returncode == 2 and "s3cret" not in refused.stdout + refused.stderr
    assert "--influx-url carries a user or a password" in refused.stderr
    assert written.returncode == 0, written.stderr
    deployments = [o["metadata"]["name"] for o in yaml.safe_load_all(written.stdout) if o["kind"] == "Deployment"]
    assert deployments == ["greeter-v1-greet-greet"]
    assert ("node 'decorate' of workflow 'greet' (bin/gonode) is not a Python node: no Deployment is written for it; "
            "run it from an image of its own with KRT_NATS_INPUT=greeter-v1-greet-decorate") in written.stderr


def test_answers_keep_their_non_ascii_text():
    from krt_runner.envelope import KreNatsMessage
    from krt_runner.krt.protos import to_json

    assert to_json(KreNatsMessage(error="Zoë 🎉"), indent=None) == '{"error": "Zoë 🎉"}'


# -- the regression hunt on these fixes --------------------------------------------------------------------


def test_a_decorated_handler_a_yaml_merge_and_a_module_that_replaces_stdout_still_pass_check(greeter):
    (greeter / "src" / "greet.py").write_text(
        "import functools, sys\nfrom greeter_pb2 import Request, Response\nsys.stdout = sys.stderr\n\n"
        "def with_greeting(function):\n    @functools.wraps(function)\n"
        "    def wrapper(ctx, data):\n        return function(ctx, data, 'Hello')\n    return wrapper\n\n"
        "@with_greeting\ndef handler(ctx, data, greeting):\n    request = Request()\n    data.Unpack(request)\n"
        "    return Response(greeting=f'{greeting}, {request.name}!')\n")
    text = (GREETER / "krt.yml").read_text().replace("nodes:\n  - name: greet\n    image: krt-runner:dev\n",
                                                     "nodes:\n  - &node\n    name: greet\n    image: krt-runner:dev\n")
    text = text.replace("  - name: decorate\n    image: krt-runner:dev\n", "  - <<: *node\n    name: decorate\n")
    (greeter / "krt.yml").write_text(text)

    done = run_cli("check", str(greeter))
    (greeter / "krt.yml").write_text("? [a, b]\n: 1\n")
    refused = run_cli("check", str(greeter))

    assert done.returncode == 0, done.stderr
    assert refused.returncode == 2 and "not valid YAML" in refused.stderr and "Traceback" not in refused.stderr


def test_an_answer_prints_on_an_output_that_cannot_show_its_text(greeter, tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("KRT_")}
    done = subprocess.run([*KRT_RUNNER, "up", str(greeter), "--request", '{"name": "Łukasz"}'], cwd=tmp_path,
                          env={**env, "PYTHONIOENCODING": "ascii"}, capture_output=True, timeout=120)

    assert done.returncode == 0, done.stderr
    assert b'"greeting": "** Hello, \\u0141ukasz! **"' in done.stdout, done.stdout


def test_build_into_the_folder_packs_no_earlier_package_of_another_version(greeter):
    first = run_cli("build", str(greeter), "--output", f"{greeter}/")
    krt_yml = greeter / "krt.yml"
    krt_yml.write_text(krt_yml.read_text().replace("version: greeter-v1", "version: greeter-v2"))
    second = run_cli("build", str(greeter), "--output", f"{greeter}/")

    elsewhere = run_cli("build", str(greeter))  # into dist/: the packages in the folder stay out of it too

    assert first.returncode == second.returncode == elsewhere.returncode == 0, elsewhere.stderr
    for package in (greeter / "greeter-v2.krt", greeter / "dist" / "greeter-v2.krt"):
        with tarfile.open(package) as tar:
            assert not [name for name in tar.getnames() if name.endswith(".krt")]


def test_manifests_refuse_a_password_in_an_influx_url_without_a_scheme(greeter):
    done = run_cli("manifests", str(greeter), "--image", "x", "--influx-url", "admin:s3cret@influx:8086")

    assert done.returncode == 2 and "--influx-url carries a user or a password" in done.stderr
    assert "s3cret" not in done.stdout + done.stderr
