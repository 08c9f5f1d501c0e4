"""The job ranks each user for their experiment arms (udfs.arms) against a real Redis: the arm's
ranker (the current model, a pinned registry version, the trending baseline) and candidate counts,
the list recording the arms, assigned as the lookup services assign them."""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime, timedelta

from contract import keys
from contract.config import load_config
from contract.experiments import assign, parse_experiments, store_experiments
from jobs.store import RedisStore
from models.registry import Registry
from udfs.features import Event, UserState, WindowDelta, feature_names, seen_event_ids
from udfs.ranking import BatchRanker
from udfs.scorer import ModelWatcher

NOW = datetime.now(UTC)
DAY = timedelta(days=1)


def spec_pinning(version: str) -> dict:
    return parse_experiments({"experiments": [
        {"name": "ranker", "salt": "r-1", "share": 1.0, "start": NOW - DAY, "end": NOW + DAY,
         "arms": [{"name": "model"}, {"name": "trending", "ranker": "trending"},
                  {"name": "pinned", "model_version": version}]},
        {"name": "narrow", "salt": "n-1", "layer": "candidates", "share": 0.5, "start": NOW - DAY, "end": NOW + DAY,
         "arms": [{"name": "as-configured"},
                  {"name": "one", "candidates": {"trending": 1, "per_category": 0, "top_categories": 0,
                                                 "own_history": 0}}]},
    ]}).spec()


def windows(users: list[str], end_ms: int, rng: random.Random) -> list[WindowDelta]:
    out = []
    for n, u in enumerate(users):
        events = [Event(f"{u}-{end_ms}-{m}", rng.choice(["view", "view", "add_to_cart", "purchase"]),
                        f"i{rng.randrange(60)}", f"c{rng.randrange(5)}", end_ms - 1000 + m, 10.0, True)
                  for m in range(1 + n % 4)]
        out.append(WindowDelta(u, end_ms, ";".join(e.encode() for e in events)))
    return out


def test_the_job_ranks_each_user_for_their_arms(redis_db, model_dir):
    port, r = redis_db
    registry = Registry(model_dir.parent)
    current = json.loads((model_dir / "card.json").read_text())["version"]
    card = {k: v for k, v in json.loads((model_dir / "card.json").read_text()).items() if k != "version"}
    pinned = registry.publish({"model.onnx": (model_dir / "model.onnx").read_bytes()}, card, promote=False).name
    cfg = load_config(None, {"redis.port": port, "scoring.model_dir": str(model_dir),
                             "scoring.experiments_refresh_s": 0.01, "candidates.refresh_s": 0.01})
    ranker = BatchRanker(cfg, ModelWatcher(model_dir, feature_names(cfg.features), 0), RedisStore(cfg, r))
    rng = random.Random(3)
    users = [f"u{n}" for n in range(120)]
    t0 = int(time.time() * 1000) - 60_000
    ranker.rank(windows(users, t0, rng))  # fills the trending boards the next windows draw from
    spec = spec_pinning(pinned)
    store_experiments(r, spec, "(test)")
    time.sleep(0.02)
    ranker.rank(windows(users, t0 + 5000, rng))

    seen = {"model": 0, "trending": 0, "pinned": 0, "one": 0}
    for u in users:
        lst = keys.RecList.decode(r.get(keys.rec_key(u)))
        arms = assign(spec, u, int(time.time() * 1000))
        assert lst.extra["arms"] == arms  # the list says which arms it was ranked for
        expected_version = {"model": current, "trending": "baseline:trending", "pinned": pinned}[arms["ranker"]]
        assert lst.model_version == expected_version
        seen[arms["ranker"]] += 1
        if arms["ranker"] == "trending":  # the baseline: short-term popularity (a share of the top), highest first
            scores = [i.score for i in lst.items]
            assert scores == sorted(scores, reverse=True) and all(0.0 <= x <= 1.0 for x in scores)
        if arms.get("narrow") == "one":  # one trending item, no category or own items
            seen["one"] += 1
            assert len(lst.items) == 1
        else:
            assert len(lst.items) > 1
    assert min(seen.values()) >= 15, seen  # every arm was exercised


def test_without_experiments_every_list_comes_from_the_current_model(redis_db, model_dir):
    port, r = redis_db
    cfg = load_config(None, {"redis.port": port, "scoring.model_dir": str(model_dir)})
    ranker = BatchRanker(cfg, ModelWatcher(model_dir, feature_names(cfg.features), 0), RedisStore(cfg, r))
    users = [f"u{n}" for n in range(20)]
    ranker.rank(windows(users, int(time.time() * 1000) - 60_000, random.Random(4)))
    current = json.loads((model_dir / "card.json").read_text())["version"]
    for u in users:
        lst = keys.RecList.decode(r.get(keys.rec_key(u)))
        assert lst.model_version == current and lst.extra == {}


def test_a_state_with_only_opted_out_events_is_written_so_its_ids_are_remembered(redis_db, model_dir):
    """A user's first window holds only an event sent without consent: nothing to rank, but the
    state (its seen ids) is written, so the user's next batch, or a replay of that window after a
    restart, does not count the event again."""
    port, r = redis_db
    cfg = load_config(None, {"redis.port": port, "scoring.model_dir": str(model_dir)})
    ranker = BatchRanker(cfg, ModelWatcher(model_dir, feature_names(cfg.features), 0), RedisStore(cfg, r))
    t = int(time.time() * 1000) - 60_000
    withheld = WindowDelta("u1", t, Event("e1", "view", "i1", "c1", t - 500, 0.0, False).encode())
    assert ranker.rank([withheld]).opted_out == 1
    state = UserState.decode(r.get(keys.feat_key("u1")))
    assert state.window_end == t and "e1" in seen_event_ids(state.seen, cfg.features)
    assert r.get(keys.rec_key("u1")) is None  # nothing used: no list
    assert ranker.rank([withheld]).opted_out == 0  # the window replayed: counted once
    used = WindowDelta("u1", t + 2000, Event("e2", "view", "i2", "c1", t + 1500, 0.0, True).encode())
    assert ranker.rank([used]).used == 1
    state = UserState.decode(r.get(keys.feat_key("u1")))
    assert {"e1", "e2"} <= seen_event_ids(state.seen, cfg.features) and r.get(keys.rec_key("u1"))
