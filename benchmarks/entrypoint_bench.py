"""The gRPC entrypoint against NATS-direct, in the benchmark's run: the 2-node greeter, called both ways.

The same two krt-runner nodes (examples/greeter, measurements as in the rest of
the run) are called, in alternating pairs, by ``call_load.py``: over NATS with
krt_runner's Client, and through ``krt-runner entrypoint`` with a grpcio aio
stub. Both clients are separate processes on the same two cores as everything
else. A third side at W=128 and W=1, a diagnostic: the same grpcio client against a bare grpcio aio server that
answers at once (grpc_echo.py), the least a call through any entrypoint built on grpcio costs on this machine.

A second diagnostic, the CPU ceiling: each round's most calls/s any grpcio entrypoint could reach with the
machine's cores all busy, if its calls cost no more than the echo server's (client and server) plus what the
chain (the nodes, nats-server, the measurement store) spent per call when called over NATS in that round, taken
against that round's NATS-direct answers/s. An upper bound: the chain costs more per call at the entrypoint's lower
rate, where fewer messages share a write.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from typing import Any

from bench import spread
from processes import BENCH, ROOT, NodeProc, cpu_seconds, start_node

from krt_runner.local_krt.embedded import stop_process

GREETER = ROOT / "examples" / "greeter"
SUBJECT = "greeter-v1-Greet-entrypoint"  # what the entrypoint sends Greet calls to (krt.yml's version)
WARM_UP = 300  # calls before each measured series (the entrypoint's CPU is read around both)


def entrypoint_vs_nats(nats_url: str, node_env: dict[str, str], *, around: list[int], quick: bool) -> dict[str, Any]:
    """Answers/s at W=128 and p50 at W=1, both ways, in alternating pairs; the entrypoint's CPU per call, and the
    chain's: the nodes' and that of the processes ``around`` them (nats-server, the measurement store)."""
    nodes = _start_greeter(nats_url, node_env)
    entrypoint = _start_entrypoint(nats_url)
    echo = NodeProc("grpc-echo", _popen([sys.executable, str(BENCH / "grpc_echo.py")], dict(os.environ)))
    try:
        servers = {"nats": (nats_url, entrypoint), "grpc": (_wait_address(entrypoint, "entrypoint ready"), entrypoint),
                   "echo": (_wait_address(echo, "echo ready"), echo)}
        samples: dict[str, list[dict[str, float]]] = {}
        chain = [node.process.pid for node in nodes] + around
        plan = ((128, 500 if quick else 8000, 1 if quick else 5), (1, 100 if quick else 1500, 1))
        for window, count, repeats in plan:
            for repeat in range(repeats):
                for via in ("nats", "grpc", "echo") if repeat % 2 == 0 else ("echo", "grpc", "nats"):
                    address, server = servers[via]
                    sample = _load(via, address, count, window, server, chain=chain)
                    samples.setdefault(f"{via}-{window}", []).append(sample)
    finally:
        for server in (entrypoint, echo):
            stop_process(server.process, timeout=30)
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
    return NodeProc("entrypoint", _popen([sys.executable, "-m", "krt_runner", "entrypoint", str(GREETER)], env))


def _popen(command: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_address(server: NodeProc, marker: str) -> str:
    server.wait_ready(marker=marker)
    ready = next(json.loads(line) for line in server.lines if f'"{marker}"' in line)
    return str(ready["address"])


def _load(via: str, address: str, count: int, window: int, server: NodeProc, *, chain: list[int]) -> dict[str, float]:
    """One series; ``server``'s CPU per call beside the client's (the entrypoint's is 0 when called over NATS),
    and the ``chain`` processes' together."""
    before, chain_before = cpu_seconds(server.process.pid), sum(map(cpu_seconds, chain))
    client = "nats" if via == "nats" else "grpc"
    command = [sys.executable, str(BENCH / "call_load.py"), client, address, "--subject", SUBJECT,
               "--count", str(count), "--window", str(window), "--warm-up", str(WARM_UP)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    result: dict[str, float] = json.loads(done.stdout)
    result["entrypoint_cpu_us"] = 1e6 * (cpu_seconds(server.process.pid) - before) / (count + WARM_UP)
    result["chain_cpu_us"] = 1e6 * (sum(map(cpu_seconds, chain)) - chain_before) / (count + WARM_UP)
    print(f"{via:>12} greeter W={window:<4} {result['answers_per_s']:8.0f}/s p50={result['p50_ms']:.2f}ms "
          f"p99={result['p99_ms']:.2f}ms wrong={result['wrong']:.0f} "
          f"entrypoint cpu={result['entrypoint_cpu_us']:.0f}µs", flush=True)
    return result


def _summary(samples: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    def median(key: str, figure: str) -> float:
        return statistics.median(sample[figure] for sample in samples[key])

    rows = {key: {figure: median(key, figure) for figure in runs[0]} for key, runs in samples.items()}
    return {
        "rows": rows,
        "throughput_ratio": _paired_ratio(samples["grpc-128"], samples["nats-128"]),
        "echo_ratio": _paired_ratio(samples["echo-128"], samples["nats-128"]),
        "share_of_echo": _paired_ratio(samples["grpc-128"], samples["echo-128"]),
        "cpu_ceiling": _cpu_ceiling(samples["echo-128"], samples["nats-128"]),
        "p50_gap_ms": rows["grpc-1"]["p50_ms"] - rows["nats-1"]["p50_ms"],
        "wrong": sum(sample["wrong"] for runs in samples.values() for sample in runs),
        "repeats": len(samples["nats-128"]),
    }


def _paired_ratio(tops: list[dict[str, float]], bottoms: list[dict[str, float]]) -> dict[str, float]:
    """answers/s of each ``tops`` sample over its round's ``bottoms`` one: median, min and max."""
    ratios = [top["answers_per_s"] / bottom["answers_per_s"] for top, bottom in zip(tops, bottoms, strict=True)]
    return spread(ratios)


def _cpu_ceiling(echoes: list[dict[str, float]], direct: list[dict[str, float]]) -> dict[str, float]:
    """Each round's CPU ceiling over its NATS-direct answers/s (see the module): median, min and max."""
    cores = os.cpu_count() or 1

    def ceiling(echo: dict[str, float], nats: dict[str, float]) -> float:
        least_us = 1000 * echo["cpu_s_per_1000"] + echo["entrypoint_cpu_us"] + nats["chain_cpu_us"]
        return cores * 1e6 / least_us / nats["answers_per_s"]

    ratios = [ceiling(echo, nats) for echo, nats in zip(echoes, direct, strict=True)]
    return spread(ratios)
