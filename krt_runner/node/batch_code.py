"""A node's batch function, read once at load time: ``handler_batch(ctx, requests)`` in a handler module, or
``process_batch(self, ctx, requests)`` on a :class:`~krt_runner.Processor`, after its ``validate`` per request.

What the node calls is :attr:`BatchCode.call`; :func:`~krt_runner.node.batch_results.outcomes` reads what it
returns. A Processor's ``validate`` runs in the same call as ``process_batch`` (one hop to a worker thread per
batch when both are sync): a request it rejects is answered as invalid and left out of the batch.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from krt_runner.errors import HandlerLoadError
from krt_runner.node.batch_context import BatchContext
from krt_runner.node.batch_results import Validated, item_error, outcomes
from krt_runner.node.calling import UserFunction, as_async, check_arguments, invalid_request
from krt_runner.node.request_types import batch_request_type_of
from krt_runner.processor import Processor


@dataclass(frozen=True)
class BatchCode:
    """A batch function as the node calls it: ``call(ctx, requests)``, with ``ctx`` a :class:`BatchContext`."""

    name: str  # in error answers: handler_batch, or Classifier.process_batch
    call: UserFunction
    # The class each request is unpacked into; None: the function gets each request's Any.
    request_type: type[Message] | None = None

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.call)


def function_batch(function: Any, *, source: str) -> BatchCode:
    """A module's ``handler_batch(ctx, requests)``."""
    if not callable(function):
        raise HandlerLoadError(f"handler {source!r}: handler_batch is not a function")
    check_arguments(function, ("ctx", "requests"), f"handler {source!r}")
    request_type = batch_request_type_of(function, where=f"{source}: handler_batch")
    return BatchCode(name="handler_batch", call=function, request_type=request_type)


def processor_batch(processor: Processor, *, where: str, validate: UserFunction | None) -> BatchCode | None:
    """A Processor's ``process_batch``, after ``validate`` when it has one; ``None`` when it defines none."""
    cls = type(processor)
    if cls.process_batch is Processor.process_batch:
        return None
    process_batch = processor.process_batch
    request_type = batch_request_type_of(process_batch, where=f"{where}.process_batch")
    call = process_batch if validate is None else _validating(validate, process_batch)
    return BatchCode(name=f"{cls.__name__}.process_batch", call=call, request_type=request_type)


def agreed_request_type(where: str, typed: list[tuple[str, type[Message] | None]]) -> type[Message] | None:
    """The request class that the annotated ones of ``typed`` (function name, its class) agree on; the first
    annotated one otherwise names the disagreement."""
    annotated = [(name, request_type) for name, request_type in typed if request_type is not None]
    if not annotated:
        return None
    first_name, first = annotated[0]
    for name, request_type in annotated[1:]:
        if request_type is not first:
            raise HandlerLoadError(
                f"{where}: {name} takes {request_type.DESCRIPTOR.full_name} but {first_name} takes "
                f"{first.DESCRIPTOR.full_name}; annotate both with the same request class"
            )
    return first


def one_at_a_time(batch: BatchCode) -> UserFunction:
    """A ``handler(ctx, request)`` that calls the batch function with a batch of one: for code with no per-request
    function, when ``KRT_BATCH_MAX_SIZE`` is 1 and in ``krt_runner.testing``'s ``call``."""
    call, name = batch.call, batch.name
    if batch.is_async:

        async def handler_async(ctx: Any, request: Any) -> Any:
            return _only(name, await call(BatchContext.of_one(ctx), [request]))

        return handler_async

    def handler(ctx: Any, request: Any) -> Any:
        return _only(name, call(BatchContext.of_one(ctx), [request]))

    return handler


def _only(name: str, returned: Any) -> Any:
    if isinstance(returned, Validated) and returned.error is not None:
        raise returned.error  # the user's own, as from a handler: the pipeline names the batch function
    (result,) = outcomes(name, returned, 1)
    if isinstance(result, Exception):
        raise item_error(name, result)
    return result


def _validating(validate: UserFunction, process_batch: UserFunction) -> UserFunction:
    """``validate`` per request, then ``process_batch`` with those it accepted: one sync function when both are
    sync (one hop to a worker thread per batch), else one coroutine function."""
    if not inspect.iscoroutinefunction(validate) and not inspect.iscoroutinefunction(process_batch):
        return functools.partial(_validate_then_process_batch, validate, process_batch)
    return functools.partial(_validate_then_process_batch_async, as_async(validate), as_async(process_batch))


def _validate_then_process_batch(
    validate: UserFunction, process_batch: UserFunction, ctx: BatchContext, requests: list[Any]
) -> Validated:
    rejected = {}
    for index, request in enumerate(requests):
        try:
            validate(ctx.for_request(index), request)
        except Exception as exc:
            rejected[index] = invalid_request(exc)
    accepted = [index for index in range(len(requests)) if index not in rejected]
    if not accepted:
        return Validated(rejected, accepted)  # no call with zero requests
    try:
        returned = process_batch(*_accepted_part(ctx, requests, accepted))
    except Exception as exc:
        return Validated(rejected, accepted, error=exc)
    return Validated(rejected, accepted, returned)


async def _validate_then_process_batch_async(
    validate: UserFunction, process_batch: UserFunction, ctx: BatchContext, requests: list[Any]
) -> Validated:
    rejected = {}
    for index, request in enumerate(requests):
        try:
            await validate(ctx.for_request(index), request)
        except Exception as exc:
            rejected[index] = invalid_request(exc)
    accepted = [index for index in range(len(requests)) if index not in rejected]
    if not accepted:
        return Validated(rejected, accepted)
    try:
        returned = await process_batch(*_accepted_part(ctx, requests, accepted))
    except Exception as exc:
        return Validated(rejected, accepted, error=exc)
    return Validated(rejected, accepted, returned)


def _accepted_part(ctx: BatchContext, requests: list[Any], accepted: list[int]) -> tuple[BatchContext, list[Any]]:
    if len(accepted) == len(requests):
        return ctx, requests
    return ctx.subset(accepted), [requests[index] for index in accepted]
