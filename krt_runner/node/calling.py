"""Calling the user's functions: coroutines on the event loop, plain functions on worker threads; and what an
exception out of them becomes.

Sync code runs off the event loop so that a CPU-bound handler never keeps the
NATS client from answering PINGs or reconnecting.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf import any_pb2
from google.protobuf.message import Message

from krt_runner.errors import (
    BatchResultError,
    HandlerError,
    HandlerLoadError,
    HandlerTimeoutError,
    InvalidRequestError,
    describe,
)
from krt_runner.node.threads import WorkerThreads

# What user code may raise that becomes the request's error answer: any exception, and SystemExit or KeyboardInterrupt
# (sys.exit() in a library, a CLI helper's error path), which must not stop or half-stop a node that serves other
# requests; where the call is awaited directly, a cancellation of its own too.
# Whatever user code raises is its failure, a BaseException of its own included (GeneratorExit, a library's
# timeout class): caught as the message's error, it can never end a worker and leave the node deaf. Where the node's
# own cancellation must pass (wait_for's timeout, a stop), ``except asyncio.CancelledError: raise`` comes first.
USER_CODE_FAILURES = (BaseException,)
# What a handler's call may raise that says what went wrong already: answered as it is, with no traceback of ours
# (an invalid request; a handler error; a batch function called for one request that returned no list of one).
SAID_ALREADY = (InvalidRequestError, HandlerError, BatchResultError)

UserFunction = Callable[..., Any]


class Caller:
    """Calls user functions: coroutines on the loop, plain functions on worker threads."""

    def __init__(self, *, workers: int) -> None:
        self._workers = workers
        self._is_async: dict[UserFunction, bool] = {}
        self._threads = self._new_threads()
        self.abandoned_threads = 0  # threads of timed-out calls, still running their function

    def _new_threads(self) -> WorkerThreads:
        return WorkerThreads(self._workers, name="krt-handler")

    def call(self, function: UserFunction, *args: Any) -> Awaitable[Any]:
        """What to await for ``function(*args)``: an async function's own coroutine, or its run on a worker thread.

        A plain method, not a coroutine: an async handler is awaited with no frame of ours in between.
        """
        is_async = self._is_async.get(function)
        if is_async is None:  # asked once per function, not per message
            is_async = self._is_async[function] = inspect.iscoroutinefunction(function)
        if is_async:
            coroutine: Awaitable[Any] = function(*args)  # annotated, not cast(): no call per message
            return coroutine
        return self._call_in_thread(function, args)

    async def _call_in_thread(self, function: UserFunction, args: tuple[Any, ...]) -> Any:
        threads = self._threads
        running = threads.call(function, args)
        try:
            result = await running
        except asyncio.CancelledError:  # timed out: a thread cannot be stopped
            if threads.started(running):
                self._abandon(threads)
            raise
        if inspect.isawaitable(result):  # a sync function that returned a coroutine
            result = await result
        return result

    def _abandon(self, threads: WorkerThreads) -> None:
        """Leave a busy thread to finish on its own (its result is discarded); new calls get fresh threads.

        Without this a timed-out handler would keep its worker, and every later
        message would wait for it and time out too.
        """
        self.abandoned_threads += 1
        if threads is self._threads:  # not replaced yet by another timed-out call of the same threads
            self._threads = self._new_threads()
            threads.retire()  # the others end once they have run what was handed to them

    def close(self) -> None:
        # Threads of timed-out handlers cannot be killed; do not wait for them.
        self._threads.close()


_ANY_METHODS = frozenset({"Unpack", "Is", "TypeName", "Pack"})


def handler_failure(
    exc: BaseException, timeout: float | None, *, typed: bool = False, name: str = "handler"
) -> BaseException:
    """What an exception out of the handler's call becomes: the timeout's error when ``wait_for`` timed out,
    else a :class:`HandlerError` naming it (a handler's own ``CancelledError`` included: the node goes on)."""
    if isinstance(exc, asyncio.TimeoutError) and timeout is not None:
        # wait_for's: with a timeout set, the handler's own TimeoutError arrives as a HandlerError
        failure: BaseException = HandlerTimeoutError(f"{name} timed out after {timeout:g}s (KRT_HANDLER_TIMEOUT)")
        failure.__suppress_context__ = True
        return failure
    return handler_error(exc, typed=typed, name=name)


async def as_handler_errors(
    call: Callable[..., Awaitable[Any]], *args: Any, typed: bool = False, name: str = "handler"
) -> Any:
    """``call(*args)`` awaited, its exceptions as :class:`HandlerError`, so that none is taken for ``wait_for``'s
    timeout (comparing clocks instead fails: uvloop's timers tick in milliseconds and may fire just before the
    bound)."""
    try:
        return await call(*args)
    except (*SAID_ALREADY, asyncio.CancelledError):
        raise
    except USER_CODE_FAILURES as exc:
        raise handler_error(exc, typed=typed, name=name)  # noqa: B904  (it carries its cause)


def handler_error(exc: BaseException, *, typed: bool = False, name: str = "handler") -> HandlerError:
    """The error an exception out of the user's handler becomes, naming it, with it as its cause. ``typed``: the
    handler's data parameter is annotated with a message class (an ``Any`` method on it gets a hint)."""
    error = HandlerError(f"{name} raised {describe(exc)}{_any_method_hint(exc) if typed else ''}")
    error.__cause__ = exc
    return error


def _any_method_hint(exc: BaseException) -> str:
    """A KRE v1 handler annotated ``data: Request`` that still unpacks ``data``: the annotation made it typed. Only
    for an ``Any`` method looked up on a protobuf message that is no ``Any``."""
    if not isinstance(exc, AttributeError) or exc.name not in _ANY_METHODS:
        return ""
    found = getattr(exc, "obj", None)
    if not isinstance(found, Message) or isinstance(found, any_pb2.Any):
        return ""
    return (f" ({type(found).__name__}.{exc.name}: it is a {found.DESCRIPTOR.full_name}, not an Any; a handler whose "
            "data parameter is annotated with a message class gets that message already unpacked: drop the "
            "annotation, or the Unpack)")


def check_arguments(function: UserFunction, names: tuple[str, ...], where: str) -> None:
    """:class:`HandlerLoadError` when ``function`` cannot be called with ``names``' arguments, as the runner calls it
    (``handler(ctx, data)``): found at start-up, not as a ``TypeError`` in every request's answer. A callable whose
    signature Python cannot read is let through, and so is a decorated function: the wrapper is what is called, and
    its own signature (``*args, **kwargs``, most often) is read, not the function's it wraps."""
    try:
        signature = inspect.signature(function, follow_wrapped=False)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*names)
    except TypeError:
        shown = getattr(function, "__name__", type(function).__name__)
        raise HandlerLoadError(f"{where}: {shown}{signature} cannot be called as {shown}({', '.join(names)}), as "
                               "the runner calls it") from None


def as_async(function: UserFunction) -> UserFunction:
    """``function`` as a coroutine function: itself if it is one, else run on a thread of its own when called."""
    if inspect.iscoroutinefunction(function):
        return function
    return functools.partial(asyncio.to_thread, function)


def invalid_request(exc: Exception) -> InvalidRequestError:
    """What an exception out of a Processor's ``validate`` becomes: the request is invalid."""
    if isinstance(exc, InvalidRequestError):
        return exc
    return InvalidRequestError(f"invalid request: {describe(exc)}")
