"""NATS subjects: whether a subscription pattern matches a subject, and how long a subject this node publishes to."""

from __future__ import annotations

from collections.abc import Callable

# Longest subject this node publishes to: far below nats-server's default control line of 4096 bytes, which a
# PUB line (subject, reply, size) must fit; over it the server closes the connection.
MAX_PUBLISH_SUBJECT = 1024


def matches(pattern: str, subject: str) -> bool:
    """Whether a subscription to ``pattern`` (``*`` one token, ``>`` the rest) receives ``subject``."""
    wanted, given = pattern.split("."), subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(given) > index
        if index >= len(given) or (token != "*" and token != given[index]):
            return False
    return len(wanted) == len(given)


def matcher(pattern: str) -> Callable[[str], bool]:
    """:func:`matches` for one pattern, as cheap as a comparison when the pattern has no wildcard."""
    if "*" in pattern.split(".") or ">" in pattern.split("."):
        return lambda subject: matches(pattern, subject)
    return pattern.__eq__
