"""ONNX scoring alone: rows/s of the bench's trained classifier, as the job scores it, per batch size.

    python -m bench.scoring [--batches 1000,10000,100000] [--rounds 3] [--rows-per-cell 100000]

Trains the benchmarks' small classifier (bench.harness.bench_training_set; no Kafka, no Flink),
then scores the same rows (the training set's, shuffled, repeated up to the largest batch) three
ways, taking turns in each round so that drift on the shared machine hits all three alike:
- `exported_default`: onnxmltools' export in a session with one intra- and one inter-op thread
  and nothing else set, the input copied by astype, as OnnxScorer scored before its tuning;
- `exported_tuned`: the same model through OnnxScorer (session_scores as the job runs it);
- `fast`: the model `streamrank train` publishes, the single-target form (models.onnx_form),
  through OnnxScorer.
Rows/s are per second of the scoring thread's CPU time: onnxruntime with one intra-op thread
runs on the calling thread, so a Flink job on the same cores does not count against a figure.
The wall-clock rates are beside them. Each figure is the median over --rounds, and each ratio the
median of the rounds' ratios to exported_default. `parity` is the publishing gate's figure
(models.onnx_form.ranking_parity, the fast form against the export over the validation
cut-offs' candidate lists) and the largest difference between their probabilities. The last
stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.harness import bench_training_set
from models.training import export_onnx, fit_and_export, onnx_scores, publish
from udfs.features import feature_names
from udfs.scorer import OnnxScorer


def exported_default(session: ort.InferenceSession):
    """OnnxScorer's scoring before its tuning: the probabilities output, the input copied."""
    def score(x: np.ndarray) -> np.ndarray:
        (out,) = session.run(["probabilities"], {session.get_inputs()[0].name: x.astype(np.float32)})
        return out[:, 1]
    return score


def rates(score, x: np.ndarray, rows: int) -> tuple[float, float]:
    """(rows per CPU second of this thread, rows per wall second) over at least `rows` rows."""
    reps = max(1, rows // len(x))
    cpu, wall = time.thread_time(), time.perf_counter()
    for _ in range(reps):
        score(x)
    return len(x) * reps / (time.thread_time() - cpu), len(x) * reps / (time.perf_counter() - wall)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", default="1000,10000,100000", help="batch sizes (rows per onnxruntime call)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, each scoring every batch size three ways")
    p.add_argument("--rows-per-cell", type=int, default=100_000,
                   help="rows scored per (way, batch size) in each round: small batches are repeated")
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="streamrank-bench-scoring-"))
    print(f"bench: work dir {work}", flush=True)
    cfg, ts = bench_training_set(work)
    trained = fit_and_export(ts, cfg, "classifier", progress=False)
    exported, _ = export_onnx(trained.model, ts.x.shape[1])
    names = feature_names(cfg.features)
    fast_dir = publish(trained, work / "fast", promote=False)
    exported_dir = publish(replace(trained, onnx=exported), work / "exported", promote=False)
    print(f"bench: classifier {trained.card['model']}, {len(ts.y)} rows ({time.monotonic() - t0:.0f} s)", flush=True)

    rng = np.random.default_rng(0)
    rows = ts.x[rng.permutation(len(ts.x))].astype(np.float32)
    rows = np.ascontiguousarray(np.tile(rows, (max(batches) // len(rows) + 1, 1))[:max(batches)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    ways = {
        "exported_default": exported_default(ort.InferenceSession(exported, opts, providers=["CPUExecutionProvider"])),
        "exported_tuned": OnnxScorer(exported_dir, names).score,
        "fast": OnnxScorer(fast_dir, names).score,
    }
    cpu: dict[str, dict[int, list[float]]] = {w: {b: [] for b in batches} for w in ways}
    wall: dict[str, dict[int, list[float]]] = {w: {b: [] for b in batches} for w in ways}
    for r in range(args.rounds):
        for b in batches:
            for w, score in ways.items():
                c, s = rates(score, rows[:b], args.rows_per_cell)
                cpu[w][b].append(c)
                wall[w][b].append(s)
        print(f"bench: round {r + 1}/{args.rounds}: " + ", ".join(
            f"{w} {cpu[w][max(batches)][-1]:,.0f}" for w in ways) + f" rows/cpu-s at {max(batches)}", flush=True)

    held = ts.cutoff >= trained.card["holdout"]["split_at_ms"]
    diff = float(np.max(np.abs(onnx_scores(exported, ts.x[held]) - onnx_scores(trained.onnx, ts.x[held]))))
    against = trained.card["onnx_form"].get("against_export", {})

    def med(d: dict[str, dict[int, list[float]]]) -> dict[str, dict[str, int]]:
        return {w: {str(b): round(statistics.median(v)) for b, v in per.items()} for w, per in d.items()}

    report = {
        "model": trained.card["model"], "features": len(names), "onnxruntime": ort.__version__, "threads": 1,
        "rows_per_cpu_s": med(cpu), "rows_per_wall_s": med(wall),
        "ratio_to_exported_default": {
            w: {str(b): round(statistics.median(c / d for c, d in zip(cpu[w][b], cpu["exported_default"][b])), 3)
                for b in batches} for w in ways if w != "exported_default"},
        "parity": {"fast_form": trained.card["onnx_form"]["form"], "top10_overlap": against.get("top10_overlap"),
                   "kendall_tau": against.get("kendall_tau"), "lists": against.get("lists"),
                   "max_abs_diff_vs_export": diff, "parity_vs_lightgbm": trained.card["onnx_parity_max_diff"]},
        "rounds": args.rounds, "seconds": round(time.monotonic() - t0, 1),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
