"""``krt-runner init NAME``: a working KRT in ``./NAME``, from nothing.

It writes a ``krt.yml`` of one workflow and one node, ``proto/entrypoint.proto``
with the ``Entrypoint`` service, the node ``src/greet.py`` (a typed handler),
its ``src/entrypoint_pb2.py`` and ``.pyi`` (generated as ``krt-runner protos``
does: the ``proto`` extra), and ``test_greet.py`` with ``krt_runner.testing``
beside a ``conftest.py`` that puts ``src/`` on ``sys.path`` and a ``pytest.ini``, so that a plain
``pytest NAME`` passes as written, with no warning. Everything is written into a hidden folder
beside ``NAME`` first and moved into place at the end: a failure leaves nothing.
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
import uuid
from pathlib import Path
from string import Template
from typing import TextIO

from krt_runner.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ProtoError
from krt_runner.krt.protos import grpc_tools_include
from krt_runner.krt.regenerate import NO_GRPC_TOOLS, regenerate

# The version is NAME-v1, and KRE v1's names are lowercase letters, digits and '-', under 20 characters.
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,14}[a-z0-9])?$")
_PROTO = "proto/entrypoint.proto"
_GENERATED = "src/entrypoint_pb2.py"
EXAMPLE_REQUEST = '{"name": "Ada"}'

_FILES = {
    "krt.yml": """\
# A KRT v1 file, written by krt-runner init: what `krt-runner check`, `krt-runner up` and KRE v1 read.
version: $name-v1
description: $name, a KRT of one workflow with one node.
entrypoint:
  proto: proto/entrypoint.proto        # its service Entrypoint has one rpc per workflow
  image: konstellation/kre-entrypoint:latest
config:
  variables: []                        # names of environment variables every node gets
  files: []
nodes:
  - name: greet
    image: krt-runner:dev
    src: src/greet.py
workflows:
  - name: greet
    entrypoint: Greet                  # the rpc of service Entrypoint that calls this workflow
    sequential:
      - greet
""",
    _PROTO: """\
syntax = "proto3";
package $package;

// The KRT's gRPC front door: one rpc per workflow of krt.yml (its `entrypoint`).
// After a change, `krt-runner protos $name` writes src/entrypoint_pb2.py again.
service Entrypoint {
  rpc Greet (Request) returns (Response) {};
}

message Request {
  string name = 1;
}

message Response {
  string greeting = 1;
}
""",
    "src/greet.py": """\
\"\"\"The greet node: a Request in, a Response out (proto/entrypoint.proto).

init(ctx) runs once, before any message; handler(ctx, req) once per message.
\"\"\"

from entrypoint_pb2 import Request, Response


def init(ctx):
    ctx.set("template", "Hello, {name}!")


def handler(ctx, req: Request) -> Response:
    name = req.name.strip() or "stranger"
    ctx.measurement.save("greetings", {"name_length": len(name)}, {"node": "greet"})
    return Response(greeting=ctx.get("template").format(name=name))
""",
    "pytest.ini": """\
# pytest's settings for this KRT's tests (pytest-asyncio, in krt-runner[test], warns while its loop scope is unset)
[pytest]
asyncio_default_fixture_loop_scope = function
""",
    "conftest.py": """\
\"\"\"pytest reads this before the tests: src/ goes on sys.path, so they import entrypoint_pb2 as the node does.\"\"\"

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
""",
    "test_greet.py": """\
\"\"\"Tests of the greet node with krt_runner.testing: in-process, no NATS. Run them with  pytest $name\"\"\"

from pathlib import Path

import pytest
from entrypoint_pb2 import Request, Response  # from src/, put on sys.path by conftest.py

from krt_runner.errors import InvalidRequestError
from krt_runner.testing import run_node

KRT = Path(__file__).resolve().parent


def test_greet_says_hello_by_name():
    with run_node(KRT, "src/greet.py") as node:
        answer = node.call(Request(name="Ada"), Response)

    assert answer.greeting == "Hello, Ada!"
    assert node.points[0].measurement == "greetings"


def test_greet_refuses_a_request_of_another_type():
    with run_node(KRT, "src/greet.py") as node, pytest.raises(InvalidRequestError):
        node.call(Response(greeting="not a request"))
""",
}


def name_problem(name: str) -> str:
    """Why ``name`` cannot name a KRT (``""``: it can)."""
    if _NAME.match(name):
        return ""
    return (f"{name!r} is not a KRT name: lowercase letters, digits and '-', starting with a letter, ending with a "
            "letter or a digit, at most 16 characters (its version is NAME-v1, a KRE v1 name under 20 characters)")


def write_skeleton(target: Path, name: str, *, include: Path) -> list[Path]:
    """Write the files of KRT ``name`` into the folder ``target`` (new or empty) and generate its ``_pb2``; the paths
    written. Raises :class:`ProtoError` when protoc fails."""
    values = {"name": name, "package": name.replace("-", "_")}
    for relative, text in _FILES.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(text).substitute(values), encoding="utf-8")
    (target / _GENERATED).with_suffix(".pyi").touch()  # regenerate writes a stub where one is
    generated = regenerate(target / _GENERATED, target / _PROTO, include=include, root=target)
    return [target / relative for relative in _FILES] + generated


def run_init(name: str, *, parent: Path | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run the ``init`` command: 0 and the next commands, 2 for a bad name, a folder in use or no grpcio-tools,
    1 when protoc fails."""
    parent = Path.cwd() if parent is None else parent
    target = parent / name
    problem = name_problem(name) or _in_use(target)
    if problem:
        print(f"krt-runner init: {problem}", file=err)
        return EXIT_USAGE
    try:
        include = grpc_tools_include(missing=NO_GRPC_TOOLS)
    except ProtoError as exc:
        print(f"krt-runner init: {exc}", file=err)
        return EXIT_USAGE
    staging = parent / f".{name}.init-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        written = write_skeleton(staging, name, include=include)
        if target.exists():  # an empty folder: _in_use said so
            target.rmdir()
        staging.rename(target)
    except (ProtoError, OSError) as exc:
        print(f"krt-runner init: {exc}", file=err)
        return EXIT_FAILED
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _print_next(name, [path.relative_to(staging) for path in written], out)
    return EXIT_OK


def _in_use(target: Path) -> str:
    if target.is_dir() and not any(target.iterdir()):
        return ""
    if target.exists():
        return f"{target} exists and is not an empty folder: choose another name, or move it away"
    return ""


def _print_next(name: str, written: list[Path], out: TextIO) -> None:
    print(f"wrote a KRT into {name}/: {', '.join(str(path) for path in written)}", file=out)
    print("next:", file=out)
    for command in (["krt-runner", "check", name], ["krt-runner", "up", name, "--request", EXAMPLE_REQUEST],
                    ["pytest", name]):
        print(f"  {shlex.join(command)}", file=out)
