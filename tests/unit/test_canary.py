"""The canary's decisions (models.canary): promoted when its CTR lift interval is above 0 and the
conversion guardrail holds, rolled back when the guardrail breaks, when it is clearly worse or
when it stays undecided too long, left running while evidence is short."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from contract.config import CanaryConfig
from models.canary import canary_experiment, decide, running_canary, with_canary, without

CFG = CanaryConfig(share=0.1, min_users=100, max_conversion_drop=0.05, max_age_s=86_400)
EXP = canary_experiment("v0002", "v0001", CFG, datetime(2026, 6, 1, tzinfo=UTC))
START = EXP["start_ms"]


def rep(ctr, conversion, users=500):
    lo, hi = ctr
    clo, chi = conversion
    return {"arms": {"current": {"users": users}, "canary": {"users": users}}, "srm_p": 0.5, "srm_alarm": False,
            "lift": {"canary": {"ctr": {"lift": (lo + hi) / 2, "low": lo, "high": hi},
                                "conversion": {"lift": (clo + chi) / 2, "low": clo, "high": chi}}}}


@pytest.mark.parametrize(("report", "age_s", "action", "says"), [
    (rep((0.02, 0.10), (-0.03, 0.08)), 3600, "promote", "above 0"),
    (rep((0.02, 0.10), (-0.20, -0.08)), 3600, "rollback", "guardrail"),
    (rep((-0.10, -0.02), (-0.03, 0.08)), 3600, "rollback", "worse"),
    (rep((-0.02, 0.10), (-0.03, 0.08)), 3600, "continue", "undecided"),
    (rep((-0.02, 0.10), (-0.03, 0.08)), 90_000, "rollback", "max_age_s passed"),
    (rep((0.02, 0.10), (-0.03, 0.08), users=50), 3600, "continue", "100 needed"),
    (rep((0.02, 0.10), (-0.10, 0.08)), 3600, "continue", "undecided"),  # conversion may be down too far
    ({**rep((0.02, 0.10), (-0.03, 0.08)), "srm_p": 1e-6, "srm_alarm": True}, 3600, "continue", "sample ratio mismatch"),
])
def test_decisions(report, age_s, action, says):
    d = decide(report, EXP, CFG, START + age_s * 1000)
    assert d.action == action and says in d.reason
    assert d.version == "v0002" and d.numbers["users"] == {"current": report["arms"]["current"]["users"],
                                                           "canary": report["arms"]["canary"]["users"]}


def test_the_canary_is_an_experiment_of_its_own_first_and_one_at_a_time():
    assert EXP["layer"] == "canary" and EXP["traffic"] == [0, 1000] and EXP["control"] == "current"
    assert [(a["name"], a["model_version"]) for a in EXP["arms"]] == [("current", "v0001"), ("canary", "v0002")]
    other = {"name": "ab", "layer": "main", "experiments": []}
    spec = with_canary({"buckets": 10_000, "layer_salt_prefix": "layer:", "experiments": [other]}, EXP)
    assert [e["name"] for e in spec["experiments"]] == [EXP["name"], "ab"] and running_canary(spec) == EXP
    with pytest.raises(ValueError, match="still running; decide it first"):
        with_canary(spec, EXP)
    assert running_canary(without(spec, EXP["name"])) is None
