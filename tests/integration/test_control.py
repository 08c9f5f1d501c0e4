"""Users' requests (records of type erase, opt_out, opt_in in the user's own event stream), on the
real broker, Redis and Flink MiniCluster: each is applied at its place in the user's events, the
job and the offline replay agree on the result, and that result is what the requests ask for."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter

from contract import keys
from contract.keys import read_ledger
from contract.paths import PROJECT_ROOT
from contract.schema import validate
from tests.conftest import job_config
from tests.helpers import (assert_features_equal_replay, child_env, job_args, prefixed_topics,
                                       read_states, read_topic, records_replay, replay_ledger,
                                       start_job_embedded, wait_job)
from traffic.publish import producer
from traffic.simulator import Simulator
from udfs.features import UserState, describe

PREFIX = "ctl."


def test_erase_and_opt_out_apply_at_their_place_in_the_users_events(kafka_broker, redis_server, model_dir, tmp_path):
    port, r = redis_server
    r.flushdb()
    topics = prefixed_topics(kafka_broker, PREFIX, partitions=1)
    sim = Simulator(seed=11, users=80, items=100, categories=5)
    events = [json.loads(v) for _, v, _ in sim.records(int(time.time() * 1000) - 900_000, 20.0, 1200)]
    # the three most active users: A erased, B opted out for good, C opted out and back in
    (a, _), (b, _), (c, _) = Counter(e["user_id"] for e in events).most_common(3)

    def at(user: str, q: float) -> int:
        """A time inside the user's events (no event of theirs at that very millisecond)."""
        ts = sorted(e["ts"] for e in events if e["user_id"] == user)
        t = ts[int(len(ts) * q)] + 1
        assert t not in ts
        return t

    t_erase, t_out, t_c_out, t_c_in = at(a, 0.5), at(b, 0.5), at(c, 0.3), at(c, 0.7)
    requests = [{"event_id": f"req{n}", "user_id": u, "type": kind, "ts": t}
                for n, (t, u, kind) in enumerate(sorted(
                    [(t_erase, a, "erase"), (t_out, b, "opt_out"), (t_c_out, c, "opt_out"), (t_c_in, c, "opt_in")]))]
    bad = {"event_id": "req9", "user_id": "not a user", "type": "erase", "ts": t_erase}
    stream = sorted(events + requests, key=lambda e: e["ts"]) + [bad]  # in time order, as producers send
    records = [json.dumps(e).encode() for e in stream]
    p = producer(kafka_broker)
    for value in records:
        p.send(topics["interactions"], key=b"k", value=value)
    p.flush()
    p.close()
    log = tmp_path / "job.log"
    wait_job(start_job_embedded(job_args(kafka_broker, port, model_dir, PREFIX, "ctl-1")
                                + ["--set", f"kafka.stop_offsets={{0 = {len(records)}}}"], log), log)

    # the job and the offline replay of the same stream agree, requests included
    cfg = job_config(port, model_dir)
    hist, replay = records_replay(records, cfg, tmp_path / "stream.jsonl")
    states = read_states(r)
    assert read_ledger(r) == replay_ledger(hist, replay)
    assert keys.read_control(r) == replay.ledger.controls() == {"erase": 1, "opt_out": 2, "opt_in": 1}
    assert_features_equal_replay(states, replay, cfg)
    dlq = [json.loads(v) for v in read_topic(kafka_broker, topics["dlq"])]
    assert [(row["reason"], json.loads(row["record"])["event_id"]) for row in dlq] == [("bad_user_id", "req9")]
    assert f"users' requests: erase 1, opt_out 2, opt_in 1; accounted {len(records)}" in log.read_text()

    # and what they asked for: A and C keep only what came after (C: after the opt-in), B nothing,
    # B has no list, and the events B and C sent while opted out are counted opted_out
    def kept(e: dict) -> bool:
        return {a: e["ts"] > t_erase, b: False, c: e["ts"] > t_c_in}.get(e["user_id"], True)

    _, without = records_replay([json.dumps(e).encode() for e in events if kept(e)], cfg, tmp_path / "kept.jsonl")
    assert_features_equal_replay({u: s for u, s in states.items() if u != b}, without, cfg)
    t = max(s.window_end for s in states.values())
    assert states[b].opted_out and describe(states[b], t, cfg.features) == describe(UserState(), t, cfg.features)
    assert states[a].erased_ts == t_erase and states[c].erased_ts == t_c_out and not states[c].opted_out
    assert r.exists(keys.rec_key(a)) and r.exists(keys.rec_key(c)) and not r.exists(keys.rec_key(b))
    _, untouched = records_replay([json.dumps(e).encode() for e in events], cfg, tmp_path / "events.jsonl")
    blocked = sum(1 for e in events if e.get("consent", True) is not False
                  and ((e["user_id"] == b and e["ts"] > t_out) or (e["user_id"] == c and t_c_out < e["ts"] < t_c_in)))
    assert blocked > 0 and replay.ledger.opted_out == untouched.ledger.opted_out + blocked
    assert replay.ledger.used == untouched.ledger.used - blocked


def test_control_command_sends_requests_the_job_accepts(kafka_broker):
    """`streamrank control opt-out U...`: one record per user on the interactions topic, keyed by
    the user, valid as the job validates; a wrong action or user id is refused before sending."""
    topics = prefixed_topics(kafka_broker, "ctlcli.", partitions=1)
    sets = ["--set", f'kafka.bootstrap_servers="{kafka_broker}"', "--set", f'kafka.interactions_topic="{topics["interactions"]}"']
    cli = [sys.executable, "-m", "cli", "control"]
    out = subprocess.run([*cli, "opt-out", "u1", "u2", *sets], cwd=PROJECT_ROOT, env=child_env(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    sent = json.loads(out.stdout)
    got = [validate(v) for v in read_topic(kafka_broker, topics["interactions"])]
    assert [(e.user_id, e.type, e.event_id) for e in got] == [("u1", "opt_out", sent["event_ids"][0]),
                                                              ("u2", "opt_out", sent["event_ids"][1])]
    for wrong, says in ((["forget", "u1"], "unknown action 'forget': use erase, opt-out or opt-in"),
                        (["erase", "u3", "a b"], "not user ids (^[A-Za-z0-9_.:-]{1,64}$): 'a b'")):
        out = subprocess.run([*cli, *wrong, *sets], cwd=PROJECT_ROOT, env=child_env(), capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 2 and says in out.stderr, out.stderr
    assert len(read_topic(kafka_broker, topics["interactions"], idle_ms=1000)) == 2
