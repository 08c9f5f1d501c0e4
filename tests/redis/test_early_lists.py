"""Early lists against a real Redis (udfs.speculation through udfs.ranking.BatchRanker): before a
user's window is final, the profile and the list are those of the events seen so far, folded over
the stored state; the stored state, the ledger and the item statistics wait for the final window;
the final window writes the state, scores again only when it changed what the list was made from,
and corrects the list when the speculation missed an event."""

from __future__ import annotations

import time

from contract import keys
from contract.config import load_config
from jobs.store import RedisStore
from udfs.features import Event, UserState, WindowDelta, apply_window, feature_names, profile
from udfs.ranking import BatchRanker
from udfs.scorer import ModelWatcher
from udfs.speculation import window_end_of


def early(user: str, events: list[Event]) -> WindowDelta:
    return WindowDelta(user, 0, ";".join(e.encode() for e in events))


def final(user: str, events: list[Event], mb_ms: int) -> WindowDelta:
    return WindowDelta(user, window_end_of(events[0].ts, mb_ms), ";".join(e.encode() for e in events))


def read_list(r, user: str) -> keys.RecList | None:
    raw = r.get(keys.rec_key(user))
    return keys.RecList.decode(raw) if raw else None


def ranker_at(redis_db, model_dir, min_interval_s: float) -> tuple[BatchRanker, object, int, int]:
    """(ranker, Redis client, micro-batch ms, the start of a window ten seconds ago)."""
    port, r = redis_db
    cfg = load_config(None, {"redis.port": port, "scoring.model_dir": str(model_dir),
                             "scoring.min_interval_s": min_interval_s, "candidates.refresh_s": 0.01})
    mb = int(cfg.features.micro_batch_s * 1000)
    ranker = BatchRanker(cfg, ModelWatcher(model_dir, feature_names(cfg.features), 0), RedisStore(cfg, r))
    return ranker, r, mb, (int(time.time() * 1000) - 10_000) // mb * mb


def test_early_rows_write_the_list_of_the_events_seen_so_far_and_the_final_window_corrects_it(redis_db, model_dir):
    ranker, r, mb, t0 = ranker_at(redis_db, model_dir, 0.0)
    f = ranker.cfg.features
    a = [Event("e1", "view", "i1", "c1", t0 + 100, 0.0, True), Event("e2", "click", "i2", "c1", t0 + 300, 0.0, True)]
    b = Event("e3", "purchase", "i3", "c2", t0 + 500, 12.5, True)  # arrives late, but before the watermark
    late_in_next = Event("e4", "view", "i4", "c2", t0 + mb + 10, 0.0, True)

    ranker.rank([early("u1", a)])
    listed = read_list(r, "u1")
    assert listed is not None and listed.feature_ts == t0 + 300  # the newest event seen
    assert r.get(keys.feat_key("u1")) is None  # the state waits for the final window
    assert r.hgetall(keys.LEDGER) in ({}, {k.encode(): b"0" for k in keys.LEDGER_FIELDS})
    # the profile is the features over exactly the events seen so far
    seen_so_far, _ = apply_window(UserState(), WindowDelta("u1", t0 + mb, ""), f, a)
    stored = keys.Profile.decode(r.get(keys.profile_key("u1")))
    assert stored == profile(seen_so_far, f)

    ranker.rank([early("u1", [late_in_next])])  # the next window opens: folded over the first
    spec = read_list(r, "u1")
    assert spec.feature_ts == t0 + mb + 10

    # the first window is final with an event the early rows never brought (b): the state holds
    # it, and the list is scored again over the final state and the pending event
    ranker.rank([final("u1", [*a, b], mb)])
    state = UserState.decode(r.get(keys.feat_key("u1")))
    assert state.window_end == t0 + mb and state.feature_ts == t0 + 500
    assert [ts for _, ts in ranker.written] == [t0 + mb + 10]  # the users scored in the batch
    expected, _ = apply_window(state, WindowDelta("u1", t0 + 2 * mb, ""), f, [late_in_next])
    assert keys.Profile.decode(r.get(keys.profile_key("u1"))) == profile(expected, f)
    assert int(r.hget(keys.LEDGER, "used")) == 3  # counted when final, once

    # the second window is final with exactly what was speculated: the state is written, the
    # list was made from it already, so nothing is scored
    before = read_list(r, "u1")
    ranker.rank([final("u1", [late_in_next], mb)])
    assert UserState.decode(r.get(keys.feat_key("u1"))).window_end == t0 + 2 * mb
    assert ranker.written == []
    assert read_list(r, "u1") == before
    assert int(r.hget(keys.LEDGER, "used")) == 4
    assert ranker.speculation.pending_users() == set()  # nothing left pending


def test_scoring_waits_for_min_interval_and_a_final_window_that_leaves_nothing_pending_does_not(redis_db, model_dir):
    ranker, r, mb, t0 = ranker_at(redis_db, model_dir, 3600.0)
    first = Event("e1", "view", "i1", "c1", t0 + 100, 0.0, True)
    second = Event("e2", "view", "i2", "c1", t0 + 200, 0.0, True)
    ranker.rank([early("u2", [first])])
    assert read_list(r, "u2").feature_ts == t0 + 100
    ranker.rank([early("u2", [second])])  # within min_interval_s: deferred
    assert read_list(r, "u2").feature_ts == t0 + 100 and "u2" in ranker.deferred
    assert keys.Profile.decode(r.get(keys.profile_key("u2"))).feature_ts == t0 + 100  # the profile waits with it
    ranker.rank([final("u2", [first, second], mb)])  # final: scored whatever the interval
    assert read_list(r, "u2").feature_ts == t0 + 200


def test_a_pending_erase_waits_for_its_final_window(redis_db, model_dir):
    ranker, r, mb, t0 = ranker_at(redis_db, model_dir, 0.0)
    view = Event("e1", "view", "i1", "c1", t0 + 100, 0.0, True)
    erase = Event("e2", "erase", "", "unknown", t0 + mb + 200, 0.0, True)  # in the next window
    ranker.rank([final("u3", [view], mb)])
    listed = read_list(r, "u3")
    assert listed is not None
    ranker.rank([early("u3", [erase])])  # no speculation over a user's request
    assert read_list(r, "u3") == listed
    ranker.rank([final("u3", [erase], mb)])
    assert read_list(r, "u3") is None


def test_a_backlog_is_not_speculated_on(redis_db, model_dir):
    """Events further behind the wall clock than features.early_fire_max_lag_s (a job catching
    up): no early list; the final window writes one."""
    ranker, r, mb, _ = ranker_at(redis_db, model_dir, 0.0)
    old = (int(time.time() * 1000) - 3_600_000) // mb * mb
    events = [Event("b1", "view", "i1", "c1", old + 100, 0.0, True)]
    ranker.rank([early("u4", events)])
    assert read_list(r, "u4") is None and ranker.speculation.pending_users() == set()
    ranker.rank([final("u4", events, mb)])
    assert read_list(r, "u4").feature_ts == old + 100


def test_a_final_window_while_held_back_writes_the_final_state_and_its_profile_not_the_pending_events(redis_db, model_dir):
    ranker, r, mb, t0 = ranker_at(redis_db, model_dir, 3600.0)
    f = ranker.cfg.features
    seen = Event("e1", "view", "i1", "c1", t0 + 100, 0.0, True)
    missed = Event("e2", "click", "i2", "c1", t0 + 300, 0.0, True)  # the early rows never brought it
    pending = Event("e3", "view", "i3", "c2", t0 + mb + 50, 0.0, True)  # the next window's
    ranker.rank([early("u4", [seen])])
    listed = read_list(r, "u4")
    assert listed.feature_ts == t0 + 100
    # in one batch: the first window final (with the missed event) and an early row of the next;
    # scored less than min_interval_s ago with an event pending, so the list waits
    ranker.rank([final("u4", [seen, missed], mb), early("u4", [pending])])
    assert "u4" in ranker.deferred and read_list(r, "u4") == listed
    state = UserState.decode(r.get(keys.feat_key("u4")))
    assert state.window_end == t0 + mb and state.feature_ts == t0 + 300
    stored = keys.Profile.decode(r.get(keys.profile_key("u4")))
    assert stored == profile(state, f)  # the final state's, without the pending event
    assert stored.feature_ts == t0 + 300
