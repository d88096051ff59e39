"""A node process from settings to exit code: logging, the event loop, signals, the idle timeout.

Shared by ``krt-runner run`` and ``serve()``. Exit codes: 0 after a stop
(SIGTERM, SIGINT, SIGHUP, ``KRT_IDLE_TIMEOUT``); 1 when ``init`` raised, or
when the NATS connection closed for good or the server revoked the node's
subscription (the node drains what it can first); 2 when NATS refused the
connection or the subscription at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import structlog

from krt_runner.config import Settings, load_settings
from krt_runner.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, BrokerConnectError, ConfigError, InitError
from krt_runner.exit_watch import exit_within
from krt_runner.logging import configure_logging, json_log, node_logger
from krt_runner.measurements import PointSink, make_sink
from krt_runner.node.health import remove_leftover
from krt_runner.node.lifecycle import RunningNode
from krt_runner.node.tracebacks import from_user_code
from krt_runner.node.user_code import UserCode, load_user_code
from krt_runner.output_capture import capture_output

# A sync handler busy in Python holds the GIL on its worker thread from one call to the next. The event loop's thread
# (answers, the next message) gets it when the interpreter forces a switch: every 1 ms keeps the worker supplied.
_SYNC_HANDLER_SWITCH_INTERVAL = 0.001
# A closed terminal (SIGHUP) drains the node like a stop.
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# What a process may do with its node while it serves, instead of waiting for a signal (dev mode sends requests).
Work = Callable[[RunningNode], Coroutine[Any, Any, None]]


def read_settings(overrides: Mapping[str, Any]) -> Settings | None:
    """Settings with logging configured from them; ``None`` after printing every problem."""
    try:
        settings = load_settings(overrides=overrides, handler_file=True)
    except ConfigError as exc:
        print(f"krt-runner: {exc}", file=sys.stderr)
        return None
    configure_logging(log_format=settings.log_format, level=settings.log_level)
    remove_leftover(settings.health_file)
    log = structlog.get_logger("krt_runner")
    log.info("settings read", **settings.describe(changed_only=True))  # the rest at DEBUG: a short line per node
    log.debug("settings in full", **settings.describe())
    return settings


# When the first stop signal came (the drain's time counts from it, and so does the wait for threads after it).
_STOPPED_AT: list[float] = []


class _StoppedWhileLoading(BaseException):
    """A stop signal came while the handler module was importing."""


def load_unless_stopped(settings: Settings) -> UserCode | None:
    """The handler module (or :class:`HandlerLoadError`); ``None`` when SIGTERM, SIGINT or SIGHUP came while it was
    importing (a model loaded at import can take minutes), logged: the node exits 0 then, as when stopped during
    ``init``, instead of being killed by the signal before the event loop handles signals."""
    def stop(signum: int, frame: Any) -> None:
        raise _StoppedWhileLoading(signal.Signals(signum).name)

    previous = {signum: signal.signal(signum, stop) for signum in _STOP_SIGNALS}
    try:
        return load_user_code(settings.handler_path, settings.base_path, protobuf_compat=settings.protobuf_compat)
    except _StoppedWhileLoading as stopped:
        structlog.get_logger("krt_runner").info("stopped before start-up finished", signal=str(stopped))
        return None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def serve_node(settings: Settings, code: UserCode) -> int:
    """Run the node to its end on uvloop when installed; return the exit code."""
    _identified_log(settings, code).info(
        "handler module loaded", handler=code.source, request=code.request_name, init=code.init is not None
    )
    if not code.handler_is_async:
        sys.setswitchinterval(min(sys.getswitchinterval(), _SYNC_HANDLER_SWITCH_INTERVAL))
    capture_output(json_log=json_log())  # print() and warnings of the node's code: through the log from now on
    exit_code = run_event_loop(node_main(settings, code))
    # Threads its code left running get what is left of the drain's time since the stop signal.
    exit_within(exit_code, settings.drain_timeout - (time.monotonic() - _STOPPED_AT[0] if _STOPPED_AT else 0.0))
    return exit_code


def _stopping(stop: asyncio.Event) -> None:
    if not _STOPPED_AT:
        _STOPPED_AT.append(time.monotonic())
    stop.set()


def _identified_log(settings: Settings, code: UserCode) -> Any:
    """The logger whose lines name the node, its workflow and version, as the running node's do."""
    return node_logger(node=settings.node_name or code.name, workflow=settings.workflow_name, version=settings.version)


def run_event_loop(coroutine: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when the ``speed`` extra is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        uvloop_run = None  # run outside the except: its ImportError must not be the context of every later exception
    else:
        uvloop_run = uvloop.run
    if uvloop_run is None:
        return int(asyncio.run(coroutine))
    return int(uvloop_run(coroutine))


async def node_main(settings: Settings, code: UserCode, *, work: Work | None = None) -> int:
    """Run the node with the sink its settings ask for; return the exit code (see :func:`run_until_stopped`)."""
    sink = make_sink(settings, _identified_log(settings, code))
    try:
        return await run_until_stopped(settings, code, sink=sink, work=work)
    finally:  # also when start-up failed: points saved by init are written, the writer thread ends
        await sink.close(timeout=settings.influx_shutdown_timeout)


async def run_until_stopped(settings: Settings, code: UserCode, *, sink: PointSink, work: Work | None = None) -> int:
    """Start a node, serve until SIGTERM, SIGINT or its idle timeout (or until ``work(node)`` is done), then stop
    it; return the process exit code."""
    node = RunningNode(settings, code, sink=sink)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, _stopping, stop)
    _reset_signals_in_forks()
    failed = await _start(node, stop)
    if failed is not None:
        await node.broker.close()
        return failed
    # What start-up made (modules, init's model and state) lives as long as the process: the garbage collector's
    # full collections need not walk it again and again (docs/performance.md, Measurements). The collection first
    # frees what start-up left in reference cycles, which freezing would keep for good.
    gc.collect()
    gc.freeze()
    watch = loop.create_task(node.broker.failed.wait())  # a connection gone for good stops the node too
    watch.add_done_callback(lambda _: stop.set())
    if work is None:
        await _wait_for_stop(node, stop)
    else:
        await _work_until_stop(node, work(node), stop)
    watch.cancel()
    await node.stop()
    return EXIT_FAILED if node.broker.failed.is_set() else EXIT_OK


# The forking thread's signal mask before a fork, put back after it (in the parent, and in the child once its
# handlers are reset).
_mask_at_fork = threading.local()


@functools.cache  # once per process: the hooks share the mask they keep
def _reset_signals_in_forks() -> None:
    os.register_at_fork(before=_hold_stop_signals, after_in_parent=_release_stop_signals,
                        after_in_child=_default_signals)


def _hold_stop_signals() -> None:
    """Before a fork: the stop signals wait, in the forking thread, and so in the child until it has reset them."""
    _mask_at_fork.before = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)


def _release_stop_signals() -> None:
    signal.pthread_sigmask(signal.SIG_SETMASK, _mask_at_fork.before)


def _default_signals() -> None:
    """In a process forked from the node (a ``multiprocessing`` worker): the stop signals as Python starts them, and
    no wakeup fd. The event loop's would tell the node that a signal sent to the worker (a ``Pool``'s terminate at
    the end of a ``with``) was its own, and the node would stop. They were held over the fork, so one sent before
    this reset (a Pool terminating a worker just started) is taken now, by the worker alone."""
    with contextlib.suppress(ValueError, OSError):
        signal.set_wakeup_fd(-1)
        for signum in _STOP_SIGNALS:
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
    _release_stop_signals()


async def _start(node: RunningNode, stop: asyncio.Event) -> int | None:
    """Start the node; ``None`` once it serves, else the exit code (a signal during start-up: 0)."""
    starting = await start_unless_stopped(node.start(), stop)
    if starting is None:
        node.log.info("stopped before start-up finished")
        return EXIT_OK
    return _startup_failure(node, starting)


async def start_unless_stopped(start: Coroutine[Any, Any, None], stop: asyncio.Event) -> asyncio.Task[None] | None:
    """Run ``start`` until it ends (its finished task) or ``stop`` is set first (``None``; ``start`` is cancelled
    and its cancellation waited for)."""
    loop = asyncio.get_running_loop()
    starting = loop.create_task(start)
    stopping = loop.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if starting.done():
        return starting
    starting.cancel()
    await asyncio.gather(starting, return_exceptions=True)
    return None


def _startup_failure(node: RunningNode, starting: asyncio.Task[None]) -> int | None:
    error = starting.exception()
    if error is None:
        return None
    if isinstance(error, BrokerConnectError):
        node.log.error(str(error))
        return EXIT_USAGE
    if isinstance(error, InitError):
        node.log.error(str(error), exc_info=from_user_code(error.__cause__) if error.__cause__ else None)
        return EXIT_FAILED
    raise error


async def _wait_for_stop(node: RunningNode, stop: asyncio.Event) -> None:
    """Until SIGTERM or SIGINT, or ``KRT_IDLE_TIMEOUT`` seconds without a message received."""
    timeout = node.settings.idle_timeout
    while timeout is not None and not stop.is_set():
        remaining = timeout - (time.perf_counter_ns() - node.last_received) / 1e9
        if remaining <= 0:
            node.log.info("idle timeout: no message received; stopping", idle_timeout=timeout)
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), remaining)
    await stop.wait()
    _log_stop(node)


def _log_stop(node: RunningNode) -> None:
    if node.broker.failed.is_set():
        node.log.error("stopping: the node cannot serve without its NATS connection and subscription")
    else:
        node.log.info("signal received; stopping")


async def _work_until_stop(node: RunningNode, work: Coroutine[Any, Any, None], stop: asyncio.Event) -> None:
    """Until ``work`` is done; SIGINT or SIGTERM cancels it."""
    loop = asyncio.get_running_loop()
    working = loop.create_task(work)
    stopping = loop.create_task(stop.wait())
    await asyncio.wait({working, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if working.done():
        stopping.cancel()
        working.result()
        return
    working.cancel()
    await asyncio.gather(working, return_exceptions=True)
    _log_stop(node)
