"""What a user's arms make the job do (udfs.arms): the ranker and candidate counts a plan takes
from the spec, the pool depth the arms need, and candidates gathered with an arm's counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from contract.config import load_config
from contract.experiments import assign, parse_experiments
from udfs.arms import NO_EXPERIMENT, baseline_weights, largest_counts, plan_for
from udfs.candidates import CandidatePool, ItemStats, gather_candidates
from udfs.features import UserState, feature_names

NOW = datetime(2026, 6, 1, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
DAY = timedelta(days=1)


def experiment(name, layer, arms, share=1.0):
    return {"name": name, "salt": name, "layer": layer, "share": share, "start": NOW - DAY, "end": NOW + DAY,
            "arms": arms}


SPEC = parse_experiments({"experiments": [
    experiment("first", "a", [{"name": "trend", "ranker": "trending", "candidates": {"trending": 7}},
                              {"name": "trend2", "ranker": "trending", "candidates": {"trending": 7}}]),
    experiment("second", "b", [{"name": "repeat", "ranker": "repeat", "candidates": {"trending": 300, "own_history": 3}},
                               {"name": "repeat2", "ranker": "repeat", "candidates": {"trending": 300, "own_history": 3}}]),
]}).spec()


def test_the_first_experiment_that_changes_the_ranker_decides_and_counts_merge_field_by_field():
    plan = plan_for(SPEC, "u1", NOW_MS)
    assert plan.arms == assign(SPEC, "u1", NOW_MS) and set(plan.arms) == {"first", "second"}
    assert plan.ranker == "trending" and plan.model_version is None
    assert plan.candidates == {"trending": 7, "own_history": 3}
    assert plan.scoring == ("trending", None)


def test_no_spec_no_experiment_or_outside_the_window_is_the_plain_plan():
    assert plan_for(None, "u1", NOW_MS) is NO_EXPERIMENT
    assert plan_for({"experiments": []} | {k: SPEC[k] for k in ("buckets", "layer_salt_prefix")}, "u1",
                    NOW_MS) is NO_EXPERIMENT
    assert plan_for(SPEC, "u1", NOW_MS + 2 * 86_400_000) is NO_EXPERIMENT
    pinned = parse_experiments({"experiments": [experiment("pin", "a", [{"name": "x", "model_version": "v0007"},
                                                                         {"name": "y", "model_version": "v0007"}])]})
    assert plan_for(pinned.spec(), "u1", NOW_MS).scoring == ("model", "v0007")


def test_the_pool_is_read_as_deep_as_the_deepest_arm():
    assert largest_counts(SPEC) == {"trending": 300, "own_history": 3}
    assert largest_counts(None) == {}


def test_an_arm_takes_its_own_share_of_a_deeper_pool():
    global_top = [(f"g{n}", 100.0 - n) for n in range(10)]
    pool = CandidatePool(global_top, {"c1": [(f"k{n}", 50.0 - n) for n in range(6)]}, {}, ItemStats(), 10.0)
    state = UserState()
    every = gather_candidates(state, pool, 0, 0)
    assert [c.item_id for c in every] == [f"g{n}" for n in range(10)]
    assert [c.item_id for c in gather_candidates(state, pool, 0, 0, trending=3)] == ["g0", "g1", "g2"]
    assert gather_candidates(state, pool, 0, 0, trending=0) == []


def test_baseline_weights_score_the_features_they_name():
    cfg = load_config(None).features
    names = feature_names(cfg)
    trending = baseline_weights("trending", cfg)
    assert trending.shape == (len(names),) and np.count_nonzero(trending) == 1
    assert names[int(np.argmax(trending))].startswith("item_popularity_")
    assert np.count_nonzero(baseline_weights("repeat", cfg)) == 3
