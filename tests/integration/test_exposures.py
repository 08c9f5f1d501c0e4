"""Exposures on the real parts (Kafka, Redis, lookupd or the Python engine, the gateway): every
answer served is one record on the exposures topic, with the request id the caller got and the
arms of the experiments `streamrank experiments apply` stored; with the broker killed, calls go on
without waiting and exactly the records beyond the buffer are dropped and counted."""

from __future__ import annotations

import json
import os
import re
import signal
from collections import Counter
from datetime import datetime, timedelta, UTC

import httpx
from prometheus_client import REGISTRY

from contract import keys
from contract.experiments import assign, parse_experiments, store_experiments
from contract.serving_config import load_serving_config
from devstack.stack import create_topics, free_port, start_kafka, stop_pid
from serving.client import RecommendationsClient
from serving.launch import start_server, GoServer
from serving.server import pb
from tests.helpers import read_topic, wait_until
from tests.redis.test_serving_ops import running_gateway

NOW = datetime.now(UTC)
EXPERIMENTS = parse_experiments({"experiments": [
    {"name": "ranker-ab", "salt": "it-1", "share": 1.0, "start": NOW - timedelta(days=1),
     "end": NOW + timedelta(days=1), "arms": [{"name": "trending", "ranker": "trending"}, {"name": "model"}]},
    {"name": "half", "salt": "it-2", "layer": "other", "share": 0.5, "start": NOW - timedelta(days=1),
     "end": NOW + timedelta(days=1), "arms": [{"name": "a"}, {"name": "b", "weight": 3}]}]})
USERS = [f"u{n}" for n in range(40)]  # the even ones have lists, the odd ones are cold


def seed(r) -> None:
    ts = int(NOW.timestamp() * 1000) - 60_000
    for n, user in enumerate(USERS):
        if n % 2 == 0:
            items = [keys.ScoredItem(f"i{n}-{m}", 1.0 - m / 10, f"c{m % 3}") for m in range(8)]
            r.set(keys.rec_key(user), keys.RecList(items, "v1", ts, ts + 5).encode())
    r.zadd(keys.TRENDING, {f"t{n}": 100 - n for n in range(30)})
    store_experiments(r, EXPERIMENTS.spec(), "(test)")


def serving(redis_port: int, engine: str, bootstrap: str, topic: str, **more):
    return load_serving_config(None, {"redis.port": redis_port, "engine": engine, "exposures.enabled": True,
                                      "exposures.bootstrap_servers": bootstrap, "exposures.topic": topic,
                                      "experiments_refresh_s": 0.2, **more})


def exposure_counts(server, cfg) -> dict[str, float]:
    """streamrank_serving_exposures_total by outcome: lookupd's /metrics, or this process's registry
    (the Python engine runs in this process)."""
    if isinstance(server, GoServer):
        text = httpx.get(f"http://127.0.0.1:{cfg.metrics_port}/metrics").text
        found = dict(re.findall(r'^streamrank_serving_exposures_total\{outcome="(\w+)"\} (\S+)$', text, re.M))
        return {o: float(found.get(o, 0)) for o in OUTCOMES}
    return {o: REGISTRY.get_sample_value("streamrank_serving_exposures_total", {"outcome": o}) or 0.0
            for o in OUTCOMES}


OUTCOMES = ("sent", "dropped", "failed")


def running(cfg):
    """The configured engine; lookupd with its /metrics on cfg.metrics_port."""
    return GoServer(cfg, 0, metrics=True) if cfg.engine == "go" else start_server(cfg)


def call_everyone(client) -> list[tuple[str, pb.GetRecommendationsResponse]]:
    """Single calls for every user, then batches of four with placements: (user, answer) each."""
    out = [(u, client.recommendations(u, 5, placement="hero")) for u in USERS]
    for n in range(0, 20, 4):
        batch = USERS[n:n + 4]
        answers = client.batch([client.request(u, 3, placement=f"slot{m}") for m, u in enumerate(batch)])
        out += list(zip(batch, answers, strict=True))
    return out


def test_every_answer_served_is_logged_once_with_its_request_id_and_arms(kafka_broker, redis_db, engine):
    port, r = redis_db
    seed(r)
    topic = f"exp.exposures.{engine}"
    create_topics(kafka_broker, 1, {"interactions": "exp.interactions", "exposures": topic})
    cfg = serving(port, engine, kafka_broker, topic, metrics_port=free_port())
    with running(cfg) as server, RecommendationsClient(f"127.0.0.1:{server.port}", deadline_s=5) as client:
        served = call_everyone(client)
        assert wait_until(lambda: exposure_counts(server, cfg)["sent"] >= len(served), 30)
        counts = exposure_counts(server, cfg)
    logged = {e["request_id"]: e for e in map(json.loads, read_topic(kafka_broker, topic))}
    assert len(logged) == len(served) == counts["sent"] and counts["dropped"] == counts["failed"] == 0
    spec = EXPERIMENTS.spec()
    for user, answer in served:
        e = logged[answer.request_id]  # the id the caller got names its exposure
        assert e["user_id"] == user and e["interface"] == "grpc" and e["placement"] == answer.placement
        assert e["experiments"] == dict(answer.experiments) == assign(spec, user, e["served_at_ms"])
        assert [(i["item_id"], i["position"]) for i in e["items"]] == [(i.item_id, n) for n, i in
                                                                       enumerate(answer.items, 1)]
        assert e["fallback"] == answer.fallback and e["model_version"] == answer.model_version
    assert Counter(e["fallback_reason"] for e in logged.values()) == {"": 30, "no_list": 30}
    assert {a for _, ans in served for a in ans.experiments} == {"ranker-ab", "half"}


def test_gateway_answers_are_logged_with_their_interface(kafka_broker, redis_db):
    port, r = redis_db
    seed(r)
    topic = "exp.exposures.gateway"
    create_topics(kafka_broker, 1, {"interactions": "exp.interactions", "exposures": topic})
    with running_gateway(serving(port, "python", kafka_broker, topic)) as base, httpx.Client(base_url=base) as http:
        rest = [http.get(f"/v1/recommendations/{u}", params={"k": 3}).json() for u in USERS[:6]]
        batch = http.post("/v1/recommendations:batch", json={"requests": [{"user_id": u} for u in USERS[6:9]]})
        query = "{ recommendations(userId: \"u2\", k: 2) { requestId experiments { experiment arm } items { itemId } } }"
        graphql = http.post("/graphql", json={"query": query}).json()["data"]["recommendations"]
    answers = rest + batch.json()["responses"]
    logged = {e["request_id"]: e for e in map(json.loads, read_topic(kafka_broker, topic))}
    assert len(logged) == len(answers) + 1
    for a in answers:
        assert logged[a["request_id"]]["interface"] == "http" and logged[a["request_id"]]["experiments"] == a["experiments"]
    g = logged[graphql["requestId"]]
    assert g["interface"] == "graphql" and [i["item_id"] for i in g["items"]] == [i["itemId"] for i in graphql["items"]]
    assert {x["experiment"]: x["arm"] for x in graphql["experiments"]} == g["experiments"]


def test_a_dead_broker_holds_up_no_call_and_only_records_beyond_the_buffer_are_dropped(redis_db, tmp_path, engine):
    port, r = redis_db
    seed(r)
    broker = start_kafka(tmp_path, free_port(), free_port(), partitions=1)
    bootstrap = f"127.0.0.1:{broker.port}"
    create_topics(bootstrap, 1, {"exposures": "exposures"})
    buffer = 20
    cfg = serving(port, engine, bootstrap, "exposures", metrics_port=free_port(), **{"exposures.buffer_records": buffer})
    try:
        with running(cfg) as server, RecommendationsClient(f"127.0.0.1:{server.port}", deadline_s=2,
                                                           retries=0) as client:
            before = exposure_counts(server, cfg)
            for u in USERS[:10]:
                client.recommendations(u, 3)
            assert wait_until(lambda: exposure_counts(server, cfg)["sent"] - before["sent"] == 10, 30)
            os.killpg(broker.pid, signal.SIGKILL)
            # with a 2 s deadline and no retry, a call that waited on Kafka would fail here
            answers = [client.recommendations(USERS[n % len(USERS)], 3) for n in range(100)]
            assert all(a.request_id for a in answers)
            assert sum(not a.fallback for a in answers) == 50  # Redis still answers: the even users' lists
            after = exposure_counts(server, cfg)
            assert after["dropped"] - before["dropped"] == 100 - buffer  # the buffer held, the rest dropped
            assert after["sent"] - before["sent"] == 10
    finally:
        stop_pid(broker.pid)


def test_an_unreachable_broker_at_start_does_not_stop_the_service(redis_db, engine):
    port, r = redis_db
    seed(r)
    cfg = serving(port, engine, "127.0.0.1:9", "exposures", metrics_port=free_port(),
                  **{"exposures.buffer_records": 5})
    with running(cfg) as server, RecommendationsClient(f"127.0.0.1:{server.port}", deadline_s=2, retries=0) as client:
        before = exposure_counts(server, cfg)
        assert all(client.recommendations(u, 3).request_id for u in USERS[:12])
        assert exposure_counts(server, cfg)["dropped"] - before["dropped"] == 12 - 5
