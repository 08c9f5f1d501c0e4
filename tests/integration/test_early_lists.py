"""Early lists on real parts (Kafka, the job on the Flink MiniCluster, Redis): a user's list is
written before the watermark passes their events' window (features.early_fire_s), from the events
seen so far; the state waits for the final window; the job exports the lists' freshness as the
histogram streamrank_list_freshness_seconds."""

from __future__ import annotations

import json
import re
import time

from contract import keys
from contract.config import load_config
from devstack.metrics import freshness_buckets, histogram_quantile, rule_inputs, scrape
from devstack.stack import free_port
from tests.helpers import job_args, prefixed_topics, start_job_embedded, wait_for
from tests.integration.test_conservation_recovery import publish
from udfs.features import Event, UserState, WindowDelta, apply_window, profile

PREFIX = "early."


def record(event_id: str, user: str, item: str, type_: str, ts: int) -> bytes:
    return json.dumps({"event_id": event_id, "user_id": user, "item_id": item, "type": type_,
                       "category": "c1", "ts": ts}).encode()


def test_a_list_is_written_before_the_window_is_final(kafka_broker, redis_server, model_dir, tmp_path):
    port, r = redis_server
    r.flushdb()
    prefixed_topics(kafka_broker, PREFIX, partitions=1)
    log, metrics_port = tmp_path / "job.log", free_port()
    cfg = load_config(None)
    job = start_job_embedded(job_args(kafka_broker, port, model_dir, PREFIX, "early")
                             + ["--set", f'flink.prometheus_port="{metrics_port}"',
                                "--set", "kafka.startup_mode=\"latest-offset\""], log)
    try:
        wait_for(lambda: "submitted job" in log.read_text(), 120, "the job's submission", job, log)
        time.sleep(8)  # the source reads from the latest offsets once it has started
        now = int(time.time() * 1000)
        events = [Event("x1", "view", "i1", "c1", now - 50, 0.0, True),
                  Event("x2", "add_to_cart", "i2", "c1", now, 0.0, True)]
        publish(kafka_broker, f"{PREFIX}interactions",
                [record(e.event_id, "early-user", e.item_id, e.type, e.ts) for e in events])
        # nothing newer comes, so the watermark stays 5 s behind: only early firing writes a list
        wait_for(lambda: r.exists(keys.rec_key("early-user")), 30, "an early list", job, log)
        listed = keys.RecList.decode(r.get(keys.rec_key("early-user")))
        assert listed.feature_ts == now and listed.items
        assert r.get(keys.feat_key("early-user")) is None  # the state waits for the final window
        assert r.hget(keys.LEDGER, "used") in (None, b"0")
        # what the list means: the features over the events seen so far
        mb = int(cfg.features.micro_batch_s * 1000)
        seen, _ = apply_window(UserState(), WindowDelta("early-user", now - now % mb + mb, ""), cfg.features, events)
        assert keys.Profile.decode(r.get(keys.profile_key("early-user"))) == profile(seen, cfg.features)

        # a record far ahead in event time moves the watermark past the window: it is final now
        publish(kafka_broker, f"{PREFIX}interactions", [record("flush", "other-user", "i3", "view", now + 60_000)])
        wait_for(lambda: r.exists(keys.feat_key("early-user")), 60, "the final window's state", job, log)
        state = UserState.decode(r.get(keys.feat_key("early-user")))
        assert state.feature_ts == now and int(r.hget(keys.LEDGER, "used")) == 2
        assert keys.Profile.decode(r.get(keys.profile_key("early-user"))) == profile(state, cfg.features)

        url = f"http://127.0.0.1:{metrics_port}/metrics"
        wait_for(lambda: freshness_buckets(scrape(url) or "").get(float("inf"), 0) >= 1, 30,
                 "the freshness histogram to count the list", job, log)
        text = scrape(url) or ""
        buckets = freshness_buckets(text)
    finally:
        job.terminate()
        job.wait(30)
    # cumulative buckets, as histogram_quantile reads them; the early list was fresh (well under 30 s)
    bounds = sorted(buckets.items())
    assert [n for _, n in bounds] == sorted(n for _, n in bounds) and bounds[-1][0] == float("inf")
    assert buckets[30.0] >= 1 and histogram_quantile(0.5, buckets) < 30
    # the recording rules read series the job serves
    served = set(re.findall(r"^(flink_\w+)\{", text, re.M))
    assert set(rule_inputs()) <= served, set(rule_inputs()) - served
