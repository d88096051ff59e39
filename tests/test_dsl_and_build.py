"""A KRT described in Python (krt_runner.KRT), `krt-runner build` and `.krt` packages read by up and check."""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
from conftest import KRT_RUNNER, ROOT
from up_helpers import UpRun

from krt_runner import KRT
from krt_runner.errors import KrtFileError
from krt_runner.krt.krt_reader import load_krt
from krt_runner.krt.package import open_krt

GREETER = ROOT / "examples" / "greeter"
IRIS = ROOT / "examples" / "iris"
SHOUT = "from greeter_pb2 import Response\n\n\ndef handler(ctx, data):\n    r = Response()\n    data.Unpack(r)\n" \
    "    return Response(greeting=r.greeting.upper())\n"  # fmt: skip
PIPELINE = '''
from krt_runner import KRT

krt = KRT(
    version="shouter-v1",
    description="Greets, decorates, shouts.",
    proto="proto/greeter.proto",
    image="konstellation/kre-entrypoint:latest",
    config={"variables": ["GREETING_STYLE"]},
)
greet = krt.node("greet", image="krt-runner:dev", src="src/greet.py")
decorate = krt.node("decorate", image="krt-runner:dev", src="src/decorate.py")
shout = krt.node("shout", image="krt-runner:dev", src="src/shout.py", gpu=True)
krt.workflow("loud", entrypoint="Greet", sequence=greet >> decorate >> shout)
'''


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {key: value for key, value in os.environ.items() if not key.startswith("KRT_")}
    command = [*KRT_RUNNER, *args]
    return subprocess.run(command, cwd=cwd, env={**base, **(env or {})}, capture_output=True, text=True, timeout=90)


def greeter_copy(tmp_path: Path, *, krt_yml: bool = False) -> Path:
    """The greeter's proto and src (and a shout node) in a fresh folder; its krt.yml only when asked."""
    folder = tmp_path / "shouter"
    shutil.copytree(GREETER / "proto", folder / "proto")
    shutil.copytree(GREETER / "src", folder / "src", ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "src" / "shout.py").write_text(SHOUT)
    if krt_yml:
        shutil.copy(GREETER / "krt.yml", folder / "krt.yml")
    return folder


def greeter_dsl(root: Path) -> KRT:
    """The DSL twin of examples/greeter/krt.yml."""
    krt = KRT(
        version="greeter-v1",
        description="Greets a person by name, then decorates the greeting.",
        proto="proto/greeter.proto",
        image="konstellation/kre-entrypoint:latest",
        config={"variables": [], "files": []},
        root=root,
    )
    greet = krt.node("greet", image="krt-runner:dev", src="src/greet.py")
    decorate = krt.node("decorate", image="krt-runner:dev", src="src/decorate.py")
    krt.workflow("greet", entrypoint="Greet", sequence=greet >> decorate)
    return krt


# -- the DSL ----------------------------------------------------------------------------------------


def test_the_dsl_twin_of_the_greeter_gives_the_model_of_its_hand_written_krt_yml():
    assert greeter_dsl(GREETER).validate() == load_krt(GREETER)


def test_the_yaml_the_dsl_writes_parses_back_to_an_equal_model(tmp_path):
    folder = greeter_copy(tmp_path)
    (folder / "pipeline.py").write_text(PIPELINE)
    namespace: dict[str, object] = {"__file__": str(folder / "pipeline.py")}
    exec(compile(PIPELINE, str(folder / "pipeline.py"), "exec"), namespace)
    krt = namespace["krt"]
    assert isinstance(krt, KRT)

    written = krt.write()

    assert written == folder / "krt.yml"
    model = load_krt(folder)
    assert model == krt.validate()
    assert [node.gpu for node in model.nodes] == [False, False, True]
    assert model.workflows[0].sequential == ("greet", "decorate", "shout")
    assert model.variables == ("GREETING_STYLE",)


def test_dsl_mistakes_are_the_problems_of_the_same_hand_written_krt_yml(tmp_path):
    folder = greeter_copy(tmp_path)
    krt = KRT(version="Shouter_V1", description="", proto="proto/greeter.proto", image="e", root=folder,
              config={"variables": ["style"]})  # fmt: skip
    greet = krt.node("greet", image="i", src="src/greet.py")
    krt.node("greet", image="i", src="src/missing.py")
    stranger = KRT(version="other", description="d", proto="p.proto", image="e", root=folder).node(
        "stranger", image="i", src="src/greet.py"
    )
    krt.workflow("loud", entrypoint="Greet.Now", sequence=greet >> stranger)
    (folder / "krt.yml").write_text(textwrap.dedent("""\
        version: Shouter_V1
        description: ""
        entrypoint: {proto: proto/greeter.proto, image: e}
        config:
          variables: [style]
        nodes:
          - {name: greet, image: i, src: src/greet.py}
          - {name: greet, image: i, src: src/missing.py}
        workflows:
          - name: loud
            entrypoint: Greet.Now
            sequential: [greet, stranger]
    """))

    with pytest.raises(KrtFileError) as from_dsl:
        krt.validate()
    with pytest.raises(KrtFileError) as from_yaml:
        load_krt(folder)

    assert from_dsl.value.problems == from_yaml.value.problems
    assert str(from_dsl.value) == str(from_yaml.value)
    assert len(from_dsl.value.problems) == 7, from_dsl.value.problems
    assert "workflows[0].sequential[1]: node 'stranger' is not defined in nodes" in from_dsl.value.problems


def test_the_dsl_never_writes_over_a_hand_written_krt_yml_nor_writes_an_invalid_one(tmp_path):
    folder = greeter_copy(tmp_path, krt_yml=True)
    hand_written = (folder / "krt.yml").read_text()

    with pytest.raises(KrtFileError, match=r"was not written by krt_runner\.KRT"):
        greeter_dsl(folder).write()
    broken = greeter_dsl(folder)
    broken.version = "Not Valid"
    (folder / "krt.yml").unlink()
    with pytest.raises(KrtFileError, match="version: 'Not Valid' is not a valid name"):
        broken.write()

    assert hand_written.startswith("# A KRT v1 file")
    assert not (folder / "krt.yml").exists()


def test_a_dsl_file_built_into_krt_yml_runs_through_up_and_call(tmp_path, monkeypatch):
    folder = greeter_copy(tmp_path)
    (folder / "pipeline.py").write_text(PIPELINE)
    monkeypatch.setenv("GREETING_STYLE", "loud")  # the config variable pipeline.py declares

    built = run_cli("build", "shouter/pipeline.py:krt", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    assert (folder / "krt.yml").read_text().startswith("# Written by krt_runner.KRT from pipeline.py")
    assert built.stdout.startswith(f"built {Path('shouter/dist/shouter-v1.krt')}: ")

    up = UpRun(str(folder), cwd=tmp_path)
    try:
        call_line = up.wait_for_call_line().replace('{"name": ""}', '{"name": "Ada"}')
        called = run_cli(*shlex.split(call_line)[1:], cwd=tmp_path)
    finally:
        up.stop()

    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout) == {"greeting": "** HELLO, ADA! **"}


# -- build and .krt packages ------------------------------------------------------------------------

IRIS_CLUTTER = [
    ".venv/bin/python", "venv/lib/x.py", "src/__pycache__/classifier.cpython-311.pyc", "stray.pyc", ".git/HEAD",
    "iris.egg-info/PKG-INFO", ".DS_Store", "src/.DS_Store", ".pytest_cache/v", ".mypy_cache/x", ".ruff_cache/x",
    "dist/iris-v0.krt", "scratch/notes.txt", "models/raw/flowers.csv",
]  # fmt: skip
IRIS_PACKAGED = [
    ".krtignore", "README.md", "docs/README.md", "krt.yml", "models/model.joblib", "proto/iris.proto",
    "src/classifier.py", "src/iris_pb2.py", "src/iris_pb2.pyi", "test_iris_node.py", "train.py",
]  # fmt: skip


def test_a_krt_built_from_iris_has_krt_yml_at_its_root_leaves_out_clutter_and_runs_under_up(tmp_path):
    pytest.importorskip("sklearn")
    iris = tmp_path / "iris"
    shutil.copytree(IRIS, iris, ignore=shutil.ignore_patterns("models", "dist", "__pycache__"))
    trained = subprocess.run([sys.executable, "train.py", "--out", "models/model.joblib"], cwd=iris, timeout=120)
    assert trained.returncode == 0
    for name in [*IRIS_CLUTTER, "docs/README.md"]:
        (iris / name).parent.mkdir(parents=True, exist_ok=True)
        (iris / name).write_text("x\n")
    (iris / ".krtignore").write_text("# kept on this machine\nscratch/\nmodels/raw\n")

    built = run_cli("build", "iris", cwd=tmp_path)

    assert built.returncode == 0, built.stderr
    with tarfile.open(iris / "dist" / "iris-v1.krt", "r:gz") as tar:
        members = tar.getmembers()
    assert sorted(member.name for member in members if member.isfile()) == IRIS_PACKAGED
    assert {member.name for member in members if member.isdir()} == {"docs", "models", "proto", "src"}
    assert built.stdout.startswith(f"built {Path('iris/dist/iris-v1.krt')}: {len(IRIS_PACKAGED)} files, ")

    unpack_here = tmp_path / "tmpdir"  # where `up` unpacks the package: empty again once it exits
    unpack_here.mkdir()
    flower = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.8, "petal_width": 2.2}
    done = run_cli("up", "iris/dist/iris-v1.krt", "--request", json.dumps(flower), cwd=tmp_path,
                   env={"TMPDIR": str(unpack_here)})  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["species"] == "virginica"
    assert list(unpack_here.iterdir()) == []


def test_build_refuses_an_invalid_krt_with_the_problems_check_lists(tmp_path):
    folder = greeter_copy(tmp_path, krt_yml=True)
    (folder / "src" / "greet.py").write_text("import not_installed_anywhere\n")
    (folder / "src" / "decorate.py").write_text("def handler(ctx, data)\n")

    checked = run_cli("check", "shouter", cwd=tmp_path)
    built = run_cli("build", "shouter", cwd=tmp_path)

    assert checked.returncode == built.returncode == 2
    problems = [line for line in built.stderr.splitlines() if line.startswith("  - ")]
    assert problems == [line for line in checked.stderr.splitlines() if line.startswith("  - ")]
    assert len(problems) == 2 and "syntax error at line 1" in built.stderr
    assert built.stderr.startswith("krt-runner build: 2 problem(s) in shouter:")
    assert not (folder / "dist").exists()


def test_build_says_when_krtignore_leaves_out_a_file_krt_yml_uses(tmp_path):
    folder = greeter_copy(tmp_path, krt_yml=True)
    (folder / ".krtignore").write_text("decorate.py\n")

    built = run_cli("build", "shouter", cwd=tmp_path)

    assert built.returncode == 2
    assert "src/decorate.py is used by krt.yml but left out of the package (by .krtignore?)" in built.stderr


def _evil_package(path: Path, member: tarfile.TarInfo) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        content = (GREETER / "krt.yml").read_bytes()
        info = tarfile.TarInfo("krt.yml")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
        tar.addfile(member, io.BytesIO(b"x") if member.isfile() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, target, 1 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(
    ("member", "expected"),
    [
        (_member("../escaped.txt"), "would be written outside the package's folder"),
        (_member("/tmp/absolute.txt"), "would be written outside the package's folder"),
        (_member("src/link", tarfile.SYMTYPE, "../../escaped.txt"), "is a link or a device"),
        (_member("src/hard", tarfile.LNKTYPE, "krt.yml"), "is a link or a device"),
    ],
    ids=["dot-dot", "absolute", "symlink", "hard-link"],
)
def test_a_package_entry_outside_its_folder_or_a_link_is_refused_and_nothing_is_unpacked(tmp_path, member, expected):
    archive = _evil_package(tmp_path / "evil.krt", member)

    with pytest.raises(KrtFileError) as caught, open_krt(archive):
        pass

    assert any(expected in problem for problem in caught.value.problems), caught.value.problems
    assert not (tmp_path / "escaped.txt").exists()


def test_check_reads_a_package_and_names_it_in_its_problems(tmp_path):
    from krt_runner.krt.check import run_check

    archive = _evil_package(tmp_path / "evil.krt", _member("../escaped.txt"))
    err = io.StringIO()

    code = run_check(archive, out=io.StringIO(), err=err)

    assert code == 2
    assert f"  - {archive}: entry '../escaped.txt' would be written outside" in err.getvalue()


def test_check_of_a_built_package_warns_of_nothing_its_entrypoint_is_read_while_it_is_unpacked(tmp_path):
    source = tmp_path / "greeter"
    shutil.copytree(GREETER, source, ignore=shutil.ignore_patterns("__pycache__", "dist"))
    built = subprocess.run([*KRT_RUNNER, "build", str(source)], capture_output=True, text=True, timeout=120)
    (package,) = (source / "dist").glob("*.krt")

    checked = subprocess.run([*KRT_RUNNER, "check", str(package)], capture_output=True, text=True, timeout=120)

    assert built.returncode == 0 and checked.returncode == 0, built.stderr + checked.stderr
    assert "warning" not in checked.stderr, checked.stderr


def test_build_checks_what_it_packed_and_writes_no_package_whose_handlers_cannot_import(tmp_path):
    source = tmp_path / "greeter"
    shutil.copytree(GREETER, source, ignore=shutil.ignore_patterns("__pycache__", "dist"))
    (source / ".krtignore").write_text("*_pb2.py\n")  # what the handlers import

    built = subprocess.run([*KRT_RUNNER, "build", str(source)], capture_output=True, text=True, timeout=120)

    assert built.returncode == 2, built.stdout + built.stderr
    assert "in the package, not in the folder (.krtignore?): node 'greet': cannot load handler" in built.stderr
    assert "No module named 'greeter_pb2'" in built.stderr
    assert not (source / "dist").exists()  # nor the folder it made for it


def test_build_output_may_be_a_folder_and_manifests_out_in_a_missing_folder_is_one_line(tmp_path):
    source = tmp_path / "greeter"
    shutil.copytree(GREETER, source, ignore=shutil.ignore_patterns("__pycache__", "dist"))
    (tmp_path / "existing").mkdir()

    into_existing = subprocess.run([*KRT_RUNNER, "build", str(source), "--output", str(tmp_path / "existing")],
                                   capture_output=True, text=True, timeout=120)
    into_new = subprocess.run([*KRT_RUNNER, "build", str(source), "--output", f"{tmp_path}/new/folder/"],
                              capture_output=True, text=True, timeout=120)
    manifests = subprocess.run([*KRT_RUNNER, "manifests", str(source), "--image", "i", "--out",
                                str(tmp_path / "missing" / "x.yaml")], capture_output=True, text=True, timeout=60)

    assert into_existing.returncode == into_new.returncode == 0, into_existing.stderr + into_new.stderr
    assert (tmp_path / "existing" / "greeter-v1.krt").is_file()
    assert (tmp_path / "new" / "folder" / "greeter-v1.krt").is_file()
    assert manifests.returncode == 2 and "Traceback" not in manifests.stderr
    assert manifests.stderr.strip().endswith("x.yaml: No such file or directory")


@pytest.mark.parametrize("src", ["{greeter}/src/greet.py", "../outside/greet.py"])
def test_check_refuses_a_node_src_outside_the_krt_folder(tmp_path, src):
    from krt_runner.krt.check import check_krt

    folder = tmp_path / "krt"
    shutil.copytree(GREETER, folder, ignore=shutil.ignore_patterns("__pycache__", "dist"))
    shutil.copytree(GREETER / "src", tmp_path / "outside")
    src = src.format(greeter=GREETER)
    (folder / "krt.yml").write_text((folder / "krt.yml").read_text().replace("src: src/greet.py", f"src: {src}"))

    _, problems = check_krt(folder)

    assert any(f"nodes[0].src: '{src}' is outside the KRT folder" in problem for problem in problems), problems
