import hashlib
import json
from collections import Counter

import numpy as np
import pytest

from contract.schema import InvalidEvent, validate
from traffic.simulator import Simulator

T0 = 1_700_000_000_000


def test_same_seed_same_stream():
    a = list(Simulator(seed=5, users=50, items=100).records(T0, 100, 500, 0.05))
    b = list(Simulator(seed=5, users=50, items=100).records(T0, 100, 500, 0.05))
    assert a == b
    assert a != list(Simulator(seed=6, users=50, items=100).records(T0, 100, 500, 0.05))


def test_stream_is_valid_ordered_and_funnel_shaped():
    evs = list(Simulator(seed=1, users=100, items=300).events(T0, 50, 5000))
    assert len(evs) == 5000
    assert all(validate(json.dumps(e)).user_id == e["user_id"] for e in evs)
    assert [e["ts"] for e in evs] == sorted(e["ts"] for e in evs)
    types = Counter(e["type"] for e in evs)
    assert types["view"] > types["click"] > types["add_to_cart"] > types["purchase"] > 0
    assert all(e["value"] > 0 for e in evs if e["type"] == "purchase")
    duration_s = (evs[-1]["ts"] - evs[0]["ts"]) / 1000
    assert 50 < duration_s < 200  # about 5000 events / 50 per second


def test_malformed_records_are_exactly_the_invalid_ones():
    recs = list(Simulator(seed=3, users=50, items=100).records(T0, 100, 3000, 0.1))
    flagged = [v for _, v, ok in recs if not ok]
    assert 200 < len(flagged) < 400
    for _, value, ok in recs:
        try:
            validate(value)
            assert ok
        except InvalidEvent:
            assert not ok


def purchase_gaps(sim: Simulator, count: int, rate: float) -> dict[int, list[int]]:
    """Replenishable item index -> ms between a user's consecutive purchases of it."""
    last: dict[tuple[str, str], int] = {}
    gaps: dict[int, list[int]] = {}
    for ev in sim.events(T0, rate, count):
        if ev["type"] != "purchase":
            continue
        key, idx = (ev["user_id"], ev["item_id"]), int(ev["item_id"][1:])
        if key in last and idx in sim.interval_ms:
            gaps.setdefault(idx, []).append(ev["ts"] - last[key])
        last[key] = ev["ts"]
    return gaps


def repeat_share(evs: list[dict]) -> float:
    buys = [(e["user_id"], e["item_id"]) for e in evs if e["type"] == "purchase"]
    return 1 - len(set(buys)) / len(buys)


def test_replenishment_off_is_the_old_stream():
    # sha256 of these records from the simulator before replenishment existed (git show
    # d36cdc3:traffic/simulator.py, the same loop): replenishment=0 must not move a single draw
    h = hashlib.sha256()
    for key, value, ok in Simulator(seed=1, users=100, items=300).records(T0, 50, 5000, 0.05):
        h.update(key.encode() + b"\t" + value + (b"\t1\n" if ok else b"\t0\n"))
    assert h.hexdigest() == "df6f926bc8251d8d21b43d6fda4ee6327c7101bbe9f8b5491f0cd34c86147df7"


def test_replenishment_keeps_catalog_and_users():
    off, on = Simulator(seed=2, users=50, items=200), Simulator(seed=2, users=50, items=200, replenishment=0.3)
    assert on.items == off.items
    assert [u.favourites for u in on.users] == [u.favourites for u in off.users]
    assert len(on.interval_ms) == 60 and not off.interval_ms
    assert all(u.staples and set(u.staples) <= set(on.interval_ms) for u in on.users)
    with pytest.raises(ValueError, match="share of the catalog"):
        Simulator(replenishment=1.5)


def test_replenishment_makes_users_rebuy():
    # 20,000 events at 0.002/s span about 115 days: several 10..40-day intervals
    sim = Simulator(seed=1, users=100, items=300, replenishment=0.3)
    evs = list(sim.events(T0, 0.002, 20_000))
    assert [e["ts"] for e in evs] == sorted(e["ts"] for e in evs)
    assert all(validate(json.dumps(e)).user_id == e["user_id"] for e in evs[:2000])
    baseline = repeat_share(list(Simulator(seed=1, users=100, items=300).events(T0, 0.002, 20_000)))
    assert repeat_share(evs) > 0.4 > baseline


def test_repeat_intervals_follow_the_item_interval():
    sim = Simulator(seed=3, users=100, items=300, replenishment=0.3)
    gaps = purchase_gaps(sim, 20_000, 0.002)
    ratios = [g / sim.interval_ms[idx] for idx, gs in gaps.items() for g in gs]
    assert len(ratios) > 300
    assert 0.5 < float(np.median(ratios)) < 2.0
    # item-specific: items with longer intervals are rebought after longer gaps
    typical = [(sim.interval_ms[idx], float(np.median(gs))) for idx, gs in gaps.items() if len(gs) >= 3]
    assert len(typical) > 30
    assert np.corrcoef(np.log(typical).T)[0, 1] > 0.5
