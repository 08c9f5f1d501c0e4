"""The job's Python functions: vectorized (pandas) UDFs that load resources in open() and hand
whole Arrow batches to the pure core (udfs). They act as the job's Redis sinks; each returns, per row, how
many records it wrote, so the Flink graph ends in a blackhole sink."""

from __future__ import annotations

import logging
import time

import orjson
import pandas as pd
from pyflink.table import DataTypes
from pyflink.table.udf import FunctionContext, ScalarFunction, udf

from contract.config import JobConfig
from contract.schema import CONTROL_ACTIONS, DLQ_REASONS
from jobs.store import EngagementStore, RedisStore, RejectedCounter, redis_client, write_item_meta
from jobs.faults import FaultInjector
from udfs.attribution import CREDIT_UNITS, REVENUE_UNITS, Action, Touch, arms_of, groups_of, settle
from udfs.features import WindowDelta, feature_names
from udfs.ranking import BatchRanker
from udfs.scorer import ModelWatcher

log = logging.getLogger(__name__)

# streamrank_list_freshness_seconds: upper bounds (s) of the histogram's buckets
FRESHNESS_BUCKETS_S = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class FreshnessHistogram:
    """A Prometheus histogram from Flink counters (PyFlink's metric groups have counters, gauges
    and meters, no histogram). Freshness: from the newest event time in a list's features to when
    the list was written. Flink puts a labelled group's key into the name, so the job serves
    streamrank_list_freshness_le_bucket{le="..."} (cumulative), streamrank_list_freshness_count and
    streamrank_list_freshness_sum_ms (Python counters are integers);
    deploy/monitoring/streamrank-rules.yml records them, summed over subtasks, as the histogram
    streamrank_list_freshness_seconds (_bucket, _count, _sum) that histogram_quantile reads."""

    def __init__(self, group) -> None:
        g = group.add_group("list_freshness")
        self.buckets = [(b, g.add_group("le", f"{b:g}").counter("bucket")) for b in FRESHNESS_BUCKETS_S]
        self.inf = g.add_group("le", "+Inf").counter("bucket")
        self.count, self.sum_ms = g.counter("count"), g.counter("sum_ms")

    def observe(self, ages_ms: list[int]) -> None:
        if not ages_ms:
            return
        for bound, counter in self.buckets:
            n = sum(1 for a in ages_ms if a <= bound * 1000)
            if n:
                counter.inc(n)
        self.inf.inc(len(ages_ms))
        self.count.inc(len(ages_ms))
        self.sum_ms.inc(max(0, sum(ages_ms)))


class RankUsers(ScalarFunction):
    """(user_id, window_end, event_list) -> events used; see udfs.ranking.BatchRanker.
    Flink metrics streamrank.{used,duplicate,opted_out,quarantined,late} count every record it is handed, and
    streamrank.control.{erase,opt_out,opt_in} the users' requests it applies."""

    def __init__(self, cfg_json: str) -> None:
        self.cfg_json = cfg_json
        self.ranker = None
        self.counters: dict = {}
        self.faults = None

    def is_deterministic(self) -> bool:
        return False  # it writes to Redis; and the planner must not copy it into each input of the union

    def open(self, function_context: FunctionContext) -> None:
        cfg = JobConfig.model_validate_json(self.cfg_json)
        s = cfg.scoring
        scorer = ModelWatcher(s.model_dir, feature_names(cfg.features), s.reload_check_s) if s.enabled else None
        self.ranker = BatchRanker(cfg, scorer, RedisStore(cfg))
        # recovery tests only: a job without [faults] never constructs it
        self.faults = FaultInjector(cfg.faults) if cfg.faults.fail_after_windows else None
        group = function_context.get_metric_group().add_group("streamrank")
        self.counters = {name: group.counter(name) for name in ("used", "duplicate", "opted_out", "quarantined", "late")}
        control = group.add_group("control")
        self.counters.update({action: control.counter(action) for action in CONTROL_ACTIONS})
        self.freshness = FreshnessHistogram(group)
        # drift: PSI x 1000 per feature for the last closed window (Python gauges are integers)
        drift = group.add_group("drift")
        for name in feature_names(cfg.features):
            drift.gauge(f"psi_milli_{name}", lambda name=name: self._psi_milli(name))
        drift.gauge("alert", lambda: int(bool(self.ranker.last_drift and self.ranker.last_drift.alert)))
        log.info("RankUsers scoring with %s", scorer.version if scorer else "nothing (scoring.enabled = false)")

    def _psi_milli(self, name: str) -> int:
        report = self.ranker.last_drift if self.ranker else None
        return int(round(1000 * report.psi.get(name, 0.0))) if report else 0

    def eval(self, user_id, window_end, events):  # type: ignore[override]
        deltas = list(map(WindowDelta, user_id.astype(str).tolist(), window_end.astype("int64").tolist(),
                          events.astype(str).tolist()))
        if self.faults:
            self.faults.before_batch(len(deltas))
        ledger = self.ranker.rank(deltas)
        written = int(time.time() * 1000)  # after the write to Redis: the list is readable
        self.freshness.observe([written - feature_ts for _, feature_ts in self.ranker.written])
        for name, counter in self.counters.items():
            counter.inc(getattr(ledger, name))
        return pd.Series([ledger.used] * len(deltas), dtype="int32")


class StoreItemMeta(ScalarFunction):
    """(item_id, category, price, available) from the catalog topic -> fields written to item:meta,
    and the item:unavailable set (available false: in it; true: out of it)."""

    def __init__(self, cfg_json: str) -> None:
        self.cfg_json = cfg_json
        self.client = None

    def open(self, function_context: FunctionContext) -> None:
        self.client = redis_client(JobConfig.model_validate_json(self.cfg_json))

    def eval(self, item_id, category, price, available):  # type: ignore[override]
        # available: never null here (the SQL reads a record without the field as available)
        rows = [(str(i), str(c or "unknown"), float(p) if p == p else 0.0, bool(a))
                for i, c, p, a in zip(item_id, category, price, available)]
        n = write_item_meta(self.client, rows)
        return pd.Series([n] * len(rows), dtype="int32")


class CountRejected(ScalarFunction):
    """(reason or 'late', topic, partition, offset) -> 1: counts DLQ'd and late records into the
    ledger exactly once (see jobs.store.RejectedCounter) and into the Flink metrics
    streamrank.dlq / streamrank.late, and the DLQ'd ones by reason (streamrank.dlq_reason.records,
    with the reason as the label dlq_reason). Only rejected records cross into Python here."""

    def __init__(self, cfg_json: str) -> None:
        self.cfg_json = cfg_json
        self.counter = None
        self.counters: dict = {}

    def open(self, function_context: FunctionContext) -> None:
        cfg = JobConfig.model_validate_json(self.cfg_json)
        self.counter = RejectedCounter(redis_client(cfg), cfg)
        group = function_context.get_metric_group().add_group("streamrank")
        self.counters = {name: group.counter(name) for name in ("dlq", "late")}
        self.by_reason = {r: group.add_group("dlq_reason", r).counter("records") for r in DLQ_REASONS}

    def eval(self, reason, topic, partition, offset):  # type: ignore[override]
        fields = ["late" if r == "late" else "dlq" for r in reason]
        rows = [(str(t), int(p), int(o), f) for f, t, p, o in zip(fields, topic, partition, offset)]
        self.counter.count(rows)
        for why, n in reason.value_counts().items():
            if why == "late":
                self.counters["late"].inc(int(n))
            else:
                self.counters["dlq"].inc(int(n))
                self.by_reason[str(why)].inc(int(n))
        return pd.Series([1] * len(rows), dtype="int32")


class CountExposures(ScalarFunction):
    """(user_id, placement, model_version, experiments JSON, request ids JSON) per group of a
    user's exposures in a micro-batch -> how many of them were new (each request id counts once,
    jobs.store.EngagementStore). Flink metric streamrank.engagement.exposures."""

    def __init__(self, cfg_json: str) -> None:
        self.cfg_json = cfg_json
        self.store = None
        self.counter = None

    def is_deterministic(self) -> bool:
        return False  # it writes to Redis: the planner must not copy it into a second consumer

    def open(self, function_context: FunctionContext) -> None:
        cfg = JobConfig.model_validate_json(self.cfg_json)
        self.store = EngagementStore(redis_client(cfg), cfg.engagement.window_ms)
        self.counter = function_context.get_metric_group().add_group("streamrank").add_group(
            "engagement").counter("exposures")

    def eval(self, user_id, placement, model_version, experiments, request_ids):  # type: ignore[override]
        counts = self.store.add_exposures([(str(u), groups_of(arms_of(e), str(p or ""), str(m or "")), orjson.loads(r))
                                           for u, p, m, e, r in zip(user_id, placement, model_version, experiments,
                                                                    request_ids)])
        self.counter.inc(sum(counts))
        return pd.Series(counts, dtype="int64")


class SettleActions(ScalarFunction):
    """(user_id, event_id, type, ts, value, touches JSON) per interaction that touched exposures
    -> its outcome as JSON for the warehouse topic; clicks and credit are added to the engagement
    totals (udfs.attribution.settle; each once, jobs.store.EngagementStore). Flink metrics
    streamrank.engagement.{actions,clicks,conversions}: interactions settled, exposures clicked,
    purchases credited."""

    def __init__(self, cfg_json: str) -> None:
        self.cfg_json = cfg_json
        self.store = None
        self.counters: dict = {}

    def is_deterministic(self) -> bool:
        return False  # it writes to Redis: the planner must not copy it into a second consumer

    def open(self, function_context: FunctionContext) -> None:
        cfg = JobConfig.model_validate_json(self.cfg_json)
        e = cfg.engagement
        self.half_life_ms, self.click_types = e.half_life_s * 1000, frozenset(e.click_types)
        self.store = EngagementStore(redis_client(cfg), e.window_ms)
        group = function_context.get_metric_group().add_group("streamrank").add_group("engagement")
        self.counters = {name: group.counter(name) for name in ("actions", "clicks", "conversions")}

    def eval(self, user_id, event_id, type_, ts, value, touches):  # type: ignore[override]
        actions = []
        for u, ev, t, at, v, found in zip(user_id, event_id, type_, ts, value, touches):
            action = Action(str(ev), str(t), "", int(at), float(v))
            seen = orjson.loads(found)
            groups = {x["request_id"]: groups_of(arms_of(x["experiments"]), x["placement"] or "",
                                                 x["model_version"] or "") for x in seen}
            shares = settle(action, [Touch(x["request_id"], int(x["served_at_ms"]), bool(x["by_request"]))
                                     for x in seen], self.half_life_ms, self.click_types)
            actions.append((str(u), action, [(s, groups[s.touch.request_id]) for s in shares]))
        first_click, new = self.store.add_outcomes([(a.event_id, pairs) for _, a, pairs in actions])
        clicks = iter(first_click)
        out = []
        for (u, action, pairs), fresh in zip(actions, new, strict=True):
            credited = [{"request_id": s.touch.request_id, "served_at_ms": s.touch.served_at_ms,
                         "by_request": s.touch.by_request, "groups": g,
                         **({"first_click": next(clicks)} if s.click else
                            {"conversions": {m: c / CREDIT_UNITS for m, c in s.conversions.items()},
                             "revenue": {m: r / REVENUE_UNITS for m, r in s.revenue.items()}})}
                        for s, g in pairs]
            out.append(orjson.dumps({"event_id": action.event_id, "user_id": u, "type": action.type,
                                     "ts": action.ts, "value": action.value, "first_time": fresh,
                                     "touches": credited}).decode())
            self.counters["conversions"].inc(int(fresh and action.type == "purchase" and bool(pairs)))
        self.counters["actions"].inc(len(actions))
        self.counters["clicks"].inc(sum(first_click))
        return pd.Series(out, dtype=object)


def register(t_env, cfg: JobConfig) -> None:
    """Register the job's Python functions under the names the SQL uses."""
    cfg_json = cfg.model_dump_json()
    out = DataTypes.INT()
    t_env.create_temporary_function("rank_users", udf(RankUsers(cfg_json), result_type=out, func_type="pandas"))
    t_env.create_temporary_function("store_item_meta", udf(StoreItemMeta(cfg_json), result_type=out, func_type="pandas"))
    t_env.create_temporary_function("count_rejected", udf(CountRejected(cfg_json), result_type=out, func_type="pandas"))


def register_engagement(t_env, cfg: JobConfig) -> None:
    """The engagement job's Python functions (jobs/engagement.py)."""
    cfg_json = cfg.model_dump_json()
    t_env.create_temporary_function("count_exposures", udf(CountExposures(cfg_json), result_type=DataTypes.BIGINT(),
                                                           func_type="pandas"))
    t_env.create_temporary_function("settle_actions", udf(SettleActions(cfg_json), result_type=DataTypes.STRING(),
                                                          func_type="pandas"))
