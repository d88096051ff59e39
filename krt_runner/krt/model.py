"""The KRT v1 ``krt.yml``: read, validate (every problem at once) and wire nodes to subjects.

Subjects follow KRE v1: the first node of a workflow listens on
``<version>-<workflow entrypoint>-entrypoint`` (what a KRE v1 entrypoint
publishes to); every later node listens on ``<version>-<workflow>-<node>``, which
is the output of the node before it; the last node's output is empty, so it
answers the requester. :meth:`NodeWiring.environment` is the one place that
turns this into ``KRT_*`` variables, used by ``krt-runner up`` and checked
against ``examples/*/docker-compose.yml`` by the tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from krt_runner._user_files import split_class_name
from krt_runner.krt.resources import Resources

KRT_FILE = "krt.yml"
# What each node is given of its own (its wiring): a config variable of one of these names would give every node
# the same value.
NODE_WIRING = ("KRT_NATS_SERVER", "KRT_NATS_INPUT", "KRT_NATS_OUTPUT", "KRT_BASE_PATH", "KRT_HANDLER_PATH",
               "KRT_NODE_NAME", "KRT_WORKFLOW_NAME", "KRT_VERSION", "KRT_VERSION_ID")
# What up and manifests set on every node's process or pod from their own options and needs: a config variable of one
# of these names would be overridden there without a word (or, KRT_DELIVERY, reach the nodes and not the entrypoint).
SET_BY_UP_AND_MANIFESTS = {
    "KRT_DELIVERY": "up's and manifests' --delivery",
    "KRT_LOG_FORMAT": "up (its own console) and manifests (json)",
    "KRT_HEALTH_FILE": "up and manifests (for their probes)",
    "KRT_MEASUREMENTS_FILE": "manifests (without --influx-url) and up (export it for up)",
    "KRT_INFLUX_URI": "manifests' --influx-url (export it for up)",
    "KRT_JETSTREAM_REPLICAS": "manifests' --jetstream-replicas (export it for up)",
    "KRT_LOCAL_DB_FILE": "up (its ctx.db store)",
    "KRT_NATS_SUBJECTS_FILE": "up (its entrypoint's subjects)",
}


@dataclass(frozen=True)
class NodeSpec:
    """One entry of ``nodes``: the code a workflow step runs."""

    name: str
    image: str
    src: str
    gpu: bool = False
    replicas: int = 1  # processes in the node's queue group (up's default, a Deployment's replicas)
    resources: Resources = field(default_factory=Resources)

    @property
    def file(self) -> str:
        """``src`` without a ``:ProcessorClass`` suffix (``src/greet.py:Greeter`` names one class of the file)."""
        return handler_file(self.src)

    @property
    def is_python(self) -> bool:
        return self.file.endswith(".py")


@dataclass(frozen=True)
class WorkflowSpec:
    """One entry of ``workflows``: an entrypoint rpc and the nodes it runs, in order."""

    name: str
    entrypoint: str
    sequential: tuple[str, ...]


@dataclass(frozen=True)
class Krt:
    """A validated ``krt.yml`` and the directory it lives in."""

    directory: Path
    version: str
    description: str
    proto: str
    image: str
    variables: tuple[str, ...]
    files: tuple[str, ...]
    nodes: tuple[NodeSpec, ...]
    workflows: tuple[WorkflowSpec, ...]

    @property
    def config_names(self) -> tuple[str, ...]:
        return self.variables + self.files

    def node(self, name: str) -> NodeSpec:
        return next(node for node in self.nodes if node.name == name)

    def workflow(self, name: str) -> WorkflowSpec:
        return next(workflow for workflow in self.workflows if workflow.name == name)


@dataclass(frozen=True)
class NodeWiring:
    """Where one node of one workflow reads and writes."""

    krt: Krt
    workflow: WorkflowSpec
    node: NodeSpec
    input: str
    output: str

    @property
    def label(self) -> str:
        """``node``, or ``workflow-node`` when the KRT has several workflows (a compose service name)."""
        return self.node.name if len(self.krt.workflows) == 1 else f"{self.workflow.name}-{self.node.name}"

    def environment(self, *, nats_url: str, base_path: str, config: Mapping[str, str]) -> dict[str, str]:
        """The ``KRT_*`` variables (and config values) this node runs with, as KRE v1 sets them."""
        return {
            "KRT_NATS_SERVER": nats_url,
            "KRT_NATS_INPUT": self.input,
            "KRT_NATS_OUTPUT": self.output,
            "KRT_BASE_PATH": base_path,
            "KRT_HANDLER_PATH": self.node.src,
            "KRT_NODE_NAME": self.node.name,
            "KRT_WORKFLOW_NAME": self.workflow.name,
            "KRT_VERSION": self.krt.version,
            "KRT_VERSION_ID": self.krt.version,
            **{name: config[name] for name in self.krt.config_names},
        }


def handler_file(src: str) -> str:
    """A handler path's file, without the ``:ProcessorClass`` suffix ``KRT_HANDLER_PATH`` allows."""
    return split_class_name(src)[0]


def entry_subject(version: str, workflow: WorkflowSpec) -> str:
    """The subject a KRE v1 entrypoint publishes a workflow's requests to."""
    return f"{version}-{workflow.entrypoint}-entrypoint"


def wiring(krt: Krt) -> list[NodeWiring]:
    """Every node of every workflow with its input and output subject, in workflow order."""
    wired = []
    for workflow in krt.workflows:
        names = workflow.sequential
        inputs = [entry_subject(krt.version, workflow)]
        inputs += [f"{krt.version}-{workflow.name}-{name}" for name in names[1:]]
        outputs = [*inputs[1:], ""]
        for name, subject_in, subject_out in zip(names, inputs, outputs, strict=True):
            wired.append(NodeWiring(krt, workflow, krt.node(name), subject_in, subject_out))
    return wired
