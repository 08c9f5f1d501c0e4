import math

import numpy as np

import pytest

from contract.config import FeatureConfig
from udfs.candidates import CandidatePool, TrendingBoards, gather_candidates
from udfs.features import FEATURE_NAMES, NEVER_S, UserState, WindowDelta, apply_window, user_item_features

CFG = FeatureConfig(short_half_life_s=10.0, long_half_life_s=100.0, interest_half_life_s=10.0)
T0 = 1_700_000_000_000


def delta(end, views=0, clicks=0, purchases=0, value=0.0, events=""):
    return WindowDelta("u1", end, views, clicks, 0, purchases, value, end - 1, end - 1 if clicks else 0,
                       end - 1 if purchases else 0, events)


def test_counts_decay_by_half_life():
    s = apply_window(UserState(), delta(T0, views=4, events="view|i1|c1;view|i1|c1;view|i2|c1;view|i3|c2"), CFG)
    s = apply_window(s, delta(T0 + 10_000, views=1, events="view|i1|c1"), CFG)
    assert s.views_short == pytest.approx(4 * 0.5 + 1)
    assert s.events_long == pytest.approx(4 * 2 ** (-0.1) + 1)
    assert s.affinity["c1"] == pytest.approx(3 * 0.5 + 1)
    assert s.top_categories(1) == ["c1"]


def test_replayed_window_is_ignored():
    s1 = apply_window(UserState(), delta(T0, views=2, events="view|i1|c1;view|i1|c1"), CFG)
    s2 = apply_window(s1, delta(T0, views=2, events="view|i1|c1;view|i1|c1"), CFG)
    assert s2 == s1


def test_monetary_and_recency():
    s = apply_window(UserState(), delta(T0, purchases=1, value=30.0, events="purchase|i9|c3"), CFG)
    f = dict(zip(FEATURE_NAMES, user_item_features(s, T0 + 5000, "i9", "c3", 30.0, 0.5)))
    assert f["spend_monetary"] == 30.0 and f["purchases_monetary"] == 1
    assert f["recency_s"] == pytest.approx(5.001)
    assert f["since_click_s"] == NEVER_S
    assert f["category_affinity"] == 1.0 and f["item_affinity"] == 1.0
    assert f["item_price_log"] == pytest.approx(math.log1p(30.0))
    assert len(f) == len(FEATURE_NAMES)


def test_state_round_trips_through_json():
    s = apply_window(UserState(), delta(T0, views=1, events="view|i1|c1"), CFG)
    assert UserState.decode(s.encode()) == s


def test_trending_rescale_keeps_ratios():
    b = TrendingBoards(half_life_s=1.0)
    b.add(T0, "a", "c", 2.0)
    b.add(T0, "b", "c", 1.0)
    b.add(T0 + 300_000, "b", "c", 0.0)  # 300 half-lives later forces a rescale
    assert b.landmark == T0 + 300_000
    top = b.top(2)
    assert top[0][0] == "a" and top[0][1] / top[1][1] == pytest.approx(2.0)
    assert b.top(5, "c") == top


def test_candidates_union_trending_category_and_own_items():
    s = apply_window(UserState(), delta(T0, views=2, events="view|own1|c2;view|own1|c2"), CFG)
    pool = CandidatePool([("g1", 10.0), ("g2", 5.0)], {"c2": [("k1", 4.0), ("g2", 5.0)]},
                         {"g1": ("c1", 3.0), "k1": ("c2", 1.0)})
    cands = gather_candidates(s, pool, top_categories=1, own_history=5)
    assert [c.item_id for c in cands] == ["g1", "g2", "k1", "own1"]
    assert cands[0].popularity == 1.0 and cands[2].popularity == 0.4
    assert cands[3].category == "unknown" and cands[3].popularity == 0.0


def test_matrix_rows_equal_single_rows():
    from udfs.features import user_item_matrix

    s = apply_window(UserState(), delta(T0, views=3, clicks=1, events="view|a|c1;view|b|c2;click|a|c1;view|a|c1"), CFG)
    ids, cats = ["a", "b", "z"], ["c1", "c2", "c9"]
    prices, pops = np.array([1.0, 20.0, 0.0]), np.array([1.0, 0.5, 0.0])
    m = user_item_matrix(s, T0 + 1000, ids, cats, prices, pops)
    assert m.shape == (3, len(FEATURE_NAMES))
    for n in range(3):
        assert list(m[n]) == pytest.approx(user_item_features(s, T0 + 1000, ids[n], cats[n], prices[n], pops[n]))
    assert m[2, FEATURE_NAMES.index("item_affinity")] == 0.0
