"""Request and response types for ``krt-runner call`` and ``up --request``, and their JSON form.

Types come from a generated ``_pb2`` module (a ``.py`` file or a module name)
or from a ``.proto`` file compiled on the fly by the ``proto`` extra
(grpcio-tools). Which messages to use: an rpc named by ``method`` (KRE v1's
entrypoint proto has one rpc per workflow entrypoint), explicit type names, the
file's only rpc, or messages named ``Request`` and ``Response``, in that order.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import Descriptor, FileDescriptor, MethodDescriptor
from google.protobuf.message import DecodeError, Message

from krt_runner._user_files import exec_file
from krt_runner.errors import ProtoError
from krt_runner.krt.model import KRT_FILE
from krt_runner.node.generated_code import refused_generated_code, regenerate_hint
from krt_runner.python_command import python_module


@dataclass(frozen=True)
class MessageTypes:
    """The request and response classes of one call."""

    request: type[Message]
    response: type[Message]


def load_file(source: str) -> FileDescriptor:
    """The file descriptor behind ``source``: a ``.proto`` file, a ``_pb2.py`` file or a module name."""
    if source.endswith(".proto"):
        return compile_proto(Path(source))
    if source.endswith(".py"):
        return _import_file(Path(source))
    if os.getcwd() not in sys.path:  # looked up as `python -m` would, the working directory first
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(source)
    except ImportError as exc:
        raise ProtoError(f"cannot import {source!r}: {exc}; pass a .proto or a _pb2.py file instead") from None
    return _descriptor_of(module, source)


def find_types_source(proto: Path, search: Iterable[Path]) -> str:
    """The generated ``<name>_pb2.py`` of ``proto`` beside it or in ``search``, else ``proto`` itself."""
    generated = f"{proto.stem}_pb2.py"
    for directory in (proto.parent, *search):
        if (directory / generated).is_file():
            return str(directory / generated)
    return str(proto)


def select_types(
    file: FileDescriptor, *, method: str | None = None, request: str | None = None, response: str | None = None
) -> MessageTypes:
    """Pick the request and response types of ``file`` (see the module docstring for the order)."""
    if request and response and not method:
        pair = (_message(file, request), _message(file, response))
    else:
        default = _default_pair(file, method)
        pair = (
            _message(file, request) if request else default[0],
            _message(file, response) if response else default[1],
        )
    return MessageTypes(
        request=message_factory.GetMessageClass(pair[0]), response=message_factory.GetMessageClass(pair[1])
    )


def parse_json(text: str, message_type: type[Message]) -> Message:
    """``text`` (protobuf's JSON mapping) as a ``message_type``; a :class:`ProtoError` says what does not fit."""
    message = message_type()
    pool: Any = message.DESCRIPTOR.file.pool  # the C and Python pools share one interface
    try:
        json_format.Parse(text, message, descriptor_pool=pool)
    except json_format.ParseError as exc:
        raise ProtoError(f"request is not a valid {message.DESCRIPTOR.full_name} in JSON: {exc}") from None
    return message


def to_json(message: Message, *, indent: int | None = 2, with_defaults: bool = False, ascii_only: bool = False) -> str:
    """``message`` in protobuf's JSON mapping, with the field names of the .proto; text as it is ("Zoë"), or with
    ``ascii_only`` escaped ("Zo\\u00eb"), for an output that cannot show it."""
    pool: Any = message.DESCRIPTOR.file.pool
    return json_format.MessageToJson(
        message,
        preserving_proto_field_name=True,
        indent=indent,
        always_print_fields_with_no_presence=with_defaults,
        descriptor_pool=pool,
        ensure_ascii=ascii_only,
    )


def rpc_names(file: FileDescriptor) -> list[str]:
    """The names of every rpc of every service in ``file``."""
    return [method.name for method in _methods(file)]


def _methods(file: FileDescriptor) -> list[MethodDescriptor]:
    return [method for service in file.services_by_name.values() for method in service.methods]


def _default_pair(file: FileDescriptor, method: str | None) -> tuple[Descriptor, Descriptor]:
    methods = _methods(file)
    names = ", ".join(m.name for m in methods) or "none"
    if method:
        for candidate in methods:
            if candidate.name == method:
                return candidate.input_type, candidate.output_type
        raise ProtoError(f"{file.name} has no rpc {method!r} (rpcs: {names})")
    if len(methods) == 1:
        return methods[0].input_type, methods[0].output_type
    messages = file.message_types_by_name
    if "Request" in messages and "Response" in messages:
        return messages["Request"], messages["Response"]
    raise ProtoError(
        f"cannot tell the request and response types of {file.name} (rpcs: {names}; "
        f"messages: {', '.join(messages) or 'none'}): pass --method or --request-type and --response-type"
    )


def _message(file: FileDescriptor, name: str) -> Descriptor:
    """The message ``name`` of ``file``: relative to its package (``Outer.Inner`` for a nested one) or fully
    qualified."""
    candidates = [f"{file.package}.{name}", name] if file.package else [name]
    for full_name in candidates:
        try:
            return file.pool.FindMessageTypeByName(full_name)
        except KeyError:
            continue
    known = ", ".join(file.message_types_by_name) or "none"
    raise ProtoError(f"no message {name!r} in {file.name} (messages: {known})")


def _descriptor_of(module: object, source: str) -> FileDescriptor:
    descriptor = getattr(module, "DESCRIPTOR", None)
    if not isinstance(descriptor, FileDescriptor):
        raise ProtoError(f"{source!r} is not a generated protobuf module (no DESCRIPTOR)")
    return descriptor


def _import_file(path: Path) -> FileDescriptor:
    path = path.resolve()
    if not path.is_file():
        raise ProtoError(f"no file at {path}")
    loaded = sys.modules.get(path.stem)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == path:
        return _descriptor_of(loaded, str(path))
    try:
        module = exec_file(path, name=path.stem, keep_folder_on_path=False)
    except Exception as exc:
        refused = refused_generated_code(exc, root=path.parent)
        if refused is not None:
            raise ProtoError(f"cannot import {path}: {refused}: {regenerate_hint(_krt_folder_of(path))}") from None
        name = recorded_proto_name(path)
        if name and _name_taken(name):  # by another file of that name: an identical one is taken again without a word
            return _compiled_instead(path, name)
        raise ProtoError(f"cannot import {path}: {type(exc).__name__}: {exc}") from None
    return _descriptor_of(module, str(path))


def _name_taken(name: str) -> bool:
    """A module of this process registered a ``.proto`` of this name (two KRTs made by ``krt-runner init`` both have
    an ``entrypoint.proto``): protobuf's default pool refuses a second, different one."""
    try:
        descriptor_pool.Default().FindFileByName(name)
    except KeyError:
        return False
    return True


def _compiled_instead(generated: Path, name: str) -> FileDescriptor:
    """The types of ``generated`` (recorded as ``name``) from its ``.proto``, compiled into a pool of their own."""
    candidates = [folder / name for folder in (generated.parent, *generated.parents)]
    candidates += [folder / Path(name).name for folder in (generated.parent, _krt_folder_of(generated) / "proto")]
    proto = next((path for path in candidates if path.is_file()), None)
    if proto is None:
        raise ProtoError(f"cannot import {generated}: this process already holds another {name} (protobuf keeps one "
                         f"file of a name per process), and no {name} is found to compile: rename one of the two")
    return compile_proto(proto)


def _krt_folder_of(path: Path) -> Path:
    """The KRT folder holding ``path`` (the nearest with a krt.yml), else ``path``'s own folder."""
    return next((folder for folder in path.parents if (folder / KRT_FILE).is_file()), path.parent)


def grpc_tools_include(*, missing: str) -> Path:
    """The folder of protobuf's own ``.proto`` files (``google/protobuf/any.proto``...) that grpcio-tools ships;
    :class:`ProtoError` saying ``missing`` when grpcio-tools (the ``proto`` extra) is not installed."""
    tools = importlib.util.find_spec("grpc_tools")
    if tools is None or tools.origin is None:
        raise ProtoError(missing)
    return Path(tools.origin).parent / "_proto"


def run_protoc(
    proto: Path, *outputs: str, include: Path, search: Iterable[Path] = (), named_from: Path | None = None
) -> None:
    """Run the protoc of grpcio-tools on ``proto`` with ``outputs`` (``--python_out=DIR``, ...); imports are looked
    up beside it, then in ``search``, then in ``include``. ``named_from``: the folder the file's name in the
    descriptors is relative to (default: its own). :class:`ProtoError` with protoc's own words on failure."""
    folders = dict.fromkeys([named_from or proto.parent, proto.parent, *search, include])  # in order, each once
    command = python_module("grpc_tools.protoc", *(f"-I{folder}" for folder in folders), *outputs, str(proto))
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise ProtoError(f"protoc failed on {proto}: {' '.join(done.stderr.split())}")


def compile_proto(path: Path) -> FileDescriptor:
    """Compile with the protoc of grpcio-tools into a private pool (no generated code is written)."""
    if not path.is_file():
        raise ProtoError(f"no file at {path}")
    include = grpc_tools_include(
        missing=f"compiling {path.name} needs grpcio-tools: pip install 'krt-runner[proto]', "
        f"or pass the generated {path.stem}_pb2.py instead"
    )
    with tempfile.TemporaryDirectory(prefix="krt-proto-") as workdir:
        out = Path(workdir) / "set.pb"
        run_protoc(path, "--include_imports", f"--descriptor_set_out={out}", include=include,
                   search=[_krt_folder_of(path)])  # imports named from the KRT folder, as the nodes load them
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return pool.FindFileByName(path.name)


def stale_code_warning(compiled: FileDescriptor, generated: FileDescriptor, shown: str, proto_shown: str) -> str:
    """A warning when ``generated`` (a ``_pb2.py``'s types, named ``shown``) is not what the ``.proto`` named
    ``proto_shown`` compiles to now (``compiled``): the entrypoint would read the ``.proto`` and the nodes the old
    code. ``""`` when they agree."""
    changed = sorted(_schema(compiled) ^ _schema(generated))
    if not changed:
        return ""
    names = ", ".join(dict.fromkeys(name for name, _ in changed))
    return (f"{shown} was not generated from {proto_shown} as it is now (they differ in {names}): "
            "write it again with krt-runner protos on the KRT folder")


def _schema(file: FileDescriptor) -> set[tuple[str, bytes]]:
    """Each message, enum and service of ``file`` with what defines it on the wire and in calls: not the file's
    name, imports, options or field ``json_name`` (protoc writes those differently from one call to the next)."""
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    parts: set[tuple[str, bytes]] = {("package", proto.package.encode())}
    for message in proto.message_type:
        _without_json_names(message)
        parts.add((message.name, message.SerializeToString(deterministic=True)))
    for kind in (proto.enum_type, proto.service):
        parts.update((item.name, item.SerializeToString(deterministic=True)) for item in kind)
    return parts


def _without_json_names(message: descriptor_pb2.DescriptorProto) -> None:
    for field in message.field:
        field.ClearField("json_name")
    for nested in message.nested_type:
        _without_json_names(nested)


def recorded_proto_name(generated: Path) -> str:
    """The ``.proto`` name a generated ``_pb2.py`` records (``greeter.proto``, ``proto/shared/common.proto``), read
    from its text without importing it; ``""`` when it cannot be read."""
    try:
        tree = ast.parse(generated.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return ""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        for keyword in node.keywords:  # protoc before 3.20: FileDescriptor(name='x.proto', ...)
            if keyword.arg == "name" and isinstance(keyword.value, ast.Constant) and \
                    str(keyword.value.value).endswith(".proto"):
                return str(keyword.value.value)
        if getattr(node.func, "attr", "") == "AddSerializedFile" and node.args and \
                isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, bytes):
            with contextlib.suppress(DecodeError):
                return descriptor_pb2.FileDescriptorProto.FromString(node.args[0].value).name
    return ""
