"""Evaluation metrics and baselines on hand-checked cases."""

from __future__ import annotations

import json
import math

import pytest

from contract.config import load_config
from contract.schema import Interaction
from models.evaluation import (Baselines, auc, evaluate, evaluate_history, hit_at, ndcg_at, reciprocal_rank,
                               relevant_items, split_by_time)

H = 3_600_000


def ev(user, item, ts, category="c", etype="view"):
    return Interaction(f"{user}-{item}-{ts}", user, item, etype, ts, 0.0, category, True)


def test_metrics_by_hand():
    ranked = ["a", "b", "c", "d"]
    assert ndcg_at(ranked, {"b"}, 10) == pytest.approx(1 / math.log2(3))
    assert ndcg_at(ranked, {"a", "b"}, 10) == pytest.approx(1.0)
    assert ndcg_at(ranked, {"z"}, 10) == 0.0
    assert hit_at(ranked, {"c"}, 2) == 0.0 and hit_at(ranked, {"c"}, 3) == 1.0
    assert reciprocal_rank(ranked, {"c", "d"}) == pytest.approx(1 / 3) and reciprocal_rank(ranked, {"z"}) == 0.0
    # relevant b, d among a b c d: pairs (b,a) wrong, (b,c) right, (d,a) wrong, (d,c) wrong -> 1/4
    assert auc(ranked, {"b", "d"}) == pytest.approx(0.25)
    assert auc(ranked, {"a"}) == 1.0 and auc(ranked, set()) is None and auc(["a"], {"a"}) is None


def test_split_by_time_keeps_order_and_fraction():
    events = [ev("u", f"i{n}", n * H) for n in range(10)]
    split = split_by_time(reversed(events), 0.8)
    assert [e.item_id for e in split.train] == [f"i{n}" for n in range(8)]
    assert [e.item_id for e in split.test] == ["i8", "i9"] and split.at_ms == 8 * H


def test_baselines_rank_as_documented():
    at = 100 * H
    train = [ev("u1", "old", 1 * H, "x"), ev("u2", "old", 2 * H, "x"), ev("u3", "old", 3 * H, "x"),
             ev("u1", "new", 99 * H, "y"), ev("u2", "new", 99 * H, "y"),
             ev("u1", "mine", 50 * H, "y"), ev("u1", "mine", 60 * H, "y"), ev("u1", "once", 90 * H, "z")]
    b = Baselines.fit(train, at, trending_half_life_s=3600)
    r = b.rankers()
    assert r["popularity"]("u1") == ["old", "mine", "new", "once"]  # count, then id
    assert r["trending"]("anyone")[0] == "new"
    # u1: categories y (new, mine, mine) beats x, z -> y's items by popularity, then the rest
    assert r["user_top_category"]("u1")[:2] == ["mine", "new"]
    # repeat: by frequency (mine twice), then recency (new at 99 h before once at 90 h)
    assert r["repeat"]("u1")[:3] == ["mine", "new", "once"]
    # a cold user falls back to popularity
    assert r["repeat"]("cold") == r["popularity"]("cold")


def test_evaluate_reports_each_ranker():
    train = [ev("u1", "a", 1), ev("u1", "a", 2), ev("u2", "b", 3)]
    test = [ev("u1", "a", 10), ev("u2", "c", 11)]
    b = Baselines.fit(train, 5)
    out = evaluate(b.rankers(), relevant_items(test), k=10)
    assert set(out) == {"popularity", "trending", "user_top_category", "repeat"}
    assert out["repeat"]["hitrate_at_10"] == 0.5  # u1 repeats a; u2's c was never seen
    assert out["repeat"]["mrr"] == 0.5 and out["repeat"]["ndcg_at_10"] == 0.5


def test_evaluate_history_trains_on_the_past_and_reports_every_ranker(sim_history, tmp_path):
    history, _ = sim_history
    out = evaluate_history(str(history), load_config(None), work_dir=str(tmp_path), progress=False)
    rankers = {"popularity", "trending", "user_top_category", "repeat", "classifier", "lambdamart"}
    assert set(out) == rankers | {"evaluation"}
    for name in rankers:
        metrics = out[name]
        assert set(metrics) == {"ndcg_at_10", "hitrate_at_10", "mrr", "auc", "ndcg_at_10_ci95", "hitrate_at_10_ci95",
                                "mrr_ci95"}
        assert all(0.0 <= metrics[m] <= 1.0 for m in ("ndcg_at_10", "hitrate_at_10", "mrr"))
        for m in ("ndcg_at_10", "hitrate_at_10", "mrr"):  # the mean lies in its bootstrap interval
            lo, hi = metrics[f"{m}_ci95"]
            assert lo <= metrics[m] <= hi
    # the model ranks the job's own candidates: better than chance on the users it knows
    assert out["classifier"]["auc"] > 0.5 and out["lambdamart"]["auc"] > 0.5
    summary = out["evaluation"]
    assert 0 < summary["candidate_recall"] <= 1
    assert sum(v["users"] for k, v in summary["segments"].items() if k != "new") == summary["users_evaluated"]
    cmp_ = summary["comparison"]
    assert cmp_["difference"] == pytest.approx(cmp_["model"] - cmp_["baseline"], abs=1e-5)
    for name in ("evaluation.json", "evaluation.md", "ndcg_at_k.png", "feature_importance.png", "calibration.png",
                 "classifier.onnx", "lambdamart.onnx"):
        assert (tmp_path / name).stat().st_size > 0
    card = json.loads((tmp_path / "evaluation.json").read_text())
    assert {n: card["results"][n] for n in rankers} == {n: out[n] for n in rankers}
    assert set(card["model_cards"]) == {"classifier", "lambdamart"}
    for mc in card["model_cards"].values():
        assert set(mc["reference_distributions"]) == set(mc["feature_importance"]) == set(mc["feature_names"])
        assert mc["onnx_parity_max_diff"] <= 1e-5
    assert card["best_model"] in ("classifier", "lambdamart")
