"""The recommend job's graph on the embedded MiniCluster, fed from a collection source.

Redis is real (the job's sink); Kafka is replaced by a collection source and a filesystem DLQ
sink, which is what this tier is for. Asserts: every valid user gets a list, the DLQ holds
exactly the malformed records with the reasons the Python validator gives, and the features
the job wrote equal the offline replay's (one feature definition, no skew)."""

from __future__ import annotations

import json
import time

import pytest

from contract import keys
from contract.schema import InvalidEvent, validate
from models.offline import OfflineReplay, read_history
from tests.conftest import job_config
from traffic.simulator import Simulator
from udfs.features import UserState


def run_job(cfg, records, items, dlq_dir):
    from pyflink.common import Row, Types
    from pyflink.table import DataTypes, Schema

    from jobs.recommend import build, environment, event_time_sql, watermark_sql

    from pyflink.datastream import StreamExecutionEnvironment

    env = StreamExecutionEnvironment.get_execution_environment()
    t_env = environment(cfg, env)
    now = int(time.time() * 1000)
    rows = [Row(value.decode(), "interactions", 0, i, now) for i, value in enumerate(records)]
    ds = env.from_collection(rows, type_info=Types.ROW_NAMED(
        ["payload", "src_topic", "src_partition", "src_offset", "kafka_ts_ms"],
        [Types.STRING(), Types.STRING(), Types.INT(), Types.LONG(), Types.LONG()]))
    src = t_env.from_data_stream(ds, Schema.new_builder()
        .column("payload", DataTypes.STRING()).column("src_topic", DataTypes.STRING())
        .column("src_partition", DataTypes.INT()).column("src_offset", DataTypes.BIGINT())
        .column("kafka_ts_ms", DataTypes.BIGINT())
        .column_by_expression("event_time", event_time_sql("kafka_ts_ms"))
        .watermark("event_time", watermark_sql(cfg)).build())
    t_env.create_temporary_view("interactions_src", src)
    t_env.create_temporary_view("items_src", t_env.from_elements(
        [(i.item_id, i.category, i.price) for i in items],
        DataTypes.ROW([DataTypes.FIELD("item_id", DataTypes.STRING()),
                       DataTypes.FIELD("category", DataTypes.STRING()),
                       DataTypes.FIELD("price", DataTypes.DOUBLE())])))
    t_env.execute_sql(f"""CREATE TABLE dlq_sink (record STRING, reason STRING, src_topic STRING,
        src_partition INT, src_offset BIGINT) WITH ('connector' = 'filesystem',
        'path' = '{dlq_dir}', 'format' = 'json')""")
    build(t_env, cfg, sources=False, dlq=False).execute().wait()


@pytest.mark.parametrize("parallelism", [1, 2])
def test_job_graph_lists_dlq_and_offline_parity(parallelism, redis_db, model_dir, tmp_path):
    port, r = redis_db
    sim = Simulator(seed=parallelism, users=80, items=300, categories=8)
    start = int(time.time() * 1000) - 600_000
    records = [v for _, v, _ in sim.records(start, 20.0, 2000, malformed_fraction=0.02)]
    cfg = job_config(port, model_dir, flink__parallelism=parallelism)

    run_job(cfg, records, sim.items, tmp_path / "dlq")

    expected_dlq = {}
    valid_users = set()
    for offset, value in enumerate(records):
        try:
            valid_users.add(validate(value).user_id)
        except InvalidEvent as e:
            expected_dlq[offset] = e.reason
    dlq = [json.loads(line) for f in (tmp_path / "dlq").rglob("*") if f.is_file() and not f.name.startswith(".")
           for line in f.read_text().splitlines() if line]
    assert {d["src_offset"]: d["reason"] for d in dlq} == expected_dlq
    assert len(dlq) == len(expected_dlq) > 0

    users_with_lists = {k.decode()[4:] for k in r.scan_iter("rec:*")}
    assert users_with_lists == valid_users
    some = keys.RecList.decode(r.get(keys.rec_key(sorted(valid_users)[0])))
    assert 0 < len(some.items) <= cfg.scoring.top_k
    assert some.model_version == json.loads((model_dir / "card.json").read_text())["version"]

    # the same records through the offline path give the same features
    hist = tmp_path / "history.jsonl"
    hist.write_bytes(b"\n".join(records) + b"\n")
    events, rejected = read_history(hist)
    assert len(rejected) == len(expected_dlq)
    replay = OfflineReplay(cfg)
    for _ in replay.run(events):
        pass
    for user in valid_users:
        online = UserState.decode(r.get(keys.feat_key(user)))
        offline = replay.states[user]
        assert online.window_end == offline.window_end and online.feature_ts == offline.feature_ts
        for name in ("views_short", "clicks_short", "carts_short", "purchases_short", "events_long",
                     "purchases_monetary", "spend_monetary"):
            assert getattr(online, name) == pytest.approx(getattr(offline, name), rel=1e-9, abs=1e-9), name
        assert online.affinity.keys() == offline.affinity.keys()
        for c, w in offline.affinity.items():
            assert online.affinity[c] == pytest.approx(w, rel=1e-9)
