"""``behaviours.py`` plus the hostile results of the bad-input and fault tests (async).

- ``oversized:N``  returns N random bytes (base64): over the max payload even gzip-compressed
- ``block:S``      blocks the event loop for S seconds (what a handler must never do)
- ``alloc:N``      allocates N bytes for the length of the call, then answers
"""

import base64
import os
import time

from behaviours import handler as behaviour
from behaviours import init, read_name
from greeter_pb2 import Request

__all__ = ["handler", "init"]
NODE = os.environ.get("KRT_NODE_NAME", "node")


async def handler(ctx, data):
    name = read_name(data)
    command, _, argument = name.partition(":")
    if command == "oversized":
        return Request(name=base64.b64encode(os.urandom(int(argument))).decode())
    if command == "block":
        time.sleep(float(argument))
    if command == "alloc":
        ballast = bytearray(int(argument))
        return Request(name=f"alloc:{len(ballast)}>{NODE}")
    return await behaviour(ctx, data)
