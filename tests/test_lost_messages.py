"""What the server says a node lost: refused publishes (the integration is in test_hostile_input.py), counted, told,
and a refused output subject answered with errors for a spell, then published to again."""

from __future__ import annotations

import asyncio

import pytest

from krt_runner.errors import AnswerRefusedError
from krt_runner.node import lost_messages
from krt_runner.node.lost_messages import PublishRefusals

REFUSED = 'nats: permissions violation for publish to "{}"'


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict]] = []

    def error(self, event: str, **fields: object) -> None:
        self.lines.append((event, fields))


class Broker:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.publish_now = self.send

    def send(self, subject: str, payload: bytes) -> None:
        self.sent.append(subject)


async def test_a_refused_output_subject_refuses_for_a_spell_then_publishes_again(monkeypatch):
    monkeypatch.setattr(lost_messages, "OUTPUT_RETRY", 0.05)
    broker, log = Broker(), Log()
    refusals = PublishRefusals(broker, log, lambda: True)
    refusals.output = "Next.Node"

    assert refusals.take(REFUSED.format("next.node")) and refusals.take(REFUSED.format("next.node"))  # nats-py's case
    with pytest.raises(AnswerRefusedError, match=r"output subject 'Next\.Node'"):
        broker.publish_now("Next.Node", b"answer")
    broker.publish_now("_INBOX.x", b"error answer")
    await asyncio.sleep(0.2)
    broker.publish_now("Next.Node", b"answer")

    assert broker.sent == ["_INBOX.x", "Next.Node"]
    assert refusals.count == 2
    told = [event.split(":")[0] for event, _ in log.lines]
    assert told == ["NATS refuses this node's publishes to its output subject"]


def test_a_refused_reply_subject_is_counted_and_told_and_nothing_else_changes():
    broker, log = Broker(), Log()
    refusals = PublishRefusals(broker, log, lambda: True)
    refusals.output = "next"

    assert refusals.take(REFUSED.format("_INBOX.asker"))
    assert not refusals.take("nats: permissions violation for subscription to \"in\"")

    assert broker.publish_now == broker.send and refusals.count == 1
    assert log.lines[0][1]["subject"] == "_INBOX.asker"
