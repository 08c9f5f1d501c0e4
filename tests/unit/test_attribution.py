"""Outcomes of exposures (udfs.attribution) and the experiment report built on them
(models.experiment_report): credit conserved under every model, clicks and purchases matched by
request id or by user, item and window, and the report's lift, intervals and SRM check."""

from __future__ import annotations

import math
import random

import numpy as np
from hypothesis import given, settings, strategies as st

from contract.config import EngagementConfig
from models.experiment_report import _lift_interval, cumulative_lift, outcomes, plot_cumulative_lift, report
from contract import keys
from udfs.attribution import (CREDIT_UNITS, MODELS, Action, Shown, Touch, apportion, arms_of, attribute, credit, settle,
                             split_credit)

H = 3_600_000
T0 = 1_700_000_000_000  # event times the schema accepts (the report validates interactions as the job does)


def test_each_models_credit_splits_one_purchase_into_whole_units():
    touches = [Touch("r1", 0, False), Touch("r2", H, False), Touch("r3", 2 * H, False)]
    split = credit(Action("e", "purchase", "a", 3 * H, 19.99), touches, H)
    assert split["last_touch"] == ([0, 0, CREDIT_UNITS], [0, 0, 19_990_000])
    assert split["linear"][0] == [333_333_334, 333_333_333, 333_333_333]  # the remainder to the oldest
    decay = split["time_decay"][0]
    assert sum(decay) == CREDIT_UNITS and decay[2] > decay[1] > decay[0]
    assert math.isclose(decay[2] / decay[1], 2.0, rel_tol=1e-8) and math.isclose(decay[1] / decay[0], 2.0, rel_tol=1e-8)
    assert all(sum(rev) == 19_990_000 for _, rev in split.values())
    assert split_credit([10_000 * H, 0], H)["time_decay"][1] == 1.0  # no underflow however old


@given(st.integers(0, 10**12), st.lists(st.floats(1e-300, 1.0), min_size=1, max_size=30))
def test_apportioned_shares_always_sum_to_the_total(total, weights):
    shares = apportion(total, weights)
    assert sum(shares) == total and all(s >= 0 for s in shares)


def test_clicks_and_purchases_match_by_item_and_window_or_by_request_id():
    shown = [Shown("r1", 0, frozenset({"a", "b"})), Shown("r2", H, frozenset({"b", "c"})),
             Shown("r3", 2 * H, frozenset({"z"}))]
    actions = [Action("e1", "click", "a", H // 2),             # r1 only (r2 not yet served)
               Action("e2", "purchase", "b", H + 10, 10.0),    # r1 and r2 showed b
               Action("e3", "purchase", "c", 50 * H, 5.0),     # after every window: organic
               Action("e4", "view", "q", 3 * H, 0.0, "r3"),   # carries r3's request id
               Action("e5", "purchase", "a", H + 20, 7.0, "r2"),  # names r2 (not r1, which showed a)
               Action("e6", "purchase", "a", 2, 1.0, "r2")]   # names r2 before it was served: r1 showed a
    out = attribute(shown, actions, window_ms=24 * H, half_life_ms=H)
    assert [out[r].clicked for r in ("r1", "r2", "r3")] == [True, False, True]
    assert out["r1"].conversions["last_touch"] == CREDIT_UNITS and out["r2"].conversions["last_touch"] == 2 * CREDIT_UNITS
    assert out["r1"].conversions["linear"] == CREDIT_UNITS * 3 // 2 and out["r2"].conversions["linear"] == CREDIT_UNITS * 3 // 2
    assert out["r2"].revenue["linear"] == 5_000_000 + 7_000_000
    for model in MODELS:  # three conversions explained, each credited exactly once
        assert sum(o.conversions[model] for o in out.values()) == 3 * CREDIT_UNITS


HISTORY = (st.lists(st.tuples(st.integers(0, 100), st.frozensets(st.sampled_from("abcdef"), min_size=1)), max_size=12),
           st.lists(st.tuples(st.sampled_from(["view", "click", "purchase"]), st.sampled_from("abcdefg"),
                              st.integers(0, 150), st.floats(0, 100), st.integers(-1, 12)), max_size=20),
           st.integers(1, 60), st.integers(1, 50))


def _history(exposures, actions):
    shown = [Shown(f"r{n}", t * 60_000, items) for n, (t, items) in enumerate(exposures)]
    acts = [Action(f"e{n}", typ, item, t * 60_000, value, f"r{named}" if named >= 0 else "")
            for n, (typ, item, t, value, named) in enumerate(actions)]
    return shown, acts


@settings(max_examples=200, deadline=None)
@given(*HISTORY)
def test_credit_is_conserved_for_any_history(exposures, actions, window, half_life):
    shown, acts = _history(exposures, actions)
    out = attribute(shown, acts, window * 60_000, half_life * 60_000.0)
    explained = sum(1 for a in acts if a.type == "purchase" and any(
        s.served_at_ms <= a.ts <= s.served_at_ms + window * 60_000 and (a.item_id in s.items or a.request_id == s.request_id)
        for s in shown))
    for model in MODELS:
        assert sum(o.conversions[model] for o in out.values()) == explained * CREDIT_UNITS
        assert all(o.conversions[model] >= 0 for o in out.values())


@settings(max_examples=200, deadline=None)
@given(*HISTORY)
def test_settling_action_by_action_adds_up_to_the_whole_history(exposures, actions, window, half_life):
    """The engagement job's step (settle, one action and the touches its joins found, in any
    order and repeated) summed over a history equals attribute over it."""
    shown, acts = _history(exposures, actions)
    out = attribute(shown, acts, window * 60_000, half_life * 60_000.0)
    clicked, conv = set(), {s.request_id: dict.fromkeys(MODELS, 0) for s in shown}
    for a in reversed(acts):
        found = [Touch(s.request_id, s.served_at_ms, by) for s in reversed(shown)
                 if s.served_at_ms <= a.ts <= s.served_at_ms + window * 60_000
                 for by, hit in ((False, a.item_id in s.items), (True, a.request_id == s.request_id)) if hit]
        for share in settle(a, found + found[:1], half_life * 60_000.0, frozenset({"view", "click"})):
            if share.click:
                clicked.add(share.touch.request_id)
            for m in share.conversions:
                conv[share.touch.request_id][m] += share.conversions[m]
    assert clicked == {r for r, o in out.items() if o.clicked}
    assert conv == {r: o.conversions for r, o in out.items()}


def test_the_contract_names_the_attribution_models():
    assert keys.ENGAGEMENT_MODELS == MODELS


def test_no_request_id_names_no_exposure_and_a_bad_experiments_field_counts_in_no_group():
    shown = [Shown("", 0, frozenset({"a"})), Shown("r2", 0, frozenset({"b"}))]
    out = attribute(shown, [Action("e1", "purchase", "b", 10, 1.0)], window_ms=H, half_life_ms=H)
    assert out[""].conversions["linear"] == 0 and out["r2"].conversions["linear"] == CREDIT_UNITS
    assert arms_of('{"ab": "model"}') == {"ab": "model"}
    assert arms_of('"ab"') == arms_of('{"ab": 1}') == arms_of("{broken") == arms_of(None) == {}


def test_the_report_counts_a_record_sent_twice_once_and_skips_invalid_interactions():
    exposures, interactions = logs({"control": 0.5, "model": 0.5}, users=50)
    rows = outcomes(exposures, interactions, EngagementConfig())
    bad = [{**interactions[0], "event_id": "x1", "ts": "soon"}, {"event_id": "x2", "user_id": "u1", "type": "click"}]
    again = outcomes(exposures + exposures[:20], interactions + interactions[:20] + bad, EngagementConfig())
    assert again == rows and sum(r.clicked for r in rows) > 0


EXPERIMENT = {"name": "ab", "control": "control",
              "arms": [{"name": "control", "upto": 1}, {"name": "model", "upto": 2}]}


def logs(ctr: dict[str, float], users: int = 1000, seed: int = 1):
    """Exposures of two arms with the given click-through rates, and the clicks and buys."""
    rng = random.Random(seed)
    exposures, interactions = [], []
    for n in range(users):
        arm = "control" if n % 2 == 0 else "model"
        for m in range(5):
            t = T0 + m * H
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


def test_the_bootstrap_draws_in_blocks_for_many_users():
    """200k users per arm: one block holds 20 resamples, so 100 resamples take five blocks (all
    at once would be 100 x 200k indexes per arm)."""
    rng = np.random.default_rng(0)
    n = 200_000
    arm = {"exposures": np.ones(n), "clicks": (rng.random(n) < 0.12).astype(float)}
    control = {"exposures": np.ones(n), "clicks": (rng.random(n) < 0.10).astype(float)}
    out = _lift_interval(arm, control, "clicks", np.random.default_rng(1), samples=100)
    assert 0 < out["low"] < out["lift"] < out["high"] and math.isclose(out["lift"], 0.2, abs_tol=0.03)
