"""One JetStream delivery through the node (at-least-once mode): the default pipeline's steps, then one settlement.

The steps are :class:`~krt_runner.node.pipeline.Pipeline`'s (decode, handler, answer, error answer), with three
differences, and the default mode's per-message path stays as it was:

- the reply subject comes from the envelope alone: a JetStream message's own reply subject is its ack subject;
- a middle node publishes its answer through JetStream, with ``Nats-Msg-Id: <tracking_id>:<node>:<sequence of
  the input message in its stream>``, and acks its input only once the next stream acknowledged it. A delivery
  repeated after a crash has the same sequence, so its repeated publish is dropped by the next stream's
  duplicate window; a request its requester sent again (its answer lost with a connection) is a new message,
  and goes through;
- every path ends in one settlement (:mod:`~krt_runner.node.acking`): acked once answered, an error answer
  included (a handler's exception is an answer, never a redelivery loop); terminated after an error answer at
  the delivery limit; released for another delivery when the answer could not be published, or when the drain
  gave up on it (another replica answers it then, instead of an error).

The delivery limit: the consumer delivers a message ``KRT_JETSTREAM_MAX_DELIVER + 1`` times at most. Deliveries
up to the setting run the handler; a message delivered once more was never answered (each process that took it
died or lost its connection first), and gets an error answer saying so instead of the handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from krt_runner.config import Settings
from krt_runner.errors import (
    AnswerRefusedError,
    DeliveryLimitError,
    EnvelopeError,
    InvalidRequestError,
    PayloadTooLargeError,
)
from krt_runner.jetstream_names import msg_id_header
from krt_runner.measurements import Outcome
from krt_runner.node.acking import Acker, Settle
from krt_runner.node.broker import Msg
from krt_runner.node.cancelling import uncancel
from krt_runner.node.job import Job
from krt_runner.node.pipeline import Pipeline

_ANSWERED, _INVALID, _FAILED = Outcome.ANSWERED, Outcome.INVALID, Outcome.FAILED
_V1_TOKENS = 9  # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>


class _Released(Exception):
    """In place of the handler once the drain gave up: the message goes back to JetStream, unanswered."""


class JetStreamPipeline(Pipeline):
    """What a node in at-least-once mode does with each delivery; :meth:`handle_delivery` is called once per
    delivery by the intake."""

    def __init__(self, *, settings: Settings, acker: Acker, **parts: Any) -> None:
        super().__init__(settings=settings, **parts)
        self._acker = acker
        acker.on_refused = self._answer_refused
        self._forwards = not settings.is_last_node
        self._max_deliver = settings.jetstream_max_deliver
        self._node = parts["name"]
        self.counts["released"] = 0  # given back to JetStream unanswered, for another delivery
        self.last_sequence_taken = 0  # the highest stream sequence of the deliveries taken (see JetStreamIntake)

    async def handle_delivery(self, msg: Msg) -> None:
        """Process one delivery and settle it once (see the module)."""
        self.counts["received"] += 1
        job = Job("")  # the requester's inbox is in the envelope
        self.last_received = job.started
        outcome: Outcome | None = _ANSWERED  # None: handed back unanswered, no point (the answering delivery makes it)
        settle: Settle | None = self._acker.ack  # None: the acker acks it once its answer is acknowledged
        try:
            self._decode(job, msg.data)
            msg_id = f"{job.tracking_id}:{self._node}:{self._sequence_below_limit(msg.reply)}"
            result = await self._step(job)
            headers_size = len(msg_id_header(msg_id)) if self._forwards else 0
            subject, answer = self._answers.for_result(job, result, headers_size=headers_size)
            settle = await self._send(job, msg, subject, answer, msg_id)
            self.counts["answered"] += 1
        except (InvalidRequestError, EnvelopeError) as exc:  # refused before the handler ran
            outcome = _INVALID
            await self._answer_error(job, exc)
        except DeliveryLimitError as exc:
            outcome, settle = _FAILED, self._acker.term
            await self._answer_error(job, exc)
        except _Released:
            outcome, settle = None, self._release
        except Exception as exc:
            outcome = _FAILED
            await self._answer_error(job, exc)
        except asyncio.CancelledError:
            if not self._giving_up:
                raise
            uncancel()  # this task goes on: to release the messages still waiting
            outcome, settle = None, self._release
        finally:
            self._finish(job, outcome)
        if settle is not None:
            await settle(msg)

    def _finish(self, job: Job, outcome: Outcome | None) -> None:
        """As the pipeline's; a message handed back unanswered (``None``) makes no point: the delivery that answers
        it does, and a failure it is not."""
        if outcome is None:
            self.processing_ns += time.perf_counter_ns() - job.started
        else:
            super()._finish(job, outcome)

    def give_up(self) -> None:
        """``KRT_DRAIN_TIMEOUT`` ran out: handlers cancelled from now on, and messages not handled yet, go back to
        JetStream for another replica."""
        self._giving_up = True
        self._step = self._release_instead

    def _sequence_below_limit(self, ack_subject: str) -> str:
        """The message's sequence in its stream (the highest taken kept in ``last_sequence_taken``);
        :class:`DeliveryLimitError` past the delivery limit."""
        delivered, sequence = _delivery_numbers(ack_subject)
        self.last_sequence_taken = max(self.last_sequence_taken, int(sequence))
        if delivered > self._max_deliver:
            raise DeliveryLimitError(
                f"this request was delivered {_times(delivered - 1)} (KRT_JETSTREAM_MAX_DELIVER) and never answered: "
                "each node process that took it stopped or lost its connection first (killed, out of memory?), or "
                "the next node's stream did not store its answer (see this node's warnings); it is terminated"
            )
        return sequence

    async def _send(self, job: Job, msg: Msg, subject: str, answer: bytes, msg_id: str) -> Settle | None:
        """Publish the answer; how the message is to be settled then (``None``: by the acker, see
        :meth:`Acker.forward`)."""
        if not subject:
            self._note_unsent(job)
            return self._acker.ack
        if not self._forwards:
            await self.broker.publish(subject, answer)
        else:
            try:
                await self._acker.forward(subject, answer, msg_id, msg)
            except PayloadTooLargeError as exc:  # for good: an error answer, not another delivery
                raise PayloadTooLargeError(f"answer too large: {exc}") from None
            except Exception as exc:  # a closed connection, a full buffer: another delivery, later
                self.log.warning("answer not published; the message will be delivered again",
                                 tracking_id=job.tracking_id, error=str(exc))
                return self._acker.release_later
            return None
        if self._debug:
            self.log.debug("answer published", tracking_id=job.tracking_id, subject=subject)
        return self._acker.ack

    async def _answer_refused(self, msg: Msg, refusal: str) -> None:
        """The next stream refused this message's answer for good (or a subscriber there took it): its requester gets
        an error saying why (``refusal``), and the message is acked, not run again (its handler would only be refused
        again)."""
        job = Job("")
        with contextlib.suppress(InvalidRequestError, EnvelopeError):  # decoded once already: it cannot fail now
            self._decode(job, msg.data)
        refused = AnswerRefusedError(refusal)
        self.counts["answered"] -= 1  # counted once its answer was handed over: an error instead
        await self._answer_error(job, refused)
        await self._acker.ack(msg)

    async def _release(self, msg: Msg) -> None:
        self.counts["released"] += 1
        await self._acker.release(msg)

    async def _release_instead(self, job: Job) -> Any:
        raise _Released


def _delivery_numbers(ack_subject: str) -> tuple[int, str]:
    """How many times the message was delivered, and its sequence in its stream, from its ack subject (what
    nats-py's ``msg.metadata`` reads, without making the rest of it): ``$JS.ACK.<stream>.<consumer>.<delivered>.
    <stream seq>...``, or with ``<domain>.<account hash>`` after ``ACK`` (11 tokens and more)."""
    tokens = ack_subject.split(".")
    at = 4 if len(tokens) == _V1_TOKENS else 6
    return int(tokens[at]), tokens[at + 1]


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"
