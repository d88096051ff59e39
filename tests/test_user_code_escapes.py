"""What a node's code can throw or write that is neither a return nor a log line, through real ``krt-runner run``
nodes on a real nats-server: any ``BaseException`` from a handler or ``init``, ``print()``, ``warnings.warn`` and a
thread's uncaught exception, with the log a pipe nobody reads or one that is closed."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import KRT_RUNNER, greeter_pb2, node_env, unpack

ESCAPES = """
    import threading
    import time
    import warnings

    from greeter_pb2 import Request


    class OwnBaseError(BaseException):
        pass


    def answer(ctx, data):
        request = Request()
        data.Unpack(request)
        if request.name == "base":
            raise OwnBaseError("not an Exception")
        if request.name == "generator-exit":
            raise GeneratorExit
        if request.name == "files":  # what wants a file, or bytes, rather than text
            import subprocess
            import sys
            sys.stdout.buffer.write(b"bytes written\\n")
            subprocess.run(["echo", "from a child"], stdout=sys.stdout, check=True)
        if request.name == "noise":
            print("printed " + "x" * 20000)
            warnings.warn("a warning " + str(time.monotonic()))  # a new text each time: shown every time
            threading.Thread(target=lambda: 1 / 0, name="boom").start()
        return Request(name="ok " + request.name)
"""


def escapes(handler_dir, *, sync: bool) -> str:
    """The module, its handler sync or async; its base path."""
    handler = "def handler(ctx, data):\n        return answer(ctx, data)\n" if sync else \
        "async def handler(ctx, data):\n        return answer(ctx, data)\n"
    return str(handler_dir(ESCAPES + "\n\n    " + handler))


@pytest.mark.parametrize("mode", ["async 1", "sync 1", "async 4"])  # the handler, and KRT_CONCURRENCY
async def test_a_handler_raising_any_base_exception_gets_an_error_answer_and_the_node_serves_on(
    nats_server, start_node, handler_dir, requester, mode
) -> None:
    kind, concurrency = mode.split()
    base = escapes(handler_dir, sync=kind == "sync")
    node = start_node(**node_env(nats_server, base, "src/node.py", input="escapes", name="esc",
                                 KRT_CONCURRENCY=concurrency))

    failures = [await requester.greet("escapes", name) for name in ["base", "generator-exit"] * 4]
    after = await requester.greet("escapes", "Ada")

    assert all(answer.error.startswith("error in node 'esc': handler raised ") for answer in failures)
    assert "OwnBaseError: not an Exception" in failures[0].error and "GeneratorExit" in failures[1].error
    assert unpack(after, greeter_pb2.Request).name == "ok Ada"
    assert "internal error" not in node.output  # one error line each, from the handler's own frame


@pytest.mark.parametrize("raised", ["SystemExit(3)", "KeyboardInterrupt()", "BaseException('own')"])
def test_init_raising_any_base_exception_stops_start_up_with_one_line_and_exit_1(nats_server, handler_dir, raised):
    base = handler_dir(f"def init(ctx):\n    raise {raised}\n\n\ndef handler(ctx, data):\n    return data\n")
    env = node_env(nats_server, base, "src/node.py", input="init-escapes", KRT_LOG_FORMAT="json",
                   KRT_MEASUREMENTS_ENABLED="false")

    done = subprocess.run([*KRT_RUNNER, "run"], env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True,
                          timeout=60)

    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert all(line.startswith("{") for line in lines), done.stderr  # JSON only: no raw traceback
    assert any(f"init of 'src/node.py' failed: {raised.split('(')[0]}" in json.loads(line)["event"] for line in lines)


async def test_a_thread_the_module_starts_at_import_does_not_keep_the_stopped_node_alive(
    nats_server, start_node, handler_dir, requester
) -> None:
    base = handler_dir("""
        import threading
        import time

        threading.Thread(target=time.sleep, args=(3600,), name="poller").start()  # a library's, not a daemon


        def handler(ctx, data):
            return data
    """)
    node = start_node(**node_env(nats_server, base, "src/node.py", input="threads", name="thr",
                                 KRT_DRAIN_TIMEOUT="1"))
    answer = await requester.greet("threads", "Ada")
    node.signal()

    assert node.wait(timeout=15) == 0 and answer.error == ""
    left = [json.loads(line) for line in node.lines if "exiting without waiting" in line]
    assert left[0]["event"].endswith("(still running 3s after its work ended): poller") and left[0]["node"] == "thr"
    assert '"stopped"' in node.output


async def test_a_job_that_never_ends_on_a_sync_handlers_thread_pool_holds_the_stop_no_longer(
    nats_server, start_node, handler_dir, requester
) -> None:
    base = handler_dir("""
        import time
        from concurrent.futures import ThreadPoolExecutor

        POOL = ThreadPoolExecutor(1, thread_name_prefix="userpool")  # its threads: daemons, as the handler's thread


        def handler(ctx, data):
            POOL.submit(time.sleep, 3600)  # a call to a service that never answers
            return data
    """)
    node = start_node(**node_env(nats_server, base, "src/node.py", input="stuck-pool", name="pool",
                                 KRT_DRAIN_TIMEOUT="1"))
    await requester.greet("stuck-pool", "Ada")
    node.signal()

    assert node.wait(timeout=20) == 0
    assert "(still running 3s after its work ended): userpool_0" in node.output


async def test_a_second_stop_ends_the_wait_for_threads_at_once(nats_server, start_node, handler_dir, requester):
    base = handler_dir("""
        import threading
        import time

        threading.Thread(target=time.sleep, args=(3600,), name="poller").start()


        def handler(ctx, data):
            return data
    """)
    node = start_node(**node_env(nats_server, base, "src/node.py", input="second-stop", name="thr2",
                                 KRT_DRAIN_TIMEOUT="60"))
    await requester.greet("second-stop", "Ada")
    node.signal()
    node.wait_for_line('"stopped"')
    node.signal()
    stopped = time.monotonic()

    assert node.wait(timeout=20) == 0 and time.monotonic() - stopped < 10
    assert "(a stop signal came): poller" in node.output


async def test_work_queued_on_a_thread_pool_is_done_before_the_node_exits_and_says_nothing(
    nats_server, start_node, handler_dir, requester, tmp_path
) -> None:
    done = tmp_path / "done.txt"
    base = handler_dir(f"""
        import time
        from concurrent.futures import ThreadPoolExecutor

        POOL = ThreadPoolExecutor(2)


        def later(name):
            time.sleep(1)
            with open({str(done)!r}, "a") as out:
                out.write(name + "\\n")


        async def handler(ctx, data):
            POOL.submit(later, ctx.tracking_id)  # fire and forget, as Python lets a program do
            return data
    """)
    node = start_node(**node_env(nats_server, base, "src/node.py", input="pool", name="pool"))
    answers = [await requester.greet("pool", name) for name in ("a", "b")]
    node.signal()

    assert node.wait(timeout=15) == 0
    assert sorted(done.read_text().split()) == sorted(answer.tracking_id for answer in answers)
    assert "exiting without waiting" not in node.output


def test_a_module_that_starts_a_thread_then_fails_to_load_still_exits_2(nats_server, handler_dir):
    base = handler_dir("""
        import threading
        import time

        threading.Thread(target=time.sleep, args=(3600,)).start()
        raise RuntimeError("no model file")
    """)
    env = node_env(nats_server, base, "src/node.py", input="threads-load")

    done = subprocess.run([*KRT_RUNNER, "run"], env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True,
                          timeout=60)

    assert done.returncode == 2 and "no model file" in done.stderr


def node_on_a_pipe(nats_server, base: str, subject: str, log_format: str = "json") -> subprocess.Popen:
    """A node whose stdout and stderr are one pipe this test holds, read up to "node ready"."""
    env = {**node_env(nats_server, base, "src/node.py", input=subject, name="noisy"), "KRT_LOG_FORMAT": log_format,
           "KRT_MEASUREMENTS_ENABLED": "false", "PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([*KRT_RUNNER, "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    while b"node ready" not in process.stdout.readline():
        assert process.poll() is None
    return process


async def test_print_warnings_and_thread_exceptions_are_json_log_lines_naming_the_node(
    nats_server, handler_dir, requester
) -> None:
    process = node_on_a_pipe(nats_server, escapes(handler_dir, sync=False), "noise-json")
    try:
        answer = await requester.greet("noise-json", "noise")
        files = await requester.greet("noise-json", "files")
        await asyncio.sleep(0.5)  # the thread's exception
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.to_thread(process.communicate, timeout=15)
    finally:
        process.kill()
        process.wait()

    lines = output.decode().splitlines()
    records = [json.loads(line) for line in lines if line != "from a child"]  # all JSON, but what the child wrote
    by_logger = {record.get("logger"): record for record in records}
    assert unpack(answer, greeter_pb2.Request).name == "ok noise"
    assert unpack(files, greeter_pb2.Request).name == "ok files" and "from a child" in lines
    printed = [record for record in records if record.get("logger") == "stdout"]
    assert printed[0]["event"].startswith("printed xxx") and printed[0]["node"] == "noisy"
    assert printed[1]["event"] == "bytes written"
    assert "UserWarning: a warning" in by_logger["py.warnings"]["event"]
    assert by_logger["threading"]["event"] == "uncaught exception in thread boom"
    assert "ZeroDivisionError" in by_logger["threading"]["exception"]


@pytest.mark.parametrize("log_format", ["json", "console"])  # console: print() written as it is, not logged
@pytest.mark.parametrize("reader", ["gone", "stalled"])
async def test_a_handler_that_prints_and_warns_on_a_log_pipe_nobody_reads_or_a_closed_one_serves_and_stops(
    nats_server, handler_dir, requester, reader, log_format
) -> None:
    process = node_on_a_pipe(nats_server, escapes(handler_dir, sync=False), f"noise-{reader}", log_format)
    try:
        assert process.stdout is not None
        if reader == "gone":
            process.stdout.close()
        # 200 requests of 20 KB of print() each: 4 MB, far past a pipe's 64 KiB and the log's 1 MB of waiting lines
        answers = [await requester.greet(f"noise-{reader}", "noise", timeout=10) for _ in range(200)]

        assert [answer.error for answer in answers] == [""] * 200
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 15) == 0
    finally:
        process.kill()
        process.wait()


def test_the_captured_streams_behave_as_text_streams_for_what_libraries_do_with_them():
    # In a process of its own: the capture replaces sys.stdout and sys.stderr for good.
    script = r'''
import logging, sys
from krt_runner.logging import configure_logging
from krt_runner.output_capture import capture_output
configure_logging(log_format="json", level="warning")
capture_output(json_log=True)
try:
    sys.stdout.write(b"")  # how click probes a stream: refused, as by any text stream, and nothing kept
except TypeError:
    pass
print("after a bytes probe")
sys.stdout.reconfigure(line_buffering=True)
print("name", sys.stdout.name, "mode", sys.stdout.mode)
for step in range(3):
    print(f"\rstep {step}", end="", flush=True)
print()
sys.stdout.buffer.write("\u00e9".encode()[:1])
sys.stdout.buffer.write("\u00e9".encode()[1:] + b"\n")
print("x" * 20000, end="")  # no newline: not kept without bound
logging.basicConfig(force=True)  # the user's own root handler, to sys.stderr
logging.getLogger("user").warning("after basicConfig")
print("the end")
'''
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)

    records = [json.loads(line) for line in done.stdout.splitlines() + done.stderr.splitlines()]
    events = [record["event"] for record in records]
    assert done.returncode == 0, done.stderr
    assert events[:6] == ["after a bytes probe", "name <stdout> mode w", "step 0", "step 1", "step 2", "\u00e9"]
    assert events[6].startswith("xxxx") and "WARNING:user:after basicConfig" in events and events[-1] == "the end"


async def test_a_handler_using_a_multiprocessing_pool_serves_on_after_the_pool_terminates_its_workers(
    nats_server, start_node, handler_dir, requester
) -> None:
    base = handler_dir("""
        import multiprocessing
        import threading
        import time

        from greeter_pb2 import Request


        def square(number):
            return number * number


        def progress():
            while True:
                print("progress")
                time.sleep(0.01)


        def init(ctx):
            threading.Thread(target=progress, daemon=True).start()


        def handler(ctx, data):
            request = Request()
            data.Unpack(request)
            with multiprocessing.Pool(4) as pool:  # its end SIGTERMs the forked workers, some just started
                total = sum(pool.map(square, range(5)))
            return Request(name=f"{request.name} {total}")
    """)
    node = start_node(**node_env(nats_server, base, "src/node.py", input="pool-in", name="pool",
                                 KRT_LOG_FORMAT="json"))

    # A worker SIGTERMed before it had reset the node's handlers told the node it was stopped: one run in two of 60
    # requests, before the stop signals were held over the fork.
    answers = [await requester.greet("pool-in", f"n{number}", timeout=20) for number in range(40)]

    assert [unpack(answer, greeter_pb2.Request).name for answer in answers] == [f"n{n} 30" for n in range(40)]
    assert "signal received" not in node.output


async def test_a_child_forked_while_another_thread_prints_can_print_under_the_json_log(
    nats_server, start_node, handler_dir, requester
) -> None:
    base = handler_dir("""
        import os
        import threading

        from greeter_pb2 import Request


        def chatter():
            while True:
                print("tick", "x" * 200)


        def init(ctx):
            for _ in range(3):
                threading.Thread(target=chatter, daemon=True).start()


        def handler(ctx, data):
            children = []
            for _ in range(5):
                pid = os.fork()
                if pid == 0:
                    try:
                        for line in range(20):
                            print("child", line)
                    finally:
                        os._exit(0)
                children.append(pid)
            for pid in children:
                os.waitpid(pid, 0)
            return Request(name="forked")
    """)
    start_node(**node_env(nats_server, base, "src/node.py", input="fork-in", name="fork", KRT_LOG_FORMAT="json"))

    # A child inherited sys.stdout's lock held by a printing thread, and its first print() waited for ever.
    answers = [await requester.greet("fork-in", f"n{number}", timeout=10) for number in range(10)]

    assert [unpack(answer, greeter_pb2.Request).name for answer in answers] == ["forked"] * 10


def test_init_raising_a_cancelled_error_of_its_own_stops_start_up_with_one_line_and_exit_1(nats_server, handler_dir):
    base = handler_dir("import asyncio\n\n\ndef init(ctx):\n    raise asyncio.CancelledError('inner task')\n\n\n"
                       "def handler(ctx, data):\n    return data\n")
    env = node_env(nats_server, base, "src/node.py", input="init-cancel", KRT_LOG_FORMAT="json",
                   KRT_MEASUREMENTS_ENABLED="false")

    done = subprocess.run([*KRT_RUNNER, "run"], env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True,
                          timeout=60)

    assert done.returncode == 1, done.stderr
    assert all(line.startswith("{") for line in done.stderr.splitlines()), done.stderr
    assert "init of 'src/node.py' failed: CancelledError: inner task" in done.stderr


@pytest.mark.parametrize("function", ["handler", "handler_batch"])
async def test_an_exception_whose_str_fails_is_still_one_error_answer_naming_it(
    nats_server, start_node, handler_dir, requester, function
) -> None:
    # A wrapped HTTP error whose __str__ parses a body that is no JSON: the batch's answers were lost.
    base = handler_dir(f"""
        import json


        class ApiError(Exception):
            def __str__(self):
                return json.loads("<html>502 Bad Gateway</html>")["message"]


        def {function}(ctx, data):
            raise ApiError()
    """)
    start_node(**node_env(nats_server, base, "src/node.py", input="str-in", name="str"))

    answers = [await requester.greet("str-in", f"n{number}", timeout=10) for number in range(2)]

    assert all("raised ApiError: <exception str() failed>" in answer.error for answer in answers), answers
