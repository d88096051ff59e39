"""One gRPC call to one NATS request: the request packed as KRE v1's entrypoint packed it, the answer mapped
to a status a client can act on.

Per call: a fresh ``tracking_id`` (also sent back in the trailing metadata
``krt-tracking-id``), the request bytes in the envelope's ``Any`` with the
exact type URL, one ``entrypoint`` tracking entry, gzip when over the
server's max payload, then a core request to the workflow's subject with a
timeout of ``KRT_REQUEST_TIMEOUT`` or the client's deadline, whichever is
sooner (``KRT_DELIVERY=at-least-once``: published through JetStream, the
answer awaited on the entrypoint's inbox, see
:mod:`krt_runner.jetstream_requests`). The request and answer bytes are
never re-encoded: the answer's payload bytes are the response.

=========================================  =====================
what happened                              status
=========================================  =====================
a node answered with an error              ``INTERNAL``, its text
no answer in time                          ``DEADLINE_EXCEEDED``
no node subscribed, or NATS disconnected   ``UNAVAILABLE``
the entrypoint is stopping                 ``UNAVAILABLE``
request too large even compressed          ``RESOURCE_EXHAUSTED``
request bytes not the rpc's request type   ``INVALID_ARGUMENT``
answer not the rpc's response type         ``INTERNAL``, both types
=========================================  =====================
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from krt_runner import envelope
from krt_runner.entrypoint.open_calls import OpenCalls
from krt_runner.entrypoint.service import Rpc
from krt_runner.envelope import KreNatsMessage
from krt_runner.errors import (
    CallError,
    CallTimeout,
    EnvelopeError,
    NoResponders,
    PayloadTooLargeError,
    UnexpectedAnswer,
)
from krt_runner.jetstream_requests import JetStreamRequests
from krt_runner.node.broker import Broker
from krt_runner.node.cancelling import uncancel
from krt_runner.requester_envelope import request_envelope

TRACKING_METADATA = "krt-tracking-id"
# Answers are gzip-inflated up to this many bytes unless KRT_MAX_DECOMPRESSED_BYTES says otherwise (a node's default).
MAX_ANSWER_BYTES = 64 * 1024 * 1024

Handler = Callable[[bytes, grpc.aio.ServicerContext[bytes, bytes]], Awaitable[bytes]]


# Answers up to this many bytes are parsed to check them: parsing builds the whole message, several times the answer's
# size in memory; a larger one is checked by its type name alone.
MAX_CHECKED_ANSWER = 4 << 20
_NAMED = 5  # required fields an error names, at most
# Bytes of a status's details, as gRPC sends them (percent-encoded in the trailers): clients refuse trailers over 8 KiB
# (grpcio's soft limit) or 16 KiB (its hard one), and grpc-js closes the connection past it; a node's error text
# (a KRE v1 node's is not cut) is cut to fit, its whole text in the "call failed" line.
MAX_DETAILS_BYTES = 4096


class Refused(Exception):
    """A call that ends with a status other than OK."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class Forwarder:
    """Turns calls of the entrypoint's rpcs into requests to their workflows, over one NATS connection."""

    def __init__(
        self, broker: Broker, *, request_timeout: float, logger: Any, jetstream: JetStreamRequests | None = None,
        max_answer_bytes: int = MAX_ANSWER_BYTES, debug: bool = False,
    ) -> None:
        self._broker = broker
        self._timeout = request_timeout
        self._max_answer = max_answer_bytes
        self._log = logger
        self._jetstream = jetstream  # at-least-once: calls go through JetStream
        self._debug = debug  # KRT_LOG_LEVEL=debug: a line when a call comes in and one when it is answered
        self.open_calls = OpenCalls()

    def handler_for(self, rpc: Rpc) -> Handler:
        """The unary handler of ``rpc``: request bytes in, response bytes out (no serializer either way)."""

        async def handle(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            tracking_id = str(uuid.uuid4())
            trailer = ((TRACKING_METADATA, tracking_id),)
            context.set_trailing_metadata(trailer)
            if self._debug:
                self._log.debug("call received", rpc=rpc.name, workflow=rpc.workflow, tracking_id=tracking_id)
            try:
                async with self.open_calls.call(context.peer()):  # abort() sends the status: it stays outside
                    response = await self._forward(rpc, request, tracking_id, self._time_left(context))
                if self._debug:
                    self._log.debug("call answered", rpc=rpc.name, workflow=rpc.workflow, tracking_id=tracking_id)
                return response
            except Refused as refused:
                failure = refused
            except asyncio.CancelledError:
                if not self.open_calls.gave_up:
                    raise
                uncancel()  # the drain's own cancellation: this call still gets its status and tracking id
                failure = Refused(grpc.StatusCode.UNAVAILABLE, "the entrypoint stopped: KRT_DRAIN_TIMEOUT ran out "
                                  "before the workflow answered")
            self._log.warning("call failed", rpc=rpc.name, workflow=rpc.workflow, tracking_id=tracking_id,
                              status=failure.code.name, details=failure.details)
            await context.abort(failure.code, fitted(failure.details), trailing_metadata=trailer)
            raise failure  # abort() raises; this line is for type checkers

        return handle

    def _time_left(self, context: grpc.aio.ServicerContext[bytes, bytes]) -> float:
        remaining: float | None = context.time_remaining()
        if remaining is None:
            return self._timeout
        if remaining <= 0:
            raise Refused(grpc.StatusCode.DEADLINE_EXCEEDED, "the client's deadline passed before the call was sent")
        return min(self._timeout, remaining)

    async def _forward(self, rpc: Rpc, request: bytes, tracking_id: str, timeout: float) -> bytes:
        if self.open_calls.stopping:  # a call that came in before the server stopped taking new ones
            raise Refused(grpc.StatusCode.UNAVAILABLE, "the entrypoint is stopping; try again")
        if not self._broker.is_connected:
            raise Refused(grpc.StatusCode.UNAVAILABLE, "the entrypoint is not connected to NATS; try again")
        message = self._envelope(rpc, request, tracking_id)
        try:
            reply = await self._send(rpc.subject, message, timeout)
        except (PayloadTooLargeError, CallError) as exc:
            raise _refusal(exc, rpc, timeout) from None
        if reply[:2] == envelope.GZIP_MAGIC:  # inflating takes a while: not on the loop, where every call waits
            return await asyncio.to_thread(_response, rpc, reply, self._max_answer)
        return _response(rpc, reply, self._max_answer)

    async def _send(self, subject: str, message: KreNatsMessage, timeout: float) -> bytes:
        max_payload = self._broker.max_payload
        if self._jetstream is not None:
            return await self._jetstream.request(subject, message, timeout=timeout, max_payload=max_payload)
        if len(message.payload.value) > max_payload:  # to be compressed: not on the loop either
            data = await asyncio.to_thread(envelope.encode, message, max_payload=max_payload)
        else:
            data = envelope.encode(message, max_payload=max_payload)
        return await self._broker.request(subject, data, timeout=timeout)

    def _envelope(self, rpc: Rpc, request: bytes, tracking_id: str) -> KreNatsMessage:
        try:
            rpc.request_class.FromString(request)
        except DecodeError as exc:
            name = rpc.request_type_url.rsplit("/", 1)[-1]
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"request is not a valid {name}: {exc}") from None
        payload = envelope.AnyMessage(type_url=rpc.request_type_url, value=request)
        return request_envelope(payload, tracking_id=tracking_id)


def fitted(details: str) -> str:
    """``details``, cut to :data:`MAX_DETAILS_BYTES` once percent-encoded as gRPC sends them, saying how long it was."""
    if _sent_size(details) <= MAX_DETAILS_BYTES:
        return details
    note = f"... (cut: {len(details)} characters in all, in the entrypoint's 'call failed' line)"
    budget, kept = MAX_DETAILS_BYTES - len(note), 0
    while kept < len(details) and budget >= _sent_size(details[kept]):  # at most MAX_DETAILS_BYTES turns
        budget -= _sent_size(details[kept])
        kept += 1
    return details[:kept] + note


# Bytes the grpc-message trailer carries as they are; any other is percent-encoded (3 bytes).
_PLAIN = bytes(byte for byte in range(0x20, 0x7F) if byte != ord("%"))


def _sent_size(text: str) -> int:
    """Bytes of ``text`` in the grpc-message trailer: UTF-8, percent-encoded but for printable ASCII."""
    raw = text.encode("utf-8", "replace")
    return len(raw) + 2 * len(raw.translate(None, _PLAIN))


def _refusal(exc: Exception, rpc: Rpc, timeout: float) -> Refused:
    """The status of a call whose request could not be sent, or was not answered."""
    if isinstance(exc, PayloadTooLargeError):
        return Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, f"request too large: {exc}")
    if isinstance(exc, NoResponders):
        details = f"no node of workflow {rpc.workflow!r} listens on {rpc.subject!r}: is the workflow running?"
        return Refused(grpc.StatusCode.UNAVAILABLE, details)
    if isinstance(exc, CallTimeout):
        details = f"workflow {rpc.workflow!r} did not answer within {timeout:g}s (KRT_REQUEST_TIMEOUT or deadline)"
        return Refused(grpc.StatusCode.DEADLINE_EXCEEDED, details)
    if isinstance(exc, UnexpectedAnswer):  # at-least-once here, at-most-once in the workflow
        return Refused(grpc.StatusCode.INTERNAL, str(exc))
    return Refused(grpc.StatusCode.UNAVAILABLE, str(exc))  # NotConnected, or JetStream refused the request


def _response(rpc: Rpc, reply: bytes, max_decompressed: int) -> bytes:
    """The answer's payload bytes when it is the rpc's response type; :class:`Refused` otherwise."""
    try:
        answer = envelope.decode(reply, max_decompressed=max_decompressed)
    except EnvelopeError as exc:
        if envelope.is_jetstream_ack(reply):
            details = (f"a JetStream stream took the call on {rpc.subject!r}, not a node: workflow {rpc.workflow!r} "
                       "runs at-least-once; start the entrypoint with KRT_DELIVERY=at-least-once too")
            raise Refused(grpc.StatusCode.INTERNAL, details) from None
        raise Refused(grpc.StatusCode.INTERNAL, f"the workflow's answer cannot be read: {exc}") from None
    if answer.error:
        raise Refused(grpc.StatusCode.INTERNAL, answer.error)
    payload = answer.payload
    if payload.type_url != rpc.response_type_url and not _same_type(payload.type_url, rpc.response_name):
        got = payload.type_url.rsplit("/", 1)[-1] or "an empty payload"
        details = f"the workflow answered {got}, not the rpc's response type {rpc.response_name}"
        raise Refused(grpc.StatusCode.INTERNAL, details)
    if len(payload.value) <= MAX_CHECKED_ANSWER:
        _check_bytes(rpc, payload.value)
    return payload.value


def _check_bytes(rpc: Rpc, value: bytes) -> None:
    """A node built elsewhere may label bytes that are not the type, which the client would fail on, untold."""
    answer = rpc.response_class()
    try:
        answer.ParseFromString(value)
    except DecodeError as exc:
        raise Refused(grpc.StatusCode.INTERNAL, f"the workflow's answer is not a valid {rpc.response_name}: "
                      f"{exc}") from None
    if not answer.IsInitialized():  # proto2's required fields
        raise Refused(grpc.StatusCode.INTERNAL, f"the workflow's answer is not a valid {rpc.response_name}: "
                      f"required fields missing: {_missing(answer)}")


def _missing(answer: Message) -> str:
    """A few of the required fields ``answer`` lacks, by name (those of its own; upb's full list of every nested
    one can be millions long)."""
    missing = [field.name for field in answer.DESCRIPTOR.fields
               if field.is_required and not answer.HasField(field.name)]
    if not missing:
        return "in a message it holds"
    return ", ".join(missing[:_NAMED]) + (f" and {len(missing) - _NAMED} more" if len(missing) > _NAMED else "")


def _same_type(type_url: str, full_name: str) -> bool:
    """Any's rule: only the part after the last '/' names the type (any host prefix will do)."""
    return type_url.rsplit("/", 1)[-1] == full_name
