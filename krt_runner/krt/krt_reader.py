"""Reading ``krt.yml`` into a :class:`~krt_runner.krt.model.Krt`: every problem of the file noted at once."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from krt_runner.errors import KrtFileError
from krt_runner.krt.model import (
    KRT_FILE,
    NODE_WIRING,
    SET_BY_UP_AND_MANIFESTS,
    Krt,
    NodeSpec,
    WorkflowSpec,
    entry_subject,
    handler_file,
)
from krt_runner.krt.resources import read_replicas, read_resources

# KRE v1's "resource-name": lowercase letters, digits and '-', shorter than 20 characters.
_RESOURCE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_MAX_NAME_LENGTH = 19
# KRE v1's "env": config names are environment variable names.
_ENV_NAME = re.compile(r"^[A-Z0-9]([_A-Z0-9]*[A-Z0-9])?$")
# A workflow entrypoint is an rpc name and becomes part of a subject: no dots, spaces or wildcards.
_ENTRYPOINT_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
# `src`: KRE v1's templates name the entrypoint's code, which KRE v1 stopped reading; accepted and ignored.
_ENTRYPOINT_FIELDS = ("proto", "image", "src")
_TOP_FIELDS = ("krtVersion", "version", "description", "entrypoint", "config", "nodes", "workflows")
_V2_HINT = "is a KRT v2 field; krt-runner reads KRT v1 (workflows list nodes in 'sequential')"


def load_krt(directory: Path | str, *, node_files: bool = True) -> Krt:
    """Read and validate ``DIRECTORY/krt.yml``; raise :class:`KrtFileError` listing every problem. Without
    ``node_files``, a node's ``src`` need not be there yet (the entrypoint reads the proto alone: a Go node's
    binary may be built elsewhere)."""
    root = Path(directory)
    path = root / KRT_FILE
    if not root.is_dir():
        raise KrtFileError(str(root), ["no such folder" if not root.exists() else
                                       "is a file, not a KRT folder (a folder with krt.yml at its top, or a .krt)"])
    if not path.is_file():
        raise KrtFileError(str(path), ["does not exist: a KRT v1 directory has a krt.yml at its top"])
    text = read_text(path)
    try:
        document = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader
    except yaml.YAMLError as exc:
        raise KrtFileError(str(path), [f"not valid YAML: {_one_line(exc)}"]) from None
    return parse_krt(document, root, node_files=node_files)


def read_text(path: Path) -> str:
    """A KRT's text file (``krt.yml``, ``.krtignore``), read as UTF-8; :class:`KrtFileError` when it is not."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise KrtFileError(str(path), [f"is not UTF-8 text (byte {exc.object[exc.start]:#04x} at position "
                                       f"{exc.start}): save it as UTF-8"]) from None


def parse_krt(document: Any, directory: Path | str, *, node_files: bool = True) -> Krt:
    """Validate an already parsed ``krt.yml`` document whose files live in ``directory``.

    The one validator: :func:`load_krt` and the Python DSL (:mod:`krt_runner.krt.dsl`)
    both end here, so their problems read the same.
    """
    root = Path(directory)
    reader = KrtReader(root, node_files=node_files)
    krt = reader.krt(document)
    if reader.problems:
        raise KrtFileError(str(root / KRT_FILE), reader.problems)
    return krt


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (the safe loader keeps the last silently: a
    second ``workflows:`` would drop the first list)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:  # the keys written here: what a merge (<<: *anchor) brings may be overridden
            if key_node.tag != "tag:yaml.org,2002:str":
                continue  # a merge key, a number, a list (which the loader refuses itself)
            key = self.construct_scalar(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice in one mapping", key_node.start_mark)
            seen.add(str(key))
        return super().construct_mapping(node, deep=deep)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


class KrtReader:
    """Builds a :class:`Krt` from parsed YAML, noting each problem as ``field: what is wrong``."""

    def __init__(self, root: Path, *, node_files: bool = True) -> None:
        self.root = root
        self.node_files = node_files
        self.problems: list[str] = []

    def problem(self, where: str, what: str) -> None:
        self.problems.append(f"{where}: {what}")

    def krt(self, document: Any) -> Krt:
        top = self.mapping(document, "(top level)", _TOP_FIELDS)
        if top.get("krtVersion", "v1") != "v1":
            self.problem("krtVersion", f"is {top['krtVersion']!r}; krt-runner reads KRT v1 files only")
        version = self.name(top, "version", "version")
        description = self.text(top, "description", "description")
        entrypoint = self.mapping(top.get("entrypoint"), "entrypoint", _ENTRYPOINT_FIELDS)
        proto, image = self.proto(entrypoint), self.text(entrypoint, "image", "entrypoint.image")
        config = self.mapping(top.get("config") or {}, "config", ("variables", "files"))
        variables, files = self.env_names(config, "variables"), self.env_names(config, "files")
        nodes = self.nodes(top.get("nodes"))
        workflows = self.workflows(top.get("workflows"), {node.name for node in nodes})
        if not self.problems:
            self.distinct_steps(version, workflows)
        return Krt(self.root.resolve(), version, description, proto, image, variables, files, nodes, workflows)

    # -- fields ---------------------------------------------------------------------------------

    def mapping(self, value: Any, where: str, fields: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.problem(where, f"must be a mapping with {', '.join(fields)}")
            return {}
        for key in value:
            if key not in fields:
                hint = _V2_HINT if key in ("subscriptions", "nodes", "exitpoint", "exitPoint") else (
                    f"unknown field; expected one of {', '.join(fields)}"
                )
                self.problem(f"{where}.{key}" if where != "(top level)" else str(key), hint)
        return value

    def items(self, value: Any, where: str) -> list[Any]:
        if not isinstance(value, list) or not value:
            self.problem(where, "must be a list with at least one entry")
            return []
        return value

    def text(self, mapping: Mapping[str, Any], key: str, where: str) -> str:
        value = mapping.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            self.problem(where, "is required")
            return ""
        if not isinstance(value, str):
            self.problem(where, f"must be a string, not {type(value).__name__}")
            return ""
        return value.strip()

    def name(self, mapping: Mapping[str, Any], key: str, where: str) -> str:
        value = self.text(mapping, key, where)
        if value and not (_RESOURCE_NAME.match(value) and len(value) <= _MAX_NAME_LENGTH):
            self.problem(
                where,
                f"{value!r} is not a valid name: lowercase letters, digits and '-' only, "
                f"at most {_MAX_NAME_LENGTH} characters, e.g. my-name",
            )
        return value

    def env_names(self, config: Mapping[str, Any], key: str) -> tuple[str, ...]:
        values = config.get(key) or []
        if not isinstance(values, list):
            self.problem(f"config.{key}", "must be a list of names")
            return ()
        for index, value in enumerate(values):
            if not isinstance(value, str) or not _ENV_NAME.match(value):
                self.problem(f"config.{key}[{index}]", f"{value!r} must use capital letters, digits and '_' only")
            elif value in NODE_WIRING:
                self.problem(f"config.{key}[{index}]", f"{value!r} is set by krt-runner for each node (its wiring): "
                             "as a config variable every node would get the same value; choose another name")
            elif value in SET_BY_UP_AND_MANIFESTS:
                self.problem(f"config.{key}[{index}]", f"{value!r} is set on every node by "
                             f"{SET_BY_UP_AND_MANIFESTS[value]}, over a config value: set it there")
        return tuple(str(value) for value in values)

    def proto(self, entrypoint: Mapping[str, Any]) -> str:
        proto = self.text(entrypoint, "proto", "entrypoint.proto")
        if proto and not proto.endswith(".proto"):
            self.problem("entrypoint.proto", f"{proto!r} must be a .proto file")
        elif proto:
            self.file_inside(proto, "entrypoint.proto")
        return proto

    def file_inside(self, path: str, where: str) -> None:
        """A file of the KRT: inside its folder (what is outside is not packed, nor there where it is deployed)."""
        if not (self.root / path).is_file():
            self.problem(where, f"{path!r} does not exist under {self.root}")
        elif not (self.root / path).resolve().is_relative_to(self.root.resolve()):
            self.problem(where, f"{path!r} is outside the KRT folder {self.root}: a package or an image would not "
                         "hold it; copy it in")

    # -- nodes and workflows ---------------------------------------------------------------------

    def nodes(self, value: Any) -> tuple[NodeSpec, ...]:
        nodes = tuple(self.node(item, f"nodes[{index}]") for index, item in enumerate(self.items(value, "nodes")))
        self.unique([node.name for node in nodes], "nodes", "node")
        return nodes

    def node(self, item: Any, where: str) -> NodeSpec:
        fields = self.mapping(item, where, ("name", "image", "src", "gpu", "replicas", "resources"))
        name, image = self.name(fields, "name", f"{where}.name"), self.text(fields, "image", f"{where}.image")
        src = self.text(fields, "src", f"{where}.src")
        if src and self.node_files:
            self.file_inside(handler_file(src), f"{where}.src")
        gpu = fields.get("gpu", False)
        if not isinstance(gpu, bool):
            self.problem(f"{where}.gpu", f"must be true or false, not {gpu!r}")
        replicas = read_replicas(fields.get("replicas"), f"{where}.replicas", self.problem)
        resources = read_resources(fields.get("resources"), f"{where}.resources", self.problem)
        return NodeSpec(name=name, image=image, src=src, gpu=gpu is True, replicas=replicas, resources=resources)

    def workflows(self, value: Any, node_names: set[str]) -> tuple[WorkflowSpec, ...]:
        workflows = tuple(
            self.workflow(item, f"workflows[{index}]", node_names)
            for index, item in enumerate(self.items(value, "workflows"))
        )
        self.unique([workflow.name for workflow in workflows], "workflows", "workflow name")
        self.unique([workflow.entrypoint for workflow in workflows], "workflows", "entrypoint")
        return workflows

    def workflow(self, item: Any, where: str, node_names: set[str]) -> WorkflowSpec:
        fields = self.mapping(item, where, ("name", "entrypoint", "sequential"))
        name = self.name(fields, "name", f"{where}.name")
        entrypoint = self.text(fields, "entrypoint", f"{where}.entrypoint")
        if entrypoint and not _ENTRYPOINT_NAME.match(entrypoint):
            self.problem(f"{where}.entrypoint", f"{entrypoint!r} must be letters, digits, '_' or '-' (an rpc name)")
        sequential = tuple(str(name) for name in self.items(fields.get("sequential"), f"{where}.sequential"))
        for index, node in enumerate(sequential):
            if node not in node_names:
                self.problem(f"{where}.sequential[{index}]", f"node {node!r} is not defined in nodes")
        self.unique(list(sequential), f"{where}.sequential", "node")
        return WorkflowSpec(name=name, entrypoint=entrypoint, sequential=sequential)

    def distinct_steps(self, version: str, workflows: tuple[WorkflowSpec, ...]) -> None:
        """Names may hold '-', so two steps may come to one subject (``a`` + ``b-c`` and ``a-b`` + ``c``: both
        ``<version>-a-b-c``) and take each other's requests, or to one Deployment (and compose service) name."""
        subjects: dict[str, str] = {}
        labels: dict[str, str] = {}
        for index, workflow in enumerate(workflows):
            for position, node in enumerate(workflow.sequential):
                step, where = f"{workflow.name}/{node}", f"workflows[{index}].sequential[{position}]"
                label = f"{workflow.name}-{node}"
                subject = entry_subject(version, workflow) if position == 0 else f"{version}-{label}"
                if subject in subjects:
                    self.problem(where, f"{step!r} would listen on {subject!r}, as {subjects[subject]!r} does: "
                                 "the two would take each other's messages; rename a node or a workflow")
                elif label in labels:
                    self.problem(where, f"{step!r} and {labels[label]!r} would both run as {version}-{label} (a "
                                 "Deployment or service name): rename a node or a workflow")
                subjects.setdefault(subject, step)
                labels.setdefault(label, step)

    def unique(self, values: list[str], where: str, what: str) -> None:
        for value, count in Counter(values).items():
            if value and count > 1:
                self.problem(where, f"{what} {value!r} appears {count} times; each must be unique")
