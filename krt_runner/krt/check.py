"""``krt-runner check DIR``: validate krt.yml and import every Python node's handler, without NATS.

Each handler module is imported in a child process of its own, as the node
would be: two nodes may both have a ``model_pb2.py`` or a ``utils.py`` and must
not see each other's. ``init`` is not run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TextIO

from krt_runner.config import setting_from_env
from krt_runner.errors import EXIT_OK, EXIT_USAGE, ConfigError, HandlerLoadError, KrtFileError, ProtoError, describe
from krt_runner.exit_watch import flush_std_streams
from krt_runner.krt.krt_reader import load_krt
from krt_runner.krt.model import KRT_FILE, Krt, NodeSpec, WorkflowSpec, wiring
from krt_runner.krt.protos import compile_proto, find_types_source, load_file, stale_code_warning
from krt_runner.node.user_code import load_user_code
from krt_runner.python_command import python_module

# Seconds one handler module may take to import (module-level code runs, models may load).
IMPORT_TIMEOUT = 120.0
# Imports run side by side, this many at a time.
_PARALLEL_IMPORTS = 4
# The import checks' processes now running (killed when the command is stopped).
_IMPORTING: set[subprocess.Popen[bytes]] = set()


def check_krt(directory: Path | str) -> tuple[Krt | None, list[str]]:
    """The KRT and every problem found in it; an empty list means ``up`` can start it."""
    try:
        krt = load_krt(directory)
    except KrtFileError as exc:
        return None, [f"{exc.path}: {problem}" for problem in exc.problems]
    where = krt.directory / KRT_FILE
    return krt, [*(f"{where}: {problem}" for problem in entrypoint_problems(krt)), *import_problems(krt, krt.nodes)]


def import_problems(krt: Krt, nodes: Iterable[NodeSpec], *, env: Mapping[str, str] | None = None) -> list[str]:
    """Import each Python node's handler module in a process of its own, side by side (``init`` not run): one
    problem per module that does not load. ``env``: the processes' environment (default: this one's)."""
    python_nodes = [node for node in nodes if node.is_python]
    with ThreadPoolExecutor(max_workers=_PARALLEL_IMPORTS) as pool:
        found = pool.map(lambda node: _import_problem(krt.directory, node, env), python_nodes)
        try:
            return [problem for problem in found if problem]
        except BaseException:  # stopped (Ctrl-C, SIGTERM): the imports stop with the command, not 120 s later
            for child in list(_IMPORTING):
                end_import(child)
            raise


def missing_config(krt: Krt, environ: Mapping[str, str]) -> list[str]:
    """The names of krt.yml's ``config`` that have no value in ``environ`` (up refuses to start without them)."""
    return [name for name in krt.config_names if name not in environ]


def workflow_types_source(krt: Krt, workflow: WorkflowSpec) -> str:
    """Where a workflow's request and response types are read: the proto's generated ``_pb2.py`` beside it or
    beside one of the workflow's nodes, else the ``.proto`` itself."""
    node_dirs = [(krt.directory / krt.node(name).file).parent for name in workflow.sequential]
    return find_types_source(krt.directory / krt.proto, node_dirs)


def entrypoint_problems(krt: Krt) -> list[str]:
    """Each workflow's ``entrypoint`` must be an rpc of the proto's service ``Entrypoint``, when the types can be
    read (a generated ``_pb2.py``, or grpcio-tools) and the proto has that service."""
    problems: list[str] = []
    for index, workflow in enumerate(krt.workflows):
        source = workflow_types_source(krt, workflow)
        try:
            file = load_file(source)
        except ProtoError:
            continue  # up reports it when it needs the types
        read = _shown(krt, source)
        service = file.services_by_name.get("Entrypoint")
        rpcs = [method.name for method in service.methods] if service is not None else []
        if service is not None and workflow.entrypoint not in rpcs:
            problems.append(
                f"workflows[{index}].entrypoint: {workflow.entrypoint!r} is not an rpc "
                f"of service Entrypoint in {read} (rpcs: {', '.join(rpcs) or 'none'})"
            )
    return problems


def stale_code_warnings(krt: Krt) -> list[str]:
    """A warning per generated ``_pb2.py`` a workflow reads that its ``.proto`` would no longer generate: the nodes
    would read the old types and the gRPC entrypoint the new ones (see :func:`stale_code_warning`). Nothing when the
    ``.proto`` is not there or cannot be compiled here (no grpcio-tools); it is compiled once for them all."""
    sources = dict.fromkeys(workflow_types_source(krt, workflow) for workflow in krt.workflows)
    generated = [source for source in sources if not source.endswith(".proto")]
    proto = krt.directory / krt.proto
    if not generated or not proto.is_file():
        return []
    try:
        compiled = compile_proto(proto)
    except ProtoError:
        return []
    warnings: list[str] = []
    for source in generated:
        try:
            file = load_file(source)
        except ProtoError:
            continue
        stale = stale_code_warning(compiled, file, _shown(krt, source), krt.proto)
        if stale:
            warnings.append(stale)
    return warnings


def _shown(krt: Krt, source: str) -> str:
    path = Path(source)
    return str(path.relative_to(krt.directory)) if path.is_relative_to(krt.directory) else source


def _import_problem(base_path: Path, node: NodeSpec, env: Mapping[str, str] | None) -> str:
    with tempfile.TemporaryDirectory(prefix="krt-check-") as folder:
        verdict_file = Path(folder) / "verdict"  # not stdout: a module may print there, or replace sys.stdout
        command = python_module("krt_runner.krt.check", str(base_path), node.src, str(verdict_file))
        # Its errors in a file, not a pipe, and in a session of its own: a process the module starts as it is
        # imported (a model server) would hold a pipe open past the import's end; it is ended with the import.
        with open(Path(folder) / "stderr", "w+b") as errors:
            child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors, start_new_session=True,
                                     env=None if env is None else dict(env))
            _IMPORTING.add(child)
            try:
                child.wait(timeout=IMPORT_TIMEOUT)
            except subprocess.TimeoutExpired:
                return f"node {node.name!r}: importing {node.src} took over {IMPORT_TIMEOUT:g}s"
            finally:
                _IMPORTING.discard(child)
                end_import(child)
            errors.seek(0)
            stderr = errors.read().decode(errors="replace")
        verdict = verdict_file.read_text(encoding="utf-8") if verdict_file.is_file() else None
    if verdict is not None and child.returncode in (EXIT_OK, EXIT_USAGE):
        return f"node {node.name!r}: {verdict}" if verdict else ""
    last = (stderr.strip().splitlines() or [""])[-1]
    return (f"node {node.name!r}: importing {node.src} ended its process (exit code {child.returncode})"
            f"{f': {last}' if last else ''}")


def end_import(child: subprocess.Popen[bytes]) -> None:
    """SIGKILL to an import check's process and whatever it started (its session's process group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def check_source(
    source: Path, more_warnings: Callable[[Krt], Iterable[str]] | None = None,
) -> tuple[Krt | None, list[str], list[str]]:  # fmt: skip
    """:func:`check_krt` for a folder or a ``.krt`` package, and ``more_warnings`` of a valid one, found while a
    package is unpacked; problems and warnings name the package, not where it was unpacked."""
    from krt_runner.krt.package import is_package, open_krt

    try:
        with open_krt(source) as root:
            krt, problems = check_krt(root)
            # Stale generated code, with problems too: an rpc added to the proto and not generated is one.
            warnings = [*stale_code_warnings(krt), *(more_warnings(krt) if more_warnings and not problems else ())] \
                if krt is not None else []
            def named(texts: list[str]) -> list[str]:  # where it was unpacked: the package's name instead
                return [text.replace(str(root), str(source)) for text in texts] if is_package(source) else texts

            return krt, named(problems), named(warnings)
    except KrtFileError as exc:  # the package itself cannot be read
        return None, [f"{exc.path}: {problem}" for problem in exc.problems], []


def report_problems(command: str, source: Path | str, problems: list[str], *, err: TextIO) -> int:
    """Print every problem as ``check`` does (``build`` refuses a KRT with the same list); returns exit code 2."""
    print(f"krt-runner {command}: {len(problems)} problem(s) in {source}:", file=err)
    for problem in problems:
        print(f"  - {problem}", file=err)
    return EXIT_USAGE


def run_check(
    directory: Path, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr,
    more_warnings: Callable[[Krt], Iterable[str]] | None = None,
) -> int:  # fmt: skip
    """Run the ``check`` command on a folder or a ``.krt``: 0 and the wiring when all is well, 2 and every problem.
    ``more_warnings``: what other layers find worth a warning in a valid KRT (the entrypoint's refusals)."""
    krt, problems, warnings = check_source(directory, more_warnings)
    if problems or krt is None:
        report_problems("check", directory, problems, err=err)
        for warning in warnings:
            print(f"krt-runner check: warning: {warning}", file=err)
        return EXIT_USAGE
    print(f"{directory}: KRT {krt.version}, {len(krt.nodes)} node(s), {len(krt.workflows)} workflow(s): OK", file=out)
    for wired in wiring(krt):
        print(f"  {wired.workflow.name}/{wired.node.name}: {wired.input} -> {wired.output or '(reply)'}", file=out)
    missing = missing_config(krt, os.environ)
    if missing:  # a value may be given only where the KRT runs: a warning, not a problem
        print(f"krt-runner check: warning: config of krt.yml without a value here: {', '.join(missing)} "
              "(krt-runner up needs each exported)", file=err)
    for warning in warnings:
        print(f"krt-runner check: warning: {warning}", file=err)
    return EXIT_OK


def _import_only(base_path: str, handler_path: str, verdict_file: str) -> int:
    """In the child process of _import_problem: import the handler module and write why it cannot serve (empty when
    it can) to ``verdict_file``."""
    try:
        load_user_code(handler_path, Path(base_path), protobuf_compat=setting_from_env("protobuf_compat"))
    except (HandlerLoadError, ConfigError) as exc:
        verdict, code = " ".join(str(exc).split()), EXIT_USAGE
    except BaseException as exc:  # sys.exit() at import: the node would not start either
        verdict, code = f"cannot load handler {handler_path!r}: import failed: {describe(exc)}", EXIT_USAGE
    else:
        verdict, code = "", EXIT_OK
    Path(verdict_file).write_text(verdict, encoding="utf-8")
    return code


if __name__ == "__main__":  # the child process of _import_problem
    verdict_code = _import_only(sys.argv[1], sys.argv[2], sys.argv[3])
    flush_std_streams()
    os._exit(verdict_code)  # without waiting for a thread the module started (Python would, for ever)
