"""The closed loop, measured: simulated users (traffic.closed_loop) ask the real lookup service
(lookupd, gRPC) for their lists, respond to what they are shown, and their clicks and purchases go
through Kafka into the running recommend job (Flink MiniCluster), which re-ranks them; every
answer is an exposure on Kafka. Two arms, 50/50: the trained model against the trending baseline
(the job ranks each user for their arm). lookupd's latency is then measured with and without
exposure logging, interleaved, in the same run. At the end the engagement job (jobs/engagement.py,
bounded over both topics) settles every exposure's clicks and credit into Redis; its totals are
checked against the offline computation (exit 1 when they differ), its conversions against the
purchases of a shown answer counted straight from the topics (attribution_credit_error), and the
experiment's report (lift intervals over users, SRM) is computed from the same records.

    .venv/bin/python -m bench.experiment [--seconds 300] [--requests-per-s 50]

The last line is JSON: arms, lift_ctr, lift_conversion, srm_p, exposures_served, exposures_logged,
attribution_credit_error, serve_p99_ms_with_exposures, serve_p99_ms_without."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import numpy as np
from tqdm import tqdm

from bench.harness import start_bench_stack
from contract import keys
from contract.config import load_config
from contract.experiments import parse_experiments, store_experiments
from contract.paths import PROJECT_ROOT
from contract.serving_config import load_serving_config
from devstack.stack import create_topics, free_port, stop_pid
from models.experiment_report import engagement_totals, outcomes, report
from serving.client import RecommendationsClient
from serving.launch import GoServer
from traffic.closed_loop import ShownResponder
from traffic.publish import producer, publish_catalog, publish_events, read_json_topic
from traffic.simulator import Simulator
from udfs.attribution import CREDIT_UNITS, MODELS

TOPIC, EXPOSURES, OUTCOMES = "exp.interactions", "exp.exposures", "exp.engagement"
LOOP_PLACEMENT, LATENCY_PLACEMENT = "home", "latency"  # the report counts the loop's answers only


def latency_ms(client: RecommendationsClient, users: list[str], calls: int) -> list[float]:
    out = []
    for n in range(calls):
        t0 = time.perf_counter()
        client.recommendations(users[n % len(users)], 10, placement=LATENCY_PLACEMENT)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=300.0, help="real seconds of the closed loop")
    p.add_argument("--requests-per-s", type=float, default=50.0, help="list requests per second, all users")
    # short rounds, many of them: the three servers take turns often, so a slow second of the
    # machine (the recommend job's checkpoint, Kafka's flush) falls on each of them alike
    p.add_argument("--latency-calls", type=int, default=200, help="calls per round of the latency comparison")
    p.add_argument("--latency-rounds", type=int, default=100)
    args = p.parse_args(argv)

    stack = start_bench_stack()
    r = stack.redis
    job = with_exposures = without = twin = None
    try:
        sim = Simulator(seed=42, users=2000, items=5000, categories=30)  # the users the model was trained on
        stack.topics(TOPIC)
        create_topics(stack.bootstrap, 2, {"interactions": TOPIC, "items": "bench.items", "dlq": "bench.dlq",
                                           "exposures": EXPOSURES, "engagement": OUTCOMES})
        publish_catalog(sim, stack.bootstrap, "bench.items")
        now = datetime.now(UTC)
        spec = parse_experiments({"experiments": [
            {"name": "ranker-vs-trending", "salt": "bench", "share": 1.0, "control": "trending",
             "start": now - timedelta(hours=1), "end": now + timedelta(days=1),
             "arms": [{"name": "trending", "ranker": "trending"}, {"name": "model"}]}]}).spec()
        store_experiments(r, spec, "(bench.experiment)")
        print("bench: warm-up history (30 minutes of browsing) and the recommend job", flush=True)
        publish_events(sim, stack.bootstrap, TOPIC, 30_000, 20.0, start_ms=int(time.time() * 1000) - 1_800_000)
        job = subprocess.Popen([sys.executable, "-m", "jobs.recommend",
                                *stack.job_sets(TOPIC, 1, **{"scoring.experiments_refresh_s": 1.0})],
                               cwd=PROJECT_ROOT, stdout=open(stack.work / "jobs.log", "ab"),
                               stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while sum(1 for _ in r.scan_iter(keys.rec_key("*"), count=5000)) < 1000:
            if time.monotonic() > deadline or job.poll() is not None:
                raise SystemExit(f"the job made no lists; see {stack.work / 'jobs.log'}")
            time.sleep(2)
        base = {"redis.port": stack.redis_svc.port, "experiments_refresh_s": 1.0, "exposures.topic": EXPOSURES,
                "exposures.bootstrap_servers": stack.bootstrap, "metrics_port": free_port()}
        with_exposures = GoServer(load_serving_config(None, {**base, "exposures.enabled": True}), 0, metrics=True)
        without = GoServer(load_serving_config(None, {**base, "metrics_port": free_port()}), 0, metrics=True)
        # a second server without exposures: how far two identical servers' p99 differ here (the floor)
        twin = GoServer(load_serving_config(None, {**base, "metrics_port": free_port()}), 0, metrics=True)

        print(f"bench: closed loop, {args.requests_per_s:.0f} requests/s for {args.seconds:.0f} s", flush=True)
        responder = ShownResponder(sim, seed=1)
        activity = sim.user_activity
        rng = np.random.default_rng(2)
        publish = producer(stack.bootstrap)
        served = 0
        with RecommendationsClient(f"127.0.0.1:{with_exposures.port}", deadline_s=2) as client:
            start = time.monotonic()
            ticks = int(args.seconds)
            for tick in tqdm(range(ticks), unit="s", desc="closed loop"):
                for u in rng.choice(len(sim.users), size=int(args.requests_per_s), p=activity):
                    user = sim.users[int(u)]
                    answer = client.recommendations(user.user_id, 10, placement=LOOP_PLACEMENT)
                    served += 1
                    for ev in responder.respond(user, [i.item_id for i in answer.items], answer.request_id,
                                                int(time.time() * 1000)):
                        publish.send(TOPIC, key=user.user_id.encode(), value=json.dumps(ev).encode())
                publish.flush()
                time.sleep(max(0.0, start + tick + 1 - time.monotonic()))

        stop_pid(job.pid)  # the job's CPU would be noise in both servers' latency
        job = None
        print("bench: latency with and without exposure logging, interleaved", flush=True)
        users = [u.user_id for u in sim.users[:500]]
        p99 = {"with": [], "without": [], "twin": []}
        with RecommendationsClient(f"127.0.0.1:{with_exposures.port}", deadline_s=2) as a, \
                RecommendationsClient(f"127.0.0.1:{without.port}", deadline_s=2) as b, \
                RecommendationsClient(f"127.0.0.1:{twin.port}", deadline_s=2) as c:
            for client in (a, b, c):  # warm all three
                latency_ms(client, users, 200)
            for _ in range(args.latency_rounds):
                p99["with"] += latency_ms(a, users, args.latency_calls)
                p99["without"] += latency_ms(b, users, args.latency_calls)
                p99["twin"] += latency_ms(c, users, args.latency_calls)
                served += args.latency_calls  # the server with exposures logged these too
            served += 200
        with_exposures.stop(5)  # flushes what is buffered
        with_exposures = None
        time.sleep(15)  # the last clicks through the job
        exposures = read_json_topic(stack.bootstrap, EXPOSURES)
        interactions = read_json_topic(stack.bootstrap, TOPIC)
        cfg = load_config(None)
        print("bench: the engagement job over the exposures and interactions", flush=True)
        t0 = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "jobs.engagement", "--bounded",
                               *stack.job_sets(TOPIC, 2, **{"engagement.exposures_topic": EXPOSURES,
                                                            "engagement.outcomes_topic": OUTCOMES})],
                              cwd=PROJECT_ROOT, stdout=open(stack.work / "jobs.log", "ab"), stderr=subprocess.STDOUT)
        if done.returncode:
            raise SystemExit(f"the engagement job failed; see {stack.work / 'jobs.log'}")
        engagement_s = time.monotonic() - t0
        totals = keys.read_engagement(r)
        all_rows = outcomes(exposures, interactions, cfg.engagement)
        settled = read_json_topic(stack.bootstrap, OUTCOMES)
        purchases = {o["event_id"] for o in settled if o["type"] == "purchase"}
        # purchases the loop's users made of an answer they were shown (each carries its request id),
        # counted from the raw topics: the job's credit must add up to exactly these
        served_at = {e["request_id"]: e["served_at_ms"] for e in exposures}
        window_ms = cfg.engagement.window_ms
        explained = {i["event_id"] for i in interactions if i.get("type") == "purchase"
                     and i.get("request_id") in served_at
                     and served_at[i["request_id"]] <= i["ts"] <= served_at[i["request_id"]] + window_ms}
        rows = [x for x in all_rows if x.placement == LOOP_PLACEMENT]
        result = report(rows, spec["experiments"][0])
        name = spec["experiments"][0]["name"]
        # every user is in the experiment (share 1): its totals hold each such purchase once
        credit_error = max(abs(sum(t[f"conversions_{m}"] for g, t in totals.items() if g[0] == name) / CREDIT_UNITS
                               - len(explained)) for m in MODELS)
        equal = totals == engagement_totals(all_rows)
        job_arms = {}
        for (experiment, arm, placement, _), t in totals.items():
            if experiment == name and placement == LOOP_PLACEMENT:
                a = job_arms.setdefault(arm, {"exposures": 0, "clicks": 0, "conversions": 0})
                a["exposures"] += t["exposures"]
                a["clicks"] += t["clicks"]
                a["conversions"] += t["conversions_last_touch"]
        job_arms = {a: {"exposures": v["exposures"], "ctr": round(v["clicks"] / v["exposures"], 6),
                        "conversion": round(v["conversions"] / CREDIT_UNITS / v["exposures"], 6)}
                    for a, v in job_arms.items() if v["exposures"]}
        out = {
            "arms": {a: {k: v[k] for k in ("users", "exposures", "ctr", "conversion", "revenue_per_user")}
                     for a, v in result["arms"].items()},
            "lift_ctr": result["lift"]["model"]["ctr"], "lift_conversion": result["lift"]["model"]["conversion"],
            "srm_p": result["srm_p"],
            "exposures_served": served, "exposures_logged": len(exposures),
            "attribution_credit_error": credit_error, "conversions_attributed": len(explained),
            "engagement_job": {"totals_equal_offline": equal, "arms": job_arms,
                               "purchases_settled": len(purchases),
                               "groups": len(totals), "seconds": round(engagement_s, 1)},
            "serve_p99_ms_with_exposures": round(float(np.percentile(p99["with"], 99)), 3),
            "serve_p99_ms_without": round(float(np.percentile(p99["without"], 99)), 3),
            "serve_p50_ms_with_exposures": round(float(np.percentile(p99["with"], 50)), 3),
            "serve_p50_ms_without": round(float(np.percentile(p99["without"], 50)), 3),
            "serve_p99_ms_twin_without": round(float(np.percentile(p99["twin"], 99)), 3),
            "loop_seconds": args.seconds, "requests_per_s": args.requests_per_s,
        }
        out["p99_ratio"] = round(out["serve_p99_ms_with_exposures"] / max(out["serve_p99_ms_without"], 1e-9), 3)
        # the floor: two identical servers without exposures, measured the same way
        out["p99_ratio_twins"] = round(max(out["serve_p99_ms_twin_without"], out["serve_p99_ms_without"])
                                       / max(min(out["serve_p99_ms_twin_without"], out["serve_p99_ms_without"]), 1e-9), 3)
        print(json.dumps(out))
        if not equal:
            print("bench: the engagement job's totals differ from the offline computation", file=sys.stderr)
        return 0 if equal else 1
    finally:
        for server in (with_exposures, without, twin):
            if server is not None:
                server.stop(0)
        if job is not None:
            stop_pid(job.pid)
        stack.close()


if __name__ == "__main__":
    sys.exit(main())
