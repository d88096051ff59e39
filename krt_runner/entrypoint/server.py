"""The entrypoint process: one NATS connection, one ``grpc.aio`` server with reflection and health.

The gRPC port is open from the start; until NATS is connected, health says
``NOT_SERVING`` and calls get ``UNAVAILABLE``. Health follows the connection
(``SERVING`` only while connected), and so does ``KRT_HEALTH_FILE``, which
holds the address it listens on. Stopping: health goes ``NOT_SERVING``, new
calls are refused, calls in flight get their answers (up to
``KRT_DRAIN_TIMEOUT``), then the NATS connection drains.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from krt_runner.entrypoint.calls import MAX_ANSWER_BYTES, Forwarder
from krt_runner.entrypoint.reflection import serve_reflection
from krt_runner.entrypoint.service import EntrypointService, add_file
from krt_runner.entrypoint.settings import EntrypointSettings
from krt_runner.errors import ListenError
from krt_runner.jetstream_requests import JetStreamRequests
from krt_runner.node.broker import Broker
from krt_runner.node.health import HealthFile
from krt_runner.node.jetstream import NODE_SETTING
from krt_runner.setting_values import AT_LEAST_ONCE

# Calls taken at once, before the entrypoint gets to them, beyond which gRPC cancels new ones.
MAX_PENDING_CALLS = 10_000
# Seconds gRPC gives what is open once the workflow calls are done: only long-lived streams (a health Watch).
_STREAMS_GRACE = 1.0
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_SERVER_OPTIONS = [
    # a request may be as large as a compressed envelope can carry; gRPC's own default is 4 MiB
    ("grpc.max_receive_message_length", MAX_ANSWER_BYTES),
    # grpcio sets SO_REUSEPORT by default: a second entrypoint would bind a port one already serves, and clients
    # would be split between the two KRTs. Off, the second cannot listen, as the docs say.
    ("grpc.so_reuseport", 0),
    # Calls gRPC has taken and the server has not asked for yet: past grpc core's defaults (1000, then 3000 at most),
    # it cancels new ones (CANCELLED, never seen by the entrypoint), which a burst of a few thousand calls reaches.
    ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
    ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS),
]


class _ClientGone(logging.Filter):
    """grpcio logs an error with a traceback when a call's status cannot be sent because its client has gone (its
    deadline passed while the workflow worked): the call's own ``call failed`` line has said what happened."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and type(record.exc_info[1]).__name__ == "ExecuteBatchError")


_CLIENT_GONE = _ClientGone()  # one: a filter added again is not added twice


class RunningEntrypoint:
    """The entrypoint's server and connection, from :meth:`start` to :meth:`stop`."""

    def __init__(self, settings: EntrypointSettings, service: EntrypointService, logger: Any) -> None:
        self.settings = settings
        self.service = service
        self.log = logger
        self.broker = Broker(settings, logger)
        # at-least-once: calls through JetStream, on an inbox of the entrypoint's own (subscribed once connected)
        self._jetstream = JetStreamRequests(self.broker.client, setting=NODE_SETTING) \
            if settings.delivery == AT_LEAST_ONCE else None
        self.address = ""
        self._health = health.aio.HealthServicer()
        answers = max(MAX_ANSWER_BYTES, settings.max_decompressed_bytes)  # an answer as large as it may inflate to
        self._server = grpc.aio.server(options=[*_SERVER_OPTIONS, ("grpc.max_send_message_length", answers)])
        self._health_file: HealthFile | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._forwarder = Forwarder(self.broker, request_timeout=settings.request_timeout, logger=logger,
                                    jetstream=self._jetstream, max_answer_bytes=settings.max_decompressed_bytes,
                                    debug=settings.log_level == "debug")

    async def start(self) -> None:
        """Listen, then connect to NATS (retrying an unreachable server); ready once connected."""
        logging.getLogger("grpc._cython.cygrpc").addFilter(_CLIENT_GONE)
        self._add_services()
        self.address = self._listen()
        await self._set_health(serving=False)
        await self._server.start()
        self.log.info("gRPC server listening; connecting to NATS", address=self.address)
        await self.broker.connect()
        if self._jetstream is not None:
            await self._jetstream.start()
        self.broker.on_connection_change = self._on_connection_change
        await self._set_health(serving=self.broker.is_connected)
        self._health_file = HealthFile(
            self.settings.health_file, is_healthy=lambda: self.broker.is_connected, logger=self.log,
            content=self.address,
        )  # fmt: skip
        self._health_file.start()
        rpcs = [f"{self.service.name}/{rpc.name} -> {rpc.subject}" for rpc in self.service.rpcs]
        self.log.info("entrypoint ready", address=self.address, rpcs=rpcs, delivery=self.settings.delivery)

    async def stop(self) -> None:
        """Refuse new calls, let calls in flight finish (up to the drain timeout), then close NATS."""
        # New calls are refused from here on, and each connection's last answer waits a moment: see OpenCalls.
        self._forwarder.open_calls.stopping = True
        await self._health.enter_graceful_shutdown()
        if self._health_file is not None:
            await self._health_file.stop()
        given_up = await self._forwarder.open_calls.drain(self.settings.drain_timeout)
        if given_up:
            self.log.warning("KRT_DRAIN_TIMEOUT ran out: calls still waiting were answered UNAVAILABLE",
                             calls=given_up, seconds=self.settings.drain_timeout)
        await self._server.stop(grace=_STREAMS_GRACE)  # what is left: streams a client holds open (health Watch)
        await self.broker.close()
        self.log.info("entrypoint stopped")

    def _add_services(self) -> None:
        handler = grpc.unary_unary_rpc_method_handler  # no (de)serializer: the handlers take and give bytes
        handlers = {rpc.name: handler(self._forwarder.handler_for(rpc)) for rpc in self.service.rpcs}
        self._server.add_registered_method_handlers(self.service.name, handlers)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        add_file(self.service.pool, health_pb2.DESCRIPTOR)
        serve_reflection(self._server, (self.service.name, health.SERVICE_NAME), self.service.pool)

    def _listen(self) -> str:
        host = f"[{self.settings.host}]" if ":" in self.settings.host else self.settings.host
        wanted = f"{host}:{self.settings.port}"
        # gRPC's own failure says only "Failed to bind", after a line of its C core: the cause is found first.
        cause = bind_problem(self.settings.host, self.settings.port)
        port = 0
        if not cause:
            try:
                port = self._server.add_insecure_port(wanted)
            except RuntimeError as exc:
                cause = str(exc)
        if not port:
            raise ListenError(f"cannot listen on {wanted}: {cause or 'bind failed'}; {_listen_hint(cause)}")
        return f"{host}:{port}"

    async def _set_health(self, *, serving: bool) -> None:
        status = _SERVING if serving else _NOT_SERVING
        for name in ("", self.service.name):
            await self._health.set(name, status)

    def _on_connection_change(self, connected: bool) -> None:
        task = asyncio.get_running_loop().create_task(self._set_health(serving=connected))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def bind_problem(host: str, port: int) -> str:
    """Why a TCP server could not listen on ``host:port`` (the system's words), or ``""`` when it can now."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot resolve {host!r} ({exc.strerror})"
    family, kind, protocol, _, address = found[0]
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds: a port in TIME_WAIT is free
        try:
            probe.bind(address)
        except OSError as exc:
            return exc.strerror or str(exc)
    return ""


def _listen_hint(cause: str) -> str:
    if cause.startswith("cannot resolve"):
        return "set KRT_ENTRYPOINT_HOST (--host) to an address of this machine, or 0.0.0.0 for all"
    if "in use" in cause:
        return ("another process listens there: set KRT_ENTRYPOINT_PORT (--port; under krt-runner up, --grpc-port); "
                "0 picks a free one")
    return "set KRT_ENTRYPOINT_HOST (--host) and KRT_ENTRYPOINT_PORT (--port); a port below 1024 needs privileges"
