"""Segments: the rule grammar, its errors, and the job config that declares them."""

from __future__ import annotations

import pytest

from contract.config import ConfigError, parse_config
from contract.segments import SegmentRuleError, Segments, changes, compile_rule

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("when, features, holds", [
    ("spend_30d > 200 and purchases_7d >= 3", {"spend_30d": 201.0, "purchases_7d": 3.0}, True),
    ("spend_30d > 200 and purchases_7d >= 3", {"spend_30d": 200.0, "purchases_7d": 9.0}, False),
    ("spend_30d > 200 or not (views_1d < 5)", {"spend_30d": 0.0, "views_1d": 5.0}, True),
    ("0 < views_1d <= 2", {"views_1d": 2.0}, True),
    ("0 < views_1d <= 2", {"views_1d": 3.0}, False),
    ("recency_s > -1", {"recency_s": 0.0}, True),
    ("purchases_7d == 0", {}, True),  # a feature the profile lacks reads 0
])
def test_a_rule_holds_as_written(when, features, holds):
    predicate, names = compile_rule(when)
    assert predicate(features) is holds
    assert names <= {"spend_30d", "purchases_7d", "views_1d", "recency_s"}


@pytest.mark.parametrize("when, says", [
    ("spend_30d > 200 and", "not a rule"),
    ("__import__('os').system('x') > 1", "neither a feature nor a number"),
    ("spend_30d + 1 > 2", "neither a feature nor a number"),
    ("spend_30d", "not a comparison"),
    ("1 < 2", "compares no feature"),
    ("spend_30d in (1, 2)", "only >, >=, <, <=, ==, != compare"),
    ("spend_90d > 1", "unknown feature 'spend_90d'"),
])
def test_a_rule_outside_the_grammar_is_refused_saying_where(when, says):
    with pytest.raises(SegmentRuleError, match=says):
        compile_rule(when, known=["spend_30d", "purchases_7d"])


def test_the_job_config_names_the_bad_rule_and_the_features_there_are():
    with pytest.raises(ConfigError) as err:
        parse_config({"segments": {"rules": [{"name": "vip", "when": "spend_30d > 1"},
                                             {"name": "big", "when": "spend_90d > 200"}]}})
    assert "segments.rules[1].when (big): unknown feature 'spend_90d'" in str(err.value)
    assert "spend_30d" in str(err.value)  # the features that exist are listed
    with pytest.raises(ConfigError, match=r"segments.rules\[1\].name: 'vip' is declared twice"):
        parse_config({"segments": {"rules": [{"name": "vip", "when": "spend_30d > 1"},
                                             {"name": "vip", "when": "spend_7d > 1"}]}})
    with pytest.raises(ConfigError, match="segments.rules.0.name"):
        parse_config({"segments": {"rules": [{"name": "VIP!", "when": "spend_30d > 1"}]}})


def test_a_users_segments_follow_the_configs_order_and_changes_name_entries_and_exits():
    cfg = parse_config({"segments": {"rules": [{"name": "buyers", "when": "purchases_7d >= 1"},
                                               {"name": "vip", "when": "spend_30d > 200"}]}})
    segments = Segments.of_config(cfg)
    assert segments.of({"purchases_7d": 2.0, "spend_30d": 500.0}) == ["buyers", "vip"]
    assert segments.of({"purchases_7d": 0.0, "spend_30d": 500.0}) == ["vip"]
    assert not Segments.of_config(parse_config({}))
    assert changes(["buyers"], ["vip"]) == (["vip"], ["buyers"])


def test_the_shipped_segments_hold_under_every_preset():
    """A preset changes the windows, and with them the feature names: local.toml's segments must
    name features every preset has, or `--preset` would refuse to start."""
    from contract.config import PRESETS, load_config
    from contract.paths import CONFIG_DIR
    for preset in PRESETS:
        assert load_config(CONFIG_DIR / "local.toml", preset=preset).segments.rules, preset
