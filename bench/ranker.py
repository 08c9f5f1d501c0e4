"""The Python ranker's own cost, outside Flink: udfs.ranking.BatchRanker fed the way the live job
feeds it, on a real Redis with the bench model.

    python -m bench.ranker [--rate 10000] [--seconds 20] [--users 10000] [--set SECTION.KEY=JSON ...]

A simulated stream of --rate events/s (the bench's simulator) is cut into early rows every
features.early_fire_s and final windows once the watermark (out_of_orderness_s) passes them, on a
simulated clock, after a warm-up minute of final windows (boards and states) and a settling span
(micro_batch_s + out_of_orderness_s + min_interval_s) that is not measured. It reports the CPU
the ranker spent per row, per list written, and the cores it needs to keep up with that stream
(`cores_needed`): the floor under the live job's freshness at that rate, before Flink, Kafka and
Arrow add theirs. `onnx_share` is the part of it in onnxruntime. The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import redis

from bench.harness import bench_training_set, parse_sets, toml_value
from contract.config import JobConfig, load_config
from devstack.stack import free_port, start_redis, stop_pid
from jobs.store import RedisStore, write_item_meta
from models.training import train_and_publish
from traffic.simulator import Simulator
from udfs.features import Event, WindowDelta, feature_names
from udfs.ranking import BatchRanker
from udfs.scorer import ModelWatcher


def _rows(events: list[dict], window_end: int) -> list[WindowDelta]:
    """One row per user, as the job's LISTAGG builds it."""
    by: dict[str, list[str]] = collections.defaultdict(list)
    for e in events:
        by[e["user_id"]].append(Event(e["event_id"], e["type"], e["item_id"], e["category"], e["ts"],
                                      float(e.get("value", 0.0)), True).encode())
    return [WindowDelta(u, window_end, ";".join(v)) for u, v in by.items()]


def ranker_cost(cfg: JobConfig, r: redis.Redis, rate: float, seconds: float, users: int,
                warmup_s: float = 60.0) -> dict:
    """Replay `seconds` of a `rate` events/s stream through a BatchRanker on cfg's Redis and model."""
    sim = Simulator(seed=43, users=users, items=5000, categories=30)
    write_item_meta(r, [(i.item_id, i.category, i.price, True) for i in sim.items])
    clock = [0.0]
    ranker = BatchRanker(cfg, ModelWatcher(cfg.scoring.model_dir, feature_names(cfg.features), 1e9),
                         RedisStore(cfg, r), clock=lambda: clock[0])
    f = cfg.features
    mb, early, lag = int(f.micro_batch_s * 1000), int(f.early_fire_s * 1000), int(f.out_of_orderness_s * 1000)
    if early <= 0:
        raise SystemExit("bench.ranker replays early rows: features.early_fire_s must be > 0")
    start = int(time.time() * 1000) - int(warmup_s * 1000)
    span_s = warmup_s + seconds + 2 * (f.micro_batch_s + f.out_of_orderness_s) + cfg.scoring.min_interval_s + 1
    events = iter(list(sim.events(start, rate, int(rate * span_s))))  # generated before timing
    held: list[dict] = []  # read past the current span

    def until(t_ms: int) -> list[dict]:
        out = [e for e in held if e["ts"] < t_ms]
        held[:] = [e for e in held if e["ts"] >= t_ms]
        for e in events:
            if e["ts"] >= t_ms:
                held.append(e)
                break
            out.append(e)
        return out

    t = start
    while t < start + warmup_s * 1000:  # warm-up: final windows only
        clock[0] = (t + mb + lag) / 1000
        ranker.rank(_rows(until(t + mb), t + mb))
        t += mb
    pending: dict[int, list[dict]] = collections.defaultdict(list)
    rows = lists = 0
    onnx = ranker.scorer.current().session
    onnx_s = [0.0]
    run = onnx.run

    def timed_run(*a, **kw):
        t0 = time.process_time()
        try:
            return run(*a, **kw)
        finally:
            onnx_s[0] += time.process_time() - t0

    onnx.run = timed_run
    # the warm-up's last final window was ranked at t + lag: the live clock starts there (the
    # events in between are dropped), and the first micro_batch + lateness + min_interval of it
    # are not measured (no final window is due yet, and users scored at the end of the warm-up
    # are still held back), so the measured span carries the full live load
    until(t + lag)
    t += lag
    settle = mb + lag + int(cfg.scoring.min_interval_s * 1000)
    measure_from, end = t + settle, t + settle + seconds * 1000
    cpu0 = time.process_time()
    while t < end:
        if t < measure_from <= t + early:
            cpu0, rows, lists, onnx_s[0] = time.process_time(), 0, 0, 0.0
        span = until(t + early)
        deltas = _rows(span, 0)
        for e in span:
            pending[(e["ts"] // mb + 1) * mb].append(e)
        t += early
        for w in sorted(w for w in pending if w + lag <= t):
            deltas += _rows(pending.pop(w), w)
        clock[0] = t / 1000
        ranker.rank(deltas)
        rows += len(deltas)
        lists += len(ranker.written)
    cpu = time.process_time() - cpu0
    return {"ranker_rate_events_per_s": rate, "ranker_rows_per_s": round(rows / seconds),
            "ranker_lists_per_s": round(lists / seconds),
            "ranker_cpu_ms_per_row": round(1000 * cpu / max(rows, 1), 3),
            "ranker_cpu_ms_per_list": round(1000 * cpu / max(lists, 1), 3),
            "ranker_onnx_share": round(onnx_s[0] / max(cpu, 1e-9), 3),
            "ranker_cores_needed": round(cpu / seconds, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=10000.0, help="events/s of the simulated live stream")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds of that stream measured")
    p.add_argument("--users", type=int, default=10000)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=JSON",
                   help="job config, e.g. scoring.min_interval_s=1")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="streamrank-ranker-"))
    svc = start_redis(work, free_port())
    try:
        cfg0, ts = bench_training_set(work)
        model = train_and_publish(ts, work / "models", cfg0).parent / "current"
        extra = parse_sets(args.sets)
        cfg = load_config(None, {"redis.port": svc.port, "scoring.model_dir": str(model), **extra})
        report = ranker_cost(cfg, redis.Redis(port=svc.port), args.rate, args.seconds, args.users)
        report["settings"] = {k: toml_value(v) for k, v in extra.items()}
        print(json.dumps(report))
        return 0
    finally:
        stop_pid(svc.pid)


if __name__ == "__main__":
    sys.exit(main())
