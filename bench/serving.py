"""Lookup-service benchmark: its own Redis seeded with lists, `streamrank serve` as a separate
process, and the load from another process (bench/loadgen, a small Go program, built here with
`go build` on first use): closed loop at concurrency 1-64 for k = 10, 25 and 100, then open loop at
half of the peak rate (run --half-repeats times, the median p99 reported) and at 10% and 25% of it,
the same server's gRPC health check the same ways, each step beside k = 25's and the 10%/25% open
loops in turns with them (a round trip with no lookup: the floor, both for p99 at the k = 25 rates
and for the closed-loop peak), and direct Redis GETs of the same keys from the same load process.
The load
generator is Go so that its own CPU (the machine has 2 cores) is small: a Python grpc.aio load
process took most of a core at 3,500 calls/s. Writes a latency/throughput plot; the last stdout
line is JSON.

    .venv/bin/python -m bench.serving [--engine go|python] [--lists-mb N] [--rewrites-per-s 2000] [--no-editorial]
        [--users 10000] [--seconds 3] [--half-repeats 3] [--plot var/bench/serving.png]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from matplotlib.figure import Figure
import redis
from tqdm import tqdm

from bench.harness import go_build, stop_on_sigterm
from contract import keys
from contract.editorial import store_rules
from contract.paths import PROJECT_ROOT
from devstack.stack import free_port, port_open, start_redis, stop_pid

ITEMS_PER_LIST = 100


# what the job writes with reasons on: up to three per item, the model's for the top ten
REASONS = (("bought_before", "viewed_recently", "model:your_history"), ("trending_in:c3", "model:popular_now"),
           ("viewed_recently",), ())
# editorial rules as a CMS would have them on: a pin, a segment's boost, a bury, two exclusions
# (one per placement), all active
RULES = {"rules": [
    {"name": "front-pick", "action": "pin", "item": "i4242", "category": "c2", "position": 1},
    {"name": "vip-boost", "action": "boost", "category": "c3", "factor": 1.5, "segments": ["vip"]},
    {"name": "clearance", "action": "bury", "category": "c7", "factor": 0.5},
    {"name": "recalled", "action": "exclude", "item": "i13"},
    {"name": "hero-no-c11", "action": "exclude", "category": "c11", "placements": ["hero"]}]}


def stored_list(first_item: int, model_version: str, now_ms: int, editorial: bool = False) -> str:
    """A rec:{user} value of ITEMS_PER_LIST items starting at item `first_item` (with editorial:
    reasons on every item and, for every other list, the segment the rules boost)."""
    items = [keys.ScoredItem(f"i{(first_item + n) % 5000}", 1.0 - n / ITEMS_PER_LIST, f"c{n % 12}",
                             REASONS[n % len(REASONS)][: 3 if n < 10 else 2] if editorial else ())
             for n in range(ITEMS_PER_LIST)]
    segments = ["buyers", "vip"] if editorial and first_item % 2 else ["buyers"] if editorial else []
    return keys.RecList(items, model_version, now_ms, now_ms, segments=segments).encode()


def seed(r: redis.Redis, users: int, editorial: bool) -> None:
    now = int(time.time() * 1000)
    pipe = r.pipeline(transaction=False)
    if editorial:
        store_rules(r, json.loads(json.dumps(RULES)), "(bench.serving)", "bench.serving", now)
        r.sadd(keys.UNAVAILABLE_ITEMS, *(f"i{n}" for n in range(100, 5000, 250)))
    for u in tqdm(range(users), desc="seeding lists", unit="user", mininterval=1):
        pipe.set(keys.rec_key(f"u{u}"), stored_list(u * 7, "v0001", now, editorial))
        if u % 1000 == 999:
            pipe.execute()
    pipe.zadd(keys.TRENDING, {f"i{n}": 1000 - n for n in range(500)})
    pipe.execute()


class Rewriter(threading.Thread):
    """Rewrites random users' lists at a steady rate during the run, as the job does each micro-batch,
    so a cache in the service is invalidated as it would be live. The values are encoded once up
    front (64 variants of 100 items), so the writer's own CPU stays small (pipelined SETs)."""
    def __init__(self, port: int, users: int, per_s: float, editorial: bool) -> None:
        super().__init__(name="rewriter", daemon=True)
        self.r, self.users, self.per_s = redis.Redis(port=port), users, per_s
        self.done, self.written = threading.Event(), 0
        now = int(time.time() * 1000)
        self.values = [stored_list(v * 31, "v0002", now, editorial).encode() for v in range(64)]

    def run(self) -> None:
        if self.per_s <= 0:
            return
        rng, tick = random.Random(7), 0.05
        per_tick = max(1, round(self.per_s * tick))
        while not self.done.wait(tick):
            pipe = self.r.pipeline(transaction=False)
            for _ in range(per_tick):
                pipe.set(keys.rec_key(f"u{rng.randrange(self.users)}"), rng.choice(self.values))
            pipe.execute()
            self.written += per_tick

    def stop(self) -> None:
        self.done.set()
        self.join(10)


def service_pid(server_pid: int, engine: str) -> int:
    """The process that answers the calls: lookupd, a child of `streamrank serve`, for the go
    engine; the serve process itself for the python engine. 0 if not found."""
    if engine == "python":
        return server_pid
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
        if comm == "lookupd" and int(rest[1]) == server_pid:
            return int(stat.parent.name)
    return 0


def plot(result: dict, path: Path) -> None:
    fig = Figure(figsize=(12, 4.5))
    ax, ax2 = fig.subplots(1, 2)
    for k, data in result["grpc"].items():
        curve = data["curve"]
        ax.plot([c["qps"] for c in curve], [c["p99_ms"] for c in curve], marker="o", label=f"gRPC k={k} p99")
    curve = result["redis"]["curve"]
    ax.plot([c["qps"] for c in curve], [c["p99_ms"] for c in curve], marker="s", linestyle="--",
            label="Redis GET direct p99")
    health = (result.get("grpc_floor") or {}).get("curve")
    if health:
        ax.plot([c["qps"] for c in health], [c["p99_ms"] for c in health], marker="^", linestyle="-.",
                label="gRPC health check p99 (no lookup)")
    ax.set_xlabel("throughput (calls/s, closed loop, concurrency 1-64)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title("closed loop: latency vs throughput")
    # open loop, k=25 and Redis at the same offered rates (10%, 25%, 50% of the k=25 peak)
    g25, direct = result["grpc"].get("25", {}), result["redis"]
    grpc_open = sorted((g25.get("open_loop") or []) + ([g25["at_half_peak"]] if g25.get("at_half_peak") else []),
                       key=lambda c: c["rate"])
    redis_open = sorted((direct.get("open_loop") or []) + ([direct["at_grpc_half_peak"]] if direct.get("at_grpc_half_peak") else []),
                        key=lambda c: c["rate"])
    ax2.plot([c["rate"] for c in grpc_open], [c["p99_ms"] for c in grpc_open], marker="o", label="gRPC k=25 p99")
    ax2.plot([c["rate"] for c in redis_open], [c["p99_ms"] for c in redis_open], marker="s", linestyle="--",
             label="Redis GET direct p99")
    floor = result.get("grpc_floor")
    if floor:
        floor_open = sorted((floor.get("open_loop") or []) + [floor["at_grpc_half_peak"]], key=lambda c: c["rate"])
        ax2.plot([c["rate"] for c in floor_open], [c["p99_ms"] for c in floor_open], marker="^", linestyle="-.",
                 label="gRPC health check p99 (no lookup)")
    ax2.plot([c["rate"] for c in redis_open], [3 * c["p99_ms"] for c in redis_open], linestyle=":", color="grey",
             label="3 x Redis p99 (target)")
    ax2.set_xlabel("offered rate (calls/s, open loop)")
    ax2.set_title("open loop: p99 vs offered load")
    for a in (ax, ax2):
        a.set_yscale("log")
        a.grid(True, which="both", alpha=0.3)
        a.legend()
    ax.set_xscale("log")
    fig.suptitle(f"streamrank lookup service ({result.get('engine', 'go')} engine)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=10_000, help="users with a stored list (default 10000)")
    p.add_argument("--seconds", type=float, default=3.0, help="measured seconds per load step (default 3)")
    p.add_argument("--engine", choices=("go", "python"), default="go",
                   help="lookup service engine (the serving config's `engine`; default go)")
    p.add_argument("--lists-mb", type=int, default=None,
                   help="go engine's in-process list cache (cache.lists_mb; 0: off; default: the config's 64)")
    p.add_argument("--rewrites-per-s", type=float, default=2000.0,
                   help="lists rewritten per second during the run, as the job does (invalidating cached "
                        "lists); default 2000, i.e. each of 10,000 users every 5 s; 0: none")
    p.add_argument("--half-repeats", type=int, default=3,
                   help="runs of each open-loop step at half of the peak; the median p99 is reported, with "
                        "every run's p99 (default 3)")
    p.add_argument("--editorial", action=argparse.BooleanOptionalAction, default=True,
                   help="lists with reasons and segments, five active editorial rules and 20 unavailable items, "
                        "as a CMS runs it (default on; --no-editorial: plain lists, no rules)")
    p.add_argument("--plot", default=str(PROJECT_ROOT / "var" / "bench" / "serving.png"), help="PNG to write")
    args = p.parse_args()

    loadgen = go_build(PROJECT_ROOT / "bench" / "loadgen", "loadgen")
    stop_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    # no append-only file: the lists are seeded and rewritten here, not the job's state, and the
    # figures stay comparable with those before Redis became durable (bench.features has its cost)
    redis_svc = start_redis(work, free_port(), durable=False)
    server = None
    try:
        seed(redis.Redis(port=redis_svc.port), args.users, args.editorial)
        grpc_port = free_port()
        config = work / "serving.toml"
        cache = f"[cache]\nlists_mb = {args.lists_mb}\n" if args.lists_mb is not None else ""
        config.write_text(f'engine = "{args.engine}"\nport = {grpc_port}\nlog_format = "text"\n'
                          f'[redis]\nport = {redis_svc.port}\n{cache}')
        server_log = work / "serve.log"
        with open(server_log, "wb") as out:
            server = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--config", str(config)],
                                      cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while not port_open(grpc_port):
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"server did not start; see {server_log}")
            time.sleep(0.1)
        print(f"load: k in 10/25/100, concurrency 1-64, then open loop at 10/25/50% of each peak; the health "
              f"check at the same concurrencies and the k=25 rates, Redis too; {args.seconds:.0f} s a step "
              f"(about {(45 + 5 * args.half_repeats) * (args.seconds + 0.5):.0f} s)",
              file=sys.stderr, flush=True)
        writer = Rewriter(redis_svc.port, args.users, args.rewrites_per_s, args.editorial)
        writer.start()
        load = subprocess.run([str(loadgen), "-target", f"127.0.0.1:{grpc_port}",
                               "-redis", f"127.0.0.1:{redis_svc.port}", "-rec-key-prefix", keys.rec_key(""),
                               "-users", str(args.users),
                               "-seconds", str(args.seconds), "-half-repeats", str(args.half_repeats),
                               f"-exact-k={str(not args.editorial).lower()}",
                               "-server-pid", str(service_pid(server.pid, args.engine))],
                              capture_output=True, text=True)
        writer.stop()
        if load.returncode != 0:
            raise SystemExit(f"load process failed:\n{load.stderr[-3000:]}")
        result = json.loads(load.stdout.strip().splitlines()[-1])
    finally:
        if server is not None:
            stop_pid(server.pid)
        stop_pid(redis_svc.pid)

    result["engine"] = args.engine
    plot(result, Path(args.plot))
    (Path(args.plot).with_suffix(".json")).write_text(json.dumps(result, indent=1))
    summary: dict = {}
    for k, data in result["grpc"].items():
        half = data["at_half_peak"]
        summary[f"k{k}"] = {"qps": data["peak_qps"], "p50_ms": half["p50_ms"], "p99_ms": half["p99_ms"],
                            "p99_ms_repeats": half.get("p99_ms_repeats"), "half_peak_rate": half["rate"],
                            "errors": sum(c["errors"] for c in data["curve"]) + half["errors"]}
    direct = result["redis"]["at_grpc_half_peak"]
    summary.update({"redis_get_qps": result["redis"]["peak_qps"], "redis_get_p99_ms": direct["p99_ms"],
                    "redis_get_p99_ms_repeats": direct.get("p99_ms_repeats"),
                    "redis_get_p50_ms": direct["p50_ms"], "users": args.users, "engine": args.engine,
                    "lists_mb": args.lists_mb, "editorial": args.editorial, "rewrites_per_s": args.rewrites_per_s, "rewrites": writer.written, "plot": args.plot})
    k25 = summary.get("k25")
    if k25 and direct["p99_ms"]:
        summary["k25_p99_over_redis_p99"] = round(k25["p99_ms"] / direct["p99_ms"], 2)
    g25 = result["grpc"].get("25", {})
    floor = result.get("grpc_floor") or {}
    if floor:
        # the same server's health check at the same rate: a gRPC round trip that does no lookup
        summary["grpc_floor_p99_ms"] = floor["at_grpc_half_peak"]["p99_ms"]
        summary["grpc_floor_p99_ms_repeats"] = floor["at_grpc_half_peak"].get("p99_ms_repeats")
        summary["grpc_floor_errors"] = floor["at_grpc_half_peak"]["errors"] + sum(c["errors"] for c in floor.get("open_loop") or [])
        if direct["p99_ms"]:
            summary["grpc_floor_p99_over_redis_p99"] = round(floor["at_grpc_half_peak"]["p99_ms"] / direct["p99_ms"], 2)
    if g25:
        # the service's CPU per call: at the closed-loop peak (many calls share each read and write)
        # and in the open loop at half of that rate (calls arrive one by one)
        at_peak = max(g25["curve"], key=lambda c: c["qps"])
        summary["k25_server_cpu_us_per_call"] = {"at_peak": at_peak.get("server_cpu_us_per_call"),
                                                 "at_half_peak": g25["at_half_peak"].get("server_cpu_us_per_call")}
    if floor.get("curve") and g25:
        # the same server's closed-loop peak for a call that does no lookup: what gRPC and the load
        # generator alone allow on this machine
        health_peak = max(floor["curve"], key=lambda c: c["qps"])
        summary["health_peak_calls_per_s"] = health_peak["qps"]
        summary["health_server_cpu_us_per_call_at_peak"] = health_peak.get("server_cpu_us_per_call")
        summary["k25_peak_over_health_peak"] = round(g25["peak_qps"] / health_peak["qps"], 2) if health_peak["qps"] else None
    # the lookup's p99 over the health check's at the same offered rate, at 10% and 25% of the k=25
    # peak: the targets read these
    for g, f in zip(g25.get("open_loop") or [], floor.get("open_loop") or []):
        share = round(100 * g["rate"] / g25["peak_qps"])
        if g["p99_ms"] and f["p99_ms"]:
            summary[f"k25_p99_over_floor_{share}pct"] = round(g["p99_ms"] / f["p99_ms"], 2)
    # the same comparisons at lighter loads (open loop at 10% and 25% of the k=25 peak)
    summary["k25_lighter_load"] = [
        {"rate": g["rate"], "p99_ms": g["p99_ms"], "redis_p99_ms": r["p99_ms"],
         "p99_over_redis_p99": round(g["p99_ms"] / r["p99_ms"], 2) if r["p99_ms"] else None,
         "grpc_floor_p99_ms": f["p99_ms"] if f else None}
        for g, r, f in zip(g25.get("open_loop") or [], result["redis"].get("open_loop") or [],
                           floor.get("open_loop") or [None] * len(g25.get("open_loop") or []))]
    print(f"curves and details: {Path(args.plot).with_suffix('.json')}", file=sys.stderr)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
