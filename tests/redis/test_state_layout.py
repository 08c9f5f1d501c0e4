"""The users' states in Redis keep the shape they were written with: a job whose config would
misread them does not start (the cluster tier runs the same refusal across a real savepoint)."""

from __future__ import annotations

import json

import pytest

from contract import keys
from contract.config import ConfigError, load_config
from jobs.store import RedisStore, check_state_layout
from udfs.features import state_layout


def test_a_job_whose_config_reshapes_the_stored_states_does_not_start(redis_db):
    port, r = redis_db
    cfg = load_config(None, {"redis.port": port})
    check_state_layout(load_config(None, {"redis.port": port, "features.window_slices": 6}))  # no state yet
    RedisStore(cfg, r).write({}, {})
    assert json.loads(r.get(keys.STATE_LAYOUT)) == state_layout(cfg.features)
    check_state_layout(load_config(None, {"redis.port": port, "scoring.top_k": 10}))  # not the state's shape
    with pytest.raises(ConfigError, match=r"features\.window_slices was 12, the config says 6 \(the slices"):
        check_state_layout(load_config(None, {"redis.port": port, "features.window_slices": 6}))
    with pytest.raises(ConfigError, match=r"feature_names was .*features\.monetary_windows_s was"):
        check_state_layout(load_config(None, {"redis.port": port, "features.monetary_windows_s": [604800.0]}))
    RedisStore(load_config(None, {"redis.port": port, "features.window_slices": 6}), r).write({}, {})
    assert json.loads(r.get(keys.STATE_LAYOUT)) == state_layout(cfg.features)  # the first shape stays
