"""Counts a node process's bytecodes on demand (benchmarks/node_bytecodes.py puts this directory on the nodes'
PYTHONPATH): with ``KRT_BYTECODES_OUT`` set, SIGUSR1 starts counting the main thread's bytecodes (the event loop:
the message path) and SIGUSR2 writes them, by function, to ``$KRT_BYTECODES_OUT.<node name>`` (``count<TAB>key``
lines, the largest first). Without the variable it does nothing."""

import os
import signal
import sys
from pathlib import Path

if os.environ.get("KRT_BYTECODES_OUT"):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bytecode_count import BytecodeCounter

    _counter = BytecodeCounter()

    def _start(*_: object) -> None:
        _counter.counts.clear()
        _counter.start()  # a signal handler runs on the main thread: the one counted

    def _write(*_: object) -> None:
        _counter.stop()
        out = Path(f"{os.environ['KRT_BYTECODES_OUT']}.{os.environ.get('KRT_NODE_NAME', 'node')}")
        partial = out.with_name(out.name + ".partial")
        partial.write_text("".join(f"{count}\t{key}\n" for key, count in _counter.counts.most_common()))
        partial.replace(out)  # whole or not there: the script waits for it

    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _write)
