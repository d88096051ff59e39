"""A batch handler whose behaviour is chosen by the names of the requests in its batch.

Each answer's greeting is ``<name>@<call>/<size>``: the request's own name, the
number of the batch call and the size of that batch, so that a test can tell
batches apart. Every call's size is appended to the file ``BATCH_LOG`` names (one
line each), and the most batches ever running at once is in each greeting too.
"""

from __future__ import annotations

import asyncio
import os
import sys

from greeter_pb2 import Request, Response

CALLS = 0
RUNNING = 0
MOST_RUNNING = 0


def log_size(size: int) -> None:
    path = os.environ.get("BATCH_LOG")
    if path:
        with open(path, "a") as log:
            log.write(f"{size}\n")


async def handler_batch(ctx, requests: list[Request]) -> list[Response]:
    global CALLS, RUNNING, MOST_RUNNING
    CALLS += 1
    call, names = CALLS, [request.name for request in requests]
    log_size(len(requests))
    RUNNING += 1
    MOST_RUNNING = max(MOST_RUNNING, RUNNING)
    try:
        for name in names:
            if name.startswith("sleep:"):
                await asyncio.sleep(float(name.split(":")[1]))
        if "boom" in names:
            raise RuntimeError("boom for the whole batch")
        if "exit" in names:  # as a library's sys.exit() would
            sys.exit(3)
        if "reply" in names:
            await ctx.reply(Response(greeting="too early"))
        answers = [answer(name, call, len(names)) for name in names]
        return answers[:-1] if "short" in names else answers
    finally:
        RUNNING -= 1


def answer(name: str, call: int, size: int) -> Response | Exception | None:
    if name == "none":
        return None
    if name.startswith("fail"):
        return ValueError(f"cannot greet {name}")
    return Response(greeting=f"{name}@{call}/{size} most={MOST_RUNNING}")
