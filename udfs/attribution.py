"""Outcomes of what was served: exposures (contract/exposures.py) joined with the same user's later
interactions within an attribution window, in event time. Pure: one user's exposures and
interactions in, each exposure's outcome out; the offline report and the engagement job both
call it, so they agree by construction.

- An exposure is **clicked** when the user engages (`click_types`) with one of its items within
  `window_ms` after it was served, or sends an interaction carrying its request id.
- A **purchase** of an item is a conversion of the exposures that showed that item to the user in
  the `window_ms` before it (or of the one exposure whose request id it carries). Its credit is
  split over those exposures three ways, each summing to 1:
  - last touch: all to the latest;
  - linear: equally;
  - time decay: in proportion to 2^(-age / half_life), age = purchase time - served time.
  Revenue is credited the same way (credit x the purchase's value).
"""

from __future__ import annotations

from dataclasses import dataclass, field

MODELS = ("last_touch", "linear", "time_decay")


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


@dataclass
class Outcome:
    """What one exposure led to."""

    clicked: bool = False
    conversions: dict[str, float] = field(default_factory=lambda: dict.fromkeys(MODELS, 0.0))
    revenue: dict[str, float] = field(default_factory=lambda: dict.fromkeys(MODELS, 0.0))


def split_credit(ages_ms: list[int], half_life_ms: float) -> dict[str, list[float]]:
    """Each model's credit per touch (ages in the touches' order, oldest first); each sums to 1."""
    n = len(ages_ms)
    last = [0.0] * (n - 1) + [1.0]
    youngest = min(ages_ms)  # relative to it: the largest weight is 1, so the sum never underflows
    weights = [2.0 ** (-(age - youngest) / half_life_ms) for age in ages_ms]
    total = sum(weights)
    return {"last_touch": last, "linear": [1.0 / n] * n, "time_decay": [w / total for w in weights]}


def attribute(shown: list[Shown], actions: list[Action], window_ms: int, half_life_ms: float,
              click_types: frozenset[str] = frozenset({"view", "click"})) -> dict[str, Outcome]:
    """request_id -> Outcome for one user's exposures, given the user's interactions. Conversions
    that no exposure explains are not counted anywhere (they are organic)."""
    out = {s.request_id: Outcome() for s in shown}
    by_time = sorted(shown, key=lambda s: (s.served_at_ms, s.request_id))
    for a in sorted(actions, key=lambda a: (a.ts, a.event_id)):
        if a.request_id in out:  # carried back by the page: that answer and no other
            touches = [s for s in by_time if s.request_id == a.request_id]
        else:
            touches = [s for s in by_time
                       if s.served_at_ms <= a.ts <= s.served_at_ms + window_ms and a.item_id in s.items]
        if not touches:
            continue
        if a.type in click_types:
            for s in touches:
                out[s.request_id].clicked = True
        elif a.type == "purchase":
            credit = split_credit([a.ts - s.served_at_ms for s in touches], half_life_ms)
            for model, shares in credit.items():
                for s, c in zip(touches, shares, strict=True):
                    out[s.request_id].conversions[model] += c
                    out[s.request_id].revenue[model] += c * a.value
    return out
