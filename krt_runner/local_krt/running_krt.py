"""Workflows as futures: run a KRT from Python (or attach to a running one) and submit requests.

::

    with krt_runner.local("examples/iris") as krt:              # as `krt-runner up`, stopped on exit
        classify = krt.workflow("classify")
        futures = [classify.submit(Request(...)) for ...]       # each returns at once
        for future in krt_runner.as_completed(futures):
            print(future.result().species)

One event-loop thread per :class:`RunningKrt` owns the NATS connection (and,
under :func:`local`, the processes ``up`` would start). ``submit`` hands the
request to that loop and returns a :class:`Future` at once: a
``concurrent.futures.Future`` (``result(timeout)``, ``done()``,
``exception()``, ``concurrent.futures.wait``) that can also be awaited. A
thousand requests in flight are a thousand asyncio tasks on that one thread,
not a thousand threads. A request that gets no usable answer fails with the
client's typed errors (:class:`~krt_runner.errors.ErrorAnswer`,
:class:`~krt_runner.errors.CallTimeout`...); a node that exits, or closing the
KRT, fails what is still pending with a :class:`~krt_runner.errors.CallError`.

A workflow's future can be another workflow's request when its answer is that
workflow's request type (``price.submit(classify.submit(flower))``): the second
request is sent, on the loop, when the first answers, and fails with the first's
error when that fails.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import json
import sys
import threading
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from google.protobuf.message import Message

from krt_runner.client import DEFAULT_TIMEOUT, Client
from krt_runner.config import requester_connect_options
from krt_runner.errors import CallError, KrtRunnerError, NotConnected
from krt_runner.krt.krt_reader import load_krt
from krt_runner.krt.model import Krt
from krt_runner.krt.package import open_krt
from krt_runner.krt.protos import MessageTypes, parse_json
from krt_runner.local_krt.loop_thread import CLOSE_TIMEOUT, Future, LoopThread, as_completed, wait
from krt_runner.local_krt.plan import READY_TIMEOUT, EntryPoint, Plan, UpOptions, make_plan, workflow_entry_points
from krt_runner.local_krt.supervisor import Ending, Supervisor
from krt_runner.requester_envelope import check_timeout
from krt_runner.setting_values import AT_MOST_ONCE, DELIVERY_MODES

__all__ = ["Future", "RunningKrt", "RunningWorkflow", "as_completed", "connect", "local", "wait"]

# One request's call on the KRT's client, run on its loop.
_Send = Callable[[Client], Coroutine[Any, Any, Message]]


class RunningWorkflow:
    """One workflow of a running KRT: :meth:`submit` requests to its entry subject."""

    def __init__(self, owner: RunningKrt, entry: EntryPoint, types: MessageTypes) -> None:
        self.name = entry.workflow.name
        self.subject = entry.subject
        self.request_type = types.request
        self.response_type = types.response
        self._owner = owner

    def submit(
        self, request: Message | Mapping[str, Any] | Future[Message], *, timeout: float = DEFAULT_TIMEOUT
    ) -> Future[Message]:
        """Send ``request`` (a message, or its fields as a dict) and return the future of its answer at once.

        ``request`` may be another workflow's future whose answer is this workflow's request type
        (``price.submit(classify.submit(flower))``): the request is sent when that answer comes, and that future's
        failure is this one's. ``timeout`` is how long the answer may take once the request is sent (then
        :class:`~krt_runner.errors.CallTimeout`); ``future.result(t)`` is how long you wait for it.
        """
        check_timeout(timeout)
        if isinstance(request, concurrent.futures.Future):
            earlier = self._chained(request)
            return self._owner._submit(lambda client: self._send_after(client, earlier, timeout), self.response_type)
        message = self._as_request(request)
        return self._owner._submit(
            lambda client: client.call(self.subject, message, self.response_type, timeout=timeout), self.response_type
        )

    def _chained(self, earlier: concurrent.futures.Future[Any]) -> concurrent.futures.Future[Any]:
        """``earlier``, if it answers with this workflow's request type; a ``TypeError`` otherwise."""
        expected = self.request_type.DESCRIPTOR.full_name
        answer_type = getattr(earlier, "answer_type", None)
        if answer_type is None:
            raise TypeError(f"workflow {self.name!r} takes a {expected} or a workflow's future, not another future")
        if answer_type.DESCRIPTOR.full_name != expected:
            raise TypeError(f"workflow {self.name!r} takes a {expected}; that future answers a "
                            f"{answer_type.DESCRIPTOR.full_name}")
        return earlier

    async def _send_after(self, client: Client, earlier: concurrent.futures.Future[Any], timeout: float) -> Message:
        """Once ``earlier`` has its answer, send it as this workflow's request; its exception (an ``ErrorAnswer``...)
        is raised as this call's own."""
        try:
            answer = await asyncio.wrap_future(earlier)
        except asyncio.CancelledError:
            if earlier.cancelled():  # by its owner: not this task's cancellation
                raise CallError("the future this request waited for was cancelled") from None
            raise
        if not isinstance(answer, self.request_type):  # the same message, from another module
            answer = self.request_type.FromString(answer.SerializeToString())
        return await client.call(self.subject, answer, self.response_type, timeout=timeout)

    def _as_request(self, request: Message | Mapping[str, Any]) -> Message:
        expected = self.request_type.DESCRIPTOR.full_name
        if isinstance(request, Mapping):
            return parse_json(json.dumps(dict(request)), self.request_type)
        if not isinstance(request, Message) or request.DESCRIPTOR.full_name != expected:
            got = request.DESCRIPTOR.full_name if isinstance(request, Message) else type(request).__name__
            raise TypeError(f"workflow {self.name!r} takes a {expected}, not a {got}")
        return request

    def __repr__(self) -> str:
        return f"<Workflow {self.name} on {self.subject}>"


class RunningKrt:
    """A KRT taking requests, made by :func:`local` or :func:`connect`; close it (or use ``with``) when done."""

    krt: Krt  # the krt.yml model
    url: str  # the NATS server
    grpc_address: str | None = None  # host:port of the gRPC entrypoint local() started, if it did

    def __init__(self) -> None:
        self._loop = LoopThread()
        self._exits = contextlib.ExitStack()  # undone in reverse: connection, processes, unpacked .krt, loop
        self._exits.callback(self._loop.close)
        self._closing = threading.Lock()  # close() from two threads: the second waits for the first
        self._client: Client | None = None
        self._entries: dict[str, EntryPoint] = {}

    def workflow(self, name: str) -> RunningWorkflow:
        """The workflow called ``name`` in krt.yml."""
        entry = self._entries.get(name)
        if entry is None:
            raise KeyError(f"no workflow {name!r} in {self.krt.version} (workflows: {', '.join(self._entries)})")
        if entry.types is None:
            raise KrtRunnerError(f"cannot read the request and response types of workflow {name!r}: {entry.problem}")
        return RunningWorkflow(self, entry, entry.types)

    def close(self) -> None:
        """Fail what is pending, close the connection; under :func:`local`, stop every process it started."""
        self._loop.refuse_on_its_thread("closing the KRT")  # before anything is undone: the KRT stays as it is
        with self._closing:
            self._exits.close()

    def __enter__(self) -> RunningKrt:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _submit(self, send: _Send, answer_type: type[Message]) -> Future[Message]:
        """The future of ``send(client)``, run on the loop; it answers with an ``answer_type``."""
        if self._client is None:
            raise NotConnected(f"{self.krt.version} is closed: submit before close(), inside its with block")
        future: Future[Message] = self._loop.submit(send(self._client), call=True)
        future.answer_type = answer_type
        return future

    def _open(self, source: Path | str) -> Path:
        return self._exits.enter_context(open_krt(source))

    def _connect(self, url: str, delivery: str, options: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self._client = self._loop.run(Client.connect(url, delivery=delivery, **(options or {})))
        self._exits.callback(self._disconnect)
        self._entries = {entry.workflow.name: entry for entry in workflow_entry_points(self.krt)}

    def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            self._loop.run(self._close_client(client), timeout=CLOSE_TIMEOUT)

    async def _close_client(self, client: Client) -> None:
        self._loop.fail_calls(CallError("the KRT was closed before the answer came"))
        await client.close()


def connect(nats_url: str, source: Path | str, *, delivery: str = AT_MOST_ONCE) -> RunningKrt:
    """Attach to a KRT already running on ``nats_url`` (started by ``krt-runner up`` or KRE).

    ``source``, its folder or ``.krt``, tells the workflows, their subjects and types. ``delivery="at-least-once"``
    sends through JetStream, to nodes running in that mode (``up --delivery at-least-once``).
    """
    running = RunningKrt()
    try:
        running.krt = load_krt(running._open(source))
        running._connect(nats_url, delivery, requester_connect_options())
    except BaseException:
        running.close()
        raise
    return running


def local(
    source: Path | str,
    *,
    replicas: Mapping[str, int] | None = None,
    ready_timeout: float = READY_TIMEOUT,
    env: Mapping[str, str] | None = None,
    output: TextIO | None = None,
    grpc_port: int | None = 0,
    delivery: str = AT_MOST_ONCE,
) -> RunningKrt:
    """Start the KRT in ``source`` (a folder or a ``.krt``) as ``krt-runner up`` does; return once every node is ready.

    Use it as ``with krt_runner.local(...) as krt:``: leaving the block stops
    every node (draining, in workflow order) and then nats-server, also when
    the block raises. ``env`` adds variables (config values, ``KRT_*``
    settings) to the environment every node inherits. Node logs go to
    ``output`` (default: ``sys.stderr``). The KRT's gRPC entrypoint listens on
    127.0.0.1:``grpc_port`` (0: a free port; ``None``: not started), at
    ``krt.grpc_address`` once ready (``None`` when it could not start: the reason is in ``output``).
    ``delivery="at-least-once"`` runs nats-server with JetStream and every node,
    the entrypoint and ``submit`` in that mode (see docs/production.md).
    Raises :class:`~krt_runner.errors.KrtRunnerError` with the reason when the
    KRT cannot start (a problem of krt.yml, a node's exit code and last lines...).
    """
    if delivery not in DELIVERY_MODES:  # before anything starts, as Client.connect checks it
        raise ValueError(f"delivery must be one of {', '.join(DELIVERY_MODES)}, not {delivery!r}")
    _check_types(replicas or {}, env or {})
    running = RunningKrt()
    try:
        options = UpOptions(
            directory=running._open(source), replicas=dict(replicas or {}), ready_timeout=ready_timeout,
            env=dict(env or {}), grpc=grpc_port is not None, grpc_port=grpc_port, delivery=delivery,
            ready_timeout_name="local()'s ready_timeout", replicas_name="local()'s replicas",
            answer_stored=False,  # its own requests' futures fail as it closes: nobody would read their answers
        )  # fmt: skip
        plan = make_plan(options)
        running.krt = plan.krt
        processes = _Processes(running._loop, plan, options, output if output is not None else sys.stderr)
        running._exits.callback(processes.stop)
        processes.start(str(source))
        running.grpc_address = processes.supervisor.grpc_address or None
        running._connect(processes.supervisor.url, delivery)
        processes.watch()
    except BaseException:
        running.close()
        raise
    # A script that never closes it still leaves no process behind when it exits.
    atexit.register(running.close)
    running._exits.callback(atexit.unregister, running.close)
    return running


def _check_types(replicas: Mapping[str, Any], env: Mapping[str, Any]) -> None:
    """A ``TypeError`` naming the argument, before anything starts (env={"KRT_CONCURRENCY": 4} is an easy slip)."""
    for name, value in env.items():
        if not (isinstance(name, str) and isinstance(value, str)):
            raise TypeError(f"local(env=...): {name!r}: {value!r} is not a str; environment variables are text, "
                            f"e.g. env={{'KRT_CONCURRENCY': '4'}}")
    for node, count in replicas.items():
        if isinstance(count, bool) or not isinstance(count, int):
            raise TypeError(f"local(replicas=...): {node!r}: {count!r} is not a whole number of processes")


class _Processes:
    """What :func:`local` started: the supervisor's processes, on the KRT's loop."""

    def __init__(self, loop: LoopThread, plan: Plan, options: UpOptions, output: TextIO) -> None:
        self._loop = loop
        self.supervisor = loop.run(self._make(plan, options, output))
        self._started: list[Future[Any]] = []  # start and watch: awaited before stopping

    @staticmethod
    async def _make(plan: Plan, options: UpOptions, output: TextIO) -> Supervisor:
        return Supervisor(plan, options, output=output)  # made on the loop that runs it

    def start(self, source: str) -> None:
        self._started.append(self._loop.submit(self.supervisor.start()))
        started = self._started[-1].result()
        if started.ending is not Ending.READY:
            _, lines = self.supervisor.explain(started)
            raise KrtRunnerError(f"local({source!r}) cannot start:\n" + "\n".join(lines))

    def watch(self) -> None:
        self._started.append(self._loop.submit(self._watch()))

    async def _watch(self) -> None:
        """A node that exits while the KRT is in use fails what is pending, and what comes after, with the reason."""
        outcome = await self.supervisor.watch()
        if outcome.ending is Ending.DIED:
            _, lines = self.supervisor.explain(outcome)
            self.supervisor.say("\n".join(lines))
            self._loop.fail_calls(CallError("\n".join(lines)))

    def stop(self) -> None:
        self._loop.run(self._stop(), timeout=CLOSE_TIMEOUT)

    async def _stop(self) -> None:
        self.supervisor.request_stop()  # start() and watch() return: no process starts after this
        await asyncio.gather(*(asyncio.wrap_future(started) for started in self._started), return_exceptions=True)
        await self.supervisor.stop_everything()
