"""Instructions per message of one node running in the 3-node chain, krt-runner's and the floor's, by thread:
callgrind on that node alone while the other processes run at full speed, counting only while the measured
requests go through.

    .venv/bin/python benchmarks/node_instructions.py                 # the middle node, krt-runner then the floor
    .venv/bin/python benchmarks/node_instructions.py --node 2        # the last node (two points a message)
    .venv/bin/python benchmarks/node_instructions.py --kind krt --count 2000 --window 16

Needs valgrind. krt-runner's measurements go to victoria-metrics, as in benchmarks/run.py (to a line-protocol file
when it is not installed). A node's main thread is its event loop (the message path, its frames read and its
answers written); krt-runner's other thread, with this async handler, is its measurement writer, whose points of the
counted messages are written before the count stops. User space only: the kernel's work for the node (socket reads
and writes, the writer's sends) is not counted, nor are other processes. Instructions are exact to about 1% from
run to run, where CPU time on a shared VM moves by far more: they are how to tell a change to the path apart.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "greeter" / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # influx_server, as run.py

from bench import Bench, entry_subject
from load import drive
from processes import start_store

from krt_runner.local_krt.embedded import EmbeddedNats

WARM_UP = 2000
# Seconds for the points of the messages just sent to be written: the writer's flush interval (1 s) and then some.
_WRITTEN = 3.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=("krt", "floor", "both"), default="both")
    parser.add_argument("--node", type=int, choices=(0, 1, 2), default=1, help="which node: 0 first, 2 last")
    parser.add_argument("--count", type=int, default=10_000, help="requests counted")
    parser.add_argument("--window", type=int, default=128, help="requests in flight")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed", file=sys.stderr)
        return 2
    kinds = ("krt", "floor") if args.kind == "both" else (args.kind,)
    per_message = {kind: _count(kind, args) for kind in kinds}
    for kind, threads in per_message.items():
        other = sum(threads[1:])
        print(f"{kind:>5} node{args.node}: {sum(threads) / 1000:.1f}k instructions per message (W={args.window}, "
              f"{args.count} requests): event loop {threads[0] / 1000:.1f}k, other threads {other / 1000:.1f}k")
    if len(per_message) == 2:
        krt, floor = (per_message[kind] for kind in kinds)
        print(f"krt / floor: {sum(krt) / sum(floor):.3f}x in all, event loop {krt[0] / floor[0]:.3f}x")
    return 0


def _count(kind: str, args: argparse.Namespace) -> list[float]:
    """Instructions per message of each of the node's threads, its main thread first."""
    with EmbeddedNats() as nats, tempfile.TemporaryDirectory() as scratch:
        store = start_store()
        try:
            bench = Bench(nats, store.url if store else "", scratch)
            out = f"{scratch}/callgrind"
            valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
                        f"--callgrind-out-file={out}.%p"]
            chain = bench.start_chain(kind, 3, "bench_handler.py", prefixes={args.node: valgrind})
            try:
                pid = chain[args.node].process.pid
                _run_counted(nats.url, entry_subject(chain), pid, args)
            finally:
                codes = [node.stop() for node in chain]
        finally:
            if store:
                store.close()
        if any(codes):
            raise SystemExit(f"a node exited with {codes}")
        dumps = sorted(Path(scratch).glob(f"callgrind.{pid}.1-*"))  # the first dump, a file per thread
        return [_total(dump) / args.count for dump in dumps]


def _run_counted(url: str, entry: str, pid: int, args: argparse.Namespace) -> None:
    asyncio.run(drive(url, entry, count=WARM_UP, window=16, hops=3))
    time.sleep(_WRITTEN)  # the warm-up's points written: what the first write imports stays out of the count
    _control("--instr=on", pid)
    result = asyncio.run(drive(url, entry, count=args.count, window=args.window, hops=3))
    time.sleep(_WRITTEN)
    _control("--dump", pid)
    _control("--instr=off", pid)
    if result.answered != args.count or result.wrong:
        raise SystemExit(f"{result.answered} of {args.count} answered, {result.wrong} wrong")


def _control(option: str, pid: int) -> None:
    subprocess.run(["callgrind_control", option, str(pid)], check=True, capture_output=True, timeout=60)


def _total(dump: Path) -> int:
    for line in dump.read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise SystemExit(f"no summary in {dump}")


if __name__ == "__main__":
    sys.exit(main())
