"""The iris classifier node unbatched and batched, in the same run: what dynamic batching does for a real model.

The example's node (bench_iris.py: examples/iris's Processor and the scikit-learn model its train.py makes), one
replica, ``KRT_CONCURRENCY=1``, measurements on as in the rest of the run. The requests are the 150 flowers of the
iris data in turn, and each answer's species is checked against the model's own prediction. Unbatched:
``KRT_BATCH_MAX_SIZE=1``, one ``predict_proba`` per request; batched: the default (32 per batch), one per batch.
W = 1, 16 and 128, the two sides in alternating pairs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import spread
from load import Traffic
from processes import BENCH, ROOT

if TYPE_CHECKING:
    from bench import Bench, Run

IRIS = ROOT / "examples" / "iris"
# Issue 24's goals: at W=128 the batched node answers at least 4x as many requests per second as the unbatched one;
# at W=1 its p50 latency is within 0.2 ms of the unbatched node's.
THROUGHPUT_GOAL = 4.0
LATENCY_GOAL_MS = 0.2
SIDES = {"unbatched": {"KRT_BATCH_MAX_SIZE": "1"}, "batched": {}}


def iris_batching(bench: Bench, scratch: Path, *, quick: bool) -> dict[str, Any]:
    """Both sides at each W; the goals judged on the medians of the pairs."""
    base = _trained_copy(scratch)
    traffic = _traffic(base)
    rows = []
    for window, count, repeats in _plan(quick):
        samples: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
        for repeat in range(repeats):
            for side in list(SIDES) if repeat % 2 == 0 else list(SIDES)[::-1]:  # neither side always first
                run = bench.measure("krt", 1, window, count, handler=str(BENCH / "bench_iris.py"),
                                    env={"KRT_BASE_PATH": str(base), **SIDES[side]}, traffic=traffic,
                                    label=f"iris {side}")
                samples[side].append(_figures(run))
        rows.append(_row(window, samples))
    return {"rows": rows, "goals": _goals(rows)}


def _plan(quick: bool) -> list[tuple[int, int, int]]:
    """(W, requests per run, pairs): the goals' two windows repeated, each run a few seconds long."""
    if quick:
        return [(1, 200, 1), (16, 300, 1), (128, 600, 1)]
    return [(1, 2000, 3), (16, 5000, 1), (128, 12000, 3)]


def _trained_copy(scratch: Path) -> Path:
    """A base path whose models/model.joblib is the example's model, trained by examples/iris/train.py."""
    sys.path.insert(0, str(IRIS))
    import joblib
    from train import train

    base = scratch / "iris"
    (base / "models").mkdir(parents=True, exist_ok=True)
    model, _ = train()
    joblib.dump(model, base / "models" / "model.joblib")
    return base


def _traffic(base: Path) -> Traffic:
    """The iris flowers as requests, in turn; an answer is right when it names the species the model predicts."""
    sys.path.insert(0, str(IRIS / "src"))
    import joblib
    from iris_pb2 import Request, Response
    from sklearn.datasets import load_iris

    data = load_iris().data
    expected = [str(species) for species in joblib.load(base / "models" / "model.joblib").predict(data)]
    flowers = [Request(sepal_length=a, sepal_width=b, petal_length=c, petal_width=d) for a, b, c, d in data]

    def is_right(payload: Any, index: int) -> bool:
        response = Response()
        return bool(payload.Unpack(response)) and response.species == expected[index % len(expected)]

    return Traffic(request=lambda index: flowers[index % len(flowers)], is_right=is_right)


def _figures(run: Run) -> dict[str, float]:
    figures = run.figures()
    return {
        "answers_per_s": figures["answers_per_s"],
        "cpu_us_per_answer": 1000 * figures["cpu_s_per_1000"],
        "p50_ms": figures["p50_ms"],
        "p99_ms": figures["p99_ms"],
        "lost": figures["lost"],
        "wrong": figures["wrong"],
    }


def _row(window: int, samples: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    row: dict[str, Any] = {"window": window, "pairs": len(samples["batched"])}
    for side, runs in samples.items():
        row[side] = {key: spread([run[key] for run in runs]) for key in runs[0]}
    pairs = list(zip(samples["unbatched"], samples["batched"], strict=True))
    row["speedup"] = spread([b["answers_per_s"] / u["answers_per_s"] for u, b in pairs if u["answers_per_s"]] or [0])
    row["p50_gap_ms"] = spread([b["p50_ms"] - u["p50_ms"] for u, b in pairs])
    return row


def _goals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by_window = {row["window"]: row for row in rows}
    speedup, gap = by_window[128]["speedup"]["median"], by_window[1]["p50_gap_ms"]["median"]
    return {"speedup_at_128": speedup, "speedup_goal": THROUGHPUT_GOAL, "speedup_met": speedup >= THROUGHPUT_GOAL,
            "p50_gap_ms_at_1": gap, "p50_gap_goal_ms": LATENCY_GOAL_MS, "p50_gap_met": gap <= LATENCY_GOAL_MS}
