"""Experiments: the file data engineers declare A/B (and multivariate) tests in, and the assignment
of a user to an arm, which Go (serving/lookupd/experiments.go), Python and the job compute alike
(tests/vectors/assignment.json holds them to the same answers).

Assignment is a deterministic hash, so no table of who is in which arm exists anywhere:

- `bucket(salt, user_id)`: the first 8 bytes of SHA-256(salt, NUL, user_id) as a big-endian
  integer, modulo BUCKETS (10,000, so a share is exact to 0.01%).
- A **layer** holds experiments that exclude each other: the layer's own hash
  (`bucket("layer:" + layer, user)`) puts a user in at most one experiment's traffic range.
  Experiments in different layers are assigned independently (a user can be in one of each).
- Inside an experiment, `bucket(salt, user)` picks the arm by integer weights, so changing the salt
  reshuffles who gets which arm without touching the traffic split.

The id hashed is the id as stored: the pseudonym when [privacy] pseudonymize is on, because the job
only ever sees that one.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, UTC
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from contract import keys
from contract.config import _read_toml, _Strict, validated

BUCKETS = 10_000
LAYER_SALT_PREFIX = "layer:"
# what an arm can rank with: the trained model (a registry version, or the current one) or a baseline
# that needs no model (udfs.arms.BASELINE_KINDS, checked equal in tests/unit/test_experiments.py)
RANKERS = ("model", "trending", "repeat")
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
NAME_RULE = "1-63 of a-z 0-9 _ -, starting with a letter or digit"


def bucket(salt: str, user_id: str) -> int:
    digest = hashlib.sha256(salt.encode("utf-8") + b"\x00" + user_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def share_buckets(share: float, field: str) -> int:
    """A traffic share (0..1) as whole buckets; finer than 0.01% cannot be split exactly."""
    n = round(share * BUCKETS)
    if abs(n - share * BUCKETS) > 1e-6:
        raise ValueError(f"{field} = {share} is finer than 0.0001 (one bucket of {BUCKETS}); round it to 4 decimals")
    return n


def _named(v: str, what: str) -> str:
    if not NAME.match(v):
        raise ValueError(f"{what} {v!r} is not a name: use {NAME_RULE} (it appears in Redis keys and metrics)")
    return v


class ArmCandidates(_Strict):
    """A candidate strategy for one arm: the [candidates] counts it changes (the rest as configured)."""

    trending: int | None = Field(None, ge=1, le=5000)
    """Globally trending items offered to the arm's users."""
    per_category: int | None = Field(None, ge=0, le=1000)
    """Trending items from each of the user's top categories."""
    top_categories: int | None = Field(None, ge=0, le=20)
    """How many of the user's top categories feed per-category candidates."""
    own_history: int | None = Field(None, ge=0, le=1000)
    """The user's own items offered as candidates."""


class Arm(_Strict):
    name: str
    """The arm's name (1-63 of a-z 0-9 _ -), reported in exposures and reports."""
    weight: int = Field(1, ge=1, le=BUCKETS)
    """Relative weight: an arm gets weight / (sum of weights) of the experiment's users."""
    ranker: Literal["model", "trending", "repeat"] = "model"
    """What ranks this arm's lists: the trained model, or a baseline that needs none."""
    model_version: str | None = None
    """With ranker = "model": the registry version to score with (None: the current model)."""
    candidates: ArmCandidates | None = None
    """A candidate strategy: [candidates] counts this arm changes (None: as configured)."""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _named(v, "arm name")

    @model_validator(mode="after")
    def _version_needs_model(self) -> Arm:
        if self.model_version is not None and self.ranker != "model":
            raise ValueError(f"arm {self.name!r}: model_version is set but ranker = {self.ranker!r}; "
                             "a baseline uses no model: drop model_version or set ranker = \"model\"")
        return self


class Experiment(_Strict):
    name: str
    """The experiment's name (1-63 of a-z 0-9 _ -): `streamrank experiments report NAME`."""
    salt: str = Field(min_length=1, max_length=200)
    """Mixed into the arm hash; a new salt reshuffles users among the arms."""
    layer: str = "main"
    """Experiments in one layer exclude each other; different layers are assigned independently."""
    share: float = Field(gt=0, le=1)
    """Fraction of all users in this experiment (0..1, to 0.0001)."""
    offset: float | None = Field(None, ge=0, lt=1)
    """Where the experiment's traffic range starts in its layer (0..1); unset: right after the
    previous experiment in the same layer. Set it to keep users in place when an earlier
    experiment is removed."""
    arms: list[Arm] = Field(min_length=2, max_length=20)
    """The arms, each with a weight; the first is the control unless `control` names another."""
    control: str | None = None
    """The arm lift is measured against (default: the first arm)."""
    start: datetime
    """When assignment begins (a TOML date-time with its offset, e.g. 2026-12-01T00:00:00Z)."""
    end: datetime
    """When assignment stops (after start)."""

    @field_validator("name", "layer")
    @classmethod
    def _names(cls, v: str, info) -> str:
        return _named(v, info.field_name)

    @field_validator("start", "end")
    @classmethod
    def _aware(cls, v: datetime, info) -> datetime:
        if v.tzinfo is None:
            raise ValueError(f"{info.field_name} = {v.isoformat()} has no UTC offset; write it with one, "
                             f"e.g. {v.isoformat()}Z")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Experiment:
        share_buckets(self.share, "share")
        if self.offset is not None:
            share_buckets(self.offset, "offset")
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names repeat in {names}; give each arm its own name")
        if self.control is not None and self.control not in names:
            raise ValueError(f"control = {self.control!r} is not an arm; choose one of {names}")
        if self.end <= self.start:
            raise ValueError(f"end ({self.end.isoformat()}) is not after start ({self.start.isoformat()})")
        return self

    @property
    def control_arm(self) -> str:
        return self.control or self.arms[0].name


class ExperimentsFile(_Strict):
    experiments: list[Experiment] = Field(default_factory=list)
    """The declared experiments ([[experiments]] tables)."""

    @model_validator(mode="after")
    def _layers_fit(self) -> ExperimentsFile:
        names = [e.name for e in self.experiments]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment names repeat in {names}; give each experiment its own name")
        self.plan()  # raises when a layer's ranges overlap or overflow
        return self

    def plan(self) -> list[PlannedExperiment]:
        """Every experiment with its traffic range in its layer and its arms' cumulative weights."""
        planned, next_free, taken = [], {}, {}
        for e in self.experiments:
            lo = share_buckets(e.offset, "offset") if e.offset is not None else next_free.get(e.layer, 0)
            hi = lo + share_buckets(e.share, "share")
            if hi > BUCKETS:
                raise ValueError(f"experiment {e.name!r} runs past the end of layer {e.layer!r} "
                                 f"(buckets {lo}-{hi} of {BUCKETS}); lower its share or offset, or move it to "
                                 "another layer")
            for other, (olo, ohi) in taken.get(e.layer, {}).items():
                if lo < ohi and olo < hi:
                    raise ValueError(f"experiments {other!r} and {e.name!r} overlap in layer {e.layer!r} "
                                     f"(buckets {olo}-{ohi} and {lo}-{hi}); set an offset or put one in another layer")
            taken.setdefault(e.layer, {})[e.name] = (lo, hi)
            next_free[e.layer] = hi
            cum, upto = 0, []
            for a in e.arms:
                cum += a.weight
                upto.append(cum)
            planned.append(PlannedExperiment(e, lo, hi, tuple(upto)))
        return planned

    def spec(self) -> dict:
        """What services and the job load (`experiments apply` stores it in Redis): integers only, so
        every language assigns from the same numbers."""
        return {"buckets": BUCKETS, "layer_salt_prefix": LAYER_SALT_PREFIX, "experiments": [
            {"name": p.experiment.name, "layer": p.experiment.layer, "salt": p.experiment.salt,
             "traffic": [p.lo, p.hi], "start_ms": _ms(p.experiment.start), "end_ms": _ms(p.experiment.end),
             "control": p.experiment.control_arm,
             "arms": [{"name": a.name, "upto": u, "ranker": a.ranker, "model_version": a.model_version,
                       "candidates": a.candidates.model_dump(exclude_none=True) if a.candidates else None}
                      for a, u in zip(p.experiment.arms, p.upto, strict=True)]}
            for p in self.plan()]}


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


@dataclass(frozen=True)
class PlannedExperiment:
    experiment: Experiment
    lo: int
    hi: int
    upto: tuple[int, ...]


def assign(spec: dict, user_id: str, now_ms: int) -> dict[str, str]:
    """experiment name -> arm name for each running experiment the user is in (the spec's order)."""
    out: dict[str, str] = {}
    layer_buckets: dict[str, int] = {}
    for e in spec["experiments"]:
        if not e["start_ms"] <= now_ms < e["end_ms"]:
            continue
        layer = e["layer"]
        if layer not in layer_buckets:
            layer_buckets[layer] = bucket(spec["layer_salt_prefix"] + layer, user_id)
        lo, hi = e["traffic"]
        if not lo <= layer_buckets[layer] < hi:
            continue
        total = e["arms"][-1]["upto"]
        b = bucket(e["salt"], user_id)
        # integer thresholds: arm i holds the buckets b with b * total < upto_i * BUCKETS
        out[e["name"]] = next(a["name"] for a in e["arms"] if b * total < a["upto"] * spec["buckets"])
    return out


def parse_experiments(data: dict, source: str = "<dict>") -> ExperimentsFile:
    return validated(ExperimentsFile, data, source)


def load_experiments(path: str | Path) -> ExperimentsFile:
    return parse_experiments(_read_toml(path, "experiments file"), str(path))


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def spec_version(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def store_experiments(r, spec: dict, source: str) -> str:
    """Apply a spec: services and the job pick it up at their next poll of `version`."""
    version = spec_version(spec)
    r.hset(keys.EXPERIMENTS, mapping={"spec": json.dumps(spec), "version": version,
                                      "applied_at_ms": now_ms(), "source": source})
    return version


def read_experiments(r) -> tuple[dict, str] | None:
    """The applied spec and its version from a Redis client, or None when nothing was applied."""
    return decode_applied(*r.hmget(keys.EXPERIMENTS, APPLIED_FIELDS))


APPLIED_FIELDS = ("spec", "version")


SPEC_FIELDS = {"buckets", "layer_salt_prefix", "experiments"}
EXPERIMENT_FIELDS = {"name", "layer", "salt", "traffic", "start_ms", "end_ms", "control", "arms"}
ARM_FIELDS = {"name", "upto", "ranker", "model_version", "candidates"}


def _known_fields(spec: dict) -> None:
    """A field this version does not know may change who is assigned where: refuse the spec, as
    lookupd does (DisallowUnknownFields), so no engine assigns from a spec it half understands."""
    parts = [("spec", spec, SPEC_FIELDS)]
    for e in spec.get("experiments", []):
        parts.append((f"experiment {e.get('name')!r}", e, EXPERIMENT_FIELDS))
        parts += [(f"arm {a.get('name')!r} of {e.get('name')!r}", a, ARM_FIELDS) for a in e.get("arms", [])]
    for where, d, known in parts:
        if unknown := sorted(set(d) - known):
            raise ValueError(f"experiments spec: {where} has unknown fields {unknown} (apply it again with this "
                             "version's `streamrank experiments apply`)")


def decode_applied(spec: bytes | None, version: bytes | None) -> tuple[dict, str] | None:
    """HMGET experiments spec version, decoded (None when nothing was applied). ValueError for a
    spec with a field this version does not know."""
    if not (spec and version):
        return None
    decoded = json.loads(spec)
    _known_fields(decoded)
    return decoded, version.decode()
