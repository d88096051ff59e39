"""The request class a handler takes, read once from its annotation, and each payload unpacked into it."""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any

from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.message import DecodeError, Message

from krt_runner.envelope import type_url
from krt_runner.errors import HandlerLoadError, InvalidRequestError, describe

# Annotations that mean "give me the Any", as KRE v1 does.
# The builtin any too: KRE v1 code annotated with it (kre-py's own `payload: any`), and KRE v1 ignored annotations.
_UNTYPED_HINTS: tuple[object, ...] = (AnyMessage, Message, typing.Any, object, any)
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
# A batch function's requests: list[Request], List[Request] or Sequence[Request]; bare, they mean the Any of each.
_LIST_ORIGINS: tuple[object, ...] = (list, collections.abc.Sequence)
_BARE_LISTS: tuple[object, ...] = (list, typing.List, collections.abc.Sequence, typing.Sequence)  # noqa: UP006


def request_type_of(function: Callable[..., Any], *, where: str) -> type[Message] | None:
    """The protobuf class ``function``'s request parameter (its second) is annotated with.

    ``None`` when it has no annotation or is annotated as ``Any``: the function
    then gets the ``google.protobuf.Any`` as in KRE v1. String annotations
    (``from __future__ import annotations``) are resolved in the function's
    module; only this one parameter is, so an annotation that exists for type
    checkers only (``if TYPE_CHECKING:``) elsewhere in the signature is fine.
    """
    parameter = _request_parameter(function)
    if parameter is None:
        return None
    hint = _resolve(parameter, function, where)
    if _means_any(hint):
        return None
    if _is_message_class(hint):
        return hint
    raise HandlerLoadError(
        f"{where}: parameter {parameter.name!r} is annotated {hint!r}; annotate it with a protobuf message "
        "class to receive that message, or with google.protobuf.any_pb2.Any (or nothing) to receive the Any"
    )


def batch_request_type_of(function: Callable[..., Any], *, where: str) -> type[Message] | None:
    """The protobuf class of each request a batch function takes, from its second parameter's annotation.

    ``list[Request]`` (or ``Sequence[Request]``) gives ``Request``; no annotation, a bare ``list``, or a list
    of ``Any`` give ``None``: the function then gets each request's ``google.protobuf.Any``.
    """
    parameter = _request_parameter(function)
    if parameter is None:
        return None
    hint = _resolve(parameter, function, where)
    if hint in _BARE_LISTS or _means_any(hint):
        return None
    arguments = typing.get_args(hint)
    if typing.get_origin(hint) in _LIST_ORIGINS and len(arguments) == 1:
        if _means_any(arguments[0]):
            return None
        if _is_message_class(arguments[0]):
            return arguments[0]
    raise HandlerLoadError(
        f"{where}: parameter {parameter.name!r} is annotated {hint!r}; annotate it list[Request], Request being "
        "the protobuf message class of each request, or list[google.protobuf.any_pb2.Any] (or nothing) to "
        "receive the Any of each"
    )


def _means_any(hint: object) -> bool:
    return any(hint is untyped for untyped in _UNTYPED_HINTS)


def _is_message_class(hint: object) -> typing.TypeGuard[type[Message]]:
    return isinstance(hint, type) and issubclass(hint, Message)


def _request_parameter(function: Callable[..., Any]) -> inspect.Parameter | None:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # some builtins and C callables have none
        return None
    positional = [p for p in signature.parameters.values() if p.kind in _POSITIONAL]
    if len(positional) < 2 or positional[1].annotation is inspect.Parameter.empty:
        return None
    return positional[1]


def _resolve(parameter: inspect.Parameter, function: Callable[..., Any], where: str) -> object:
    annotation = parameter.annotation
    if not isinstance(annotation, str):
        return annotation
    holder = types.SimpleNamespace(__annotations__={parameter.name: annotation})
    module_globals = getattr(inspect.unwrap(function), "__globals__", {})
    try:
        return typing.get_type_hints(holder, globalns=module_globals)[parameter.name]
    except Exception as exc:
        raise HandlerLoadError(
            f"{where}: cannot resolve the annotation {annotation!r} of parameter {parameter.name!r}: "
            f"{describe(exc)}; import that name at module level"
        ) from None


def unpack_request(payload: AnyMessage, request_type: type[Message]) -> Message:
    """The payload as ``request_type``; :class:`InvalidRequestError` naming both types otherwise."""
    request = request_type()
    try:
        if payload.type_url == type_url(request_type):  # as Any.Pack wrote it: no need for Unpack's parsing of it
            request.ParseFromString(payload.value)
            return request
        if payload.Unpack(request):  # another prefix before the type name
            return request
    except DecodeError as exc:
        raise InvalidRequestError(
            f"invalid request: payload is not a valid {request_type.DESCRIPTOR.full_name}: {exc}"
        ) from None
    received = payload.TypeName() or "an empty payload"
    raise InvalidRequestError(f"invalid request: expected {request_type.DESCRIPTOR.full_name}, received {received}")
