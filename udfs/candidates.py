"""Candidate generation: trending items (global and per category) plus the user's own items.

Item popularity is a forward-decayed sum: each interaction adds w * 2^((t - landmark)/half_life),
so scores need no periodic decay pass; when the exponent grows large the board is rescaled and
the landmark moved (same math in Python here and in the Redis Lua script `TRENDING_ADD_LUA`).
Popularity features use score / top score, which does not depend on the landmark.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from udfs.features import EVENT_WEIGHTS, UserState

RESCALE_EXPONENT = 256.0  # rescale before 2^exponent gets near float limits (2^1024)
MAX_BOARD = 5000  # items kept per trending board


@dataclass(frozen=True, slots=True)
class Candidate:
    item_id: str
    category: str
    price: float
    popularity: float  # 0..1, share of the top item's score


GLOBAL = ""  # board name of global trending; category boards are named by category


@dataclass
class TrendingBoards:
    """Global and per-category trending, sharing one landmark so scores compare across boards.

    Mirrors what the job keeps in Redis (`trending`, `trending:cat:{c}`)."""

    half_life_s: float
    landmark: int | None = None
    boards: dict[str, dict[str, float]] = field(default_factory=dict)

    def add(self, t: int, item_id: str, category: str, weight: float) -> None:
        if self.landmark is None:
            self.landmark = t
        exponent = (t - self.landmark) / (self.half_life_s * 1000.0)
        if exponent > RESCALE_EXPONENT:
            factor = math.pow(2.0, -exponent)
            self.boards = {b: {k: v * factor for k, v in s.items()} for b, s in self.boards.items()}
            self.landmark = t
            exponent = 0.0
        inc = weight * math.pow(2.0, exponent)
        for board in (GLOBAL, category):
            scores = self.boards.setdefault(board, {})
            scores[item_id] = scores.get(item_id, 0.0) + inc

    def top(self, n: int, board: str = GLOBAL) -> list[tuple[str, float]]:
        scores = self.boards.get(board, {})
        return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def item_weight(n_view: int, n_click: int, n_cart: int, n_purchase: int) -> float:
    w = EVENT_WEIGHTS
    return n_view * w["view"] + n_click * w["click"] + n_cart * w["add_to_cart"] + n_purchase * w["purchase"]


@dataclass
class CandidatePool:
    """What every user's candidates are drawn from at one moment: trending boards (global and per
    category, sharing one landmark) and the item catalog. Build once per refresh, not per user."""

    global_top: list[tuple[str, float]]
    category_top: dict[str, list[tuple[str, float]]]
    catalog: dict[str, tuple[str, float]]

    def __post_init__(self) -> None:
        self.top_score = self.global_top[0][1] if self.global_top else 1.0
        self.scores: dict[str, float] = {}
        for board in self.category_top.values():
            self.scores.update(board)
        self.scores.update(self.global_top)
        self._made: dict[str, Candidate] = {}
        self.global_candidates = [self.candidate(i) for i, _ in self.global_top]

    def candidate(self, item: str) -> Candidate:
        made = self._made.get(item)
        if made is None or (made.category == "unknown" and item in self.catalog):
            category, price = self.catalog.get(item, ("unknown", 0.0))
            pop = min(self.scores.get(item, 0.0) / self.top_score, 1.0) if self.top_score > 0 else 0.0
            made = self._made[item] = Candidate(item, category, price, pop)
        return made


def gather_candidates(state: UserState, pool: CandidatePool, top_categories: int, own_history: int) -> list[Candidate]:
    """Union of global trending, trending in the user's top categories and the user's own items,
    without duplicates, in that order. Popularity is relative to the global top score."""
    out = list(pool.global_candidates)
    seen = {c.item_id for c in out}
    extra: list[str] = []
    for cat in state.top_categories(top_categories):
        extra.extend(i for i, _ in pool.category_top.get(cat, []))
    own = sorted(state.items.items(), key=lambda kv: (-kv[1], kv[0]))[:own_history]
    extra.extend(i for i, _ in own)
    for item in extra:
        if item not in seen:
            seen.add(item)
            out.append(pool.candidate(item))
    return out
