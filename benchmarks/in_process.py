"""What the in-process cost scripts share: a message as nats-py hands it over, a nats-py client that takes
publishes with no socket, and a count of the bytecodes run per message (pipeline_cost.py, floor_variants.py)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "greeter" / "src"))

import greeter_pb2
from bytecode_count import BytecodeCounter, function_key
from nats.aio.client import Client

from krt_runner._proto.kre_nats_msg_pb2 import KreNatsMessage

# Publishes between two emptyings of the pending buffer: what the flusher writes at once on a loaded node.
_PENDING_WRITTEN = 256


class Msg:
    """What nats-py hands a subscription callback: the fields a node reads."""

    __slots__ = ("data", "reply", "subject")

    def __init__(self, data: bytes, reply: str) -> None:
        self.subject, self.data, self.reply = "in", data, reply


def publishing_client(*, skip_subject_validation: bool = False, client: Any = None) -> Any:
    """A nats-py client that takes publishes as a connected one does (into its pending buffer), with no socket: a
    new one, or ``client`` (a node's broker's own ``NodeClient``) set up so.

    Its flusher is busy (its queue holds a signal already), as on a loaded node; call :func:`written` now and
    then for the flusher's emptying of the buffer.
    """
    nc: Any = client if client is not None else Client()
    nc._flusher_task = asyncio.get_running_loop().create_future()  # running: never done
    nc._status = Client.CONNECTED
    nc._max_payload = 1 << 20
    nc._max_pending_size = 1 << 30
    nc._skip_subject_validation = skip_subject_validation
    nc._flush_queue = asyncio.Queue()
    nc._flush_queue.put_nowait(None)
    return nc


def written(nc: Any) -> None:
    """Empty the pending buffer when it is long: what the flusher would have written to the socket."""
    if len(nc._pending) > _PENDING_WRITTEN:
        nc._pending.clear()
        nc._pending_data_size = 0


def request_bytes(name: str = "Ada") -> bytes:
    """A request as the previous node sends it: one tracking entry, a greeter Request."""
    envelope = KreNatsMessage(tracking_id="bench")
    envelope.tracking.add(node_name="previous", start=datetime.utcnow().isoformat(), end=datetime.utcnow().isoformat())
    envelope.payload.Pack(greeter_pb2.Request(name=name))
    return envelope.SerializeToString()


@contextlib.contextmanager
def counting_bytecodes() -> Iterator[Counter[str]]:
    """The bytecodes this thread runs meanwhile, by function (``file:line name``): see
    benchmarks/bytecode_count.py."""
    counter = BytecodeCounter()
    counter.start()
    try:
        yield counter.counts
    finally:
        counter.stop()


def print_bytecodes(counts: Counter[str], messages: int, harness: Callable[..., Any], top: int = 30) -> None:
    """Bytecodes per message, without the ``harness`` function's own (its loop) and :func:`written`'s, then by
    function."""
    left_out = {function_key(harness.__code__), function_key(written.__code__)}
    own = {key: count for key, count in counts.items() if key not in left_out}
    print(f"{sum(own.values()) / messages:.1f} bytecodes per message over {messages} "
          f"({sum(counts.values()) / messages:.1f} with the harness's loop)")
    for key, count in sorted(own.items(), key=lambda item: -item[1])[:top]:
        print(f"{count / messages:8.1f}  {key}")
