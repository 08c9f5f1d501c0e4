import json
from collections import Counter

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
