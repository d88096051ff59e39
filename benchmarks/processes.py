"""Process helpers for the benchmark: start nodes and servers, read CPU and memory from /proc.

Imported by run.py, which puts tests/ on sys.path for ``influx_server`` (the tests' VictoriaMetrics).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from influx_server import VictoriaMetrics, victoria_metrics_binary

from krt_runner.local_krt.embedded import stop_process

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    return _stat_cpu(Path(f"/proc/{pid}/stat"))


def main_thread_cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process's main thread (a node's event loop): the rest of
    :func:`cpu_seconds` is its other threads' (a krt-runner node's measurement writer, with an async handler)."""
    return _stat_cpu(Path(f"/proc/{pid}/task/{pid}/stat"))


def _stat_cpu(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
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

    def wait_ready(self, timeout: float = 30, marker: str = "node ready") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(marker in line for line in self.lines):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} not ready:\n" + "\n".join(self.lines[-20:]))

    def stop(self) -> int:
        return stop_process(self.process, timeout=30)


def start_node(
    kind: str, *, url: str, name: str, subject_in: str, subject_out: str, handler: str, env: dict[str, str],
    prefix: Sequence[str] = (),
) -> NodeProc:
    """``kind`` is ``krt`` (krt-runner run) or ``floor`` (benchmarks/floor_node.py); ``prefix``, a command to run it
    under (valgrind's, say)."""
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
    process = subprocess.Popen([*prefix, *args], env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    return NodeProc(name, process)


def start_victoria_metrics() -> VictoriaMetrics:
    """The InfluxDB-protocol store the measurement tests use (Debian's victoria-metrics), on a free port."""
    binary = victoria_metrics_binary()
    if binary is None:
        raise RuntimeError("victoria-metrics not installed: run scripts/install_test_servers.sh")
    return VictoriaMetrics(binary).start()


def start_store() -> VictoriaMetrics | None:
    """victoria-metrics for the krt-runner nodes' measurements; ``None`` where it is not installed (they go to a
    line-protocol file then)."""
    try:
        return start_victoria_metrics()
    except RuntimeError as exc:
        print(f"measurements go to a file: {exc}", file=sys.stderr)
        return None


def machine() -> dict[str, str]:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        "unknown",
    )
    return {"cpu": model, "cores": str(os.cpu_count()), "python": sys.version.split()[0], "host": socket.gethostname()}
