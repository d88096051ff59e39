"""Parsers of setting values: each takes the raw text of a ``KRT_*`` variable or flag and returns the value, or
raises ``ValueError`` with what is wrong."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

from krt_runner.subjects import MAX_PUBLISH_SUBJECT

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
MAX_DELIVER = 10_000


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


def positive_float(raw: str) -> float:
    value = _finite(raw)
    if not value > 0:
        raise ValueError("must be a number of seconds above 0")
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


def port(raw: str) -> int:
    """A TCP port to listen on: 0 to 65535, 0 meaning a free one."""
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number from 0 to 65535 (0: any free port)")
    return value


def optional_seconds(raw: str) -> float | None:
    """``0`` switches a timeout off."""
    value = _finite(raw)
    if value < 0:
        raise ValueError("must be 0 (off) or a number of seconds above 0")
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
    servers = tuple(nats_url(part.strip()) for part in raw.split(",") if part.strip())
    if not servers:
        raise ValueError("must name at least one server, e.g. nats://127.0.0.1:4222")
    return servers


def nats_url(raw: str) -> str:
    # KRE v1 deployments set KRT_NATS_SERVER=host:port with no scheme; nothing else may lack one (nats//host).
    url = raw if "://" in raw else f"nats://{raw}"
    parts = urlsplit(url)
    if parts.scheme not in NATS_SCHEMES or not parts.hostname or ("://" not in raw and "/" in raw):
        raise ValueError(f"{redact_url(raw)!r} is not a NATS URL such as nats://host:4222")
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
    return value


def _finite(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _whole_number(raw: str, least: int, most: int | None) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = least - 1  # "1.5", "x": said as the range below
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
    _check_port(parts, value)
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
    return ",".join(redact_url(url) for url in servers.split(","))


def url_credentials(url: str) -> tuple[str, str]:
    """``http://user:secret@host`` -> (``http://host``, ``user:secret``), percent-decoded; (``url``, ``""``)
    without any, or without a scheme."""
    split = _user_part(url)
    if split is None or not split[0]:
        return url, ""
    prefix, user_part, host = split
    user, colon, password = user_part.partition(":")
    return f"{prefix}{host}", f"{unquote(user)}{colon}{unquote(password)}"


def redact_url(url: str) -> str:
    """``nats://user:secret@host`` -> ``nats://user:***@host``; a token alone becomes ``***`` (see
    :func:`_user_part`)."""
    split = _user_part(url)
    if split is None:
        return url
    prefix, user_part, host = split
    user, colon, _ = user_part.partition(":")
    return f"{prefix}{f'{user}:***' if colon else '***'}@{host}"


def _user_part(url: str) -> tuple[str, str, str] | None:
    """(``scheme://`` or ``""``, the user part, the rest) of ``url``; ``None`` without an ``@``. Read on the raw
    text, not through a URL parser: a password with ``/``, ``#`` or ``?`` in it ends a parser's host part before the
    ``@``. Everything after the scheme up to the last ``@`` is the user part."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    user_part, at, host = rest.rpartition("@")
    return (f"{scheme}{separator}", user_part, host) if at else None
