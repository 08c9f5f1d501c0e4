"""End-to-end benchmark on real parts: Kafka -> Flink (MiniCluster) -> ONNX -> Redis.

    python -m bench.e2e [--events 200000] [--parallelism 1] [--live-rate 1000] [--live-seconds 30]

- events_per_s: a backlog of --events records through the whole job (bounded run), minus the
  job's fixed start-up (a run over a one-record topic), so it is the sustained rate.
- ceiling_events_per_s: the same topic through the same source + validation into a blackhole,
  measured the same way in the same run.
- freshness_p50_ms / p99_ms: live traffic at --live-rate events/s, event time = send time;
  for every list written, written_at - feature_ts (newest event in it), sampled from Redis.
The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import redis

from deploy.paths import PROJECT_ROOT
from deploy.stack import create_topics, free_port, start_kafka, start_redis, stop_pid


def sets(bootstrap: str, redis_port: int, model: Path, topic: str, parallelism: int, group: str,
         startup: str = "earliest-offset") -> list[str]:
    values = {
        "kafka.bootstrap_servers": json.dumps(bootstrap), "kafka.interactions_topic": json.dumps(topic),
        "kafka.items_topic": json.dumps("bench.items"), "kafka.dlq_topic": json.dumps("bench.dlq"),
        "kafka.group_id": json.dumps(group), "kafka.startup_mode": json.dumps(startup),
        "redis.port": str(redis_port), "scoring.model_dir": json.dumps(str(model)),
        "flink.parallelism": str(parallelism),
    }
    return [a for k, v in values.items() for a in ("--set", f"{k}={v}")]


def timed_run(module: str, args: list[str], log: Path) -> float:
    t0 = time.monotonic()
    with open(log, "ab") as out:
        rc = subprocess.run([sys.executable, "-m", module, "--bounded", *args], cwd=PROJECT_ROOT,
                            stdout=out, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"{module} failed ({rc}); see {log}")
    return time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=200_000, help="backlog size for the throughput runs")
    p.add_argument("--parallelism", type=int, default=1)
    p.add_argument("--users", type=int, default=5000)
    p.add_argument("--event-rate", type=float, default=20000.0,
                   help="density of the backlog in event time (events per second of event time)")
    p.add_argument("--live-rate", type=float, default=1000.0, help="events/s for the freshness run")
    p.add_argument("--live-seconds", type=float, default=30.0)
    args = p.parse_args(argv)

    from models.training import build_training_set, train_and_publish
    from contract.config import load_config
    from traffic.publish import publish_catalog, publish_events, write_history
    from traffic.simulator import Simulator

    work = Path(tempfile.mkdtemp(prefix="streamrank-bench-"))
    log = work / "jobs.log"
    print(f"bench: work dir {work}", flush=True)
    rsvc = start_redis(work, free_port())
    ksvc = start_kafka(work, free_port(), free_port(), partitions=max(2, args.parallelism))
    bootstrap = f"127.0.0.1:{ksvc.port}"
    r = redis.Redis(port=rsvc.port)
    try:
        sim = Simulator(seed=42, users=args.users, items=5000, categories=30)
        hist = work / "history.jsonl"
        write_history(sim, str(hist), 20000, 5.0, int((time.time() - 7200) * 1000), progress=False)
        cfg = load_config(None)
        model = train_and_publish(build_training_set(hist, cfg, progress=False), work / "models", cfg).parent / "current"
        for t in ("bench.backlog", "bench.tiny", "bench.live"):
            create_topics(bootstrap, max(2, args.parallelism), {"interactions": t, "items": "bench.items", "dlq": "bench.dlq"})
        publish_catalog(sim, bootstrap, "bench.items")
        start = int(time.time() * 1000) - 3_600_000
        publish_events(sim, bootstrap, "bench.backlog", args.events, args.event_rate, start_ms=start)
        publish_events(sim, bootstrap, "bench.tiny", 1, 1.0, start_ms=start, progress=False)

        def run(module: str, topic: str) -> float:
            r.flushdb()
            return timed_run(module, sets(bootstrap, rsvc.port, model, topic, args.parallelism,
                                          f"bench-{time.time()}"), log)

        print("bench: ceiling (source + validation -> blackhole)", flush=True)
        ceil_tiny = run("bench.ceiling_job", "bench.tiny")
        ceil_full = run("bench.ceiling_job", "bench.backlog")
        print("bench: end to end (recommend job -> Redis)", flush=True)
        e2e_tiny = run("jobs.recommend", "bench.tiny")
        e2e_full = run("jobs.recommend", "bench.backlog")
        users_with_lists = sum(1 for _ in r.scan_iter("rec:*", count=5000))

        print(f"bench: freshness at {args.live_rate:.0f} events/s for {args.live_seconds:.0f}s", flush=True)
        r.flushdb()
        job = subprocess.Popen([sys.executable, "-m", "jobs.recommend",
                                *sets(bootstrap, rsvc.port, model, "bench.live", args.parallelism,
                                      f"bench-live-{time.time()}", "latest-offset")],
                               cwd=PROJECT_ROOT, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                               start_new_session=True)
        time.sleep(20)  # job start-up: the source must be reading before the live stream begins
        samples: dict[tuple[str, int], int] = {}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                ks = list(r.scan_iter("rec:*", count=5000))
                for k, raw in zip(ks, r.mget(ks) if ks else []):
                    if raw:
                        d = json.loads(raw)
                        samples[(k.decode(), d["written_at"])] = d["written_at"] - d["feature_ts"]
                time.sleep(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        live = Simulator(seed=43, users=args.users, items=5000, categories=30)
        publish_events(live, bootstrap, "bench.live", int(args.live_rate * args.live_seconds), args.live_rate,
                       realtime=True, progress=False)
        time.sleep(12)  # let the last windows close and be written
        stop.set()
        sampler.join()
        stop_pid(job.pid)
        fresh = np.array(list(samples.values()) or [0])
        report = {
            "events": args.events,
            "backlog_event_rate": args.event_rate,
            "parallelism": args.parallelism,
            "users_with_lists": users_with_lists,
            "events_per_s": round(args.events / max(e2e_full - e2e_tiny, 1e-3)),
            "ceiling_events_per_s": round(args.events / max(ceil_full - ceil_tiny, 1e-3)),
            "job_startup_s": round(e2e_tiny, 1),
            "freshness_p50_ms": int(np.percentile(fresh, 50)),
            "freshness_p99_ms": int(np.percentile(fresh, 99)),
            "freshness_samples": int(len(samples)),
            "live_rate_events_per_s": args.live_rate,
            "micro_batch_s": cfg.features.micro_batch_s,
            "out_of_orderness_s": cfg.features.out_of_orderness_s,
        }
        report["ratio"] = round(report["events_per_s"] / max(report["ceiling_events_per_s"], 1), 3)
        print(json.dumps(report))
        return 0
    finally:
        stop_pid(ksvc.pid)
        stop_pid(rsvc.pid)


if __name__ == "__main__":
    sys.exit(main())
