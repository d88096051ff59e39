"""What the entrypoint serves: the rpcs of the KRT proto's ``Entrypoint`` service, each bound to its workflow.

The proto is compiled at start (grpcio-tools), so a KRT needs no generated code
for its entrypoint. Everything that would only break at call time in KRE v1's
entrypoint stops start-up here instead (:class:`EntrypointError`): no
``Entrypoint`` service, a streaming rpc, an rpc no workflow serves, a workflow
with no rpc.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import FileDescriptor, MethodDescriptor
from google.protobuf.descriptor_pb2 import FileDescriptorProto
from google.protobuf.message import Message

from krt_runner import setting_values as parse
from krt_runner.entrypoint import grpc_installed
from krt_runner.errors import EntrypointError, ProtoError
from krt_runner.krt.model import Krt, entry_subject
from krt_runner.krt.protos import compile_proto

SERVICE = "Entrypoint"  # the one service KRE v1's entrypoint served
_TYPE_URL_PREFIX = "type.googleapis.com/"


@dataclass(frozen=True)
class Rpc:
    """One unary rpc and the workflow behind it."""

    name: str
    workflow: str
    subject: str
    request_class: type[Message]
    request_type_url: str
    response_name: str
    response_type_url: str
    response_class: type[Message]


@dataclass(frozen=True)
class EntrypointService:
    """The ``<package>.Entrypoint`` service of a KRT, ready to serve."""

    name: str
    proto: str
    rpcs: tuple[Rpc, ...]
    pool: descriptor_pool.DescriptorPool  # the proto's descriptors, for server reflection


def read_service(krt: Krt, *, version: str, subjects_file: Path | None = None) -> EntrypointService:
    """Compile the KRT's proto and bind each rpc of its ``Entrypoint`` service to its workflow's subject."""
    try:
        file = compile_proto(krt.directory / krt.proto)
    except ProtoError as exc:
        raise EntrypointError([str(exc)]) from None
    service = file.services_by_name.get(SERVICE)
    if service is None:
        found = ", ".join(file.services_by_name) or "none"
        raise EntrypointError([f"{krt.proto} has no service {SERVICE} (services: {found})"])
    subjects = _subjects(krt, version, subjects_file)
    problems = _problems(krt, list(service.methods), subjects, subjects_file)
    if problems:
        raise EntrypointError(problems)
    workflows = {workflow.entrypoint: workflow.name for workflow in krt.workflows}
    rpcs = tuple(_rpc(method, workflows[method.name], subjects[method.name]) for method in service.methods)
    return EntrypointService(name=service.full_name, proto=krt.proto, rpcs=rpcs, pool=file.pool)


def refusals(krt: Krt) -> list[str]:
    """What would stop ``krt-runner entrypoint`` serving this KRT, as ``check``'s warnings (nothing without the
    entrypoint extra, which compiles the proto)."""
    if not grpc_installed():
        return []
    try:
        read_service(krt, version=krt.version)
    except EntrypointError as exc:
        return [f"krt-runner entrypoint would refuse this KRT: {problem}" for problem in exc.problems]
    return []


def _subjects(krt: Krt, version: str, subjects_file: Path | None) -> dict[str, str]:
    """Each rpc's subject: from KRE v1's subjects file when given, else ``<version>-<rpc>-entrypoint``."""
    if subjects_file is None:
        return {workflow.entrypoint: entry_subject(version, workflow) for workflow in krt.workflows}
    try:
        mapping = json.loads(subjects_file.read_text())
    except (OSError, ValueError) as exc:
        raise EntrypointError([f"KRT_NATS_SUBJECTS_FILE {subjects_file}: {exc}"]) from None
    where = f"KRT_NATS_SUBJECTS_FILE {subjects_file}"
    if not isinstance(mapping, dict):
        raise EntrypointError([f"{where}: expected a JSON object of rpc -> subject, not a {type(mapping).__name__}"])
    return {str(key): value for key, value in mapping.items()}  # values of the wrong type: said with the rest


def _problems(
    krt: Krt, methods: list[MethodDescriptor], subjects: Mapping[str, Any], subjects_file: Path | None
) -> list[str]:
    entrypoints = [workflow.entrypoint for workflow in krt.workflows]
    names = [method.name for method in methods]
    where = f"rpc {SERVICE}."
    problems = [
        f"{where}{method.name} is streaming: the entrypoint serves unary rpcs only"
        for method in methods
        if method.client_streaming or method.server_streaming
    ]
    problems += [
        f"{where}{name} matches no workflow's entrypoint in krt.yml (entrypoints: {', '.join(entrypoints)})"
        for name in names
        if name not in entrypoints
    ]
    problems += [
        f"workflow {workflow.name!r}: entrypoint {workflow.entrypoint!r} is not an rpc of service {SERVICE} "
        f"in {krt.proto} (rpcs: {', '.join(names) or 'none'})"
        for workflow in krt.workflows
        if workflow.entrypoint not in names
    ]
    problems += [f"KRT_NATS_SUBJECTS_FILE has no subject for rpc {name}" for name in names
                 if name not in subjects and name in entrypoints]  # an rpc with no workflow is said above
    problems += [f"KRT_NATS_SUBJECTS_FILE {subjects_file}: rpc {name}'s subject is {subject!r}: expected a subject "
                 "(a non-empty string)" for name, subject in subjects.items() if not _is_text(subject)]
    problems += [problem for name in names if name in subjects and (problem := _subject_problem(name, subjects[name]))]
    return problems


def _subject_problem(rpc: str, subject: Any) -> str:
    """Why calls of ``rpc`` could not be published to ``subject`` (a space in KRT_VERSION, a wildcard); ``""``."""
    if not _is_text(subject):
        return ""  # said as a value of the wrong type
    try:
        parse.subject(subject)
    except ValueError as exc:
        return f"rpc {rpc}'s subject: {exc} (made from KRT_VERSION, or given by KRT_NATS_SUBJECTS_FILE)"
    return ""


def _is_text(subject: Any) -> bool:
    return isinstance(subject, str) and bool(subject)


def _rpc(method: MethodDescriptor, workflow: str, subject: str) -> Rpc:
    request, response = method.input_type, method.output_type
    return Rpc(
        name=method.name,
        workflow=workflow,
        subject=subject,
        request_class=message_factory.GetMessageClass(request),
        request_type_url=_TYPE_URL_PREFIX + request.full_name,
        response_name=response.full_name,
        response_type_url=_TYPE_URL_PREFIX + response.full_name,
        response_class=message_factory.GetMessageClass(response),
    )


def add_file(pool: descriptor_pool.DescriptorPool, file: FileDescriptor) -> None:
    """Add ``file`` and what it imports to ``pool`` unless there already (for reflection of other services)."""
    try:
        pool.FindFileByName(file.name)
        return
    except KeyError:
        pass
    for dependency in file.dependencies:
        add_file(pool, dependency)
    proto = FileDescriptorProto()
    file.CopyToProto(proto)
    pool.Add(proto)
