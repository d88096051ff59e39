"""One measured run of a chain: its nodes started, the requester driven against them, their CPU and memory read.

Used by run.py (which puts benchmarks/, the greeter's code and tests/ on sys.path first) and its sections.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from load import GREETINGS, LoadResult, drive
from processes import NodeProc, cpu_seconds, main_thread_cpu_seconds, memory_kb, start_node

from krt_runner.local_krt.embedded import EmbeddedNats

WARM_UP = 300


@dataclass
class Run:
    """One measured configuration run."""

    kind: str
    nodes: int
    window: int
    result: LoadResult
    cpu_per_1000: float
    peak_rss_mb: list[float]
    idle_rss_mb: list[float]
    exit_codes: list[int]
    # CPU µs per answer of the processes around the nodes: nats-server, the measurement store, the requester.
    others_us: dict[str, float] = field(default_factory=dict)

    def figures(self) -> dict[str, float]:
        return {
            **self.others_us,
            "answers_per_s": self.result.per_second,
            "p50_ms": self.result.percentile(0.50),
            "p90_ms": self.result.percentile(0.90),
            "p99_ms": self.result.percentile(0.99),
            "cpu_s_per_1000": self.cpu_per_1000,
            "peak_rss_mb": max(self.peak_rss_mb),
            "idle_rss_mb": max(self.idle_rss_mb),
            "lost": self.result.lost,
            "wrong": self.result.wrong,
            "duplicates": self.result.duplicates,
        }


@dataclass
class Bench:
    nats: EmbeddedNats
    influx_url: str
    measurements_dir: str
    store_pid: int = 0  # victoria-metrics, when measurements go there
    runs: list[Run] = field(default_factory=list)

    def node_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {"KRT_MEASUREMENTS_ENABLED": "true", "KRT_LOG_LEVEL": "info"}
        if self.influx_url:
            env.update(KRT_INFLUX_URI=self.influx_url, KRT_INFLUX_TOKEN="bench:bench", KRT_INFLUX_BUCKET="kre")
        else:
            env["KRT_MEASUREMENTS_FILE"] = f"{self.measurements_dir}/{uuid.uuid4().hex}.lp"
        return {**env, **(extra or {})}

    def start_chain(self, kind: str, nodes: int, handler: str, env: dict[str, str] | None = None, *,
                    prefixes: dict[int, list[str]] | None = None) -> list[NodeProc]:  # fmt: skip
        """``prefixes``: by node index, a command to run that node under (see ``start_node``)."""
        run_id = uuid.uuid4().hex[:6]
        subjects = [f"b{run_id}-{i}" for i in range(nodes)] + [""]
        prefixes = prefixes or {}
        chain = [
            start_node(kind, url=self.nats.url, name=f"node{i}", subject_in=subjects[i], subject_out=subjects[i + 1],
                       handler=handler, env=self.node_env(env), prefix=prefixes.get(i, ()))
            for i in range(nodes)
        ]
        for index, node in enumerate(chain):
            node.wait_ready(timeout=180 if index in prefixes else 30)  # valgrind starts a node far slower
        return chain

    def measure(self, kind: str, nodes: int, window: int, count: int, **options: Any) -> Run:
        chain = self.start_chain(kind, nodes, options.get("handler", "bench_handler.py"), options.get("env"))
        driver = options.get("driver", drive)  # the requester: core NATS, or delivery.drive_js
        try:
            time.sleep(0.3)
            idle = [memory_kb(n.process.pid, "VmRSS") / 1024 for n in chain]
            entry, traffic = entry_subject(chain), options.get("traffic", GREETINGS)
            shaped = {} if traffic is GREETINGS else {"traffic": traffic}  # drive_js sends greetings only
            warm_up = WARM_UP if not traffic.distinct else 10
            asyncio.run(driver(self.nats.url, entry, count=warm_up, window=16, hops=nodes, **shaped))
            cpu_before, loops_before = _chain_cpu(chain)
            others_before = self._others_cpu()
            result = asyncio.run(driver(self.nats.url, entry, count=count, window=window, hops=nodes, **shaped))
            cpu_after, loops_after = _chain_cpu(chain)
            cpu, answered = cpu_after - cpu_before, max(1, result.answered)
            others = {f"{name}_cpu_us": 1e6 * (seconds - others_before[name]) / answered
                      for name, seconds in self._others_cpu().items()}
            # The nodes' CPU split: their event-loop threads, and the rest (krt-runner's measurement writers).
            others["loops_cpu_us"] = 1e6 * (loops_after - loops_before) / answered
            others["node_threads_cpu_us"] = 1e6 * cpu / answered - others["loops_cpu_us"]
            peak = [memory_kb(n.process.pid, "VmHWM") / 1024 for n in chain]
        finally:
            codes = [n.stop() for n in chain]
        run = Run(kind, nodes, window, result, 1000 * cpu / max(1, result.answered), peak, idle, codes, others)
        self.runs.append(run)
        _progress(run, options.get("label", ""))
        return run

    def around_nodes(self) -> list[int]:
        """The processes that work for the nodes: nats-server, and the measurement store when there is one."""
        assert self.nats.process is not None
        return [self.nats.process.pid, *([self.store_pid] if self.store_pid else [])]

    def _others_cpu(self) -> dict[str, float]:
        """CPU seconds so far of nats-server, the measurement store and this process (the requester)."""
        assert self.nats.process is not None
        cpu = {"nats": cpu_seconds(self.nats.process.pid), "requester": time.process_time()}
        if self.store_pid:
            cpu["store"] = cpu_seconds(self.store_pid)
        return cpu


def _chain_cpu(chain: list[NodeProc]) -> tuple[float, float]:
    """CPU seconds so far of the chain's processes, and of their main threads."""
    pids = [node.process.pid for node in chain]
    return sum(map(cpu_seconds, pids)), sum(map(main_thread_cpu_seconds, pids))


def entry_subject(chain: list[NodeProc]) -> str:
    """The chain's first input subject: where requests go."""
    # The first node's input subject is in its start-up arguments or environment.
    process = chain[0].process
    args = [str(arg) for arg in process.args] if isinstance(process.args, list) else []
    script = next((index for index, arg in enumerate(args) if arg.endswith("floor_node.py")), None)
    if script is not None:  # floor_node.py NATS_URL INPUT ..., maybe after a command it runs under
        return args[script + 2]
    return env_of(process.pid)["KRT_NATS_INPUT"]


def env_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def _progress(run: Run, label: str) -> None:
    f = run.figures()
    print(
        f"{label or run.kind:>12} nodes={run.nodes} W={run.window:<4} {f['answers_per_s']:8.0f}/s "
        f"p50={f['p50_ms']:.2f}ms p99={f['p99_ms']:.2f}ms cpu/1000={f['cpu_s_per_1000']:.3f}s "
        f"peak={f['peak_rss_mb']:.0f}MB lost={f['lost']} wrong={f['wrong']} dup={f['duplicates']}",
        flush=True,
    )


def spread(values: list[float]) -> dict[str, float]:
    """The median of several measurements, with their min and max."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}
