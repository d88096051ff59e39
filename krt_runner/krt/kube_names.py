"""Kubernetes names and labels for a KRT's objects: lower case, at most 63 characters, the same on every run."""

from __future__ import annotations

import hashlib
import re

MAX_LENGTH = 63
_NOT_DNS = re.compile(r"[^a-z0-9-]+")
_NOT_LABEL = re.compile(r"[^A-Za-z0-9_.-]+")


def object_name(*parts: str) -> str:
    """An RFC 1123 label from ``parts`` joined by ``-`` (``greeter-v1-greet-decorate``); when cleaning or
    shortening changed it, a short hash of the parts keeps two different KRTs apart."""
    raw = "-".join(part for part in parts if part)
    clean = _NOT_DNS.sub("-", raw.lower()).strip("-") or "krt"
    if clean == raw and len(clean) <= MAX_LENGTH:
        return clean
    digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
    return f"{clean[: MAX_LENGTH - len(digest) - 1].rstrip('-')}-{digest}"


def service_name(*parts: str) -> str:
    """:func:`object_name`, starting with a letter: a Service's name is an RFC 1035 label. One that starts with a
    digit gets ``krt-`` before it and a short hash of the parts after it, so that no other KRT's name, such as that
    of version ``krt-2-greeter`` beside ``2-greeter``, comes to the same."""
    name = object_name(*parts)
    if name[0].isalpha():
        return name
    return object_name("krt", *parts, hashlib.sha256("-".join(parts).encode()).hexdigest()[:8])


def label_value(text: str) -> str:
    """``text`` as a label value: at most 63 of ``[A-Za-z0-9_.-]``, starting and ending alphanumeric."""
    clean = _NOT_LABEL.sub("-", text)[:MAX_LENGTH]
    return clean.strip("-_.")
