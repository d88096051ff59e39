"""What a batch function's call comes to for each request of the batch: its result, or the error it is answered with.

The batch function returns one result per request, in order. A result that is
an exception instance, or not a protobuf message, answers its request with an
error; an exception out of the whole call, or a timeout, answers every request
of the batch (its traceback logged once); a wrong number of results answers
each request with an error naming both counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.message import Message

from krt_runner.errors import (
    BatchResultError,
    HandlerError,
    HandlerTimeoutError,
    InvalidRequestError,
    InvalidResultError,
    KrtRunnerError,
    describe,
)

ErrorT = TypeVar("ErrorT", bound=Exception)


@dataclass(frozen=True)
class Validated:
    """What a Processor's batch call returns: the requests ``validate`` rejected, by index, and what
    ``process_batch`` returned for the others (``accepted``, in order), or what it raised."""

    rejected: dict[int, InvalidRequestError]
    accepted: list[int]
    returned: Any = None
    error: Exception | None = None


def outcomes(name: str, returned: Any, count: int) -> list[Any]:
    """One outcome per request, in order: a result, or an exception instance (the batch function's own, or the
    error its request gets). :class:`BatchResultError` when ``returned`` is not one result per request."""
    if isinstance(returned, Validated):
        return _merged(name, returned, count)
    if not isinstance(returned, list | tuple):
        raise BatchResultError(f"{name} returned {_type_name(returned)}, not a list with one result per request "
                               f"(a batch of {_requests(count)})")
    if len(returned) != count:
        raise BatchResultError(f"{name} returned {len(returned)} results for a batch of {_requests(count)}: "
                               "it must return one result per request, in the order of the requests")
    return list(returned)


def answerable(name: str, results: list[Any]) -> list[Any]:
    """``results`` (from :func:`outcomes`), each that is neither a protobuf message nor an exception replaced by
    the :class:`InvalidResultError` its request is answered with."""
    return [result if isinstance(result, Message | Exception) else
            InvalidResultError(f"{name} returned {_type_name(result)} for this request, not a protobuf message")
            for result in results]


def item_error(name: str, exc: Exception) -> KrtRunnerError:
    """The error a request is answered with when its result is the exception ``exc``."""
    if isinstance(exc, KrtRunnerError):  # ours already (validate's InvalidRequestError, a count error): as it is
        return exc
    return _caused(HandlerError(f"{name} returned an error for this request: {describe(exc)}"), exc)


def whole_batch_errors(name: str, exc: BaseException, count: int) -> list[HandlerError]:
    """One error per request when the batch function raised ``exc``: each its own instance, ``exc`` their cause."""
    text = f"{name} raised {describe(exc)}, for its whole batch of {_requests(count)}"
    errors = [_caused(HandlerError(text), exc) for _ in range(count)]
    for error in errors[1:]:
        error.traceback_logged_with_another = True  # the batch's first request's error line shows it
    return errors


def timeout_errors(name: str, timeout: float, count: int) -> list[HandlerTimeoutError]:
    """One error per request when the batch function outlasted ``KRT_HANDLER_TIMEOUT``."""
    text = f"{name} timed out after {timeout:g}s (KRT_HANDLER_TIMEOUT, for its whole batch of {_requests(count)})"
    return _each(count, lambda: HandlerTimeoutError(text))


def _merged(name: str, validated: Validated, count: int) -> list[Any]:
    merged: list[Any] = [None] * count
    for index, error in validated.rejected.items():
        merged[index] = error
    accepted = validated.accepted
    if not accepted:
        return merged
    results: list[Any]
    if validated.error is not None:
        results = whole_batch_errors(name, validated.error, len(accepted))
    else:
        try:
            results = outcomes(name, validated.returned, len(accepted))
        except BatchResultError as exc:
            text = str(exc)
            results = _each(len(accepted), lambda: BatchResultError(text))
    for index, result in zip(accepted, results, strict=True):
        merged[index] = result
    return merged


def _each(count: int, make: Callable[[], ErrorT]) -> list[ErrorT]:
    """A fresh error per request: an exception raised in several tasks would collect all their tracebacks."""
    return [make() for _ in range(count)]


def _caused(error: HandlerError, cause: BaseException) -> HandlerError:
    error.__cause__ = cause
    return error


def _requests(count: int) -> str:
    return "1 request" if count == 1 else f"{count} requests"


def _type_name(value: Any) -> str:
    return "None" if value is None else f"a {type(value).__module__}.{type(value).__qualname__}"
