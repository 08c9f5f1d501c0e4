import math
import sys

import numpy as np
import pytest

from contract import keys
from contract.config import FeatureConfig
from udfs.candidates import ALL, Candidate, CandidatePool, TrendingBoards, gather_candidates
from udfs.features import (EVENT_WEIGHTS, Event, NEVER_S, UserState, WindowDelta, apply_window, describe, feature_names,
                           parse_events, shared_events, user_feature_names, user_item_features,
                           profile, user_item_matrix)
from udfs.ranking import item_window_counts, segment_window_counts
from udfs.reasons import ReasonFacts

CFG = FeatureConfig(frequency_windows_s=(60.0, 3600.0), monetary_windows_s=(3600.0,), window_slices=6,
                    session_gap_s=30.0, session_window_s=3600.0, interest_half_life_s=10.0,
                    dedup_horizon_s=600.0)
T0 = 1_700_000_000_000 - 1_700_000_000_000 % 60_000  # aligned to every slice


def ev(n, etype, ts, item="i1", cat="c1", value=0.0, consent=True):
    return Event(f"e{n}", etype, item, cat, ts, value, consent)


def window(end, *events):
    return WindowDelta("u1", end, ";".join(e.encode() for e in events))


def fold(state, *deltas):
    total = {"used": 0, "duplicate": 0, "opted_out": 0, "late": 0}
    for d in deltas:
        state, ledger = apply_window(state, d, CFG)
        for k in total:
            total[k] += getattr(ledger, k)
    return state, total


def test_feature_names_follow_the_configured_windows():
    names = user_feature_names(CFG)
    assert names[:3] == ("recency_s", "since_click_s", "since_purchase_s")
    assert "views_1m" in names and "purchases_1h" in names and "spend_1h" in names and "sessions_1h" in names
    assert feature_names(CFG)[len(names):] == (
        "category_affinity", "item_affinity", "item_popularity_1h", "item_popularity_1d",
        "category_popularity_1h", "category_popularity_1d", "item_conversion", "item_price_log",
        "ui_weight_90d", "ui_weight_365d", "ui_purchases", "ui_since_s", "ui_since_purchase_s",
        "ui_purchase_interval_s", "ui_repurchase_due", "category_affinity_long", "item_repurchase_rate",
        "item_category_share", "price_vs_usual_log")


def test_sliding_window_counts_expire_by_slice():
    s, _ = fold(UserState(), window(T0 + 2000, ev(1, "view", T0 + 500), ev(2, "click", T0 + 1500)))
    f = describe(s, T0 + 2000, CFG)
    assert (f["views_1m"], f["clicks_1m"], f["views_1h"]) == (1, 1, 1)
    # 60 s window in 10 s slices: the slice [T0, T0+10s) leaves the window once t - 60s >= T0 + 10s
    assert describe(s, T0 + 69_999, CFG)["views_1m"] == 1
    assert describe(s, T0 + 70_000, CFG)["views_1m"] == 0
    assert describe(s, T0 + 70_000, CFG)["views_1h"] == 1


def test_monetary_sessions_and_baskets():
    s, _ = fold(UserState(),
                window(T0 + 2000, ev(1, "view", T0), ev(2, "purchase", T0 + 1000, value=30.0)),
                window(T0 + 62_000, ev(3, "purchase", T0 + 61_000, value=10.0)),  # new session (gap 30 s)
                window(T0 + 64_000, ev(4, "view", T0 + 62_500)))
    f = describe(s, T0 + 64_000, CFG)
    assert f["spend_1h"] == 40.0 and f["mean_purchase_1h"] == 20.0
    assert f["sessions_1h"] == 2 and f["session_events"] == 2
    assert f["avg_basket"] == 20.0
    assert f["recency_s"] == pytest.approx(1.5) and f["since_click_s"] == NEVER_S
    assert f["since_purchase_s"] == pytest.approx(3.0)
    assert describe(s, T0 + 64_000 + 31_000, CFG)["session_events"] == 0  # session over


def test_duplicates_and_opt_outs_are_counted_not_used():
    s, led = fold(UserState(),
                  window(T0 + 2000, ev(1, "view", T0), ev(1, "view", T0), ev(2, "click", T0 + 10, consent=False)),
                  window(T0 + 4000, ev(1, "view", T0 + 3000)))  # same event_id, later window
    assert led == {"used": 1, "duplicate": 2, "opted_out": 1, "late": 0}
    assert describe(s, T0 + 4000, CFG)["views_1m"] == 1 and s.last_click_ts == 0


def test_event_ids_are_forgotten_after_the_dedup_horizon():
    s, _ = fold(UserState(), window(T0 + 2000, ev(1, "view", T0)))
    s, led = fold(s, window(T0 + 700_000, ev(1, "view", T0 + 699_000)))
    assert led["used"] == 1


def test_event_ids_are_remembered_at_least_the_horizon_and_at_most_a_bucket_longer():
    size = 600_000 // 24  # CFG.dedup_horizon_s / DEDUP_BUCKETS
    t = T0 - T0 % size  # the start of a bucket
    s, _ = fold(UserState(), window(t + 2000, ev(1, "view", t)))
    assert s.seen == {str(t // size): "e1"}  # ids only, bucketed by event time
    # a window whose horizon is inside e1's bucket still remembers it (at most 1/24 of the horizon longer)
    _, led = fold(s, window(t + 600_000 + size - 1, ev(1, "view", t + 600_000)))
    assert led["duplicate"] == 1
    # once the horizon passes the bucket's end, e1 is forgotten
    _, led = fold(s, window(t + 600_000 + size, ev(1, "view", t + 600_000)))
    assert led["used"] == 1
    # never forgotten before the horizon: the last ms of the bucket, a full horizon on
    s2, _ = fold(UserState(), window(t + size, ev(2, "view", t + size - 1)))
    _, led = fold(s2, window(t + size - 1 + 600_000, ev(2, "view", t + 600_000)))
    assert led["duplicate"] == 1


def test_every_id_of_a_window_is_bucketed_by_the_dedup_bucket_and_forgotten_with_it():
    size = 600_000 // 24
    t = T0 - T0 % size
    s, _ = fold(UserState(), window(t + 2000, ev(1, "view", t), ev(2, "click", t + 10), ev(3, "view", t + 20)))
    assert s.seen == {str(t // size): "e1 e2 e3"}
    _, led = fold(s, window(t + 600_000 + size, ev(1, "view", t + 600_000), ev(2, "view", t + 600_001),
                            ev(3, "view", t + 600_002)))
    assert led["used"] == 3


def test_a_state_written_before_the_buckets_still_drops_duplicates():
    old = UserState(window_end=T0 + 2000, feature_ts=T0, as_of=T0 + 2000, seen={"e1": T0, "e2": T0 + 5})
    s, led = fold(UserState.decode(old.encode()), window(T0 + 4000, ev(1, "view", T0 + 3000), ev(3, "view", T0 + 3000)))
    assert led["duplicate"] == 1 and led["used"] == 1
    assert sorted(" ".join(s.seen.values()).split()) == ["e1", "e2", "e3"]


def test_replayed_window_changes_nothing():
    d = window(T0 + 2000, ev(1, "view", T0), ev(2, "view", T0 + 5))
    s1, _ = fold(UserState(), d)
    s2, led = fold(s1, d)
    assert s2 == s1 and led == {"used": 0, "duplicate": 0, "opted_out": 0, "late": 0}


def test_new_events_of_a_closed_window_after_a_restart_count_as_late():
    """After a restart the watermark starts low, so records the uninterrupted job sent to the late
    topic can reach a window the state has already passed: counted late, state unchanged."""
    s1, _ = fold(UserState(), window(T0 + 4000, ev(1, "view", T0 + 3000)))
    # e7 arrives twice: the uninterrupted job's late topic holds both records, so both count
    s2, led = fold(s1, window(T0 + 2000, ev(1, "view", T0 + 3000), ev(7, "click", T0 + 100), ev(7, "click", T0 + 100),
                              ev(8, "view", T0 + 200)))
    assert s2 == s1 and led == {"used": 0, "duplicate": 0, "opted_out": 0, "late": 3}


def test_state_round_trips_through_json():
    s, _ = fold(UserState(), window(T0 + 2000, ev(1, "purchase", T0, value=3.5)))
    assert UserState.decode(s.encode()) == s


def test_stored_weights_keep_six_significant_digits():
    """Decayed weights are stored rounded (17-digit doubles do not pack); each stays within 5e-6 of
    its exact value, and every path that folds (the job, the offline replay) rounds the same way."""
    s1, _ = fold(UserState(), window(T0 + 2000, ev(1, "view", T0, item="a"), ev(2, "click", T0 + 700, item="b")))
    s2, _ = fold(s1, window(T0 + 9000, ev(3, "view", T0 + 8000, item="b")))
    decay = 2.0 ** (-7000 / (CFG.interest_half_life_s * 1000))
    exact = {"a": EVENT_WEIGHTS["view"] * decay, "b": EVENT_WEIGHTS["click"] * decay + EVENT_WEIGHTS["view"]}
    assert s2.items == pytest.approx(exact, rel=5e-6) and s2.items != exact
    stored = [*s2.items.values(), *s2.affinity.values(), *s2.categories_long.values(),
              *(w for m in s2.memory.values() for w in m[:len(CFG.memory_half_lives_s)])]
    assert all(float(f"{w:.6g}") == w for w in stored)
    # past MEMORY_RESCALE half-lives the memory's weights move to a new landmark: rounded too
    later = T0 + int(65 * min(CFG.memory_half_lives_s) * 1000)
    s3, _ = fold(s2, window(later + 2000, ev(4, "view", later, item="c")))
    assert s3.memory_landmark == later + 2000 and {"a", "b", "c"} <= s3.memory.keys()
    assert s3.memory["a"][0] != s2.memory["a"][0]  # rescaled
    assert all(float(f"{w:.6g}") == w for m in s3.memory.values() for w in m[:len(CFG.memory_half_lives_s)])


def test_matrix_rows_equal_single_rows_and_affinity_shares():
    s, _ = fold(UserState(), window(T0 + 2000, ev(1, "view", T0, "a", "c1"), ev(2, "view", T0 + 1, "b", "c2"),
                                    ev(3, "click", T0 + 2, "a", "c1")))
    cands = [Candidate("a", "c1", 1.0, 1.0, 0.5, 1.0, 0.2, 0.1), Candidate("b", "c2", 20.0, 0.5, 1.0, 0.3, 1.0, 0.05),
             Candidate("z", "c9", 0.0, 0.0, 0.0, 0.0, 0.0, 0.02)]
    m = user_item_matrix(s, T0 + 3000, CFG, cands)
    names = feature_names(CFG)
    assert m.shape == (3, len(names))
    for n in range(3):
        assert list(m[n]) == pytest.approx(user_item_features(s, T0 + 3000, CFG, cands[n]))
    assert m[0, names.index("category_affinity")] == pytest.approx(3 / 4)
    assert m[2, names.index("item_affinity")] == 0.0
    assert m[1, names.index("item_price_log")] == pytest.approx(np.log1p(20.0))
    assert m[1, names.index("item_popularity_1h")] == 0.5 and m[1, names.index("item_popularity_1d")] == 1.0
    assert m[0, names.index("item_conversion")] == pytest.approx(0.1)


def test_item_statistics_rescale_keeps_ratios():
    b = TrendingBoards(half_life_s=1.0, long_half_life_s=10.0)
    b.add(T0, "a", "c", (2, 0, 0, 0))
    b.add(T0, "b", "c", (1, 0, 0, 1))
    b.add(T0 + 300_000, "b", "c", (0, 0, 0, 0))  # 300 half-lives later forces a rescale
    assert b.landmark == T0 + 300_000
    top = b.top(2)
    assert top[0][0] == "b" and top[0][1] / top[1][1] == pytest.approx(9 / 2)
    assert b.top(5, "c") == top
    st = b.stats({"a", "b"})
    assert st.views["b"] / st.views["a"] == pytest.approx(0.5) and st.buys[ALL] == pytest.approx(st.buys["b"])


def test_conversion_is_smoothed_toward_the_global_rate():
    b = TrendingBoards(half_life_s=3600.0, long_half_life_s=86400.0)
    for n in range(100):
        b.add(T0, f"i{n}", "c", (10, 0, 0, 1))  # global rate 0.1
    b.add(T0, "new", "c", (1, 0, 0, 1))  # one view, one purchase
    pool = CandidatePool(b.top(200), {}, {}, b.stats({"new", "i1"}), prior_weight=20.0)
    assert pool.prior == pytest.approx(101 / 1001)
    assert pool.candidate("new").conversion == pytest.approx((1 + 20 * pool.prior) / 21)
    assert pool.candidate("i1").conversion == pytest.approx((1 + 20 * pool.prior) / 30)
    assert pool.candidate("unseen").conversion == pytest.approx(pool.prior)


def test_candidates_union_trending_category_and_own_items():
    s, _ = fold(UserState(), window(T0 + 2000, ev(1, "view", T0, "own1", "c2"), ev(2, "view", T0 + 1, "own1", "c2")))
    pool = CandidatePool([("g1", 10.0), ("g2", 5.0)], {"c2": [("k1", 4.0), ("g2", 5.0)]},
                         {"g1": ("c1", 3.0), "k1": ("c2", 1.0)})
    cands = gather_candidates(s, pool, top_categories=1, own_history=5)
    assert [c.item_id for c in cands] == ["g1", "g2", "k1", "own1"]
    assert cands[0].popularity == 1.0 and cands[2].popularity == 0.4
    assert cands[3].category == "unknown" and cands[3].popularity == 0.0


def test_segment_candidates_come_after_categories_and_only_from_the_users_segments():
    s, _ = fold(UserState(), window(T0 + 2000, ev(1, "view", T0, "own1", "c2")))
    pool = CandidatePool([("g1", 10.0)], {"c2": [("k1", 4.0)]}, {},
                         segment_top={"vip": [("v1", 3.0), ("k1", 2.0), ("v2", 1.0)], "new": [("n1", 5.0)]})
    got = gather_candidates(s, pool, top_categories=1, own_history=5, segments=["vip"], per_segment=2)
    assert [c.item_id for c in got] == ["g1", "k1", "v1", "own1"]  # k1 once; v2 past per_segment; no n1
    assert [c.item_id for c in gather_candidates(s, pool, 1, 5, segments=["vip"])] == ["g1", "k1", "own1"]


def test_segment_window_counts_weigh_each_segments_users_consented_events():
    a, b = Event("e1", "view", "i1", "c", T0, 0.0, True), Event("e2", "purchase", "i1", "c", T0 + 1, 9.0, True)
    hidden = Event("e3", "view", "i2", "c", T0 + 2, 0.0, False)
    rows = segment_window_counts([(T0 + 10, "u1", [a, b, hidden]), (T0 + 10, "u2", [a]), (T0 + 10, "u3", [a])],
                                 {"u1": ["vip", "buyers"], "u2": ["vip"], "u3": []})
    assert sorted(rows) == sorted([(T0 + 10, "vip", "i1", 2 * EVENT_WEIGHTS["view"] + EVENT_WEIGHTS["purchase"]),
                                   (T0 + 10, "buyers", "i1", EVENT_WEIGHTS["view"] + EVENT_WEIGHTS["purchase"])])


def test_popular_with_is_given_for_the_first_segment_board_holding_the_item():
    facts = ReasonFacts(UserState(), 3, {}, 1000, {"vip": {"i1"}, "buyers": {"i1", "i2"}})
    assert facts.of("i1") == ("popular_with:vip",) and facts.of("i2") == ("popular_with:buyers",)
    assert facts.of("i3") == ()


def test_item_window_counts_take_consented_events_per_item_window():
    def ev(n, etype, item, consent=True):
        return Event(f"e{n}", etype, item, "c1", 1000 + n, 0.0, consent).encode()

    deltas = [WindowDelta("u1", 2000, ";".join([ev(1, "view", "a"), ev(2, "click", "a"), ev(3, "view", "b", False)])),
              WindowDelta("u2", 2000, ";".join([ev(4, "purchase", "a"), ev(4, "purchase", "a")])),  # a duplicate counts
              WindowDelta("u2", 4000, ev(5, "add_to_cart", "b"))]
    windows = [(d.window_end, parse_events(d.events), [("a", "c1")] if d.window_end == 2000 and d.user_id == "u2" else [])
               for d in deltas]  # u2's purchase of a as a repeat purchase (apply_window's rebought)
    assert sorted(item_window_counts(windows)) == [(2000, "a", "c1", 1, 1, 0, 2, 1), (4000, "b", "c1", 0, 0, 1, 0, 0)]


def ctl(n, action, ts):
    """A control record as the job turns it into a window line (consent stays true)."""
    return Event(f"ctl-0-{n}", action, "", "", ts, 0.0, True)


def test_erase_forgets_the_history_and_keeps_only_event_ids():
    before, _ = fold(UserState(), window(T0 + 2000, ev(1, "view", T0, cat="c1"), ev(2, "purchase", T0 + 500, value=9.0),
                                         ev(3, "click", T0 + 1000, cat="c2")))
    assert before.personalized()
    s, led = fold(before, window(T0 + 4000, ctl(1, "erase", T0 + 2500), ev(1, "view", T0 + 3000)))
    f = describe(s, T0 + 4000, CFG)
    assert (f["views_1h"], f["purchases_1h"], f["clicks_1h"], f["spend_1h"], f["sessions_1h"]) == (0, 0, 0, 0.0, 0)
    assert f["recency_s"] == f["since_click_s"] == f["since_purchase_s"] == NEVER_S
    assert (s.affinity, s.items, s.top_categories(3), s.baskets) == ({}, {}, [], [])
    assert not s.personalized() and s.erased_ts == T0 + 2500
    # the ids stay (a duplicate after the erase is still one), and feature_ts never goes back
    assert led == {"used": 0, "duplicate": 1, "opted_out": 0, "late": 0} and s.feature_ts == T0 + 2500
    after, _ = fold(s, window(T0 + 6000, ev(4, "view", T0 + 5000, cat="c3")))
    assert after.personalized() and describe(after, T0 + 6000, CFG)["views_1h"] == 1
    assert after.top_categories(3) == ["c3"] and describe(after, T0 + 6000, CFG)["recency_s"] == pytest.approx(1.0)


def test_opt_out_counts_the_users_events_until_opt_in():
    s, led = fold(UserState(),
                  window(T0 + 2000, ev(1, "view", T0), ctl(1, "opt_out", T0 + 500), ev(2, "click", T0 + 1000)),
                  window(T0 + 4000, ev(3, "view", T0 + 3000)))
    assert led == {"used": 1, "duplicate": 0, "opted_out": 2, "late": 0}
    assert s.opted_out and not s.personalized() and describe(s, T0 + 4000, CFG)["views_1h"] == 0
    s, led = fold(s, window(T0 + 6000, ctl(2, "opt_in", T0 + 4500), ev(4, "view", T0 + 5000)))
    assert led["used"] == 1 and not s.opted_out and s.personalized()
    assert describe(s, T0 + 6000, CFG)["views_1h"] == 1  # only what came after the opt-in


def test_control_records_are_counted_once_and_replays_change_nothing():
    d = window(T0 + 2000, ev(1, "view", T0), ctl(7, "erase", T0 + 1000))
    s, ledger = apply_window(UserState(), d, CFG)
    assert (ledger.erase, ledger.opt_out, ledger.opt_in) == (1, 0, 0)
    again, ledger = apply_window(s, d, CFG)  # a replay after a restart
    assert again is s and ledger.controls() == {"erase": 0, "opt_out": 0, "opt_in": 0} and ledger.late == 0


def test_shared_statistics_skip_control_records_and_opted_out_stretches():
    es = [ev(1, "view", T0), ctl(1, "opt_out", T0 + 1), ev(2, "view", T0 + 2), ctl(2, "opt_in", T0 + 3),
          ev(3, "view", T0 + 4)]
    assert [e.event_id for e in shared_events(es, False)] == ["e1", "e3"]
    assert [e.event_id for e in shared_events([ev(1, "view", T0)], True)] == []
    plain = [ev(1, "view", T0)]
    assert shared_events(plain, False) is plain


def test_a_profile_of_prices_that_sum_past_the_largest_double_still_encodes():
    """Two valid purchases of 1e308 sum to inf in a window; the profile (JSON) must still be
    written, or the job's whole batch write fails and Flink replays it forever."""
    events = ";".join(Event(f"p{n}", "purchase", f"i{n}", "c1", T0 + n * 1000, 1e308, True).encode() for n in range(2))
    s, _ = apply_window(UserState(), WindowDelta("u1", T0 + 2000, events), CFG)
    p = profile(s, CFG)
    assert p.features["spend_1h"] == float("inf")  # what the model's input holds
    back = keys.Profile.decode(p.encode())
    assert back.features["spend_1h"] == sys.float_info.max and all(math.isfinite(v) for v in back.features.values())
