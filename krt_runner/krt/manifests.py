"""``krt-runner manifests DIR``: the Kubernetes objects that run a KRT, as one multi-document YAML.

One Deployment per node per workflow, wired exactly as ``up`` wires it (the
same ``KRT_*`` variables); the gRPC entrypoint as a Deployment and a Service
on port 9000; a ConfigMap with the KRT's config variables; with ``--keda`` and
at-least-once delivery, a KEDA ``ScaledObject`` per node on its JetStream
consumer's lag. Secrets are never written: every pod reads a Secret, by name,
that the cluster's owner fills (NATS credentials, the InfluxDB token).
Plain dicts turned into YAML; nothing here talks to a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from krt_runner import __version__
from krt_runner.jetstream_names import consumer_name, stream_name
from krt_runner.krt.kube_names import label_value, object_name, service_name
from krt_runner.krt.model import Krt, NodeWiring, entry_subject, wiring
from krt_runner.setting_values import split_servers, with_nats_scheme

BASE_PATH = "/krt"  # where the image holds the KRT (the README's derived image copies it there)
ENTRYPOINT_PORT = 9000
UID = 10001  # the image's user
# Seconds a pod gets between SIGTERM and SIGKILL: above KRT_DRAIN_TIMEOUT's 30, so a node drains.
GRACE_SECONDS = 40
AT_LEAST_ONCE = "at-least-once"
DEFAULT_KEDA_MAX_REPLICAS = 10


@dataclass(frozen=True)
class ManifestOptions:
    """What differs from one cluster to the next."""

    image: str
    namespace: str = ""
    nats_url: str = "nats://nats:4222"
    influx_url: str = ""
    secret: str = ""  # default: <version>-secrets
    delivery: str = "at-most-once"
    keda: bool = False
    keda_max_replicas: int | None = None  # default: DEFAULT_KEDA_MAX_REPLICAS
    nats_monitoring: str = ""  # host:port of nats-server's monitoring (/jsz); default: the NATS host, port 8222
    jetstream_replicas: int = 1  # KRT_JETSTREAM_REPLICAS of at-least-once nodes: copies of the streams they create
    entrypoint: bool = True
    config: Mapping[str, str] = field(default_factory=dict)  # the KRT's config values


def manifests(krt: Krt, options: ManifestOptions) -> list[dict[str, Any]]:
    """Every object, in the order ``kubectl apply`` should meet them: the ConfigMap first."""
    builder = _Builder(krt, options)
    objects = [builder.config_map()]
    for wired in wiring(krt):
        if not wired.node.is_python:  # a KRE v1 Go node: its own image runs it (see the command's notes)
            continue
        objects.append(builder.node_deployment(wired))
        if options.keda:
            objects.append(builder.scaled_object(wired))
    if options.entrypoint:
        objects += [builder.entrypoint_deployment(), builder.entrypoint_service()]
    return objects


class _Builder:
    def __init__(self, krt: Krt, options: ManifestOptions) -> None:
        self.krt = krt
        self.options = options
        self.config_name = object_name(krt.version, "config")
        self.secret_name = options.secret or object_name(krt.version, "secrets")

    # -- objects --------------------------------------------------------------------------------

    def config_map(self) -> dict[str, Any]:
        data = {name: self.options.config.get(name, "") for name in self.krt.config_names}
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": self._metadata(self.config_name, "config"),
                "data": data}

    def node_deployment(self, wired: NodeWiring) -> dict[str, Any]:
        name = node_object_name(wired)
        env = wired.environment(nats_url=self.options.nats_url, base_path=BASE_PATH,
                                config=dict.fromkeys(self.krt.config_names, ""))
        env = {key: value for key, value in env.items() if key not in self.krt.config_names}  # from the ConfigMap
        container = {
            "name": "node",
            "image": self.options.image,
            "env": _env({**env, **self._common_env()}),
            "envFrom": [{"configMapRef": {"name": self.config_name}},
                        {"secretRef": {"name": self.secret_name, "optional": True}}],
            "resources": _resources(wired),
            "startupProbe": _health_probe(period=5, failures=120),  # init (a model loading) may take 10 minutes
            "readinessProbe": _health_probe(period=5, failures=3),
            "livenessProbe": _health_probe(period=20, failures=3, max_age=60),
        }
        pod = self._pod(container, gpu=wired.node.gpu)
        # Under KEDA the count is KEDA's: a Deployment that named one would reset it on every kubectl apply.
        replicas = None if self.options.keda else wired.node.replicas
        return self._deployment(name, "node", replicas, pod, node=wired.node.name, workflow=wired.workflow.name)

    def entrypoint_deployment(self) -> dict[str, Any]:
        env = {"KRT_NATS_SERVER": self.options.nats_url, "KRT_VERSION": self.krt.version, **self._common_env()}
        env.pop("KRT_MEASUREMENTS_FILE", None)
        env.pop("KRT_INFLUX_URI", None)
        env.pop("KRT_JETSTREAM_REPLICAS", None)  # the nodes create the streams
        probe = {"grpc": {"port": ENTRYPOINT_PORT}, "periodSeconds": 5}
        container = {
            "name": "entrypoint",
            "image": self.options.image,
            "command": ["krt-runner", "entrypoint", BASE_PATH],
            "ports": [{"name": "grpc", "containerPort": ENTRYPOINT_PORT}],
            "env": _env(env),
            "envFrom": [{"secretRef": {"name": self.secret_name, "optional": True}}],
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
            "readinessProbe": probe,
            "livenessProbe": {**probe, "periodSeconds": 20, "failureThreshold": 6},
        }
        return self._deployment(self.entrypoint_name(), "entrypoint", 1, self._pod(container, gpu=False))

    def entrypoint_service(self) -> dict[str, Any]:
        name = self.entrypoint_name()
        port = {"name": "grpc", "port": ENTRYPOINT_PORT, "targetPort": "grpc", "appProtocol": "grpc"}
        return {"apiVersion": "v1", "kind": "Service", "metadata": self._metadata(name, "entrypoint"),
                "spec": {"selector": {"app.kubernetes.io/instance": name}, "ports": [port]}}

    def scaled_object(self, wired: NodeWiring) -> dict[str, Any]:
        name = node_object_name(wired)
        trigger = {"type": "nats-jetstream", "metadata": {
            "natsServerMonitoringEndpoint": self._monitoring(), "account": "$G",
            "stream": stream_name(wired.input), "consumer": consumer_name(wired.input), "lagThreshold": "10",
        }}  # fmt: skip
        most = max(wired.node.replicas, self.options.keda_max_replicas or DEFAULT_KEDA_MAX_REPLICAS)
        spec = {"scaleTargetRef": {"name": name}, "minReplicaCount": wired.node.replicas, "maxReplicaCount": most,
                "triggers": [trigger]}
        return {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
                "metadata": self._metadata(name, "node", node=wired.node.name, workflow=wired.workflow.name),
                "spec": spec}

    def entrypoint_name(self) -> str:
        """The entrypoint's Deployment and Service (whose name must start with a letter)."""
        return service_name(self.krt.version, "entrypoint")

    # -- parts ----------------------------------------------------------------------------------

    def _common_env(self) -> dict[str, str]:
        env = {"KRT_LOG_FORMAT": "json", "KRT_HEALTH_FILE": "/tmp/krt-runner.health"}  # /tmp: an emptyDir
        if self.options.influx_url:
            env["KRT_INFLUX_URI"] = self.options.influx_url
        else:
            env["KRT_MEASUREMENTS_FILE"] = "/tmp/measurements.lp"  # the only writable place: an emptyDir
        if self.options.delivery == AT_LEAST_ONCE:
            env["KRT_DELIVERY"] = AT_LEAST_ONCE
            if self.options.jetstream_replicas != 1:
                env["KRT_JETSTREAM_REPLICAS"] = str(self.options.jetstream_replicas)
        return env

    def _pod(self, container: dict[str, Any], *, gpu: bool) -> dict[str, Any]:
        container["securityContext"] = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                        "capabilities": {"drop": ["ALL"]}}
        container["volumeMounts"] = [{"name": "tmp", "mountPath": "/tmp"}]
        spec: dict[str, Any] = {
            "terminationGracePeriodSeconds": GRACE_SECONDS,
            "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [container],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        }
        if gpu:
            spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        return spec

    def _deployment(
        self, name: str, component: str, replicas: int | None, pod: dict[str, Any], **extra: str
    ) -> dict[str, Any]:
        metadata = self._metadata(name, component, **extra)
        spec: dict[str, Any] = {} if replicas is None else {"replicas": replicas}
        spec |= {
            "selector": {"matchLabels": {"app.kubernetes.io/instance": name}},
            # A new version's pods are ready before an old one is told to drain: no request is dropped.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": dict(metadata["labels"])}, "spec": pod},
        }
        return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata, "spec": spec}

    def _metadata(self, name: str, component: str, **extra: str) -> dict[str, Any]:
        labels = {
            "app.kubernetes.io/name": label_value(extra.get("node") or component),
            "app.kubernetes.io/instance": name,
            "app.kubernetes.io/version": label_value(self.krt.version),
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/part-of": label_value(self.krt.version),
            "app.kubernetes.io/managed-by": "krt-runner",
        }
        if "workflow" in extra:
            labels["krt-runner/workflow"] = label_value(extra["workflow"])
        metadata: dict[str, Any] = {"name": name}
        if self.options.namespace:
            metadata["namespace"] = self.options.namespace
        metadata["labels"] = labels
        metadata["annotations"] = {"krt-runner/generated-by": f"krt-runner {__version__}"}
        return metadata

    def _monitoring(self) -> str:
        if self.options.nats_monitoring:
            return self.options.nats_monitoring
        first = next((server.strip() for server in split_servers(self.options.nats_url) if server.strip()), "")
        host = urlsplit(with_nats_scheme(first)).hostname or "nats"  # the first server the nodes use
        return f"[{host}]:8222" if ":" in host else f"{host}:8222"


def node_object_name(wired: NodeWiring) -> str:
    """``<version>-<workflow>-<node>``: unique in the KRT, the same on every run."""
    return object_name(wired.krt.version, wired.workflow.name, wired.node.name)


def entry_subjects(krt: Krt) -> set[str]:
    """The subjects the entrypoint sends to: each workflow's first node's input."""
    return {entry_subject(krt.version, workflow) for workflow in krt.workflows}


def _env(values: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"name": key, "value": value} for key, value in values.items()]


def _resources(wired: NodeWiring) -> dict[str, Any]:
    resources = wired.node.resources
    requests, limits = resources.requests(), resources.limits()
    if wired.node.gpu:
        limits["nvidia.com/gpu"] = "1"  # KRE v1's gpu: true
    return {key: value for key, value in (("requests", requests), ("limits", limits)) if value}


def _health_probe(*, period: int, failures: int, max_age: int | None = None) -> dict[str, Any]:
    command = ["krt-runner", "health", *(["--max-age", str(max_age)] if max_age else [])]
    return {"exec": {"command": command}, "periodSeconds": period, "failureThreshold": failures,
            "timeoutSeconds": 5}
