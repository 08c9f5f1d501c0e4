"""The job's Python functions: vectorized (pandas) UDFs that load resources in open() and hand
whole Arrow batches to the pure core (udfs). They act as the job's Redis sinks; each returns, per row, how
many records it wrote, so the Flink graph ends in a blackhole sink."""

from __future__ import annotations

import logging

import pandas as pd
from pyflink.table import DataTypes
from pyflink.table.udf import FunctionContext, ScalarFunction, udf

from contract.config import JobConfig
from contract.schema import CONTROL_ACTIONS, DLQ_REASONS
from jobs.store import RedisStore, RejectedCounter, redis_client, write_item_meta
from jobs.faults import FaultInjector
from udfs.features import WindowDelta, feature_names
from udfs.ranking import BatchRanker
from udfs.scorer import ModelWatcher

log = logging.getLogger(__name__)


class RankUsers(ScalarFunction):
    """(user_id, window_end, event_list) -> events used; see udfs.ranking.BatchRanker.
    Flink metrics streamrank.{used,duplicate,opted_out,quarantined,late} count every record it is handed, and
    streamrank.control.{erase,opt_out,opt_in} the users' requests it applies."""

    def __init__(self, cfg_json: str) -> None:
        self.cfg_json = cfg_json
        self.ranker = None
        self.counters: dict = {}
        self.faults = None

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
        for name, counter in self.counters.items():
            counter.inc(getattr(ledger, name))
        return pd.Series([ledger.used] * len(deltas), dtype="int32")


class StoreItemMeta(ScalarFunction):
    """(item_id, category, price) from the catalog topic -> fields written to item:meta."""

    def __init__(self, cfg_json: str) -> None:
        self.cfg_json = cfg_json
        self.client = None

    def open(self, function_context: FunctionContext) -> None:
        self.client = redis_client(JobConfig.model_validate_json(self.cfg_json))

    def eval(self, item_id, category, price):  # type: ignore[override]
        rows = [(str(i), str(c or "unknown"), float(p) if p == p else 0.0) for i, c, p in zip(item_id, category, price)]
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
        self.counter = RejectedCounter(redis_client(JobConfig.model_validate_json(self.cfg_json)))
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


def register(t_env, cfg: JobConfig) -> None:
    """Register the job's Python functions under the names the SQL uses."""
    cfg_json = cfg.model_dump_json()
    out = DataTypes.INT()
    t_env.create_temporary_function("rank_users", udf(RankUsers(cfg_json), result_type=out, func_type="pandas"))
    t_env.create_temporary_function("store_item_meta", udf(StoreItemMeta(cfg_json), result_type=out, func_type="pandas"))
    t_env.create_temporary_function("count_rejected", udf(CountRejected(cfg_json), result_type=out, func_type="pandas"))
