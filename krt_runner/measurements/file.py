"""The line-protocol file: where points go when no InfluxDB is set (``influx write --file`` imports it)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from krt_runner.errors import WriteError


class FileDestination:
    """Appends batches to a file that ``influx write --file`` imports (precision ns)."""

    description = "a line-protocol file"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.details: dict[str, Any] = {"path": str(path)}

    def write(self, lines: list[str]) -> None:
        """Append the batch whole, or not at all: a batch that did not fit (a full disk) is cut off again, so that
        its retry leaves neither a torn line nor a second copy of its first points."""
        data = memoryview(("\n".join(lines) + "\n").encode("utf-8"))
        try:
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise WriteError(f"cannot append to {self.path}: {exc.strerror or exc}", retry=True) from None
        try:
            size = os.lseek(descriptor, 0, os.SEEK_END)
            try:
                while data:
                    data = data[os.write(descriptor, data):]
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(descriptor, size)
                raise
        except OSError as exc:  # a full or read-only disk may recover: retried
            raise WriteError(f"cannot append to {self.path}: {exc.strerror or exc}", retry=True) from None
        finally:
            os.close(descriptor)

    def close(self) -> None:
        pass
