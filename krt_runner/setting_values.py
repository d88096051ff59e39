"""Parsers of setting values: each takes the raw text of a ``KRT_*`` variable or flag and returns the value, or
raises ``ValueError`` with what is wrong."""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from krt_runner.subjects import MAX_PUBLISH_SUBJECT
from krt_runner.url_parts import redact_url, url_credentials, user_part

NATS_SCHEMES = ("nats", "tls", "ws", "wss")
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")
AT_MOST_ONCE, AT_LEAST_ONCE = "at-most-once", "at-least-once"
DELIVERY_MODES = (AT_MOST_ONCE, AT_LEAST_ONCE)
# Subjects are dot-separated tokens, none empty; one published to has no wildcards (* or >) at all.
_SUBJECT_RE = re.compile(r"^[^\s*>.]+(\.[^\s*>.]+)*$")
_WHITESPACE = re.compile(r"\s")
# At-least-once limits (KRT_JETSTREAM_ACK_WAIT, KRT_JETSTREAM_MAX_DELIVER): see ack_wait().
MIN_ACK_WAIT, MAX_ACK_WAIT = 0.1, 86_400.0
MIN_FLUSH_INTERVAL = 0.01
MAX_DELIVER = 10_000
MAX_STREAM_REPLICAS = 5  # JetStream keeps at most 5 copies of a stream
# KRT_CONCURRENCY and KRT_BATCH_MAX_SIZE: a worker task each (a batch node: per request it may hold), made at start.
MAX_CONCURRENCY = 10_000
MAX_REQUESTS_HELD = 100_000
MAX_REPLICAS = 2**31 - 1  # Kubernetes' 32-bit fields: a Deployment's replicas, KEDA's maxReplicaCount
MAX_SECONDS = 31_536_000.0  # a year: any wait or timeout longer is a mistake, and the platform's clocks overflow


def text(raw: str) -> str:
    return raw.strip()


def header_text(raw: str) -> str:
    """Text sent in an HTTP header (a token): one line of Latin-1, in words that show none of it."""
    value = raw.strip()
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        raise ValueError("has a line break or another control character inside it: an HTTP header cannot carry it "
                         "(was it wrapped when pasted?)")
    if any(ord(char) > 0xFF for char in value):
        raise ValueError("has a character an HTTP header cannot carry (outside Latin-1)")
    return value


def positive_int(raw: str) -> int:
    return _whole_number(raw, 1, None)


def concurrency(raw: str) -> int:
    return _whole_number(raw, 1, MAX_CONCURRENCY)


def positive_float(raw: str) -> float:
    value = _finite(raw)
    if not 0 < value <= MAX_SECONDS:
        raise ValueError(f"must be a number of seconds above 0 and at most {MAX_SECONDS:.0f} (a year)")
    return value


def flush_interval(raw: str) -> float:
    """Seconds between writes of a partial batch: from 10 ms (an idle writer waking more often only spins)."""
    value = positive_float(raw)
    if value < MIN_FLUSH_INTERVAL:
        raise ValueError(f"must be a number of seconds from {MIN_FLUSH_INTERVAL:g} to {MAX_SECONDS:.0f} (a year)")
    return value


def milliseconds(raw: str) -> float:
    """A wait in milliseconds; ``0`` means no wait."""
    value = _finite(raw)
    if not value >= 0:
        raise ValueError("must be 0 or a number of milliseconds above 0")
    return value


def ack_wait(raw: str) -> float:
    """JetStream's ack wait: long enough for a node's in-progress notices (every half of it) to arrive in time,
    short enough for JetStream's durations (its duplicate window is several times it)."""
    value = _finite(raw)
    if not MIN_ACK_WAIT <= value <= MAX_ACK_WAIT:
        raise ValueError(f"must be a number of seconds from {MIN_ACK_WAIT:g} to {MAX_ACK_WAIT:g}")
    return value


def max_deliver(raw: str) -> int:
    return _whole_number(raw, 1, MAX_DELIVER)


def replica_count(raw: str) -> int:
    return _whole_number(raw, 1, MAX_REPLICAS)


def stream_replicas(raw: str) -> int:
    return _whole_number(raw, 1, MAX_STREAM_REPLICAS)


def port(raw: str) -> int:
    """A TCP port to listen on: 0 to 65535, 0 meaning a free one."""
    value = int(raw) if _WHOLE.fullmatch(raw) else -1
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number from 0 to 65535 (0: any free port)")
    return value


def optional_seconds(raw: str) -> float | None:
    """``0`` switches a timeout off."""
    value = _finite(raw)
    if not 0 <= value <= MAX_SECONDS:
        raise ValueError(f"must be 0 (off) or a number of seconds above 0 and at most {MAX_SECONDS:.0f} (a year)")
    return value or None


def flag(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return parse


def nats_servers(raw: str) -> tuple[str, ...]:
    servers = tuple(nats_url(part.strip()) for part in split_servers(raw) if part.strip())
    if not servers:
        raise ValueError("must name at least one server, e.g. nats://127.0.0.1:4222")
    return servers


def with_nats_scheme(raw: str) -> str:
    """``host:port`` -> ``nats://host:port``: KRE v1 deployments set ``KRT_NATS_SERVER`` with no scheme."""
    return raw if "://" in raw else f"nats://{raw}"


def nats_url(raw: str) -> str:
    # Nothing but the scheme may be left out (nats//host is refused).
    scheme, separator, rest = with_nats_scheme(raw).partition("://")
    url = f"{scheme.lower()}{separator}{rest}"  # nats-py knows nats:// and tls://, not NATS://
    parts = urlsplit(url)
    login = user_part(url)
    if login and any(character in login[1] for character in "/#?@"):
        raise ValueError(f"{redact_url(raw)!r}: percent-encode / # ? @ in a user or password (%2F %23 %3F %40, "
                         "and % itself as %25), or give them as KRT_NATS_USER and KRT_NATS_PASSWORD")
    if parts.scheme not in NATS_SCHEMES or not parts.hostname or ("://" not in raw and "/" in raw):
        raise ValueError(f"{redact_url(raw)!r} is not a NATS URL such as nats://host:4222")
    if parts.scheme in ("ws", "wss") and importlib.util.find_spec("aiohttp") is None:
        raise ValueError(f"{redact_url(raw)!r}: a websocket server needs aiohttp, which nats-py uses for it "
                         "(pip install aiohttp), or a nats:// or tls:// URL")
    _check_port(parts, raw)
    return url


def subject(raw: str) -> str:
    value = raw.strip()
    if value and not _SUBJECT_RE.match(value):
        raise ValueError(f"{value!r} is not a NATS subject one can publish to (dot-separated names, none empty, "
                         "no wildcards)")
    if len(value) > MAX_PUBLISH_SUBJECT:
        raise ValueError(f"is {len(value)} characters, over the {MAX_PUBLISH_SUBJECT} a node publishes to")
    return value


def input_subject(raw: str) -> str:
    value = raw.strip()
    tokens = value.split(".")
    if not all(tokens) or _WHITESPACE.search(value) or ">" in tokens[:-1]:  # as nats-server checks a subscription
        raise ValueError(f"{value!r} is not a NATS subject (dot-separated names, none empty; a name may be the "
                         "wildcard *, and the last one >)")
    if len(value) > MAX_PUBLISH_SUBJECT:  # its SUB line (subject and queue group) must fit the server's control line
        raise ValueError(f"is {len(value)} characters, over the {MAX_PUBLISH_SUBJECT} a node subscribes to")
    return value


# Numbers as people write them in a setting: ASCII digits, no "_" (Python's int() and float() take 1_0 and "٣").
_DECIMAL = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*", re.ASCII)
_WHOLE = re.compile(r"\s*[+-]?\d{1,30}\s*", re.ASCII)  # longer: beyond any limit (int() refuses 4300 digits)


def _finite(raw: str) -> float:
    number = _DECIMAL.fullmatch(raw)
    if number is None and raw.strip().lower() not in ("inf", "+inf", "-inf", "nan"):
        raise ValueError(f"must be a number, such as 2 or 0.5, not {raw!r}")
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    if value == 0 and number is not None and number[1].strip("0."):  # 1e-400: not a way to say 0 (off)
        raise ValueError(f"{raw!r} is too small to tell from 0")
    return value


def _whole_number(raw: str, least: int, most: int | None) -> int:
    value = int(raw) if _WHOLE.fullmatch(raw) else least - 1  # "1.5", "x", "1_0": said as the range below
    if value < least or (most is not None and value > most):
        raise ValueError(f"must be a whole number of at least {least}" + (f" and at most {most}" if most else ""))
    return value


def _check_port(parts: SplitResult, raw: str) -> None:
    """A port that is not a number, in words that show no part of a password (urllib's would)."""
    try:
        _ = parts.port
    except ValueError:
        raise ValueError(
            f"{redact_url(raw)!r} has no valid host:port; percent-encode / # ? @ in a password (%2F %23 %3F %40)"
        ) from None


def http_url(raw: str) -> str:
    value = raw.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{redact_url(value)!r} is not an http(s) URL such as http://influxdb:8086")
    after_user = value.rpartition("@")[2]  # a password may hold ? and #, percent-encoded or not
    if "?" in after_user or "#" in after_user:
        shown = redact_url(value).partition("?")[0].partition("#")[0]  # the query may hold a password
        raise ValueError(f"{shown!r} has a query or fragment: give the server's URL alone (user:password@ in it, "
                         "or KRT_INFLUX_TOKEN, for credentials)")
    _check_port(parts, value)
    credentials = url_credentials(value)[1]
    if credentials:  # sent as the token: in a header
        try:
            header_text(credentials)
        except ValueError as exc:
            raise ValueError(f"its user:password {exc}") from None
    return value.rstrip("/")


def mongo_uri(raw: str) -> str:
    value = raw.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("mongodb", "mongodb+srv") or not parts.netloc:
        raise ValueError(f"{redact_url(value)!r} is not a MongoDB URI such as mongodb://user:password@mongo:27017")
    return value


def file_to_write(raw: str) -> str:
    path = Path(raw.strip()).expanduser()
    if not path.parent.is_dir():
        raise ValueError(f"{raw!r} is not in an existing directory")
    if path.is_dir():
        raise ValueError(f"{raw!r} is a directory: name a file (in it, or beside it)")
    return str(path)


def existing_dir(raw: str) -> Path:
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise ValueError(f"{raw!r} is not a directory")
    return path.resolve()


def existing_file(raw: str) -> Path:
    path = Path(raw).expanduser()
    if not path.is_file():
        raise ValueError(f"{raw!r} is not a readable file")
    return path.resolve()


def redact_servers(servers: str) -> str:
    """Comma-separated URLs, each with :func:`redact_url`."""
    return ",".join(redact_url(url) for url in split_servers(servers))


def split_servers(raw: str) -> list[str]:
    """Comma-separated server URLs; commas in a password or a token stay in it. A piece with no ``@`` that has a
    scheme (``nats://alice:1234``), or is no URL alone, goes on over the next pieces up to one with an ``@`` and no
    scheme before it (``abc@host:4222``): ``nats://alice:1234,abc@host:4222`` is one URL (the password
    ``1234,abc``: read as two servers, its first part would be shown), ``h1:4222,u:pw@h2:4222`` two, and so is
    ``nats://h1:4222,nats://u:pw@h2:4222``: in a list of URLs with schemes, each has its own."""
    pieces = raw.split(",")
    servers: list[str] = []
    start = 0
    while start < len(pieces):
        end = _password_end(pieces, start)
        servers.append(",".join(pieces[start : end + 1]))
        start = end + 1
    return servers


def _password_end(pieces: list[str], start: int) -> int:
    """The last piece of the URL that begins at ``pieces[start]``."""
    first = pieces[start]
    if "@" in first or ("://" not in first and _is_server(first.strip())):
        return start
    for end in range(start + 1, len(pieces)):
        before_at, at, _ = pieces[end].partition("@")
        if "://" in before_at:
            break  # another URL begins: the first piece was wrong on its own
        if at:
            return end
    return start


def _is_server(text: str) -> bool:
    try:
        nats_url(text)
    except ValueError:
        return False
    return True
