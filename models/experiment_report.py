"""An experiment's report from the exposures and the interactions that followed them: per arm the
users, exposures, CTR, conversion and revenue per user; lift over the control arm with 95%
bootstrap intervals over users (the unit of assignment); a sample-ratio-mismatch check; and the
cumulative lift over time. Outcomes come from udfs.attribution, the function the engagement job
runs, over the same [engagement] window, half-life and click types."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy.stats import chisquare

from contract.config import EngagementConfig
from contract import keys
from contract.schema import InvalidEvent, validate
from udfs.attribution import CREDIT_UNITS, MODELS, REVENUE_UNITS, Action, Group, Shown, attribute, groups_of

SRM_ALARM_P = 0.001
BOOTSTRAP_SAMPLES = 2000


@dataclass(frozen=True)
class ExposureRow:
    user_id: str
    request_id: str
    served_at_ms: int
    experiments: dict[str, str]
    placement: str
    model_version: str
    clicked: bool
    conversions: dict[str, int]  # udfs.attribution.CREDIT_UNITS per conversion
    revenue: dict[str, int]  # 1/REVENUE_UNITS of the currency


def outcomes(exposures: list[dict], interactions: list[dict], cfg: EngagementConfig) -> list[ExposureRow]:
    """Every exposure record with what it led to (user by user, through udfs.attribution)."""
    shown, acted = defaultdict(list), defaultdict(list)
    counted = set()
    for e in exposures:
        if e["request_id"] not in counted:  # a record sent twice is one exposure, as in the job
            counted.add(e["request_id"])
            shown[e["user_id"]].append(e)
    settled = set()
    for i in interactions:
        if i.get("user_id") not in shown or i.get("type") not in (*cfg.click_types, "purchase"):
            continue
        try:
            event = validate(json.dumps(i))  # what the job takes (it leaves the rest to the recommend job's DLQ)
        except InvalidEvent:
            continue
        if event.event_id not in settled:  # a record sent twice is one interaction, as in the job
            settled.add(event.event_id)
            acted[event.user_id].append(Action(event.event_id, event.type, event.item_id, event.ts, event.value,
                                               event.request_id))
    rows = []
    for user, records in shown.items():
        result = attribute([Shown(e["request_id"], e["served_at_ms"], frozenset(x["item_id"] for x in e["items"]))
                            for e in records], acted[user], cfg.window_ms, cfg.half_life_s * 1000,
                           frozenset(cfg.click_types))
        for e in records:
            o = result[e["request_id"]]
            rows.append(ExposureRow(user, e["request_id"], e["served_at_ms"], e["experiments"], e["placement"],
                                    e["model_version"], o.clicked, o.conversions, o.revenue))
    return rows


def engagement_totals(rows: list[ExposureRow]) -> dict[Group, dict[str, int]]:
    """Per (experiment, arm, placement, model_version): what the engagement job keeps in Redis
    (contract.keys.read_engagement), computed offline."""
    out: dict[Group, dict[str, int]] = {}
    users: dict[Group, set[str]] = defaultdict(set)
    for r in rows:
        for g in groups_of(r.experiments, r.placement, r.model_version):
            t = out.setdefault(g, dict.fromkeys(keys.ENGAGEMENT_FIELDS, 0))
            t["exposures"] += 1
            t["clicks"] += r.clicked
            for m in MODELS:
                t[f"conversions_{m}"] += r.conversions[m]
                t[f"revenue_{m}"] += r.revenue[m]
            users[g].add(r.user_id)
    return {g: {**t, "users": len(users[g])} for g, t in sorted(out.items())}


def _per_user(rows: list[ExposureRow], model: str) -> dict[str, np.ndarray]:
    """Per user: exposures, clicked exposures, conversions, revenue (the bootstrap resamples users)."""
    acc: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    for r in rows:
        a = acc[r.user_id]
        a[0] += 1
        a[1] += r.clicked
        a[2] += r.conversions[model] / CREDIT_UNITS
        a[3] += r.revenue[model] / REVENUE_UNITS
    m = np.array(list(acc.values()), dtype=np.float64).reshape(-1, 4)
    return {"exposures": m[:, 0], "clicks": m[:, 1], "conversions": m[:, 2], "revenue": m[:, 3]}


def _ratio(num: np.ndarray, den: np.ndarray) -> float:
    return float(num.sum() / den.sum()) if den.sum() else 0.0


def _lift_interval(t: dict[str, np.ndarray], c: dict[str, np.ndarray], num: str, rng: np.random.Generator,
                   samples: int) -> dict[str, float]:
    """Relative lift of sum(num)/sum(exposures), treatment over control, with a 95% percentile
    interval: users resampled with replacement within each arm."""
    point_c = _ratio(c[num], c["exposures"])
    lift = _ratio(t[num], t["exposures"]) / point_c - 1 if point_c else float("nan")
    rt, rc = np.empty(samples), np.empty(samples)
    # resamples drawn a block at a time: a block holds at most ~4M indexes (32 MB), however many users
    block = max(1, 4_000_000 // max(len(t["exposures"]), len(c["exposures"])))
    for start in range(0, samples, block):
        n = min(block, samples - start)
        ti = rng.integers(0, len(t["exposures"]), size=(n, len(t["exposures"])))
        ci = rng.integers(0, len(c["exposures"]), size=(n, len(c["exposures"])))
        rt[start:start + n] = t[num][ti].sum(1) / np.maximum(t["exposures"][ti].sum(1), 1)
        rc[start:start + n] = c[num][ci].sum(1) / np.maximum(c["exposures"][ci].sum(1), 1)
    ok = rc > 0
    lifts = rt[ok] / rc[ok] - 1
    low, high = (np.percentile(lifts, [2.5, 97.5]) if len(lifts) else (float("nan"), float("nan")))
    return {"lift": round(lift, 6), "low": round(float(low), 6), "high": round(float(high), 6)}


def report(rows: list[ExposureRow], experiment: dict, model: str = "last_touch",
           samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> dict:
    """The experiment's numbers (`experiment` as in the applied spec: arms with cumulative weights,
    control). Only exposures that carry an arm of this experiment count."""
    name, control = experiment["name"], experiment["control"]
    by_arm: dict[str, list[ExposureRow]] = defaultdict(list)
    for r in rows:
        if name in r.experiments:
            by_arm[r.experiments[name]].append(r)
    arms, users = {}, {}
    prev = 0
    weights = {}
    for a in experiment["arms"]:
        weights[a["name"]], prev = a["upto"] - prev, a["upto"]
    for arm in weights:
        u = _per_user(by_arm.get(arm, []), model)
        users[arm] = u
        n = len(u["exposures"])
        arms[arm] = {"users": n, "exposures": int(u["exposures"].sum()),
                     "ctr": round(_ratio(u["clicks"], u["exposures"]), 6),
                     "conversion": round(_ratio(u["conversions"], u["exposures"]), 6),
                     "revenue_per_user": round(float(u["revenue"].sum() / n), 6) if n else 0.0,
                     "revenue_per_exposure": round(_ratio(u["revenue"], u["exposures"]), 6)}
    observed = [arms[a]["users"] for a in weights]
    total_w = sum(weights.values())
    srm_p = (float(chisquare(observed, [sum(observed) * w / total_w for w in weights.values()]).pvalue)
             if sum(observed) else float("nan"))
    rng = np.random.default_rng(seed)
    lifts = {}
    for arm in weights:
        if arm == control or not arms[arm]["users"] or not arms[control]["users"]:
            continue
        lifts[arm] = {"ctr": _lift_interval(users[arm], users[control], "clicks", rng, samples),
                      "conversion": _lift_interval(users[arm], users[control], "conversions", rng, samples)}
    return {"experiment": name, "control": control, "attribution": model, "arms": arms, "lift": lifts,
            "srm_p": round(srm_p, 6), "srm_alarm": bool(srm_p < SRM_ALARM_P)}


def cumulative_lift(rows: list[ExposureRow], experiment: dict, buckets: int = 24) -> dict[str, list]:
    """CTR lift of each arm over control, cumulated up to each of `buckets` equal slices of time."""
    name, control = experiment["name"], experiment["control"]
    mine = sorted((r for r in rows if name in r.experiments), key=lambda r: r.served_at_ms)
    if not mine:
        return {"t_ms": []}
    edges = np.linspace(mine[0].served_at_ms, mine[-1].served_at_ms, buckets + 1)[1:]
    out: dict[str, list] = {"t_ms": [int(e) for e in edges]}
    for arm in (a["name"] for a in experiment["arms"] if a["name"] != control):
        series = []
        for edge in edges:
            upto = [r for r in mine if r.served_at_ms <= edge]
            ctr = {a: _ratio(np.array([r.clicked for r in upto if r.experiments[name] == a], float),
                             np.ones(sum(r.experiments[name] == a for r in upto))) for a in (arm, control)}
            series.append(ctr[arm] / ctr[control] - 1 if ctr[control] else float("nan"))
        out[arm] = series
    return out


def plot_cumulative_lift(series: dict[str, list], title: str, path: Path) -> Path:
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    hours = [(t - series["t_ms"][0]) / 3_600_000 for t in series["t_ms"]] if series["t_ms"] else []
    for arm, values in series.items():
        if arm != "t_ms":
            ax.plot(hours, [100 * v for v in values], marker="o", label=arm)
    ax.axhline(0, color="grey", lw=1)
    ax.set_xlabel("hours since the first exposure")
    ax.set_ylabel("cumulative CTR lift over control (%)")
    ax.set_title(title)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path
