"""The JetStream stream and durable consumer a node's input subject gets in at-least-once mode, and the header its
publishes carry.

A pure function of the subject, so every replica of a node, ``krt-runner manifests`` (KEDA's lag trigger) and any
tool agree on the names without talking to each other. JetStream names may not hold ``.``, ``*``, ``>``,
whitespace or path separators: every character outside ``[A-Za-z0-9_-]`` becomes ``_``, and when that changed
the subject (two subjects could then share a name) or the name would be too long, a short hash of the subject
keeps it unique.
"""

from __future__ import annotations

import hashlib
import re

STREAM_PREFIX = "KRT_"
CONSUMER_PREFIX = "krt_"
# JetStream allows longer names, but they become file names on the server: stay well inside any file system.
_MAX_LENGTH = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def msg_id_header(msg_id: str) -> bytes:
    """The headers of an at-least-once publish (``Nats-Msg-Id``), as nats-py writes them. The server counts them
    in its max payload with the message: an envelope that fits alone may not fit with them."""
    return b"NATS/1.0\r\nNats-Msg-Id: %b\r\n\r\n" % msg_id.encode()


def stream_name(input_subject: str) -> str:
    """The stream created for ``input_subject`` when no stream captures it yet."""
    return _name(STREAM_PREFIX, input_subject)


def consumer_name(input_subject: str) -> str:
    """The durable pull consumer all replicas of the node reading ``input_subject`` share."""
    return _name(CONSUMER_PREFIX, input_subject)


def _name(prefix: str, subject: str) -> str:
    safe = _UNSAFE.sub("_", subject)
    name = prefix + safe
    if safe == subject and len(name) <= _MAX_LENGTH:
        return name
    digest = hashlib.sha256(subject.encode()).hexdigest()[:10]
    return f"{name[: _MAX_LENGTH - len(digest) - 1]}_{digest}"
