"""The entrypoint's settings: the NATS connection rows of a node's, plus its own (port, host, request timeout).

Read as a node reads its own (:func:`krt_runner.config.read_options`): a ``KRT_*`` variable or a flag each,
every problem reported at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from krt_runner import setting_values as parse
from krt_runner.config import OPTIONS, Option, SharedSettings, connection_problems, read_options
from krt_runner.url_parts import redact_url

# The rows a node has that mean the same here: where NATS is, how to log in to it, logging, health, and how far a
# gzip message (an answer, here) may inflate.
_SHARED_FIELDS = (*(field.name for field in dataclasses.fields(SharedSettings)), "max_decompressed_bytes")
DEFAULT_PORT = 9000

ENTRYPOINT_OPTIONS: tuple[Option, ...] = (
    *(option for option in OPTIONS if option.field in _SHARED_FIELDS),
    Option("port", "KRT_ENTRYPOINT_PORT", "--port", parse.port, default=DEFAULT_PORT,
           help="gRPC port (KRE v1's was 9000); 0 picks a free one, logged in 'entrypoint ready'"),
    Option("host", "KRT_ENTRYPOINT_HOST", "--host", parse.text, default="0.0.0.0",
           help="address the gRPC server listens on"),
    Option("request_timeout", "KRT_REQUEST_TIMEOUT", "--request-timeout", parse.positive_float, default=30.0,
           help="seconds a call waits for the workflow's answer (a shorter client deadline wins)"),
    Option("version", "KRT_VERSION", "--version-name", parse.text, default="",
           help="KRT version name in the workflows' subjects (default: krt.yml's version)"),
    Option("subjects_file", "KRT_NATS_SUBJECTS_FILE", "--subjects-file", parse.existing_file, default=None,
           help="JSON map of rpc name to NATS subject, as KRE v1 mounted it (default: <version>-<rpc>-entrypoint)"),
    Option("drain_timeout", "KRT_DRAIN_TIMEOUT", "--drain-timeout", parse.positive_float, default=30.0,
           help="seconds a stopping entrypoint waits for calls in flight before it cancels them"),
    Option("delivery", "KRT_DELIVERY", "--delivery", parse.choice(parse.DELIVERY_MODES), default=parse.AT_MOST_ONCE,
           help="at-least-once: each call is published through JetStream, for workflows whose nodes run in that "
                "mode (a second answer to a call is ignored)"),
)  # fmt: skip


@dataclass(frozen=True)
class EntrypointSettings(SharedSettings):
    """Everything ``krt-runner entrypoint`` reads; also what its NATS connection reads (``ConnectionSettings``)."""

    port: int
    host: str
    request_timeout: float
    version: str
    subjects_file: Path | None
    drain_timeout: float
    delivery: str
    max_decompressed_bytes: int  # of a gzip answer, inflated
    node_name: str = "entrypoint"  # the NATS connection's name: krt-runner:entrypoint
    pending_msgs_limit: int = 65536  # of the one inbox subscription that takes every answer
    pending_bytes_limit: int = 64 * 1024 * 1024

    def describe(self, *, changed_only: bool = False) -> dict[str, Any]:
        """Log-safe (no secrets, URLs without passwords); with ``changed_only``, only what differs from defaults."""
        shown: dict[str, Any] = {}
        for option in ENTRYPOINT_OPTIONS:
            value = getattr(self, option.field)
            if option.secret or (changed_only and value == option.default and option.field != "nats_servers"):
                continue
            shown[option.field] = str(value) if isinstance(value, Path) else value
        shown["nats_servers"] = ",".join(redact_url(url) for url in self.nats_servers)
        return shown


def load_entrypoint_settings(
    env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> EntrypointSettings:
    """Settings from ``env`` (default ``os.environ``) and flag ``overrides``; ``ConfigError`` lists every problem."""
    return EntrypointSettings(**read_options(ENTRYPOINT_OPTIONS, env, overrides, cross_checks=connection_problems))
