"""A retrained model's canary: started as an experiment of its own (layer `canary`: the new version
against the current one, both pinned, each on half of [canary] share of users), then promoted or
rolled back from the experiment's report.

- promote: the CTR lift interval lies above 0 and the guardrail holds (the conversion lift's lower
  bound is not below -max_conversion_drop);
- roll back: the guardrail breaks (the conversion lift's upper bound is below -max_conversion_drop),
  or the canary is clearly worse (CTR lift interval below 0), or it is still undecided after
  max_age_s;
- continue: fewer than min_users per arm, a sample-ratio mismatch (the split itself is suspect), or
  the intervals still straddle.
Every decision is written with its numbers (`decisions.jsonl` in the registry)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from contract.config import CanaryConfig
from contract.experiments import parse_experiments

LAYER = "canary"
PREFIX = "canary-"
DECISIONS = "decisions.jsonl"


@dataclass(frozen=True)
class Decision:
    action: str  # promote | rollback | continue
    reason: str
    version: str
    experiment: str
    numbers: dict


def canary_experiment(version: str, current: str, cfg: CanaryConfig, now: datetime | None = None) -> dict:
    """The canary as an experiment in spec form: arms `current` (control) and `canary`, both pinned."""
    now = now or datetime.now(UTC)
    spec = parse_experiments({"experiments": [{
        "name": f"{PREFIX}{version.lower()}", "salt": f"{PREFIX}{version}", "layer": LAYER, "share": cfg.share,
        "start": now, "end": now + timedelta(seconds=cfg.max_age_s), "control": "current",
        "arms": [{"name": "current", "model_version": current},
                 {"name": "canary", "model_version": version, "weight": 1}]}]}).spec()
    return spec["experiments"][0]


def running_canary(spec: dict | None) -> dict | None:
    return next((e for e in (spec or {}).get("experiments", []) if e["layer"] == LAYER), None)


def with_canary(spec: dict | None, experiment: dict) -> dict:
    """The applied spec with the canary added, first: for its users it decides the ranker over
    other experiments (udfs.arms), so neither arm is ranked by something else. One at a time."""
    base = spec or {"buckets": 10_000, "layer_salt_prefix": "layer:", "experiments": []}
    if running := running_canary(base):
        raise ValueError(f"canary {running['name']} is still running; decide it first (`streamrank retrain`)")
    return {**base, "experiments": [experiment, *base["experiments"]]}


def without(spec: dict, name: str) -> dict:
    return {**spec, "experiments": [e for e in spec["experiments"] if e["name"] != name]}


def decide(report: dict, experiment: dict, cfg: CanaryConfig, now_ms: int | None = None) -> Decision:
    """What to do with the canary, from its report (models.experiment_report.report)."""
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    version = next(a["model_version"] for a in experiment["arms"] if a["name"] == "canary")
    users = {a: v["users"] for a, v in report["arms"].items()}
    lift = report["lift"].get("canary", {})
    numbers = {"users": users, "lift": lift, "srm_p": report["srm_p"],
               "age_s": round((now_ms - experiment["start_ms"]) / 1000, 1)}

    def made(action: str, reason: str) -> Decision:
        return Decision(action, reason, version, experiment["name"], numbers)

    too_old = now_ms - experiment["start_ms"] >= cfg.max_age_s * 1000
    if min(users.values(), default=0) < cfg.min_users or not lift:
        return made("rollback" if too_old else "continue",
                    f"{min(users.values(), default=0)} users in the smaller arm, {cfg.min_users} needed"
                    + ("; max_age_s passed" if too_old else ""))
    if report["srm_alarm"]:  # the arms' users are not split as assigned: no lift can be trusted
        return made("rollback" if too_old else "continue",
                    f"sample ratio mismatch (p = {report['srm_p']:.2g}): check assignment and exposure logging"
                    + ("; max_age_s passed" if too_old else ""))
    ctr, conversion = lift["ctr"], lift["conversion"]
    if conversion["high"] < -cfg.max_conversion_drop:
        return made("rollback", f"guardrail: conversion lift at most {100 * conversion['high']:+.1f}%, below "
                                f"-{100 * cfg.max_conversion_drop:.1f}%")
    if ctr["high"] < 0:
        return made("rollback", f"worse: CTR lift interval {100 * ctr['low']:+.1f}% to {100 * ctr['high']:+.1f}%")
    if ctr["low"] > 0 and conversion["low"] >= -cfg.max_conversion_drop:
        return made("promote", f"CTR lift interval {100 * ctr['low']:+.1f}% to {100 * ctr['high']:+.1f}% above 0, "
                               f"conversion lift at least {100 * conversion['low']:+.1f}%")
    return made("rollback" if too_old else "continue",
                f"undecided: CTR lift interval {100 * ctr['low']:+.1f}% to {100 * ctr['high']:+.1f}%"
                + ("; max_age_s passed" if too_old else ""))


def record(registry: Path, decision: Decision) -> dict:
    entry = {"at": datetime.now(UTC).isoformat(timespec="seconds"), **asdict(decision)}
    with open(Path(registry) / DECISIONS, "a") as f:
        f.write(json.dumps(entry) + "\n")
    return entry
