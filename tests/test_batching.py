"""Dynamic batching end to end: real nats-server, real `krt-runner run` processes with a batch function.

tests/handlers/batches.py greets each request with ``<name>@<call>/<size>`` and logs every call's size to the file
``BATCH_LOG`` names; tests/handlers/batch_processor.py is a Processor with ``validate`` and ``process_batch``.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from pathlib import Path

import pytest
from conftest import ROOT, Requester, greeter_pb2, node_env, unpack

from krt_runner.envelope import KreNatsMessage, epoch_seconds

HANDLERS = ROOT / "tests" / "handlers"
# Long enough for requests sent meanwhile to arrive while one batch is running, on a busy machine.
HOLD = 0.6


def batches_env(nats_server, tmp_path: Path, **extra: str) -> dict[str, str]:
    return node_env(nats_server, HANDLERS, "batches.py", input="batch-in", name="batches",
                    BATCH_LOG=str(tmp_path / "sizes.log"), **extra)


def logged_sizes(tmp_path: Path) -> list[int]:
    return [int(line) for line in (tmp_path / "sizes.log").read_text().split()]


def greeting(answer: KreNatsMessage) -> str:
    return unpack(answer, greeter_pb2.Response).greeting


async def ask(requester: Requester, names: list[str], subject: str = "batch-in") -> list[KreNatsMessage]:
    return list(await asyncio.gather(*(requester.greet(subject, name, timeout=30) for name in names)))


async def while_one_batch_runs(requester: Requester, names: list[str], subject: str = "batch-in",
                               hold: str = f"sleep:{HOLD}") -> tuple[KreNatsMessage, list[KreNatsMessage]]:
    """A request that keeps a batch running, and ``names`` sent meanwhile: they make the next batch together."""
    holding = asyncio.ensure_future(requester.greet(subject, hold, timeout=30))
    await asyncio.sleep(HOLD / 3)
    answers = await ask(requester, names, subject)
    return await holding, answers


async def test_a_burst_of_500_is_answered_once_each_in_batches_no_larger_than_the_setting(
    nats_server, start_node, requester, tmp_path
):
    points = tmp_path / "points.lp"
    start_node(**batches_env(nats_server, tmp_path, KRT_BATCH_MAX_SIZE="16", KRT_MEASUREMENTS_ENABLED="true",
                             KRT_MEASUREMENTS_FILE=str(points)))
    names = [f"n{i}" for i in range(500)]

    answers = await ask(requester, names)

    assert [greeting(answer).split("@")[0] for answer in answers] == names, "each request gets its own result"
    for answer in answers:
        own = answer.tracking[-1]
        assert [entry.node_name for entry in answer.tracking] == ["entrypoint", "batches"]
        assert epoch_seconds(own.start) <= epoch_seconds(own.end)
    sizes = logged_sizes(tmp_path)
    assert sum(sizes) == 500 and all(1 <= size <= 16 for size in sizes), sizes
    assert max(sizes) == 16, f"a burst fills batches: {sizes}"
    calls = {greeting(answer).split("@")[1] for answer in answers}
    assert len(calls) == len(sizes), "every answer names the call that made it"
    await asyncio.sleep(1.5)  # the points of the last answers are written within the flush interval
    elapsed = [line for line in points.read_text().splitlines() if line.startswith("node_elapsed_time")]
    tracked = sorted(re.search(r'tracking_id="(\w+)"', line)[1] for line in elapsed)
    assert tracked == sorted(answer.tracking_id for answer in answers), "one node_elapsed_time point per request"


async def test_a_result_that_is_an_exception_answers_only_its_own_request_with_an_error(
    nats_server, start_node, requester, tmp_path
):
    start_node(**batches_env(nats_server, tmp_path))

    _, answers = await while_one_batch_runs(requester, ["a", "fail-b", "c", "fail-d"])

    assert logged_sizes(tmp_path) == [1, 4]
    assert [greeting(answers[0]), greeting(answers[2])] == ["a@2/4 most=1", "c@2/4 most=1"]
    assert answers[1].error == "error in node 'batches': handler_batch returned an error for this request: " \
                               "ValueError: cannot greet fail-b"
    assert answers[3].error.endswith("ValueError: cannot greet fail-d")


async def test_a_result_that_is_no_protobuf_message_answers_only_its_own_request_naming_the_batch_function(
    nats_server, start_node, requester, tmp_path
):
    start_node(**batches_env(nats_server, tmp_path))

    _, answers = await while_one_batch_runs(requester, ["a", "none"])

    assert greeting(answers[0]) == "a@2/2 most=1"
    assert answers[1].error == "error in node 'batches': handler_batch returned None for this request, not a " \
                               "protobuf message"


async def test_a_batch_only_module_at_batch_size_1_names_its_batch_function_in_its_errors(
    nats_server, start_node, requester, tmp_path
):
    node = start_node(**batches_env(nats_server, tmp_path, KRT_BATCH_MAX_SIZE="1"))

    raised = await requester.greet("batch-in", "boom")
    returned = await requester.greet("batch-in", "none")
    no_result = await requester.greet("batch-in", "short")
    node.signal()
    assert node.wait() == 0

    assert raised.error == "error in node 'batches': handler_batch raised RuntimeError: boom for the whole batch"
    assert returned.error == "error in node 'batches': handler_batch returned None, not a protobuf message"
    assert no_result.error.startswith("error in node 'batches': handler_batch returned 0 results for a batch of 1 ")
    lines = [json.loads(line) for line in node.output.splitlines() if line.startswith("{")]
    assert "exception" not in next(line for line in lines if line.get("event") == no_result.error)  # no traceback


async def test_an_exception_from_the_whole_call_answers_every_request_of_the_batch_and_the_node_goes_on(
    nats_server, start_node, requester, tmp_path
):
    node = start_node(**batches_env(nats_server, tmp_path))

    held, answers = await while_one_batch_runs(requester, ["a", "boom", "c"])
    after = await requester.greet("batch-in", "after")
    node.signal()
    assert node.wait() == 0

    assert greeting(held).startswith(f"sleep:{HOLD}@1/1")
    assert [answer.error for answer in answers] == [
        "error in node 'batches': handler_batch raised RuntimeError: boom for the whole batch, "
        "for its whole batch of 3 requests"
    ] * 3
    assert greeting(after).startswith("after@3/1")
    lines = [json.loads(line) for line in node.output.splitlines() if line.startswith("{")]
    failed = [line for line in lines if line.get("event") == answers[0].error]
    assert len(failed) == 3 and sorted(line["tracking_id"] for line in failed) == sorted(a.tracking_id for a in answers)
    assert ["RuntimeError: boom" in line.get("exception", "") for line in failed].count(True) == 1, "one traceback"


@pytest.mark.parametrize("handler_timeout", ["0", "5"], ids=["no-limit", "with-limit"])
async def test_sys_exit_from_the_whole_call_answers_every_request_of_the_batch_and_the_node_goes_on(
    nats_server, start_node, requester, tmp_path, handler_timeout
):
    start_node(**batches_env(nats_server, tmp_path, KRT_HANDLER_TIMEOUT=handler_timeout))

    _, answers = await while_one_batch_runs(requester, ["a", "exit"])
    after = await requester.greet("batch-in", "after")

    assert [answer.error for answer in answers] == [
        "error in node 'batches': handler_batch raised SystemExit: 3, for its whole batch of 2 requests"
    ] * 2
    assert greeting(after).startswith("after@3/1")


async def test_a_wrong_number_of_results_answers_each_request_with_an_error_naming_both_counts(
    nats_server, start_node, requester, tmp_path
):
    start_node(**batches_env(nats_server, tmp_path))

    _, answers = await while_one_batch_runs(requester, ["a", "short", "c", "d"])

    assert [answer.error for answer in answers] == [
        "error in node 'batches': handler_batch returned 3 results for a batch of 4 requests: it must return one "
        "result per request, in the order of the requests"
    ] * 4


async def test_early_reply_is_refused_in_batch_mode_with_an_error_saying_so(
    nats_server, start_node, requester, tmp_path
):
    start_node(**batches_env(nats_server, tmp_path))

    answer = await requester.greet("batch-in", "reply")

    assert "ReplyError: ctx.reply() is not offered in batch mode" in answer.error


async def test_validate_rejects_a_request_which_is_left_out_of_its_batch_while_the_rest_succeed(
    nats_server, start_node, requester, tmp_path
):
    points = tmp_path / "points.lp"
    start_node(**node_env(nats_server, HANDLERS, "batch_processor.py", input="proc-in", name="greeter",
                          KRT_MEASUREMENTS_ENABLED="true", KRT_MEASUREMENTS_FILE=str(points)))

    _, answers = await while_one_batch_runs(requester, ["a", "bad-b", "c"], subject="proc-in")
    await asyncio.sleep(1.5)  # the points are written within the flush interval

    assert greeting(answers[0]) == greeting(answers[2]).replace("c!", "a!") == "Hello, a! batch of 2"
    assert answers[1].error == "error in node 'greeter': invalid request: ValueError: name 'bad-b' is not allowed"
    elapsed = [line for line in points.read_text().splitlines() if line.startswith("node_elapsed_time")]
    assert sum('error="invalid"' in line for line in elapsed) == 1 and len(elapsed) == 4


async def test_a_lone_request_on_an_idle_node_is_called_at_once_whatever_the_max_wait(
    nats_server, start_node, requester, tmp_path
):
    start_node(**batches_env(nats_server, tmp_path, KRT_BATCH_MAX_SIZE="32", KRT_BATCH_MAX_WAIT_MS="5000"))
    await requester.greet("batch-in", "warm-up")

    started = time.monotonic()
    answer = await requester.greet("batch-in", "alone")
    waited = time.monotonic() - started

    assert greeting(answer).startswith("alone@2/1")
    assert waited < 1.0, f"a lone request waited {waited:.2f}s for its batch to fill"


async def test_while_another_batch_runs_a_partial_batch_is_called_once_its_first_request_waited_the_max_wait(
    nats_server, start_node, requester, tmp_path
):
    start_node(**batches_env(nats_server, tmp_path, KRT_CONCURRENCY="2", KRT_BATCH_MAX_WAIT_MS="400"))
    holding = asyncio.ensure_future(requester.greet("batch-in", "sleep:4", timeout=30))
    await asyncio.sleep(0.3)

    started = time.monotonic()
    answer = await requester.greet("batch-in", "waits")
    waited = time.monotonic() - started

    assert greeting(answer).startswith("waits@2/1")
    assert 0.35 <= waited < 3.0, f"answered after {waited:.2f}s"
    assert not holding.done(), "it did not wait for the running batch to end"
    await holding


async def test_krt_concurrency_batches_run_at_once_and_never_more(nats_server, start_node, requester, tmp_path):
    start_node(**batches_env(nats_server, tmp_path, KRT_CONCURRENCY="2", KRT_BATCH_MAX_SIZE="4",
                             KRT_BATCH_MAX_WAIT_MS="0"))

    answers = await ask(requester, [f"sleep:0.2:{i}" for i in range(24)])

    assert max(int(greeting(answer).rsplit("=", 1)[1]) for answer in answers) == 2
    assert all(1 <= size <= 4 for size in logged_sizes(tmp_path))


async def test_krt_handler_timeout_counts_per_batch_and_answers_each_request_of_it(
    nats_server, start_node, requester, tmp_path
):
    start_node(**batches_env(nats_server, tmp_path, KRT_HANDLER_TIMEOUT="0.5"))

    answers = await ask(requester, ["sleep:3", "b"])
    after = await requester.greet("batch-in", "after")

    for answer in answers:
        assert re.fullmatch(r"error in node 'batches': handler_batch timed out after 0.5s \(KRT_HANDLER_TIMEOUT, "
                            r"for its whole batch of \d requests?\)", answer.error), answer.error
    assert greeting(after).startswith("after@")


async def test_sigterm_with_a_partial_batch_waiting_calls_it_and_answers_all_of_it(
    nats_server, start_node, requester, tmp_path
):
    node = start_node(**batches_env(nats_server, tmp_path))
    holding = asyncio.ensure_future(requester.greet("batch-in", "sleep:1.5", timeout=30))
    await asyncio.sleep(0.3)
    waiting = asyncio.ensure_future(ask(requester, [f"w{i}" for i in range(5)]))
    await asyncio.sleep(0.3)

    node.signal(signal.SIGTERM)
    held, answers = await holding, await waiting

    assert greeting(held).startswith("sleep:1.5@1/1")
    assert [greeting(answer).split(" ")[0] for answer in answers] == [f"w{i}@2/5" for i in range(5)]
    assert await asyncio.to_thread(node.wait) == 0
    assert logged_sizes(tmp_path) == [1, 5]


async def test_batches_work_the_same_with_at_least_once_delivery(start_node, tmp_path):
    from krt_runner.client import Client
    from krt_runner.local_krt.embedded import EmbeddedNats

    with EmbeddedNats(jetstream=True) as server:
        start_node(**batches_env(server, tmp_path, KRT_BATCH_MAX_SIZE="8", KRT_DELIVERY="at-least-once"))
        names = [f"js{i}" for i in range(120)]
        async with await Client.connect(server.url, delivery="at-least-once") as client:
            answers = await asyncio.gather(*(client.call("batch-in", greeter_pb2.Request(name=name),
                                                         greeter_pb2.Response, timeout=30) for name in names))

    assert [answer.greeting.split("@")[0] for answer in answers] == names
    sizes = logged_sizes(tmp_path)
    assert sum(sizes) == 120 and all(1 <= size <= 8 for size in sizes) and max(sizes) > 1, sizes
