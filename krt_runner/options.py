"""Reading settings: each one a row (:class:`Option`) with its variable, flag, parser and default, read from the
environment and flag overrides with every problem collected (:class:`~krt_runner.errors.ConfigError`).

:mod:`krt_runner.config` holds a node's rows; the entrypoint's settings reuse some of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from krt_runner.errors import ConfigError
from krt_runner.setting_values import redact_servers


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



def read_options(
    options: tuple[Option, ...],
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    cross_checks: Callable[[Mapping[str, Any]], list[str]] | None = None,
) -> dict[str, Any]:
    """Each option's value by field, from its flag in ``overrides`` or its variable in ``env`` (default
    ``os.environ``) or its default; :class:`ConfigError` listing every problem, ``cross_checks``' included."""
    env = os.environ if env is None else env
    overrides = overrides or {}
    values: dict[str, Any] = {}
    problems: list[str] = []
    for option in options:
        raw = overrides.get(option.field)
        if raw is None or not str(raw).strip():  # an empty flag counts as unset, as an empty variable does
            raw = env.get(option.env)
        read_option(option, raw, values, problems)
    if cross_checks is not None:
        problems.extend(cross_checks(values))
    if problems:
        raise ConfigError(problems)
    return values


def read_option(option: Option, raw: str | None, values: dict[str, Any], problems: list[str]) -> None:
    """Parse ``raw`` (``None``: not given) into ``values[option.field]``, or note what is wrong in ``problems``."""
    where = f"{option.env} ({option.flag})"
    if raw is None or not str(raw).strip():
        if option.required:
            problems.append(f"{where} is required: {option.help}")
        values[option.field] = option.default
        return
    try:
        values[option.field] = option.parse(str(raw))
    except ValueError as exc:
        shown = "***" if option.secret else repr(redact_servers(str(raw)))
        problems.append(f"{where}={shown} is invalid: {_reason(exc)}")


def _reason(exc: ValueError) -> str:
    text = str(exc)
    # int()/float() say "invalid literal for int() with base 10: 'x'"
    if text.startswith(("invalid literal", "could not convert")):
        return "must be a number"
    return text
