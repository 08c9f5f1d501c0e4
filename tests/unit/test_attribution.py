"""Outcomes of exposures (udfs.attribution) and the experiment report built on them
(models.experiment_report): credit conserved under every model, clicks and purchases matched by
request id or by user, item and window, and the report's lift, intervals and SRM check."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings, strategies as st

from contract.config import EngagementConfig
from models.experiment_report import cumulative_lift, outcomes, plot_cumulative_lift, report
from udfs.attribution import MODELS, Action, Shown, attribute, split_credit

H = 3_600_000


def test_each_models_credit_splits_one_purchase_over_its_touches():
    credit = split_credit([3 * H, 2 * H, 0], H)
    assert credit["last_touch"] == [0.0, 0.0, 1.0]
    assert credit["linear"] == [1 / 3] * 3
    decay = credit["time_decay"]
    assert math.isclose(sum(decay), 1.0) and decay[2] > decay[1] > decay[0]
    assert math.isclose(decay[2] / decay[1], 4.0) and math.isclose(decay[1] / decay[0], 2.0)
    assert split_credit([10_000 * H], H)["time_decay"] == [1.0]  # no underflow however old


def test_clicks_and_purchases_match_by_item_and_window_or_by_request_id():
    shown = [Shown("r1", 0, frozenset({"a", "b"})), Shown("r2", H, frozenset({"b", "c"})),
             Shown("r3", 2 * H, frozenset({"z"}))]
    actions = [Action("e1", "click", "a", H // 2),            # r1 only (r2 not yet served)
               Action("e2", "purchase", "b", H + 10, 10.0),   # r1 and r2 showed b
               Action("e3", "purchase", "c", 50 * H, 5.0),    # after every window: organic
               Action("e4", "view", "q", 3 * H, 0.0, "r3"),  # carries r3's request id
               Action("e5", "purchase", "a", 2, 7.0, "r2")]   # its request id names r2, not r1
    out = attribute(shown, actions, window_ms=24 * H, half_life_ms=H)
    assert [out[r].clicked for r in ("r1", "r2", "r3")] == [True, False, True]
    assert out["r1"].conversions["last_touch"] == 0.0 and out["r2"].conversions["last_touch"] == 2.0
    assert out["r1"].conversions["linear"] == 0.5 and out["r2"].conversions["linear"] == 1.5
    assert math.isclose(out["r2"].revenue["linear"], 5.0 + 7.0)
    for model in MODELS:  # two conversions explained, each credited exactly once
        assert math.isclose(sum(o.conversions[model] for o in out.values()), 2.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 100), st.frozensets(st.sampled_from("abcdef"), min_size=1)), max_size=12),
       st.lists(st.tuples(st.sampled_from(["view", "click", "purchase"]), st.sampled_from("abcdefg"),
                          st.integers(0, 150), st.floats(0, 100)), max_size=20),
       st.integers(1, 60), st.integers(1, 50))
def test_credit_is_conserved_for_any_history(exposures, actions, window, half_life):
    shown = [Shown(f"r{n}", t * 60_000, items) for n, (t, items) in enumerate(exposures)]
    acts = [Action(f"e{n}", typ, item, t * 60_000, value) for n, (typ, item, t, value) in enumerate(actions)]
    out = attribute(shown, acts, window * 60_000, half_life * 60_000.0)
    explained = sum(1 for a in acts if a.type == "purchase" and any(
        s.served_at_ms <= a.ts <= s.served_at_ms + window * 60_000 and a.item_id in s.items for s in shown))
    for model in MODELS:
        assert math.isclose(sum(o.conversions[model] for o in out.values()), explained, abs_tol=1e-9)
        assert all(o.conversions[model] >= 0 for o in out.values())


EXPERIMENT = {"name": "ab", "control": "control",
              "arms": [{"name": "control", "upto": 1}, {"name": "model", "upto": 2}]}


def logs(ctr: dict[str, float], users: int = 1000, seed: int = 1):
    """Exposures of two arms with the given click-through rates, and the clicks and buys."""
    rng = random.Random(seed)
    exposures, interactions = [], []
    for n in range(users):
        arm = "control" if n % 2 == 0 else "model"
        for m in range(5):
            t = m * H
            exposures.append({"request_id": f"q{n}-{m}", "user_id": f"u{n}", "served_at_ms": t,
                              "experiments": {"ab": arm}, "placement": "", "model_version": "v1",
                              "items": [{"item_id": f"i{m}"}]})
            if rng.random() < ctr[arm]:
                interactions.append({"event_id": f"c{n}-{m}", "user_id": f"u{n}", "type": "click",
                                     "item_id": f"i{m}", "ts": t + 1000})
                if rng.random() < 0.5:
                    interactions.append({"event_id": f"b{n}-{m}", "user_id": f"u{n}", "type": "purchase",
                                         "item_id": f"i{m}", "ts": t + 2000, "value": 10.0})
    return exposures, interactions


def test_the_report_finds_a_real_lift_and_no_lift_where_there_is_none(tmp_path):
    cfg = EngagementConfig()
    better = report(outcomes(*logs({"control": 0.10, "model": 0.15}), cfg), EXPERIMENT)
    assert better["arms"]["control"]["users"] == better["arms"]["model"]["users"] == 500
    assert better["arms"]["model"]["exposures"] == 2500
    lift = better["lift"]["model"]["ctr"]
    assert lift["low"] > 0 and lift["low"] < lift["lift"] < lift["high"]
    assert math.isclose(better["arms"]["model"]["ctr"], better["arms"]["control"]["ctr"] * (1 + lift["lift"]),
                        rel_tol=1e-4)
    assert better["srm_p"] > 0.001 and not better["srm_alarm"]
    same = report(outcomes(*logs({"control": 0.12, "model": 0.12}, seed=2), cfg), EXPERIMENT)
    assert same["lift"]["model"]["ctr"]["low"] < 0 < same["lift"]["model"]["ctr"]["high"]
    series = cumulative_lift(outcomes(*logs({"control": 0.10, "model": 0.15}), cfg), EXPERIMENT, buckets=4)
    assert len(series["t_ms"]) == len(series["model"]) == 4
    png = plot_cumulative_lift(series, "ab", tmp_path / "lift.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_a_skewed_split_raises_the_sample_ratio_alarm():
    exposures, interactions = logs({"control": 0.1, "model": 0.1})
    skewed = [e for e in exposures if e["experiments"]["ab"] == "model" or int(e["user_id"][1:]) % 10 < 6]
    out = report(outcomes(skewed, interactions, EngagementConfig()), EXPERIMENT)
    assert out["srm_p"] < 0.001 and out["srm_alarm"]
