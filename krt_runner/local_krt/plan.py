"""What ``up`` and ``local()`` will start and send: a KRT read and checked before any process starts."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.message import Message

from krt_runner.entrypoint import MISSING_EXTRA, grpc_installed
from krt_runner.entrypoint.service import read_service
from krt_runner.errors import EntrypointError, ProtoError, UpError
from krt_runner.krt.check import (
    entrypoint_problems,
    import_problems,
    missing_config,
    stale_code_warnings,
    workflow_types_source,
)
from krt_runner.krt.krt_reader import load_krt
from krt_runner.krt.model import Krt, NodeWiring, WorkflowSpec, entry_subject, wiring
from krt_runner.krt.protos import MessageTypes, load_file, parse_json, rpc_names, select_types
from krt_runner.local_krt.ask import read_request

# Seconds every node gets to be ready (its init included) unless --ready-timeout says otherwise.
READY_TIMEOUT = 120.0


@dataclass(frozen=True)
class UpOptions:
    """What ``krt-runner up`` was asked to do."""

    directory: Path
    nats: str | None = None
    replicas: Mapping[str, int] = field(default_factory=dict)
    request: str | None = None
    workflow: str | None = None  # only this workflow's nodes run (and --request goes to it)
    timeout: float = 30.0
    ready_timeout: float = READY_TIMEOUT
    env: Mapping[str, str] = field(default_factory=dict)  # for every node, over up's own environment
    grpc: bool = True  # start the gRPC entrypoint (not with --request)
    grpc_port: int | None = None  # None: 9000, or a free port when 9000 is taken; 0: a free port
    delivery: str = "at-most-once"  # at-least-once: nats-server with JetStream, every node and requester on it
    ready_timeout_name: str = "--ready-timeout"  # how the caller sets ready_timeout, for the message when it runs out
    replicas_name: str = "--replicas"  # how the caller sets replicas, for its problems
    answer_stored: bool = True  # at least once, stop a node once its stored requests are answered (not local()'s)


@dataclass(frozen=True)
class GrpcPlan:
    """The gRPC entrypoint ``up`` will start once every node is ready."""

    service: str  # the full name: greeter.Entrypoint
    rpcs: dict[str, str]  # workflow name -> its rpc


@dataclass(frozen=True)
class EntryPoint:
    """Where a workflow takes requests, with the types and ``call`` flags that fit them."""

    workflow: WorkflowSpec
    subject: str
    flags: list[str]
    types: MessageTypes | None = None
    problem: str = ""


@dataclass(frozen=True)
class Plan:
    """Everything ``up`` will start and send, checked before any process starts."""

    krt: Krt
    replicas: list[tuple[NodeWiring, str]]  # (wiring, label), one per process
    config: dict[str, str]
    entry_points: list[EntryPoint]
    request: tuple[EntryPoint, Message] | None = None
    grpc: GrpcPlan | None = None
    grpc_problem: str = ""  # why the entrypoint will not start, when it was asked for
    warnings: tuple[str, ...] = ()  # what runs, but perhaps not as meant (a stale _pb2.py)


# Node processes an up (or local()) starts at most: each is a Python process of 50 MB or more on this machine.
MAX_NODE_PROCESSES = 64


def parse_replicas(values: list[str]) -> dict[str, int]:
    """``["greet=2"]`` -> ``{"greet": 2}``; a ``ValueError`` names a malformed entry."""
    replicas = {}
    for value in values:
        name, _, count = value.partition("=")
        if not name or not (count.strip().isascii() and count.strip().isdigit()):
            raise ValueError(f"--replicas {value!r}: expected NODE=N, e.g. --replicas greet=2")
        replicas[name.strip()] = int(count)
    return replicas


def make_plan(options: UpOptions, *, environ: Mapping[str, str] = os.environ) -> Plan:
    """Read the KRT, check the options and import every handler module that will run (as ``check`` does, ``init``
    not run); raises :class:`UpError` (or ``KrtFileError``) listing every problem."""
    krt = load_krt(options.directory)
    environ = {**environ, **options.env}
    wired = [w for w in wiring(krt) if w.workflow.name == options.workflow] or wiring(krt)  # --workflow's only
    problems = _problems(krt, options, wired, environ)
    processes = sum(options.replicas.get(w.node.name, w.node.replicas) for w in wired)  # counted, not listed
    if processes > MAX_NODE_PROCESSES:
        problems.append(f"{processes} node processes asked for (replicas of krt.yml and {options.replicas_name}): "
                        f"up runs each on this machine, at most {MAX_NODE_PROCESSES}")
    target = _request_workflow(krt, options, problems)
    problems += import_problems(krt, dict.fromkeys(w.node for w in wired), env=environ)
    if problems:
        raise UpError(problems)
    entry_points = [entry for entry in workflow_entry_points(krt) if entry.workflow in {w.workflow for w in wired}]
    grpc, grpc_problem = _grpc_plan(krt, options)
    warnings = tuple(stale_code_warnings(krt))
    try:
        request = _request(entry_points, target, options.request)
    except UpError as exc:  # a request the stale code cannot read: the warning says why
        raise UpError([*exc.problems, *(f"perhaps because {warning}" for warning in warnings)]) from None
    return Plan(
        krt=krt,
        replicas=_replicas(wired, options.replicas),
        config={name: environ[name] for name in krt.config_names},
        entry_points=entry_points,
        request=request,
        grpc=grpc,
        grpc_problem=grpc_problem,
        warnings=warnings,
    )


def _problems(krt: Krt, options: UpOptions, wired: list[NodeWiring], environ: Mapping[str, str]) -> list[str]:
    problems = [
        f"node {w.node.name!r} (src {w.node.src}) is not a Python node; krt-runner up runs Python nodes only"
        for w in wired
        if not w.node.is_python
    ]
    problems += _replica_problems(krt, options.replicas, options.replicas_name)
    problems += entrypoint_problems(krt)
    missing = missing_config(krt, environ)
    if missing:
        problems.append(f"config of krt.yml without a value: export {', '.join(missing)} before krt-runner up")
    return problems


def _grpc_plan(krt: Krt, options: UpOptions) -> tuple[GrpcPlan | None, str]:
    """The entrypoint to start, or why not: ``up`` runs without one rather than not at all."""
    if not options.grpc or options.request is not None:
        return None, ""
    if not grpc_installed():
        return None, MISSING_EXTRA
    try:
        service = read_service(krt, version=krt.version)
    except EntrypointError as exc:
        return None, "; ".join(exc.problems)
    return GrpcPlan(service=service.name, rpcs={w.name: w.entrypoint for w in krt.workflows}), ""


def _replica_problems(krt: Krt, replicas: Mapping[str, int], flag: str) -> list[str]:
    names = {node.name for node in krt.nodes}
    problems = [f"{flag} {name}: no node {name!r} in krt.yml" for name in replicas if name not in names]
    problems += [f"{flag} {name}={count}: must be at least 1" for name, count in replicas.items() if count < 1]
    return problems


def _request_workflow(krt: Krt, options: UpOptions, problems: list[str]) -> WorkflowSpec | None:
    names = [workflow.name for workflow in krt.workflows]
    if options.workflow is not None and options.workflow not in names:
        problems.append(f"--workflow {options.workflow}: no such workflow (workflows: {', '.join(names)})")
        return None
    if options.workflow is not None:
        return krt.workflow(options.workflow)
    if options.request is not None and len(names) > 1:
        problems.append(f"--request needs --workflow: this KRT has {len(names)} workflows ({', '.join(names)})")
    return krt.workflows[0]


def _replicas(wired: list[NodeWiring], replicas: Mapping[str, int]) -> list[tuple[NodeWiring, str]]:
    processes = []
    for wiring_ in wired:
        count = replicas.get(wiring_.node.name, wiring_.node.replicas)
        for index in range(1, count + 1):
            processes.append((wiring_, wiring_.label if count == 1 else f"{wiring_.label}#{index}"))
    return processes


def workflow_entry_points(krt: Krt) -> list[EntryPoint]:
    """Each workflow's entry subject with its request and response types (or the problem reading them)."""
    return [_entry_point(krt, workflow) for workflow in krt.workflows]


def _entry_point(krt: Krt, workflow: WorkflowSpec) -> EntryPoint:
    source = workflow_types_source(krt, workflow)
    subject = entry_subject(krt.version, workflow)
    flags = ["--proto", _shown_path(source)]
    try:
        file = load_file(source)
        if workflow.entrypoint in rpc_names(file):
            flags += ["--method", workflow.entrypoint]
            return EntryPoint(workflow, subject, flags, select_types(file, method=workflow.entrypoint))
        return EntryPoint(workflow, subject, flags, select_types(file))
    except ProtoError as exc:
        return EntryPoint(workflow, subject, flags, problem=str(exc))


def _request(
    entry_points: list[EntryPoint], target: WorkflowSpec | None, text: str | None
) -> tuple[EntryPoint, Message] | None:
    if text is None or target is None:
        return None
    entry = next(entry for entry in entry_points if entry.workflow == target)
    if entry.types is None:
        raise UpError([f"cannot read the request types of workflow {target.name!r}: {entry.problem}"])
    try:
        return entry, parse_json(read_request(text), entry.types.request)
    except (ProtoError, OSError) as exc:
        raise UpError([f"--request: {' '.join(str(exc).split())}"]) from None  # json_format's span lines


def _shown_path(path: str) -> str:
    """Relative to the working directory when it lies below it, absolute otherwise."""
    absolute = Path(path).resolve()
    return str(absolute.relative_to(Path.cwd())) if absolute.is_relative_to(Path.cwd()) else str(absolute)
