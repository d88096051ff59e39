"""Bytecodes per message of a running krt-runner node, by function: its whole event loop's path, reading and
parsing the NATS frames, acks and pull requests included, which the in-process scripts (pipeline_cost.py) leave out.

    .venv/bin/python benchmarks/node_bytecodes.py                            # the middle node, at-most-once
    .venv/bin/python benchmarks/node_bytecodes.py --delivery at-least-once   # the same in at-least-once mode
    .venv/bin/python benchmarks/node_bytecodes.py --node 2 --count 5000      # the last node, more requests

Starts its own nats-server (with JetStream) and a 3-node greeter chain with measurements written to a
line-protocol file, warms it up, then counts one node's main-thread bytecodes (benchmarks/bytecode_probe) while
``--count`` requests go through the chain at ``--window`` in flight. Counting makes the node take about 15 times
the CPU per message: the figures are bytecodes, not time. What depends on time moves with the machine and the
window: how many frames a read carries, and (at-least-once) how often the node sends a pull request; the rest is
exact from run to run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "greeter" / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # influx_server, as run.py

from bench import Bench, entry_subject
from delivery import drive_js
from load import drive
from processes import ROOT, NodeProc

from krt_runner.local_krt.embedded import EmbeddedNats

PROBE = Path(__file__).resolve().parent / "bytecode_probe"
WARM_UP = 300
_WRITE_TIMEOUT = 10.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--delivery", choices=("at-most-once", "at-least-once"), default="at-most-once")
    parser.add_argument("--node", type=int, choices=(0, 1, 2), default=1, help="which node: 0 first, 2 last")
    parser.add_argument("--count", type=int, default=2000, help="requests counted")
    parser.add_argument("--window", type=int, default=32, help="requests in flight")
    parser.add_argument("--top", type=int, default=30, help="functions listed")
    args = parser.parse_args()
    with EmbeddedNats(jetstream=True) as nats, tempfile.TemporaryDirectory() as scratch:
        out = f"{scratch}/bytecodes"
        env = {"KRT_DELIVERY": args.delivery, "KRT_BYTECODES_OUT": out,
               "PYTHONPATH": f"{PROBE}{os.pathsep}{ROOT / 'examples' / 'greeter' / 'src'}"}
        chain = Bench(nats, "", scratch).start_chain("krt", 3, "bench_handler.py", env)
        try:
            counts = _count(chain, args, nats.url, f"{out}.node{args.node}")
        finally:
            codes = [node.stop() for node in chain]
    if any(codes):
        print(f"a node exited with {codes}", file=sys.stderr)
        return 1
    total = sum(count for count, _ in counts)
    print(f"{total / args.count:.1f} bytecodes per message over {args.count} (node{args.node}, {args.delivery}, "
          f"W={args.window})")
    for count, key in counts[: args.top]:
        print(f"{count / args.count:8.1f}  {key}")
    return 0


def _count(chain: list[NodeProc], args: argparse.Namespace, url: str, written: str) -> list[tuple[int, str]]:
    driver = drive_js if args.delivery == "at-least-once" else drive
    entry, pid = entry_subject(chain), chain[args.node].process.pid
    asyncio.run(driver(url, entry, count=WARM_UP, window=16, hops=3))
    os.kill(pid, signal.SIGUSR1)
    time.sleep(0.2)  # the handler runs between two bytecodes of the main thread
    result = asyncio.run(driver(url, entry, count=args.count, window=args.window, hops=3))
    if result.answered != args.count or result.wrong:
        raise SystemExit(f"{result.answered} of {args.count} answered, {result.wrong} wrong")
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + _WRITE_TIMEOUT
    while not Path(written).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = Path(written).read_text().splitlines()
    return [(int(count), key) for count, key in (line.split("\t", 1) for line in lines)]


if __name__ == "__main__":
    sys.exit(main())
