"""Live rollout on the real parts: the job runs unbounded on the Flink MiniCluster (as
`streamrank run`) over a real broker and Redis; a model is promoted and then rolled back in the
registry while events keep arriving. Lists switch version without a restart, no user is left
without a list, no record is lost, and the drift report follows the scoring model."""

from __future__ import annotations

import json
import time

import pytest

from contract import keys
from contract.config import load_config
from models.registry import Registry
from models.training import train_and_publish
from tests.helpers import job_args, prefixed_topics, start_job_embedded, wait_for
from traffic.publish import producer, publish_catalog, publish_events
from traffic.simulator import Simulator

PHASE_EVENTS = 1500
PHASE_S = 150  # event time per phase


@pytest.fixture(scope="module")
def registry(training_set, tmp_path_factory):
    """v0001: the classifier (promoted); v0002: the LambdaMART ranker (published, not promoted)."""
    root = tmp_path_factory.mktemp("rollout-registry")
    cfg = load_config(None)
    train_and_publish(training_set, root, cfg, kind="classifier")
    train_and_publish(training_set, root, cfg, kind="lambdamart", promote=False)
    return Registry(root)


def lists(r) -> dict[str, keys.RecList]:
    return {k.decode().removeprefix(keys.rec_key("")): keys.RecList.decode(r.get(k)) for k in r.scan_iter(keys.rec_key("*"))}


def test_promote_and_rollback_mid_stream(kafka_broker, redis_server, registry, tmp_path):
    port, r = redis_server
    r.flushdb()
    prefix = "rollout."
    topics = prefixed_topics(kafka_broker, prefix)
    sim = Simulator(seed=5, users=120, items=400, categories=8)
    publish_catalog(sim, kafka_broker, topics["items"])
    sets = {"scoring.reload_check_s": 0.5, "features.micro_batch_s": 1.0, "features.out_of_orderness_s": 1.0,
            "scoring.drift_window_s": 30.0, "scoring.drift_min_rows": 200, "scoring.drift_threshold": 0.0001}
    args = job_args(kafka_broker, port, registry.root / "current", prefix, "rollout")
    args += [a for k, v in sets.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    log = tmp_path / "job.log"
    start_ms = int(time.time() * 1000) - 3 * PHASE_S * 1000 - 60_000
    sent = 0
    users: set[str] = set()

    def publish_phase(n: int) -> int:
        nonlocal sent
        report = publish_events(sim, kafka_broker, topics["interactions"], PHASE_EVENTS, PHASE_EVENTS / PHASE_S,
                                start_ms=start_ms + n * PHASE_S * 1000, progress=False)
        sent += report.sent
        users.update(report.user_ids)
        return report.last_ts

    job = start_job_embedded(args, log)  # unbounded
    try:
        # phase 1: the promoted classifier scores
        publish_phase(0)
        wait_for(lambda: len(lists(r)) >= 20, 120, "the first lists", job, log)
        assert {rec.model_version for rec in lists(r).values()} == {"v0001"}
        wait_for(lambda: r.hget(keys.DRIFT, "model_version") == b"v0001", 60, "the first drift window", job, log)

        # phase 2: promote the ranker while events keep arriving
        registry.promote("v0002")
        time.sleep(1.0)  # > scoring.reload_check_s: every batch from here on sees the promotion
        phase2_ms = start_ms + PHASE_S * 1000
        publish_phase(1)
        wait_for(lambda: sum(rec.feature_ts >= phase2_ms for rec in lists(r).values()) >= 20, 60,
                 "lists of phase-2 windows", job, log)
        phase2 = [rec for rec in lists(r).values() if rec.feature_ts >= phase2_ms]
        assert {rec.model_version for rec in phase2} == {"v0002"}

        # phase 3: roll back
        wait_for(lambda: r.hget(keys.DRIFT, "model_version") == b"v0002", 60, "a drift window of v0002", job, log)
        assert registry.rollback() == "v0001"
        time.sleep(1.0)
        phase3_ms = start_ms + 2 * PHASE_S * 1000
        last_ts = publish_phase(2)
        wait_for(lambda: sum(rec.feature_ts >= phase3_ms for rec in lists(r).values()) >= 20, 60,
                 "lists of phase-3 windows", job, log)
        phase3 = [rec for rec in lists(r).values() if rec.feature_ts >= phase3_ms]
        assert {rec.model_version for rec in phase3} == {"v0001"}
        wait_for(lambda: r.hget(keys.DRIFT, "model_version") == b"v0001", 60,
                 "a drift window of the rolled-back model", job, log)

        # one event per partition far ahead in event time closes every window still open
        p = producer(kafka_broker)
        for partition in (0, 1):
            p.send(topics["interactions"], partition=partition, value=json.dumps({
                "event_id": f"flush-{partition}", "user_id": f"flush{partition}", "item_id": "i0",
                "type": "view", "ts": last_ts + 600_000}).encode())
        p.flush()
        wait_for(lambda: sum(int(v) for v in r.hgetall(keys.LEDGER).values()) >= sent, 60,
                 "every published record in the ledger", job, log)
    finally:
        job.terminate()
        job.wait(30)

    ledger = {k.decode(): int(v) for k, v in r.hgetall(keys.LEDGER).items()}
    assert sum(ledger.values()) == sent, ledger  # nothing lost, nothing counted twice
    assert users <= set(lists(r)), f"users without a list: {sorted(users - set(lists(r)))[:10]}"
    drift = r.hgetall(keys.DRIFT)
    psi = json.loads(drift[b"psi"])
    card = json.loads((registry.root / "v0001" / "card.json").read_text())
    assert set(psi) == set(card["feature_names"]) and all(v >= 0 for v in psi.values())
    assert drift[b"alert"] == b"1"  # threshold 0.0001: any live window is "drifted"
    flink_log = "".join(p.read_text() for p in tmp_path.glob("flink-*.log"))
    assert "model switched v0001 -> v0002" in flink_log and "model switched v0002 -> v0001" in flink_log
    assert "DRIFT ALERT model v0001" in flink_log and "DRIFT ALERT model v0002" in flink_log
