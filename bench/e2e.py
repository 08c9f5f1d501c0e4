"""End-to-end benchmark on real parts: Kafka -> Flink (MiniCluster) -> ONNX -> Redis.

    python -m bench.e2e [--events 2000000] [--parallelism 2] [--users 10000]
        [--live-rate 10000] [--live-seconds 150] [--warmup-seconds 75] [--set SECTION.KEY=JSON ...]

- events_per_s: a backlog of --events records (--event-rate per second of event time) through the
  whole job with scoring (bounded run), minus the job's fixed start-up (a run over a one-record
  topic), so it is the sustained rate.
- features_only_events_per_s: the same with scoring.enabled = false; scoring_share_kept =
  events_per_s / features_only_events_per_s.
- ceiling_events_per_s: the same topic through the same source + validation into a blackhole.
- freshness_p50_ms / p99_ms: live traffic at --live-rate events/s for --live-seconds, sent by
  bench/producer (Go, franz-go: event time = send time, little CPU; its CPU is reported as
  producer_cpu_share_of_one_core). For every list written after the warm-up: written_at -
  feature_ts (its newest event), sampled from Redis. job_freshness_p50_ms / p99_ms: the job's own
  histogram streamrank_list_freshness_seconds over the same span (Prometheus's histogram_quantile
  on its buckets, so at bucket resolution). live_task_busy_ms_per_s / _backpressured_ms_per_s:
  Flink's own busy and back-pressured time per task over the live run (the bottleneck is the busy
  task the others are back-pressured by).
- the floor under those: scorings_per_s_one_core (onnxruntime alone, the best of three on a quiet
  machine after the job stopped) against live_users_per_s; ranker_* (bench.ranker): the Python
  ranker alone fed the same stream outside Flink, with ranker_cores_needed the cores it takes to
  keep up at --live-rate.
The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from bench.harness import go_build, parse_sets, start_bench_stack, sustained_rate, toml_value
from bench.ranker import ranker_cost
from contract import keys
from contract.config import load_config
from contract.paths import PROJECT_ROOT
from devstack.metrics import freshness_buckets, histogram_quantile, scrape, source_assigned, task_load
from devstack.stack import free_port, stop_pid
from traffic.publish import publish_catalog, publish_events
from traffic.simulator import Simulator
from jobs.store import RedisStore
from udfs.features import UserState, feature_names
from udfs.scorer import OnnxScorer

_TS = re.compile(rb'"ts":\d+')
_AGES = re.compile(rb'"feature_ts":(\d+),"written_at":(\d+)')


def live_records(sim: Simulator, path: Path, count: int, rate: float) -> None:
    """bench/producer's input: KEY<TAB>JSON lines, ts as a 13-digit placeholder the producer
    stamps with the send time, event ids ending in ".c000" for its cycle number."""
    with open(path, "wb") as out:
        for key, value, valid in sim.records(int(time.time() * 1000), rate, count):
            if valid:
                d = json.loads(value)
                d["event_id"] = f"{d['event_id'][:58]}.c000"
                value = _TS.sub(b'"ts":0000000000000', json.dumps(d, separators=(",", ":")).encode())
                out.write(key.encode() + b"\t" + value + b"\n")


def scoring_floor(model_dir: Path, cfg, candidates: float, rows: int = 200_000) -> dict:
    """What one core can score: the bench model's onnxruntime rows/s on a batch of `rows` (one
    intra-op thread, as each Python worker runs it), and so users/s at `candidates` rows a user."""
    scorer = OnnxScorer(model_dir, feature_names(cfg.features))
    x = np.random.default_rng(0).gamma(1.0, 2.0, (rows, len(feature_names(cfg.features)))).astype(np.float32)
    scorer.score(x[:1000])
    best = float("inf")
    for _ in range(3):  # the best of three: what one core does when nothing else runs
        t = time.perf_counter()
        scorer.score(x)
        best = min(best, time.perf_counter() - t)
    per_s = rows / best
    return {"scoring_rows_per_s_one_core": round(per_s), "candidates_per_user": round(candidates, 1),
            "scorings_per_s_one_core": round(per_s / max(candidates, 1))}


def candidates_per_user(r, cfg, port: int, sample: int = 1000) -> float:
    """The mean number of candidates the ranker scores for a user: the job's candidate source over
    the boards and states the live run left in Redis."""
    source = RedisStore(cfg.model_copy(update={"redis": cfg.redis.model_copy(update={"port": port})}), r).candidates
    source.refresh(force=True)
    states = [UserState.decode(raw) for raw in r.mget(list(r.scan_iter(keys.feat_key("*"), count=5000))[:sample]) if raw]
    return statistics.mean(len(source.for_user(s)) for s in states) if states else 0.0


def users_per_second(records: Path, rate: float) -> float:
    """Distinct users with an event per second of the live stream (each needs a scoring for its
    list to show that second's events)."""
    users = [line.partition(b"\t")[0] for line in records.read_bytes().splitlines()]
    per = max(1, int(rate))
    return statistics.mean(len(set(users[i:i + per])) for i in range(0, len(users) - per + 1, per))


def mean_load(samples: list[dict[str, tuple[float, float]]], which: int) -> dict[str, int]:
    """task_load's samples averaged per task (which: 0 busy, 1 back-pressured)."""
    tasks = sorted({t for sample in samples for t in sample})
    return {t: round(float(np.mean([sample.get(t, (0.0, 0.0))[which] for sample in samples]))) for t in tasks}


def list_ages(raw: bytes | None) -> tuple[int, int] | None:
    """(feature_ts, written_at) of a stored list, without decoding the whole list."""
    m = _AGES.search(raw) if raw else None
    return (int(m[1]), int(m[2])) if m else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=2_000_000,
                   help="backlog size; short runs understate the rate (JIT warm-up, start-up jitter)")
    p.add_argument("--parallelism", type=int, default=2)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--event-rate", type=float, default=50_000.0,
                   help="density of the backlog in event time (events per second of event time)")
    p.add_argument("--live-rate", type=float, default=10_000.0, help="events/s for the freshness run")
    p.add_argument("--live-seconds", type=float, default=150.0)
    p.add_argument("--warmup-seconds", type=float, default=75.0,
                   help="the first seconds of the live run are not measured: both JVMs' JIT compilers "
                        "still take a core's share for a minute or more after the traffic starts")
    p.add_argument("--skip-backlog", action="store_true", help="only the live freshness run")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=JSON",
                   help="job config for every run, e.g. flink.python_bundle_time_ms=100")
    args = p.parse_args(argv)
    extra = parse_sets(args.set)
    producer = go_build(PROJECT_ROOT / "bench" / "producer", "producer")

    stack = start_bench_stack(partitions=max(2, args.parallelism))
    running: list[subprocess.Popen] = []  # the live job and the producer, stopped on any exit
    r = stack.redis
    cfg = load_config(None, extra)
    report: dict = {"events": args.events, "backlog_event_rate": args.event_rate, "parallelism": args.parallelism,
                    "users": args.users}
    try:
        stack.topics("bench.backlog", "bench.tiny", "bench.live", partitions=max(2, args.parallelism))
        sim = Simulator(seed=42, users=args.users, items=5000, categories=30)
        publish_catalog(sim, stack.bootstrap, "bench.items")
        if not args.skip_backlog:
            start = int(time.time() * 1000) - 3_600_000
            publish_events(sim, stack.bootstrap, "bench.backlog", args.events, args.event_rate, start_ms=start)
            publish_events(sim, stack.bootstrap, "bench.tiny", 1, 1.0, start_ms=start, progress=False)

            def rate(module: str, **sets: object) -> tuple[int, float]:
                """(sustained events/s, start-up s) of one configuration."""
                tiny, full = (stack.timed_run(module, stack.job_sets(t, args.parallelism, **{**extra, **sets}))
                              for t in ("bench.tiny", "bench.backlog"))
                return sustained_rate(args.events, full, tiny), tiny

            print("bench: ceiling (source + validation -> blackhole)", flush=True)
            report["ceiling_events_per_s"], _ = rate("bench.ceiling_job")
            print("bench: features only (scoring.enabled = false)", flush=True)
            report["features_only_events_per_s"], _ = rate("jobs.recommend", **{"scoring.enabled": False})
            print("bench: end to end with scoring", flush=True)
            report["events_per_s"], report["job_startup_s"] = rate("jobs.recommend")
            report["users_with_lists"] = sum(1 for _ in r.scan_iter(keys.rec_key("*"), count=5000))

            report["scoring_share_kept"] = round(report["events_per_s"] / max(report["features_only_events_per_s"], 1), 3)
            report["ratio"] = round(report["events_per_s"] / max(report["ceiling_events_per_s"], 1), 3)
            report["job_startup_s"] = round(report["job_startup_s"], 1)

        print(f"bench: freshness at {args.live_rate:.0f} events/s for {args.live_seconds:.0f}s", flush=True)
        r.flushdb()
        records = stack.work / "live.tsv"
        live_records(Simulator(seed=43, users=args.users, items=5000, categories=30), records,
                     min(int(args.live_rate * args.live_seconds), 500_000), args.live_rate)
        metrics_port = free_port()
        sets = stack.job_sets("bench.live", args.parallelism, "latest-offset",
                              **{"flink.prometheus_port": str(metrics_port), **extra})
        job = subprocess.Popen([sys.executable, "-m", "jobs.recommend", *sets], cwd=PROJECT_ROOT,
                               stdout=open(stack.work / "jobs.log", "ab"), stderr=subprocess.STDOUT,
                               start_new_session=True)
        running.append(job)
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        deadline = time.monotonic() + 120
        while not source_assigned(scrape(url, 2.0) or "") and time.monotonic() < deadline:
            time.sleep(1)
        if time.monotonic() >= deadline:
            print("bench: the job's Kafka source held no partition after 120 s; measuring anyway "
                  f"(see {stack.work / 'jobs.log'})", flush=True)
        time.sleep(3)
        samples: dict[tuple[str, int], int] = {}
        stop = threading.Event()
        measure_from = [0]
        users = [u for u, _, _ in (line.partition(b"\t") for line in records.read_bytes().splitlines())]
        users = sorted(set(users))

        def sample() -> None:
            rng = random.Random(1)
            while not stop.is_set():
                ks = [keys.rec_key(u.decode()) for u in rng.sample(users, min(2000, len(users)))]
                for k, raw in zip(ks, r.mget(ks)):
                    ages = list_ages(raw)
                    if ages and ages[1] >= measure_from[0]:
                        samples[(k, ages[1])] = ages[1] - ages[0]
                time.sleep(0.25)

        loads: list[dict[str, tuple[float, float]]] = []

        def sample_load() -> None:  # which stage is busy while the measured traffic runs
            while not stop.wait(2.0):
                if measure_from[0]:
                    loads.append(task_load(scrape(url) or ""))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        load_sampler = threading.Thread(target=sample_load, daemon=True)
        load_sampler.start()
        load = subprocess.Popen([str(producer), "-brokers", stack.bootstrap, "-topic", "bench.live",
                                 "-records", str(records), "-rate", str(args.live_rate),
                                 "-count", str(int(args.live_rate * args.live_seconds))],
                                stdout=subprocess.PIPE, text=True)
        running.append(load)
        time.sleep(args.warmup_seconds)
        measure_from[0] = int(time.time() * 1000)
        before = freshness_buckets(scrape(url) or "")
        out, _ = load.communicate()
        time.sleep(2)  # the last lists
        after = freshness_buckets(scrape(url) or "")
        stop.set()
        sampler.join()
        load_sampler.join()
        stop_pid(job.pid)
        produced = json.loads(out.strip().splitlines()[-1])
        # the floor: how many users one core can score, against how many users the live stream
        # brings each second (the candidates per user: the ranker's, over the lists just written)
        report.update(scoring_floor(stack.model, cfg, candidates_per_user(r, cfg, stack.redis_svc.port)))
        report["live_users_per_s"] = round(users_per_second(records, args.live_rate))
        report["cores_to_score_every_user_each_second"] = round(
            report["live_users_per_s"] / max(report["scorings_per_s_one_core"], 1), 2)
        r.flushdb()
        print("bench: the Python ranker alone on the same stream (bench.ranker)", flush=True)
        report.update(ranker_cost(cfg.model_copy(update={
            "redis": cfg.redis.model_copy(update={"port": stack.redis_svc.port}),
            "scoring": cfg.scoring.model_copy(update={"model_dir": str(stack.model)})}),
            r, args.live_rate, 15.0, args.users))
        job_hist = {b: n - before.get(b, 0.0) for b, n in after.items()}
        fresh = np.array(list(samples.values()) or [0])
        q = {name: histogram_quantile(x, job_hist) for name, x in (("p50", 0.5), ("p99", 0.99))}
        report.update({
            "freshness_p50_ms": int(np.percentile(fresh, 50)),
            "freshness_p99_ms": int(np.percentile(fresh, 99)),
            "freshness_samples": int(len(samples)),
            "job_freshness_p50_ms": round(q["p50"] * 1000) if q["p50"] is not None else None,
            "job_freshness_p99_ms": round(q["p99"] * 1000) if q["p99"] is not None else None,
            "job_lists_written": int(job_hist.get(float("inf"), 0)),
            # Flink's busy / back-pressured ms per second per task, averaged over the live run
            "live_task_busy_ms_per_s": mean_load(loads, 0),
            "live_task_backpressured_ms_per_s": mean_load(loads, 1),
            "live_rate_events_per_s": args.live_rate,
            "live_sent_rate": round(produced["rate"]),
            "producer_cpu_share_of_one_core": round(produced["cpu_share_of_one_core"], 3),
            "micro_batch_s": cfg.features.micro_batch_s,
            "out_of_orderness_s": cfg.features.out_of_orderness_s,
            "early_fire_s": cfg.features.early_fire_s,
            "min_interval_s": cfg.scoring.min_interval_s,
            "python_bundle_time_ms": cfg.flink.python_bundle_time_ms,
            "settings": {k: toml_value(v) for k, v in extra.items()},
        })
        print(json.dumps(report))
        return 0
    finally:
        for proc in running:
            if proc.poll() is None:
                stop_pid(proc.pid)
        stack.close()


if __name__ == "__main__":
    sys.exit(main())
