"""[quarantine]'s rules on the offline path (models.offline.quarantine, which the job's OVER windows
equal: tests/flink) and what the fold does with a quarantined event."""

from __future__ import annotations

from contract.config import QuarantineConfig, load_config
from contract.schema import QUARANTINED, Interaction
from models.evaluation import Baselines, relevant_items
from models.offline import quarantine
from models.training import relevance
from udfs.features import Event, UserState, WindowDelta, apply_window, shared_events

T = 1_700_000_000_000


def ev(n: int, user: str, ts: int, type_: str = "view", item: str = "i1", value: float = 0.0) -> Interaction:
    return Interaction(f"e{n}", user, item, type_, ts, value, "c1", True)


def marked(events) -> list[str]:
    return [e.event_id for e in events if e.type.startswith(QUARANTINED)]


def test_rate_counts_a_users_interactions_within_the_minute_up_to_each():
    events = [ev(n, "bot", T + n * 10_000) for n in range(8)] + [ev(9, "person", T), ev(10, "bot", T + 30_000, "erase")]
    out = quarantine(events, QuarantineConfig(max_events_per_minute=5))
    # at T+50s the bot has 6 interactions in [T-10s, T+50s]; at T+70s the window [T+10s, T+70s] holds 7
    assert marked(out) == ["e5", "e6", "e7"]
    assert [e.type for e in out if e.event_id == "e10"] == ["erase"]  # a request: never counted nor marked


def test_price_judges_a_purchase_against_the_items_other_purchases():
    buys = [ev(n, f"u{n}", T + n, "purchase", value=10.0) for n in range(5)]
    odd = [ev(10, "x", T + 10, "purchase", value=1000.0), ev(11, "y", T + 11, "purchase", value=10.5),
           ev(12, "z", T + 12, "purchase", value=0.1), ev(13, "w", T + 13, "purchase", value=0.0)]
    out = quarantine(buys + odd, QuarantineConfig(price_factor=50.0))
    # 100x and about 1/100 of the usual value; after the wild one a normal price is still normal
    # (the geometric mean barely moves), and a purchase of value 0 is not judged
    assert marked(out) == ["e10", "e12"]


def test_the_fold_counts_a_quarantined_event_remembers_it_and_keeps_it_out():
    cfg = load_config(None).features
    events = [Event("e1", QUARANTINED + "view", "i1", "c1", T, 0.0, True), Event("e1", "view", "i1", "c1", T, 0.0, True),
              Event("e2", "view", "i2", "c1", T + 1, 0.0, True)]
    state, ledger = apply_window(UserState(), WindowDelta("u1", T + 2000, ";".join(e.encode() for e in events)), cfg)
    assert (ledger.quarantined, ledger.duplicate, ledger.used) == (1, 1, 1)
    assert state.feature_ts == T + 1 and list(state.memory) == ["i2"]  # the quarantined view made nothing
    assert [e.event_id for e in shared_events(events, False)] == ["e1", "e2"]  # not the marked e1: item stats skip it
    assert all(not e.type.startswith(QUARANTINED) for e in shared_events(events, False))


def test_evaluation_and_labels_leave_quarantined_interactions_out():
    """What the features do not use, the baselines, the held-out relevance and the training labels
    do not count either: a bot's thousand views do not make its item popular nor relevant."""
    bot = [Interaction(f"b{n}", "bot", "spam", QUARANTINED + "view", T + n, 0.0, "c1", True) for n in range(1000)]
    people = [ev(n, f"u{n}", T + n, item="good") for n in range(3)] + [ev(9, "u9", T + 9, item="ok")]
    baselines = Baselines.fit(bot + people, T + 10_000)
    assert baselines.popular[:2] == ["good", "ok"] and "spam" not in baselines.popular
    assert relevant_items(bot + people) == {"u0": {"good"}, "u1": {"good"}, "u2": {"good"}, "u9": {"ok"}}
    assert relevance(bot[:3] + [ev(1, "bot", T, "purchase", "real", 5.0)], graded=True, gap_ms=1000) == {"real": 4}
