"""``krt-runner up``: run a whole KRT on this machine, one ``krt-runner run`` process per node.

It stops everything (in the supervisor's order) on Ctrl-C, SIGTERM or SIGHUP,
when a node dies or stops on its idle timeout, or after the ``--request``
answer; every process it started is stopped on every way out, exceptions
included.
"""

from __future__ import annotations

import asyncio
import shlex
import signal
import sys
from dataclasses import replace
from typing import TextIO, cast

from google.protobuf.message import Message

from krt_runner.client import Client
from krt_runner.errors import (
    EXIT_FAILED,
    EXIT_USAGE,
    CallError,
    ClientConnectError,
    ConfigError,
    KrtFileError,
    KrtRunnerError,
    UpError,
)
from krt_runner.krt.package import open_krt
from krt_runner.krt.protos import to_json
from krt_runner.local_krt.ask import send_one
from krt_runner.local_krt.node_process import Quiet
from krt_runner.local_krt.plan import EntryPoint, UpOptions, make_plan
from krt_runner.local_krt.preflight import unanswered
from krt_runner.local_krt.supervisor import Ending, Outcome, Supervisor
from krt_runner.log_stream import NeverBlockingStream
from krt_runner.setting_values import AT_MOST_ONCE, redact_servers

# Children run in their own sessions, so a closed terminal (SIGHUP) must stop them through up too.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_up(options: UpOptions, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run the ``up`` command on a folder or a ``.krt``; its exit code (2 when the KRT or the options are wrong)."""
    out, err = cast(TextIO, Quiet(out)), cast(TextIO, Quiet(_unpaused(err)))  # a reader gone away stops nothing
    try:
        with open_krt(options.directory) as directory:
            plan = make_plan(replace(options, directory=directory))
            unreachable = unanswered(options.nats) if options.nats else ""
            if unreachable:  # at once: the nodes would retry it without end, until the ready timeout
                print(f"krt-runner up: {unreachable}", file=err)
                return EXIT_USAGE
            return asyncio.run(_Up(Supervisor(plan, options, output=err), out=out, err=err).run())
    except (UpError, KrtFileError, ConfigError) as exc:  # a KRT, options, package or credentials that cannot be used
        print(f"krt-runner up: {exc}", file=err)
        return EXIT_USAGE


def _unpaused(stream: TextIO) -> TextIO:
    """The nodes' lines on a terminal, through a stream that never blocks: a paused terminal (Ctrl-S) would stop up's
    event loop, and with it the mongo-writer the nodes' ``ctx.db`` waits for. Past 1 MB waiting, lines are dropped
    and counted (see :mod:`krt_runner.log_stream`)."""
    try:
        on_a_terminal = stream.isatty()
    except (OSError, ValueError):
        return stream
    if not on_a_terminal:
        return stream
    said = "up | {dropped} lines dropped: the terminal did not keep up".format_map
    return cast(TextIO, NeverBlockingStream(stream, notice=said))


class _Up:
    """One run of the command: start, serve or send the request, stop."""

    def __init__(self, supervisor: Supervisor, *, out: TextIO, err: TextIO) -> None:
        self.supervisor = supervisor
        self.out = out
        self.err = err
        self._signal = 0  # the first stop signal received
        self._forced = 0  # the second: stop now

    async def run(self) -> int:
        """Start everything, serve or send the request, stop everything; the exit code."""
        loop = asyncio.get_running_loop()
        for signum in _STOP_SIGNALS:
            loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            code = await self._serve()
        except ClientConnectError as exc:  # the server answered up's check, then refused its credentials or TLS
            self.supervisor.say(str(exc))
            code = EXIT_USAGE
        except KrtRunnerError as exc:
            self.supervisor.say(str(exc))
            code = EXIT_FAILED
        finally:
            await self.supervisor.stop_everything()
            for signum in _STOP_SIGNALS:
                loop.remove_signal_handler(signum)
        return 128 + self._forced if self._forced else code

    def _on_signal(self, signum: int) -> None:
        """The first signal stops everything in order, each node draining; a second one stops what is left now."""
        if self._signal:
            self._forced = self._forced or signum
            self.supervisor.say("second signal: stopping now, without draining (SIGKILL)")
            self.supervisor.stop_now()
            return
        self._signal = signum
        self.supervisor.say("signal received: stopping everything, each node draining; press Ctrl-C again to stop now")
        self.supervisor.request_stop()

    async def _serve(self) -> int:
        supervisor = self.supervisor
        started = await supervisor.start()
        if started.ending is Ending.STOPPED and supervisor.plan.request is not None and self._signal:
            supervisor.say("the request was interrupted before it was sent")  # no answer: not a success
            return 128 + self._signal
        if started.ending is not Ending.READY:
            return self._exit_code(started)
        supervisor.say(f"all {len(supervisor.plan.replicas)} node processes ready")
        if supervisor.plan.request is not None:
            answered = await supervisor.until(self._send_request(*supervisor.plan.request))
            if answered.ending is Ending.STOPPED:  # a stop is no answer: say so, exit as the shell expects
                supervisor.say("the request was interrupted before its answer came")
                return 128 + self._signal if self._signal else EXIT_FAILED
            return int(answered.result) if answered.ending is Ending.DONE else self._exit_code(answered)
        self._print_entry_points()
        supervisor.say("Ctrl-C stops everything")
        return self._exit_code(await supervisor.watch())

    def _exit_code(self, outcome: Outcome) -> int:
        code, lines = self.supervisor.explain(outcome)
        for line in lines:
            self.supervisor.say(line)
        if outcome.ending is Ending.DIED:
            self.supervisor.say("stopping everything else")
        return code

    async def _send_request(self, entry: EntryPoint, request: Message) -> int:
        assert entry.types is not None
        self.supervisor.say(f"sending the request to {entry.subject}")
        try:
            client = await Client.connect(self.supervisor.url, delivery=self.supervisor.options.delivery,
                                          **self.supervisor.client_options)
        except CallError as exc:
            self.supervisor.say(str(exc))
            return EXIT_FAILED
        async with client:
            return await send_one(
                client, entry.subject, request, entry.types.response,
                timeout=self.supervisor.options.timeout, out=self.out, err=self.err, command="up",
            )  # fmt: skip

    def _print_entry_points(self) -> None:
        supervisor = self.supervisor
        grpc, address, url = supervisor.plan.grpc, supervisor.grpc_address, supervisor.url
        if grpc is not None and address:
            print(f"gRPC entrypoint: {address} ({grpc.service})", file=self.out)
        for entry in supervisor.plan.entry_points:
            example = to_json(entry.types.request(), indent=None, with_defaults=True) if entry.types else "{}"
            command = ["krt-runner", "call", entry.subject, "--nats", redact_servers(url), *entry.flags, "--request",
                       example]
            if supervisor.options.delivery != AT_MOST_ONCE:
                command += ["--delivery", supervisor.options.delivery]
            print(f"workflow {entry.workflow.name}: {entry.subject}", file=self.out)
            print(f"  {shlex.join(command)}", file=self.out)
            if grpc is not None and address:
                method = f"{grpc.service}/{grpc.rpcs[entry.workflow.name]}"
                print(f"  {shlex.join(['grpcurl', '-plaintext', '-d', example, address, method])}", file=self.out)
            self.out.flush()
            if entry.problem:
                supervisor.say(f"workflow {entry.workflow.name}: {entry.problem}")
