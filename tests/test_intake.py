"""The intake's short path (krt_runner.node.intake.Workers.on_direct): what it takes straight from the parser, and
what it leaves to nats-py so that no message passes another."""

from __future__ import annotations

import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from krt_runner.node.intake import Workers


async def handle(data: bytes, reply: str) -> None:
    pass


async def test_a_message_goes_nats_py_s_way_while_nats_py_holds_others_of_its_subscription():
    workers = Workers(handle, count=1, pending_limits=(1000, 1 << 20), log=structlog.get_logger())
    subscription = Subscription(None, id=1, subject="in")
    assert workers.on_direct(1, b"in", b"r.0", b"zero", None) is False  # not subscribed yet

    workers.watch(subscription)
    taken_first = workers.on_direct(1, b"in", b"r.1", b"one", None)
    subscription._pending_queue.put_nowait(Msg(None, subject="in", reply="r.2", data=b"two"))  # declined earlier
    passing = workers.on_direct(1, b"in", b"r.3", b"three", None)
    subscription._pending_queue.get_nowait()  # nats-py hands it over
    taken_after = workers.on_direct(1, b"in", b"r.3", b"three", None)

    assert (taken_first, passing, taken_after) == (True, False, True)
    assert workers.queued == 2
