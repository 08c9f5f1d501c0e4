"""Exact accounting and exactly-once state on the real broker, Redis and Flink MiniCluster.

One single-partition topic (so the watermark, emitted on every record, is reproducible) gets a
stream with 1% malformed records (and records with a UTF-8 BOM or a Latin-1 byte), 10% duplicated,
3% opted-out records and late arrivals at +1 s, +8 s and +60 s against a 5 s lateness. The ledger
must match what was injected, and the DLQ the offline path's rejects, record for record.
Then the same stream runs again with a failure injected mid-way (fixed-delay restarts): the job
resumes from its checkpoint and the features and lists it leaves equal the uninterrupted run's.
That run's topic is fed in two parts, so the failure comes after a completed checkpoint."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter

import pytest
import redis

from contract import compact, keys
from contract.keys import read_ledger
from contract.paths import PROJECT_ROOT
from contract.schema import valid_id
from devstack.metrics import control_counters, dashboard_metrics, dlq_reason_counters
from tests.integration.test_engagement_job import ENGAGEMENT_METRIC
from devstack.rejected import read_rejected, summarize
from devstack.stack import free_port, port_open, start_kafka, start_redis, start_redis_cluster, stop_pid
from tests.conftest import job_config
from tests.helpers import (assert_features_equal_replay, assert_profiles_are_the_states, assert_segments_equal_replay, child_env, job_args, prefixed_topics,
                                       read_states, read_topic, records_replay, replay_ledger,
                                       run_job_embedded, scrape_until_ledger, start_job_embedded, wait_for,
                                       wait_job)
from traffic.publish import producer
from traffic.simulator import Simulator
from udfs.features import UserState, describe

PREFIX = "acct."
LATENESS = [1_000, 8_000, 60_000]


def stream(seed: int = 4) -> tuple[list[bytes], dict[str, int]]:
    sim = Simulator(seed=seed, users=120, items=300, categories=8)
    rng = random.Random(seed)
    out: list[bytes] = []
    injected = {"malformed": 0, "duplicate": 0, "opted_out": 0, "late_arrivals": 0}
    start = int(time.time() * 1000) - 900_000
    dup_queue: list[bytes] = []
    for n, (_, value, ok) in enumerate(sim.records(start, 20.0, 3000, malformed_fraction=0.01)):
        if not ok:
            injected["malformed"] += 1
            out.append(value)
            continue
        ev = json.loads(value)
        if rng.random() < 0.03:
            ev["consent"] = False
            injected["opted_out"] += 1
        value = json.dumps(ev).encode()
        out.append(value)
        out.extend(dup_queue)
        dup_queue = []
        if rng.random() < 0.10:
            dup_queue.append(value)
            injected["duplicate"] += 1
        if n in (500, 1500):  # bytes as producers send them: a UTF-8 BOM (fine), a Latin-1 byte (not JSON)
            out.append(b"\xef\xbb\xbf" + json.dumps({**ev, "event_id": f"bom{n}", "consent": True}).encode())
            out.append(json.dumps({**ev, "event_id": f"latin{n}"}).encode()[:-1] + b', "category": "caf\xe9"}')
            injected["malformed"] += 1
        if n % 97 == 0 and n > 100:  # a new event that arrives `lag` after its event time
            lag = LATENESS[(n // 97) % 3]
            out.append(json.dumps({**ev, "event_id": f"late{n}", "ts": ev["ts"] - lag, "consent": True}).encode())
            injected["late_arrivals"] += 1
    out.extend(dup_queue)
    return out, injected


@pytest.fixture(scope="module")
def published(kafka_broker, sim_history):
    prefixed_topics(kafka_broker, PREFIX, partitions=1)
    records, injected = stream()
    publish(kafka_broker, f"{PREFIX}interactions", records)
    return records, injected


def publish(bootstrap: str, topic: str, records: list[bytes]) -> None:
    p = producer(bootstrap)
    for value in records:
        p.send(topic, key=b"k", value=value)  # one partition, one order
    p.flush()
    p.close()


def expected(records, cfg, tmp_path):
    return records_replay(records, cfg, tmp_path / "stream.jsonl")


def test_every_record_lands_in_exactly_one_place(published, kafka_broker, redis_server, model_dir, tmp_path):
    records, injected = published
    port, r = redis_server
    r.flushdb()
    run_job_embedded(job_args(kafka_broker, port, model_dir, PREFIX, "acct-1"), tmp_path / "job.log")

    hist, replay = expected(records, job_config(port, model_dir), tmp_path)
    ledger = read_ledger(r)
    assert ledger == replay_ledger(hist, replay)
    assert sum(ledger.values()) == len(records)
    # the job said so when it ended
    said = ", ".join(f"{field} {n}" for field, n in ledger.items())
    assert f"ledger: {said}; accounted {len(records)}" in (tmp_path / "job.log").read_text()
    # what was injected, exactly: +8 s and +60 s arrivals are late, +1 s ones are used
    assert ledger["dlq"] == injected["malformed"]
    assert ledger["late"] == sum(1 for n in range(101, 3000) if n % 97 == 0 and LATENESS[(n // 97) % 3] > 5000)
    assert ledger["duplicate"] == injected["duplicate"]
    assert ledger["opted_out"] == injected["opted_out"]  # late arrivals are injected with consent
    dlq = read_topic(kafka_broker, f"{PREFIX}interactions.dlq")
    late = [json.loads(v) for v in read_topic(kafka_broker, f"{PREFIX}interactions.late")]
    assert len(dlq) == ledger["dlq"] and len(late) == ledger["late"]
    # the same records, for the same reasons, as the offline path (line n is offset n - 1): equal
    # counts alone would let a record the job takes and one it refuses cancel out
    dlq_rows = [json.loads(v) for v in dlq]
    assert {(row["src_offset"], row["reason"]) for row in dlq_rows} == {(n - 1, why) for n, why in hist.rejected}
    assert all(row["reason"] == "late" and '"event_id": "late' in row["record"] for row in late)
    # `streamrank dlq`: the same account, by reason, read back from the topics
    for flag, want in (([], Counter(why for _, why in hist.rejected)), (["--late"], {"late": ledger["late"]})):
        out = subprocess.run([sys.executable, "-m", "cli", "dlq", *flag, "--samples", "1",
                              *job_args(kafka_broker, port, model_dir, PREFIX, "unused")],
                             cwd=PROJECT_ROOT, env=child_env(), capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout.strip().splitlines()[-1])
        assert report["by_reason"] == want and report["repeated"] == 0
        assert report["input_records"] == sum(want.values()) and sum(map(len, report["samples"].values())) == len(want)
        offsets = [row["src_offset"] for row in (late if flag else dlq_rows)]
        assert report["src_offsets"] == {f"{PREFIX}interactions:0": [min(offsets), max(offsets)]}


def test_flink_metrics_equal_the_ledger(published, kafka_broker, redis_server, model_dir, tmp_path):
    """The ledger's counts are Flink metrics too (streamrank_used, _duplicate, _opted_out, _late,
    _dlq), and so are the users' requests applied (streamrank_control_erase, _opt_out, _opt_in),
    served by Flink's own Prometheus reporter from the embedded MiniCluster (flink.prometheus_port):
    once every record is in the ledger and every request in the control hash, they equal them,
    count for count."""
    records, _ = published
    port, r = redis_server
    r.flushdb()
    prefix, log, metrics_port, web_port = f"{PREFIX}m.", tmp_path / "job.log", free_port(), free_port()
    prefixed_topics(kafka_broker, prefix, partitions=1)
    # users' requests at the stream's newest time (so none is late): an erase, two opt-outs, one
    # of them followed by an opt-in
    last_ts = max(t for t in map(event_ts, records) if t is not None)
    users = sorted({u for v in records if event_ts(v) is not None and valid_id(u := json.loads(v)["user_id"])})[:3]
    requests = [json.dumps({"event_id": f"request-{n}", "user_id": u, "type": action, "ts": last_ts}).encode()
                for n, (u, action) in enumerate([(users[0], "erase"), (users[1], "opt_out"),
                                                  (users[2], "opt_out"), (users[2], "opt_in")])]
    # an unbounded run (the reporter ends with the job), so a last record far ahead closes the
    # stream's windows; it stays in its own open window, outside the ledger
    flush = json.dumps({"event_id": "flush", "user_id": "flush", "item_id": "i0", "type": "view",
                        "ts": last_ts + 600_000}).encode()
    publish(kafka_broker, f"{prefix}interactions", [*records, *requests, flush])
    job = start_job_embedded(job_args(kafka_broker, port, model_dir, prefix, "acct-metrics")
                             + ["--set", f'flink.prometheus_port="{metrics_port}"', "--set", f"flink.web_port={web_port}"],
                             log)
    try:
        wait_for(lambda: sum(read_ledger(r).values()) == len(records), 180, "every record in the ledger", job, log)
        wait_for(lambda: sum(keys.read_control(r).values()) == len(requests), 60, "every request applied", job, log)
        want, want_control = read_ledger(r), keys.read_control(r)
        got, text = scrape_until_ledger(f"http://127.0.0.1:{metrics_port}/metrics", want, want_control)
        got_control = control_counters(text)
        # `streamrank ledger`: the same counts, the topic's record count, the job's metrics
        sets = job_args(kafka_broker, port, model_dir, prefix, "unused") + [
            "--set", f'flink.prometheus_port="{metrics_port}"']
        out = subprocess.run([sys.executable, "-m", "cli", "ledger", *sets], cwd=PROJECT_ROOT,
                             env=child_env(), capture_output=True, text=True, timeout=60)
        report = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else out.stderr
        # the MiniCluster's REST API (web UI) on flink.web_port, and the job said where it is
        jobs = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{web_port}/jobs/overview", timeout=5).read())
        wait_for(lambda: f"Flink web UI and REST API at http://127.0.0.1:{web_port}" in log.read_text(), 30,
                 "the job's log line with the web UI's address", job, log)
    finally:
        job.terminate()
        job.wait(30)
    assert got == want and want["dlq"] > 0 and want["late"] > 0 and want["duplicate"] > 0
    assert got_control == want_control == {"erase": 1, "opt_out": 2, "opt_in": 1}
    # the DLQ's records by reason, as the offline path rejects them
    hist, _ = expected(records, job_config(port, model_dir), tmp_path)
    assert dlq_reason_counters(text) == Counter(why for _, why in hist.rejected) and len({why for _, why in hist.rejected}) > 1
    assert [(j["name"], j["state"]) for j in jobs["jobs"]] == [("streamrank-recommend", "RUNNING")]
    assert report == {**want, "control": want_control, "accounted": len(records) + len(requests),
                      "input_records": len(records) + len(requests) + 1,  # + the flush
                      "flink_metrics": {"url": f"http://127.0.0.1:{metrics_port}/metrics", **want,
                                        "control": want_control}}
    # every Flink metric the Grafana dashboard (deploy/monitoring) reads of the recommend job is one
    # this job serves (the engagement job's: tests/integration/test_engagement_job.py)
    served = set(re.findall(r"^(flink_\w+)\{", text, re.M))
    wanted = {n for n in dashboard_metrics() if n.startswith("flink_") and ENGAGEMENT_METRIC not in n}
    assert {n for n in wanted if not any(s.startswith(n) for s in served)} == set()


def event_ts(record: bytes) -> int | None:
    try:
        ts = json.loads(record)["ts"]
    except (ValueError, KeyError, TypeError):
        return None
    return ts if type(ts) is int else None


@pytest.mark.parametrize(("lateness_s", "delivery"), [(90.0, "at-least-once"), (5.0, "exactly-once")],
                         ids=["nothing_late", "late_records"])
def test_recovery_from_checkpoint_equals_uninterrupted_run(published, kafka_broker, redis_server, model_dir, tmp_path,
                                                           lateness_s, delivery):
    """90 s: no record of this stream is late, so this is state recovery alone. 5 s: the +8 s and
    +60 s arrivals are late. Watermarks are not part of a checkpoint, so the restarted job lets
    some of them through to windows its state has already passed; rank_users counts those as late
    (udfs.features.apply_window), and the ledger and features still equal the uninterrupted run's.
    The DLQ and late topics: at-least-once, a rejected record replayed after the restart can be
    there twice; exactly-once (kafka.rejected_delivery), read committed, each is there once."""
    records, _ = published
    port, r = redis_server
    r.flushdb()
    lateness = ["--set", f"features.out_of_orderness_s={lateness_s}"]
    run_job_embedded(job_args(kafka_broker, port, model_dir, PREFIX, f"acct-2-{lateness_s}") + lateness,
                     tmp_path / "clean.log")
    clean = {k: r.get(k) for k in r.scan_iter(keys.feat_key("*"))}
    clean_recs = {k: json.loads(compact.text(r.get(k))) for k in r.scan_iter(keys.rec_key("*"))}
    clean_ledger = read_ledger(r)
    assert (clean_ledger.get("late", 0) > 0) == (lateness_s < 60)

    r.flushdb()
    # the same records on a topic of its own, fed in two parts; the job stops after the last one.
    # Part one's windows reach Python and a checkpoint completes; only then is the failure armed and
    # part two sent (a backlog sent at once is read before the first checkpoint barrier, and a
    # failure then restores nothing: seen once in CI)
    prefix, log = f"{PREFIX}r{int(lateness_s)}.", tmp_path / "faulty.log"
    prefixed_topics(kafka_broker, prefix, partitions=1)
    part = len(records) * 2 // 3
    publish(kafka_broker, f"{prefix}interactions", records[:part])
    marker, armed, checkpoints = tmp_path / "fault-fired", tmp_path / "fault-armed", tmp_path / "checkpoints"
    # spare slots: the restarted attempt must not wait for the failed one's Python worker to let go
    extra = '{"restart-strategy.type" = "fixed-delay", "restart-strategy.fixed-delay.attempts" = "3", ' \
            '"restart-strategy.fixed-delay.delay" = "1 s", "taskmanager.numberOfTaskSlots" = "4"}'
    args = job_args(kafka_broker, port, model_dir, prefix, f"acct-3-{lateness_s}") + lateness + [
        "--set", f"kafka.stop_offsets={{0 = {len(records)}}}",
        "--set", "faults.fail_after_windows=1", "--set", f'faults.marker_file="{marker}"',
        "--set", f'faults.armed_file="{armed}"', "--set", f'flink.checkpoint_dir="{checkpoints}"',
        "--set", "flink.checkpoint_interval_s=0.5", "--set", f"flink.extra={extra}",
        "--set", f'kafka.rejected_delivery="{delivery}"']
    job = start_job_embedded(args, log)
    try:
        wait_for(lambda: int(r.hget(keys.LEDGER, "used") or 0) > 0, 120, "part one's windows in Redis", job, log)
        used_at = time.time()
        wait_for(lambda: checkpoint_completed_after(checkpoints, used_at), 120, "a checkpoint after them", job, log)
        armed.touch()
        publish(kafka_broker, f"{prefix}interactions", records[part:])
        wait_job(job, log)
    finally:
        job.kill()
    assert marker.exists(), "the injected failure did not fire"
    flink_log = "".join(p.read_text() for p in tmp_path.glob("flink-*.log"))
    assert "InjectedFailure" in flink_log  # the Python worker's error, in Flink's own log
    assert re.search(r"Restoring job \w+ from Checkpoint \d+", flink_log)
    assert "Restoring state for 1 split(s) to reader" in flink_log  # Kafka offsets from the checkpoint

    recovered = {k: r.get(k) for k in r.scan_iter(keys.feat_key("*"))}
    ledger = read_ledger(r)
    # used/duplicate/opted_out change with the states (one MULTI, replayed windows skipped);
    # dlq by a per-partition high-water offset (replayed rejected records are not counted again)
    assert ledger == clean_ledger and ledger["dlq"] > 0
    assert recovered.keys() == clean.keys() and len(clean) > 50
    cfg = job_config(port, model_dir, features__out_of_orderness_s=lateness_s)
    t = max(UserState.decode(v).window_end for v in clean.values())
    for k, raw in clean.items():
        want, got = UserState.decode(raw), UserState.decode(recovered[k])
        assert got.window_end == want.window_end and got.seen == want.seen
        assert describe(got, t, cfg.features) == describe(want, t, cfg.features)
    recs = {k: json.loads(compact.text(r.get(k))) for k in r.scan_iter(keys.rec_key("*"))}
    assert recs.keys() == clean_recs.keys()
    for k, rec in recs.items():
        assert rec["feature_ts"] == clean_recs[k]["feature_ts"] and rec["items"], k

    # the DLQ: every rejected record for its reason, as the offline path rejects them (line n is
    # offset n - 1); exactly-once, read committed: each once, though part two was read twice
    hist, _ = expected(records, cfg, tmp_path)
    exactly_once = delivery == "exactly-once"
    dlq = [json.loads(v) for v in read_topic(kafka_broker, f"{prefix}interactions.dlq", committed=exactly_once)]
    got_dlq = sorted((row["src_offset"], row["reason"]) for row in dlq)
    want_dlq = sorted((n - 1, why) for n, why in hist.rejected)
    assert (got_dlq if exactly_once else sorted(set(got_dlq))) == want_dlq
    # `streamrank dlq` reads committed and counts the repeats
    report = summarize(read_rejected(kafka_broker, f"{prefix}interactions.dlq", progress=False))
    assert report["input_records"] == len(want_dlq) and report["repeated"] == len(got_dlq) - len(set(got_dlq))
    late = [json.loads(v)["src_offset"] for v in read_topic(kafka_broker, f"{prefix}interactions.late",
                                                            committed=exactly_once)]
    # (after the restart, rank_users counts some late records that reach it, not the late topic)
    assert len(set(late)) <= ledger.get("late", 0) and (len(late) == len(set(late)) or not exactly_once)


def checkpoint_completed_after(checkpoints, t: float) -> bool:
    for meta in checkpoints.glob("*/chk-*/_metadata"):
        try:
            if meta.stat().st_mtime > t:
                return True
        except FileNotFoundError:  # Flink removed a subsumed checkpoint meanwhile
            pass
    return False


def start_half_fed(bootstrap: str, r, redis_port: int, model_dir, prefix: str, records: list[bytes], log,
                   more_sets: list[str] = (), layout: keys.Layout = keys.ONE_REDIS):
    """The fault tests' start: the stream's first half on a topic of its own, and the job (to stop
    at the stream's end; checkpoints every 0.5 s; spare slots, as in the recovery test) running
    until that half's windows are in Redis and a checkpoint has completed after them."""
    prefixed_topics(bootstrap, prefix, partitions=1)
    publish(bootstrap, f"{prefix}interactions", records[:len(records) // 2])
    checkpoints = log.parent / "checkpoints"
    args = job_args(bootstrap, redis_port, model_dir, prefix, f"{prefix}fault") + [
        "--set", f"kafka.stop_offsets={{0 = {len(records)}}}", "--set", f'flink.checkpoint_dir="{checkpoints}"',
        "--set", "flink.checkpoint_interval_s=0.5", "--set", 'flink.extra={"taskmanager.numberOfTaskSlots" = "4"}',
        *more_sets]
    job = start_job_embedded(args, log)
    try:
        wait_for(lambda: read_ledger(r, layout)["used"] > 0, 120, "part one's windows in Redis", job, log)
        used_at = time.time()
        wait_for(lambda: checkpoint_completed_after(checkpoints, used_at), 120, "a checkpoint after them", job, log)
    except BaseException:
        job.kill()
        raise
    return job


def test_redis_killed_mid_stream_loses_nothing(published, kafka_broker, model_dir, tmp_path):
    """Redis, run as `streamrank stack up` runs it (an append-only file), is killed with SIGKILL
    mid-stream and restarted on its port a few seconds later. Meanwhile the job fails (its Redis
    writes raise) and Flink's restart strategy brings it back from its last checkpoint; the ledger
    and every user's features equal the offline replay of the stream. With a Redis that keeps its
    data in memory only, the restarted Redis is empty and the job would go on from its offsets."""
    records, _ = published
    port, home = free_port(), tmp_path / "redis-home"
    svc = start_redis(home, port)
    r = redis.Redis(port=port)
    prefix, log = f"{PREFIX}rk.", tmp_path / "job.log"
    job = start_half_fed(kafka_broker, r, port, model_dir, prefix, records, log)
    try:
        os.killpg(svc.pid, signal.SIGKILL)
        wait_for(lambda: not port_open(port), 10, "Redis gone", job, log)
        publish(kafka_broker, f"{prefix}interactions", records[len(records) // 2:])  # read while Redis is down
        time.sleep(4)
        svc = start_redis(home, port)
        wait_job(job, log)
        ledger, states = read_ledger(r), read_states(r)
    finally:
        job.kill()
        stop_pid(svc.pid)
    flink_log = "".join(p.read_text() for p in tmp_path.glob("flink-*.log"))
    assert "ConnectionError" in flink_log and re.search(r"Restoring job \w+ from Checkpoint \d+", flink_log)
    assert "aof_enabled:0" not in log.read_text()  # the job's start-up check found the file on

    cfg = job_config(port, model_dir)
    hist, replay = expected(records, cfg, tmp_path)
    assert ledger == replay_ledger(hist, replay)
    assert_features_equal_replay(states, replay, cfg)


def test_kafka_broker_killed_mid_stream_loses_nothing(published, redis_server, model_dir, tmp_path):
    """The broker (its own here) is killed with SIGKILL mid-stream and restarted on its ports a few
    seconds later, with the rest of the stream sent after it. The job's Kafka clients lose it and
    reconnect (the job rides through; were it to fail, it would restore from its checkpoint), and
    the ledger and every user's features equal the offline replay; every rejected record is in the
    DLQ topic (at least once, so compared as a set)."""
    records, _ = published
    port, r = redis_server
    r.flushdb()
    broker_port, controller_port, home = free_port(), free_port(), tmp_path / "broker"
    broker = start_kafka(home, broker_port, controller_port, partitions=1)
    bootstrap = f"127.0.0.1:{broker_port}"
    prefix, log = f"{PREFIX}kk.", tmp_path / "job.log"
    try:
        job = start_half_fed(bootstrap, r, port, model_dir, prefix, records, log)
        try:
            os.killpg(broker.pid, signal.SIGKILL)
            wait_for(lambda: not port_open(broker_port), 10, "the broker gone", job, log)
            time.sleep(3)
            broker = start_kafka(home, broker_port, controller_port, partitions=1)
            publish(bootstrap, f"{prefix}interactions", records[len(records) // 2:])
            wait_job(job, log, timeout_s=400)
        finally:
            job.kill()
        dlq = [json.loads(v) for v in read_topic(bootstrap, f"{prefix}interactions.dlq")]
    finally:
        stop_pid(broker.pid)
    flink_log = "".join(p.read_text() for p in tmp_path.glob("flink-*.log"))
    assert re.search(r"\[Consumer clientId=acct\.kk\.fault-\d+, groupId=acct\.kk\.fault\] Node \d+ disconnected",
                     flink_log), "the job's source did not see the broker go"

    cfg = job_config(port, model_dir)
    hist, replay = expected(records, cfg, tmp_path)
    assert read_ledger(r) == replay_ledger(hist, replay)
    assert {(row["src_offset"], row["reason"]) for row in dlq} == {(n - 1, why) for n, why in hist.rejected}
    assert_features_equal_replay(read_states(r), replay, cfg)
    assert_profiles_are_the_states(r, cfg)
    assert_segments_equal_replay(r, replay, cfg)


def test_redis_cluster_master_killed_mid_stream_loses_nothing(published, kafka_broker, model_dir, tmp_path):
    """The job on a Redis Cluster of 3 masters and 3 replicas (`[redis.cluster]`, 8 shards). Mid-stream
    the master holding the most shards is killed with SIGKILL and stays dead: the cluster fails its
    slots over to the replica, the job's writes to it fail meanwhile and Flink restarts the job from
    its last checkpoint. Every write before that checkpoint was acknowledged by the replica (the job
    WAITs for it after each shard's transaction), so the replay after the restart starts from a
    replica that holds everything the checkpoint counts. At the end the ledger (summed over the
    shards) and every user's features equal the offline replay, and lookupd, as a cluster client,
    answers every user's list from the promoted replica and the other masters."""
    records, _ = published
    cluster = start_redis_cluster(tmp_path / "redis-cluster")
    rc = cluster.client()
    layout = keys.Layout(shards=8)
    prefix, log = f"{PREFIX}rc.", tmp_path / "job.log"
    nodes = ", ".join(f'"127.0.0.1:{n.port}"' for n in cluster.nodes)
    sets = ["--set", f"redis.cluster={{shards = 8, nodes = [{nodes}]}}", "--set", 'redis.host="127.0.0.1"']
    job = start_half_fed(kafka_broker, rc, cluster.port, model_dir, prefix, records, log, sets, layout)
    try:
        # the master serving most shards; its replica takes over
        slots = Counter(rc.get_node_from_key(layout.ledger(s)).port for s in layout.all_shards())
        victim = next(n for n in cluster.masters() if n.port == slots.most_common(1)[0][0])
        os.killpg(victim.pid, signal.SIGKILL)
        publish(kafka_broker, f"{prefix}interactions", records[len(records) // 2:])
        wait_for(lambda: cluster.healthy() and victim.port not in [m.port for m in cluster.masters()], 60,
                 "the replica promoted", job, log)
        wait_job(job, log, timeout_s=400)
        rc = cluster.client()
        ledger, states = read_ledger(rc, layout), read_states(rc, layout)
        answers = lookupd_answers(cluster, sorted(states)[:20], tmp_path)
    finally:
        job.kill()
        cluster.stop()
    flink_log = "".join(p.read_text() for p in tmp_path.glob("flink-*.log"))
    assert re.search(r"Restoring job \w+ from Checkpoint \d+", flink_log), "the job did not restart"

    cfg = job_config(cluster.port, model_dir)
    hist, replay = expected(records, cfg, tmp_path)
    assert ledger == replay_ledger(hist, replay)
    assert_features_equal_replay(states, replay, cfg)
    assert answers and all(a.items and not a.fallback for a in answers.values()), answers


def lookupd_answers(cluster, users: list[str], tmp_path) -> dict[str, dict]:
    """Each user's answer from lookupd (`streamrank serve`, engine go) started on the cluster."""
    from serving.client import RecommendationsClient
    nodes = ", ".join(f'"127.0.0.1:{n.port}"' for n in cluster.nodes if n.pid and port_open(n.port))
    port = free_port()
    config = tmp_path / "serving.toml"
    config.write_text(f'engine = "go"\nport = {port}\n[redis]\nhost = "127.0.0.1"\nport = {cluster.masters()[0].port}\n'
                      f"[redis.cluster]\nshards = 8\nnodes = [{nodes}]\n")
    log = open(tmp_path / "serve.log", "wb")
    serve = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--config", str(config)], stdout=log,
                             stderr=subprocess.STDOUT, env=child_env())
    try:
        deadline = time.monotonic() + 60
        while not port_open(port):
            assert serve.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.2)
        with RecommendationsClient(f"127.0.0.1:{port}", deadline_s=5) as client:
            one = {u: client.recommendations(u, k=10) for u in users}
            batch = client.batch([client.request(u, 10) for u in users])  # users of many slots in one call
            assert [list(r.items) for r in batch] == [list(one[u].items) for u in users]
            return one
    finally:
        serve.terminate()
        serve.wait(20)
