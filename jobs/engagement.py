"""The engagement job: the services' exposures (Kafka `exposures`) joined in event time with the
same users' later interactions (Kafka `interactions`) -> per experiment, arm, placement and model
version: exposures, users, clicks, conversions and revenue under three attribution models, in
Redis (contract.keys engagement:*), as Flink metrics, and each credited interaction on a Kafka
topic for warehouses ([engagement] outcomes_topic).

    python -m jobs.engagement --config deploy/config/local.toml [--bounded]

The JVM does the per-event work: it parses and validates interactions (as the recommend job does),
unnests each exposure's items, and finds every exposure an interaction may touch with two interval
joins (same user and item, or the request id the page sent back; served at most [engagement]
window_s before it). Python is crossed in Arrow batches: once per touched interaction, where
udfs.attribution settles it (request id first, then credit split into integer units), and once
per user, placement, model version and arms in each micro-batch of exposures; jobs.store adds both
up in Redis, each record once (a marker per request id and event id), so a replay after a restart
counts nothing twice.

An interaction is settled once the watermark, which the joins hold back by the window, has passed
it: the totals' clicks and conversions trail their exposures by window_s. Records later than
[engagement] out_of_orderness_s behind the watermark are dropped by Flink's windows and joins (the
offline computation has no such notion: it agrees with the job on data that is in time).
"""

from __future__ import annotations

import logging
import sys

from contract.config import ConfigError, JobConfig
from contract.schema import KAFKA_TS_MS_SQL, parse_once_sql, validation_sql
from jobs.functions import register_engagement
from jobs.recommend import (day_to_second, event_time_sql, in_range_sql, job_arguments, kafka_source_ddl,
                            kafka_source_options, start, watermark_sql)

log = logging.getLogger("streamrank.jobs.engagement")


def engagement_config(cfg: JobConfig) -> JobConfig:
    """The job config as this job reads it: its own consumer group (the recommend job's offsets
    are the recommend job's). Its totals and markers are written together (contract/lua/once.lua),
    in keys of many slots: not on a Redis Cluster yet."""
    if cfg.redis.cluster is not None:
        raise ConfigError("the engagement job does not run on a Redis Cluster yet ([redis.cluster] is set): its "
                          "totals and their markers are written in one script, across hash slots. Give it a "
                          "config whose [redis] is one Redis (remove [redis.cluster]), or do not run it")
    return cfg.model_copy(update={"kafka": cfg.kafka.model_copy(update={"group_id": f"{cfg.kafka.group_id}-engagement"})})


def exposures_source_ddl(cfg: JobConfig) -> str:
    """exposures_src: the exposure records (contract.exposures), `experiments` kept as its JSON
    text, with event time = served_at_ms, clamped as the interactions' event time is. Records that
    are not JSON are skipped; so are those served outside the [events] bounds (`in_range` false:
    `shown` drops them)."""
    k, ev = cfg.kafka, cfg.events
    bounds = {"min_ts_ms": ev.min_ts_ms, "max_future_ms": ev.max_future_ms}
    fmt = "'format' = 'json',\n  'json.ignore-parse-errors' = 'true'"
    return f"""
CREATE TABLE exposures_src (
  request_id STRING,
  user_id STRING,
  placement STRING,
  experiments STRING,
  items ARRAY<ROW<item_id STRING>>,
  model_version STRING,
  served_at_ms BIGINT,
  kafka_ts TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
  in_range AS {in_range_sql("served_at_ms", KAFKA_TS_MS_SQL, **bounds)},
  served_at AS {event_time_sql(KAFKA_TS_MS_SQL, ts="served_at_ms", **bounds)},
  WATERMARK FOR served_at AS {watermark_sql(cfg, "served_at", cfg.engagement.out_of_orderness_s)}
) WITH ({kafka_source_options(k, cfg.engagement.exposures_topic, fmt)}
)"""


def outcomes_sink_ddl(cfg: JobConfig) -> str:
    return f"""
CREATE TABLE outcomes_sink (outcome STRING) WITH (
  'connector' = 'kafka',
  'topic' = '{cfg.engagement.outcomes_topic}',
  'properties.bootstrap.servers' = '{cfg.kafka.bootstrap_servers}',
  'sink.delivery-guarantee' = 'at-least-once',
  'format' = 'raw'
)"""


def build(t_env, cfg: JobConfig, *, sources: bool = True, sinks: bool = True):
    """Wire the job into a StatementSet. With sources/sinks False the caller has created
    `interactions_src`, `exposures_src` and `outcomes_sink` itself (tests)."""
    e = cfg.engagement
    if sources:
        t_env.execute_sql(kafka_source_ddl(cfg, cfg.engagement.out_of_orderness_s))
        t_env.execute_sql(exposures_source_ddl(cfg))
    if sinks:
        t_env.execute_sql(outcomes_sink_ddl(cfg))
    register_engagement(t_env, cfg)
    t_env.execute_sql("CREATE TABLE discard_engagement (written BIGINT) WITH ('connector' = 'blackhole')")

    user_sql = "j_user_id"
    if cfg.privacy.pseudonymize:  # exposures name users by their pseudonym
        user_sql = f"pseudonym(j_user_id, '{cfg.privacy.key_env}')"
    reason = validation_sql("kafka_ts_ms", min_ts_ms=cfg.events.min_ts_ms, max_future_ms=cfg.events.max_future_ms)
    kinds = ", ".join(f"'{t}'" for t in (*e.click_types, "purchase"))
    # actions: valid clicks and purchases (invalid records are the recommend job's to DLQ)
    t_env.execute_sql(f"""
CREATE TEMPORARY VIEW actions AS
SELECT {user_sql} AS user_id, j_event_id AS event_id, j_type AS type, j_item_id AS item_id,
  CAST(j_ts AS BIGINT) AS ts,
  CASE WHEN t_value IN ('integer', 'float') THEN CAST(j_value AS DOUBLE) ELSE 0.0 END AS amount,
  CASE WHEN t_request_id = 'string' THEN j_request_id ELSE '' END AS carried,
  event_time
FROM ({parse_once_sql('interactions_src', ('kafka_ts_ms', 'event_time'))})
WHERE ({reason}) IS NULL AND j_type IN ({kinds})""")
    t_env.execute_sql("""
CREATE TEMPORARY VIEW shown AS
SELECT request_id, user_id, COALESCE(placement, '') AS placement, COALESCE(experiments, '{}') AS experiments,
  COALESCE(model_version, '') AS model_version, served_at_ms, items, served_at
FROM exposures_src
WHERE request_id IS NOT NULL AND user_id IS NOT NULL AND in_range""")

    window = day_to_second(e.window_ms)
    touched = """a.user_id, a.event_id, a.type, a.ts, a.amount, a.event_time,
  JSON_OBJECT('request_id' VALUE s.request_id, 'served_at_ms' VALUE s.served_at_ms, 'by_request' VALUE {by},
              'experiments' VALUE s.experiments, 'placement' VALUE s.placement,
              'model_version' VALUE s.model_version) AS touch"""
    in_window = f"a.event_time BETWEEN s.served_at AND s.served_at + {window}"
    # every exposure each action may touch: it showed the item, or the action carries its request
    # id (udfs.attribution.chosen keeps the latter when there are any)
    t_env.execute_sql(f"""
CREATE TEMPORARY VIEW touches AS
SELECT {touched.format(by='FALSE')}
FROM actions a, shown s CROSS JOIN UNNEST(s.items) AS i (item_id)
WHERE a.user_id = s.user_id AND a.item_id = i.item_id AND {in_window}
UNION ALL
SELECT {touched.format(by='TRUE')}
FROM actions a, shown s
WHERE a.user_id = s.user_id AND a.carried = s.request_id AND a.carried <> '' AND {in_window}""")

    batch = day_to_second(int(round(e.micro_batch_s * 1000)))
    stmts = t_env.create_statement_set()
    # a user's exposures per micro-batch (and placement, model version, arms) -> totals
    stmts.add_insert_sql(f"""
INSERT INTO discard_engagement
SELECT count_exposures(user_id, placement, model_version, experiments, request_ids)
FROM (
  SELECT user_id, placement, model_version, experiments, '[' || LISTAGG(JSON_STRING(request_id), ',') || ']' AS request_ids
  FROM TABLE(TUMBLE(TABLE shown, DESCRIPTOR(served_at), {batch}))
  GROUP BY window_start, window_end, user_id, placement, model_version, experiments
)""")
    # each action once all it touches has arrived (the watermark has passed it) -> clicks, credit
    stmts.add_insert_sql(f"""
INSERT INTO outcomes_sink
SELECT settle_actions(user_id, event_id, type, ts, amount, touches)
FROM (
  SELECT user_id, event_id, type, ts, amount, '[' || LISTAGG(touch, ',') || ']' AS touches
  FROM TABLE(TUMBLE(TABLE touches, DESCRIPTOR(event_time), {batch}))
  GROUP BY window_start, window_end, user_id, event_id, type, ts, amount
)""")
    return stmts


def main(argv: list[str] | None = None) -> int:
    args = job_arguments("jobs.engagement", __doc__).parse_args(argv)
    cfg, result = start(args, "streamrank-engagement", build, engagement_config)
    if cfg is None:
        return result
    job = result.get_job_client()
    log.info("submitted job %s: exposures from %r, interactions from %r, outcomes to %r (bounded=%s)",
             job.get_job_id() if job else "?", cfg.engagement.exposures_topic, cfg.kafka.interactions_topic,
             cfg.engagement.outcomes_topic, cfg.kafka.bounded)
    if not args.detached:
        result.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
