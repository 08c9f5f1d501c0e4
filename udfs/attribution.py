"""Outcomes of what was served: exposures (contract/exposures.py) joined with the same user's later
interactions within an attribution window, in event time. Pure; the offline report
(models.experiment_report) and the engagement job (jobs/engagement.py) both take their rules and
credit from here.

- An interaction **touches** an exposure served at most `window_ms` before it (and not after it)
  that showed its item. When it carries the request id of one of those answers (the page sent it
  back), it touches that answer only, whatever the item.
- An exposure is **clicked** when a `click_types` interaction touches it.
- A **purchase** is a conversion of the exposures it touches. Its credit is split over them three
  ways, each summing to exactly one conversion:
  - last touch: all to the latest;
  - linear: equally;
  - time decay: in proportion to 2^(-age / half_life), age = purchase time - served time.
  Revenue is split the same way.

Credit is counted in integers: a conversion is CREDIT_UNITS units and revenue is in
1/REVENUE_UNITS of the currency, split by largest remainder. Sums of integers do not depend on
their order, so the job's running totals (Redis, in whatever order batches arrive) equal an
offline computation exactly, and every conversion's shares add up to exactly one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

MODELS = ("last_touch", "linear", "time_decay")
CREDIT_UNITS = 1_000_000_000  # one conversion
REVENUE_UNITS = 1_000_000  # one unit of the currency


@dataclass(frozen=True)
class Shown:
    """One exposure: what `attribute` needs of the record."""

    request_id: str
    served_at_ms: int
    items: frozenset[str]


@dataclass(frozen=True)
class Action:
    """One interaction of the exposed user."""

    event_id: str
    type: str
    item_id: str
    ts: int
    value: float = 0.0
    request_id: str = ""  # the answer it came from, when the page sent it back


@dataclass(frozen=True)
class Touch:
    """An exposure an action may touch: in its window, and showing its item (`by_request` False)
    or named by its request id (True)."""

    request_id: str
    served_at_ms: int
    by_request: bool


@dataclass
class Outcome:
    """What one exposure led to: conversions in CREDIT_UNITS, revenue in 1/REVENUE_UNITS."""

    clicked: bool = False
    conversions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODELS, 0))
    revenue: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODELS, 0))


def in_window(served_at_ms: int, ts: int, window_ms: int) -> bool:
    return served_at_ms <= ts <= served_at_ms + window_ms


def chosen(touches: Iterable[Touch]) -> list[Touch]:
    """The exposures an action counts for, oldest first: those its request id names when any
    does, else all that showed its item (each once)."""
    touches = list(touches)
    named = [t for t in touches if t.by_request]
    unique = {t.request_id: t for t in (named or touches)}
    return sorted(unique.values(), key=lambda t: (t.served_at_ms, t.request_id))


def apportion(total: int, weights: list[float]) -> list[int]:
    """`total` split in proportion to `weights` into integers that sum to it exactly: floors, then
    one more to the largest remainders (the earlier touch on a tie)."""
    whole = sum(weights)
    exact = [total * w / whole for w in weights]
    shares = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - shares[i]), i))
    missing = total - sum(shares)  # 0 <= missing < len(weights), unless rounding overshot a floor
    for i in by_remainder[:missing] if missing >= 0 else by_remainder[missing:]:
        shares[i] += 1 if missing > 0 else -1
    return shares


def split_credit(ages_ms: list[int], half_life_ms: float) -> dict[str, list[float]]:
    """Each model's weight per touch (ages in the touches' order, oldest first)."""
    n = len(ages_ms)
    youngest = min(ages_ms)  # relative to it: the largest weight is 1, so the sum never underflows
    return {"last_touch": [0.0] * (n - 1) + [1.0], "linear": [1.0] * n,
            "time_decay": [2.0 ** (-(age - youngest) / half_life_ms) for age in ages_ms]}


def credit(action: Action, touches: list[Touch], half_life_ms: float) -> dict[str, tuple[list[int], list[int]]]:
    """A purchase's conversion and revenue shares per model, over `touches` (as `chosen` orders them)."""
    revenue = round(action.value * REVENUE_UNITS)
    weights = split_credit([action.ts - t.served_at_ms for t in touches], half_life_ms)
    return {m: (apportion(CREDIT_UNITS, w), apportion(revenue, w)) for m, w in weights.items()}


def attribute(shown: list[Shown], actions: list[Action], window_ms: int, half_life_ms: float,
              click_types: frozenset[str] = frozenset({"view", "click"})) -> dict[str, Outcome]:
    """request_id -> Outcome for one user's exposures, given the user's interactions. Conversions
    that no exposure explains are not counted anywhere (they are organic)."""
    out = {s.request_id: Outcome() for s in shown}
    for a in actions:
        if a.type not in click_types and a.type != "purchase":
            continue
        named = a.request_id or None  # an interaction without one names no exposure
        touches = chosen(Touch(s.request_id, s.served_at_ms, s.request_id == named) for s in shown
                         if in_window(s.served_at_ms, a.ts, window_ms)
                         and (a.item_id in s.items or s.request_id == named))
        if not touches:
            continue
        if a.type in click_types:
            for t in touches:
                out[t.request_id].clicked = True
        else:
            for model, (conversions, revenue) in credit(a, touches, half_life_ms).items():
                for t, c, r in zip(touches, conversions, revenue, strict=True):
                    out[t.request_id].conversions[model] += c
                    out[t.request_id].revenue[model] += r
    return out


Group = tuple[str, str, str, str]  # (experiment, arm, placement, model_version): what results are per


def groups_of(experiments: dict[str, str], placement: str, model_version: str) -> list[Group]:
    """The groups an exposure counts in: one per experiment it was assigned an arm in."""
    return [(e, a, placement, model_version) for e, a in sorted(experiments.items())]


def arms_of(experiments_json: str | None) -> dict[str, str]:
    """An exposure record's `experiments` (the job reads it as JSON text): experiment -> arm, or
    none at all when it is not a JSON object of strings (the record counts in no group)."""
    try:
        arms = json.loads(experiments_json or "{}")
    except ValueError:
        return {}
    if not isinstance(arms, dict) or not all(isinstance(a, str) for a in arms.values()):
        return {}
    return arms


@dataclass(frozen=True)
class Shares:
    """What one action adds to one touched exposure: a click, or a purchase's conversion and
    revenue shares per model (CREDIT_UNITS, 1/REVENUE_UNITS)."""

    touch: Touch
    click: bool
    conversions: dict[str, int]
    revenue: dict[str, int]


def settle(action: Action, touches: list[Touch], half_life_ms: float,
           click_types: frozenset[str]) -> list[Shares]:
    """An action with the exposures the job found it may touch (any order, repeats allowed):
    what it adds to each one it counts for. The engagement job's per-action step, the same rules
    as `attribute`."""
    picked = chosen(touches)
    if action.type in click_types:
        return [Shares(t, True, {}, {}) for t in picked]
    if action.type != "purchase" or not picked:
        return []
    split = credit(action, picked, half_life_ms)
    return [Shares(t, False, {m: split[m][0][n] for m in MODELS}, {m: split[m][1][n] for m in MODELS})
            for n, t in enumerate(picked)]
