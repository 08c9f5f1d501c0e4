"""The recommend job's graph on the embedded MiniCluster, fed from a collection source.

Redis is real (the job's sink); Kafka is replaced by a collection source and filesystem sinks
for the DLQ and late records, which is what this tier is for. Asserts: every user with a used
event gets a list, rejected records land exactly where the Python validator says, the ledger
accounts for every record, and the features the job wrote equal the offline replay's at two
cut-offs (one feature definition, no skew). The second run re-reads the first half, so it also
checks that replayed windows change nothing."""

from __future__ import annotations

import json
import random
import re
import time

from pyflink.common import Row, Types
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.table import DataTypes, Schema
import pytest

from contract import keys
from contract.config import load_config
from contract.schema import InvalidEvent, validate
from jobs.recommend import PYTHON_FUNCTIONS, build, environment, event_time_sql, watermark_sql
from tests.conftest import job_config
from tests.helpers import records_replay
from traffic.simulator import Simulator
from udfs.features import UserState, describe, memory_at


def run_job(cfg, records, items, out_dir):
    env = StreamExecutionEnvironment.get_execution_environment()
    t_env = environment(cfg, env)
    now = int(time.time() * 1000)
    # one "partition" per record: this collection source is rebalanced across subtasks, so no
    # partition's records would stay in offset order (Kafka's do; the rejected-record counter relies on it)
    rows = [Row(value, "interactions", i, i, now) for i, value in enumerate(records)]
    ds = env.from_collection(rows, type_info=Types.ROW_NAMED(
        ["payload", "src_topic", "src_partition", "src_offset", "kafka_ts_ms"],
        [Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.STRING(), Types.INT(), Types.LONG(), Types.LONG()]))
    src = t_env.from_data_stream(ds, Schema.new_builder()
        .column("payload", DataTypes.BYTES()).column("src_topic", DataTypes.STRING())
        .column("src_partition", DataTypes.INT()).column("src_offset", DataTypes.BIGINT())
        .column("kafka_ts_ms", DataTypes.BIGINT())
        .column_by_expression("event_time", event_time_sql("kafka_ts_ms"))
        .column_by_expression("proc_time", "PROCTIME()")
        .watermark("event_time", watermark_sql(cfg)).build())
    t_env.create_temporary_view("interactions_src", src)
    # the first item marked unavailable, the second with no `available` field (available)
    t_env.create_temporary_view("items_src", t_env.from_elements(
        [(i.item_id, i.category, i.price, False if n == 0 else None if n == 1 else True) for n, i in enumerate(items)],
        DataTypes.ROW([DataTypes.FIELD("item_id", DataTypes.STRING()),
                       DataTypes.FIELD("category", DataTypes.STRING()),
                       DataTypes.FIELD("price", DataTypes.DOUBLE()),
                       DataTypes.FIELD("available", DataTypes.BOOLEAN())])))
    for table in ("dlq_sink", "late_sink", "quarantine_sink"):
        t_env.execute_sql(f"""CREATE TABLE {table} (record STRING, reason STRING, src_topic STRING,
            src_partition INT, src_offset BIGINT) WITH ('connector' = 'filesystem',
            'path' = '{out_dir / table}', 'format' = 'json')""")
    build(t_env, cfg, sources=False, sinks=False).execute().wait()


def read_rows(path):
    return [json.loads(line) for f in path.rglob("*") if f.is_file() and not f.name.startswith(".")
            for line in f.read_text().splitlines() if line]


def traffic(seed: int):
    """Two parts split at a micro-batch boundary, with 2% malformed, 10% duplicated and 3% opted-out
    records; duplicates follow their original within a few records."""
    sim = Simulator(seed=seed, users=80, items=300, categories=8)
    rng = random.Random(seed)
    start = int(time.time() * 1000) - 600_000
    start -= start % 2000
    parts: list[list[bytes]] = [[], []]
    boundary = start + 50_000
    pending: list[bytes] = []
    for _, value, ok in sim.records(start, 20.0, 2000, malformed_fraction=0.02):
        if ok:
            ev = json.loads(value)
            if rng.random() < 0.03:
                ev["consent"] = False
            value = json.dumps(ev).encode()
            part = parts[0] if ev["ts"] < boundary else parts[1]
            if part is parts[1] and not parts[1]:  # first record of part two: part one's dups stay there
                parts[0].extend(pending)
                pending = []
        else:
            part = parts[0] if not parts[1] else parts[1]
        part.append(value)
        if ok and rng.random() < 0.10:
            pending.append(value)
        if len(pending) > 3 or (pending and rng.random() < 0.3):
            part.extend(pending)
            pending = []
    parts[1].extend(pending)
    return sim, parts


def offline(cfg, records, tmp_path, name):
    return records_replay(records, cfg, tmp_path / name)


def assert_same_features(r, replay, cfg, cutoff):
    used_users = {u for u, s in replay.states.items() if s.feature_ts > 0}
    assert {k.decode().removeprefix(keys.rec_key("")) for k in r.scan_iter(keys.rec_key("*"))} == used_users
    for user in used_users:
        online = UserState.decode(r.get(keys.feat_key(user)))
        want = describe(replay.states[user], cutoff, cfg.features)
        got = describe(online, cutoff, cfg.features)
        assert got.keys() == want.keys()
        for name, value in want.items():
            assert got[name] == (value if isinstance(value, list) else pytest.approx(value, rel=1e-9, abs=1e-9)), (user, name)
        got_memory = memory_at(online, cutoff, cfg.features)
        want_memory = memory_at(replay.states[user], cutoff, cfg.features)
        assert got_memory.keys() == want_memory.keys() and want_memory, user  # the user x item memory
        for item, values in want_memory.items():
            assert got_memory[item] == pytest.approx(values, rel=1e-9, abs=1e-12), (user, item)


@pytest.mark.parametrize("parallelism", [1, 2])
def test_job_graph_accounts_for_every_record_and_matches_offline(parallelism, redis_db, model_dir, tmp_path):
    port, r = redis_db
    sim, (first, second) = traffic(parallelism)
    cfg = job_config(port, model_dir, flink__parallelism=parallelism)

    # cut-off 1: the first part only
    run_job(cfg, first, sim.items, tmp_path / "run1")
    hist, replay = offline(cfg, first, tmp_path, "first.jsonl")
    expected_dlq = {}
    for offset, value in enumerate(first):
        try:
            validate(value)
        except InvalidEvent as e:
            expected_dlq[offset] = e.reason
    dlq = read_rows(tmp_path / "run1" / "dlq_sink")
    assert {d["src_offset"]: d["reason"] for d in dlq} == expected_dlq and len(dlq) == len(expected_dlq) > 0
    assert read_rows(tmp_path / "run1" / "late_sink") == [] and hist.late == []
    ledger = {k.decode(): int(v) for k, v in r.hgetall(keys.LEDGER).items()}
    assert ledger == {"used": replay.ledger.used, "duplicate": replay.ledger.duplicate,
                      "opted_out": replay.ledger.opted_out, "dlq": len(expected_dlq)}
    assert sum(ledger.values()) == len(first)
    assert replay.ledger.duplicate > 0 and replay.ledger.opted_out > 0
    cutoff1 = max(s.window_end for s in replay.states.values())
    assert_same_features(r, replay, cfg, cutoff1)
    some = keys.RecList.decode(r.get(next(r.scan_iter(keys.rec_key("*")))))
    assert 0 < len(some.items) <= cfg.scoring.top_k
    assert some.model_version == json.loads((model_dir / "card.json").read_text())["version"]
    assert r.smembers(keys.UNAVAILABLE_ITEMS) == {sim.items[0].item_id.encode()}  # the catalog's flag

    # cut-off 2: everything, the first part read again (replayed windows must change nothing)
    run_job(cfg, first + second, sim.items, tmp_path / "run2")
    _, replay_all = offline(cfg, first + second, tmp_path, "all.jsonl")
    cutoff2 = max(s.window_end for s in replay_all.states.values())
    assert cutoff2 > cutoff1
    assert_same_features(r, replay_all, cfg, cutoff2)


def test_job_plan_parses_each_record_once_and_does_not_carry_the_parsed_row():
    """The plan shape the source thread's cost rests on (EXPLAIN; nothing runs): one
    parse_interaction call for all the branches, and no operator forwards the parsed ROW `j`
    itself, only its fields (forwarding it copied the nested row for every record)."""
    cfg = load_config(None, {"kafka.bounded": True})
    optimized = build(environment(cfg), cfg).explain().split("== Optimized Execution Plan ==")[1]
    assert optimized.count("parse_interaction(") == 1
    assert "j.j_user_id" in optimized and not re.findall(r"[\[ ]j, ", optimized)


def test_jvm_stages_plan_has_the_same_shape_without_python():
    """build(python=False), which bench.features --jvm-stages times: the job's plan with every
    Python function replaced by the JVM stand-in (EXPLAIN; nothing runs)."""
    cfg = load_config(None, {"kafka.bounded": True})
    with_python = build(environment(cfg), cfg).explain().split("== Optimized Execution Plan ==")[1]
    jvm_only = build(environment(cfg), cfg, python=False).explain().split("== Optimized Execution Plan ==")[1]
    assert "PythonCalc" in with_python and "PythonCalc" not in jvm_only
    for name in PYTHON_FUNCTIONS:
        assert f"{name}(" in jvm_only  # the stand-in, under the same name, in the same places
    assert jvm_only.count("LISTAGG") == with_python.count("LISTAGG") > 0


def test_the_job_writes_to_a_redis_that_wants_tls_and_a_login(secure_redis, model_dir, tmp_path):
    """Its Python workers log in as the job's ACL user over TLS with a client certificate, the
    password from the environment they inherit (as TaskManagers do); the config names the variable."""
    secure_redis.admin.flushdb()
    sim, (first, _) = traffic(3)
    cfg = job_config(secure_redis.port, model_dir,
                     redis=secure_redis.section("streamrank-job", "SR_TEST_JOB_PASSWORD"))
    assert "secret" not in cfg.model_dump_json()
    run_job(cfg, first, sim.items, tmp_path / "run")
    r = secure_redis.admin
    ledger = {k.decode(): int(v) for k, v in r.hgetall(keys.LEDGER).items()}
    assert sum(ledger.values()) == len(first) and ledger["used"] > 0
    users = list(r.scan_iter(keys.rec_key("*")))
    assert users and keys.RecList.decode(r.get(users[0])).items


def test_a_bot_and_odd_prices_are_quarantined_as_the_offline_path_quarantines_them(redis_db, model_dir, tmp_path):
    """[quarantine]: a script sending hundreds of views a minute among real users (rate), and two
    purchases of an item at 1,000 times and 1/200 of its usual value (price). Those records go to
    the quarantine topic and the ledger's `quarantined`, not into features or item statistics;
    everything equals the offline replay's."""
    port, r = redis_db
    sim, (first, _) = traffic(5)
    records: list[bytes] = []
    bot = n = 0
    for value in first:
        records.append(value)
        try:
            ev = json.loads(value)
        except ValueError:
            continue
        if not (isinstance(ev, dict) and type(ev.get("ts")) is int):
            continue
        n += 1
        same_time = {**ev, "type": "purchase", "item_id": "pricey", "category": "c1", "consent": True}
        if bot < 400:  # the bot keeps the stream's pace
            records.append(json.dumps({**ev, "event_id": f"bot-{bot}", "user_id": "bot1", "type": "view",
                                       "consent": True}).encode())
            bot += 1
        if n % 60 == 0:  # an item's usual purchases, by several buyers
            records.append(json.dumps({**same_time, "event_id": f"buy-{n}", "user_id": f"buyer{n}", "value": 10.0}).encode())
        if n in (700, 701):
            records.append(json.dumps({**same_time, "event_id": f"odd-{n}", "user_id": "buyer-odd",
                                       "value": 10_000.0 if n == 700 else 0.05}).encode())
    cfg = job_config(port, model_dir, quarantine__max_events_per_minute=100, quarantine__price_factor=50.0)
    run_job(cfg, records, sim.items, tmp_path / "run")
    hist, replay = offline(cfg, records, tmp_path, "h.jsonl")
    quarantined = read_rows(tmp_path / "run" / "quarantine_sink")
    assert replay.ledger.quarantined > 250 and len(quarantined) == replay.ledger.quarantined
    by_rule = {(json.loads(q["record"])["user_id"], q["reason"]) for q in quarantined}
    assert by_rule == {("bot1", "rate"), ("buyer-odd", "price")}
    assert sum(q["reason"] == "price" for q in quarantined) == 2
    ledger = {k.decode(): int(v) for k, v in r.hgetall(keys.LEDGER).items()}
    assert ledger["quarantined"] == replay.ledger.quarantined and sum(ledger.values()) == len(records)
    assert ledger == {k: v for k, v in {"used": replay.ledger.used, "duplicate": replay.ledger.duplicate,
                                        "opted_out": replay.ledger.opted_out, "quarantined": replay.ledger.quarantined,
                                        "dlq": len(hist.rejected)}.items() if v}
    cutoff = max(s.window_end for s in replay.states.values())
    assert_same_features(r, replay, cfg, cutoff)
