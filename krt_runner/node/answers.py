"""Outcome -> answer: the bytes a message's requester or the next node gets, for a result, an early reply or an error.

The request becomes the answer: its tracking gets this node's entry (``start``
when the message arrived, ``end`` now) and its payload the result. An error
answer is a new envelope with the same ``tracking_id``, ``reply`` and tracking,
and an ``error`` text that names the node and the cause.
"""

from __future__ import annotations

import time
from typing import Any

from google.protobuf.message import Message

from krt_runner import envelope
from krt_runner.envelope import KreNatsMessage
from krt_runner.errors import (
    EnvelopeError,
    InvalidResultError,
    KrtRunnerError,
    PayloadTooLargeError,
    ReplyError,
    describe,
)
from krt_runner.node.broker import Broker
from krt_runner.node.job import Job
from krt_runner.subjects import MAX_PUBLISH_SUBJECT

# An error answer must fit any server's max payload, whatever the exception says.
_MAX_ERROR_TEXT = 8192


class Answers:
    """Builds this node's answers; the broker's max payload is read when an answer is encoded (it can change on
    reconnect)."""

    def __init__(self, *, node_name: str, output_subject: str, broker: Broker, handler_name: str = "handler") -> None:
        self._name = node_name
        self._handler_name = handler_name  # what returned the result, in the error answer
        self._output = output_subject
        self._broker = broker

    def for_result(self, job: Job, result: Any, *, headers_size: int = 0) -> tuple[str, bytes]:
        """Where the answer to ``result`` goes and its bytes; ``("", b"")`` when it goes nowhere. ``headers_size``:
        what the publish's headers take of the max payload."""
        request = job.request
        assert request is not None
        if not isinstance(result, Message):
            if result is None and not self._output and request.replied:
                return "", b""  # the last node's None after an early reply: nothing more to send, as in KRE v1
            raise InvalidResultError(f"{self._handler_name} returned {_type_name(result)}, not a protobuf message")
        request.reply = job.reply
        if request.error:  # a stray incoming error must not mark the answer failed
            request.error = ""
        add_own_entry(job.tracking, self._name, job.started_ns)
        envelope.pack_into(request.payload, result)
        subject = self._output or ("" if request.replied else job.reply)
        if not subject:
            return "", b""
        try:
            return subject, envelope.encode(request, max_payload=self._broker.max_payload - headers_size)
        except PayloadTooLargeError as exc:
            raise PayloadTooLargeError(f"answer too large: {exc}") from None

    def early(self, job: Job, message: Message) -> bytes:
        """An early answer (``ctx.reply``) for the requester, marked ``replied``."""
        if not isinstance(message, Message):
            raise ReplyError(f"ctx.reply() takes a protobuf message, not {_type_name(message)}")
        answer = self._new_envelope(job)
        answer.replied = True
        envelope.pack_into(answer.payload, message)
        return envelope.encode(answer, max_payload=self._broker.max_payload)

    def error_text(self, exc: Exception) -> str:
        """``error in node 'X': <cause>``, cut to a size any server accepts."""
        return _shortened(f"error in node '{self._name}': {_cause(exc)}")

    def for_error(self, job: Job, text: str) -> bytes:
        """An error answer, compressed as answers are; without the tracking when even that is too large."""
        answer = self._new_envelope(job)
        answer.error = text
        try:
            return envelope.encode(answer, max_payload=self._broker.max_payload)
        except PayloadTooLargeError:
            del answer.tracking[:]
            return answer.SerializeToString()  # the error text is bounded: this fits

    def _new_envelope(self, job: Job) -> KreNatsMessage:
        request = job.request
        answer = KreNatsMessage(tracking_id=request.tracking_id if request else "", reply=job.reply)
        if request is not None:
            answer.tracking.extend(request.tracking[: job.hops])
        add_own_entry(answer.tracking, self._name, job.started_ns)
        return answer


def add_own_entry(tracking: Any, node_name: str, started_ns: int) -> None:
    """This node's tracking entry, from ``started_ns`` to now (filled field by field: cheaper than keywords)."""
    entry = tracking.add()
    entry.node_name = node_name
    entry.start = envelope.timestamp_ns(started_ns)
    entry.end = envelope.timestamp_ns(time.time_ns())


def publishable(subject: str) -> str:
    """The envelope's reply subject, if one may publish to it; an EnvelopeError otherwise.

    What may follow PUB: no whitespace or control characters (a CR LF in it would inject protocol lines),
    no wildcards, no empty tokens, and nothing so long that the server would refuse the line and close the
    connection. Plain string checks: this runs once per message on every node but the first.
    """
    if len(subject) > MAX_PUBLISH_SUBJECT:
        raise EnvelopeError(f"the envelope's reply subject {subject[:40]!r}... is {len(subject)} characters, over the "
                            f"{MAX_PUBLISH_SUBJECT} this node publishes to: it cannot be answered")
    if subject and not (
        subject.isprintable()  # False for CR, LF, tab and the other control and Unicode space characters
        and " " not in subject
        and "*" not in subject
        and ">" not in subject
        and ".." not in subject
        and subject[0] != "."
        and subject[-1] != "."
    ):
        raise EnvelopeError(f"the envelope's reply subject {subject[:120]!r} is not a valid NATS subject")
    return subject


def _cause(exc: Exception) -> str:
    if isinstance(exc, KrtRunnerError):
        return str(exc)
    return f"internal error {describe(exc)}"


def _shortened(text: str) -> str:
    if len(text) <= _MAX_ERROR_TEXT:
        return text
    return f"{text[:_MAX_ERROR_TEXT]}... ({len(text) - _MAX_ERROR_TEXT} more characters)"


def _type_name(value: Any) -> str:
    return "None" if value is None else f"a {type(value).__module__}.{type(value).__qualname__}"
