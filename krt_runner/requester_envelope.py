"""The requester's side of the envelope: the request a KRE v1 entrypoint sends, and what its answer holds.

Shared by :mod:`krt_runner.client` and the gRPC entrypoint.
"""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

from google.protobuf.message import Message

from krt_runner import envelope
from krt_runner.envelope import KreNatsMessage
from krt_runner.errors import EnvelopeError, ErrorAnswer, UnexpectedAnswer

ResponseT = TypeVar("ResponseT", bound=Message)
# Answers are gzip-inflated up to this many bytes, as a node's default KRT_MAX_DECOMPRESSED_BYTES.
_MAX_ANSWER_BYTES = 64 * 1024 * 1024


def request_envelope(request: Message, *, tracking_id: str | None = None) -> KreNatsMessage:
    """The ``KreNatsMessage`` a KRE v1 entrypoint sends: a fresh tracking id and an ``entrypoint`` entry."""
    if not isinstance(request, Message):
        raise TypeError(f"a request is a protobuf message (such as the workflow's request type), not "
                        f"{type(request).__name__}")
    started = envelope.timestamp()
    message = KreNatsMessage(tracking_id=tracking_id or str(uuid.uuid4()))
    envelope.pack_into(message.payload, request)
    message.tracking.add(node_name="entrypoint", start=started, end=envelope.timestamp())
    return message


def check_timeout(timeout: Any) -> None:
    """A call's timeout: a number of seconds above 0; raises TypeError or ValueError."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout is a number of seconds, not {type(timeout).__name__}")
    if not timeout > 0:
        raise ValueError(f"timeout must be above 0 seconds, not {timeout}")


def unpack_answer(answer: KreNatsMessage, response_type: type[ResponseT]) -> ResponseT:
    """The answer's payload as ``response_type``; raises :class:`ErrorAnswer` or :class:`UnexpectedAnswer`."""
    if answer.error:
        raise ErrorAnswer(answer.error, tracking_id=answer.tracking_id)
    response = response_type()
    if not answer.payload.Unpack(response):
        got = answer.payload.type_url.rsplit("/", 1)[-1] or "an empty payload"
        raise UnexpectedAnswer(f"answer is {got}, not the expected {response.DESCRIPTOR.full_name}")
    return response


def decoded_answer(data: bytes, subject: str) -> KreNatsMessage:
    """The answer's envelope; :class:`UnexpectedAnswer` for anything else, such as JetStream's acknowledgement when
    the subject is a stream's (its workflow runs at-least-once and this client does not)."""
    try:
        return envelope.decode(data, max_decompressed=_MAX_ANSWER_BYTES)
    except EnvelopeError as exc:
        if envelope.is_jetstream_ack(data):
            raise UnexpectedAnswer(
                f"a JetStream stream took the request on {subject!r}, not a node: its workflow runs at-least-once; "
                "call it with delivery='at-least-once' (krt-runner call --delivery at-least-once). The stored "
                "request is still handled; its answer has nowhere to go"
            ) from None
        raise UnexpectedAnswer(f"the answer on {subject!r} is not a KreNatsMessage: {exc}") from None
