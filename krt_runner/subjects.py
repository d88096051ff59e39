"""NATS subjects: whether a subscription pattern matches a subject, and how long a subject this node publishes to."""

from __future__ import annotations

from collections.abc import Callable

# Longest subject this node publishes to: far below nats-server's default control line of 4096 bytes, which a
# PUB line (subject, reply, size) must fit; over it the server closes the connection.
MAX_PUBLISH_SUBJECT = 1024


def matches(pattern: str, subject: str) -> bool:
    """Whether a subscription to ``pattern`` (``*`` one token, ``>`` the rest) receives ``subject``."""
    return _matches_tokens(pattern.split("."), subject)


def matcher(pattern: str) -> Callable[[str], bool]:
    """:func:`matches` for one pattern, split once; as cheap as a comparison when the pattern has no wildcard."""
    wanted = pattern.split(".")
    if "*" in wanted or ">" in wanted:
        return lambda subject: _matches_tokens(wanted, subject)
    return pattern.__eq__


def _matches_tokens(wanted: list[str], subject: str) -> bool:
    given = subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(given) > index
        if index >= len(given) or (token != "*" and token != given[index]):
            return False
    return len(wanted) == len(given)
