"""argparse types of the commands' flags: the settings' own parsers, a refusal as argparse's one-line usage error."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

from krt_runner import setting_values

_Value = TypeVar("_Value")


def as_argument(parse: Callable[[str], _Value]) -> Callable[[str], _Value]:
    """``parse``, its ``ValueError`` turned into the ``ArgumentTypeError`` argparse prints as it is."""

    def argument(raw: str) -> _Value:
        try:
            return parse(raw)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    argument.__name__ = parse.__name__
    return argument


port = as_argument(setting_values.port)
positive = as_argument(setting_values.positive_int)
replica_count = as_argument(setting_values.replica_count)
stream_replicas = as_argument(setting_values.stream_replicas)
seconds = as_argument(setting_values.positive_float)
