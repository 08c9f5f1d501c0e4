"""A soak: the job and the lookups together for a long, bounded time, watching every process's
memory, the lookups' p99 and the ledger.

    python -m bench.soak [--minutes 20] [--event-rate 5000] [--lookup-rate 1000] [--warmup-minutes 5]
        [--plot var/bench/soak.png] [--set SECTION.KEY=JSON ...]

Starts its own Kafka and Redis (bench.harness), the recommend job on the embedded MiniCluster
reading live traffic from bench/producer (Go: --event-rate events/s, stamped with the send time),
lookupd over the job's lists, and bench/loadgen's soak mode calling GetRecommendations at
--lookup-rate/s. Every 10 s it samples the resident memory (RSS) of each process: the job's driver,
its JVM, its Python workers (summed), Kafka, Redis and lookupd. At the end the producer stops, one
record per partition far ahead closes the open windows, and the ledger must account for every
record sent, exactly. The job runs with features.dedup_horizon_s = 120 (unless --set gives
another): the seen event ids grow until that horizon by design (1 day by default), and within the
warm-up what grows after it is a leak, not data.

The last stdout line is one JSON object:
- rss_growth: per process, (last sample - first sample after the warm-up) / that first sample;
- rss_mb: per process, [first after the warm-up, last, peak];
- errors: lookups after the warm-up that failed or found no item, records the producer could not
  send, and the job, producer or load generator ending early (0 wanted);
  lookup_errors_during_warmup beside it (before the job's first lists, a lookup may find none);
- ledger_exact: the ledger's total equals the records sent;
- lookup_p99_ms: the p99 of each 10 s of lookups, in order (its median and max beside it);
- plot: a PNG of the RSS and p99 curves.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from bench.e2e import live_records
from bench.harness import go_build, parse_sets, start_bench_stack, toml_value
from contract import keys
from contract.keys import read_ledger
from contract.paths import PROJECT_ROOT
from contract.serving_config import load_serving_config
from devstack.stack import free_port, stop_pid
from serving.launch import start_server
from traffic.publish import producer as kafka_producer
from traffic.publish import publish_catalog
from traffic.simulator import Simulator

SAMPLE_S = 10.0
PARTITIONS = 2


def job_processes(driver: psutil.Process) -> dict[str, list[psutil.Process]]:
    """The job's processes by role: its driver (python -m jobs.recommend), the MiniCluster's JVM,
    and the Python UDF workers the JVM starts."""
    roles: dict[str, list[psutil.Process]] = {"job_driver": [driver], "job_jvm": [], "job_python_workers": []}
    for p in driver.children(recursive=True):
        try:
            name = p.name()
        except psutil.NoSuchProcess:
            continue
        if name == "java":
            roles["job_jvm"].append(p)
        elif name.startswith("python"):
            roles["job_python_workers"].append(p)
    return roles


def rss_mb(processes: list[psutil.Process]) -> float:
    total = 0
    for p in processes:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return round(total / 2**20, 1)


def growth(series: list[float], skip: int) -> float:
    after = series[skip:] or series[-1:]
    return round((after[-1] - after[0]) / after[0], 4) if after and after[0] else 0.0


def plot(times: list[float], rss: dict[str, list[float]], p99: list[tuple[float, float]], warmup_s: float,
         path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 8), sharex=True)
    for name, series in rss.items():
        top.plot([t / 60 for t in times], series, label=name)
    top.set_ylabel("RSS (MiB)")
    top.set_yscale("log")
    top.legend(fontsize=8, ncol=2)
    top.set_title("resident memory per process")
    bottom.plot([t / 60 for t, _ in p99], [v for _, v in p99], color="tab:red")
    bottom.set_ylabel("lookup p99 (ms, each 10 s)")
    bottom.set_xlabel("minutes")
    for ax in (top, bottom):
        ax.axvline(warmup_s / 60, color="grey", linestyle=":", label="end of warm-up")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def close_windows(bootstrap: str, topic: str, sim: Simulator) -> int:
    """One record per partition a minute ahead: the watermark passes every window the traffic left
    open, so their records reach the ledger."""
    p = kafka_producer(bootstrap)
    ahead = int(time.time() * 1000) + 60_000
    for part, ev in enumerate(sim.events(ahead, 1.0, PARTITIONS)):
        user = f"soak-close-{part}"
        p.send(topic, key=user.encode(), value=json.dumps({**ev, "user_id": user}).encode(), partition=part)
    p.flush()
    p.close()
    return PARTITIONS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20.0, help="how long the traffic runs")
    ap.add_argument("--warmup-minutes", type=float, default=5.0,
                    help="memory growth is measured from the first sample after this (JIT, caches, pools filling, "
                         "and the state that grows until a horizon by design: see --set below)")
    ap.add_argument("--event-rate", type=float, default=5000.0)
    ap.add_argument("--lookup-rate", type=float, default=1000.0)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--job-heap", default="2g",
                    help="the embedded job JVM's heap, fixed and touched at start (-Xms = -Xmx, AlwaysPreTouch) as "
                         "a TaskManager's is fixed; without it the JVM grows its heap in steps, which is no leak "
                         "but reads as growth; 'default': the JVM's own sizing")
    ap.add_argument("--plot", type=Path, default=PROJECT_ROOT / "var" / "bench" / "soak.png")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=JSON", help="job config")
    args = ap.parse_args(argv)
    # the seen event ids grow until features.dedup_horizon_s (1 day by default) by design: within
    # the warm-up, so that what grows after it is a leak, not data
    extra = {"features.dedup_horizon_s": 120.0, **parse_sets(args.set)}
    seconds = args.minutes * 60
    producer_bin = go_build(PROJECT_ROOT / "bench" / "producer", "producer")
    loadgen_bin = go_build(PROJECT_ROOT / "bench" / "loadgen", "loadgen")

    stack = start_bench_stack(partitions=PARTITIONS)
    running: list = []
    errors = 0
    try:
        stack.topics("bench.soak", partitions=PARTITIONS)
        sim = Simulator(seed=44, users=args.users, items=5000, categories=30)
        publish_catalog(sim, stack.bootstrap, "bench.items")
        records = stack.work / "soak.tsv"
        live_records(sim, records, min(int(args.event_rate * 120), 600_000), args.event_rate)
        sent_target = int(args.event_rate * seconds)

        sets = stack.job_sets("bench.soak", 2, "earliest-offset", **extra)
        heap = ([] if args.job_heap == "default" else
                [f"-Xms{args.job_heap}", f"-Xmx{args.job_heap}", "-XX:+AlwaysPreTouch"])
        job = subprocess.Popen([sys.executable, "-m", "jobs.recommend", *sets], cwd=PROJECT_ROOT,
                               stdout=open(stack.work / "jobs.log", "ab"), stderr=subprocess.STDOUT,
                               start_new_session=True, env={**os.environ, "JVM_ARGS": " ".join(heap)})
        running.append(job)
        serving = load_serving_config(None, {"redis.port": stack.redis_svc.port, "engine": "go", "port": free_port()})
        lookupd = start_server(serving)
        running.append(lookupd)
        time.sleep(20)  # the job's JVM and workers up before the traffic
        print(f"bench: soak for {args.minutes:g} min: {args.event_rate:g} events/s and {args.lookup_rate:g} "
              f"lookups/s (work dir {stack.work})", flush=True)
        produce = subprocess.Popen([str(producer_bin), "-brokers", stack.bootstrap, "-topic", "bench.soak",
                                    "-records", str(records), "-rate", str(args.event_rate),
                                    "-count", str(sent_target)], stdout=subprocess.PIPE, text=True,
                                   start_new_session=True)
        running.append(produce)
        lookups = subprocess.Popen([str(loadgen_bin), "-target", f"127.0.0.1:{lookupd.port}", "-k", "10",
                                    "-users", str(args.users), "-user-format", "u%05d", "-exact-k=false",
                                    "-soak-rate", str(args.lookup_rate), "-soak-seconds", str(seconds),
                                    "-soak-interval", str(SAMPLE_S)], stdout=subprocess.PIPE, text=True,
                                   start_new_session=True)
        running.append(lookups)
        p99: list[tuple[float, float]] = []
        lookup_errors = {"warmup": 0, "after": 0}  # lookups that failed, or answered no item

        def read_lookups() -> None:
            for line in lookups.stdout:
                d = json.loads(line)
                p99.append((d["t_s"], d["summary"].get("p99_ms") or 0.0))
                lookup_errors["warmup" if d["t_s"] <= args.warmup_minutes * 60 else "after"] += d["summary"]["errors"]
        reader = threading.Thread(target=read_lookups, daemon=True)
        reader.start()

        driver = psutil.Process(job.pid)
        fixed = {"kafka": [psutil.Process(stack.kafka.pid)], "redis": [psutil.Process(stack.redis_svc.pid)],
                 "lookupd": [psutil.Process(lookupd.proc.pid)]}
        times: list[float] = []
        rss: dict[str, list[float]] = {}
        t0 = time.monotonic()
        while produce.poll() is None or lookups.poll() is None:
            roles = {**job_processes(driver), **fixed}
            times.append(round(time.monotonic() - t0, 1))
            for name, procs in roles.items():
                rss.setdefault(name, []).append(rss_mb(procs))
            if job.poll() is not None:
                print(f"bench: the job ended early ({job.returncode}); see {stack.work / 'jobs.log'}", flush=True)
                errors += 1
                stop_pid(produce.pid)  # what is left of the run is not measured
                stop_pid(lookups.pid)
                break
            elapsed = time.monotonic() - t0
            print(f"bench: {elapsed / 60:.1f} min: " + ", ".join(f"{k} {v[-1]:.0f} MiB" for k, v in rss.items())
                  + (f"; lookup p99 {p99[-1][1]:.2f} ms" if p99 else ""), flush=True)
            time.sleep(SAMPLE_S)
        out, _ = produce.communicate(timeout=120)
        sent = json.loads(out.strip().splitlines()[-1])["sent"] if produce.returncode == 0 and out.strip() else 0
        errors += int(produce.returncode != 0) + int(lookups.wait(timeout=60) != 0)
        failed = json.loads(out.strip().splitlines()[-1]).get("failed", 0) if out.strip() else 0
        errors += failed
        reader.join(10)
        errors += lookup_errors["after"]
        close_windows(stack.bootstrap, "bench.soak", sim)  # in windows of their own, which stay open
        deadline = time.monotonic() + 300
        while sum(read_ledger(stack.redis).values()) < sent and time.monotonic() < deadline and job.poll() is None:
            time.sleep(2)
        ledger = read_ledger(stack.redis)
        skip = next((n for n, t in enumerate(times) if t >= args.warmup_minutes * 60), None)
        if skip is None:
            print("bench: the run ended within the warm-up; growth is measured from the first sample", flush=True)
            skip = 0
        plot(times, rss, p99, args.warmup_minutes * 60, args.plot)
        series = [v for _, v in p99]
        ordered = sorted(series)
        report = {
            "minutes": args.minutes, "event_rate": args.event_rate, "lookup_rate": args.lookup_rate,
            "rss_growth": {k: growth(v, skip) for k, v in rss.items()},
            "rss_mb": {k: [v[skip] if skip < len(v) else v[-1], v[-1], max(v)] for k, v in rss.items()},
            "errors": errors,
            # before the job's first lists and trending boards, a lookup may find no item at all
            "lookup_errors_during_warmup": lookup_errors["warmup"],
            "ledger_exact": sum(ledger.values()) == sent,
            "ledger": ledger, "records_sent": sent,
            "users_with_lists": sum(1 for _ in stack.redis.scan_iter(keys.rec_key("*"), count=5000)),
            "lookup_p99_ms": series,
            "lookup_p99_ms_median": ordered[len(ordered) // 2] if ordered else None,
            "lookup_p99_ms_max": ordered[-1] if ordered else None,
            "warmup_minutes": args.warmup_minutes,
            "job_heap": args.job_heap,
            "plot": str(args.plot),
            "settings": {k: toml_value(v) for k, v in extra.items()},
        }
        print(json.dumps(report))
        return 0
    finally:
        for proc in running:
            if isinstance(proc, subprocess.Popen):
                if proc.poll() is None:
                    stop_pid(proc.pid)
            else:
                proc.stop(0)
        stack.close()


if __name__ == "__main__":
    sys.exit(main())
