"""One request from the command line: its JSON read, sent, and its answer printed; shared by ``call`` and ``up``."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from google.protobuf.message import Message

from krt_runner.client import Client
from krt_runner.errors import EXIT_FAILED, EXIT_OK, CallError, ErrorAnswer
from krt_runner.krt.protos import to_json


def read_request(text: str) -> str:
    """The request JSON: ``text`` itself, or the contents of file ``F`` when ``text`` is ``@F``."""
    return Path(text[1:]).read_text(encoding="utf-8") if text.startswith("@") else text


async def send_one(
    client: Client,
    subject: str,
    request: Message,
    response_type: type[Message],
    *,
    timeout: float,
    out: TextIO,
    err: TextIO,
    command: str = "call",
) -> int:
    """Send ``request``; print the answer as JSON on ``out``, or the error on ``err`` (as ``krt-runner command``).
    Returns the exit code."""
    try:
        answer = await client.call(subject, request, response_type, timeout=timeout)
    except ErrorAnswer as exc:
        print(f"error answer (tracking_id {exc.tracking_id}): {exc.error}", file=err)
        return EXIT_FAILED
    except CallError as exc:
        print(f"krt-runner {command}: {exc}", file=err)
        return EXIT_FAILED
    print(_printable(to_json(answer), answer, out), file=out, flush=True)
    return EXIT_OK


def _printable(text: str, answer: Message, out: TextIO) -> str:
    """``text``, or the answer with its text escaped when ``out`` cannot show it (an ASCII or Latin-1 terminal)."""
    try:
        text.encode(getattr(out, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return to_json(answer, ascii_only=True)
    return text
