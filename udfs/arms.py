"""What a user's experiment arms make the job do: which ranker scores their candidates (the current
model, a pinned model version, or a baseline), and which candidate counts gather them.

The job assigns users exactly as the lookup services do (contract.experiments.assign, on the stored
id), so the arm an answer reports is the arm its list was ranked for. When several of a user's
experiments change the ranker, the first in the file's order that changes it decides; candidate
counts are merged the same way, field by field. Users of one (ranker, version) are scored
together, so arms cost no extra scoring.

The baselines are fixed linear scores over the job's own features (models.baselines publishes the
same weights as ONNX models for the registry)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from contract.config import FeatureConfig
from contract.experiments import assign
from udfs.features import duration_label as _w, feature_names

BASELINE_KINDS = ("repeat", "trending")
CANDIDATE_COUNTS = ("trending", "per_category", "top_categories", "own_history")


def baseline_weights(kind: str, cfg: FeatureConfig) -> np.ndarray:
    """One weight per feature (feature_names order); the score is their dot product.

    - `repeat`: the user's own items first, by purchase occasions, then by decayed interaction
      weight (the longest memory half-life), then the rest by long-term popularity;
    - `trending`: short-term popularity (the job's trending boards)."""
    names = feature_names(cfg)
    w = np.zeros(len(names), dtype=np.float32)
    col = {n: i for i, n in enumerate(names)}
    if kind == "repeat":
        w[col["ui_purchases"]] = 1e4  # each occasion outranks any weight below
        w[col[f"ui_weight_{_w(max(cfg.memory_half_lives_s))}"]] = 1.0
        w[col[f"item_popularity_{_w(cfg.item_long_half_life_s)}"]] = 1e-3  # shares in [0, 1]: the tie-break
    elif kind == "trending":
        w[col[f"item_popularity_{_w(cfg.item_half_life_s)}"]] = 1.0
    else:
        raise ValueError(f"unknown baseline {kind!r}; choose one of {', '.join(BASELINE_KINDS)}")
    return w


@dataclass(frozen=True)
class ArmPlan:
    """A user's arms (experiment -> arm) and what they change."""

    arms: dict[str, str] = field(default_factory=dict)
    ranker: str = "model"  # "model" or one of BASELINE_KINDS
    model_version: str | None = None  # with ranker "model": a pinned registry version (None: current)
    candidates: dict[str, int] = field(default_factory=dict)  # CANDIDATE_COUNTS this plan changes

    @property
    def scoring(self) -> tuple[str, str | None]:
        """Users with the same scoring are scored in one call."""
        return self.ranker, self.model_version


NO_EXPERIMENT = ArmPlan()


def plan_for(spec: dict | None, user_id: str, now_ms: int) -> ArmPlan:
    """The plan of one user (the stored id) under the applied spec (None: no experiments)."""
    if not spec:
        return NO_EXPERIMENT
    assigned = assign(spec, user_id, now_ms)
    if not assigned:
        return NO_EXPERIMENT
    ranker, version, ranker_set, candidates = "model", None, False, {}
    for e in spec["experiments"]:
        name = assigned.get(e["name"])
        if name is None:
            continue
        arm = next(a for a in e["arms"] if a["name"] == name)
        if not ranker_set and (arm["ranker"] != "model" or arm["model_version"]):
            ranker, version, ranker_set = arm["ranker"], arm["model_version"], True
        for k, v in (arm["candidates"] or {}).items():
            candidates.setdefault(k, v)
    return ArmPlan(assigned, ranker, version, candidates)


def largest_counts(spec: dict | None) -> dict[str, int]:
    """The largest trending and per-category counts any arm asks for: the candidate pool is read
    from Redis that deep, and each user's arm takes its own share of it."""
    out: dict[str, int] = {}
    for e in (spec or {}).get("experiments", []):
        for a in e["arms"]:
            for k, v in (a["candidates"] or {}).items():
                out[k] = max(out.get(k, 0), v)
    return out
