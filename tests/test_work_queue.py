"""The queue between a node's intake and its workers (krt_runner.node.work_queue)."""

from __future__ import annotations

import asyncio

from krt_runner.node.work_queue import WorkQueue


async def worker(queue: WorkQueue[int], seen: list[tuple[str, int]], name: str) -> None:
    items = queue.items
    while True:
        if not items:
            await queue.wait()
            continue
        item = items.popleft()
        try:
            await asyncio.sleep(0.001)
            seen.append((name, item))
        finally:
            queue.task_done()


async def test_items_are_taken_in_order_and_join_waits_until_each_is_handled():
    queue: WorkQueue[int] = WorkQueue()
    seen: list[tuple[str, int]] = []
    task = asyncio.create_task(worker(queue, seen, "w"))

    for item in range(20):
        queue.put(item)
    await asyncio.wait_for(queue.join(), timeout=5)

    assert [item for _, item in seen] == list(range(20))
    assert len(queue) == 0
    task.cancel()


async def test_idle_workers_are_woken_one_per_item():
    queue: WorkQueue[int] = WorkQueue()
    seen: list[tuple[str, int]] = []
    tasks = [asyncio.create_task(worker(queue, seen, f"w{i}")) for i in range(3)]
    await asyncio.sleep(0.01)  # all three idle

    queue.put(1)
    queue.put(2)
    await asyncio.wait_for(queue.join(), timeout=5)

    assert sorted(item for _, item in seen) == [1, 2]
    assert len({name for name, _ in seen}) == 2  # two workers woke, each took one
    for task in tasks:
        task.cancel()


async def test_a_cancelled_idle_worker_does_not_swallow_the_next_item():
    queue: WorkQueue[int] = WorkQueue()
    seen: list[tuple[str, int]] = []
    cancelled = asyncio.create_task(worker(queue, seen, "gone"))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    await asyncio.sleep(0)
    alive = asyncio.create_task(worker(queue, seen, "alive"))
    await asyncio.sleep(0.01)

    queue.put(7)
    await asyncio.wait_for(queue.join(), timeout=5)

    assert seen == [("alive", 7)]
    alive.cancel()


async def test_join_returns_at_once_when_nothing_was_put():
    await asyncio.wait_for(WorkQueue().join(), timeout=1)
