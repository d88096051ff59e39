"""A test handler whose behaviour is chosen by the request's name.

Every answer is a ``Request`` whose name is the input name followed by
``>node`` so that chains of this handler show the path taken. Async version;
``behaviours_sync.py`` is the same in sync functions.
"""

import asyncio
import gc
import os
import sys
import time

from greeter_pb2 import Request, Response

INIT_CALLS = 0
RUNNING = 0  # "wait" calls under way
NODE = os.environ.get("KRT_NODE_NAME", "node")


async def init(ctx):
    global INIT_CALLS
    INIT_CALLS += 1
    await asyncio.sleep(0.2)  # a slow init: no message may arrive before it ends
    ctx.set("ready", "yes")
    ctx.set("frozen_during_init", gc.get_freeze_count())


def read_name(data):
    if data.Is(Response.DESCRIPTOR):
        response = Response()
        data.Unpack(response)
        return response.greeting
    request = Request()
    if not data.Unpack(request):
        raise TypeError(f"expected greeter.Request, got {data.type_url}")
    return request.name


async def handler(ctx, data):
    name = read_name(data)
    command, _, argument = name.partition(":")
    if command == "boom":
        raise ValueError("boom requested")
    if command == "exit":  # as a library's sys.exit() would
        sys.exit(3)
    if command == "interrupt":
        raise KeyboardInterrupt()
    if command == "owntimeout":
        raise TimeoutError("upstream service timed out")
    if command == "cancelled":  # as a cancelled call inside the handler raises it
        raise asyncio.CancelledError()
    if command == "bigerror":
        raise ValueError("x" * 3_000_000)
    if command == "none":
        return None
    if command == "notproto":
        return {"not": "a protobuf message"}
    if command == "sleep":
        await asyncio.sleep(float(argument))
    if command == "wait":  # answers how many other calls were under way when this one began
        return Request(name=f"others={await _wait(float(argument))}")
    if command == "spin":  # busy without awaiting: messages that arrive together are handled in one loop pass
        until = time.perf_counter() + float(argument)
        while time.perf_counter() < until:
            pass
    if command == "early":
        await ctx.reply(Request(name="early answer"))
    if command == "earlynone":  # as KRE v1 last nodes did: nothing more to say after an early reply
        await ctx.reply(Request(name="early answer"))
        return None
    if command == "replydict":
        await ctx.reply({"not": "a protobuf message"})
    if command == "twice":
        await ctx.reply(Request(name="first"))
        await ctx.reply(Request(name="second"))
    if command == "path":
        return Request(name=ctx.path(argument))
    if command == "get":
        return Request(name=str(ctx.get(argument)))
    if command == "getor":  # as KRE v1 code did: its ctx.get raised AttributeError
        try:
            return Request(name=str(ctx.get(argument)))
        except AttributeError:
            return Request(name="default")
    if command == "init":
        return Request(name=f"init_calls={INIT_CALLS} ready={ctx.get('ready')}")
    if command == "switchinterval":
        return Request(name=str(sys.getswitchinterval()))
    if command == "frozen":
        return Request(name=f"{ctx.get('frozen_during_init')} {gc.get_freeze_count()}")
    return Request(name=f"{name}>{NODE}")


async def _wait(seconds):
    global RUNNING
    others = RUNNING
    RUNNING += 1
    try:
        await asyncio.sleep(seconds)
    finally:
        RUNNING -= 1
    return others
