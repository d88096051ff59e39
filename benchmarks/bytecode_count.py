"""Bytecodes run by one thread, by function, from ``sys.settrace``'s opcode events.

Exact and repeatable where callgrind's instructions move with the allocator, and seconds instead of minutes. Used
in-process by benchmarks/in_process.py (``counting_bytecodes``) and inside a running node by
benchmarks/bytecode_probe (benchmarks/node_bytecodes.py). A coroutine resumed counts as called, so the event loop's
tasks are counted too; only the thread that called :meth:`BytecodeCounter.start` is.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from types import CodeType, FrameType
from typing import Any


class BytecodeCounter:
    """Counts the bytecodes this thread runs between :meth:`start` and :meth:`stop`, by :func:`function_key`."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def start(self) -> None:
        counts = self.counts

        def on_call(frame: FrameType, event: str, arg: Any) -> Any:
            frame.f_trace_opcodes = True
            key = function_key(frame.f_code)

            def on_event(frame: FrameType, event: str, arg: Any) -> Any:
                if event == "opcode":
                    counts[key] += 1
                return on_event

            return on_event

        sys.settrace(on_call)

    def stop(self) -> None:
        sys.settrace(None)


def function_key(code: CodeType) -> str:
    """``file.py:line name`` of a function."""
    return f"{Path(code.co_filename).name}:{code.co_firstlineno} {code.co_name}"
