"""krt-runner against a hand-written nats-py floor, in the same run, on this machine.

    .venv/bin/python benchmarks/run.py            # full run: writes BENCHMARKS.md and benchmarks/results.json
    .venv/bin/python benchmarks/run.py --quick    # a small smoke run (used by the test suite), written to the temp dir
    .venv/bin/python benchmarks/run.py --only delivery   # just at-most-once against at-least-once; prints it
    .venv/bin/python benchmarks/run.py --only iris  # one section: prints its table, writes no report

Starts its own nats-server and victoria-metrics (for "measurements on") on free
loopback ports and stops them at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "greeter" / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # influx_server: the tests' VictoriaMetrics

from bench import Bench, Run, env_of, spread
from delivery import delivery_modes
from entrypoint_bench import entrypoint_vs_nats
from iris_bench import iris_batching
from load import drive, large_greetings
from processes import (
    ROOT,
    machine,
    memory_kb,
    start_store,
)

from krt_runner.local_krt.embedded import EmbeddedNats

MEASUREMENTS_OFF = {"KRT_MEASUREMENTS_ENABLED": "false"}


def main_matrix(bench: Bench, *, quick: bool) -> list[dict[str, Any]]:
    """Chains of 1 and 3 nodes at W = 1, 16, 128; krt-runner against the floor, alternating."""
    rows = []
    for nodes in (1, 3):
        for window in (1, 16, 128):
            main = (nodes, window) in ((3, 128), (1, 1))
            # The targets: many short alternating pairs, so that the machine's drift hits both sides alike.
            repeats = 1 if quick else (15 if main else 1)
            count = (200 if window == 1 else 3000 if main else 1000) if quick else (
                2000 if window == 1 else 20000 if main else 10000)
            # (Quick: the 3-node target runs long enough for nats-server to use several of /proc's 10 ms CPU ticks.)
            # A diagnostic in the throughput target's rounds, not a target: krt-runner with measurements off shows
            # what measuring costs on this machine (the writer threads, and victoria-metrics on the same cores).
            sides = ("floor", "krt", "krt-off") if (nodes, window) == (3, 128) else ("floor", "krt")
            samples: dict[str, list[Run]] = {side: [] for side in sides}
            for repeat in range(repeats):
                for side in sides if repeat % 2 == 0 else sides[::-1]:  # neither side always first
                    samples[side].append(_measure_side(bench, side, nodes, window, count))
            rows.append(_compare(nodes, window, samples))
    return rows


def _measure_side(bench: Bench, side: str, nodes: int, window: int, count: int) -> Run:
    if side == "krt-off":
        return bench.measure("krt", nodes, window, count, env=MEASUREMENTS_OFF, label=side)
    return bench.measure(side, nodes, window, count)


def _compare(nodes: int, window: int, samples: dict[str, list[Run]]) -> dict[str, Any]:
    row: dict[str, Any] = {"nodes": nodes, "window": window, "repeats": len(samples["krt"])}
    for kind, runs in samples.items():
        figures = [run.figures() for run in runs]
        row[kind] = {key: spread([f[key] for f in figures]) for key in figures[0]}
    keys = ("answers_per_s", "p50_ms", "p90_ms", "p99_ms", "cpu_s_per_1000", "peak_rss_mb", "loops_cpu_us")
    row["ratio"] = {
        key: row["krt"][key]["median"] / row["floor"][key]["median"] if row["floor"][key]["median"] else None
        for key in keys
    }
    # krt / floor of each pair run back to back: what the targets are judged on (see report.py).
    row["paired_ratio"] = _paired(samples["floor"], samples["krt"], keys)
    if "krt-off" in samples:
        row["paired_ratio_off"] = _paired(samples["floor"], samples["krt-off"], keys)
    return row


def _paired(floors: list[Run], others: list[Run], keys: tuple[str, ...]) -> dict[str, dict[str, float]]:
    pairs = [(floor.figures(), other.figures()) for floor, other in zip(floors, others, strict=True)]
    return {key: spread([o[key] / f[key] for f, o in pairs if f[key]] or [0.0]) for key in keys}


PAYLOADS = ((100 * 1024, "100 KB"), (2 * 1024 * 1024, "2 MB"))


def payload_rows(bench: Bench, *, quick: bool) -> list[dict[str, Any]]:
    """The 3-node chain at W=16 with large payloads (2 MB: over the max payload, so gzip on every hop), against the
    floor, in alternating pairs."""
    rows = []
    for size, label in PAYLOADS:
        count = (60 if size < 1 << 20 else 16) if quick else (2000 if size < 1 << 20 else 200)
        repeats = 1 if quick else 3
        samples: dict[str, list[Run]] = {"floor": [], "krt": []}
        for repeat in range(repeats):
            for side in ("floor", "krt") if repeat % 2 == 0 else ("krt", "floor"):
                samples[side].append(bench.measure(side, 3, 16, count, traffic=large_greetings(size),
                                                   label=f"{side} {label}"))
        rows.append({"payload": label, **_compare(3, 16, samples)})
    return rows


def concurrency_scaling(bench: Bench, *, quick: bool) -> list[dict[str, Any]]:
    """An async handler awaiting 5 ms at KRT_CONCURRENCY 1, 8, 32: ideal is 200/s per slot."""
    rows = []
    for slots in (1, 8, 32):
        count = (40 if quick else 200) * slots
        run = bench.measure("krt", 1, 64, count, handler="bench_handler_sleep.py",
                            env={"KRT_CONCURRENCY": str(slots)}, label=f"sleep5ms c={slots}")
        rate = run.result.per_second
        rows.append({"concurrency": slots, "answers_per_s": rate, "ideal": 200 * slots,
                     "efficiency": rate / (200 * slots), "lost": run.result.lost})
    return rows


def sync_handler(bench: Bench, handler: str, label: str, *, quick: bool) -> dict[str, Any]:
    """A sync handler taking 2 ms: close to 500/s per replica, the connection healthy."""
    chain = bench.start_chain("krt", 1, handler)
    try:
        entry = env_of(chain[0].process.pid)["KRT_NATS_INPUT"]
        result = asyncio.run(drive(bench.nats.url, entry, count=300 if quick else 2000, window=16, hops=1))
    finally:
        chain[0].stop()
    disconnects = sum("disconnected" in line for line in chain[0].lines)
    print(f"{label:>12}  {result.per_second:.0f}/s lost={result.lost} disconnects={disconnects}", flush=True)
    return {"answers_per_s": result.per_second, "lost": result.lost, "disconnects": disconnects}


def memory_growth(bench: Bench, *, quick: bool) -> dict[str, Any]:
    """100,000 messages through one node with measurements on: RSS after 10,000 against the end."""
    first, rest = (2000, 8000) if quick else (10_000, 90_000)
    chain = bench.start_chain("krt", 1, "bench_handler.py")
    pid = chain[0].process.pid
    try:
        entry = env_of(pid)["KRT_NATS_INPUT"]
        asyncio.run(drive(bench.nats.url, entry, count=first, window=64, hops=1))
        after_first = memory_kb(pid, "VmRSS") / 1024
        result = asyncio.run(drive(bench.nats.url, entry, count=rest, window=64, hops=1))
        after_all = memory_kb(pid, "VmRSS") / 1024
    finally:
        chain[0].stop()
    growth = after_all - after_first
    print(f"   memory    after {first}: {after_first:.1f}MB, after {first + rest}: {after_all:.1f}MB", flush=True)
    return {"messages": first + rest, "rss_mb_after_first": after_first, "rss_mb_after_all": after_all,
            "growth_mb": growth, "lost": result.lost}


def write_report(results: dict[str, Any], path: Path) -> None:
    from report import render

    path.write_text(render(results))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts, one repeat: a smoke run")
    parser.add_argument("--only", choices=("iris", "delivery"), help="run this section alone: print its table, write "
                        "no report (and results only to --json when given)")
    parser.add_argument("--out", type=Path, help="default: BENCHMARKS.md (with --quick: in a folder of the temporary "
                        "directory, so a smoke run never replaces the committed report)")
    parser.add_argument("--json", type=Path, help="default: benchmarks/results.json (with --quick: beside --out's "
                        "default; with --only: none)")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so every server and node started here is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.only == "delivery":
        return only_delivery(quick=args.quick)
    started = time.time()
    with EmbeddedNats() as nats_server, tempfile.TemporaryDirectory() as scratch:
        influx = start_store()
        try:
            store_pid = influx.process.pid if influx and influx.process else 0
            bench = Bench(nats_server, influx.url if influx else "", scratch, store_pid=store_pid)
            results = {
                "machine": machine(),
                "command": " ".join([".venv/bin/python", "benchmarks/run.py", *sys.argv[1:]]),
                "measurements": "victoria-metrics (InfluxDB v2 write API)" if influx else "line-protocol file",
                **(_sections(bench, Path(scratch), quick=args.quick) if args.only is None else
                   {"iris_batching": iris_batching(bench, Path(scratch), quick=args.quick)}),
            }
        finally:
            if influx:
                influx.close()
    results["seconds"] = round(time.time() - started, 1)
    results["failures"] = _failures(bench, results)
    return _write(results, args)


def _sections(bench: Bench, scratch: Path, *, quick: bool) -> dict[str, Any]:
    return {
        "matrix": main_matrix(bench, quick=quick),
        "payloads": payload_rows(bench, quick=quick),
        "concurrency": concurrency_scaling(bench, quick=quick),
        # Busy on the CPU in Python (holding the GIL), and waiting with the GIL released.
        "busy_sync_handler": sync_handler(bench, "bench_handler_busy.py", "busy 2ms", quick=quick),
        "waiting_sync_handler": sync_handler(bench, "bench_handler_wait.py", "wait 2ms", quick=quick),
        "memory": memory_growth(bench, quick=quick),
        "entrypoint": entrypoint_vs_nats(bench.nats.url, bench.node_env(), around=bench.around_nodes(), quick=quick),
        "delivery": _delivery(bench, quick=quick),
        "iris_batching": iris_batching(bench, scratch, quick=quick),
    }


def _write(results: dict[str, Any], args: argparse.Namespace) -> int:
    if args.only is None:
        out, json_path = _report_paths(args)
        json_path.write_text(json.dumps(results, indent=2))
        write_report(results, out)
        print(f"wrote {out} and {json_path} in {results['seconds']}s")
    else:
        from report import iris_batching as iris_report

        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        print(f"\n{results['command']} ({results['seconds']} s), machine: {results['machine']}\n")
        print("\n".join(iris_report(results["iris_batching"])))
        print("\n".join(f"failure: {failure}" for failure in results["failures"]))
    return 1 if results["failures"] else 0


def _report_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """Where the report and the results go: the repository's for a full run, a scratch folder's for ``--quick``."""
    if not args.quick:
        return args.out or ROOT / "BENCHMARKS.md", args.json or ROOT / "benchmarks" / "results.json"
    scratch = Path(tempfile.gettempdir()) / "krt-runner-quick-benchmark"
    scratch.mkdir(exist_ok=True)
    return args.out or scratch / "BENCHMARKS.md", args.json or scratch / "results.json"


def _delivery(bench: Bench, *, quick: bool) -> list[dict[str, Any]]:
    """The delivery modes on a nats-server of their own, with JetStream (so the rest runs as it always did); and,
    not in a quick run, the diagnostic one whose store is in /dev/shm."""
    shm = Path("/dev/shm")
    with EmbeddedNats(jetstream=True) as js_server, contextlib.ExitStack() as more:
        delivery_bench = Bench(js_server, bench.influx_url, bench.measurements_dir, store_pid=bench.store_pid)
        tmpfs_bench = None
        if shm.is_dir() and not quick:
            store = more.enter_context(tempfile.TemporaryDirectory(dir=shm, prefix="krt-bench-js-"))
            tmpfs_server = more.enter_context(EmbeddedNats(extra_args=["-js", "-sd", store]))
            tmpfs_bench = Bench(tmpfs_server, bench.influx_url, bench.measurements_dir, store_pid=bench.store_pid)
        rows = delivery_modes(delivery_bench, tmpfs_bench, quick=quick)
    bench.runs += delivery_bench.runs + (tmpfs_bench.runs if tmpfs_bench else [])
    return rows


def only_delivery(*, quick: bool) -> int:
    """``--only delivery``: that section alone, printed as BENCHMARKS.md would show it."""
    from delivery import report

    with tempfile.TemporaryDirectory() as scratch:
        influx = start_store()
        try:
            store_pid = influx.process.pid if influx and influx.process else 0
            with EmbeddedNats() as unused:
                bench = Bench(unused, influx.url if influx else "", scratch, store_pid=store_pid)
                rows = _delivery(bench, quick=quick)
        finally:
            if influx:
                influx.close()
    print("\n".join([f"Machine: {machine()}", "", *report(rows)]))
    failures = _failures(bench, {"entrypoint": {"wrong": 0}})
    print("\n".join(failures))
    return 1 if failures else 0


def _failures(bench: Bench, results: dict[str, Any]) -> list[str]:
    failures = []
    if results.get("entrypoint", {}).get("wrong"):
        failures.append(f"gRPC entrypoint or NATS-direct calls answered wrongly: {results['entrypoint']['wrong']}")
    for run in bench.runs:
        f = run.figures()
        if f["lost"] or f["wrong"] or f["duplicates"] or any(run.exit_codes):
            failures.append(f"{run.kind} nodes={run.nodes} W={run.window}: {f} exit={run.exit_codes}")
    return failures


if __name__ == "__main__":
    sys.exit(main())
