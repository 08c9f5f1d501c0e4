"""Feature pipeline benchmark: features only (scoring off), written to Redis, beside the ceiling.

    python -m bench.features [--events 2000000] [--users 10000] [--event-rate 50000] [--repeats 3]
        [--jvm-stages]

For parallelism 1 and 2, in the same run: a bounded backlog of --events records through the job
with scoring.enabled = false (events_per_s), and the same topic through the same source and
validation into a blackhole (ceiling_events_per_s); both with the job's fixed start-up taken
out (the median of the repeats' runs over a one-record topic). Each is measured --repeats times
and the median reported, with every repeat's rate and start-up beside it: the ceiling's backlog
run lasts a few seconds, so start-up jitter alone moved single ceiling figures by ±30%.
state_bytes_per_user is the mean size of feat:{user}, profile_bytes_per_user of profile:{user}
(the named features GetUserFeatures answers). Then one run with scoring on (lists written) over
the same backlog at the highest parallelism measures memory per user: redis_bytes_per_user is
Redis's used_memory grown from the empty store, divided by the users (every per-user key and its
overhead, lists included, plus the shared boards), flink_state_bytes_per_user Flink's largest
completed checkpoint (its own statistics, a checkpoint every 2 s) over the same users;
--memory-only runs just that. With --jvm-stages, the same job with its
Python functions replaced by a JVM stand-in is timed too (jvm_stages_events_per_s): the most the
job's JVM side allows. A bar chart of the rates goes to --plot (var/bench/features.png). The last
stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from matplotlib.figure import Figure

from bench.harness import parse_sets, start_bench_stack, sustained_rate
from contract import compact, keys
from contract.paths import PROJECT_ROOT
from traffic.publish import publish_catalog, publish_events
from traffic.simulator import Simulator


def plot(runs: list[dict], path: Path) -> None:
    """Events/s per parallelism: the job, the JVM stages alone (when measured) and the ceiling,
    each bar the median with the repeats' range, and the ratio target (0.5 x the ceiling)."""

    series = [("ceiling_events_per_s", "ceiling (source + validation)", "#9e9e9e"),
              ("jvm_stages_events_per_s", "the job's JVM stages alone", "#6a8fc7"),
              ("events_per_s", "the features job", "#d9822b")]
    series = [s for s in series if any(s[0] in r for r in runs)]
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    width = 0.8 / len(series)
    for n, (key, label, color) in enumerate(series):
        shown = [(i, r) for i, r in enumerate(runs) if key in r]
        xs = [i + (n - (len(series) - 1) / 2) * width for i, _ in shown]
        mids = [r[key] for _, r in shown]
        reps = [r.get(f"{key}_repeats") or [r[key]] for _, r in shown]
        err = [[m - min(rp) for m, rp in zip(mids, reps)], [max(rp) - m for m, rp in zip(mids, reps)]]
        ax.bar(xs, mids, width, yerr=err, capsize=3, label=label, color=color)
        for x, m, rp in zip(xs, mids, reps):
            ax.annotate(f"{m / 1000:.0f}k", (x, max(rp)), ha="center", va="bottom", fontsize=8,
                        xytext=(0, 2), textcoords="offset points")
    for i, r in enumerate(runs):
        target = 0.5 * r["ceiling_events_per_s"]
        ax.hlines(target, i - 0.45, i + 0.45, colors="black", linestyles=":",
                  label="ratio target (0.5 x ceiling)" if i == 0 else None)
    ax.set_xticks(range(len(runs)), [f"parallelism {r['parallelism']}" for r in runs])
    ax.set_ylabel("events/s (median of repeats; bars: their range)")
    ax.set_title("streamrank feature pipeline: 2 cores, start-up taken out")
    ax.yaxis.set_major_formatter(lambda v, _pos: f"{v / 1000:.0f}k")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.3)  # room for the legend above the bars
    ax.legend(fontsize=8, loc="upper left", ncols=2)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def measure_memory(stack, parallelism: int, sets: dict) -> dict:
    """What one user costs where the job keeps them, after the whole backlog with scoring on (lists
    included): Redis's used_memory grown from the empty store, and Flink's largest checkpoint,
    each over the users the job wrote; and the mean stored size of each per-user value."""
    print("bench: memory (scoring on, lists written)", flush=True)
    r = stack.redis
    r.flushdb()
    base = int(r.info("memory")["used_memory"])
    seconds, flink_bytes = stack.checkpointed_run("jobs.recommend", [
        *stack.job_sets("bench.backlog", parallelism, **{"flink.checkpoint_interval_s": 2.0, **sets})])
    used = int(r.info("memory")["used_memory"])
    users = [k.decode().removeprefix(keys.feat_key("")) for k in r.scan_iter(keys.feat_key("*"), count=5000)]
    n = max(len(users), 1)

    def mean_size(key_of) -> int:
        sizes = [size for u in users if (size := r.strlen(key_of(u)))]  # users without a list: no rec
        return round(sum(sizes) / max(len(sizes), 1))

    def mean_json_size(key_of) -> int:
        sizes = [len(compact.text(raw)) for raw in r.mget([key_of(u) for u in users[:2000]]) if raw]
        return round(sum(sizes) / max(len(sizes), 1))

    with_lists = sum(1 for _ in r.scan_iter(keys.rec_key("*"), count=5000))
    # the boards, the catalog, the ledger and the dictionaries are shared: with more users their
    # share of each user shrinks, so they are reported apart as well
    per_user_prefixes = tuple(key_of("").encode() for key_of in (keys.rec_key, keys.feat_key, keys.profile_key))
    shared = sum(r.memory_usage(k) or 0 for k in r.scan_iter(count=5000) if not k.startswith(per_user_prefixes))
    floor = key_overhead(r, len(users))
    return {"redis_bytes_per_user": round((used - base) / n),
            "redis_user_keys_bytes_per_user": round((used - base - shared) / n), "redis_shared_bytes": shared,
            "flink_state_bytes_per_user": round(flink_bytes / n),
            "memory_users": len(users), "memory_users_with_lists": with_lists,
            "stored_bytes_per_user": {"feat": mean_size(keys.feat_key), "profile": mean_size(keys.profile_key),
                                      "rec": mean_size(keys.rec_key)},
            "json_bytes_per_user": {"feat": mean_json_size(keys.feat_key), "profile": mean_json_size(keys.profile_key),
                                    "rec": mean_json_size(keys.rec_key)},
            "redis_key_overhead_bytes_per_user": floor,
            "memory_run_s": round(seconds, 1), "flink_checkpoint_bytes": flink_bytes}


def key_overhead(r, users: int, ttl_s: int = 604800) -> int:
    """What Redis spends on a user's three keys before their values, measured the same way in the
    same Redis: used_memory grown by three keys per user (names as long as the users', a TTL, one
    byte of value), divided by the users; the floor no value encoding can go under."""
    users = max(users, 1)
    before = int(r.info("memory")["used_memory"])
    pipe = r.pipeline(transaction=False)
    for n in range(users):
        for key_of in (keys.rec_key, keys.feat_key, keys.profile_key):
            pipe.set("floor" + key_of(f"u{n:07d}"), b"x", ex=ttl_s)
        if n % 1000 == 999:
            pipe.execute()
    pipe.execute()
    grown = int(r.info("memory")["used_memory"]) - before
    for batch in _chunks([k for k in r.scan_iter("floor*", count=5000)], 1000):
        r.delete(*batch)
    return round(grown / users)


def _chunks(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=2_000_000,
                   help="backlog size; short runs understate the rate (JIT warm-up, start-up jitter)")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--event-rate", type=float, default=50_000.0, help="backlog density in event time (events/s)")
    p.add_argument("--parallelism", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=3, help="measure each rate this many times; the median is reported")
    p.add_argument("--jvm-stages", action="store_true",
                   help="also time the job with its Python functions replaced by a JVM stand-in "
                        "(jvm_stages_events_per_s): what the JVM side alone allows")
    p.add_argument("--memory-only", action="store_true", help="only the memory run (no rates, no plot)")
    p.add_argument("--plot", default=str(PROJECT_ROOT / "var" / "bench" / "features.png"), help="PNG to write")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=JSON",
                   help="extra job config for the measured runs, e.g. features.watermark_emit=\"on-periodic\"")
    args = p.parse_args(argv)


    stack = start_bench_stack(partitions=max(args.parallelism))
    try:
        stack.topics("bench.backlog", "bench.tiny", partitions=max(args.parallelism))
        sim = Simulator(seed=7, users=args.users, items=5000, categories=30)
        publish_catalog(sim, stack.bootstrap, "bench.items")
        start = int(time.time() * 1000) - 3_600_000
        publish_events(sim, stack.bootstrap, "bench.backlog", args.events, args.event_rate, start_ms=start)
        publish_events(sim, stack.bootstrap, "bench.tiny", 1, 1.0, start_ms=start, progress=False)
        runs = []
        for par in [] if args.memory_only else args.parallelism:
            print(f"bench: parallelism {par}", flush=True)
            off = {"scoring.enabled": False, **parse_sets(args.set)}

            def times(module: str, *first: str, **extra: object) -> tuple[float, ...]:
                """(one-record run, backlog run) in seconds."""
                return tuple(stack.timed_run(module, [*first, *stack.job_sets(t, par, **extra)])  # noqa: B023 (called in this iteration)
                             for t in ("bench.tiny", "bench.backlog"))

            ceil_t, feat_t, jvm_t = [], [], []
            for _ in range(args.repeats):
                ceil_t.append(times("bench.ceiling_job"))
                if args.jvm_stages:
                    jvm_t.append(times("bench.ceiling_job", "--through", "jvm-stages", **off))
                feat_t.append(times("jobs.recommend", **off))  # last: Redis keeps this run's states and ledger

            def rates(runs_t: list[tuple[float, ...]]) -> list[int]:
                # the start-up taken out is the median of the one-record runs, not each repeat's
                # own: the jitter of one start-up went straight into that repeat's rate (one p2
                # repeat read 113k events/s beside 66k and 71k)
                startup = statistics.median(t for t, _ in runs_t)
                return [sustained_rate(args.events, full, startup) for _, full in runs_t]

            ceil, feat = rates(ceil_t), rates(feat_t)
            r = stack.redis
            users = [k.decode().removeprefix(keys.feat_key("")) for k in r.scan_iter(keys.feat_key("*"), count=5000)]
            sizes = [r.strlen(keys.feat_key(u)) for u in users]
            profile_sizes = [r.strlen(keys.profile_key(u)) for u in users]
            ledger = keys.read_ledger(r)
            run = {
                "parallelism": par,
                "events_per_s": round(statistics.median(feat)),
                "ceiling_events_per_s": round(statistics.median(ceil)),
                "users": len(users),
                "state_bytes_per_user": round(sum(sizes) / max(len(sizes), 1)),
                "profile_bytes_per_user": round(sum(profile_sizes) / max(len(profile_sizes), 1)),
                "ledger_total": sum(ledger.values()),
            }
            run["ratio"] = round(run["events_per_s"] / max(run["ceiling_events_per_s"], 1), 3)
            run["events_per_s_repeats"], run["ceiling_events_per_s_repeats"] = feat, ceil
            run["startup_s_repeats"] = {"features": [round(t, 2) for t, _ in feat_t],
                                        "ceiling": [round(t, 2) for t, _ in ceil_t]}
            if jvm_t:
                jvm = rates(jvm_t)
                run["jvm_stages_events_per_s"] = round(statistics.median(jvm))
                run["jvm_stages_ratio"] = round(run["jvm_stages_events_per_s"] / max(run["ceiling_events_per_s"], 1), 3)
                run["jvm_stages_events_per_s_repeats"] = jvm
                run["startup_s_repeats"]["jvm_stages"] = [round(t, 2) for t, _ in jvm_t]
            print(json.dumps(run), flush=True)
            runs.append(run)
        memory = measure_memory(stack, max(args.parallelism), parse_sets(args.set))
        print(json.dumps(memory), flush=True)
        if not runs:
            print(json.dumps({**memory, "events": args.events, "users": args.users,
                              "backlog_event_rate": args.event_rate, "settings": args.set}))
            return 0
        best = max(runs, key=lambda x: x["parallelism"])
        plot(runs, Path(args.plot))
        print(json.dumps({**best, **memory, "events": args.events, "backlog_event_rate": args.event_rate,
                          "settings": args.set, "plot": args.plot, "runs": runs}))
        return 0
    finally:
        stack.close()


if __name__ == "__main__":
    sys.exit(main())
