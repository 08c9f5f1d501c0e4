"""The lookup rules and the circuit breaker, without I/O."""

from __future__ import annotations

from contract import keys
from serving import lookup
from serving.core import Breaker

POPULAR = [keys.ScoredItem(f"t{n}", 1.0 - n / 10, f"c{n % 2}") for n in range(6)]
STORED = keys.RecList([keys.ScoredItem(f"i{n}", 1.0 - n / 100, f"c{n % 3}") for n in range(20)], "v0003", 1000, 1005)


def test_answer_from_list_filters_before_cutting_to_k():
    req = lookup.check_request("u1", 3, 10, 100, lookup.Filters(frozenset({"c1"}), frozenset(), frozenset({"i4"})))
    a = lookup.answer(req, STORED.encode().encode(), POPULAR, 6000)
    assert [i.item_id for i in a.items] == ["i1", "i7", "i10"]
    assert (a.model_version, a.feature_ts_ms, a.list_age_ms, a.fallback) == ("v0003", 1000, 5000, False)


def test_answer_falls_back_with_reason():
    req = lookup.check_request("u2", 2, 10, 100, lookup.Filters(exclude_categories=frozenset({"c0"})))
    cold = lookup.answer(req, None, POPULAR, 0)
    assert [i.item_id for i in cold.items] == ["t1", "t3"] and cold.fallback_reason == "no_list"
    down = lookup.answer(req, None, POPULAR, 0, "store_unavailable")
    assert down.fallback and down.fallback_reason == "store_unavailable"


def test_k_is_defaulted_and_capped():
    assert lookup.check_request("u", 0, 10, 100).k == 10
    assert lookup.check_request("u", 500, 10, 100).k == 100


def test_breaker_opens_after_consecutive_failures_and_half_opens_for_one_trial():
    now = [0.0]
    b = Breaker(failures=3, reset_s=2.0, clock=lambda: now[0])
    for _ in range(2):
        b.failure()
    b.success()  # a success resets the count
    for _ in range(3):
        assert b.allow()
        b.failure()
    assert b.state == "open" and not b.allow()
    now[0] = 2.5
    assert b.state == "half-open" and b.allow() and not b.allow()  # exactly one trial
    b.failure()  # trial failed: open again for reset_s
    assert b.state == "open" and not b.allow()
    now[0] = 5.0
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.allow() and b.allow()
