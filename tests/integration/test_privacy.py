"""Pseudonymous ids and quarantine on the real parts: a stream with malformed and late records and
a bot through the job (Kafka, Flink MiniCluster, Redis) with privacy.pseudonymize on and
[quarantine] set; then no raw user id anywhere in Redis or on the DLQ, late and quarantine topics,
the bot's excess on the quarantine topic, the ledger and the features equal to the offline
replay's (which pseudonymizes and quarantines the same way), and both lookup engines answering
callers by their raw ids."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from contract import keys
from contract.config import load_config
from contract.keys import pseudonym, read_ledger
from contract.paths import PROJECT_ROOT
from contract.serving_config import load_serving_config
from devstack.stack import create_topics
from serving.client import RecommendationsClient
from serving.launch import start_server
from tests.conftest import PSEUDONYM_KEY, PSEUDONYM_KEYS
from tests.helpers import (assert_features_equal_replay, child_env, job_args, prefixed_topics, read_states, read_topic,
                           records_replay, replay_ledger, run_job_embedded)
from traffic.publish import producer
from traffic.simulator import Simulator

PRIVACY = {"privacy.pseudonymize": True, "privacy.key_env": "SR_TEST_PSEUDONYM_KEY"}
RAW_ID = re.compile(rb"u\d{5}|user with spaces")  # the simulator's user ids, and its bad ones


def everything_in(r) -> bytes:
    """Every key and value in Redis, as one text to search."""
    read = {"string": lambda k: r.get(k), "hash": lambda k: r.hgetall(k), "zset": lambda k: r.zrange(k, 0, -1),
            "set": lambda k: r.smembers(k), "list": lambda k: r.lrange(k, 0, -1)}
    out = [k + b" " + repr(read[r.type(k).decode()](k)).encode() for k in r.scan_iter(count=1000)]
    return b"\n".join(out)


@pytest.fixture(scope="module")
def private_run(kafka_broker, redis_server, model_dir, tmp_path_factory):
    port, r = redis_server
    r.flushdb()
    prefix = "priv."
    prefixed_topics(kafka_broker, prefix, partitions=1)  # one partition: the offline path's lateness is exact
    sim = Simulator(seed=7, users=120, items=300, categories=8)
    start = int(time.time() * 1000) - 300_000
    records = [(key, value) for key, value, _ in sim.records(start, 20.0, 1500, malformed_fraction=0.03)]
    valid = [json.loads(v) for _, v in records if v.startswith(b'{"event_id":"')]  # malformed ones have spaces
    # a bot among them: a view alongside each of the first valid records (about 600 in 30 s of event
    # time), far beyond [quarantine]'s 300 a minute, which the busiest simulated users stay under
    paced = []
    for n, (key, value) in enumerate(records):
        paced.append((key, value))
        if n < 600 and value.startswith(b'{"event_id":"'):
            ev = json.loads(value)
            paced.append(("u99999", json.dumps({**ev, "event_id": f"bot-{n}", "user_id": "u99999", "type": "view"},
                                               separators=(",", ":")).encode()))
    records = paced
    # late: on-time events' copies, sent last, far behind the watermark
    for n, ev in enumerate(valid[:6]):
        records.append((ev["user_id"], json.dumps({**ev, "event_id": f"late-{n}", "ts": start + 500}).encode()))
    p = producer(kafka_broker)
    for key, value in records:
        p.send(f"{prefix}interactions", key=key.encode(), value=value)
    p.flush()
    log = tmp_path_factory.mktemp("job") / "job.log"
    args = job_args(kafka_broker, port, model_dir, prefix, "priv")
    args += ["--set", "privacy.pseudonymize=true", "--set", 'privacy.key_env="SR_TEST_PSEUDONYM_KEY"',
             "--set", "quarantine.max_events_per_minute=300"]
    run_job_embedded(args, log, env=PSEUDONYM_KEYS)
    cfg = load_config(PROJECT_ROOT / "deploy" / "config" / "local.toml",
                      {"redis.port": port, "scoring.model_dir": str(model_dir), **PRIVACY,
                       "quarantine.max_events_per_minute": 300})
    hist, replay = records_replay([v for _, v in records], cfg, tmp_path_factory.mktemp("replay") / "h.jsonl")
    return r, port, [v for _, v in records], hist, replay, cfg, [ev["user_id"] for ev in valid[:6]]


def test_no_raw_user_id_in_redis_or_downstream_topics(private_run, kafka_broker):
    r, _, records, hist, replay, *_ = private_run
    assert sum(bool(RAW_ID.search(v)) for v in records) > 1000  # the input has them
    assert hist.rejected and hist.late
    assert not RAW_ID.search(everything_in(r))
    dlq = read_topic(kafka_broker, "priv.interactions.dlq")
    late = read_topic(kafka_broker, "priv.interactions.late")
    quarantine = read_topic(kafka_broker, "priv.interactions.quarantine")
    assert len(dlq) == len(hist.rejected) and len(late) == len(hist.late)  # nothing lost: each rejected record is there
    assert len(quarantine) == replay.ledger.quarantined > 200  # the bot's excess, each once, as the ledger counts it
    bot = pseudonym("u99999", PSEUDONYM_KEY.encode())
    assert {json.loads(json.loads(q)["record"])["user_id"] for q in quarantine} == {bot}
    for record in dlq + late + quarantine:
        assert not RAW_ID.search(record), record
    # `streamrank dlq --quarantine` reads it back by rule
    out = subprocess.run([sys.executable, "-m", "cli", "dlq", "--quarantine", "--set",
                          f'kafka.bootstrap_servers="{kafka_broker}"', "--set", 'kafka.quarantine_topic="priv.interactions.quarantine"'],
                         cwd=PROJECT_ROOT, env=child_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["by_reason"] == {"rate": len(quarantine)}
    # a late record keeps everything but its user id, which is the id the job keys its state by
    late_users = [json.loads(json.loads(d)["record"])["user_id"] for d in late]
    assert late_users == [pseudonym(u, PSEUDONYM_KEY.encode()) for u in private_run[-1]]
    # a DLQ record keeps its text with the user_id replaced, or is withheld (no user_id field to find)
    assert all(json.loads(d)["record"].startswith("(withheld") or '"user_id"' in json.loads(d)["record"] for d in dlq)


def test_ledger_and_features_equal_the_pseudonymizing_offline_replay(private_run):
    r, _, records, hist, replay, cfg, _ = private_run
    assert read_ledger(r) == replay_ledger(hist, replay) and sum(read_ledger(r).values()) == len(records)
    states = read_states(r)
    assert all(u.startswith(keys.PSEUDONYM_PREFIX) for u in states)
    assert_features_equal_replay(states, replay, cfg)


@pytest.mark.parametrize("engine", ["go", "python"])
def test_lookups_answer_callers_by_their_raw_ids(private_run, engine, kafka_broker):
    r, port, records, *_ = private_run
    users = sorted({json.loads(v)["user_id"] for v in records if v.startswith(b'{"event_id":"')})[:5]
    exposures = f"priv.exposures.{engine}"
    create_topics(kafka_broker, 1, {"interactions": "priv.interactions", "exposures": exposures})
    cfg = load_serving_config(None, {"redis.port": port, "engine": engine, **PRIVACY, "exposures.enabled": True,
                                     "exposures.bootstrap_servers": kafka_broker, "exposures.topic": exposures})
    with start_server(cfg) as server, RecommendationsClient(f"127.0.0.1:{server.port}", deadline_s=5) as client:
        for user in users:
            stored = keys.RecList.decode(r.get(keys.rec_key(pseudonym(user, PSEUDONYM_KEY.encode()))))
            got = client.recommendations(user, 5)
            assert not got.fallback and [i.item_id for i in got.items] == [i.item_id for i in stored.items[:5]]
            assert got.user_id == user and client.user_features(user).found
    # each answer's exposure names the user by pseudonym only
    logged = [json.loads(v) for v in read_topic(kafka_broker, exposures)]
    assert [e["user_id"] for e in logged] == [pseudonym(u, PSEUDONYM_KEY.encode()) for u in users]
    assert not any(RAW_ID.search(json.dumps(e).encode()) for e in logged)
    plain = load_serving_config(None, {"redis.port": port, "engine": engine})
    with start_server(plain) as server, RecommendationsClient(f"127.0.0.1:{server.port}", deadline_s=5) as client:
        assert client.recommendations(users[0], 5).fallback_reason == "no_list"  # raw ids are not stored
