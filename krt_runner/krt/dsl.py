"""Describe a KRT in Python and write the ``krt.yml`` that ``check``, ``up`` and ``build`` read.

::

    from krt_runner import KRT

    krt = KRT(
        version="greeter-v1",
        description="Greets a person by name, then decorates the greeting.",
        proto="proto/greeter.proto",
        image="konstellation/kre-entrypoint:latest",
    )
    greet = krt.node("greet", image="krt-runner:dev", src="src/greet.py")
    decorate = krt.node("decorate", image="krt-runner:dev", src="src/decorate.py")
    krt.workflow("greet", entrypoint="Greet", sequence=greet >> decorate)

    if __name__ == "__main__":
        krt.write()          # krt.yml beside this file

The DSL only assembles the ``krt.yml`` document; :func:`~krt_runner.krt.krt_reader.parse_krt`
validates it, so a mistake is reported exactly as in a hand-written ``krt.yml``.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from krt_runner._user_files import exec_file
from krt_runner.errors import EXIT_USAGE, KrtFileError, NotAModuleError
from krt_runner.krt import model as workflow
from krt_runner.krt.krt_reader import parse_krt
from krt_runner.krt.model import KRT_FILE, Krt
from krt_runner.krt.resources import FIELDS, Resources

# First line of a krt.yml that the DSL wrote: such a file may be written over, a hand-written one never.
GENERATED_MARK = "# Written by krt_runner.KRT"


@dataclass(frozen=True)
class Node(workflow.NodeSpec):
    """A krt.yml node (name, image, src, gpu, replicas, resources) that ``a >> b`` chains into a workflow's
    sequence."""

    def __rshift__(self, other: Node | Chain) -> Chain:
        return Chain((self,)) >> other

    def document(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"name": self.name, "image": self.image, "src": self.src}
        if self.gpu:
            fields["gpu"] = True
        if self.replicas != 1:
            fields["replicas"] = self.replicas
        if self.resources.document():
            fields["resources"] = self.resources.document()
        return fields


@dataclass(frozen=True)
class Chain:
    """Nodes in the order a workflow runs them (``greet >> decorate >> shout``)."""

    nodes: tuple[Node, ...]

    def __rshift__(self, other: Node | Chain) -> Chain:
        if isinstance(other, Node):
            return Chain((*self.nodes, other))
        if isinstance(other, Chain):
            return Chain(self.nodes + other.nodes)
        return NotImplemented


class KRT:
    """A KRT v1 described in Python: version, entrypoint, config, nodes and workflows.

    ``proto`` and ``image`` are the entrypoint's; ``config`` is krt.yml's
    ``config`` (``{"variables": [...], "files": [...]}``). File paths are
    relative to ``root``: by default the folder of the file that builds the KRT.
    """

    def __init__(
        self,
        *,
        version: str,
        description: str,
        proto: str,
        image: str,
        config: Mapping[str, Sequence[str]] | None = None,
        root: Path | str | None = None,
    ) -> None:
        self.version = version
        self.description = description
        self.proto = proto
        self.image = image
        self.config = config
        self.source = _caller_file()
        self.root = Path(root) if root is not None else (self.source.parent if self.source else Path.cwd())
        self.nodes: list[Node] = []
        self.workflows: list[dict[str, Any]] = []

    def node(
        self, name: str, *, image: str, src: str, gpu: bool = False, replicas: int = 1,
        resources: Mapping[str, str] | None = None,
    ) -> Node:  # fmt: skip
        """Add a node (``src`` relative to ``root``); use the result in :meth:`workflow` sequences.

        ``resources`` takes krt.yml's keys (``cpuLimit``, ``memoryLimit``, ``cpuRequest``, ``memoryRequest``);
        :meth:`validate` checks them as ``check`` does.
        """
        known = {key: str(value) for key, value in (resources or {}).items() if key in FIELDS}
        unknown = set(resources or {}) - set(FIELDS)
        if unknown:
            raise TypeError(f"node {name!r}: unknown resources {sorted(unknown)}; expected {', '.join(FIELDS)}")
        added = Node(name=name, image=image, src=src, gpu=gpu, replicas=replicas,
                     resources=Resources(**{FIELDS[key]: value for key, value in known.items()}))
        self.nodes.append(added)
        return added

    def workflow(self, name: str, *, entrypoint: str, sequence: Node | Chain) -> None:
        """Add a workflow: ``entrypoint`` is its rpc name, ``sequence`` a node or ``a >> b >> c``."""
        if not isinstance(sequence, (Node, Chain)):
            raise TypeError(f"workflow {name!r}: sequence must be a node or nodes chained with >>")
        chain = sequence if isinstance(sequence, Chain) else Chain((sequence,))
        sequential = [node.name for node in chain.nodes]
        self.workflows.append({"name": name, "entrypoint": entrypoint, "sequential": sequential})

    def document(self) -> dict[str, Any]:
        """The krt.yml mapping, with the field names and order of KRE v1."""
        document: dict[str, Any] = {
            "version": self.version,
            "description": self.description,
            "entrypoint": {"proto": self.proto, "image": self.image},
        }
        if self.config is not None:
            document["config"] = {key: _plain(value) for key, value in self.config.items()}
        document["nodes"] = [node.document() for node in self.nodes]
        document["workflows"] = [dict(item, sequential=list(item["sequential"])) for item in self.workflows]
        return document

    def to_yaml(self) -> str:
        """The krt.yml text, with a first line saying it was generated (and from where)."""
        origin = f" from {self.source.name}" if self.source else ""
        body = yaml.safe_dump(self.document(), sort_keys=False, allow_unicode=True)
        return f"{GENERATED_MARK}{origin}; edit that, not this file.\n{body}"

    def validate(self) -> Krt:
        """The validated model, as :func:`~krt_runner.krt.krt_reader.load_krt` would read it from ``root``.

        Raises :class:`~krt_runner.errors.KrtFileError` with the problems a
        hand-written krt.yml of the same content would have.
        """
        return parse_krt(self.document(), self.root)

    def write(self, directory: Path | str | None = None) -> Path:
        """Validate, then write ``krt.yml`` into ``directory`` (default ``root``); returns its path.

        A krt.yml there that the DSL did not write is never replaced. Raises
        :class:`~krt_runner.errors.KrtFileError`; called from the top level of
        the script being run (``python pipeline.py``), it prints that error in
        one line instead and exits with code 2: a mistake in the KRT is no bug
        to show a traceback for. From a function, another module, a notebook or
        a REPL, it raises.
        """
        try:
            return self._write(directory)
        except KrtFileError as exc:
            if not _called_from_the_script(sys._getframe(1)):
                raise
            print(f"krt-runner: {exc.path}: {'; '.join(exc.problems)}", file=sys.stderr)
            raise SystemExit(EXIT_USAGE) from None

    def _write(self, directory: Path | str | None) -> Path:
        root = self.root if directory is None else Path(directory)
        parse_krt(self.document(), root)
        path = root / KRT_FILE
        if path.is_file() and not path.read_text(encoding="utf-8").startswith(GENERATED_MARK):
            problem = "exists and was not written by krt_runner.KRT: move it away, or build the folder as it is"
            raise KrtFileError(str(path), [problem])
        path.write_text(self.to_yaml(), encoding="utf-8")
        return path


def _called_from_the_script(frame: FrameType) -> bool:
    """Whether ``frame`` is the top-level code of the file ``python FILE`` runs."""
    if frame.f_globals.get("__name__") != "__main__" or frame.f_code.co_name != "<module>" or not sys.argv[0]:
        return False
    try:
        return Path(frame.f_code.co_filename).resolve() == Path(sys.argv[0]).resolve()
    except OSError:
        return False


def load_pipeline(spec: str) -> KRT:
    """The :class:`KRT` named by ``FILE.py:NAME`` (``NAME`` may be left out when the file defines only one)."""
    file_name, _, name = spec.partition(":")
    path = Path(file_name).resolve()
    module = _run_file(path)
    if name:
        found = getattr(module, name, None)
        if not isinstance(found, KRT):
            raise KrtFileError(str(path), [f"defines no krt_runner.KRT named {name!r}"])
        return found
    found_all = [value for value in vars(module).values() if isinstance(value, KRT)]
    if len(found_all) != 1:
        raise KrtFileError(str(path), [f"defines {len(found_all)} krt_runner.KRT objects: name one, {file_name}:NAME"])
    return found_all[0]


def _run_file(path: Path) -> Any:
    if not path.is_file():
        raise KrtFileError(str(path), ["does not exist"])
    try:
        return exec_file(path, name=f"krt_pipeline_{uuid.uuid4().hex}", keep_folder_on_path=False)
    except NotAModuleError:
        raise KrtFileError(str(path), ["is not a Python file"]) from None
    except Exception as exc:
        raise KrtFileError(str(path), [f"failed to run: {type(exc).__name__}: {exc}"]) from exc


def _caller_file() -> Path | None:
    """The file whose module-level code (or function) called ``KRT(...)``; None in a REPL."""
    frame = sys._getframe(2)
    file = frame.f_globals.get("__file__")
    return Path(file).resolve() if isinstance(file, str) else None


def _plain(value: Any) -> Any:
    """Tuples as lists (YAML's safe dumper writes lists); anything else as given, for the validator to judge."""
    return list(value) if isinstance(value, (list, tuple)) else value
