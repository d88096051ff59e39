"""The ``manifests`` command: read and check the KRT, write its Kubernetes objects as YAML."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TextIO

import yaml

from krt_runner.errors import EXIT_OK, EXIT_USAGE, KrtFileError
from krt_runner.krt.krt_reader import load_krt
from krt_runner.krt.manifests import AT_LEAST_ONCE, DEFAULT_KEDA_MAX_REPLICAS, ManifestOptions, manifests
from krt_runner.krt.model import Krt, wiring
from krt_runner.krt.package import open_krt
from krt_runner.setting_values import http_url, nats_servers, split_servers, with_nats_scheme
from krt_runner.std_streams import stdout_closed
from krt_runner.url_parts import url_credentials


class _PlainDumper(yaml.SafeDumper):
    """YAML without anchors and aliases (``&id001``): each object reads on its own, as kubectl users expect."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def _option_problems(options: ManifestOptions) -> list[str]:
    """Flags the API server, or the objects' meaning, would refuse; all of them at once."""
    checks = [
        (not options.image.strip(), "--image is empty: name the image holding the KRT"),
        (bool(options.image.strip()) and not _IMAGE.fullmatch(options.image),
         f"--image {options.image!r} is not an image reference, such as registry.example.com/team/greeter:v1"),
        (not options.nats_url.strip(), "--nats-url is empty: every pod needs KRT_NATS_SERVER (default nats://nats:4222)"),
        (bool(options.namespace) and not _DNS_LABEL.fullmatch(options.namespace),
         f"--namespace {options.namespace!r} is not a Kubernetes namespace name (lower case, digits, -)"),
        (bool(options.secret) and not _DNS_SUBDOMAIN.fullmatch(options.secret),
         f"--secret {options.secret!r} is not a Kubernetes Secret name (lower case, digits, - and .)"),
        (not options.keda and (options.keda_max_replicas is not None or bool(options.nats_monitoring)),
         "--keda-max-replicas and --nats-monitoring shape KEDA's objects: give them with --keda"),
        (options.keda and options.delivery != AT_LEAST_ONCE,
         "--keda scales a node on its JetStream consumer's lag, which exists only with --delivery at-least-once"),
        (bool(options.nats_monitoring) and not _HOST_PORT.fullmatch(options.nats_monitoring),
         f"--nats-monitoring {options.nats_monitoring!r} is not HOST:PORT (KEDA adds the scheme itself)"),
        (options.jetstream_replicas != 1 and options.delivery != AT_LEAST_ONCE,
         "--jetstream-replicas sets the copies of the nodes' JetStream streams: give it with --delivery at-least-once"),
        (any(url_credentials(with_nats_scheme(url.strip()))[1] for url in split_servers(options.nats_url)),
         "--nats-url carries a user or a password, which would be written into every Deployment: the manifests hold "
         "no secret. Give the URL without them, and KRT_NATS_USER and KRT_NATS_PASSWORD (or KRT_NATS_TOKEN) in the "
         "Secret named by --secret"),
        (bool(url_credentials(_with_scheme(options.influx_url.strip()))[1]),
         "--influx-url carries a user or a password, which would be written into every Deployment: the manifests "
         "hold no secret. Give the URL without them, and KRT_INFLUX_TOKEN (user:password for InfluxDB 1.8) in the "
         "Secret named by --secret"),
    ]
    return [problem for wrong, problem in checks if wrong] + _url_problems(options)


def _url_problems(options: ManifestOptions) -> list[str]:
    """URLs every pod would refuse at start (exit 2, again and again), checked as a node checks them."""
    websocket = "ws://" in options.nats_url.lower() or "wss://" in options.nats_url.lower()
    problems = ["--nats-url: a websocket server (ws://, wss://) needs aiohttp, which the Dockerfile's image does "
                "not install: give a nats:// or tls:// URL"] if websocket else []
    urls: list[tuple[str, str, Callable[[str], object], str]] = [
        ("--nats-url", "KRT_NATS_SERVER", nats_servers, "" if websocket else options.nats_url),
        ("--influx-url", "KRT_INFLUX_URI", http_url, options.influx_url),
    ]
    for flag, setting, parse, raw in urls:
        if not raw.strip():
            continue
        try:
            parse(raw)
        except ValueError as exc:
            problems.append(f"{flag}: {exc}; every pod would refuse it as its {setting}")
    return problems


def _with_scheme(url: str) -> str:
    """``admin:pw@influx:8086`` read as a URL too: its user part is still a secret."""
    return url if not url or "://" in url else f"http://{url}"


def _notes(krt: Krt, options: ManifestOptions, refused: list[str]) -> list[str]:
    """What the objects differ in from what was asked, and why."""
    notes = [f"node {node.name!r} keeps its {node.replicas} replicas of krt.yml as KEDA's maximum, above "
             f"--keda-max-replicas {_keda_max(options)}{'' if options.keda_max_replicas else ' (its default)'}"
             for node in krt.nodes if options.keda and node.replicas > _keda_max(options)]
    notes += [f"node {wired.node.name!r} of workflow {wired.workflow.name!r} ({wired.node.src}) is not a Python "
              f"node: no Deployment is written for it; run it from an image of its own with KRT_NATS_INPUT="
              f"{wired.input} and KRT_NATS_OUTPUT={wired.output or '(empty: it answers the requester)'}"
              for wired in wiring(krt) if not wired.node.is_python]
    # its pod would exit 2 again and again: left out, as up leaves it out
    return notes + [f"the gRPC entrypoint is left out, {reason}" for reason in refused]


def _keda_max(options: ManifestOptions) -> int:
    return options.keda_max_replicas or DEFAULT_KEDA_MAX_REPLICAS


_HOST_PORT = re.compile(
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?)"
    r":([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"  # 1 to 65535
)
# An image reference as the container runtimes read it (distribution's grammar): [host[:port]/]path[:tag][@digest].
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST = r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?"
_IMAGE = re.compile(rf"(?:{_HOST}/)?{_PATH_PART}(?:/{_PATH_PART})*(?::\w[\w.-]{{0,127}})?"
                    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_HEADER = "# Kubernetes objects of KRT {version}, written by `krt-runner manifests`. Apply: kubectl apply -f FILE\n"


def run_manifests(
    source: Path, options: ManifestOptions, *, out: Path | None = None, environ: Mapping[str, str] = os.environ,
    err: TextIO = sys.stderr, refusals: Callable[[Krt], list[str]] | None = None,
) -> int:  # fmt: skip
    """Write the manifests of the KRT in ``source`` (a folder or a ``.krt``) to ``out`` or stdout; the exit code.
    ``refusals``: why ``krt-runner entrypoint`` could not serve this KRT (its entrypoint is then left out)."""
    problems = _option_problems(options)
    for problem in problems:
        print(f"krt-runner manifests: {problem}", file=err)
    if problems:
        return EXIT_USAGE
    try:
        with open_krt(source) as directory:
            krt = load_krt(directory)
            refused = refusals(krt) if options.entrypoint and refusals is not None else []
    except KrtFileError as exc:
        print(f"krt-runner manifests: {exc}", file=err)
        return EXIT_USAGE
    for note in _notes(krt, options, refused):
        print(f"krt-runner manifests: {note}", file=err)
    options = replace(options, entrypoint=options.entrypoint and not refused)
    missing = [name for name in krt.config_names if name not in options.config and name not in environ]
    for name in missing:
        print(f"krt-runner manifests: config {name} has no value (export it, or fill it in the ConfigMap)", file=err)
    config = {name: options.config.get(name, environ.get(name, "")) for name in krt.config_names}
    objects = manifests(krt, replace(options, config=config))
    text = _HEADER.format(version=krt.version) + yaml.dump_all(
        objects, Dumper=_PlainDumper, sort_keys=False, explicit_start=True
    )
    return _write(text, out, err)


def _write(text: str, out: Path | None, err: TextIO) -> int:
    if out is None:
        return _write_stdout(text, err)
    try:
        out.write_text(text)
    except OSError as exc:
        print(f"krt-runner manifests: cannot write --out {out}: {exc.strerror or exc}", file=err)
        return EXIT_USAGE
    print(f"krt-runner manifests: wrote {out}", file=err)
    return EXIT_OK


def _write_stdout(text: str, err: TextIO) -> int:
    """The manifests on stdout, whose only product they are: a closed one (``>&-``, which the command line made
    ``/dev/null``) is said, and is not a success."""
    if stdout_closed():
        print("krt-runner manifests: stdout is closed: nothing written (give --out FILE)", file=err)
        return EXIT_USAGE
    sys.stdout.write(text)  # a failure is the command line's to say (krt_runner.std_streams)
    return EXIT_OK
