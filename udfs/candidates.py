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


def gather_candidates(
    state: UserState,
    global_top: list[tuple[str, float]],
    category_top: dict[str, list[tuple[str, float]]],
    catalog: dict[str, tuple[str, float]],
    top_categories: int,
    own_history: int,
) -> list[Candidate]:
    """Union of global trending, trending in the user's top categories and the user's own items,
    without duplicates, in that order. Popularity is relative to the global top score."""
    top_score = global_top[0][1] if global_top else 1.0
    scores = dict(global_top)
    for board in category_top.values():
        scores.update(board)
    order: list[str] = [i for i, _ in global_top]
    for cat in state.top_categories(top_categories):
        order.extend(i for i, _ in category_top.get(cat, []))
    own = sorted(state.items.items(), key=lambda kv: (-kv[1], kv[0]))[:own_history]
    order.extend(i for i, _ in own)
    seen: set[str] = set()
    out = []
    for item in order:
        if item in seen:
            continue
        seen.add(item)
        category, price = catalog.get(item, ("unknown", 0.0))
        pop = min(scores.get(item, 0.0) / top_score, 1.0) if top_score > 0 else 0.0
        out.append(Candidate(item, category, price, pop))
    return out
