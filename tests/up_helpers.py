"""`krt-runner up` as a background process, and a check that it left no process behind."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from pathlib import Path

from conftest import KRT_RUNNER, READY_TIMEOUT

from krt_runner.local_krt.embedded import stop_process


def with_free_grpc_port(args: tuple[str, ...]) -> list[str]:
    """Tests run side by side: an up that starts the gRPC entrypoint takes a free port, never 9000."""
    if any(arg in args for arg in ("--request", "--grpc-port", "--no-entrypoint")):
        return list(args)
    return [*args, "--grpc-port", "0"]


class UpRun:
    """A background `krt-runner up` with stdout and stderr collected line by line."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.marker = uuid.uuid4().hex
        self.process = subprocess.Popen(
            [*KRT_RUNNER, "up", *with_free_grpc_port(args)],
            cwd=cwd,
            env=up_env(self.marker),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, self.err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def wait_for_line(self, prefix: str) -> str:
        """The first stdout line that starts with ``prefix`` (stripped), once up has printed it."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            for line in self.out:
                if line.strip().startswith(prefix):
                    return line.strip()
            assert self.process.poll() is None, "\n".join(self.err)
            time.sleep(0.05)
        raise AssertionError(f"no line starting {prefix!r}:\n" + "\n".join(self.err))

    def wait_for_call_line(self) -> str:
        return self.wait_for_line("krt-runner call")

    def wait(self, timeout: float = 60) -> int:
        code = self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=5)
        return code

    def stop(self) -> None:
        stop_process(self.process, timeout=60)  # SIGTERM: up stops what it started


def up_env(marker: str) -> dict[str, str]:
    """The test's environment without KRT_* settings, plus a marker every process `up` starts inherits."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("KRT_")}
    return {**env, "UP_TEST_MARKER": marker}


def run_up(*args: str, cwd: Path, marker: str, **env: str) -> subprocess.CompletedProcess[str]:
    command = [*KRT_RUNNER, "up", *with_free_grpc_port(args)]
    return subprocess.run(command, cwd=cwd, env={**up_env(marker), **env}, capture_output=True, text=True,
                          timeout=90)


def leftovers(marker: str) -> list[str]:
    """Processes still running with the marker: whatever `up` started and did not stop."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if f"UP_TEST_MARKER={marker}\0".encode() in (proc / "environ").read_bytes():
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:  # gone, or not ours
            continue
    return found
