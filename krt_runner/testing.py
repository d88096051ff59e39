"""Test a node's ``init`` and ``handler`` in-process, with plain pytest: no NATS, no InfluxDB.

::

    from krt_runner.testing import run_node

    def test_greet_says_hello():
        with run_node("examples/greeter", "src/greet.py") as node:   # loads the module, runs init
            answer = node.call(Request(name="Ada"), Response)          # runs handler once
        assert answer.greeting == "Hello, Ada!"
        assert node.points[0].measurement == "greetings"

The handler gets a real :class:`~krt_runner.node.context.HandlerContext`: the same
``set``/``get`` store, ``path``, logger and measurement checks as in a running
node; sync functions run on a worker thread as they do there. Measurements are
kept in memory (:attr:`NodeUnderTest.points`, :attr:`NodeUnderTest.lines`) and
early replies in :attr:`NodeUnderTest.replies`. A handler that raises raises
here too, with its own traceback. :meth:`NodeUnderTest.call_batch` calls a batch
function (``handler_batch``, ``process_batch``) once with a list of requests.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.message import Message

from krt_runner import envelope
from krt_runner.config import setting_from_env
from krt_runner.errors import BatchResultError, InvalidRequestError
from krt_runner.logging import node_logger
from krt_runner.measurements import Measurement, MemorySink
from krt_runner.mongo.memory import MemoryStore
from krt_runner.mongo.prediction import PREDICTIONS_COLLECTION
from krt_runner.mongo.wire import SavedDocument
from krt_runner.node.batch_context import BatchContext
from krt_runner.node.batch_results import Validated, answerable, outcomes
from krt_runner.node.calling import Caller
from krt_runner.node.context import HandlerContext, NodeState
from krt_runner.node.data_context import DataServices
from krt_runner.node.request_types import unpack_request
from krt_runner.node.user_code import UserCode, load_user_code

__all__ = ["NodeUnderTest", "SavedDocument", "SavedPoint", "run_node"]

ResponseT = TypeVar("ResponseT", bound=Message)


@dataclass(frozen=True)
class SavedPoint:
    """One ``ctx.measurement.save`` call, as the handler made it (the ``version`` tag included)."""

    measurement: str
    fields: dict[str, Any]
    tags: dict[str, Any] = field(default_factory=dict)


class _RecordingMeasurement(Measurement):
    def __init__(self, *, sink: MemorySink, version: str, points: list[SavedPoint]) -> None:
        super().__init__(sink=sink, version=version)
        self._points = points
        self._tagged_version = version

    def save(
        self,
        measurement: str,
        fields: Mapping[str, Any],
        tags: Mapping[str, Any] | None = None,
        time: datetime | timedelta | str | int | float | None = None,
        precision: str = Measurement.NS,
    ) -> None:
        super().save(measurement, fields, tags, time, precision)  # the same checks as in a node
        self._points.append(SavedPoint(measurement, dict(fields), {**(tags or {}), "version": self._tagged_version}))


class NodeUnderTest:
    """A loaded handler module with its context; made by :func:`run_node`."""

    def __init__(
        self, code: UserCode, *, base_path: Path, node_name: str, workflow: str, version: str, version_id: str = ""
    ) -> None:
        self.code = code
        self.points: list[SavedPoint] = []
        self.replies: list[Message] = []
        self._sink = MemorySink()
        logger = node_logger(node=node_name, workflow=workflow, version=version)
        measurement = _RecordingMeasurement(sink=self._sink, version=version, points=self.points)
        self._documents = MemoryStore()
        data = DataServices(writer=self._documents, reader=self._documents, version=version, version_id=version_id)
        self.state = NodeState(base_path=base_path, logger=logger, measurement=measurement, data=data)
        self._caller = Caller(workers=1)
        self._loop = asyncio.new_event_loop()
        self.state.loop = self._loop

    @property
    def lines(self) -> list[str]:
        """Every point saved, in InfluxDB line protocol, as a node would write it."""
        return self._sink.lines

    @property
    def saved(self) -> list[SavedDocument]:
        """Every document ``ctx.db.save`` and ``ctx.prediction.save`` sent, in order, as ``(coll, doc)`` named
        tuples (``.coll``, ``.doc``), each document as the mongo-writer would read it (through JSON)."""
        return self._documents.saved

    @property
    def predictions(self) -> list[dict[str, Any]]:
        """The documents ``ctx.prediction.save`` sent (those of :attr:`saved` in ``classificationMetrics``)."""
        return [saved.doc for saved in self._documents.saved if saved.coll == PREDICTIONS_COLLECTION]

    @property
    def store(self) -> dict[str, Any]:
        """What ``ctx.set`` stored."""
        return self.state.store

    def init(self) -> None:
        """Run the module's ``init(ctx)``, if it has one (:func:`run_node` does this for you)."""
        if self.code.init is not None:
            self._loop.run_until_complete(self._caller.call(self.code.init, self.state.context_for_init()))

    def call(
        self, request: Message, response_type: type[ResponseT] | None = None, *, tracking_id: str | None = None
    ) -> Any:
        """Run ``handler(ctx, data)`` once with ``request`` packed in ``Any``; return its result.

        A typed handler or a Processor gets ``request`` unpacked into its
        request class, as in a node; a request of another type, or one its
        ``validate`` rejects, raises :class:`~krt_runner.errors.InvalidRequestError`.
        With ``response_type``, the result (or an ``Any`` holding one) is
        returned as that type, and anything else fails the test with a
        ``TypeError`` naming what came back. Without it, a result that is no
        protobuf message (``None`` after an early reply aside) fails the same way,
        as a running node would answer it with an error.
        """
        tracking = tracking_id or str(uuid.uuid4())
        ctx = HandlerContext(self.state, tracking, self._capture_reply, envelope.KreNatsMessage(tracking_id=tracking))
        result = self._loop.run_until_complete(self._caller.call(self.code.handler, ctx, self._data(request)))
        if response_type is not None:
            return _as_type(result, response_type)
        if not isinstance(result, Message) and not (result is None and self.replies):
            raise TypeError(f"handler returned {type(result).__name__}, not a protobuf message: a running node "
                            "answers that with an error")
        return result

    def call_batch(
        self, requests: Sequence[Message], response_type: type[ResponseT] | None = None, *,
        tracking_ids: Sequence[str] | None = None,
    ) -> list[Any]:  # fmt: skip
        """Run the batch function (``handler_batch``, or a Processor's ``process_batch``) once with ``requests``, as
        a node calls it, whatever ``KRT_BATCH_MAX_SIZE`` says; return one item per request, in order.

        Each item is the request's result (as ``response_type`` when given, as :meth:`call` does), or, as a node
        answers that request alone with an error, an exception instance: the one the batch function returned in
        its place; an :class:`~krt_runner.errors.InvalidRequestError` for a request of another type (left out of
        the batch) or one a Processor's ``validate`` rejected; an :class:`~krt_runner.errors.InvalidResultError`
        for a result that is no protobuf message. An exception out of the call raises here with its traceback; a
        wrong number of results raises :class:`~krt_runner.errors.BatchResultError` naming both counts. A node
        never calls the function with no request: an empty ``requests`` is a ``ValueError``.
        """
        batch = self.code.batch
        if batch is None:
            raise TypeError(f"{self.code.source} defines no handler_batch(ctx, requests) and no Processor."
                            "process_batch(self, ctx, requests): call() runs its handler")
        if not requests:
            raise ValueError("call_batch() takes at least one request: a node never calls a batch function with none")
        ids = list(tracking_ids) if tracking_ids is not None else [str(uuid.uuid4()) for _ in requests]
        items, called, data = self._batch_data(requests)
        if not called:
            return items
        context = BatchContext(self.state, [ids[index] for index in called])
        returned = self._loop.run_until_complete(self._caller.call(batch.call, context, data))
        if isinstance(returned, Validated) and returned.error is not None:
            raise returned.error
        results = outcomes(batch.name, returned, len(called))
        wrong_count = next((result for result in results if isinstance(result, BatchResultError)), None)
        if wrong_count is not None:
            raise wrong_count
        for index, result in zip(called, answerable(batch.name, results), strict=True):
            typed = response_type is not None and not isinstance(result, Exception)
            items[index] = _as_type(result, response_type, batch.name) if typed and response_type else result
        return items

    def _batch_data(self, requests: Sequence[Message]) -> tuple[list[Any], list[int], list[Any]]:
        """One item per request (an :class:`InvalidRequestError` for one of another type, left out of the batch),
        the indexes of the others, and what the batch function gets for them."""
        items: list[Any] = [None] * len(requests)
        called: list[int] = []
        data = []
        for index, request in enumerate(requests):
            try:
                data.append(self._data(request))
            except InvalidRequestError as exc:
                items[index] = exc
            else:
                called.append(index)
        return items, called, data

    def _data(self, request: Message) -> Any:
        """What the code gets for ``request``: unpacked into its request class, or the Any."""
        if self._loop.is_closed():
            raise RuntimeError("this node was stopped at the end of its run_node block: call it inside the block")
        if not isinstance(request, Message):
            raise TypeError(f"a request is a protobuf message, not {type(request).__name__}")
        payload = envelope.pack(request)
        return unpack_request(payload, self.code.request_type) if self.code.request_type else payload

    async def _capture_reply(self, request: Any, message: Message) -> None:
        self.replies.append(message)
        if isinstance(request, envelope.KreNatsMessage):  # the request's envelope, as ctx.__request_msg__ shows it
            request.replied = True

    def close(self) -> None:
        """Stop the worker thread and the event loop."""
        self._caller.close()
        self._loop.close()


def _as_type(result: Any, response_type: type[ResponseT], function: str = "handler") -> ResponseT:
    if isinstance(result, response_type):
        return result
    if isinstance(result, envelope.AnyMessage):
        unpacked = response_type()
        if result.Unpack(unpacked):
            return unpacked
        raise TypeError(f"{function} returned an Any holding {result.type_url}, not {response_type.__name__}")
    raise TypeError(f"{function} returned {type(result).__name__}, not {response_type.__name__}")


@contextmanager
def run_node(
    base_path: Path | str,
    handler: str,
    *,
    node_name: str = "",
    workflow: str = "test",
    version: str = "test",
    version_id: str = "test",
    protobuf_compat: bool | None = None,
) -> Iterator[NodeUnderTest]:
    """Load ``handler`` (relative to ``base_path``, as ``KRT_HANDLER_PATH``), run ``init``, yield the node.

    ``version`` and ``version_id`` are ``KRT_VERSION`` and ``KRT_VERSION_ID``: the version tag of the points, the
    ``versionName`` and ``versionId`` of the predictions. ``protobuf_compat`` (default: ``KRT_PROTOBUF_COMPAT``, on)
    lets KRE v1 code call ``MessageToDict`` and ``MessageToJson`` with ``including_default_value_fields``, as a node
    does; it is set for the whole process.
    """
    base = Path(base_path).resolve()
    compat = setting_from_env("protobuf_compat") if protobuf_compat is None else protobuf_compat
    code = load_user_code(handler, base, protobuf_compat=compat)
    node = NodeUnderTest(code, base_path=base, node_name=node_name or code.name, workflow=workflow, version=version,
                         version_id=version_id)
    try:
        node.init()
        yield node
    finally:
        node.close()
