"""A test handler for at-least-once delivery: it writes one line per call to ``CALL_LOG`` before doing anything.

The line (``node pid tracking_id name``) is written with one unbuffered append, so a process SIGKILLed right
after still leaves it: the tests count from it how many times each request's handler ran. The request's name
chooses what else happens: ``boom`` raises, ``die`` kills this process, ``sleep:S`` awaits S seconds, ``early``
answers the requester at once (``ctx.reply``); every other name waits ``KRT_TEST_DELAY`` seconds (default 0).
Each answers ``<name>><node>``.
"""

import asyncio
import os
import signal

from greeter_pb2 import Request

NODE = os.environ.get("KRT_NODE_NAME", "node")
CALL_LOG = os.environ["CALL_LOG"]
DELAY = float(os.environ.get("KRT_TEST_DELAY", "0"))


def _log_call(tracking_id, name):
    descriptor = os.open(CALL_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(descriptor, f"{NODE} {os.getpid()} {tracking_id} {name}\n".encode())
    finally:
        os.close(descriptor)


async def handler(ctx, data):
    request = Request()
    data.Unpack(request)
    name = request.name
    _log_call(ctx.tracking_id, name)
    command, _, argument = name.partition(":")
    if command == "boom":
        raise ValueError("boom requested")
    if command == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if command == "early":
        await ctx.reply(Request(name=f"early from {NODE}"))
    if command == "sleep":
        await asyncio.sleep(float(argument.split(">")[0]))  # on later nodes too: "sleep:2>a"
    elif DELAY:
        await asyncio.sleep(DELAY)
    return Request(name=f"{name}>{NODE}")
