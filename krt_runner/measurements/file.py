"""The line-protocol file: where points go when no InfluxDB is set (``influx write --file`` imports it)."""

from __future__ import annotations

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
        try:
            with self.path.open("a", encoding="utf-8") as out:
                out.write("\n".join(lines) + "\n")
        except OSError as exc:  # a full or read-only disk may recover: retried
            raise WriteError(f"cannot append to {self.path}: {exc.strerror or exc}", retry=True) from None

    def close(self) -> None:
        pass
