"""``krt-runner``: parse the command line, configure logging, call one function."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from krt_runner import __version__, argument_types
from krt_runner.config import OPTIONS
from krt_runner.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, HandlerLoadError
from krt_runner.node.health import DEFAULT_MAX_AGE
from krt_runner.node.health import check as health_problem
from krt_runner.setting_values import AT_MOST_ONCE, DELIVERY_MODES
from krt_runner.std_streams import (
    StdoutUnwritable,
    closed_streams_to_devnull,
    drop_stdout,
    guard_stdout,
    stdout_closed,
)


def _add_run(commands: Any) -> None:
    run = commands.add_parser("run", help="run one node: settings from KRT_* variables, each overridable by a flag")
    for option in OPTIONS:
        run.add_argument(option.flag, dest=option.field, default=None, metavar=option.env, help=option.help)
    run.set_defaults(command=_run)


def _run(args: argparse.Namespace) -> int:
    from krt_runner.exit_watch import SHORT_GRACE, exit_within
    from krt_runner.node.main import load_unless_stopped, read_settings, serve_node

    settings = read_settings({option.field: getattr(args, option.field) for option in OPTIONS})
    if settings is None:
        return EXIT_USAGE
    try:
        code = load_unless_stopped(settings)
    except HandlerLoadError as exc:
        print(f"krt-runner: {exc}", file=sys.stderr)
        details = getattr(exc, "details", "")
        if details:
            print(details, file=sys.stderr, end="")
        exit_within(EXIT_USAGE, SHORT_GRACE)  # a thread the module started before it failed ends nothing
        return EXIT_USAGE
    if code is None:  # stopped while it loaded
        exit_within(EXIT_OK, SHORT_GRACE)
        return EXIT_OK
    return serve_node(settings, code)


def _add_up(commands: Any) -> None:
    up = commands.add_parser("up", help="run every node of a KRT directory locally, on an embedded NATS")
    up.add_argument("directory", type=Path, help="directory holding krt.yml, or a .krt package")
    up.add_argument("--nats", help="use this NATS server instead of starting one")
    up.add_argument("--replicas", action="append", default=[], metavar="NODE=N",
                    help="run N processes of NODE (default: its replicas in krt.yml, else 1)")
    up.add_argument("--request", help="JSON request (or @FILE) to send once all are ready; print the answer, stop")
    up.add_argument("--workflow", help="run only this workflow's nodes; --request goes to it (needed when there are "
                    "several)")
    up.add_argument("--timeout", type=argument_types.seconds, default=30.0,
                    help="seconds to wait for the --request answer (default: 30)")
    up.add_argument("--ready-timeout", type=argument_types.seconds, default=120.0,
                    help="seconds every node gets to be ready (default: 120)")
    up.add_argument("--grpc-port", type=argument_types.port, help="port of the gRPC entrypoint on 127.0.0.1 "
                    "(default 9000, or a free port when 9000 is taken; 0: a free port)")
    up.add_argument("--no-entrypoint", action="store_true", help="do not start the gRPC entrypoint")
    up.add_argument("--delivery", choices=DELIVERY_MODES, default=AT_MOST_ONCE,
                    help="at-least-once: nats-server with JetStream (a temporary store), every node, the entrypoint "
                         "and --request in that mode")
    up.set_defaults(command=_up)


def _add_call(commands: Any) -> None:
    call = commands.add_parser("call", help="send a JSON request to a workflow and print the answer")
    call.add_argument("subject", help="the workflow's entry subject (krt-runner up prints it)")
    call.add_argument("--proto", required=True, help="a .proto file (needs the proto extra) or a generated _pb2.py")
    call.add_argument("--request", default="{}", help="the request as JSON, or @FILE (default: {})")
    call.add_argument("--method", help="the rpc whose input and output types to use")
    call.add_argument("--request-type", help="request message name (overrides --method)")
    call.add_argument("--response-type", help="response message name (overrides --method)")
    call.add_argument("--nats", default=os.environ.get("KRT_NATS_SERVER", "nats://127.0.0.1:4222"),
                      help="NATS URL (default: $KRT_NATS_SERVER, else nats://127.0.0.1:4222)")
    call.add_argument("--timeout", type=argument_types.seconds, default=30.0,
                      help="seconds to wait for each answer (default: 30)")
    call.add_argument("--repeat", type=argument_types.positive, default=1,
                      help="send N requests and print a latency summary (default: 1)")
    call.add_argument("--concurrency", type=argument_types.positive, default=1,
                      help="requests in flight at once with --repeat (default: 1)")
    call.add_argument("--delivery", choices=DELIVERY_MODES, default=AT_MOST_ONCE,
                      help="at-least-once: publish through JetStream, for nodes with KRT_DELIVERY=at-least-once")
    call.set_defaults(command=_call)


def _add_check_and_health(commands: Any) -> None:
    check = commands.add_parser("check", help="validate krt.yml and import every node's handler (no NATS)")
    check.add_argument("directory", type=Path, help="directory holding krt.yml, or a .krt package")
    check.set_defaults(command=_check)
    health = commands.add_parser("health", help="exit 0 when the node's health file is fresh (an exec probe)")
    health.add_argument("--health-file", default=os.environ.get("KRT_HEALTH_FILE", ""), help="default: KRT_HEALTH_FILE")
    health.add_argument("--max-age", type=float, default=DEFAULT_MAX_AGE, help="seconds since the node last touched it")
    health.set_defaults(command=_health)


def _add_entrypoint(commands: Any) -> None:
    from krt_runner.entrypoint.settings import ENTRYPOINT_OPTIONS

    entrypoint = commands.add_parser(
        "entrypoint", help="serve the KRT's gRPC Entrypoint service, each rpc a request to its workflow over NATS"
    )
    entrypoint.add_argument("directory", type=Path, help="directory holding krt.yml, or a .krt package")
    for option in ENTRYPOINT_OPTIONS:
        entrypoint.add_argument(option.flag, dest=option.field, default=None, metavar=option.env, help=option.help)
    entrypoint.set_defaults(command=_entrypoint)


def _entrypoint(args: argparse.Namespace) -> int:
    from krt_runner.entrypoint import MISSING_EXTRA, grpc_installed

    if not grpc_installed():
        print(f"krt-runner entrypoint: {MISSING_EXTRA}", file=sys.stderr)
        return EXIT_USAGE
    from krt_runner.entrypoint.main import run_entrypoint
    from krt_runner.entrypoint.settings import ENTRYPOINT_OPTIONS

    return run_entrypoint(args.directory, {option.field: getattr(args, option.field) for option in ENTRYPOINT_OPTIONS})


def _add_manifests(commands: Any) -> None:
    manifests = commands.add_parser("manifests", help="write the Kubernetes objects that run a KRT (YAML)")
    manifests.add_argument("directory", type=Path, help="directory holding krt.yml, or a .krt package")
    manifests.add_argument("--image", required=True, help="the image holding the KRT in /krt (FROM krt-runner)")
    manifests.add_argument("--namespace", default="", help="namespace of every object (default: none set)")
    manifests.add_argument("--nats-url", default="nats://nats:4222", help="KRT_NATS_SERVER of every pod (default: nats://nats:4222)")
    manifests.add_argument("--influx-url", default="", help="KRT_INFLUX_URI (default: measurements to /tmp)")
    manifests.add_argument("--secret", default="", help="Secret every pod reads its KRT_* secrets from "
                           "(default: <version>-secrets; optional)")
    manifests.add_argument("--delivery", choices=("at-most-once", "at-least-once"), default="at-most-once",
                           help="KRT_DELIVERY of the nodes and the entrypoint")
    manifests.add_argument("--keda", action="store_true", help="a KEDA ScaledObject per node on its JetStream "
                           "consumer's lag (needs --delivery at-least-once)")
    manifests.add_argument("--keda-max-replicas", type=argument_types.replica_count, default=None,
                           help="KEDA's maximum per node (default 10, or the node's replicas when more)")
    manifests.add_argument("--nats-monitoring", default="", help="host:port of nats-server's monitoring for KEDA "
                           "(default: the NATS host, port 8222)")
    manifests.add_argument("--jetstream-replicas", type=argument_types.stream_replicas, default=1,
                           help="KRT_JETSTREAM_REPLICAS of the nodes: copies a NATS cluster keeps of each stream a "
                           "node creates (1 to 5; 3 on a cluster; needs --delivery at-least-once)")
    manifests.add_argument("--no-entrypoint", action="store_true", help="leave out the gRPC entrypoint")
    manifests.add_argument("--out", type=Path, help="write to this file instead of stdout")
    manifests.set_defaults(command=_manifests)


def _manifests(args: argparse.Namespace) -> int:
    from krt_runner.entrypoint.service import refusals
    from krt_runner.krt.manifests import ManifestOptions
    from krt_runner.krt.manifests_command import run_manifests

    options = ManifestOptions(
        image=args.image, namespace=args.namespace, nats_url=args.nats_url, influx_url=args.influx_url,
        secret=args.secret, delivery=args.delivery, keda=args.keda, keda_max_replicas=args.keda_max_replicas,
        nats_monitoring=args.nats_monitoring, jetstream_replicas=args.jetstream_replicas,
        entrypoint=not args.no_entrypoint,
    )  # fmt: skip
    return run_manifests(args.directory, options, out=args.out, refusals=refusals)


def _add_build(commands: Any) -> None:
    build = commands.add_parser("build", help="validate a KRT as check does and pack it into dist/<version>.krt")
    build.add_argument("source", help="directory holding krt.yml, or a Python file describing one (pipeline.py:krt)")
    build.add_argument("--output", help="where to write the package: a file, or a folder for <version>.krt in it "
                       "(default: SOURCE/dist/<version>.krt)")
    build.set_defaults(command=_build)


def _add_protos(commands: Any) -> None:
    protos = commands.add_parser("protos", help="generate every _pb2.py of a KRT folder again from its .proto files")
    protos.add_argument("directory", type=Path, help="the KRT folder (its .proto files are read, never changed)")
    protos.set_defaults(command=_protos)


def _add_init(commands: Any) -> None:
    init = commands.add_parser("init", help="write a working KRT into ./NAME: krt.yml, a proto, a node and its test")
    init.add_argument("name", help="the KRT's name: lowercase letters, digits and '-' (its version is NAME-v1)")
    init.set_defaults(command=_init)


def _init(args: argparse.Namespace) -> int:
    from krt_runner.krt.skeleton import run_init

    return run_init(args.name)


def _protos(args: argparse.Namespace) -> int:
    from krt_runner.krt.regenerate import run_protos

    return run_protos(args.directory)


def _build(args: argparse.Namespace) -> int:
    from krt_runner.krt.build import run_build

    return run_build(args.source, output=args.output)


def _up(args: argparse.Namespace) -> int:
    from krt_runner.local_krt.plan import UpOptions, parse_replicas
    from krt_runner.local_krt.up import run_up

    try:
        replicas = parse_replicas(args.replicas)
    except ValueError as exc:
        print(f"krt-runner up: {exc}", file=sys.stderr)
        return EXIT_USAGE
    options = UpOptions(
        directory=args.directory, nats=args.nats, replicas=replicas, request=args.request,
        workflow=args.workflow, timeout=args.timeout, ready_timeout=args.ready_timeout,
        grpc=not args.no_entrypoint, grpc_port=args.grpc_port, delivery=args.delivery,
    )  # fmt: skip
    return run_up(options)


def _call(args: argparse.Namespace) -> int:
    from krt_runner.local_krt.call import CallOptions, run_call

    fields = ("subject", "nats", "proto", "request", "method", "request_type", "response_type", "timeout", "repeat",
              "delivery")
    return run_call(CallOptions(**{name: getattr(args, name) for name in fields}, concurrency=args.concurrency))


def _check(args: argparse.Namespace) -> int:
    from krt_runner.entrypoint.service import refusals
    from krt_runner.krt.check import run_check

    return run_check(args.directory, more_warnings=refusals)


def _health(args: argparse.Namespace) -> int:
    problem = health_problem(args.health_file, max_age=args.max_age)
    if problem:
        print(f"krt-runner health: {problem}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="krt-runner", description="Run KRT v1 workflow nodes on NATS.")
    parser.add_argument("--version", action="version", version=f"krt-runner {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    _add_init(commands)
    _add_run(commands)
    _add_up(commands)
    _add_call(commands)
    _add_entrypoint(commands)
    _add_check_and_health(commands)
    _add_build(commands)
    _add_protos(commands)
    _add_manifests(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``krt-runner`` console script."""
    closed_streams_to_devnull()
    args = build_parser().parse_args(argv)
    name = args.command.__name__.lstrip("_")
    if args.command not in (_run, _entrypoint):  # those two stop on signals their own way (draining)
        _stop_signals_interrupt()
    if stdout_closed() and (args.command is _call or (args.command is _up and args.request)):  # the answer's lost
        print(f"krt-runner {name}: stdout is closed: the answer would be lost", file=sys.stderr)
        return EXIT_USAGE
    if args.command not in (_run, _entrypoint, _up):  # those write through their own never-blocking streams
        guard_stdout()
    try:
        code = int(args.command(args))
        sys.stdout.flush()
        return code
    except BrokenPipeError:  # krt-runner check ... | head: the reader has gone, so has the point of writing
        drop_stdout()
        return EXIT_FAILED
    except StdoutUnwritable as exc:  # a full disk
        print(f"krt-runner {name}: cannot write to stdout: {exc}", file=sys.stderr)
        drop_stdout()
        return EXIT_FAILED
    except KeyboardInterrupt as stopped:  # Ctrl-C, or SIGTERM or SIGHUP below: what was made is removed by now
        signum = stopped.args[0] if stopped.args and isinstance(stopped.args[0], int) else signal.SIGINT
        print(f"krt-runner {name}: stopped by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum


def _stop_signals_interrupt() -> None:
    """SIGTERM and SIGHUP (a closed terminal) end a command as Ctrl-C does, with a ``KeyboardInterrupt``, so that
    what it made on the way (temporary folders, an unpacked ``.krt``) is removed as it unwinds. ``up`` handles
    them its own way once its nodes start."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)


if __name__ == "__main__":
    sys.exit(main())
