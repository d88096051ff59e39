"""Node processes on one machine, for ``up`` and ``local()``: start them, watch them, stop them all in order.

Start order: nats-server (embedded, unless ``--nats``; with JetStream, its store in a temporary directory removed at
the end, for ``--delivery at-least-once``), the local mongo-writer (unless ``KRT_MONGO_URI`` is set), then every node
replica with the KRE v1 environment of :meth:`~krt_runner.krt.model.NodeWiring.environment`, then wait until each is
ready (its health file exists: ``init`` done, subscribed).

Stop order: the nodes in workflow order, first nodes first, each draining before the next is told to stop (at least
once, and once the requests stored for it are answered), so requests already inside a workflow still get their
answers downstream; then the local mongo-writer; nats-server last. Children run in their own sessions, so a Ctrl-C on
the terminal reaches the supervisor's owner alone and this order holds.
"""

from __future__ import annotations

import asyncio
import enum
import os
import shutil
import socket
import tempfile
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from krt_runner.config import requester_connect_options
from krt_runner.entrypoint.settings import DEFAULT_PORT as DEFAULT_GRPC_PORT
from krt_runner.errors import EXIT_FAILED, EXIT_OK
from krt_runner.local_krt.embedded import stop_with_parent
from krt_runner.local_krt.mongo_writer import LocalMongoWriter, store_path
from krt_runner.local_krt.node_process import LINE_LIMIT, NodeProcess, Printer, how_it_ended
from krt_runner.local_krt.plan import Plan, UpOptions
from krt_runner.local_krt.preflight import warn_when_taken
from krt_runner.local_krt.stored_requests import StoredRequests
from krt_runner.local_krt.up_server import UpServer
from krt_runner.mongo.wire import DEFAULT_SUBJECT
from krt_runner.python_command import python_module
from krt_runner.setting_values import AT_LEAST_ONCE

# Seconds a node gets to drain after SIGTERM before it is killed; above KRT_DRAIN_TIMEOUT's default of 30.
STOP_TIMEOUT = 40.0


class Ending(enum.Enum):
    """How a wait of the supervisor ended."""

    READY = "ready"  # start(): every node is ready
    DONE = "done"  # until(work): the work finished first
    DIED = "died"  # a node exited, or the nats-server up started (no node then)
    STOPPED = "stopped"  # request_stop() was called
    TIMEOUT = "timeout"  # start(): not every node was ready in time


@dataclass(frozen=True)
class Outcome:
    """What a wait of the supervisor ended with: the node that died, or the work's result."""

    ending: Ending
    node: NodeProcess | None = None
    result: Any = None


class Supervisor:
    """Starts the plan's processes, watches them, and stops them all, in order; node output goes to ``output``."""

    def __init__(self, plan: Plan, options: UpOptions, *, output: TextIO) -> None:
        self.plan = plan
        self.options = options
        self.printer = Printer(output, [label for _, label in plan.replicas] + (["entrypoint"] if plan.grpc else []))
        self.nodes: list[NodeProcess] = []  # the entrypoint's process too, once started
        self.server = UpServer(options, say=self.say)
        self.mongo_writer: LocalMongoWriter | None = None
        self.url = ""
        self.grpc_address = ""  # host:port of the gRPC entrypoint, once ready
        self._stop = asyncio.Event()
        self._killing = False  # stop_now(): no drain, no order
        self._health_dir = Path(tempfile.mkdtemp(prefix="krt-up-"))
        self._preexec = stop_with_parent()  # killed with SIGKILL, up leaves nothing running
        # up's own connections (its checks, its mongo-writer, its request) to a server it did not start log in as the
        # nodes do, from the same KRT_NATS_* variables
        self.client_options = requester_connect_options({**os.environ, **options.env}) if options.nats else {}

    def say(self, text: str) -> None:
        for part in text.splitlines():
            self.printer.line("up", part)

    def request_stop(self) -> None:
        """Make :meth:`start`, :meth:`watch` and :meth:`until` end with ``STOPPED`` now or as soon as they wait."""
        self._stop.set()

    def stop_now(self) -> None:
        """Stop without draining: SIGKILL every process started (and any started from now on), nats-server too."""
        self._killing = True
        self._stop.set()
        for node in self.nodes:
            node.kill()
        self.server.kill()

    async def start(self) -> Outcome:
        """Start nats-server, the local mongo-writer and every node, then the gRPC entrypoint; ``READY`` once all
        are, else what came first."""
        self.url = await self.server.start()
        if self.options.nats:  # a server of someone else's: another up may run the same KRT there
            subjects = [entry.subject for entry in self.plan.entry_points]
            await warn_when_taken(self.url, subjects, say=self.say, options=self.client_options)
        for warning in self.plan.warnings:
            self.say(f"warning: {warning}")
        store = await self._start_mongo_writer(self.url)
        await self._start_nodes(self.url, store)
        if self._stop.is_set():  # stopped while starting: not all (or none) started, so none is ready
            return Outcome(Ending.STOPPED)
        ready = await self._first(self._all_ready(), timeout=self.options.ready_timeout, ending=Ending.READY)
        if ready.ending is not Ending.READY or self.plan.grpc is None:
            if self.plan.grpc_problem:
                self.say(f"gRPC entrypoint not started: {self.plan.grpc_problem}")
            return ready
        entrypoint = await self._start_entrypoint(self.url)
        ready = await self._first(entrypoint.wait_ready(), timeout=self.options.ready_timeout, ending=Ending.READY)
        if ready.ending is Ending.READY:
            self.grpc_address = entrypoint.health_file_text()
        return ready

    async def watch(self) -> Outcome:
        """Until a node exits (``DIED``) or :meth:`request_stop` (``STOPPED``)."""
        return await self._first(None)

    async def until(self, work: Awaitable[Any]) -> Outcome:
        """Until ``work`` is done (``DONE``, with its result), a node exits, or :meth:`request_stop`."""
        return await self._first(work)

    def explain(self, outcome: Outcome) -> tuple[int, list[str]]:
        """The exit code and the lines that explain an outcome. A node that stopped on its idle timeout
        (``KRT_IDLE_TIMEOUT``) means the KRT is idle: the rest stop and the exit code is 0, as on Ctrl-C."""
        if outcome.ending is Ending.DIED:
            return self._explain_death(outcome.node)
        if outcome.ending is Ending.TIMEOUT:
            waiting = [node.label for node in self.nodes if not node.ready.is_set()]
            options = self.options
            return EXIT_FAILED, [
                f"not ready within {options.ready_timeout:g}s: {', '.join(waiting)} (see {options.ready_timeout_name})"
            ]
        return EXIT_OK, []

    async def stop_everything(self) -> None:
        """Stop every node, first nodes first, each draining before the next (at least once, once the requests stored
        for it are answered: :mod:`~krt_runner.local_krt.stored_requests`); nats-server last."""
        answering = self.options.delivery == AT_LEAST_ONCE and self.options.answer_stored and self.url
        stored = await StoredRequests.connect(self.url, self.client_options) if answering else None
        try:
            for group in self._in_stop_order():
                if self._killing:  # the finally kills what is left
                    break
                running = [node for node in group if node.process.returncode is None]
                labels = ", ".join(node.label for node in running)
                if running and stored is not None:
                    await stored.wait_taken(running, label=labels, say=self.say, stopping=lambda: self._killing)
                if running:
                    self.say(f"stopping {labels}")
                await asyncio.gather(*(node.stop(STOP_TIMEOUT) for node in group))
        finally:
            if stored is not None:
                await stored.close()
            for node in self.nodes:
                node.kill()
            shutil.rmtree(self._health_dir, ignore_errors=True)
            await self._stop_mongo_writer()
            await self.server.stop()

    # -- starting ---------------------------------------------------------------------------------

    async def _start_mongo_writer(self, url: str) -> dict[str, str]:
        """Answer the nodes' ``ctx.db`` and ``ctx.prediction`` saves; the setting that lets them read it back."""
        environ = {**os.environ, **self.options.env}
        if environ.get("KRT_MONGO_URI"):
            self.say("KRT_MONGO_URI is set: ctx.db goes to that MongoDB's mongo-writer, not to a local store")
            return {}
        path = store_path(self.plan.krt.directory, environ)
        subject = environ.get("KRT_NATS_MONGO_WRITER") or DEFAULT_SUBJECT
        self.mongo_writer = LocalMongoWriter(path, subject, say=self.say)
        await self.mongo_writer.start(url, self.client_options)
        self.say(f"ctx.db and ctx.prediction documents go to {path} (SQLite, answering {subject}; "
                 "set KRT_LOCAL_DB_FILE to choose)")
        return {"KRT_LOCAL_DB_FILE": str(path)}

    async def _start_nodes(self, url: str, store: dict[str, str]) -> None:
        base_path, config = str(self.plan.krt.directory), self.plan.config
        measurements = self._measurements_outside_the_krt()
        for index, (wired, label) in enumerate(self.plan.replicas):
            if self._stop.is_set():  # stopped while starting them: start no more
                return
            env = {**os.environ, **self.options.env, **measurements, **store,
                   **wired.environment(nats_url=url, base_path=base_path, config=config)}
            env["KRT_LOG_FORMAT"] = "json"  # rendered here for the terminal
            env["KRT_DELIVERY"] = self.options.delivery
            env["KRT_HEALTH_FILE"] = str(self._health_dir / f"node-{index}")  # the node's own sign of readiness
            self.say(f"starting {label}: {wired.input} -> {wired.output or '(answers the requester)'}")
            process = await asyncio.create_subprocess_exec(
                *python_module("krt_runner", "run"),
                env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True, preexec_fn=self._preexec, limit=LINE_LIMIT,
            )  # fmt: skip
            self.nodes.append(NodeProcess(
                label, wired.workflow.sequential.index(wired.node.name), process, self.printer,
                health_file=Path(env["KRT_HEALTH_FILE"]), idle_timeout_set=_idle_timeout_set(env), subject=wired.input,
            ))  # fmt: skip

    async def _start_entrypoint(self, url: str) -> NodeProcess:
        """``krt-runner entrypoint`` on 127.0.0.1, stopped first (position -1): no new calls while nodes drain."""
        env = {**os.environ, **self.options.env, "KRT_NATS_SERVER": url, "KRT_VERSION": self.plan.krt.version,
               "KRT_LOG_FORMAT": "json", "KRT_HEALTH_FILE": str(self._health_dir / "entrypoint"),
               "KRT_NATS_SUBJECTS_FILE": "", "KRT_DELIVERY": self.options.delivery}  # fmt: skip
        port = self._grpc_port()
        self.say(f"starting the gRPC entrypoint ({self.plan.grpc.service if self.plan.grpc else ''})")
        process = await asyncio.create_subprocess_exec(
            *python_module("krt_runner", "entrypoint", str(self.plan.krt.directory)),
            "--host", "127.0.0.1", "--port", str(port),
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True, preexec_fn=self._preexec, limit=LINE_LIMIT,
        )  # fmt: skip
        entrypoint = NodeProcess("entrypoint", -1, process, self.printer,
                                 health_file=Path(env["KRT_HEALTH_FILE"]), idle_timeout_set=False)
        self.nodes.append(entrypoint)
        return entrypoint

    def _grpc_port(self) -> int:
        """The port asked for; by default 9000, or a free one (said) when 9000 is taken."""
        if self.options.grpc_port is not None:
            return self.options.grpc_port
        if _port_is_free(DEFAULT_GRPC_PORT):
            return DEFAULT_GRPC_PORT
        self.say(f"port {DEFAULT_GRPC_PORT} is in use: the gRPC entrypoint takes a free port (--grpc-port to choose)")
        return 0

    def _measurements_outside_the_krt(self) -> dict[str, str]:
        """Run inside the KRT folder with no measurement setting, the nodes would write measurements.lp into the KRT
        (and ``build`` would find it there): they write it beside the folder instead."""
        environ = {**os.environ, **self.options.env}
        krt = self.plan.krt.directory
        if environ.get("KRT_MEASUREMENTS_FILE") or environ.get("KRT_INFLUX_URI"):
            return {}
        if not Path.cwd().resolve().is_relative_to(krt):
            return {}
        path = krt.parent / f"{krt.name}.measurements.lp"
        self.say(f"measurements go to {path} (outside the KRT folder; set KRT_MEASUREMENTS_FILE to choose)")
        return {"KRT_MEASUREMENTS_FILE": str(path)}

    async def _all_ready(self) -> None:
        await asyncio.gather(*(node.wait_ready() for node in self.nodes))

    # -- waiting ----------------------------------------------------------------------------------

    async def _first(
        self, work: Awaitable[Any] | None, *, timeout: float | None = None, ending: Ending = Ending.DONE
    ) -> Outcome:
        """Wait for ``work``, a node's death or a stop request, whichever comes first (or ``timeout``)."""
        stopped, died = asyncio.ensure_future(self._stop.wait()), asyncio.ensure_future(self._death())
        worked = asyncio.ensure_future(work) if work is not None else None
        tasks = [task for task in (worked, died, stopped) if task is not None]
        done, pending = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if worked is not None and worked in done:  # work that finished wins over a death in the same instant
            return Outcome(ending, result=worked.result())
        if died in done:
            return Outcome(Ending.DIED, node=died.result())
        return Outcome(Ending.STOPPED if stopped in done else Ending.TIMEOUT)

    async def _death(self) -> NodeProcess | None:
        """The node that exited first; ``None`` when it is the nats-server this supervisor started."""
        exits: dict[asyncio.Future[Any], NodeProcess | None] = {node.exited: node for node in self.nodes}
        server = asyncio.ensure_future(self.server.exited()) if self.server.watched else None
        if server is not None:
            exits[server] = None
        try:
            done, _ = await asyncio.wait(exits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if server is not None:
                server.cancel()
        return next(exits[task] for task in exits if task in done)

    def _explain_death(self, node: NodeProcess | None) -> tuple[int, list[str]]:
        if node is None:
            return EXIT_FAILED, self.server.explain_exit()
        if node.stopped_on_idle:
            return EXIT_OK, [f"{node.label} stopped on its idle timeout (KRT_IDLE_TIMEOUT)"]
        lines = [f"    {line}" for line in node.last_lines]
        return EXIT_FAILED, [f"{node.label} {how_it_ended(node.process.returncode)}; its last lines:", *lines]

    # -- stopping ---------------------------------------------------------------------------------

    def _in_stop_order(self) -> Iterator[list[NodeProcess]]:
        for position in sorted({node.position for node in self.nodes}):
            yield [node for node in self.nodes if node.position == position]

    async def _stop_mongo_writer(self) -> None:
        writer, self.mongo_writer = self.mongo_writer, None
        if writer is not None:
            await writer.close()
            refused = f", {writer.refused} refused" if writer.refused else ""
            self.say(f"mongo_writer stopped: {writer.saved} documents saved{refused}")


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _idle_timeout_set(env: dict[str, str]) -> bool:
    try:
        return float(env.get("KRT_IDLE_TIMEOUT", "") or 0) > 0
    except ValueError:  # the node will refuse the setting and exit 2
        return False
