"""The user part of a URL (``user:password@`` or ``token@``): read, decoded, hidden. On the raw text, not through a
URL parser: a password with ``/``, ``#`` or ``?`` in it ends a parser's host part before the ``@``."""

from __future__ import annotations

from urllib.parse import unquote


def url_login(url: str) -> tuple[str, str, str | None]:
    """``nats://us%3Aer:p%40ss@host`` -> (``nats://host``, ``us:er``, ``p@ss``): user and password split at the
    colon, then each percent-decoded; the password ``None`` for a token alone, and the user ``""`` without any."""
    split = user_part(url)
    if split is None or not split[0]:
        return url, "", None
    prefix, login, host = split
    user, colon, password = login.partition(":")
    return f"{prefix}{host}", unquote(user), unquote(password) if colon else None


def url_credentials(url: str) -> tuple[str, str]:
    """``http://user:secret@host`` -> (``http://host``, ``user:secret``), percent-decoded; (``url``, ``""``)
    without any, or without a scheme."""
    bare, user, password = url_login(url)
    return bare, user if password is None else f"{user}:{password}"


def redact_url(url: str) -> str:
    """``nats://user:secret@host`` -> ``nats://user:***@host``; a token alone becomes ``***`` (see
    :func:`user_part`); a query, which may carry credentials too (``?u=...&p=...``), becomes ``?***``."""
    split = user_part(url)
    if split is None:
        return _without_query(url)
    prefix, login, host = split
    user, colon, _ = login.partition(":")
    return f"{prefix}{f'{user}:***' if colon else '***'}@{_without_query(host)}"


def _without_query(text: str) -> str:
    address, question, _ = text.partition("?")
    return f"{address}?***" if question else text


def user_part(url: str) -> tuple[str, str, str] | None:
    """(``scheme://`` or ``""``, the user part, the rest) of ``url``; ``None`` without an ``@``. Read on the raw
    text, not through a URL parser: a password with ``/``, ``#`` or ``?`` in it ends a parser's host part before the
    ``@``. Everything after the scheme up to the last ``@`` is the user part."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    login, at, host = rest.rpartition("@")
    return (f"{scheme}{separator}", login, host) if at else None
