"""End-to-end benchmark on real parts: Kafka -> Flink (MiniCluster) -> ONNX -> Redis.

    python -m bench.e2e [--events 200000] [--parallelism 1] [--live-rate 1000] [--live-seconds 30]

- events_per_s: a backlog of --events records (--event-rate per second of event time, as dense
  as a live stream at that rate) through the whole job (bounded run), minus the job's fixed
  start-up (a run over a one-record topic), so it is the sustained rate.
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
import threading
import time

import numpy as np

from bench.harness import start_bench_stack, sustained_rate
from contract import keys
from contract.config import load_config
from contract.paths import PROJECT_ROOT
from devstack.stack import stop_pid
from traffic.publish import publish_catalog, publish_events
from traffic.simulator import Simulator


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


    stack = start_bench_stack(partitions=max(2, args.parallelism))
    r = stack.redis
    cfg = load_config(None)
    try:
        stack.topics("bench.backlog", "bench.tiny", "bench.live", partitions=max(2, args.parallelism))
        sim = Simulator(seed=42, users=args.users, items=5000, categories=30)
        publish_catalog(sim, stack.bootstrap, "bench.items")
        start = int(time.time() * 1000) - 3_600_000
        publish_events(sim, stack.bootstrap, "bench.backlog", args.events, args.event_rate, start_ms=start)
        publish_events(sim, stack.bootstrap, "bench.tiny", 1, 1.0, start_ms=start, progress=False)

        def run(module: str, topic: str) -> float:
            return stack.timed_run(module, stack.job_sets(topic, args.parallelism))

        print("bench: ceiling (source + validation -> blackhole)", flush=True)
        ceil_tiny, ceil_full = run("bench.ceiling_job", "bench.tiny"), run("bench.ceiling_job", "bench.backlog")
        print("bench: end to end (recommend job -> Redis)", flush=True)
        e2e_tiny, e2e_full = run("jobs.recommend", "bench.tiny"), run("jobs.recommend", "bench.backlog")
        users_with_lists = sum(1 for _ in r.scan_iter(keys.rec_key("*"), count=5000))

        print(f"bench: freshness at {args.live_rate:.0f} events/s for {args.live_seconds:.0f}s", flush=True)
        r.flushdb()
        job = subprocess.Popen([sys.executable, "-m", "jobs.recommend",
                                *stack.job_sets("bench.live", args.parallelism, "latest-offset")],
                               cwd=PROJECT_ROOT, stdout=open(stack.work / "jobs.log", "ab"),
                               stderr=subprocess.STDOUT, start_new_session=True)
        time.sleep(20)  # job start-up: the source must be reading before the live stream begins
        samples: dict[tuple[str, int], int] = {}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                ks = list(r.scan_iter(keys.rec_key("*"), count=5000))
                for k, raw in zip(ks, r.mget(ks) if ks else []):
                    if raw:
                        d = json.loads(raw)
                        samples[(k.decode(), d["written_at"])] = d["written_at"] - d["feature_ts"]
                time.sleep(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        live = Simulator(seed=43, users=args.users, items=5000, categories=30)
        publish_events(live, stack.bootstrap, "bench.live", int(args.live_rate * args.live_seconds),
                       args.live_rate, realtime=True, progress=False)
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
            "events_per_s": sustained_rate(args.events, e2e_full, e2e_tiny),
            "ceiling_events_per_s": sustained_rate(args.events, ceil_full, ceil_tiny),
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
        stack.close()


if __name__ == "__main__":
    sys.exit(main())
