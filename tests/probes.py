"""Watching a node from outside: every answer per request, duplicates, memory.

The reliability tests send each request with its own reply subject under one
wildcard inbox, so a second answer to any request is seen, however late.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import nats
from conftest import synced
from nats.aio.msg import Msg

from krt_runner.envelope import KreNatsMessage, decode

# Answers are decoded with a cap far above anything a node may send.
_ANSWER_CAP = 256 * 1024 * 1024


@dataclass
class Answer:
    at: float  # time.monotonic() when it arrived
    message: KreNatsMessage


@dataclass
class AnswerLog:
    """Requests sent through one NATS client and every answer each of them got."""

    nc: nats.NATS
    prefix: str = ""
    sent: dict[str, float] = field(default_factory=dict)  # reply subject -> time sent
    answers: dict[str, list[Answer]] = field(default_factory=dict)
    undecodable: int = 0
    no_responders: int = 0  # the server's own 503 status for a request nobody was subscribed to take
    _counter: itertools.count = field(default_factory=itertools.count)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> AnswerLog:
        self.prefix = self.nc.new_inbox()
        await self.nc.subscribe(f"{self.prefix}.*", cb=self._on_answer)
        await synced(self.nc)
        return self

    async def _on_answer(self, msg: Msg) -> None:
        if not msg.data and msg.headers and msg.headers.get("Status") == "503":
            self.no_responders += 1
            return
        try:
            message = decode(msg.data, max_decompressed=_ANSWER_CAP)
        except Exception:
            self.undecodable += 1
            return
        self.answers.setdefault(msg.subject, []).append(Answer(time.monotonic(), message))
        self._arrived.set()

    async def send(self, subject: str, data: bytes) -> str:
        """Publish ``data`` as a request; returns its reply subject."""
        reply = f"{self.prefix}.{next(self._counter)}"
        self.sent[reply] = time.monotonic()
        await self.nc.publish(subject, data, reply=reply)
        return reply

    async def first_answer(self, reply: str, *, timeout: float = 10.0) -> KreNatsMessage:
        deadline = time.monotonic() + timeout
        while not self.answers.get(reply):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no answer to {reply} within {timeout}s")
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout=min(remaining, 0.1))
        return self.answers[reply][0].message

    async def wait_answered(self, replies: list[str], *, timeout: float) -> None:
        """Wait until each of ``replies`` has an answer, or ``timeout`` passes (no error)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(not self.answers.get(reply) for reply in replies):
            await asyncio.sleep(0.05)

    def count(self, reply: str) -> int:
        return len(self.answers.get(reply, []))

    @property
    def answered(self) -> int:
        return sum(1 for reply in self.sent if self.answers.get(reply))

    @property
    def duplicates(self) -> dict[str, int]:
        return {reply: len(got) for reply, got in self.answers.items() if len(got) > 1}

    @property
    def total_answers(self) -> int:
        return sum(len(got) for got in self.answers.values())


def proc_status(pid: int, key: str) -> int:
    """A ``kB`` line of /proc/<pid>/status (``VmRSS``, ``VmHWM``) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def rss(pid: int) -> int:
    return proc_status(pid, "VmRSS")


def peak_rss(pid: int) -> int:
    return proc_status(pid, "VmHWM")


def summary_line(output: str) -> dict[str, object]:
    """The node's ``stopped`` summary line (JSON logs)."""
    for line in output.splitlines():
        if '"stopped"' in line:
            parsed: dict[str, object] = json.loads(line)
            return parsed
    raise AssertionError(f"no summary line in:\n{output}")


MB = 1024 * 1024
