"""``krt-runner up``: run a whole KRT on this machine, one ``krt-runner run`` process per node.

Start order: nats-server (embedded, unless ``--nats``), then every node replica
with the KRE v1 environment of :meth:`~krt_runner.krt.model.NodeWiring.environment`,
then wait until each has logged ``node ready`` (its ``init`` done, subscribed).

Stop order (Ctrl-C, SIGTERM, a node that dies or stops on its idle timeout, or the end of ``--request``):
the nodes in workflow order, first nodes first, each draining before the next
is told to stop, so requests already inside a workflow still get their answers
downstream; nats-server last. Children run in their own sessions, so a Ctrl-C
on the terminal reaches ``up`` alone and this order holds. Every process
``up`` started is stopped on every way out, exceptions included. The
:class:`Supervisor` also serves :func:`krt_runner.local`, on a thread of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import sys
from collections import deque
from collections.abc import Awaitable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from google.protobuf.message import Message

from krt_runner.client import Client
from krt_runner.errors import CallError, KrtFileError, KrtRunnerError, ProtoError, UpError
from krt_runner.krt.model import Krt, NodeWiring, Workflow, entry_subject, load_krt, wiring
from krt_runner.krt.package import open_krt
from krt_runner.krt.protos import (
    MessageTypes,
    find_types_source,
    load_file,
    parse_json,
    rpc_names,
    select_types,
    to_json,
)
from krt_runner.local_krt.call import read_request, send_one
from krt_runner.local_krt.embedded import EmbeddedNats

EXIT_FAILED = 1
EXIT_USAGE = 2
# Seconds every node gets to log "node ready" (its init included) unless --ready-timeout says otherwise.
READY_TIMEOUT = 120.0
# Seconds a node gets to drain after SIGTERM before it is killed; above KRT_DRAIN_TIMEOUT's default of 30.
STOP_TIMEOUT = 40.0
# Log lines kept per node, shown again when it dies.
LAST_LINES = 20
# Longest log line read from a node: a traceback inside one JSON line can be long.
_LINE_LIMIT = 1024 * 1024
# Shown by the label in front of each line already.
# Children run in their own sessions, so a closed terminal (SIGHUP) must stop them through up too.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_HIDDEN_KEYS = ("event", "level", "timestamp", "node", "workflow", "version", "version_id", "logger", "exception")



@dataclass(frozen=True)
class UpOptions:
    """What ``krt-runner up`` was asked to do."""

    directory: Path
    nats: str | None = None
    replicas: Mapping[str, int] = field(default_factory=dict)
    request: str | None = None
    workflow: str | None = None
    timeout: float = 30.0
    ready_timeout: float = READY_TIMEOUT
    env: Mapping[str, str] = field(default_factory=dict)  # for every node, over up's own environment


@dataclass(frozen=True)
class EntryPoint:
    """Where a workflow takes requests, with the types and ``call`` flags that fit them."""

    workflow: Workflow
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


def run_up(options: UpOptions, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run the ``up`` command on a folder or a ``.krt``; its exit code (2 when the KRT or the options are wrong)."""
    try:
        with open_krt(options.directory) as directory:
            return _run_up(replace(options, directory=directory), out=out, err=err)
    except KrtFileError as exc:  # a package that cannot be unpacked
        print(f"krt-runner up: {exc}", file=err)
        return EXIT_USAGE


def _run_up(options: UpOptions, *, out: TextIO, err: TextIO) -> int:
    try:
        plan = make_plan(options)
    except (UpError, KrtFileError) as exc:
        print(f"krt-runner up: {exc}", file=err)
        return EXIT_USAGE
    return asyncio.run(Supervisor(plan, options, out=out, err=err).run())


# -- the plan -----------------------------------------------------------------------------------


def parse_replicas(values: list[str]) -> dict[str, int]:
    """``["greet=2"]`` -> ``{"greet": 2}``; a ``ValueError`` names a malformed entry."""
    replicas = {}
    for value in values:
        name, _, count = value.partition("=")
        if not name or not count.strip().isdigit():
            raise ValueError(f"--replicas {value!r}: expected NODE=N, e.g. --replicas greet=2")
        replicas[name.strip()] = int(count)
    return replicas


def make_plan(options: UpOptions, *, environ: Mapping[str, str] = os.environ) -> Plan:
    """Read the KRT and check the options; raises :class:`UpError` (or ``KrtFileError``) listing every problem."""
    krt = load_krt(options.directory)
    wired = wiring(krt)
    environ = {**environ, **options.env}
    problems = [
        f"node {w.node.name!r} (src {w.node.src}) is not a Python node; krt-runner up runs Python nodes only"
        for w in wired
        if not w.node.is_python
    ]
    problems += _replica_problems(krt, options.replicas)
    missing = [name for name in krt.config_names if name not in environ]
    if missing:
        problems.append(f"config of krt.yml without a value: export {', '.join(missing)} before krt-runner up")
    target = _request_workflow(krt, options, problems)
    if problems:
        raise UpError(problems)
    entry_points = workflow_entry_points(krt)
    return Plan(
        krt=krt,
        replicas=_replicas(wired, options.replicas),
        config={name: environ[name] for name in krt.config_names},
        entry_points=entry_points,
        request=_request(entry_points, target, options.request),
    )


def _replica_problems(krt: Krt, replicas: Mapping[str, int]) -> list[str]:
    names = {node.name for node in krt.nodes}
    problems = [f"--replicas {name}: no node {name!r} in krt.yml" for name in replicas if name not in names]
    problems += [f"--replicas {name}={count}: must be at least 1" for name, count in replicas.items() if count < 1]
    return problems


def _request_workflow(krt: Krt, options: UpOptions, problems: list[str]) -> Workflow | None:
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
        count = replicas.get(wiring_.node.name, 1)
        for index in range(1, count + 1):
            processes.append((wiring_, wiring_.label if count == 1 else f"{wiring_.label}#{index}"))
    return processes


def workflow_entry_points(krt: Krt) -> list[EntryPoint]:
    """Each workflow's entry subject with its request and response types (or the problem reading them)."""
    return [_entry_point(krt, workflow) for workflow in krt.workflows]


def _entry_point(krt: Krt, workflow: Workflow) -> EntryPoint:
    node_dirs = [(krt.directory / krt.node(name).src).parent for name in workflow.sequential]
    source = find_types_source(krt.directory / krt.proto, node_dirs)
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
    entry_points: list[EntryPoint], target: Workflow | None, text: str | None
) -> tuple[EntryPoint, Message] | None:
    if text is None or target is None:
        return None
    entry = next(entry for entry in entry_points if entry.workflow == target)
    if entry.types is None:
        raise UpError([f"cannot read the request types of workflow {target.name!r}: {entry.problem}"])
    try:
        return entry, parse_json(read_request(text), entry.types.request)
    except (ProtoError, OSError) as exc:
        raise UpError([f"--request: {exc}"]) from None


def _shown_path(path: str) -> str:
    """Relative to the working directory when it lies below it, absolute otherwise."""
    absolute = Path(path).resolve()
    return str(absolute.relative_to(Path.cwd())) if absolute.is_relative_to(Path.cwd()) else str(absolute)


# -- node output ----------------------------------------------------------------------------------


def render(line: str) -> tuple[str, str]:
    """A node's JSON log line as ``time level event key=value ...`` (and the event); other lines as they are."""
    if not line.startswith("{"):
        return line, ""
    try:
        record = json.loads(line)
    except ValueError:
        return line, ""
    if not isinstance(record, dict):
        return line, ""
    event = str(record.get("event", ""))
    extras = "".join(f" {key}={value}" for key, value in record.items() if key not in _HIDDEN_KEYS)
    text = f"{str(record.get('timestamp', ''))[11:23]} {record.get('level', ''):<7} {event}{extras}"
    exception = record.get("exception")
    return (f"{text}\n{exception}" if exception else text), event


class Printer:
    """Writes lines under an aligned label: ``greet    | ...``."""

    def __init__(self, stream: TextIO, labels: list[str]) -> None:
        self._stream = stream
        self._width = max(len(label) for label in [*labels, "up"])

    def line(self, label: str, text: str) -> None:
        print(f"{label:<{self._width}} | {text}", file=self._stream, flush=True)


class Child:
    """One node process: its output re-printed under its label, its last lines kept."""

    def __init__(self, label: str, position: int, process: asyncio.subprocess.Process, printer: Printer) -> None:
        self.label = label
        self.position = position  # index in its workflow: the stop order
        self.process = process
        self.ready = asyncio.Event()
        self.idled = False  # it logged that it stops on KRT_IDLE_TIMEOUT
        self.last_lines: deque[str] = deque(maxlen=LAST_LINES)
        self._printer = printer
        self.exited = asyncio.get_running_loop().create_task(self._follow())

    async def _follow(self) -> int:
        stream = self.process.stdout
        assert stream is not None
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line over _LINE_LIMIT; the reader has skipped it
                self._on_line(f"(a log line over {_LINE_LIMIT} bytes was skipped)")
                continue
            if not raw:
                return await self.process.wait()
            self._on_line(raw.decode(errors="replace").rstrip("\n"))

    def _on_line(self, line: str) -> None:
        text, event = render(line)
        if event == "node ready":
            self.ready.set()
        elif event.startswith("idle timeout"):
            self.idled = True
        for part in text.splitlines() or [""]:
            self.last_lines.append(part)
            self._printer.line(self.label, part)

    async def stop(self, timeout: float) -> None:
        """SIGTERM, wait up to ``timeout`` seconds for the drain, then SIGKILL."""
        self._signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(self.exited), timeout)
        except asyncio.TimeoutError:
            self._printer.line("up", f"{self.label} did not stop within {timeout:g}s: killing it")
            self.kill()
            await self.exited

    @property
    def stopped_on_idle(self) -> bool:
        """It exited 0 by itself after its idle timeout: the KRT was idle, not broken."""
        return self.idled and self.process.returncode == 0

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)


# -- the supervisor --------------------------------------------------------------------------------


class Supervisor:
    """Starts the plan's processes, watches them, and stops them all, in order, on every way out."""

    def __init__(self, plan: Plan, options: UpOptions, *, out: TextIO, err: TextIO) -> None:
        self.plan = plan
        self.options = options
        self.out = out
        self.err = err
        self.printer = Printer(err, [label for _, label in plan.replicas])
        self.children: list[Child] = []
        self.nats: EmbeddedNats | None = None
        self.url = ""
        self._stop = asyncio.Event()

    def say(self, text: str) -> None:
        for part in text.splitlines():
            self.printer.line("up", part)

    async def run(self) -> int:
        """Start everything, serve or send the request, stop everything; the exit code."""
        loop = asyncio.get_running_loop()
        for signum in _STOP_SIGNALS:
            loop.add_signal_handler(signum, self._on_signal)
        try:
            return await self._run()
        except KrtRunnerError as exc:
            self.say(str(exc))
            return EXIT_FAILED
        finally:
            await self.stop_everything()
            for signum in _STOP_SIGNALS:
                loop.remove_signal_handler(signum)

    def _on_signal(self) -> None:
        if not self._stop.is_set():
            self.say("signal received: stopping everything")
        self.request_stop()

    def request_stop(self) -> None:
        """Make :meth:`start` and :meth:`watch` return ``("stopped", None)`` now or as soon as they wait."""
        self._stop.set()

    async def start(self) -> tuple[str, Any]:
        """Start nats-server and every node; wait until all are ready.

        Returns ``("done", None)`` when they are, else what came first: ``("died", child)``,
        ``("stopped", None)`` or ``("timeout", None)`` (see :meth:`describe`).
        """
        self.url = await self._start_nats()
        await self._start_nodes(self.url)
        return await self._until(self._all_ready(), timeout=self.options.ready_timeout)

    async def watch(self) -> tuple[str, Any]:
        """Wait for a node to exit (``("died", child)``) or for :meth:`request_stop`."""
        return await self._until(None)

    async def _run(self) -> int:
        kind, value = await self.start()
        if kind != "done":
            return self._outcome(kind, value)
        self.say(f"all {len(self.children)} node processes ready")
        if self.plan.request is not None:
            kind, value = await self._until(self._send_request(self.url, *self.plan.request))
            return int(value) if kind == "done" else self._outcome(kind, value)
        self._print_entry_points(self.url)
        self.say("Ctrl-C stops everything")
        return self._outcome(*await self._until(None))

    async def _start_nats(self) -> str:
        if self.options.nats:
            self.say(f"using NATS at {self.options.nats}")
            return self.options.nats
        self.nats = EmbeddedNats()
        await asyncio.to_thread(self.nats.start)
        self.say(f"nats-server on {self.nats.url}")
        return self.nats.url

    async def _start_nodes(self, url: str) -> None:
        base_path, config = str(self.plan.krt.directory), self.plan.config
        for wired, label in self.plan.replicas:
            krt_env = wired.environment(nats_url=url, base_path=base_path, config=config)
            env = {**os.environ, **self.options.env, **krt_env}
            env["KRT_LOG_FORMAT"] = "json"  # read back here for "node ready", rendered for the terminal
            self.say(f"starting {label}: {wired.input} -> {wired.output or '(answers the requester)'}")
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "krt_runner", "run",
                env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True, limit=_LINE_LIMIT,
            )  # fmt: skip
            position = wired.workflow.sequential.index(wired.node.name)
            self.children.append(Child(label, position, process, self.printer))

    async def _all_ready(self) -> None:
        await asyncio.gather(*(child.ready.wait() for child in self.children))

    async def _until(self, work: Awaitable[Any] | None, *, timeout: float | None = None) -> tuple[str, Any]:
        """Wait for ``work``, a node's death or a stop signal, whichever comes first (or ``timeout``)."""
        tasks = {"stopped": asyncio.ensure_future(self._stop.wait()), "died": asyncio.ensure_future(self._death())}
        if work is not None:
            tasks["done"] = asyncio.ensure_future(work)
        done, pending = await asyncio.wait(tasks.values(), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for kind in ("done", "died", "stopped"):  # work that finished wins over a death in the same instant
            if kind in tasks and tasks[kind] in done:
                return kind, tasks[kind].result()
        return "timeout", None

    async def _death(self) -> Child:
        exits = {child.exited: child for child in self.children}
        done, _ = await asyncio.wait(exits, return_when=asyncio.FIRST_COMPLETED)
        return next(exits[task] for task in exits if task in done)

    def _outcome(self, kind: str, value: Any) -> int:
        code, lines = self.describe(kind, value)
        for line in lines:
            self.say(line)
        if kind == "died":
            self.say("stopping everything else")
        return code

    def describe(self, kind: str, value: Any) -> tuple[int, list[str]]:
        """The exit code and the lines that explain an outcome of :meth:`start` or :meth:`watch`.

        A node that stopped on its idle timeout (``KRT_IDLE_TIMEOUT``) means the
        KRT is idle: ``up`` stops the rest and exits 0, as on Ctrl-C.
        """
        if kind in ("stopped", "done"):
            return 0, []
        if kind == "died":
            child: Child = value
            if child.stopped_on_idle:
                return 0, [f"{child.label} stopped on its idle timeout (KRT_IDLE_TIMEOUT)"]
            lines = [f"    {line}" for line in child.last_lines]
            return EXIT_FAILED, [f"{child.label} exited with code {child.process.returncode}; its last lines:", *lines]
        waiting = [child.label for child in self.children if not child.ready.is_set()]
        return EXIT_FAILED, [
            f"not ready within {self.options.ready_timeout:g}s: {', '.join(waiting)} (see --ready-timeout)"
        ]

    async def _send_request(self, url: str, entry: EntryPoint, request: Message) -> int:
        assert entry.types is not None
        self.say(f"sending the request to {entry.subject}")
        try:
            client = await Client.connect(url)
        except CallError as exc:
            self.say(str(exc))
            return EXIT_FAILED
        async with client:
            return await send_one(
                client, entry.subject, request, entry.types.response,
                timeout=self.options.timeout, out=self.out, err=self.err,
            )  # fmt: skip

    def _print_entry_points(self, url: str) -> None:
        for entry in self.plan.entry_points:
            example = to_json(entry.types.request(), indent=None, with_defaults=True) if entry.types else "{}"
            command = ["krt-runner", "call", entry.subject, "--nats", url, *entry.flags, "--request", example]
            print(f"workflow {entry.workflow.name}: {entry.subject}", file=self.out)
            print(f"  {shlex.join(command)}", file=self.out, flush=True)
            if entry.problem:
                self.say(f"workflow {entry.workflow.name}: {entry.problem}")

    def _in_stop_order(self) -> Iterator[list[Child]]:
        for position in sorted({child.position for child in self.children}):
            yield [child for child in self.children if child.position == position]

    async def stop_everything(self) -> None:
        """Stop every node, first nodes first, each draining before the next; nats-server last."""
        try:
            for group in self._in_stop_order():
                if any(child.process.returncode is None for child in group):
                    self.say(f"stopping {', '.join(child.label for child in group)}")
                await asyncio.gather(*(child.stop(STOP_TIMEOUT) for child in group))
        finally:
            for child in self.children:
                child.kill()
            if self.nats is not None:
                try:
                    await asyncio.to_thread(self.nats.close)
                except RuntimeError:  # at interpreter exit (local() closed by atexit) no thread can start
                    self.nats.close()
                self.say("nats-server stopped")
