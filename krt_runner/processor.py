"""``Processor``: a node written as a class, with ``setup``, ``validate`` and ``process`` (or ``process_batch``)."""

from __future__ import annotations

from typing import Any

from krt_runner.node.batch_context import BatchContext
from krt_runner.node.context import HandlerContext


class Processor:
    """Base class of a node written as a class; subclass it and define :meth:`process`, :meth:`process_batch`, or
    both.

    ``setup`` runs once before any message (like ``init``); per message,
    ``validate`` and then ``process`` run with the request. Each may be sync
    (run on a worker thread) or async. Annotate the request parameter with its
    protobuf class (``def process(self, ctx, req: Request) -> Response``) and the
    runner unpacks the ``Any`` for you. The class is built once, with no
    arguments, when the node loads.

    With :meth:`process_batch`, requests are handled in batches (see
    ``KRT_BATCH_MAX_SIZE``): ``validate`` still runs once per request, and those
    it rejects are answered as invalid and left out of the batch.
    """

    def setup(self, ctx: HandlerContext) -> Any:
        """Run once before the first message: load models, open clients, ``ctx.set`` them."""

    def validate(self, ctx: HandlerContext, req: Any) -> Any:
        """Raise to reject ``req``: the requester gets an ``invalid request`` error answer."""

    def process(self, ctx: HandlerContext, req: Any) -> Any:
        """Return the answer (a protobuf message) for ``req``; an exception is a processing failure."""
        raise NotImplementedError(f"{type(self).__name__} must define process(self, ctx, req)")

    def process_batch(self, ctx: BatchContext, requests: list[Any]) -> Any:
        """Return one answer per request, in order (``requests: list[Request]`` is typed like ``process``'s
        ``req``). A result that is an exception instance answers its request with an error; an exception raised
        answers every request of the batch with it."""
        raise NotImplementedError(f"{type(self).__name__} defines no process_batch(self, ctx, requests)")
