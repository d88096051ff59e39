"""Settings: read once from ``KRT_*`` variables and ``krt-runner run`` flags.

Every setting is one row of :data:`OPTIONS`, so the environment variable, the
flag, the parser, the default and the README table cannot drift apart. All
problems are collected and reported at once (:class:`ConfigError`). Secrets are
kept out of ``repr`` and out of :meth:`Settings.describe`, which is what the
runner logs.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from krt_runner.errors import ConfigError

NATS_SCHEMES = ("nats", "tls", "ws", "wss")
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")
_SUBJECT_RE = re.compile(r"^[^\s*>]+(\.[^\s*>]+)*$")
_INPUT_SUBJECT_RE = re.compile(r"^[^\s]+$")


def _text(raw: str) -> str:
    return raw.strip()


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("must be a whole number of at least 1")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("must be a number of seconds above 0")
    return value


def _optional_seconds(raw: str) -> float | None:
    """``0`` switches a timeout off."""
    value = float(raw)
    if value < 0:
        raise ValueError("must be 0 (off) or a number of seconds above 0")
    return value or None


def _flag(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return parse


def _nats_servers(raw: str) -> tuple[str, ...]:
    servers = tuple(_nats_url(part.strip()) for part in raw.split(",") if part.strip())
    if not servers:
        raise ValueError("must name at least one server, e.g. nats://127.0.0.1:4222")
    return servers


def _nats_url(raw: str) -> str:
    # KRE v1 deployments set KRT_NATS_SERVER=host:port with no scheme.
    url = raw if "://" in raw else f"nats://{raw}"
    parts = urlsplit(url)
    if parts.scheme not in NATS_SCHEMES or not parts.hostname:
        raise ValueError(f"{redact_url(raw)!r} is not a NATS URL such as nats://host:4222")
    _ = parts.port  # raises ValueError on a non-numeric port
    return url


def _subject(raw: str) -> str:
    value = raw.strip()
    if value and not _SUBJECT_RE.match(value):
        raise ValueError(f"{value!r} is not a NATS subject one can publish to")
    return value


def _input_subject(raw: str) -> str:
    value = raw.strip()
    if not _INPUT_SUBJECT_RE.match(value):
        raise ValueError(f"{value!r} is not a NATS subject")
    return value


def _http_url(raw: str) -> str:
    value = raw.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{redact_url(value)!r} is not an http(s) URL such as http://influxdb:8086")
    _ = parts.port  # raises ValueError on a non-numeric port
    return value.rstrip("/")


def _file_to_write(raw: str) -> str:
    path = Path(raw.strip()).expanduser()
    if not path.parent.is_dir():
        raise ValueError(f"{raw!r} is not in an existing directory")
    return str(path)


def _existing_dir(raw: str) -> Path:
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise ValueError(f"{raw!r} is not a directory")
    return path.resolve()


def _existing_file(raw: str) -> Path:
    path = Path(raw).expanduser()
    if not path.is_file():
        raise ValueError(f"{raw!r} is not a readable file")
    return path.resolve()


def redact_url(url: str) -> str:
    """``nats://user:secret@host`` -> ``nats://user:***@host``; a token alone becomes ``***``."""
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    if not parts.password and not parts.username:
        return url
    user = parts.username or ""
    hidden = f"{user}:***" if parts.password is not None else "***"
    return url.replace(parts.netloc, f"{hidden}@{parts.netloc.rsplit('@', 1)[1]}", 1)


@dataclass(frozen=True)
class Option:
    """One setting: its field on :class:`Settings`, its variable, its flag and its parser."""

    field: str
    env: str
    flag: str
    parse: Callable[[str], Any]
    default: Any = None
    required: bool = False
    secret: bool = False
    help: str = ""


OPTIONS: tuple[Option, ...] = (
    Option("nats_servers", "KRT_NATS_SERVER", "--nats", _nats_servers, required=True,
           help="NATS URL(s), comma-separated; host:port is read as nats://host:port"),
    Option("input_subject", "KRT_NATS_INPUT", "--input", _input_subject, required=True,
           help="subject this node subscribes to (queue group queue_<subject>)"),
    Option("output_subject", "KRT_NATS_OUTPUT", "--output", _subject, default="",
           help="subject of the next node; empty on the last node, which answers the requester"),
    Option("base_path", "KRT_BASE_PATH", "--base-path", _existing_dir, default=None,
           help="the node's files; ctx.path() and a relative handler path join onto it (default: cwd)"),
    Option("handler_path", "KRT_HANDLER_PATH", "--handler", _text, required=True,
           help="handler file relative to the base path (src/node.py) or a dotted module name"),
    Option("node_name", "KRT_NODE_NAME", "--node-name", _text, default="",
           help="node name in tracking, logs and measurements (default: the handler's name)"),
    Option("workflow_name", "KRT_WORKFLOW_NAME", "--workflow-name", _text, default="",
           help="workflow name in logs and measurements"),
    Option("version", "KRT_VERSION", "--version-name", _text, default="",
           help="KRT version name in logs and measurement tags"),
    Option("version_id", "KRT_VERSION_ID", "--version-id", _text, default="",
           help="KRT version id in logs"),
    Option("concurrency", "KRT_CONCURRENCY", "--concurrency", _positive_int, default=1,
           help="messages handled at once by this process (1 keeps KRE v1's in-order handling)"),
    Option("handler_timeout", "KRT_HANDLER_TIMEOUT", "--handler-timeout", _optional_seconds, default=None,
           help="seconds a handler may run before the request gets an error answer; 0 = no limit"),
    Option("max_decompressed_bytes", "KRT_MAX_DECOMPRESSED_BYTES", "--max-decompressed-bytes",
           _positive_int, default=64 * 1024 * 1024,
           help="cap on a gzip-compressed message's decompressed size"),
    Option("drain_timeout", "KRT_DRAIN_TIMEOUT", "--drain-timeout", _positive_float, default=30.0,
           help="seconds a stopping node waits for in-flight messages before it gives up"),
    Option("pending_msgs_limit", "KRT_PENDING_MSGS_LIMIT", "--pending-msgs-limit", _positive_int,
           default=65536, help="messages buffered client-side before NATS counts them as slow-consumer drops"),
    Option("pending_bytes_limit", "KRT_PENDING_BYTES_LIMIT", "--pending-bytes-limit", _positive_int,
           default=64 * 1024 * 1024, help="bytes buffered client-side before slow-consumer drops"),
    Option("reconnect_wait", "KRT_NATS_RECONNECT_WAIT", "--reconnect-wait", _positive_float, default=2.0,
           help="seconds between reconnect attempts (attempts never stop)"),
    Option("nats_user", "KRT_NATS_USER", "--nats-user", _text, default=None, help="NATS user name"),
    Option("nats_password", "KRT_NATS_PASSWORD", "--nats-password", _text, default=None, secret=True,
           help="NATS password"),
    Option("nats_token", "KRT_NATS_TOKEN", "--nats-token", _text, default=None, secret=True,
           help="NATS authentication token"),
    Option("nats_nkey_seed", "KRT_NATS_NKEY_SEED", "--nats-nkey-seed", _existing_file, default=None,
           help="file holding an NKey seed"),
    Option("nats_creds", "KRT_NATS_CREDS", "--nats-creds", _existing_file, default=None,
           help="NATS credentials (.creds) file"),
    Option("nats_tls_ca", "KRT_NATS_TLS_CA", "--nats-tls-ca", _existing_file, default=None,
           help="CA certificate file that signs the server's certificate"),
    Option("nats_tls_cert", "KRT_NATS_TLS_CERT", "--nats-tls-cert", _existing_file, default=None,
           help="client certificate file for mutual TLS"),
    Option("nats_tls_key", "KRT_NATS_TLS_KEY", "--nats-tls-key", _existing_file, default=None,
           help="client private key file for mutual TLS"),
    Option("influx_uri", "KRT_INFLUX_URI", "--influx", _http_url, default="",
           help="InfluxDB URL (v2 write API); empty: points go to the measurements file"),
    Option("influx_token", "KRT_INFLUX_TOKEN", "--influx-token", _text, default="", secret=True,
           help="InfluxDB API token (user:password for the 1.8 compatibility API)"),
    Option("influx_org", "KRT_INFLUX_ORG", "--influx-org", _text, default="kre", help="InfluxDB organisation"),
    Option("influx_bucket", "KRT_INFLUX_BUCKET", "--influx-bucket", _text, default="kre",
           help="InfluxDB bucket (database/retention policy on 1.8)"),
    Option("influx_batch_size", "KRT_INFLUX_BATCH_SIZE", "--influx-batch-size", _positive_int, default=5000,
           help="points per write request (5000 is InfluxDB's advice)"),
    Option("influx_flush_interval", "KRT_INFLUX_FLUSH_INTERVAL", "--influx-flush-interval", _positive_float,
           default=1.0, help="seconds between writes of a partial batch"),
    Option("influx_max_buffered_points", "KRT_INFLUX_MAX_BUFFERED_POINTS", "--influx-max-buffered-points",
           _positive_int, default=100_000,
           help="cap on points held in memory while writes fail; when full the oldest are dropped and counted"),
    Option("influx_timeout", "KRT_INFLUX_TIMEOUT", "--influx-timeout", _positive_float, default=5.0,
           help="seconds one write request may take before it counts as failed and is retried"),
    Option("influx_shutdown_timeout", "KRT_INFLUX_SHUTDOWN_TIMEOUT", "--influx-shutdown-timeout", _positive_float,
           default=5.0, help="seconds a stopping node spends writing buffered points; what is left is dropped"),
    Option("measurements_file", "KRT_MEASUREMENTS_FILE", "--measurements-file", _file_to_write, default="",
           help="line-protocol file used when KRT_INFLUX_URI is empty (default: measurements.lp in the cwd)"),
    Option("measurements_enabled", "KRT_MEASUREMENTS_ENABLED", "--measurements-enabled", _flag, default=True,
           help="false turns every measurement off"),
    Option("log_format", "KRT_LOG_FORMAT", "--log-format", _choice(LOG_FORMATS), default="auto",
           help="auto: JSON lines unless stderr is a terminal"),
    Option("log_level", "KRT_LOG_LEVEL", "--log-level", _choice(LOG_LEVELS), default="info",
           help="debug shows one line per message"),
    Option("health_file", "KRT_HEALTH_FILE", "--health-file", _text, default="",
           help="file the node keeps fresh while connected and subscribed (for exec probes)"),
    Option("idle_timeout", "KRT_IDLE_TIMEOUT", "--idle-timeout", _optional_seconds, default=None,
           help="seconds without a message after which the node drains and exits 0 (scale to zero); 0 = off"),
)


@dataclass(frozen=True)
class Settings:
    """Everything a node needs to run; built by :func:`load_settings`."""

    nats_servers: tuple[str, ...]
    input_subject: str
    handler_path: str
    output_subject: str = ""
    base_path: Path = dataclasses.field(default_factory=Path.cwd)
    node_name: str = ""
    workflow_name: str = ""
    version: str = ""
    version_id: str = ""
    concurrency: int = 1
    handler_timeout: float | None = None
    max_decompressed_bytes: int = 64 * 1024 * 1024
    drain_timeout: float = 30.0
    pending_msgs_limit: int = 65536
    pending_bytes_limit: int = 64 * 1024 * 1024
    reconnect_wait: float = 2.0
    nats_user: str | None = dataclasses.field(default=None, repr=False)
    nats_password: str | None = dataclasses.field(default=None, repr=False)
    nats_token: str | None = dataclasses.field(default=None, repr=False)
    nats_nkey_seed: Path | None = None
    nats_creds: Path | None = None
    nats_tls_ca: Path | None = None
    nats_tls_cert: Path | None = None
    nats_tls_key: Path | None = None
    influx_uri: str = ""
    influx_token: str = dataclasses.field(default="", repr=False)
    influx_org: str = "kre"
    influx_bucket: str = "kre"
    influx_batch_size: int = 5000
    influx_flush_interval: float = 1.0
    influx_max_buffered_points: int = 100_000
    influx_timeout: float = 5.0
    influx_shutdown_timeout: float = 5.0
    measurements_file: str = ""
    measurements_enabled: bool = True
    log_format: str = "auto"
    log_level: str = "info"
    health_file: str = ""
    idle_timeout: float | None = None

    @property
    def is_last_node(self) -> bool:
        return not self.output_subject

    def describe(self) -> dict[str, Any]:
        """The settings as a log-safe dict: secrets shown as ``***``, URLs without passwords."""
        shown: dict[str, Any] = {}
        for option in OPTIONS:
            value = getattr(self, option.field)
            if option.secret and value:
                value = "***"
            elif option.field == "nats_servers":
                value = ",".join(redact_url(url) for url in value)
            elif option.field == "influx_uri" and value:
                value = redact_url(value)
            shown[option.field] = str(value) if isinstance(value, Path) else value
        return shown


def load_settings(env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> Settings:
    """Build :class:`Settings` from ``env`` (default ``os.environ``) and flag ``overrides``.

    ``overrides`` maps field names to raw strings; ``None`` means "not given".
    Raises :class:`ConfigError` listing every problem.
    """
    env = os.environ if env is None else env
    overrides = overrides or {}
    values: dict[str, Any] = {}
    problems: list[str] = []
    for option in OPTIONS:
        raw = overrides.get(option.field)
        if raw is None:
            raw = env.get(option.env)
        _read_option(option, raw, values, problems)
    problems.extend(_cross_checks(values))
    if problems:
        raise ConfigError(problems)
    return Settings(**{key: value for key, value in values.items() if value is not None})


def _read_option(option: Option, raw: str | None, values: dict[str, Any], problems: list[str]) -> None:
    where = f"{option.env} ({option.flag})"
    if raw is None or not str(raw).strip():
        if option.required:
            problems.append(f"{where} is required: {option.help}")
        values[option.field] = option.default
        return
    try:
        values[option.field] = option.parse(str(raw))
    except ValueError as exc:
        shown = "***" if option.secret else repr(_redact_urls(str(raw)))
        problems.append(f"{where}={shown} is invalid: {_reason(exc)}")


def _redact_urls(raw: str) -> str:
    """Any comma-separated part with credentials in it loses them."""
    return ",".join(redact_url(part) if "@" in part else part for part in raw.split(","))


def _reason(exc: ValueError) -> str:
    text = str(exc)
    # int()/float() say "invalid literal for int() with base 10: 'x'"
    if text.startswith(("invalid literal", "could not convert")):
        return "must be a number"
    return text


def _cross_checks(values: Mapping[str, Any]) -> list[str]:
    problems = []
    if bool(values.get("nats_tls_cert")) != bool(values.get("nats_tls_key")):
        problems.append("KRT_NATS_TLS_CERT and KRT_NATS_TLS_KEY go together: set both for mutual TLS, or neither")
    if values.get("nats_password") and not values.get("nats_user"):
        problems.append("KRT_NATS_PASSWORD needs KRT_NATS_USER")
    if values.get("output_subject") and values.get("output_subject") == values.get("input_subject"):
        problems.append("KRT_NATS_OUTPUT must differ from KRT_NATS_INPUT, or the node would answer itself")
    return problems
