"""The whole loop on real parts: Kafka broker (KRaft), Redis, the job on the Flink MiniCluster
(as `streamrank run`), and the gRPC service on port 0."""

from __future__ import annotations

import json
import time

import grpc
import pytest

from contract import keys
from contract.segments import Segments
from contract.serving_config import load_serving_config
from serving.client import RecommendationsClient
from serving.launch import start_server
from tests.conftest import job_config
from tests.helpers import job_args, prefixed_topics, read_topic, run_job_embedded
from traffic.publish import publish_catalog, publish_events
from traffic.simulator import Simulator
from udfs.features import UserState, profile


@pytest.fixture(scope="module")
def loop_run(kafka_broker, redis_server, model_dir, tmp_path_factory):
    """Publish 3,000 records (1% malformed) and run the job over them once."""
    port, r = redis_server
    r.flushdb()
    prefix = "e2e."
    prefixed_topics(kafka_broker, prefix)
    sim = Simulator(seed=99, users=150, items=400, categories=8)
    publish_catalog(sim, kafka_broker, f"{prefix}items")
    report = publish_events(sim, kafka_broker, f"{prefix}interactions", 3000, 50.0,
                            start_ms=int(time.time() * 1000) - 120_000, malformed_fraction=0.01,
                            progress=False)
    valid_users = set()
    for _, value, ok in Simulator(seed=99, users=150, items=400, categories=8).records(
            report.first_ts, 50.0, 3000, 0.01):
        if ok:
            valid_users.add(json.loads(value)["user_id"])
    log = tmp_path_factory.mktemp("job") / "job.log"
    run_job_embedded(job_args(kafka_broker, port, model_dir, prefix, "e2e"), log)
    return report, valid_users, r, port


def test_every_valid_user_has_a_list(loop_run):
    report, valid_users, r, _ = loop_run
    assert report.malformed > 0 and len(valid_users) == report.users
    with_lists = {k.decode().removeprefix(keys.rec_key("")) for k in r.scan_iter(keys.rec_key("*"))}
    assert with_lists == valid_users
    rec = keys.RecList.decode(r.get(keys.rec_key(sorted(valid_users)[0])))
    assert rec.items and rec.model_version.startswith("v") and rec.feature_ts > 0
    # reasons and segments came through the job (tests/redis/test_reasons.py checks each is a fact)
    lists = [keys.RecList.decode(r.get(keys.rec_key(u))) for u in valid_users]
    reasons = {c.partition(":")[0] for rec in lists for i in rec.items for c in i.reasons}
    assert {"model", "trending_in", "viewed_recently"} <= reasons, reasons
    assert any(rec.segments for rec in lists) and not all(rec.segments for rec in lists)


def test_dlq_holds_exactly_the_malformed_records(loop_run, kafka_broker):
    report, *_ = loop_run
    dlq = [json.loads(v) for v in read_topic(kafka_broker, "e2e.interactions.dlq")]
    assert len(dlq) == report.malformed
    assert all(d["reason"] and d["src_topic"] == "e2e.interactions" and d["src_offset"] >= 0 for d in dlq)
    assert len({(d["src_partition"], d["src_offset"]) for d in dlq}) == len(dlq)


@pytest.mark.parametrize("engine", ["go", "python"])
def test_grpc_returns_the_redis_list_and_features(loop_run, model_dir, engine):
    _, valid_users, r, port = loop_run
    cfg = load_serving_config(None, {"redis.port": port, "engine": engine})
    job_cfg = job_config(port, model_dir)
    features_cfg, segments = job_cfg.features, Segments.of_config(job_cfg)
    with start_server(cfg) as server, RecommendationsClient(f"127.0.0.1:{server.port}", deadline_s=5) as client:
        for user in sorted(valid_users)[:5]:
            stored = keys.RecList.decode(r.get(keys.rec_key(user)))
            resp = client.recommendations(user, 10)
            assert not resp.fallback
            assert [i.item_id for i in resp.items] == [i.item_id for i in stored.items[:10]]
            assert [tuple(i.reasons) for i in resp.items] == [i.reasons for i in stored.items[:10]]
            assert list(resp.segments) == stored.segments
            assert resp.model_version == stored.model_version
            assert resp.feature_ts_ms == stored.feature_ts
            # GetUserFeatures: the features the job's state gives, by name, with no feature code in serving
            want = profile(UserState.decode(r.get(keys.feat_key(user))), features_cfg, None, segments)
            f = client.user_features(user)
            assert f.found and dict(f.features) == want.features and list(f.top_categories) == want.top_categories
            assert list(f.segments) == want.segments
            assert (f.feature_ts_ms, f.window_end_ms) == (want.feature_ts, want.window_end) == (stored.feature_ts, want.window_end)
            assert want.features["recency_s"] < 3600  # as of its last window: an event of that window is recent
        assert not client.user_features("never-seen").found
        cold = client.recommendations("never-seen", 5)
        assert cold.fallback and cold.fallback_reason == "no_list" and len(cold.items) == 5
        with pytest.raises(grpc.RpcError) as err:
            client.recommendations("bad user!", 5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
