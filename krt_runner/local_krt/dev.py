"""``serve()``: run a node from its own file, on a KRT deployment or in a local dev mode.

``python src/classifier.py`` with ``KRT_NATS_SERVER`` set is a node, as
``krt-runner run`` would start it. Without it, or with ``--request``, dev mode: an embedded
nats-server, this one node in-process, JSON requests in (``--request`` or one
per line on stdin), JSON answers out (one line each on stdout), readable logs
on stderr. Requests go through NATS and the same per-message pipeline as in
production, so what works here works there.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import inspect
import json
import os
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import structlog
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.message import Message

from krt_runner.config import Settings, load_settings, setting_from_env
from krt_runner.envelope import AnyMessage, KreNatsMessage, decode
from krt_runner.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    ConfigError,
    HandlerLoadError,
    InvalidRequestError,
    KrtRunnerError,
)
from krt_runner.exit_watch import SHORT_GRACE, exit_within
from krt_runner.logging import configure_logging
from krt_runner.node import protobuf_compat
from krt_runner.node.calling import UserFunction
from krt_runner.node.main import node_main, read_settings, serve_node
from krt_runner.node.user_code import UserCode, user_code_from

if TYPE_CHECKING:
    from krt_runner.local_krt.mongo_writer import LocalMongoWriter
    from krt_runner.node.lifecycle import RunningNode

DEV_INPUT = "krt-dev.in"
# Cap on an answer's decompressed size in dev mode: generous, it is our own node.
_DEV_MAX_ANSWER_BYTES = 256 * 1024 * 1024


def serve(
    target: Any = None, *, init: UserFunction | None = None, handler_batch: UserFunction | None = None,
    argv: Sequence[str] | None = None,
) -> NoReturn:
    """Run ``target`` as a node and exit with its exit code; call it under ``if __name__ == "__main__":``.

    ``target`` is a :class:`~krt_runner.Processor` subclass, or a
    ``handler(ctx, req)`` function with its optional ``init``; ``handler_batch``
    is a module's batch function (with or without ``target``). With
    ``KRT_NATS_SERVER`` set the process is a node configured by the ``KRT_*``
    variables. Otherwise it runs in local dev mode: ``--request '{...}'``
    (repeatable), or one JSON request per line on stdin, each answered with one
    JSON line on stdout. Dev mode needs a typed request parameter.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    exit_code = _main(target, init=init, handler_batch=handler_batch, argv=argv)
    exit_within(exit_code, SHORT_GRACE)  # a node's own, after serving, is the drain's time (serve_node)
    sys.exit(exit_code)


def _main(target: Any, *, init: UserFunction | None, handler_batch: UserFunction | None, argv: list[str]) -> int:
    script = _script_of(target if target is not None else handler_batch)
    try:
        _protobuf_compat(script)
        code = user_code_from(target, init=init, handler_batch=handler_batch, name=script.stem, source=str(script))
    except (HandlerLoadError, ConfigError) as exc:
        print(f"krt-runner: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # --request always means dev mode: an exported KRT_NATS_SERVER (left from running a node) does not turn it off.
    if os.environ.get("KRT_NATS_SERVER") and not _asks_for_dev_mode(argv):
        return _run_as_node(code, script)
    return _run_dev(code, script, _dev_parser(script).parse_args(argv))


def _protobuf_compat(script: Path) -> None:
    """As ``krt-runner run`` does (``KRT_PROTOBUF_COMPAT``); the script and the files beside it imported
    json_format's functions before they called serve(), so their names are pointed at the installed ones."""
    protobuf_compat.apply(enabled=setting_from_env("protobuf_compat"))
    protobuf_compat.rebind_modules_under(script.parent)


def _asks_for_dev_mode(argv: list[str]) -> bool:
    return any(arg == "--request" or arg.startswith("--request=") for arg in argv)


def _script_of(target: Any) -> Path:
    """The file that defines ``target``: its module's, else the script being run."""
    owner = target if inspect.isfunction(target) or inspect.isclass(target) else type(target)
    try:
        return Path(inspect.getfile(owner)).resolve()
    except (TypeError, OSError):
        return Path(sys.argv[0] or "node.py").resolve()


# -- as a node ----------------------------------------------------------------------------------


def _run_as_node(code: UserCode, script: Path) -> int:
    # The code is given; KRT_HANDLER_PATH only names it in logs, so it may be left out.
    settings = read_settings({} if os.environ.get("KRT_HANDLER_PATH") else {"handler_path": str(script)})
    if settings is None:
        return EXIT_USAGE
    return serve_node(settings, code)


# -- local dev mode ---------------------------------------------------------------------------


def _dev_parser(script: Path) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=script.name,
        description="Local dev mode (KRT_NATS_SERVER is not set): run this node on an embedded nats-server, "
        "answer JSON requests with JSON lines on stdout; logs go to stderr.",
    )
    parser.add_argument(
        "--request", action="append", metavar="JSON",
        help="a request as JSON, e.g. '{\"name\": \"Ada\"}' (repeatable); without it, one request per stdin line",
    )
    return parser


def _run_dev(code: UserCode, script: Path, args: argparse.Namespace) -> int:
    if code.request_type is None:
        print(
            f"krt-runner: dev mode needs the request type: annotate the request parameter of {script.name} with its "
            "protobuf class, e.g. handler(ctx, req: Request) or process(self, ctx, req: Request); "
            "or set KRT_NATS_SERVER and the other KRT_* settings to run it as a node",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from krt_runner.local_krt.embedded import EmbeddedNats

    server = EmbeddedNats()
    try:
        settings = load_settings(env=_dev_env(server.url, script))
        configure_logging(log_format=settings.log_format, level=settings.log_level)
        if "KRT_MEASUREMENTS_ENABLED" not in os.environ:  # dev mode's own default, unlike a node's: say so
            structlog.get_logger("krt_runner").info("dev mode sets KRT_MEASUREMENTS_ENABLED=false unless it is set "
                                                    "(true writes them to measurements.lp, or to KRT_INFLUX_URI)")
        server.start()
        return asyncio.run(_dev_main(settings, code, args.request))
    except KrtRunnerError as exc:  # invalid KRT_* settings, or no nats-server to start
        print(f"krt-runner: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        server.close()


def _dev_env(url: str, script: Path) -> dict[str, str]:
    """Defaults a developer would pick, then their own KRT_* variables, then what dev mode must own."""
    env = {
        "KRT_BASE_PATH": str(_dev_base_path(script)),
        "KRT_WORKFLOW_NAME": "dev",
        "KRT_LOG_FORMAT": "console",
        "KRT_MEASUREMENTS_ENABLED": "false",
    }
    env.update({key: value for key, value in os.environ.items() if key.startswith("KRT_")})
    if not env.get("KRT_MONGO_URI"):  # ctx.db goes to a local store, as under up
        from krt_runner.local_krt.mongo_writer import store_path

        env["KRT_LOCAL_DB_FILE"] = str(store_path(Path(env["KRT_BASE_PATH"]), env))
    env.update({
        "KRT_NATS_SERVER": url,
        "KRT_NATS_INPUT": DEV_INPUT,
        "KRT_NATS_OUTPUT": "",
        "KRT_HANDLER_PATH": str(script),
        "KRT_IDLE_TIMEOUT": "0",
    })
    return env


def _dev_base_path(script: Path) -> Path:
    """The KRT root for ``src/node.py`` (where ``models/`` lives), else the script's own folder."""
    return script.parent.parent if script.parent.name == "src" else script.parent


async def _dev_main(settings: Settings, code: UserCode, requests: list[str] | None) -> int:
    session = _DevSession(code, requests)
    writer = await _start_mongo_writer(settings)
    try:
        exit_code = await node_main(settings, code, work=session.run)
    finally:
        if writer is not None:
            await writer.close()
    return exit_code or (EXIT_FAILED if session.failures else EXIT_OK)


async def _start_mongo_writer(settings: Settings) -> LocalMongoWriter | None:
    """The local store for ctx.db and ctx.prediction, unless KRT_MONGO_URI names a real MongoDB."""
    if settings.mongo_uri:
        return None
    from krt_runner.local_krt.mongo_writer import LocalMongoWriter

    log = structlog.get_logger("krt_runner")
    writer = LocalMongoWriter(Path(settings.local_db_file), settings.mongo_writer_subject, say=log.warning)
    await writer.start(settings.nats_servers[0])
    log.info("ctx.db and ctx.prediction documents go to " + settings.local_db_file)
    return writer


async def _request_lines(requests: list[str] | None) -> AsyncIterator[str]:
    if requests:
        for request in requests:
            yield request
        return
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    # A daemon thread: a blocked read of stdin must never keep the process alive.
    threading.Thread(target=_read_stdin, args=(loop, queue), name="krt-dev-stdin", daemon=True).start()
    while (line := await queue.get()) is not None:
        if line.strip():
            yield line


def _read_stdin(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
    try:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line)
        loop.call_soon_threadsafe(queue.put_nowait, None)
    except RuntimeError:  # the loop closed first: dev mode is ending
        return


class _DevSession:
    """Sends each request through NATS to the node, one at a time, and prints each answer as one JSON line."""

    def __init__(self, code: UserCode, requests: list[str] | None) -> None:
        assert code.request_type is not None
        self._request_type: type[Message] = code.request_type
        self._request_name = code.request_name
        self._requests = requests
        self._answers: asyncio.Queue[bytes] = asyncio.Queue()
        self.failures = 0

    async def run(self, node: RunningNode) -> None:
        source = f"{len(self._requests)} --request" if self._requests else "stdin, one JSON line each"
        node.log.info("dev mode: answering requests", request_type=self._request_name, requests_from=source)
        self._client = node.broker.client
        await self.answer_all(_request_lines(self._requests))

    async def answer_all(self, lines: AsyncIterator[str]) -> None:
        inbox = self._client.new_inbox()
        await self._client.subscribe(inbox, cb=self._on_answer)
        async for line in lines:
            try:
                request = _parse_request(line, self._request_type)
            except InvalidRequestError as exc:
                self._print({"error": str(exc)})
                continue
            self._print(await self._ask(request, inbox))

    async def _on_answer(self, msg: Any) -> None:
        self._answers.put_nowait(msg.data)

    async def _ask(self, request: Message, inbox: str) -> dict[str, Any]:
        envelope = KreNatsMessage(tracking_id=str(uuid.uuid4()))
        envelope.payload.Pack(request)
        await self._client.publish(DEV_INPUT, envelope.SerializeToString(), reply=inbox)
        answer = decode(await self._answers.get(), max_decompressed=_DEV_MAX_ANSWER_BYTES)
        if answer.error:
            return {"error": answer.error}
        return _payload_dict(answer.payload)

    def _print(self, answer: dict[str, Any]) -> None:
        if "error" in answer:
            self.failures += 1
        print(json.dumps(answer, ensure_ascii=False), flush=True)


def _parse_request(line: str, request_type: type[Message]) -> Message:
    try:
        return json_format.Parse(line, request_type())
    except json_format.ParseError as exc:
        reason = " ".join(str(exc).split())  # json_format's messages span lines
        raise InvalidRequestError(f"request is not a {request_type.DESCRIPTOR.full_name} in JSON: {reason}") from None


def _payload_dict(payload: AnyMessage) -> dict[str, Any]:
    """The answer's fields, every one shown, with the names of the .proto file."""
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(payload.TypeName())
    except KeyError:  # a type no module of this process imported: show it undecoded
        return {"@type": payload.type_url, "value": base64.b64encode(payload.value).decode()}
    message = message_factory.GetMessageClass(descriptor)()
    payload.Unpack(message)
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
