"""``behaviours.py`` with a sync init and a sync handler (run on worker threads)."""

import asyncio
import os
import sys
import threading
import time

from behaviours import read_name
from greeter_pb2 import Request

INIT_CALLS = 0
NODE = os.environ.get("KRT_NODE_NAME", "node")
_CALLS = threading.Lock()
_RUNNING = 0  # handler calls under way


def init(ctx):
    global INIT_CALLS
    INIT_CALLS += 1
    time.sleep(0.2)
    ctx.set("ready", "yes")


def handler(ctx, data):
    name = read_name(data)
    command, _, argument = name.partition(":")
    if command == "sleep":  # answers how many other calls were under way when this one began
        return Request(name=f"others={_sleep(float(argument))}")
    if command == "boom":
        raise ValueError("boom requested")
    if command == "exit":  # as a library's sys.exit() would
        sys.exit(3)
    if command == "interrupt":
        raise KeyboardInterrupt()
    if command == "cancelled":
        raise asyncio.CancelledError()
    if command == "busy":  # CPU-bound, holding the GIL as little as Python allows
        deadline = time.monotonic() + float(argument)
        while time.monotonic() < deadline:
            pass
    if command == "early":
        ctx.reply(Request(name="early answer"))
    if command == "thread":
        return Request(name=threading.current_thread().name)
    if command == "init":
        return Request(name=f"init_calls={INIT_CALLS} ready={ctx.get('ready')}")
    if command == "switchinterval":
        return Request(name=str(sys.getswitchinterval()))
    return Request(name=f"{name}>{NODE}")


def _sleep(seconds):
    global _RUNNING
    with _CALLS:
        others = _RUNNING
        _RUNNING += 1
    time.sleep(seconds)
    with _CALLS:
        _RUNNING -= 1
    return others
