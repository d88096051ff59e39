"""The gRPC entrypoint against NATS-direct, in the benchmark's run: the 2-node greeter, called both ways.

The same two krt-runner nodes (examples/greeter, measurements as in the rest of
the run) are called, in alternating pairs, by ``call_load.py``: over NATS with
krt_runner's Client, and through ``krt-runner entrypoint`` with a grpcio aio
stub. Both clients are separate processes on the same two cores as everything
else.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from typing import Any

from processes import BENCH, ROOT, NodeProc, cpu_seconds, start_node

from krt_runner.local_krt.embedded import stop_process

GREETER = ROOT / "examples" / "greeter"
SUBJECT = "greeter-v1-Greet-entrypoint"  # what the entrypoint sends Greet calls to (krt.yml's version)
WARM_UP = 300  # calls before each measured series (the entrypoint's CPU is read around both)


def entrypoint_vs_nats(nats_url: str, node_env: dict[str, str], *, quick: bool) -> dict[str, Any]:
    """Answers/s at W=128 and p50 at W=1, both ways, in alternating pairs; the entrypoint's CPU per call."""
    nodes = _start_greeter(nats_url, node_env)
    entrypoint = _start_entrypoint(nats_url)
    try:
        address = _wait_address(entrypoint)
        samples: dict[str, list[dict[str, float]]] = {}
        plan = ((128, 500 if quick else 8000, 1 if quick else 5), (1, 100 if quick else 1500, 1))
        for window, count, repeats in plan:
            for repeat in range(repeats):
                for via in ("nats", "grpc") if repeat % 2 == 0 else ("grpc", "nats"):
                    samples.setdefault(f"{via}-{window}", []).append(
                        _load(via, address if via == "grpc" else nats_url, count, window, entrypoint))
    finally:
        stop_process(entrypoint.process, timeout=30)
        for node in nodes:
            node.stop()
    return _summary(samples)


def _start_greeter(nats_url: str, node_env: dict[str, str]) -> list[NodeProc]:
    wiring = (("greet", SUBJECT, "bench-greet-decorate"), ("decorate", "bench-greet-decorate", ""))
    nodes = [
        start_node("krt", url=nats_url, name=name, subject_in=subject_in, subject_out=subject_out,
                   handler=str(GREETER / "src" / f"{name}.py"), env=node_env)
        for name, subject_in, subject_out in wiring
    ]
    for node in nodes:
        node.wait_ready()
    return nodes


def _start_entrypoint(nats_url: str) -> NodeProc:
    env = {key: value for key, value in os.environ.items() if not key.startswith("KRT_")}
    env.update(KRT_NATS_SERVER=nats_url, KRT_LOG_FORMAT="json", KRT_ENTRYPOINT_HOST="127.0.0.1",
               KRT_ENTRYPOINT_PORT="0")
    command = [sys.executable, "-m", "krt_runner", "entrypoint", str(GREETER)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return NodeProc("entrypoint", process)


def _wait_address(entrypoint: NodeProc) -> str:
    entrypoint.wait_ready(marker="entrypoint ready")
    ready = next(json.loads(line) for line in entrypoint.lines if '"entrypoint ready"' in line)
    return str(ready["address"])


def _load(via: str, address: str, count: int, window: int, entrypoint: NodeProc) -> dict[str, float]:
    before = cpu_seconds(entrypoint.process.pid)
    command = [sys.executable, str(BENCH / "call_load.py"), via, address, "--subject", SUBJECT,
               "--count", str(count), "--window", str(window), "--warm-up", str(WARM_UP)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    result: dict[str, float] = json.loads(done.stdout)
    result["entrypoint_cpu_us"] = 1e6 * (cpu_seconds(entrypoint.process.pid) - before) / (count + WARM_UP)
    print(f"{via:>12} greeter W={window:<4} {result['answers_per_s']:8.0f}/s p50={result['p50_ms']:.2f}ms "
          f"p99={result['p99_ms']:.2f}ms wrong={result['wrong']:.0f} "
          f"entrypoint cpu={result['entrypoint_cpu_us']:.0f}µs", flush=True)
    return result


def _summary(samples: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    def median(key: str, figure: str) -> float:
        return statistics.median(sample[figure] for sample in samples[key])

    pairs = list(zip(samples["nats-128"], samples["grpc-128"], strict=True))
    ratios = [grpc["answers_per_s"] / nats["answers_per_s"] for nats, grpc in pairs]
    rows = {key: {figure: median(key, figure) for figure in runs[0]} for key, runs in samples.items()}
    return {
        "rows": rows,
        "throughput_ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
        "p50_gap_ms": rows["grpc-1"]["p50_ms"] - rows["nats-1"]["p50_ms"],
        "wrong": sum(sample["wrong"] for runs in samples.values() for sample in runs),
        "repeats": len(pairs),
    }
