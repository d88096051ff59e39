"""BENCHMARKS.md from the benchmark's results."""

from __future__ import annotations

from typing import Any

from delivery import report as delivery_report

TARGETS = (
    ("3-node chain, W=128: answers/s", (3, 128), "answers_per_s", ">=", 1.0),
    ("1 node, W=1: p50 latency", (1, 1), "p50_ms", "<=", 1.0),
    ("CPU per 1000 messages (3-node chain, W=128)", (3, 128), "cpu_s_per_1000", "<=", 1.0),
)
IDLE_RSS_TARGET_MB = 60.0
# How far the median of fifteen pairs moved between full runs of the same code on the 2-core benchmark VM:
# a ratio this close to its goal is not decided by one run.
RUN_TO_RUN_SPREAD = 0.05
FIGURES = (
    ("answers/s", "answers_per_s", "{:.0f}"),
    ("p50 ms", "p50_ms", "{:.2f}"),
    ("p90 ms", "p90_ms", "{:.2f}"),
    ("p99 ms", "p99_ms", "{:.2f}"),
    ("CPU s/1000 msgs", "cpu_s_per_1000", "{:.3f}"),
    ("peak RSS MB/node", "peak_rss_mb", "{:.1f}"),
)


def render(results: dict[str, Any]) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Command: `{results['command']}` ({results['seconds']} s). Measurements on for krt-runner, "
        f"written to {results['measurements']}; the floor (`benchmarks/floor_node.py`) logs and measures nothing.",
        "",
        "Machine: " + ", ".join(f"{key} {value}" for key, value in results["machine"].items()),
        "",
        "Each figure is the median over the repeats, with [min - max] where a configuration was repeated. "
        "Ratios are krt-runner / floor measured in the same run. The two target configurations run as "
        "alternating pairs (floor, then krt-runner, again and again); a target is judged on the median of the "
        "pairs' ratios, which cancels the machine's drift between pairs, and the ratio of the medians is shown "
        "beside it.",
        "",
        *_targets(results),
        "",
        *_matrix(results["matrix"]),
        "",
        *_cpu_shares(_row_for(results, (3, 128))),
        "",
        *_extras(results),
    ]
    return "\n".join(lines) + "\n"


def _row_for(results: dict[str, Any], key: tuple[int, int]) -> dict[str, Any]:
    return next(r for r in results["matrix"] if (r["nodes"], r["window"]) == key)


def _targets(results: dict[str, Any]) -> list[str]:
    lines = [
        "## Targets",
        "",
        "| target | krt-runner / floor: median of pairs [min - max] | ratio of medians | goal | met |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, key, figure, op, goal in TARGETS:
        row = _row_for(results, key)
        paired = row["paired_ratio"][figure]
        ratio = paired["median"]
        met = "yes" if (ratio >= goal if op == ">=" else ratio <= goal) else "NO"
        if abs(ratio / goal - 1) < RUN_TO_RUN_SPREAD:
            met += f" (within the ±{RUN_TO_RUN_SPREAD:.0%} that one run's median moves by)"
        lines.append(f"| {label} | {ratio:.2f}x [{paired['min']:.2f} - {paired['max']:.2f}] | "
                     f"{row['ratio'][figure]:.2f}x | {op} {goal}x | {met} |")
    idle = max(r["krt"]["idle_rss_mb"]["max"] for r in results["matrix"])
    lines.append(f"| idle node RSS | {idle:.1f} MB | | <= {IDLE_RSS_TARGET_MB:.0f} MB | "
                 f"{'yes' if idle <= IDLE_RSS_TARGET_MB else 'NO'} |")
    return lines + _measurements_off(_row_for(results, (3, 128)))


def _measurements_off(row: dict[str, Any]) -> list[str]:
    """The diagnostic side of the throughput target's rounds, when the run had it."""
    if "paired_ratio_off" not in row:
        return []
    rate, cpu = row["paired_ratio_off"]["answers_per_s"], row["paired_ratio_off"]["cpu_s_per_1000"]
    loops = row["paired_ratio"]["loops_cpu_us"]
    return [
        "",
        f"Not a target, a diagnostic: in the same rounds, krt-runner with measurements off "
        f"(`KRT_MEASUREMENTS_ENABLED=false`, side `krt-off` below) ran at {rate['median']:.2f}x the floor's "
        f"answers/s [{rate['min']:.2f} - {rate['max']:.2f}] for {cpu['median']:.2f}x its CPU per 1000 messages. "
        f"The difference from the first row is what measuring costs on this machine: the writer threads, and "
        f"victoria-metrics storing the points on the same two cores. With measurements on, the krt-runner nodes' "
        f"event-loop threads alone (the message path, without the measurement writers) took {loops['median']:.2f}x "
        f"the floor's CPU per answer [{loops['min']:.2f} - {loops['max']:.2f}] (table below).",
    ]


def _cell(stats: dict[str, float], fmt: str, repeated: bool) -> str:
    text = fmt.format(stats["median"])
    if repeated:
        text += f" [{fmt.format(stats['min'])} - {fmt.format(stats['max'])}]"
    return text


def _matrix(rows: list[dict[str, Any]]) -> list[str]:
    header = "| nodes | W | runner | " + " | ".join(name for name, _, _ in FIGURES) + " | lost/wrong |"
    lines = ["## Chains", "", header, "|" + " --- |" * (len(FIGURES) + 4)]
    for row in rows:
        repeated = row["repeats"] > 1
        for kind in _sides(row):
            stats = row[kind]
            cells = " | ".join(_cell(stats[key], fmt, repeated) for _, key, fmt in FIGURES)
            bad = f"{stats['lost']['max']:.0f}/{stats['wrong']['max']:.0f}"
            lines.append(f"| {row['nodes']} | {row['window']} | {kind} | {cells} | {bad} |")
        ratios = " | ".join(f"{row['ratio'][key]:.2f}x" if row["ratio"][key] else "-" for _, key, _ in FIGURES)
        lines.append(f"| {row['nodes']} | {row['window']} | ratio | {ratios} | |")
    return lines


def _cpu_shares(row: dict[str, Any]) -> list[str]:
    """Where a request's CPU goes in the throughput target: every process shares this machine's cores."""
    columns = [("nodes: event loops", "loops_cpu_us", 1.0), ("nodes: other threads", "node_threads_cpu_us", 1.0),
               ("nats-server", "nats_cpu_us", 1.0),
               ("victoria-metrics", "store_cpu_us", 1.0), ("requester", "requester_cpu_us", 1.0)]
    lines = [
        "## Where the CPU goes (3-node chain, W=128)",
        "",
        "CPU µs per answer, medians over the pairs, of every process the run starts. They share the machine's "
        "cores, so answers/s follows their total: the InfluxDB stand-in's work, which a deployment does on "
        "another machine, counts against krt-runner here. A node's CPU is split between its event loop's "
        "thread (the message path) and its other threads: with this async handler, a krt-runner node's measurement "
        "writer (rendering and sending the points), and a log writer that runs only while the log stream is stalled.",
        "",
        "| runner | " + " | ".join(name for name, _, _ in columns) + " | total |",
        "|" + " --- |" * (len(columns) + 2),
    ]
    for kind in _sides(row):  # no victoria-metrics column figure when measurements went to a file
        values = [row[kind][key]["median"] * scale if key in row[kind] else None for _, key, scale in columns]
        cells = " | ".join("-" if value is None else f"{value:.0f}" for value in values)
        lines.append(f"| {kind} | {cells} | {sum(value or 0.0 for value in values):.0f} |")
    return lines


def _sides(row: dict[str, Any]) -> list[str]:
    return [side for side in ("floor", "krt", "krt-off") if side in row]


def _payloads(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["## Large payloads (3-node chain, W=16)", "",
             "Each request's name is padded with words to the size (about 3x compressible); 2 MB is over nats-server's "
             "1 MiB max payload, so every hop inflates and compresses it (gzip level 1 on both sides).", "",
             "| payload | runner | answers/s | p50 ms | p99 ms | CPU s/1000 msgs | lost/wrong |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        repeated = row["repeats"] > 1
        for side in ("floor", "krt"):
            f = row[side]
            lines.append(f"| {row['payload']} | {side} | {_cell(f['answers_per_s'], '{:.0f}', repeated)} | "
                         f"{_cell(f['p50_ms'], '{:.2f}', repeated)} | {_cell(f['p99_ms'], '{:.2f}', repeated)} | "
                         f"{_cell(f['cpu_s_per_1000'], '{:.3f}', repeated)} | "
                         f"{f['lost']['max']:.0f}/{f['wrong']['max']:.0f} |")
        ratio = row["paired_ratio"]
        lines.append(f"| {row['payload']} | ratio | {ratio['answers_per_s']['median']:.2f}x | "
                     f"{ratio['p50_ms']['median']:.2f}x | {ratio['p99_ms']['median']:.2f}x | "
                     f"{ratio['cpu_s_per_1000']['median']:.2f}x | |")
    return [*lines, ""]


def _extras(results: dict[str, Any]) -> list[str]:
    lines = [*_payloads(results["payloads"]), "## Concurrency: async handler awaiting 5 ms", "",
             "| KRT_CONCURRENCY | answers/s | ideal | efficiency |",
             "| --- | --- | --- | --- |"]
    for row in results["concurrency"]:
        rate, ideal, efficiency = row["answers_per_s"], row["ideal"], row["efficiency"]
        lines.append(f"| {row['concurrency']} | {rate:.0f} | {ideal} | {efficiency:.0%} |")
    memory = results["memory"]
    lines += ["", "## Sync handlers taking 2 ms (one replica, KRT_CONCURRENCY=1)", "",
              "| handler | answers/s | ideal | lost | disconnects logged |", "| --- | --- | --- | --- | --- |"]
    for key, handler in (("busy_sync_handler", "busy on the CPU in Python (holds the GIL)"),
                         ("waiting_sync_handler", "waiting with the GIL released (`time.sleep`)")):
        row = results[key]
        lines.append(f"| {handler} | {row['answers_per_s']:.0f} | 500 | {row['lost']} | {row['disconnects']} |")
    lines += [
        "",
        "## Memory",
        "",
        f"{memory['messages']} messages through one node with measurements on: "
        f"RSS {memory['rss_mb_after_first']:.1f} MB "
        f"after the first 10%, {memory['rss_mb_after_all']:.1f} MB at the end (growth {memory['growth_mb']:+.1f} MB), "
        f"lost {memory['lost']}. No garbage collection is forced per message.",
    ]
    lines += _entrypoint(results["entrypoint"])
    if "delivery" in results:
        lines += ["", *delivery_report(results["delivery"])]
    if "iris_batching" in results:
        lines += ["", *iris_batching(results["iris_batching"])]
    if results.get("failures"):
        lines += ["", "## Failures", "", *[f"- {failure}" for failure in results["failures"]]]
    return lines


def _entrypoint(result: dict[str, Any]) -> list[str]:
    rows, ratio = result["rows"], result["throughput_ratio"]
    lines = [
        "",
        "## gRPC entrypoint against NATS-direct (2-node greeter)",
        "",
        "The same two nodes called over NATS (krt_runner's Client) and through `krt-runner entrypoint` (a grpcio aio "
        f"stub), in alternating rounds ({result['repeats']} at W=128). `echo`, a diagnostic in the same rounds: the "
        "same grpcio client against a bare grpcio aio server that answers at once, with no NATS and no node "
        "(`benchmarks/grpc_echo.py`): the least a call through any entrypoint built on grpcio costs on this machine. "
        "`server CPU` is the entrypoint's (or the echo server's) CPU time per call; `chain CPU`, the two nodes', "
        "nats-server's and the measurement store's together. The CPU ceiling, a diagnostic: the most calls/s any "
        "grpcio entrypoint could reach with both cores busy, if a call cost no more than the echo's client and "
        "server plus the chain's CPU per call over NATS, against NATS-direct's answers/s (an upper bound: see "
        "`benchmarks/entrypoint_bench.py`).",
        "",
        "| via | W | answers/s | p50 ms | p99 ms | client CPU µs/call | server CPU µs/call | chain CPU µs/call |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key in ("nats-128", "grpc-128", "echo-128", "nats-1", "grpc-1", "echo-1"):
        row = rows[key]
        via, window = key.split("-")
        lines.append(f"| {via} | {window} | {row['answers_per_s']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
                     f"{1000 * row['cpu_s_per_1000']:.0f} | {row['entrypoint_cpu_us']:.0f} | "
                     f"{row['chain_cpu_us']:.0f} |")
    gap = result["p50_gap_ms"]
    lines += [
        "",
        "| goal | measured | met |",
        "| --- | --- | --- |",
        f"| W=128: gRPC >= 0.8x NATS-direct answers/s | {_spread(ratio)} | "
        f"{'yes' if ratio['median'] >= 0.8 else 'NO'} |",
        f"| W=1: gRPC p50 within 1 ms of NATS-direct | {gap:+.2f} ms | {'yes' if gap <= 1.0 else 'NO'} |",
        f"| (diagnostic) W=128: the bare grpcio echo server against NATS-direct | {_spread(result['echo_ratio'])} | |",
        "| (diagnostic) W=128: the entrypoint against the bare grpcio echo server | "
        f"{_spread(result['share_of_echo'])} | |",
        f"| (diagnostic) W=128: the CPU ceiling of any grpcio entrypoint against NATS-direct | "
        f"{_spread(result['cpu_ceiling'])} | |",
    ]
    return lines


def _spread(ratio: dict[str, float]) -> str:
    return f"{ratio['median']:.2f}x [{ratio['min']:.2f} - {ratio['max']:.2f}]"


IRIS_FIGURES = (
    ("answers_per_s", "{:.0f}"), ("cpu_us_per_answer", "{:.0f}"), ("p50_ms", "{:.2f}"), ("p99_ms", "{:.2f}"),
)


def iris_batching(section: dict[str, Any]) -> list[str]:
    """The iris classifier node unbatched and batched (benchmarks/iris_bench.py); also printed by ``--only iris``."""
    lines = [
        "## Dynamic batching: the iris classifier node",
        "",
        "examples/iris's node and its scikit-learn model, one replica, `KRT_CONCURRENCY=1`, measurements on; the "
        "150 iris flowers as requests, every answer's species checked. Unbatched: `KRT_BATCH_MAX_SIZE=1` (one "
        "`predict_proba` per request); batched: the default, up to 32 requests per `process_batch` call. Medians "
        "over the alternating pairs, with [min - max] where there were several. CPU is the node process's, per "
        "answer.",
        "",
        "| W | node | answers/s | CPU µs/answer | p50 ms | p99 ms | lost/wrong |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in section["rows"]:
        for side in ("unbatched", "batched"):
            stats = row[side]
            cells = " | ".join(_cell(stats[key], fmt, row["pairs"] > 1) for key, fmt in IRIS_FIGURES)
            lines.append(f"| {row['window']} | {side} | {cells} | {stats['lost']['max']:.0f}/"
                         f"{stats['wrong']['max']:.0f} |")
    goals, rows = section["goals"], {row["window"]: row for row in section["rows"]}
    speedup, gap = rows[128]["speedup"], rows[1]["p50_gap_ms"]
    return [
        *lines,
        "",
        "| goal | batched against unbatched: median of pairs [min - max] | met |",
        "| --- | --- | --- |",
        f"| W=128: answers/s >= {goals['speedup_goal']:g}x | {speedup['median']:.2f}x [{speedup['min']:.2f} - "
        f"{speedup['max']:.2f}] | {'yes' if goals['speedup_met'] else 'NO'} |",
        f"| W=1: p50 within {goals['p50_gap_goal_ms']:g} ms | {gap['median']:+.3f} ms [{gap['min']:+.3f} - "
        f"{gap['max']:+.3f}] | {'yes' if goals['p50_gap_met'] else 'NO'} |",
    ]
