"""InfluxDB line protocol: one point checked for what InfluxDB rejects and written as one line.

Values follow influxdb-client's ``Point``, which KRE v1 used: ``None`` fields
and non-finite floats are skipped, empty tags are left out, numpy numbers are
numbers. A point InfluxDB would reject raises :class:`MeasurementError` in the
caller, so a bad point never reaches a batch of good ones.
"""

from __future__ import annotations

import functools
import math
import numbers
import re
import time as _time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from krt_runner.envelope import parse_timestamp
from krt_runner.errors import MeasurementError

NS_PER = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# InfluxDB integers are signed 64-bit; a larger one would get the whole batch rejected.
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
# The times InfluxDB stores: 1677-09-21 to 2262-04-11, nanoseconds since the epoch in signed 64 bits.
_TIME_MIN, _TIME_MAX = -(2**63) + 2, 2**63 - 2
# Keys InfluxDB reserves for itself: a point using one is rejected by the server.
_RESERVED_KEYS = frozenset({"time", "_measurement", "_field"})
# Line protocol has no newline inside a point: like influxdb-client, keys and
# tags get "\n" as two characters; so do string fields (which it left raw).
_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"})
_KEY_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"})
_STRING_ESCAPES = str.maketrans({'"': r"\"", "\\": r"\\", "\n": r"\n", "\r": r"\r"})
# translate() is slow and most names and values need no escaping: look first.
_MEASUREMENT_SPECIALS = re.compile(r"[, \n\t\r]")
_KEY_SPECIALS = re.compile(r"[,= \n\t\r]")
_STRING_SPECIAL_CHARS = '"\\\n\r'  # what _STRING_ESCAPES rewrites
_STRING_SPECIALS = re.compile(f"[{re.escape(_STRING_SPECIAL_CHARS)}]")


def _escaped(text: str, specials: re.Pattern[str], table: dict[int, str]) -> str:
    return text.translate(table) if specials.search(text) else text


def escaped_strings(texts: Sequence[str]) -> Sequence[str]:
    """String-field contents, escaped; one scan of the whole batch per special character when, as usual, none
    needs it."""
    joined = "".join(texts)
    if not any(char in joined for char in _STRING_SPECIAL_CHARS):
        return texts
    return [_escaped(text, _STRING_SPECIALS, _STRING_ESCAPES) for text in texts]


@functools.lru_cache(maxsize=4096)  # a handler uses a few names over and over
def _key(kind: str, key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise MeasurementError(f"{kind} names must be non-empty strings, not {key!r}")
    if key in _RESERVED_KEYS:
        raise MeasurementError(f"{kind} name {key!r} is reserved by InfluxDB; choose another name")
    _refuse_trailing_backslash(kind, key)
    return _escaped(key, _KEY_SPECIALS, _KEY_ESCAPES)


def _refuse_trailing_backslash(kind: str, name: str) -> None:
    # It would escape the separator after it: the line would be cut elsewhere, or not read at all.
    if name.endswith("\\"):
        raise MeasurementError(f"{kind} name {name!r} ends with a backslash, which line protocol would read as "
                               "escaping what follows it; drop or replace it")


def _tag_value(key: str, value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, (numbers.Number, bool)):
        text = str(value)
    else:
        raise MeasurementError(f"tag {key!r} must be a string or a number, not {type(value).__name__}")
    escaped = _escaped(text, _KEY_SPECIALS, _KEY_ESCAPES)
    # A trailing backslash would escape the separator after it; influxdb-client adds a space too.
    return escaped + " " if escaped.endswith("\\") else escaped


def _tag_set(tags: Mapping[str, Any]) -> str:
    if not isinstance(tags, Mapping):
        raise MeasurementError(f"tags must be a dict of strings, not {type(tags).__name__}")
    parts = []
    for key in sorted(tags, key=str):  # sorted, as InfluxDB prefers
        value = tags[key]
        if value is None or (isinstance(value, str) and not value):  # InfluxDB has no empty tags: leave them out
            continue
        parts.append(f",{_key('tag', key)}={_tag_value(key, value)}")
    return "".join(parts)


def _string(value: str) -> str:
    return '"' + _escaped(value, _STRING_SPECIALS, _STRING_ESCAPES) + '"'


def _integer(key: str, value: int) -> str:
    if not _INT_MIN <= value <= _INT_MAX:
        raise MeasurementError(f"field {key!r} is {value}, beyond InfluxDB's 64-bit integers; save it as a float")
    return f"{value}i"


def _field_value(key: str, value: Any) -> str | None:
    """Line-protocol text of one field value; ``None`` for a value that is skipped."""
    if isinstance(value, bool):  # before int: a bool is an int
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, numbers.Integral):  # int, numpy integers
        return _integer(key, int(value))
    if isinstance(value, (numbers.Real, Decimal)):  # numpy floats, Decimal
        return _field_value(key, float(value))
    if getattr(getattr(value, "dtype", None), "kind", "") == "b":  # numpy.bool_
        return _field_value(key, bool(value))
    raise MeasurementError(f"field {key!r} has type {type(value).__name__}; use bool, int, float or str")


def _field_set(measurement: str, fields: Mapping[str, Any]) -> str:
    if not isinstance(fields, Mapping):
        raise MeasurementError(f"measurement {measurement!r} needs a dict of fields, not {type(fields).__name__}")
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        text = _field_value(key, value)
        if text is not None:
            parts.append(f"{_key('field', key)}={text}")
    return ",".join(parts)


def line_head(measurement: str, tags: Mapping[str, Any] | None) -> str:
    if not isinstance(measurement, str) or not measurement:
        raise MeasurementError("measurement name must be a non-empty string")
    if measurement.startswith("#"):
        raise MeasurementError(f"measurement name {measurement!r} starts with '#', which makes the line a comment")
    _refuse_trailing_backslash("measurement", measurement)
    return _escaped(measurement, _MEASUREMENT_SPECIALS, _MEASUREMENT_ESCAPES) + _tag_set(tags or {})


def line_protocol(
    measurement: str,
    fields: Mapping[str, Any],
    tags: Mapping[str, Any] | None = None,
    time_ns: int | None = None,
) -> str:
    """One point as a line of InfluxDB line protocol, checked for what InfluxDB rejects.

    Returns ``""`` when every field was skipped (``None``, NaN, infinity): there is nothing to store.
    """
    head = line_head(measurement, tags)
    body = _field_set(measurement, fields)
    if not body:
        return ""
    return f"{head} {body} {time_ns if time_ns is not None else _time.time_ns()}"


# -- time --------------------------------------------------------------------------------------


def datetime_ns(moment: datetime) -> int:
    if moment.tzinfo is None:  # naive means UTC, as datetime.utcnow() in KRE v1 handlers
        moment = moment.replace(tzinfo=timezone.utc)
    return _timedelta_ns(moment - _EPOCH)


def _timedelta_ns(delta: timedelta) -> int:
    """Exact to the microsecond, where ``total_seconds()`` would round through a float."""
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def timestamp_ns(moment: datetime | timedelta | str | int | float | None, precision: str) -> int:
    """Nanoseconds since the epoch, cut to ``precision`` as InfluxDB would store them.

    As influxdb-client's ``Point.time``, which KRE v1 handlers called: a ``datetime``, a ``timedelta`` since the
    epoch, an ISO 8601 text, or a number of ``precision`` units.
    """
    if moment is None:
        ns = _time.time_ns()
    elif isinstance(moment, datetime):
        ns = datetime_ns(moment)
    elif isinstance(moment, timedelta):
        ns = _timedelta_ns(moment)
    elif isinstance(moment, str):
        ns = datetime_ns(_iso_datetime(moment))
    elif isinstance(moment, numbers.Integral) and not isinstance(moment, bool):
        ns = int(moment) * NS_PER[precision]  # exact, however large
    elif isinstance(moment, numbers.Real):
        ns = int(float(moment) * NS_PER[precision])
    else:
        raise MeasurementError(f"time must be a datetime, a timedelta, an ISO 8601 text or a number of {precision}, "
                               f"not {type(moment).__name__}")
    if not _TIME_MIN <= ns <= _TIME_MAX:
        unit = f" (is it a number of {precision}?)" if isinstance(moment, numbers.Real) else ""
        raise MeasurementError(f"time {moment!r}{unit} is outside the times InfluxDB stores, 1677-09-21 to 2262-04-11")
    return ns - ns % NS_PER[precision]


def _iso_datetime(text: str) -> datetime:
    try:
        return parse_timestamp(text)  # as a tracking timestamp is read: naive (UTC), with Z or an offset
    except ValueError:
        raise MeasurementError(f"time {text!r} is not an ISO 8601 date and time") from None
