"""The recommend job: Kafka interactions -> validated events -> per-user micro-batch windows
(JVM) -> batched ONNX ranking (Python) -> Redis; invalid records -> DLQ topic.

    python -m jobs.recommend --config deploy/config/local.toml [--bounded]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path

import redis
from pyflink import java_gateway
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.table import EnvironmentSettings, StreamTableEnvironment

from contract.config import ConfigError, JobConfig, KafkaConfig, PRESETS, load_config, parse_overrides
from contract.keys import accounted, read_control, read_ledger
from contract.paths import CACHE, PROJECT_ROOT
from contract.schema import (CONTROL_SQL, EVENT_LINE_SQL, EVENT_TAIL_SQL, JVM_FUNCTIONS, KAFKA_TS_MS_SQL, MAX_FUTURE_MS,
                             MIN_TS_MS, QUARANTINED, parse_once_sql, validation_sql)
from jobs.runtime import (PROMETHEUS_REPORTER_FACTORY, find_rest_endpoint, flink_home, job_jars,
                          link_flink_lib, prometheus_reporter_jars, python_executable, restore_options)
from jobs.functions import register
from jobs.store import check_state_layout, redis_client, warn_if_redis_forgets

log = logging.getLogger("streamrank.jobs.recommend")


def environment(cfg: JobConfig, env=None, name: str = "streamrank-recommend"):
    """The one place the jobs' Flink environment and options are made (env: an existing
    StreamExecutionEnvironment, for tests that feed it a collection; name: the pipeline's)."""
    # Python functions in worker processes of their own, also on the embedded MiniCluster. PyFlink's
    # local default ("loopback") runs every Python worker inside this client process, so all
    # subtasks share one interpreter lock: CPU sampling showed Python the limit at parallelism 2.
    os.environ.setdefault("_python_worker_execution_mode", "process")
    if cfg.flink.prometheus_port:
        _reporter_on_classpath()
    env = env or StreamExecutionEnvironment.get_execution_environment()
    t_env = StreamTableEnvironment.create(env, EnvironmentSettings.in_streaming_mode())
    f = cfg.flink
    options = {
        "pipeline.name": name,
        "pipeline.jars": ";".join(p.as_uri() for p in job_jars()),
        "python.executable": python_executable(),
        "parallelism.default": str(f.parallelism),
        "execution.checkpointing.interval": f"{int(f.checkpoint_interval_s * 1000)} ms",
        "execution.checkpointing.mode": "EXACTLY_ONCE",
        "execution.checkpointing.storage": "filesystem",
        "execution.checkpointing.dir": checkpoint_uri(f.checkpoint_dir),
        "execution.checkpointing.savepoint-dir": checkpoint_uri(f.savepoint_dir),
        # a cancelled job keeps its last checkpoint, to resume from (--from-savepoint .../chk-N)
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "python.fn-execution.bundle.size": str(f.python_bundle_size),
        "python.fn-execution.bundle.time": str(f.python_bundle_time_ms),
        "python.fn-execution.arrow.batch.size": str(f.python_bundle_size),
        "table.local-time-zone": "UTC",
        # 0: a quiet partition holds the windows back. Idleness would let them move on without
        # it, and drop uncounted its records behind their time once it resumes (a subtask restarted
        # after a TaskManager died trails the other: TaskManager-kill runs lost records that way)
        "table.exec.source.idle-timeout": f"{int(f.source_idle_timeout_s * 1000)} ms",
        # chained operators hand records on without a deep copy (JFR: copies were the largest
        # cost left on the source thread); the Table runtime does not hold on to its inputs
        "pipeline.object-reuse": "true",
        # plan `checked` (parse + validation) once and let every branch (DLQ, late, ledger, user
        # windows) read it: without this the planner copied the non-deterministic parse into each
        # branch (EXPLAIN: 4 parse calls, 11 CASEs -> 1 and 6)
        "table.optimizer.reuse-optimize-block-with-digest-enabled": "true",
        **({"metrics.reporter.prom.factory.class": PROMETHEUS_REPORTER_FACTORY,
            "metrics.reporter.prom.port": f.prometheus_port} if f.prometheus_port else {}),
        # the embedded MiniCluster's REST API and web UI (under `flink run` the client's own
        # rest.* settings say where the cluster is: leave them alone)
        **({"rest.bind-port": f.web_port, "rest.bind-address": "127.0.0.1", "rest.address": "127.0.0.1"}
           if f.web_port and embedded() else {}),
        **f.extra,
    }
    conf = t_env.get_config()
    for key, value in options.items():
        conf.set(key, value)
    # the JVM functions (jobs/java) the source's event time and the validation use
    for ddl in JVM_FUNCTIONS:
        t_env.execute_sql(ddl)
    return t_env


def embedded() -> bool:
    """True when this process starts its own Flink (the MiniCluster), False under `flink run`,
    whose client hands the job its JVM (PYFLINK_GATEWAY_PORT)."""
    return "PYFLINK_GATEWAY_PORT" not in os.environ


def _reporter_on_classpath() -> None:
    """The embedded MiniCluster finds metric reporters on the JVM's classpath only (it ignores
    plugins/): launch PyFlink's JVM with a lib/ that also holds Flink's Prometheus reporter. Under
    `flink run` the JVM exists already and the cluster's own reporters apply."""
    if java_gateway._gateway is not None or not embedded():
        return
    jars = prometheus_reporter_jars()
    if not jars:
        log.warning("no Prometheus reporter under %s/plugins; flink.prometheus_port has no effect", flink_home())
        return
    os.environ.setdefault("FLINK_HOME", str(flink_home()))  # else PyFlink resets FLINK_LIB_DIR
    os.environ["FLINK_LIB_DIR"] = str(link_flink_lib(CACHE / "flink-lib-reporter", jars))


def checkpoint_uri(path: str) -> str:
    if "://" in path:
        return path
    p = Path(path)
    return (p if p.is_absolute() else PROJECT_ROOT / p).resolve().as_uri()


def in_range_sql(ts: str, kafka_ms: str = "kafka_ts_ms", *, min_ts_ms: int = MIN_TS_MS,
                 max_future_ms: int = MAX_FUTURE_MS) -> str:
    """Whether an event time lies in the bounds of validation_sql (the config's `events`):
    at least min_ts_ms and at most max_future_ms after the Kafka timestamp. NULL when ts is."""
    return f"{ts} BETWEEN {min_ts_ms} AND {kafka_ms} + {max_future_ms}"


def event_time_sql(kafka_ms: str = "kafka_ts_ms", *, min_ts_ms: int = MIN_TS_MS,
                   max_future_ms: int = MAX_FUTURE_MS, ts: str = "event_time_ms(payload)") -> str:
    """Event time from `ts` (by default the record's `ts`); when it is missing, not a JSON integer
    or out of range (in_range_sql), the earliest allowed time,
    which can never advance the watermark (a Kafka timestamp
    would, on replays of old events). Validation sends such records to the DLQ, which is not
    windowed. event_time_ms is a streaming scan in jobs/java (JSON_VALUE built a tree and
    a JsonPath per call, twice per record: in the watermark and in this column)."""
    in_range = in_range_sql(ts, kafka_ms, min_ts_ms=min_ts_ms, max_future_ms=max_future_ms)
    return f"TO_TIMESTAMP_LTZ(CASE WHEN {in_range} THEN {ts} ELSE {min_ts_ms} END, 3)"


def watermark_sql(cfg: JobConfig, column: str = "event_time", lateness_s: float | None = None) -> str:
    """The watermark of `column`: lateness_s (default features.out_of_orderness_s) behind it."""
    lateness = cfg.features.out_of_orderness_s if lateness_s is None else lateness_s
    return f"{column} - INTERVAL '{lateness:.3f}' SECOND"


def bounded_options(k: KafkaConfig, stop_offsets: dict[int, int] | None = None) -> str:
    """The WITH options that end a Kafka source: at `stop_offsets` (partition -> first offset not
    read) when given, else at the latest offsets when the job starts if the job is bounded at all
    (kafka.bounded or kafka.stop_offsets), else none."""
    if stop_offsets:
        ends = ";".join(f"partition:{p},offset:{o}" for p, o in sorted(stop_offsets.items()))
        return f",\n  'scan.bounded.mode' = 'specific-offsets',\n  'scan.bounded.specific-offsets' = '{ends}'"
    return ",\n  'scan.bounded.mode' = 'latest-offset'" if k.bounded or k.stop_offsets else ""


def kafka_source_options(k: KafkaConfig, topic: str, fmt: str, stop_offsets: dict[int, int] | None = None) -> str:
    """The WITH options of a source on `topic` read by the job's consumer group (kafka.group_id,
    kafka.startup_mode, bounded as bounded_options says)."""
    # a new group has no committed offsets: start it at the earliest (Kafka's default is to fail)
    group = ",\n  'properties.auto.offset.reset' = 'earliest'" if k.startup_mode == "group-offsets" else ""
    return f"""
  'connector' = 'kafka',
  'topic' = '{topic}',
  'properties.bootstrap.servers' = '{k.bootstrap_servers}',
  'properties.group.id' = '{k.group_id}',
  'scan.startup.mode' = '{k.startup_mode}',
  {fmt}{group}{bounded_options(k, stop_offsets)}"""


def kafka_source_ddl(cfg: JobConfig, lateness_s: float | None = None) -> str:
    """interactions_src: the raw record and its Kafka coordinates, with event time + watermark
    (lateness_s: as watermark_sql takes it).
    The record stays bytes: the JVM functions decode it as Python's json.loads decodes bytes
    (a record that is not UTF-8 is not_json on both sides; read as STRING, Flink would have
    replaced its bad bytes and let it through)."""
    k = cfg.kafka
    kafka_ms = KAFKA_TS_MS_SQL
    ev = cfg.events
    fmt = f"'scan.watermark.emit.strategy' = '{cfg.features.watermark_emit}',\n  'format' = 'raw'"
    return f"""
CREATE TABLE interactions_src (
  payload BYTES,
  src_topic STRING METADATA FROM 'topic' VIRTUAL,
  src_partition INT METADATA FROM 'partition' VIRTUAL,
  src_offset BIGINT METADATA FROM 'offset' VIRTUAL,
  kafka_ts TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
  kafka_ts_ms AS {kafka_ms},
  event_time AS {event_time_sql(kafka_ms, min_ts_ms=ev.min_ts_ms, max_future_ms=ev.max_future_ms)},
  proc_time AS PROCTIME(),
  WATERMARK FOR event_time AS {watermark_sql(cfg, lateness_s=lateness_s)}
) WITH ({kafka_source_options(k, k.interactions_topic, fmt, k.stop_offsets)}
)"""


def kafka_items_ddl(cfg: JobConfig) -> str:
    """items_src: the catalog; bounded (at its latest offsets) whenever the interactions are."""
    k = cfg.kafka
    bounded = bounded_options(k)
    return f"""
CREATE TABLE items_src (
  item_id STRING,
  category STRING,
  price DOUBLE,
  available BOOLEAN
) WITH (
  'connector' = 'kafka',
  'topic' = '{k.items_topic}',
  'properties.bootstrap.servers' = '{k.bootstrap_servers}',
  'properties.group.id' = '{k.group_id}-items',
  'scan.startup.mode' = 'earliest-offset',
  'format' = 'json',
  'json.ignore-parse-errors' = 'true'{bounded}
)"""


def kafka_dlq_ddl(cfg: JobConfig, table: str = "dlq_sink", topic: str | None = None) -> str:
    """A rejected-records sink: the raw record, why, and its Kafka coordinates. Exactly-once
    (kafka.rejected_delivery) writes in transactions named after the group and the table: unique
    per job, and the same when the job resumes, so Flink aborts the ones its last attempt left open."""
    k = cfg.kafka
    delivery = f"'sink.delivery-guarantee' = '{k.rejected_delivery}'"
    if k.rejected_delivery == "exactly-once":
        delivery += f""",
  'sink.transactional-id-prefix' = '{k.group_id}-{table}',
  'properties.transaction.timeout.ms' = '{k.transaction_timeout_s * 1000}'"""
    return f"""
CREATE TABLE {table} (
  record STRING,
  reason STRING,
  src_topic STRING,
  src_partition INT,
  src_offset BIGINT
) WITH (
  'connector' = 'kafka',
  'topic' = '{topic or k.dlq_topic}',
  'properties.bootstrap.servers' = '{k.bootstrap_servers}',
  {delivery},
  'format' = 'json'
)"""


# A window's events as Python's udfs.features.parse_events reads them.
EVENT_LIST_SQL = "LISTAGG(line, ';')"


# The job's Python functions; build(python=False) puts a JVM stand-in (jobs/java) in their place.
PYTHON_FUNCTIONS = ("rank_users", "store_item_meta", "count_rejected")


def day_to_second(ms: int) -> str:
    """An interval literal of ms milliseconds (SQL's SECOND alone holds at most 99 s)."""
    days, rest = divmod(ms, 86_400_000)
    return f"INTERVAL '{days} {rest // 3_600_000:02d}:{rest // 60_000 % 60:02d}:{rest // 1000 % 60:02d}.{rest % 1000:03d}' DAY TO SECOND"


def quarantine_views(t_env, cfg: JobConfig, user_sql: str, record_sql: str) -> None:
    """[quarantine]'s rules over the valid, on-time records, on the JVM: `rated` (each record with
    the rule that quarantines it, or NULL) and `events` (the fold's lines, a quarantined one's type
    marked QUARANTINED, so the fold counts it and keeps it out of the features and statistics).
    price: a purchase against the geometric mean of the item's other purchase values within
    price_window_s (an OVER window by item, purchases of a positive value only); rate: each interaction against the count of its
    user's interactions within the minute up to it (an OVER window by user). RANGE windows: every
    record of the same event time is in. A user's requests are never counted nor quarantined. The
windows carry the record as the quarantine topic gets it (record_sql: redacted under
privacy.pseudonymize), so no raw id sits in their state and checkpoints."""
    q = cfg.quarantine
    t_env.execute_sql(f"""
CREATE TEMPORARY VIEW valid_events AS
SELECT {user_sql} AS user_id, CAST(j_ts AS BIGINT) AS ts, j_event_id AS event_id, {EVENT_TAIL_SQL} AS tail,
  event_time, {CONTROL_SQL} AS control, COALESCE(t_type = 'string' AND j_type = 'purchase', FALSE) AS purchase,
  j_item_id AS item_id, COALESCE(CAST(j_value AS DOUBLE), 0.0) AS amount, {record_sql} AS record, src_topic,
  src_partition, src_offset
FROM checked
WHERE reason IS NULL AND NOT is_late""")
    priced = "SELECT *, FALSE AS price_outlier FROM valid_events"
    if q.price_factor is not None:
        # in log space: the usual value is the geometric mean of the item's other purchase values, which
        # one wild value barely moves (an arithmetic mean would let one 1,000x purchase make the
        # next normal ones look 1/50 of usual)
        window = int(round(q.price_window_s * 1000))
        others, usual_ln = "(item_n - 1)", "((item_ln_sum - LN(amount)) / (item_n - 1))"
        priced = f"""
SELECT *, FALSE AS price_outlier FROM valid_events WHERE NOT purchase OR amount <= 0
UNION ALL
SELECT user_id, ts, event_id, tail, event_time, control, purchase, item_id, amount, record, src_topic,
  src_partition, src_offset,
  {others} >= {q.price_min_purchases} AND ABS(LN(amount) - {usual_ln}) > {math.log(q.price_factor)!r} AS price_outlier
FROM (
  SELECT *, SUM(LN(amount)) OVER w AS item_ln_sum, COUNT(*) OVER w AS item_n
  FROM valid_events WHERE purchase AND amount > 0
  WINDOW w AS (PARTITION BY item_id ORDER BY event_time
    RANGE BETWEEN {day_to_second(window)} PRECEDING AND CURRENT ROW))"""
    rate = "FALSE"
    if q.max_events_per_minute is not None:
        rate = (f"(NOT control AND SUM(CASE WHEN control THEN 0 ELSE 1 END) OVER (PARTITION BY user_id ORDER BY "
                f"event_time RANGE BETWEEN INTERVAL '1' MINUTE PRECEDING AND CURRENT ROW) > {q.max_events_per_minute})")
    t_env.execute_sql(f"""
CREATE TEMPORARY VIEW rated AS
SELECT user_id, ts, event_id, tail, event_time, record, src_topic, src_partition, src_offset,
  CASE WHEN price_outlier THEN 'price' WHEN {rate} THEN 'rate' END AS rule
FROM ({priced})""")
    t_env.execute_sql(f"""
CREATE TEMPORARY VIEW events AS
SELECT user_id, ts, CONCAT(event_id, CASE WHEN rule IS NOT NULL THEN '|{QUARANTINED}' ELSE '|' END, tail) AS line,
  event_time
FROM rated""")


def build(t_env, cfg: JobConfig, *, sources: bool = True, sinks: bool = True, python: bool = True):
    """Wire the job into a StatementSet. With sources/sinks False the caller has created
    `interactions_src` (with kafka_source_ddl's columns, event_time and proc_time), `items_src`, `dlq_sink` and `late_sink` (and with [quarantine],
    `quarantine_sink`) itself (tests). With python False
    the Python functions are replaced by io.streamrank.udf.Discard: the JVM stages alone, for
    bench.features (nothing reaches Redis)."""
    if sources:
        t_env.execute_sql(kafka_source_ddl(cfg))
        t_env.execute_sql(kafka_items_ddl(cfg))
    if sinks:
        t_env.execute_sql(kafka_dlq_ddl(cfg))
        t_env.execute_sql(kafka_dlq_ddl(cfg, "late_sink", cfg.kafka.late_topic))
        if cfg.quarantine.enabled:
            t_env.execute_sql(kafka_dlq_ddl(cfg, "quarantine_sink", cfg.kafka.quarantine_topic))
    if python:
        register(t_env, cfg)
    else:
        for name in PYTHON_FUNCTIONS:
            t_env.execute_sql(f"CREATE TEMPORARY FUNCTION {name} AS 'io.streamrank.udf.Discard' LANGUAGE JAVA")
    t_env.execute_sql("CREATE TABLE discard (written INT) WITH ('connector' = 'blackhole')")

    # checked: every input record, the DLQ reason (NULL when valid) and whether it is late
    # (at or behind the watermark: event-time windows would drop it silently)
    read = ("payload", "src_topic", "src_partition", "src_offset", "event_time", "kafka_ts_ms", "proc_time")
    stamped = f"""(
  SELECT {', '.join(read)},
    COALESCE(event_time <= CURRENT_WATERMARK(event_time), FALSE) AS is_late
  FROM interactions_src)"""
    reason = validation_sql("kafka_ts_ms", min_ts_ms=cfg.events.min_ts_ms, max_future_ms=cfg.events.max_future_ms)
    t_env.execute_sql(f"""
CREATE TEMPORARY VIEW checked AS
SELECT *, {reason} AS reason
FROM ({parse_once_sql(stamped, (*read, 'is_late'))})""")

    # privacy.pseudonymize: the user id becomes its pseudonym here, and rejected records' text has
    # it replaced, so nothing downstream (Redis, DLQ, late topic) holds a raw id. The SQL names the
    # key's environment variable, never the key.
    user_sql, record_sql = "j_user_id", "CAST(payload AS STRING)"
    if cfg.privacy.pseudonymize:
        key_env = f"'{cfg.privacy.key_env}'"  # a variable name (EnvName): no quote to escape
        user_sql, record_sql = f"pseudonym(j_user_id, {key_env})", f"redact_user({record_sql}, {key_env})"

    # events: valid, on-time interactions, each as its line for Python (consent travels on: Python
    # counts opt-outs)
    quarantine = cfg.quarantine.enabled
    if not quarantine:
        t_env.execute_sql(f"""
CREATE TEMPORARY VIEW events AS
SELECT {user_sql} AS user_id, CAST(j_ts AS BIGINT) AS ts, {EVENT_LINE_SQL} AS line, event_time
FROM checked
WHERE reason IS NULL AND NOT is_late""")
    else:
        quarantine_views(t_env, cfg, user_sql, record_sql)

    mb_ms = int(round(cfg.features.micro_batch_s * 1000))
    window = f"TABLE(TUMBLE(TABLE events, DESCRIPTOR(event_time), INTERVAL '{mb_ms / 1000:.3f}' SECOND))"
    window_end = f"MAX(ts - MOD(ts, {mb_ms}) + {mb_ms})"

    stmts = t_env.create_statement_set()
    # rejected records: DLQ (with reason) or late topic, each counted once in the ledger
    stmts.add_insert_sql(f"""
INSERT INTO dlq_sink
SELECT {record_sql}, reason, src_topic, src_partition, src_offset FROM checked WHERE reason IS NOT NULL""")
    stmts.add_insert_sql(f"""
INSERT INTO late_sink
SELECT {record_sql}, 'late', src_topic, src_partition, src_offset FROM checked
WHERE reason IS NULL AND is_late""")
    if quarantine:  # counted in the ledger by the fold, which sees the marked type
        stmts.add_insert_sql("""
INSERT INTO quarantine_sink
SELECT record, rule, src_topic, src_partition, src_offset FROM rated WHERE rule IS NOT NULL""")
    stmts.add_insert_sql("""
INSERT INTO discard
SELECT count_rejected(COALESCE(reason, 'late'), src_topic, src_partition, src_offset)
FROM checked WHERE reason IS NOT NULL OR is_late""")
    # per user and micro-batch window -> rank_users (dedup, consent, features, item statistics,
    # scoring, Redis). Item statistics are counted from the same windows in Python (see
    # udfs.ranking.item_window_counts): a separate per-item window cost a second aggregation on
    # the source thread, a shuffle and a Python worker.
    windows = f"""
  SELECT user_id, {window_end} AS window_end_ms, {EVENT_LIST_SQL} AS event_list
  FROM {window}
  GROUP BY user_id, window_start, window_end"""
    # [quarantine]'s rules need the watermark (OVER windows in event time): with them, lists wait
    # for it, or an early list could hold an event the final window quarantines
    early_ms = 0 if quarantine else int(round(cfg.features.early_fire_s * 1000))
    if early_ms:
        # early firing: every features.early_fire_s of processing time, each user's on-time events
        # of that span (no further behind the wall clock than early_fire_max_lag_s: a backlog's
        # windows are final within moments, and its early rows would only cost), as rows with window_end_ms 0. They meet the final windows in the same
        # Python subtask (both aggregations are keyed by user_id and feed it forward), which folds
        # them speculatively over the user's state until their window is final
        # (udfs.ranking.BatchRanker).
        t_env.execute_sql(f"""
CREATE TEMPORARY VIEW early_events AS
SELECT {user_sql} AS user_id, {EVENT_LINE_SQL} AS line, proc_time
FROM checked
WHERE reason IS NULL AND NOT is_late
  AND event_time >= proc_time - INTERVAL '{cfg.features.early_fire_max_lag_s:.3f}' SECOND""")
        windows += f"""
  UNION ALL
  SELECT user_id, CAST(0 AS BIGINT) AS window_end_ms, {EVENT_LIST_SQL} AS event_list
  FROM TABLE(TUMBLE(TABLE early_events, DESCRIPTOR(proc_time), INTERVAL '{early_ms / 1000:.3f}' SECOND))
  GROUP BY user_id, window_start, window_end"""
    stmts.add_insert_sql(f"""
INSERT INTO discard
SELECT rank_users(user_id, w, event_list)
FROM ({windows}
) AS u CROSS JOIN UNNEST(ARRAY[u.window_end_ms]) AS t(w)""")
    # catalog -> item:meta
    stmts.add_insert_sql("""
INSERT INTO discard
SELECT store_item_meta(item_id, category, price, COALESCE(available, TRUE)) FROM items_src
WHERE item_id IS NOT NULL""")
    return stmts


def job_arguments(prog: str, description: str) -> argparse.ArgumentParser:
    """The command line both jobs take (the CLI's `run` and `submit` pass it on)."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="job config TOML (default: built-in defaults)")
    parser.add_argument("--preset", choices=PRESETS,
                        help="config preset applied over --config (deploy/config/presets): the one the model was trained with")
    parser.add_argument("--bounded", action="store_true",
                        help="stop at the offsets that are latest when the job starts")
    parser.add_argument("--detached", action="store_true",
                        help="return once the job is submitted (flink run -d)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config field (value parsed as TOML)")
    parser.add_argument("--from-savepoint", metavar="PATH",
                        help="start from this savepoint or retained checkpoint (Kafka offsets, open windows)")
    parser.add_argument("--allow-non-restored-state", action="store_true",
                        help="with --from-savepoint: skip state of operators the job no longer has")
    return parser


def start(args: argparse.Namespace, name: str, build_job, adjust=lambda cfg: cfg, keeps_user_states: bool = False):
    """Load and check the config (exit code 2 with the field and the fix; with keeps_user_states,
    also that the users' states in Redis have the shape it gives them), then plan and submit the
    job `build_job(t_env, cfg)` wires; returns (cfg, its TableResult), or (None, 2)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = adjust(load_config(args.config, parse_overrides(args.set, bounded=args.bounded), args.preset))
        cfg.redis.password()  # an unset variable stops here, not in the first write
        cfg.privacy.keys()
        if keeps_user_states:
            check_state_layout(cfg)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return None, 2
    restore = restore_options(args.from_savepoint, args.allow_non_restored_state)  # fails before Flink starts
    warn_if_redis_forgets(cfg)
    if cfg.flink.source_idle_timeout_s:
        log.warning("flink.source_idle_timeout_s = %s: a partition quiet that long stops holding the windows "
                    "back, and when it resumes, its records behind them are dropped uncounted; 0 loses nothing",
                    cfg.flink.source_idle_timeout_s)
    t_env = environment(cfg, name=name)
    for key, value in restore.items():
        t_env.get_config().set(key, value)
    if restore:
        log.info("restoring from %s", args.from_savepoint)
    return cfg, build_job(t_env, cfg).execute()


def main(argv: list[str] | None = None) -> int:
    args = job_arguments("jobs.recommend", __doc__).parse_args(argv)
    cfg, result = start(args, "streamrank-recommend", build, keeps_user_states=True)
    if cfg is None:
        return result
    job = result.get_job_client()
    log.info("submitted job %s (bounded=%s, stop_offsets=%s)", job.get_job_id() if job else "?",
             cfg.kafka.bounded, cfg.kafka.stop_offsets or "none")
    if cfg.flink.web_port and embedded():
        found = find_rest_endpoint(cfg.flink.web_port, wait_s=10.0)
        log.info("Flink web UI and REST API at %s", found or f"a port of {cfg.flink.web_port} (none answered yet)")
    if cfg.flink.prometheus_port and embedded():
        log.info("Flink's metrics for Prometheus: http://127.0.0.1:<first free port of %s>/metrics "
                 "(streamrank_used, _duplicate, _opted_out, _late, _dlq, _control_*, ...)", cfg.flink.prometheus_port)
    if not args.detached:
        result.wait()
        if cfg.kafka.bounded or cfg.kafka.stop_offsets:
            log_ledger(cfg)
    return 0


def log_ledger(cfg: JobConfig) -> None:
    """After a bounded run: where every record went, from the ledger in Redis."""
    try:
        client = redis_client(cfg)
        counts, control = read_ledger(client, cfg.redis.layout()), read_control(client, cfg.redis.layout())
    except redis.RedisError as e:
        log.warning("the job ended; the ledger could not be read from Redis: %s", e)
        return
    log.info("the job ended; ledger: %s; %saccounted %d (`streamrank ledger` compares it with the topic)",
             ", ".join(f"{k} {v}" for k, v in counts.items()),
             "".join(f"users' requests: {', '.join(f'{k} {v}' for k, v in control.items())}; " if control else ""),
             accounted(counts, control))


if __name__ == "__main__":
    sys.exit(main())
