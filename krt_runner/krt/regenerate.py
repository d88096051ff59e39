"""``krt-runner protos DIR``: generate every ``_pb2.py`` of a KRT folder again, from the ``.proto`` files it holds.

A KRT carries the ``_pb2.py`` files of the protoc its authors had: code from a
protoc older than 3.19 does not load on protobuf 4 and later, code from a
newer one fails the runtime's version check. Each ``<name>_pb2.py`` is
written again, in place, by the protoc of grpcio-tools (the ``proto`` extra)
from ``<name>.proto``: the one beside it, else the only one in the folder.
A ``_pb2.pyi`` beside it is written again too. ``.proto`` files are only read;
a ``_pb2.py`` with no ``.proto`` is reported and left as it is.
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from krt_runner.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ProtoError
from krt_runner.krt.package import krt_folder
from krt_runner.krt.protos import grpc_tools_include, recorded_proto_name, run_protoc

GENERATED_SUFFIX = "_pb2.py"
# An import statement of a .proto file, and the name it imports.
_IMPORT = re.compile(r'^\s*import\s+(?:public\s+|weak\s+)?"([^"]+)"\s*;', re.MULTILINE)
# Folders a KRT may hold that are nobody's source: caches, virtual environments, version control.
_SKIPPED = ("__pycache__", "site-packages", "node_modules")
NO_GRPC_TOOLS = (
    "grpcio-tools is not installed: install krt-runner with its proto extra (pip install '.[proto]' in a clone of "
    "krt-runner)"
)


@dataclass(frozen=True)
class Regeneration:
    """One ``_pb2.py`` and the ``.proto`` it is generated from (``None``: none was found, or several)."""

    generated: Path
    proto: Path | None
    why_not: str = ""


def plan(root: Path) -> list[Regeneration]:
    """Every ``_pb2.py`` under ``root`` with its ``.proto``."""
    protos: dict[str, list[Path]] = {}
    for proto in _files(root, "*.proto"):
        protos.setdefault(proto.name, []).append(proto)
    return [_match(generated, protos.get(_proto_name(generated), []), root) for generated in _files(root, "*_pb2.py")]


def regenerate(generated: Path, proto: Path, *, include: Path, root: Path) -> list[Path]:
    """Write ``generated`` (and its ``.pyi`` when there is one) again from ``proto``; returns the files written.
    Imports of ``proto`` are looked up beside it, then from ``root``, then among protobuf's own."""
    stub = generated.with_suffix(".pyi")
    named_from = _named_from(generated, proto)
    with tempfile.TemporaryDirectory(prefix="krt-protos-") as workdir:
        outputs = [f"--python_out={workdir}", *([f"--pyi_out={workdir}"] if stub.is_file() else [])]
        run_protoc(proto, *outputs, include=include, search=[root], named_from=named_from)
        made = Path(workdir) / (proto.parent.relative_to(named_from) if named_from else "")  # protoc's folders
        written = [target for target in (generated, stub) if (made / target.name).is_file()]
        if generated not in written:
            raise ProtoError(f"protoc wrote no {generated.name} for {proto}")
        for target in written:
            shutil.copyfile(made / target.name, target)
    return written


def run_protos(directory: Path, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run the ``protos`` command: 0 when every ``_pb2.py`` with a ``.proto`` was written again, 1 when protoc
    failed on one, 2 when the folder or grpcio-tools is missing. ``directory`` may be the folder's krt.yml."""
    directory = krt_folder(directory)
    if not directory.is_dir():
        what = "a file: give the KRT folder (unpack a .krt first)" if directory.exists() else "not a folder"
        print(f"krt-runner protos: {directory} is {what}", file=err)
        return EXIT_USAGE
    try:
        include = grpc_tools_include(missing=NO_GRPC_TOOLS)
    except ProtoError as exc:
        print(f"krt-runner protos: {exc}", file=err)
        return EXIT_USAGE
    items = plan(directory)
    failed = 0
    for item in items:
        failed += not _regenerate_one(item, include=include, root=directory, out=out, err=err)
    left = sum(item.proto is None for item in items)
    done = len(items) - left - failed
    for proto in _without_code(directory, items):
        shown = proto.relative_to(directory)
        here = [shlex.quote(str(path)) for path in (_import_root(proto, directory), directory / "src", proto)]
        print(f"{shown} has no {shown.stem}_pb2.py in the folder, so none was written: make the first one where "
              f"your handler imports it from, e.g. python -m grpc_tools.protoc -I {here[0]} --python_out={here[1]} "
              f"{here[2]}; from then on this command keeps it in step", file=out)
    print(f"krt-runner protos: {done} _pb2.py file(s) written, {left} left as they are, {failed} failed", file=out)
    return EXIT_FAILED if failed else EXIT_OK


def _named_from(generated: Path, proto: Path) -> Path | None:
    """The folder ``proto``'s name in ``generated`` is relative to (``proto/shared/common.proto``: two folders up):
    written again under another name, the modules that import it would no longer find it."""
    recorded = recorded_proto_name(generated)
    parts = Path(recorded).parts if recorded else ()
    if not parts or proto.parts[-len(parts):] != parts:
        return None
    return proto.parents[len(parts) - 1]


def _import_root(proto: Path, root: Path) -> Path:
    """The folder to compile ``proto`` from (protoc's ``-I``): the one its name is relative to where another
    ``.proto`` of the folder imports it (``import "common/money.proto"``: two folders up, so the importing module's
    ``from common import money_pb2`` finds it); else its own folder."""
    for other in _files(root, "*.proto"):
        for name in _IMPORT.findall(other.read_text(encoding="utf-8", errors="replace")):
            parts = Path(name).parts
            if parts and proto.parts[-len(parts):] == parts:
                return proto.parents[len(parts) - 1]
    return proto.parent


def _without_code(root: Path, items: list[Regeneration]) -> list[Path]:
    """The ``.proto`` files no ``_pb2.py`` of the folder is generated from (a KRT just written by hand)."""
    generated = {_proto_name(item.generated) for item in items}
    return [proto for proto in _files(root, "*.proto") if proto.name not in generated]


def _regenerate_one(item: Regeneration, *, include: Path, root: Path, out: TextIO, err: TextIO) -> bool:
    shown = item.generated.relative_to(root)
    if item.proto is None:
        print(f"left {shown} as it is: {item.why_not}", file=out)
        return True
    try:
        written = regenerate(item.generated, item.proto, include=include, root=root)
    except ProtoError as exc:
        print(f"krt-runner protos: {shown}: {exc}", file=err)
        return False
    names = " and ".join(str(path.relative_to(root)) for path in written)
    print(f"wrote {names} from {item.proto.relative_to(root)}", file=out)
    return True


def _match(generated: Path, candidates: list[Path], root: Path) -> Regeneration:
    beside = [proto for proto in candidates if proto.parent == generated.parent]
    if beside or len(candidates) == 1:
        return Regeneration(generated, (beside or candidates)[0])
    name = _proto_name(generated)
    if not candidates:
        return Regeneration(generated, None, f"no {name} in {root}")
    found = ", ".join(str(proto.relative_to(root)) for proto in candidates)
    return Regeneration(generated, None, f"several {name} ({found}), none beside it")


def _proto_name(generated: Path) -> str:
    return generated.name.removesuffix(GENERATED_SUFFIX) + ".proto"


def _files(root: Path, pattern: str) -> Iterator[Path]:
    for path in sorted(root.rglob(pattern)):
        parts = path.relative_to(root).parts[:-1]
        if path.is_file() and not any(part.startswith(".") or part in _SKIPPED for part in parts):
            yield path
