"""Reason codes against a real Redis: the ranker writes up to three reasons per listed item, and
every one is a fact checked here against the events the user sent and the boards in Redis, not
against the code that made it."""

from __future__ import annotations

import math
import random
import time

import numpy as np

from contract import keys
from contract.config import load_config
from jobs.store import RedisStore
from udfs.features import Event, WindowDelta, feature_names
from udfs.ranking import BatchRanker
from udfs.reasons import MAX_REASONS, MODEL_CODES
from udfs.scorer import ModelWatcher, OnnxScorer


def test_every_reason_is_a_fact(redis_db, model_dir):
    port, r = redis_db
    cfg = load_config(None, {"redis.port": port, "scoring.model_dir": str(model_dir), "candidates.refresh_s": 0.01,
                             "scoring.reasons_recent_s": 3600.0, "scoring.reason_top_k": 5,
                             "candidates.per_segment": 15,
                             "segments.rules": [{"name": "buyers", "when": "purchases_7d >= 2"},
                                                {"name": "lookers", "when": "purchases_7d == 0"}]})
    ranker = BatchRanker(cfg, ModelWatcher(model_dir, feature_names(cfg.features), 0), RedisStore(cfg, r))
    rng = random.Random(5)
    users = [f"u{n}" for n in range(80)]
    t0 = int(time.time() * 1000) - 6 * 3600_000
    sent: dict[str, list[Event]] = {u: [] for u in users}
    been: dict[str, set[str]] = {"buyers": set(), "lookers": set()}
    category = {f"i{n}": f"c{n % 5}" for n in range(40)}
    for step, end in enumerate((t0, t0 + 2 * 3600_000, t0 + 4 * 3600_000)):  # windows hours apart
        deltas = []
        for u in users:
            events = [Event(f"{u}-{step}-{m}", rng.choice(["view", "view", "click", "purchase"]), item, category[item],
                            end - 1000 + m, 12.0, True)
                      for m, item in enumerate(rng.sample(sorted(category), 2 + rng.randrange(3)))]
            sent[u] += events
            deltas.append(WindowDelta(u, end, ";".join(e.encode() for e in events)))
        # the boards as the ranker's pool reads them at the start of this batch (every user's list is
        # made by the last one)
        segment_boards = {s: {i.decode() for i in r.zrevrange(keys.trending_segment_key(s), 0, 14)}
                          for s in ("buyers", "lookers")}
        ranker.rank(deltas)
        for u in users:  # who was in each segment when its board took this batch's events
            for s in keys.Profile.decode(r.get(keys.profile_key(u))).segments:
                been[s].add(u)
        time.sleep(0.02)  # the candidate pool refreshes from the boards these windows wrote

    per_category = cfg.candidates.per_category
    boards = {c: {i.decode() for i in r.zrevrange(keys.trending_category_key(c), 0, per_category - 1)}
              for c in set(category.values())}
    members = {s: {u for u in users if s in keys.Profile.decode(r.get(keys.profile_key(u))).segments}
               for s in segment_boards}
    assert all(members.values()), members  # both segments have users, so both boards are checked
    codes = {f"model:{code}" for _, code in MODEL_CODES} | {f"model:{n}" for n in feature_names(cfg.features)}
    seen = {"bought_before": 0, "viewed_recently": 0, "trending_in": 0, "popular_with": 0, "model": 0}
    for u in users:
        rec = keys.RecList.decode(r.get(keys.rec_key(u)))
        newest = max(e.ts for e in sent[u])
        for n, item in enumerate(rec.items):
            assert len(item.reasons) <= MAX_REASONS
            for reason in item.reasons:
                kind, _, arg = reason.partition(":")
                seen[kind] += 1
                if kind == "bought_before":
                    assert any(e.item_id == item.item_id and e.type == "purchase" for e in sent[u]), (u, item)
                elif kind == "viewed_recently":
                    assert any(e.item_id == item.item_id and e.ts >= newest - 3600_000 for e in sent[u]), (u, item)
                elif kind == "trending_in":
                    assert item.item_id in boards[arg] and category[item.item_id] == arg, (u, item)
                elif kind == "popular_with":
                    # the user is in the segment, the item is near the top of its board, and users
                    # of the segment did interact with it
                    assert u in members[arg] and item.item_id in segment_boards[arg], (u, item)
                    assert any(e.item_id == item.item_id for m in been[arg] for e in sent[m]), (u, item)
                else:
                    assert kind == "model" and reason in codes and n < 5, (u, n, item)
    assert all(seen.values()), seen  # each kind was written, so each check above ran


def test_model_contributions_explain_the_onnx_score(model_dir):
    """TreeSHAP's contributions of a row sum to the model's raw score: the reasons come from the
    model that scored the list."""
    cfg = load_config(None)
    scorer = OnnxScorer(model_dir, feature_names(cfg.features))
    assert scorer.explains
    x = np.random.default_rng(1).uniform(0, 5, size=(50, len(scorer.card.feature_names))).astype(np.float32)
    p = scorer.score(x).astype(np.float64)
    raw = scorer.contributions(x).sum(axis=1)
    assert np.allclose(1 / (1 + np.exp(-raw)), p, atol=1e-4), float(np.abs(1 / (1 + np.exp(-raw)) - p).max())
    assert not math.isnan(raw.sum())
