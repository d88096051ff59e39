"""Shared fixtures: a real nats-server per test, node processes, a requester.

Everything a fixture starts, it stops. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import nats
import pytest
import pytest_asyncio
from google.protobuf.message import Message

from krt_runner.envelope import KreNatsMessage
from krt_runner.local_krt.embedded import EmbeddedNats, stop_process

ROOT = Path(__file__).resolve().parent.parent
GREETER_SRC = ROOT / "examples" / "greeter" / "src"
KRT_RUNNER = [sys.executable, "-m", "krt_runner"]
# How long a node may take from exec to "node ready" on a busy 2-core machine.
READY_TIMEOUT = 20.0

sys.path.insert(0, str(GREETER_SRC))
import greeter_pb2  # noqa: E402  (the example's generated module, shared by many tests)


@pytest.fixture
def nats_server() -> Iterator[EmbeddedNats]:
    """A fresh nats-server on a free loopback port."""
    with EmbeddedNats() as server:
        yield server


class NodeProcess:
    """A ``krt-runner run`` process whose output is collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, text: str, timeout: float = READY_TIMEOUT, count: int = 1) -> None:
        """Until ``count`` lines hold ``text``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(text in line for line in self.lines) >= count:
                return
            if self.process.poll() is not None:
                time.sleep(0.2)  # let the reader catch the last lines
                raise AssertionError(f"node exited with {self.process.returncode} before {text!r}:\n{self.output}")
            time.sleep(0.02)
        raise AssertionError(f"no {text!r} within {timeout}s:\n{self.output}")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def stop(self) -> None:
        stop_process(self.process, timeout=15)


NodeFactory = Callable[..., NodeProcess]


@pytest.fixture
def handler_dir(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write a handler module (dedented) into a fresh base path that also holds greeter_pb2."""

    def write(source: str, name: str = "node.py") -> Path:
        base = tmp_path / f"base-{uuid.uuid4().hex[:8]}"
        (base / "src").mkdir(parents=True)
        shutil.copy(GREETER_SRC / "greeter_pb2.py", base / "src" / "greeter_pb2.py")
        (base / "src" / name).write_text(textwrap.dedent(source))
        return base

    return write


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[NodeFactory]:
    """Start ``krt-runner run`` with KRT_* variables; waits for "node ready" unless ``wait=False``."""
    started: list[NodeProcess] = []

    def start(*, wait: bool = True, args: tuple[str, ...] = (), **env_vars: str) -> NodeProcess:
        env = {key: value for key, value in os.environ.items() if not key.startswith("KRT_")}
        env.update({"KRT_LOG_FORMAT": "json", "KRT_MEASUREMENTS_ENABLED": "false"})
        env.update(env_vars)
        node = NodeProcess([*KRT_RUNNER, "run", *args], env, cwd=tmp_path)
        started.append(node)
        if wait:
            node.wait_for_line('"node ready"')
        return node

    yield start
    for node in started:
        node.stop()


def node_env(
    server: EmbeddedNats, base: Path | str, handler: str, *, input: str, output: str = "", **extra: str
) -> dict:
    """KRE v1 variables for one node."""
    return {
        "KRT_NATS_SERVER": server.url,
        "KRT_NATS_INPUT": input,
        "KRT_NATS_OUTPUT": output,
        "KRT_BASE_PATH": str(base),
        "KRT_HANDLER_PATH": handler,
        "KRT_NODE_NAME": extra.pop("name", Path(handler).stem),
        "KRT_WORKFLOW_NAME": "test-workflow",
        "KRT_VERSION": "v1",
        "KRT_VERSION_ID": "v1-id",
        **extra,
    }


def request_envelope(message: Message, *, tracking_id: str | None = None) -> KreNatsMessage:
    """A request as a KRE v1 entrypoint sends it."""
    envelope = KreNatsMessage(tracking_id=tracking_id or uuid.uuid4().hex)
    envelope.tracking.add(node_name="entrypoint", start="2026-01-02T03:04:05.000001", end="2026-01-02T03:04:05.000002")
    envelope.payload.Pack(message)
    return envelope


def unpack(answer: KreNatsMessage, message_type: type[Message]) -> Message:
    result = message_type()
    assert answer.payload.Unpack(result), f"payload is {answer.payload.type_url}, error={answer.error!r}"
    return result


async def synced(nc: nats.NATS) -> None:
    """Until the server has read every command this nats-py connection queued (a SUB, an UNSUB, a PUB).

    nats-py's ``flush()`` writes its PING straight to the socket, ahead of the commands still queued for its
    flusher, so its PONG can come back before the server saw them (a message published by another connection
    right after it could then find no subscription). The flusher writes them while the first PONG is awaited; the
    second PING goes out after them.
    """
    await nc.flush()
    await nc.flush()


async def until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    """Until ``condition()`` holds; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


class Requester:
    """A NATS client that sends KreNatsMessage requests and decodes the answers."""

    def __init__(self, nc: nats.NATS) -> None:
        self.nc = nc

    async def request_raw(self, subject: str, data: bytes, timeout: float = 10) -> KreNatsMessage:
        reply = await self.nc.request(subject, data, timeout=timeout)
        from krt_runner.envelope import decode

        return decode(reply.data, max_decompressed=256 * 1024 * 1024)

    async def request(self, subject: str, message: Message, timeout: float = 10) -> KreNatsMessage:
        return await self.request_raw(subject, request_envelope(message).SerializeToString(), timeout)

    async def greet(self, subject: str, name: str, timeout: float = 10) -> KreNatsMessage:
        return await self.request(subject, greeter_pb2.Request(name=name), timeout)


@pytest_asyncio.fixture
async def requester(nats_server: EmbeddedNats) -> AsyncIterator[Requester]:
    nc = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    yield Requester(nc)
    await nc.close()


from influx_server import VictoriaMetrics, require_binary  # noqa: E402  (the measurement tests' server)


@pytest.fixture
def influx_server() -> Iterator[VictoriaMetrics]:
    """A VictoriaMetrics (InfluxDB v2 write API) on a free loopback port with a temporary data directory.

    Skips loudly where the binary is missing, fails instead under CI=true.
    """
    with VictoriaMetrics(require_binary()) as server:
        yield server
