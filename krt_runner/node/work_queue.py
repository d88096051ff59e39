"""The queue between a node's intake and its worker tasks.

asyncio.Queue does the same job for several thousand instructions more per message (a coroutine per ``get``, its
getters' and putters' deques, ``task_done`` and its event): here a worker reads :attr:`WorkQueue.items` itself and
awaits :meth:`WorkQueue.wait` only when it is empty::

    items = queue.items
    while True:
        if not items:
            await queue.wait()
            continue
        item = items.popleft()
        try:
            ...  # handle it
        finally:
            queue.task_done()
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class WorkQueue(Generic[T]):
    """A FIFO of work for worker tasks, with idle workers woken one per item and a wait for all work done."""

    def __init__(self) -> None:
        self.items: deque[T] = deque()
        self._idle: list[asyncio.Future[None]] = []
        self._unfinished = 0
        self._all_done = asyncio.Event()
        self._all_done.set()

    def __len__(self) -> int:
        return len(self.items)

    def put(self, item: T) -> None:
        self.items.append(item)
        if not self._unfinished:
            self._all_done.clear()
        self._unfinished += 1
        idle = self._idle
        while idle:  # wake one idle worker (a cancelled one's future is done already)
            waiter = idle.pop()
            if not waiter.done():
                waiter.set_result(None)
                break

    async def wait(self) -> None:
        """Until something is put (or another worker took it first: look again)."""
        waiter = asyncio.get_running_loop().create_future()
        self._idle.append(waiter)
        await waiter

    def task_done(self) -> None:
        """An item taken from :attr:`items` is handled."""
        self._unfinished -= 1
        if not self._unfinished:
            self._all_done.set()

    async def join(self) -> None:
        """Until every item put is handled."""
        await self._all_done.wait()
