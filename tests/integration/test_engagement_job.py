"""The engagement job on the real parts (Kafka, Redis, Flink's MiniCluster): exposures and the
interactions after them in, the totals per experiment, arm, placement and model version in Redis
equal to the offline computation over the same records (models.experiment_report), exactly; each
credited interaction on the outcomes topic, with every purchase's credit summing to one."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time

from contract import keys
from contract.config import EngagementConfig
from contract.paths import PROJECT_ROOT
from contract.schema import validate
from devstack.metrics import dashboard_metrics, scrape
from devstack.stack import create_topics, free_port
from models.experiment_report import engagement_totals, outcomes
from tests.helpers import child_env, wait_until
from traffic.publish import producer, read_json_topic
from udfs.attribution import CREDIT_UNITS, MODELS

MIN = 60_000
ENGAGEMENT_METRIC = "flink_taskmanager_job_task_operator_streamrank_engagement_"
WINDOW_S = 3600.0


def history(users: int = 150, seed: int = 7) -> tuple[list[dict], list[dict]]:
    """Exposures in two layers of experiments, two placements and model versions, and what users
    did after them: clicks and views of shown items (some twice), purchases with values, some
    carrying a request id (of an answer that did not show the item, too), some out of the window,
    some of items never shown, add-to-carts (no outcome). Some records are sent twice, as Kafka
    producers do on a retry: an exposure, and interactions (same event id), each to count once."""
    rng = random.Random(seed)
    t0 = int(time.time() * 1000) - 2 * 86_400_000
    exposures, interactions = [], []
    n_event = 0
    for u in range(users):
        user = f"u{u}"
        experiments = {"ab": "model" if u % 2 else "control"}
        if u % 3 == 0:
            experiments["layout"] = "grid"
        served = []
        for k in range(4):
            at = t0 + u * 7_000 + k * 20 * MIN + rng.randrange(5 * MIN)
            items = rng.sample([f"i{n}" for n in range(12)], 3)
            rid = f"{u:04d}{k:02d}" + "ab" * 13
            served.append((rid, at, items))
            exposures.append({"request_id": rid, "user_id": user, "placement": rng.choice(["home", "pdp:top"]),
                              "experiments": experiments if k != 3 else {}, "model_version": rng.choice(["v1", "v2"]),
                              "items": [{"item_id": i, "position": p, "score": 1.0 / p, "category": "c"}
                                        for p, i in enumerate(items, 1)],
                              "list_age_ms": 10, "fallback": False, "fallback_reason": "", "served_at_ms": at,
                              "interface": "grpc"})
            if rng.random() < 0.05:
                exposures.append(dict(exposures[-1]))
        for _ in range(rng.randrange(8)):
            rid, at, items = rng.choice(served)
            kind = rng.choice(["click", "view", "purchase", "purchase", "add_to_cart"])
            item = rng.choice(items) if rng.random() < 0.85 else "i99"
            ts = at + rng.choice([1_000, 5 * MIN, 30 * MIN, 59 * MIN, 90 * MIN])
            n_event += 1
            event = {"event_id": f"e{n_event}", "user_id": user, "item_id": item, "type": kind, "ts": ts}
            if kind == "purchase":
                event["value"] = round(rng.uniform(1, 80), 2)
            if rng.random() < 0.3:
                event["request_id"] = rng.choice(served)[0]
            interactions.append(event)
            if rng.random() < 0.1:  # the same click twice: one click of that exposure
                n_event += 1
                interactions.append({**event, "event_id": f"e{n_event}", "ts": ts + 1000})
            if rng.random() < 0.05:  # one record sent twice
                interactions.append(dict(event))
    return sorted(exposures, key=lambda e: e["served_at_ms"]), sorted(interactions, key=lambda i: i["ts"])


def publish(kafka_broker: str, prefix: str) -> tuple[dict[str, str], list[dict], list[dict]]:
    """history() on fresh topics named with prefix, with a record of each kind the job skips."""
    topics = {"interactions": f"{prefix}interactions", "exposures": f"{prefix}exposures",
              "engagement": f"{prefix}outcomes"}
    create_topics(kafka_broker, 2, topics)
    exposures, interactions = history()
    p = producer(kafka_broker)
    for e in exposures:
        p.send(topics["exposures"], key=e["user_id"].encode(), value=json.dumps(e).encode())
    for i in interactions:
        p.send(topics["interactions"], key=i["user_id"].encode(), value=json.dumps(i).encode())
    p.send(topics["interactions"], key=b"x", value=b"not json")  # the recommend job's to DLQ: skipped here
    p.send(topics["exposures"], key=b"x", value=b"{broken")
    p.flush()
    for i in interactions:
        validate(json.dumps(i))  # all valid: the offline side reads them as they are
    return topics, exposures, interactions


def settings(kafka_broker: str, redis_port: int, topics: dict[str, str]) -> list[str]:
    overrides = {"redis.port": redis_port, "kafka.bootstrap_servers": f'"{kafka_broker}"',
                 "kafka.interactions_topic": f'"{topics["interactions"]}"',
                 "engagement.exposures_topic": f'"{topics["exposures"]}"',
                 "engagement.outcomes_topic": f'"{topics["engagement"]}"', "engagement.window_s": WINDOW_S,
                 "flink.parallelism": 2}
    return [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]


def assert_totals_are_the_offline_ones(r, exposures: list[dict], interactions: list[dict]) -> None:
    cfg = EngagementConfig(window_s=WINDOW_S)
    expected = engagement_totals(outcomes(exposures, interactions, cfg))
    got = keys.read_engagement(r)
    assert got == expected
    # counted straight from the records: each exposure once (some were sent twice), in each layer
    unique = {e["request_id"]: e for e in exposures}
    assert len(unique) < len(exposures)
    for layer in ("ab", "layout"):
        assert sum(t["exposures"] for g, t in got.items() if g[0] == layer) == sum(
            layer in e["experiments"] for e in unique.values())
    # the history exercises what it claims to: both layers, a placement with ':' in it, clicks
    # counted once per exposure, credit split
    assert {g[0] for g in got} == {"ab", "layout"} and {g[2] for g in got} == {"home", "pdp:top"}
    assert len(got) == 2 * 2 * 2 + 2 * 2
    touching_clicks = sum(1 for i in interactions if i["type"] in cfg.click_types
                          and any(rid_or_item_touches(i, e) and e["experiments"] for e in unique.values()))
    assert 0 < sum(t["clicks"] for g, t in got.items() if g[0] == "ab") < touching_clicks
    assert any(t["conversions_linear"] % CREDIT_UNITS for t in got.values())  # some purchase split over touches


def flush(kafka_broker: str, topics: dict[str, str], after_ms: int) -> None:
    """An exposure and an interaction on every partition of both topics, late enough that the
    watermark passes everything before them (held back by the window in the joins): a streaming
    job then settles the whole history. They touch nothing and count in no group."""
    p = producer(kafka_broker)
    for partition in range(2):
        p.send(topics["exposures"], partition=partition, value=json.dumps(
            {"request_id": f"flush{partition}", "user_id": "flush", "placement": "", "experiments": {},
             "items": [], "model_version": "", "served_at_ms": after_ms}).encode())
        p.send(topics["interactions"], partition=partition, value=json.dumps(
            {"event_id": f"flush{partition}", "user_id": "flush", "item_id": "none", "type": "view",
             "ts": after_ms}).encode())
    p.flush()


def test_the_streaming_job_settles_the_offline_totals_exactly(kafka_broker, redis_db, tmp_path):
    """Unbounded, as in production: once the watermark has passed the history, the totals in Redis
    are the offline ones exactly, the Flink metrics count the same, and the outcomes topic holds
    every credited interaction, each purchase's credit summing to one per model."""
    port, r = redis_db
    topics, exposures, interactions = publish(kafka_broker, "eng.")
    last = max(i["ts"] for i in interactions)
    flush(kafka_broker, topics, last + int(2 * WINDOW_S * 1000))
    metrics_port = free_port()
    log = tmp_path / "engagement.log"
    job = subprocess.Popen([sys.executable, "-m", "jobs.engagement",
                            "--config", str(PROJECT_ROOT / "deploy" / "config" / "local.toml"),
                            *settings(kafka_broker, port, topics), "--set", f'flink.prometheus_port="{metrics_port}"'],
                           cwd=PROJECT_ROOT, env=child_env(), stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        expected = engagement_totals(outcomes(exposures, interactions, EngagementConfig(window_s=WINDOW_S)))
        settled = wait_until(lambda: keys.read_engagement(r) == expected or job.poll() is not None, 300, every_s=1.0)
        assert settled and job.poll() is None, log.read_text()[-3000:]
        assert_totals_are_the_offline_ones(r, exposures, interactions)

        purchases_credited = {i["event_id"] for i in interactions if i["type"] == "purchase" and any(
            rid_or_item_touches(i, e) for e in exposures)}
        # each exposure once (the flush's are still open), each credited purchase once
        want = {"exposures": len({e["request_id"] for e in exposures}), "conversions": len(purchases_credited)}
        counters = {}

        def counted() -> bool:
            text = scrape(f"http://127.0.0.1:{metrics_port}/metrics") or ""
            for name in ("exposures", "actions", "clicks", "conversions"):
                counters[name] = sum(float(v) for v in re.findall(rf"^{ENGAGEMENT_METRIC}{name}\{{[^}}]*\}} (\S+)$",
                                                                  text, re.M))
            return counters["exposures"] == want["exposures"] and counters["conversions"] == want["conversions"]

        assert wait_until(counted, 60, every_s=1.0), (counters, want)
        clicked_exposures = sum(o.clicked for o in outcomes(exposures, interactions, EngagementConfig(window_s=WINDOW_S)))
        assert counters["clicks"] == clicked_exposures > 0

        outcomes_out = read_json_topic(kafka_broker, topics["engagement"])
        assert counters["actions"] == len(outcomes_out)
        # the dashboard's engagement panels read metrics this job serves
        served = set(re.findall(r"^(flink_\w+)\{", scrape(f"http://127.0.0.1:{metrics_port}/metrics") or "", re.M))
        assert {n for n in dashboard_metrics() if n.startswith(ENGAGEMENT_METRIC)} <= served
        purchases = [o for o in outcomes_out if o["type"] == "purchase"]
        assert {o["event_id"] for o in purchases} == purchases_credited and all(o["touches"] for o in outcomes_out)
        for o in purchases:
            for m in MODELS:
                assert abs(sum(t["conversions"][m] for t in o["touches"]) - 1.0) < 1e-9
    finally:
        job.terminate()
        job.wait(30)

    # everything read again from the start, as a restart from an older checkpoint would: the
    # markers keep every total as it was, and the replayed outcomes say they are not new
    replay = subprocess.run([sys.executable, "-m", "jobs.engagement", "--bounded",
                             "--config", str(PROJECT_ROOT / "deploy" / "config" / "local.toml"),
                             *settings(kafka_broker, port, topics)],
                            cwd=PROJECT_ROOT, env=child_env(), capture_output=True, text=True, timeout=600)
    assert replay.returncode == 0, replay.stderr[-3000:]
    assert keys.read_engagement(r) == expected
    replayed = read_json_topic(kafka_broker, topics["engagement"])[len(outcomes_out):]
    assert len(replayed) == len(outcomes_out) and not any(o["first_time"] for o in replayed)


def rid_or_item_touches(i: dict, e: dict) -> bool:
    return (e["user_id"] == i["user_id"] and e["served_at_ms"] <= i["ts"] <= e["served_at_ms"] + WINDOW_S * 1000
            and (i["item_id"] in {x["item_id"] for x in e["items"]} or i.get("request_id") == e["request_id"]))
