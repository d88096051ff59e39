"""What the NATS server tells a node about messages lost on its way: those it dropped because the node could not take
them in time (a slow consumer) and the publishes it refused (a permissions violation). Each is counted for the
``stopped`` line and logged at most once per interval of the broker's."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from krt_runner.errors import AnswerRefusedError

# How nats-server words a publish it does not allow (nats-py passes its -ERR on, lower-cased).
_PUBLISH_REFUSED = re.compile(r'permissions violation for publish to "(.*)"', re.IGNORECASE)
# Seconds a refused output subject is not published to (its messages answered with an error) before trying again.
OUTPUT_RETRY = 10.0

Publish = Callable[[str, bytes], "Awaitable[None] | None"]


class _Broker(Protocol):
    publish_now: Publish


class SlowConsumerDrops:
    """Messages the server dropped for this node: counted, told in one line per interval (the rest of a burst once
    the interval is over)."""

    def __init__(self, log: Any, log_due: Callable[[], bool], interval: float, limits: dict[str, int]) -> None:
        self._log = log
        self._log_due = log_due
        self._interval = interval
        self._limits = limits  # the pending limits, named in the line
        self.count = 0
        self._told = 0  # drops a log line has counted
        self._follow_up: asyncio.TimerHandle | None = None

    def add(self) -> None:
        self.count += 1
        if self._log_due():
            self._tell()
        elif self._follow_up is None:
            self._follow_up = asyncio.get_running_loop().call_later(self._interval, self._tell)

    def _tell(self) -> None:
        self._follow_up = None
        if self.count == self._told:
            return
        self._told = self.count
        self._log.error("slow consumer: NATS dropped messages this node could not take in time",
                        dropped_total=self.count, **self._limits)


class PublishRefusals:
    """Publishes the server refused, each an answer lost after it was counted ``answered``.

    A refused output subject loses every answer a middle node passes on. For :data:`OUTPUT_RETRY` seconds from the
    refusal, the broker's ``publish_now`` then raises :class:`AnswerRefusedError` for that subject, so that each
    message is answered with an error naming the refusal instead; then it publishes again (a refusal again starts
    another spell).
    """

    def __init__(self, broker: _Broker, log: Any, log_due: Callable[[], bool]) -> None:
        self._broker = broker
        self._log = log
        self._log_due = log_due
        self.output = ""  # the node's output subject ("" on a last node, and for the entrypoint)
        self.count = 0
        self._refusal = ""  # the server's words, while the output subject is not published to

    def take(self, error: str) -> bool:
        """Whether ``error`` is a refused publish (then counted and told)."""
        refused = _PUBLISH_REFUSED.search(error)
        if refused is None:
            return False
        self.count += 1
        subject = refused.group(1)  # lower-cased, as nats-py gives the server's words
        if self.output and subject == self.output.lower():
            self._refuse_output(error)
        elif self._log_due():
            self._log.error("NATS refused a publish of this node's (give its NATS user publish permission on the "
                            "subject)", subject=subject[:200], error=error[:300], refused_publishes=self.count)
        return True

    def _refuse_output(self, error: str) -> None:
        if self._refusal:
            return
        self._refusal = error
        publish, output = self._broker.publish_now, self.output

        def refusing(subject: str, payload: bytes) -> Awaitable[None] | None:
            if subject == output:
                raise AnswerRefusedError(f"NATS refuses this node's publishes to its output subject {output!r} "
                                         f"({error}): the answer was not passed on")
            return publish(subject, payload)

        self._broker.publish_now = refusing
        asyncio.get_running_loop().call_later(OUTPUT_RETRY, self._publish_again, publish)
        self._log.error(f"NATS refuses this node's publishes to its output subject: the answers it passed on are "
                        f"lost; for {OUTPUT_RETRY:g}s each message is answered with an error instead, then publishing "
                        "is tried again (give the node's NATS user publish permission on it)", subject=output,
                        error=error, refused_publishes=self.count)

    def _publish_again(self, publish: Publish) -> None:
        self._broker.publish_now = publish
        self._refusal = ""
