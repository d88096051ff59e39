"""A real InfluxDB-write-compatible server for the measurement tests: VictoriaMetrics.

Debian's ``victoria-metrics`` package (``scripts/install_test_servers.sh``)
accepts InfluxDB's v2 write endpoint (``/api/v2/write``) and gives points back
through its export API. What comes back differs from InfluxDB in ways the tests
rely on knowingly:

- each field becomes its own series named ``<measurement>_<field>``, with the
  point's tags as labels (no ``db``/bucket label for v2 writes);
- numbers and booleans (1/0) keep their value; string fields are stored as 0,
  so a string field can be seen to exist but not read back;
- timestamps are kept in milliseconds.

A fixture starts the binary on a free 127.0.0.1 port with a temporary data
directory and stops it; the same object can be stopped and started again on
the same port and data, as the outage test does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import pytest

from krt_runner.local_krt.embedded import free_port, stop_process

BINARY_NAME = "victoria-metrics"
# A fresh server answers /health within a second or two; a busy 2-core machine gets more.
READY_TIMEOUT = 15.0
# How long a written point may take to show up in the export API.
VISIBLE_TIMEOUT = 10.0


def victoria_metrics_binary() -> str | None:
    found = shutil.which(BINARY_NAME)
    if found:
        return found
    packaged = Path("/usr/bin") / BINARY_NAME  # where Debian puts it, should PATH lack /usr/bin
    return str(packaged) if packaged.is_file() else None


def require_binary() -> str:
    """The binary's path; a loud skip where it is missing, a failure under CI=true."""
    binary = victoria_metrics_binary()
    if binary is not None:
        return binary
    reason = (
        "victoria-metrics is not installed, so the InfluxDB measurement tests cannot run: "
        "install it with `sh scripts/install_test_servers.sh` (Debian package victoria-metrics)"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason + " -- CI=true requires it")
    pytest.skip(reason)


@dataclass
class Series:
    """One exported series: ``name`` is ``<measurement>_<field>``, ``labels`` the point's tags."""

    name: str
    labels: dict[str, str]
    values: list[float]
    timestamps: list[int]  # milliseconds


class VictoriaMetrics:
    """A victoria-metrics process on 127.0.0.1; a context manager that always stops it."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self._data = tempfile.TemporaryDirectory(prefix="victoria-metrics-")
        self._log = Path(self._data.name) / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> VictoriaMetrics:
        args = [
            self.binary,
            f"-httpListenAddr=127.0.0.1:{self.port}",
            f"-storageDataPath={self._data.name}/storage",
            "-retentionPeriod=100y",
            "-loggerLevel=ERROR",
        ]
        with self._log.open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self._wait_healthy()
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"victoria-metrics exited with {self.process.returncode}: {self.log_text()}")
            try:
                if self._get("/health", timeout=1) == b"OK":
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"victoria-metrics not healthy on {self.url} within {READY_TIMEOUT}s: {self.log_text()}")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=15)  # SIGTERM: it flushes what it holds to disk first

    def close(self) -> None:
        self.stop()
        self._data.cleanup()

    def __enter__(self) -> VictoriaMetrics:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def log_text(self) -> str:
        return self._log.read_text(errors="replace")[-2000:] if self._log.exists() else ""

    # -- HTTP --------------------------------------------------------------------------------

    def _get(self, path: str, *, timeout: float = 5) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return bytes(response.read())

    def write(self, body: bytes, *, bucket: str = "kre", org: str = "kre") -> None:
        """POST line protocol to the v2 write endpoint, as ``influx write`` does."""
        query = urllib.parse.urlencode({"bucket": bucket, "org": org, "precision": "ns"})
        request = urllib.request.Request(f"{self.url}/api/v2/write?{query}", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 204, response.status

    def export(self, match: str = '{__name__=~".+"}') -> list[Series]:
        """Every stored sample of the series ``match`` selects (after flushing what is in memory)."""
        self._get("/internal/force_flush")
        query = urllib.parse.urlencode({"match[]": match})
        series = []
        for line in self._get(f"/api/v1/export?{query}").decode().splitlines():
            row = json.loads(line)
            labels = dict(row["metric"])
            series.append(Series(labels.pop("__name__"), labels, row["values"], row["timestamps"]))
        return series

    def samples(self, name: str, **labels: str) -> list[float]:
        """The values of every series called ``name`` whose labels include ``labels``."""
        return [
            value
            for series in self.export(f'{{__name__="{name}"}}')
            if labels.items() <= series.labels.items()
            for value in series.values
        ]

    def wait_for_samples(
        self, name: str, count: int, *, timeout: float = VISIBLE_TIMEOUT, **labels: str
    ) -> list[float]:
        """Poll until ``count`` samples of ``name`` are visible; fail naming what was there."""
        deadline = time.monotonic() + timeout
        values = self.samples(name, **labels)
        while len(values) < count and time.monotonic() < deadline:
            time.sleep(0.2)
            values = self.samples(name, **labels)
        assert len(values) >= count, f"{count} samples of {name}{labels} expected, got {values}: {self.names()}"
        return values

    def names(self) -> list[str]:
        return sorted({series.name for series in self.export()})

