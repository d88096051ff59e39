"""``behaviours_sync.py`` plus slow results for the timeout tests (sync, on worker threads).

- ``sleep:S``       sleeps S seconds, then returns a result (late, when over KRT_HANDLER_TIMEOUT)
- ``late-reply:S``  sleeps S seconds, then calls ctx.reply() (late, when over KRT_HANDLER_TIMEOUT)
- ``stop-iteration`` raises StopIteration, which an asyncio future refuses to carry
"""

import os
import time

from behaviours_sync import handler as behaviour
from behaviours_sync import init, read_name
from greeter_pb2 import Request

__all__ = ["handler", "init"]
NODE = os.environ.get("KRT_NODE_NAME", "node")


def handler(ctx, data):
    name = read_name(data)
    command, _, argument = name.partition(":")
    if command == "sleep":
        time.sleep(float(argument))
        return Request(name=f"late result>{NODE}")
    if command == "late-reply":
        time.sleep(float(argument))
        ctx.reply(Request(name=f"late reply>{NODE}"))
        return Request(name=f"after late reply>{NODE}")
    if command == "stop-iteration":
        raise StopIteration("no more")
    return behaviour(ctx, data)
