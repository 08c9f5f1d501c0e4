"""Thin PyFlink wrappers: vectorized (pandas) UDFs that load resources in open() and hand whole
Arrow batches to the pure core. They act as the job's Redis sinks; each returns, per row, how
many records it wrote, so the Flink graph ends in a blackhole sink."""

from __future__ import annotations

import logging

import pandas as pd
from pyflink.table import DataTypes
from pyflink.table.udf import FunctionContext, ScalarFunction, udf

from contract.config import JobConfig

log = logging.getLogger(__name__)


class RankUsers(ScalarFunction):
    """(user window delta columns...) -> lists written; see udfs.ranking.BatchRanker."""

    def __init__(self, cfg_json: str) -> None:
        self.cfg_json = cfg_json
        self.ranker = None

    def open(self, function_context: FunctionContext) -> None:
        from udfs.ranking import BatchRanker
        from udfs.scorer import OnnxScorer

        cfg = JobConfig.model_validate_json(self.cfg_json)
        self.ranker = BatchRanker(cfg, OnnxScorer(cfg.scoring.model_dir))
        log.info("RankUsers loaded model %s", self.ranker.scorer.version)

    def eval(self, user_id, window_end, n_view, n_click, n_cart, n_purchase,  # type: ignore[override]
             purchase_value, last_ts, last_click_ts, last_purchase_ts, events):
        from udfs.features import WindowDelta

        deltas = [
            WindowDelta(str(u), int(w), int(a), int(b), int(c), int(d), float(v), int(t), int(tc), int(tp), str(e))
            for u, w, a, b, c, d, v, t, tc, tp, e in zip(
                user_id, window_end, n_view, n_click, n_cart, n_purchase, purchase_value,
                last_ts, last_click_ts, last_purchase_ts, events)
        ]
        written = self.ranker.rank(deltas)
        return pd.Series([written] * len(deltas), dtype="int32")


class UpdateTrending(ScalarFunction):
    """(window_end, item_id, category, counts...) -> items added to the trending boards."""

    def __init__(self, cfg_json: str) -> None:
        self.cfg_json = cfg_json
        self.writer = None

    def open(self, function_context: FunctionContext) -> None:
        from udfs.ranking import TrendingWriter

        self.writer = TrendingWriter(JobConfig.model_validate_json(self.cfg_json))

    def eval(self, window_end, item_id, category, n_view, n_click, n_cart, n_purchase):  # type: ignore[override]
        rows = [
            (int(t), str(i), str(c), int(a), int(b), int(d), int(e))
            for t, i, c, a, b, d, e in zip(window_end, item_id, category, n_view, n_click, n_cart, n_purchase)
        ]
        n = self.writer.write(rows)
        return pd.Series([n] * len(rows), dtype="int32")


class StoreItemMeta(ScalarFunction):
    """(item_id, category, price) from the catalog topic -> fields written to item:meta."""

    def __init__(self, cfg_json: str) -> None:
        self.cfg_json = cfg_json
        self.client = None

    def open(self, function_context: FunctionContext) -> None:
        from udfs.ranking import redis_client

        self.client = redis_client(JobConfig.model_validate_json(self.cfg_json))

    def eval(self, item_id, category, price):  # type: ignore[override]
        from udfs.ranking import write_item_meta

        rows = [(str(i), str(c or "unknown"), float(p) if p == p else 0.0) for i, c, p in zip(item_id, category, price)]
        n = write_item_meta(self.client, rows)
        return pd.Series([n] * len(rows), dtype="int32")


def register(t_env, cfg: JobConfig) -> None:
    """Register the job's Python functions under the names the SQL uses."""
    cfg_json = cfg.model_dump_json()
    out = DataTypes.INT()
    t_env.create_temporary_function("rank_users", udf(RankUsers(cfg_json), result_type=out, func_type="pandas"))
    t_env.create_temporary_function("update_trending", udf(UpdateTrending(cfg_json), result_type=out, func_type="pandas"))
    t_env.create_temporary_function("store_item_meta", udf(StoreItemMeta(cfg_json), result_type=out, func_type="pandas"))
