"""What JetStream answers a publish with, read: its acknowledgement (the stream stored the message), its refusal in
words, or neither (a subscriber of the subject answered it itself)."""

from __future__ import annotations

import json
import re
from typing import Any

# JetStream's "duplicate message id is in process": the first publish of that id is still being stored (as on a
# cluster electing its leader); the same publish later is acknowledged as a duplicate, or stored.
IN_PROCESS = 10158


def stream_refusal(why: object) -> str:
    """The stream's own words in a JetStream publish acknowledgement that refuses the message (``{"error":
    {"code": 503, "err_code": 10077, "description": "maximum messages exceeded"}}``); ``""`` for anything else
    (a no-responders status: no stream there now, perhaps for a moment)."""
    if not isinstance(why, bytes):
        return ""
    try:
        error = json.loads(why).get("error") or {}
    except (ValueError, AttributeError):
        return ""
    description = error.get("description") if isinstance(error, dict) else None
    if not description or error.get("err_code") == IN_PROCESS:  # not for good: published again
        return ""
    return f"{description} (JetStream error {error.get('err_code', error.get('code'))})"


# How nats-server writes an acknowledgement that stored the message (Go's field order: stream, seq, then domain and
# duplicate when set): read without parsing, once per forwarded answer.
_STORED = re.compile(rb'\{"stream":"[^"\\]*","seq":\d+[,}]')


def publish_ack(data: bytes) -> dict[str, Any] | None:
    """A JetStream publish acknowledgement (``{"stream": "S", "seq": 7}``, or ``{"error": {...}}`` for a refusal),
    or ``None`` for any other reply: what a subscriber of the subject answered."""
    if data[:1] != b"{":
        return None
    if _STORED.match(data) and data.find(b'"error"') < 0:
        return _ACKNOWLEDGED
    try:
        reply = json.loads(data)
    except ValueError:
        return None
    if not isinstance(reply, dict):
        return None
    return reply if "error" in reply or ("stream" in reply and isinstance(reply.get("seq"), int)) else None


_ACKNOWLEDGED: dict[str, Any] = {"stream": "", "seq": 0}  # what a stored message's acknowledgement is read as
