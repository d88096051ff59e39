"""Checks across settings a node reads (each alone is valid): what :func:`krt_runner.config.load_settings` adds to
the problems it lists."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from krt_runner import setting_values as parse
from krt_runner._user_files import split_class_name


def handler_file_problems(values: Mapping[str, Any]) -> list[str]:
    """A handler file that is not there, said with the other settings' problems rather than after them."""
    handler = split_class_name(values.get("handler_path") or "")[0]
    if not (handler.endswith(".py") or "/" in handler):
        return []  # a dotted module name: found by importing it (as krt_runner.node.loading tells them apart)
    path = Path(values.get("base_path") or Path.cwd()) / handler
    return [] if path.is_file() else [f"KRT_HANDLER_PATH (--handler) {handler!r}: no file at {path}"]


def batch_problems(values: Mapping[str, Any]) -> list[str]:
    size, concurrency = values.get("batch_max_size"), values.get("concurrency") or 1
    if size and (concurrency + 1) * size > parse.MAX_REQUESTS_HELD:
        return [f"KRT_BATCH_MAX_SIZE x (KRT_CONCURRENCY + 1) = {size} x {concurrency + 1} requests held at once: "
                f"over {parse.MAX_REQUESTS_HELD}; lower one of them"]
    return []
