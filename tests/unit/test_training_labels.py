"""Labels, cut-offs and the no-leak rule of the training set; the publishing gate's verdict."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from contract.config import load_config
from contract.schema import Interaction
from models.evaluation import bootstrap_ci, candidate_recall, gate, segment_of
from models.training import MAX_GRADE, build_training_set, cutoff_times, relevance
from udfs.features import NEVER_S, feature_names

D = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01, on a window boundary
GAP = 1_800_000


def ev(n, user, item, ts, etype="purchase"):
    return Interaction(f"e{n}", user, item, etype, ts, 5.0 if etype == "purchase" else 0.0, "c", True)


def test_graded_relevance_orders_interactions_and_counts_purchase_occasions():
    future = [ev(1, "u", "a", T0), ev(2, "u", "b", T0, "view"), ev(3, "u", "b", T0 + 1, "add_to_cart"),
              ev(4, "u", "c", T0), ev(5, "u", "c", T0 + 60_000),  # one occasion (within a session gap)
              ev(6, "u", "d", T0), ev(7, "u", "d", T0 + D), ev(8, "u", "d", T0 + 2 * D),
              *[ev(10 + k, "u", "e", T0 + k * D) for k in range(8)], ev(30, "u", "f", T0, "click")]
    assert relevance(future, True, GAP) == {"a": 4, "b": 3, "c": 4, "d": 6, "e": MAX_GRADE, "f": 2}
    assert relevance(future, False, GAP) == dict.fromkeys("abcdef", 1)


def test_cutoffs_spread_over_the_period_on_window_boundaries():
    cuts = cutoff_times(T0, T0 + 10 * D, D, 3, 2000)
    assert cuts == [T0 + 3 * D, T0 + 6 * D, T0 + 9 * D]
    assert cutoff_times(T0, T0 + D, 2 * D, 3, 2000) == []  # shorter than the horizon: none
    assert all(t % 2000 == 0 for t in cutoff_times(T0 + 1, T0 + 10 * D + 7, D, 7, 2000))


def test_no_label_leaks_into_features():
    """u1 buys x just after each of the first two cut-offs. Any feature computed with an event at or
    after its cut-off would show x as known at the first one, or bought twice at the second."""
    events, n = [], 0
    for h in range(0, 10 * 24, 3):  # u1 and u2 active on a and b all along; u2 makes x trending early
        for user, item in (("u1", "a"), ("u2", "b"), ("u1", "b")):
            n += 1
            events.append(ev(n, user, item, T0 + h * 3_600_000, "view"))
    events += [ev(900, "u2", "x", T0 + D), ev(901, "u1", "x", T0 + 3 * D + 60_000),
               ev(902, "u1", "x", T0 + 6 * D + 60_000), ev(903, "u1", "a", T0 + 10 * D)]
    events.sort(key=lambda e: (e.ts, e.event_id))
    cfg = load_config(None, {"training.cutoffs": 3, "training.negatives_per_query": 50})
    ts = build_training_set(events, cfg, horizon_s=D / 1000, progress=False)
    names = feature_names(cfg.features)
    col = {name: n for n, name in enumerate(names)}
    rows = {(int(c), i): r for r, (c, u, i) in enumerate(zip(ts.cutoff, ts.user, ts.item)) if u == "u1"}
    first, second = rows[(T0 + 3 * D, "x")], rows[(T0 + 6 * D, "x")]
    assert ts.y[first] == 4 and ts.y[second] == 4  # the purchases just after are the labels
    assert ts.x[first, col["ui_purchases"]] == 0 and ts.x[first, col["ui_since_s"]] == pytest.approx(NEVER_S)
    assert ts.x[first, col["ui_weight_90d"]] == 0
    assert ts.x[second, col["ui_purchases"]] == 1  # the first purchase only
    assert ts.x[second, col["ui_since_purchase_s"]] == pytest.approx((3 * D - 60_000) / 1000)
    # the user's own recency at each cut-off is to their last event before it
    last_before = max(e.ts for e in events if e.user_id == "u1" and e.ts < T0 + 3 * D)
    assert ts.x[first, col["recency_s"]] == pytest.approx((T0 + 3 * D - last_before) / 1000)


def test_gate_promotes_only_a_model_that_beats_every_baseline():
    results = {"popularity": {"ndcg_at_10": 0.10}, "repeat": {"ndcg_at_10": 0.30}, "m": {"ndcg_at_10": 0.31}}
    ok = gate(results, "m", ["popularity", "repeat"])
    assert ok["promote"] and ok["best_baseline"] == "repeat" and "beats" in ok["reason"]
    results["m"]["ndcg_at_10"] = 0.30  # a tie does not earn promotion
    refused = gate(results, "m", ["popularity", "repeat"])
    assert not refused["promote"] and "does not beat the best baseline repeat" in refused["reason"]


def test_bootstrap_interval_candidate_recall_and_segments():
    v = np.array([0.0, 1.0] * 200)
    lo, hi = bootstrap_ci(v)
    assert lo < 0.5 < hi and hi - lo < 0.15
    assert bootstrap_ci(np.ones(10)) == [1.0, 1.0]
    assert candidate_recall({"u": ["a", "b"], "v": ["c"]}, {"u": {"a", "z"}, "v": {"c"}}) == pytest.approx(2 / 3)

    buys = Counter({"big": 7, "small": 2})
    known = {"big", "small", "browser"}
    assert [segment_of(u, buys, known) for u in ("big", "small", "browser", "stranger")] == [
        "purchases_5plus", "purchases_1to4", "purchases_0", "new"]
