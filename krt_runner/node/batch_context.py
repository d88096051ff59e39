"""What a batch function receives as ``ctx``: one context for the whole batch, with every request's ``tracking_id``.

Early reply is not offered in batch mode: each request of a batch is answered
with its own result when the batch function returns.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message

from krt_runner.errors import ReplyError
from krt_runner.node.context import HandlerContext, NodeState

NO_EARLY_REPLY = (
    "ctx.reply() is not offered in batch mode: each request of a batch is answered with its own result when the "
    "batch function returns; return the answer in its place instead (or set KRT_BATCH_MAX_SIZE=1 and answer early "
    "from handler(ctx, data) or process(self, ctx, req))"
)


async def refuse_early_reply(request: Any, message: Message) -> None:
    """The replier of every context of a batch: there is no early reply in batch mode."""
    raise ReplyError(NO_EARLY_REPLY)


class BatchContext(HandlerContext):
    """The ``ctx`` of ``handler_batch(ctx, requests)`` and ``Processor.process_batch(self, ctx, requests)``.

    Everything a :class:`HandlerContext` offers (store, paths, measurements,
    ``db``, ``prediction``), for the whole batch. :attr:`tracking_ids` lists each
    request's ``tracking_id``, in the order of the requests; the logger is bound to
    them all. :meth:`reply` raises :class:`~krt_runner.errors.ReplyError`.
    """

    __slots__ = ("tracking_ids",)

    def __init__(self, node: NodeState, tracking_ids: list[str]) -> None:
        super().__init__(node, "", refuse_early_reply)
        self.tracking_ids = tracking_ids

    @classmethod
    def of_one(cls, ctx: HandlerContext) -> BatchContext:
        """A batch context for the one request of ``ctx``: a batch function called for a single request."""
        return cls(ctx._node, [ctx.tracking_id])

    @property
    def logger(self) -> Any:
        """A structlog logger bound to node, workflow, version and the ``tracking_ids`` of the batch."""
        if self._logger is None:
            self._logger = self._node.logger.bind(tracking_ids=self.tracking_ids)
        return self._logger

    def for_request(self, index: int) -> HandlerContext:
        """The context of the request at ``index`` on its own (what ``validate`` gets); it cannot reply early."""
        return HandlerContext(self._node, self.tracking_ids[index], refuse_early_reply)

    def subset(self, indexes: list[int]) -> BatchContext:
        """The context of the batch made of the requests at ``indexes``."""
        return BatchContext(self._node, [self.tracking_ids[index] for index in indexes])

    def reply(self, message: Message) -> Any:
        """Not offered in batch mode: raises :class:`~krt_runner.errors.ReplyError` saying so."""
        raise ReplyError(NO_EARLY_REPLY)
