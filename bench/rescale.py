"""Throughput before and after a reactive rescale, in one run.

    python -m bench.rescale [--events 2500000] [--users 10000] [--measure-s 60] [--warmup-s 20]

deploy/k8s/flink.yaml's job as an application cluster in reactive mode (scheduler-mode:
reactive), started with one TaskManager of one slot, reads a backlog (so the job, not the
producer, sets the pace). The rate of records accounted for in the ledger is measured for
--measure-s after --warmup-s at parallelism 1; then a second TaskManager is started, the job
rescales onto it (rescale_s: from the TaskManager's start to the job running at parallelism 2 again)
and the rate is measured the same way at parallelism 2. Both parallelisms share the machine's 2
cores with Kafka and Redis. The ledger curve goes to --plot; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from matplotlib.figure import Figure

from bench.harness import start_bench_stack
from contract.keys import read_ledger
from contract.paths import PROJECT_ROOT
from devstack.cluster import FlinkCluster, kubernetes_job
from devstack.stack import free_port
from traffic.publish import publish_catalog, publish_events
from traffic.simulator import Simulator


def accounted(r) -> int:
    return sum(read_ledger(r).values())


def wait_for(what: str, check, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {what} did not happen within {timeout_s:.0f} s")
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=2_500_000, help="the backlog; it must outlast both measurements")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--event-rate", type=float, default=5_000.0,
                   help="backlog density in event time (events/s): each 2 s window holds twice this many "
                        "records, and the ledger moves by a window at a time")
    p.add_argument("--measure-s", type=float, default=60.0)
    p.add_argument("--warmup-s", type=float, default=20.0)
    p.add_argument("--taskmanager-memory", default="4096m", help="each TaskManager's process size")
    p.add_argument("--plot", default=str(PROJECT_ROOT / "var" / "bench" / "rescale.png"), help="PNG to write")
    args = p.parse_args(argv)

    stack = start_bench_stack(partitions=2)
    cluster = FlinkCluster(stack.work / "flink")
    curve: list[tuple[float, int]] = []
    t0 = time.monotonic()

    def sample() -> int:
        n = accounted(stack.redis)
        curve.append((time.monotonic() - t0, n))
        return n

    def rate_for(seconds: float) -> float:
        """Records accounted per second over the next `seconds` (sampled every second)."""
        start_t, start_n = time.monotonic(), sample()
        while time.monotonic() - start_t < seconds:
            time.sleep(1.0)
            sample()
        end_t, end_n = time.monotonic(), sample()
        if end_n >= args.events:
            raise SystemExit("bench: the backlog ran out during a measurement; raise --events")
        return (end_n - start_n) / (end_t - start_t)

    def parallelism(job_id: str) -> set[int]:
        return {v["parallelism"] for v in cluster.rest("GET", f"/jobs/{job_id}")["vertices"]}

    try:
        stack.topics("bench.backlog", partitions=2)
        sim = Simulator(seed=7, users=args.users, items=5000, categories=30)
        publish_catalog(sim, stack.bootstrap, "bench.items")
        publish_events(sim, stack.bootstrap, "bench.backlog", args.events, args.event_rate,
                       start_ms=int(time.time() * 1000) - 3_600_000)
        flink, job_args = kubernetes_job()
        overrides = stack.job_sets("bench.backlog", 2, **{
            "redis.host": "127.0.0.1", "flink.checkpoint_dir": str(stack.work / "checkpoints"),
            "flink.savepoint_dir": str(stack.work / "savepoints"), "flink.checkpoint_interval_s": 5.0})
        stack.redis.flushdb()
        # a TaskManager of one slot holds a backlog's windows in its heap: 2 GiB (the tests') ran out
        cluster.up(rest_port=free_port(), slots=1, metrics_port=free_port(), scheduler_mode="reactive",
                   taskmanager_memory=args.taskmanager_memory,
                   application=["--job-classname", flink["spec"]["job"]["entryClass"], *job_args, *overrides])
        t0 = time.monotonic()
        wait_for("the job to start", lambda: any(j["state"] == "RUNNING" for j in cluster.jobs()), 180)
        job_id = next(j["jid"] for j in cluster.jobs() if j["state"] == "RUNNING")
        wait_for("the first records in the ledger", lambda: sample() > 0, 300)
        before_p = parallelism(job_id)
        print(f"bench: parallelism {sorted(before_p)}: warm-up {args.warmup_s:.0f} s, then {args.measure_s:.0f} s",
              flush=True)
        rate_for(args.warmup_s)
        before = rate_for(args.measure_s)
        added = time.monotonic()
        cluster.add_taskmanager()

        def rescaled() -> bool:
            sample()
            state = {j["jid"]: j["state"] for j in cluster.jobs()}.get(job_id)
            return state == "RUNNING" and parallelism(job_id) == {2}
        wait_for("the rescale to parallelism 2", rescaled, 300)
        rescale_s = time.monotonic() - added
        print(f"bench: rescaled to 2 in {rescale_s:.1f} s; warm-up {args.warmup_s:.0f} s, then {args.measure_s:.0f} s",
              flush=True)
        rate_for(args.warmup_s)
        after = rate_for(args.measure_s)
        tms = cluster.overview()["taskmanagers"]
    finally:
        cluster.down()
        stack.close()
    plot(curve, added - t0, Path(args.plot))
    print(json.dumps({"before_events_per_s": round(before), "after_events_per_s": round(after),
                      "after_over_before": round(after / max(before, 1e-9), 3), "parallelism_before": sorted(before_p),
                      "parallelism_after": [2], "taskmanagers_after": tms, "rescale_s": round(rescale_s, 1),
                      "events": args.events, "event_rate": args.event_rate, "measure_s": args.measure_s, "warmup_s": args.warmup_s,
                      "plot": args.plot}))
    return 0


def plot(curve: list[tuple[float, int]], rescale_at: float, path: Path) -> None:
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.plot([t for t, _ in curve], [n / 1e6 for _, n in curve], color="#d9822b")
    ax.axvline(rescale_at, color="black", linestyle=":", label="second TaskManager started")
    ax.set_xlabel("seconds since the job started")
    ax.set_ylabel("records accounted (millions)")
    ax.set_title("Reactive rescale 1 -> 2 under a backlog")
    ax.legend(loc="upper left")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    sys.exit(main())
