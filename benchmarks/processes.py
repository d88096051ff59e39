"""Process helpers for the benchmark: start nodes and servers, read CPU and memory from /proc."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from krt_runner.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def memory_kb(pid: int, key: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of a process, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


@dataclass
class NodeProc:
    """One node process (krt-runner or the floor) with its output kept."""

    name: str
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip())

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any("node ready" in line for line in self.lines):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} not ready:\n" + "\n".join(self.lines[-20:]))

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def start_node(
    kind: str, *, url: str, name: str, subject_in: str, subject_out: str, handler: str, env: dict[str, str]
) -> NodeProc:
    """``kind`` is ``krt`` (krt-runner run) or ``floor`` (benchmarks/floor_node.py)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KRT_")}
    full_env["PYTHONPATH"] = str(ROOT / "examples" / "greeter" / "src")
    if kind == "floor":
        args = [sys.executable, str(BENCH / "floor_node.py"), url, subject_in, subject_out, name]
    else:
        args = [sys.executable, "-m", "krt_runner", "run"]
        full_env.update(
            KRT_NATS_SERVER=url, KRT_NATS_INPUT=subject_in, KRT_NATS_OUTPUT=subject_out, KRT_BASE_PATH=str(BENCH),
            KRT_HANDLER_PATH=handler, KRT_NODE_NAME=name, KRT_WORKFLOW_NAME="bench", KRT_VERSION="bench-v1",
            KRT_LOG_FORMAT="json",
        )
        full_env.update(env)
    process = subprocess.Popen(args, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return NodeProc(name, process)


class VictoriaMetrics:
    """Debian's victoria-metrics on a free loopback port: the InfluxDB-protocol store the tests use."""

    def __init__(self) -> None:
        binary = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"
        if not Path(binary).is_file():
            raise RuntimeError("victoria-metrics not installed: run scripts/install_test_servers.sh")
        self.port = free_port()
        self._data = tempfile.TemporaryDirectory(prefix="bench-vm-")
        self.process = subprocess.Popen(
            [binary, f"-httpListenAddr=127.0.0.1:{self.port}", f"-storageDataPath={self._data.name}",
             "-loggerLevel=ERROR"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self._wait_healthy()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("victoria-metrics did not become healthy")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._data.cleanup()


def machine() -> dict[str, str]:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        "unknown",
    )
    return {"cpu": model, "cores": str(os.cpu_count()), "python": sys.version.split()[0], "host": socket.gethostname()}
