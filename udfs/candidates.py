"""Candidate generation and item-side statistics.

Candidates: globally trending items, trending items of the user's top categories, trending items
among the users of the user's segments (online only, candidates.per_segment), and the user's own
items. Item statistics are forward-decayed sums: an interaction adds w * 2^((t - landmark) /
half_life), so no periodic decay pass is needed; all boards share one landmark, and when the
exponent grows large every board is rescaled and the landmark moved (the same math in Python
here and in the Redis Lua script `contract/lua/item_stats.lua`). Features use ratios of scores
within a board (share of the top, or purchases / views), which do not depend on the landmark.

Boards (short = item_half_life_s, long = item_long_half_life_s):
  GLOBAL ("")          item -> short popularity (global trending; candidates)
  <category>           item -> short popularity within the category (candidates)
  segment boards       item -> short popularity among a segment's users (the job's Redis only:
                       contract/lua/segment_stats.lua)
  LONG                 item -> long popularity
  CATS / CATS_LONG     category -> short / long popularity
  VIEWS / BUYS         item (and ALL) -> long-decayed views / purchases (conversion)
  REBUYS               item (and ALL) -> long-decayed repeat purchases: purchases that were a new
                       occasion of an item the buyer had bought before (repurchase rate)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from contract import keys
from udfs.features import EVENT_WEIGHTS, UserState, memory_items

RESCALE_EXPONENT = 256.0  # rescale before 2^exponent nears float limits (2^1024)
GLOBAL, LONG, CATS, CATS_LONG, VIEWS, BUYS, REBUYS = "", ":long", ":cats", ":cats:long", ":views", ":buys", ":rebuys"
ALL = keys.ALL_ITEMS  # the member of the count boards that sums every item
LONG_BOARDS = (LONG, CATS_LONG, VIEWS, BUYS, REBUYS)


@dataclass(frozen=True, slots=True)
class Candidate:
    item_id: str
    category: str
    price: float
    popularity: float  # share of the top item's short score
    popularity_long: float  # share of the top item's long score
    category_popularity: float  # the category's share of the top category (short)
    category_popularity_long: float
    conversion: float  # purchases / views, smoothed toward the global rate
    repurchase_rate: float = 0.0  # repeat purchases / purchases, smoothed toward the global rate
    category_share: float = 0.0  # the item's short score over the top one's, in its own category's board


def item_weight(n_view: int, n_click: int, n_cart: int, n_purchase: int) -> float:
    w = EVENT_WEIGHTS
    return n_view * w["view"] + n_click * w["click"] + n_cart * w["add_to_cart"] + n_purchase * w["purchase"]


@dataclass
class TrendingBoards:
    """In-memory item statistics, mirroring what the job keeps in Redis."""

    half_life_s: float
    long_half_life_s: float
    landmark: int | None = None
    boards: dict[str, dict[str, float]] = field(default_factory=dict)

    def _exp(self, t: int, board: str) -> float:
        hl = self.long_half_life_s if board in LONG_BOARDS else self.half_life_s
        return (t - (self.landmark or t)) / (hl * 1000.0)

    def add(self, t: int, item_id: str, category: str, counts: tuple[int, int, int, int], rebuys: int = 0) -> None:
        if self.landmark is None:
            self.landmark = t
        if self._exp(t, GLOBAL) > RESCALE_EXPONENT:
            self.boards = {b: {k: v * math.pow(2.0, -self._exp(t, b)) for k, v in s.items()}
                           for b, s in self.boards.items()}
            self.landmark = t
        w = item_weight(*counts)
        for board, member, amount in ((GLOBAL, item_id, w), (category, item_id, w), (LONG, item_id, w),
                                      (CATS, category, w), (CATS_LONG, category, w),
                                      (VIEWS, item_id, counts[0]), (VIEWS, ALL, counts[0]),
                                      (BUYS, item_id, counts[3]), (BUYS, ALL, counts[3]),
                                      (REBUYS, item_id, rebuys), (REBUYS, ALL, rebuys)):
            if amount:
                scores = self.boards.setdefault(board, {})
                scores[member] = scores.get(member, 0.0) + amount * math.pow(2.0, self._exp(t, board))

    def top(self, n: int, board: str = GLOBAL) -> list[tuple[str, float]]:
        scores = self.boards.get(board, {})
        return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    def stats(self, items: set[str]) -> ItemStats:
        """What the job's scorer reads for these items (see jobs.store.CandidateSource)."""
        b = self.boards
        long_ = b.get(LONG, {})
        return ItemStats(
            long={i: long_[i] for i in items if i in long_},
            long_top=max(long_.values(), default=0.0),
            categories=dict(b.get(CATS, {})),
            categories_long=dict(b.get(CATS_LONG, {})),
            views={i: b.get(VIEWS, {})[i] for i in items | {ALL} if i in b.get(VIEWS, {})},
            buys={i: b.get(BUYS, {})[i] for i in items | {ALL} if i in b.get(BUYS, {})},
            rebuys={i: b.get(REBUYS, {})[i] for i in items | {ALL} if i in b.get(REBUYS, {})},
        )


@dataclass
class ItemStats:
    long: dict[str, float] = field(default_factory=dict)
    long_top: float = 0.0
    categories: dict[str, float] = field(default_factory=dict)
    categories_long: dict[str, float] = field(default_factory=dict)
    views: dict[str, float] = field(default_factory=dict)  # includes ALL
    buys: dict[str, float] = field(default_factory=dict)
    rebuys: dict[str, float] = field(default_factory=dict)  # includes ALL


@dataclass
class CandidatePool:
    """What every user's candidates are drawn from at one moment: trending boards, item statistics
    and the catalog. Build once per refresh, not per user."""

    global_top: list[tuple[str, float]]
    category_top: dict[str, list[tuple[str, float]]]
    catalog: dict[str, tuple[str, float]]
    stats: ItemStats = field(default_factory=ItemStats)
    prior_weight: float = 20.0  # pseudo-views pulling conversion toward the global rate
    segment_top: dict[str, list[tuple[str, float]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.top_score = self.global_top[0][1] if self.global_top else 1.0
        self.scores: dict[str, float] = {}
        # (category, item) -> the item's score over the top one's in that category's board
        self.in_category: dict[tuple[str, str], float] = {}
        for cat, board in self.category_top.items():
            self.scores.update(board)
            top = board[0][1] if board else 0.0
            self.in_category.update({(cat, i): min(v / top, 1.0) for i, v in board} if top > 0 else {})
        self.scores.update(self.global_top)
        st = self.stats
        all_views = st.views.get(ALL, 0.0)
        self.prior = st.buys.get(ALL, 0.0) / all_views if all_views > 0 else 0.0
        all_buys = st.buys.get(ALL, 0.0)
        self.repurchase_prior = st.rebuys.get(ALL, 0.0) / all_buys if all_buys > 0 else 0.0
        self.cat_top = max(st.categories.values(), default=0.0)
        self.cat_top_long = max(st.categories_long.values(), default=0.0)
        self._made: dict[str, Candidate] = {}
        self._asked: set[str] = set(self.scores) | set(st.long)
        self.global_candidates = [self.candidate(i) for i, _ in self.global_top]

    def unasked(self, items) -> list[str]:
        """Of these items, those whose statistics the pool has not been given yet (users' own
        items outside the trending boards); fetch them and pass them to add_stats."""
        return sorted(i for i in items if i not in self._asked)

    def add_stats(self, items: list[str], stats: ItemStats) -> None:
        """Merge the statistics of more items (read at the same moment as the pool's own or
        later), before any candidate of them is made."""
        st = self.stats
        for mine, theirs in ((st.long, stats.long), (st.views, stats.views), (st.buys, stats.buys),
                             (st.rebuys, stats.rebuys)):
            mine.update({i: v for i, v in theirs.items() if i != ALL})
        self._asked.update(items)
        for i in items:
            self._made.pop(i, None)

    def candidate(self, item: str) -> Candidate:
        made = self._made.get(item)
        if made is None or (made.category == "unknown" and item in self.catalog):
            category, price = self.catalog.get(item, ("unknown", 0.0))
            st = self.stats

            def share(x: float, top: float) -> float:
                return min(x / top, 1.0) if top > 0 else 0.0

            views, buys = st.views.get(item, 0.0), st.buys.get(item, 0.0)
            made = self._made[item] = Candidate(
                item, category, price,
                share(self.scores.get(item, 0.0), self.top_score),
                share(st.long.get(item, 0.0), st.long_top),
                share(st.categories.get(category, 0.0), self.cat_top),
                share(st.categories_long.get(category, 0.0), self.cat_top_long),
                (buys + self.prior_weight * self.prior) / (views + self.prior_weight),
                (st.rebuys.get(item, 0.0) + self.prior_weight * self.repurchase_prior) / (buys + self.prior_weight),
                self.in_category.get((category, item), 0.0),
            )
        return made


def gather_candidates(state: UserState, pool: CandidatePool, top_categories: int, own_history: int,
                      trending: int | None = None, per_category: int | None = None,
                      segments: tuple[str, ...] | list[str] = (), per_segment: int = 0) -> list[Candidate]:
    """Union of global trending, trending in the user's top categories, trending among the users of
    the user's segments and the user's own items, without duplicates, in that order. trending /
    per_category take the top that many of the pool's boards (None: all the pool holds; an
    experiment arm may read deeper than the config)."""
    out = list(pool.global_candidates[:trending])
    seen = {c.item_id for c in out}
    extra: list[str] = []
    for cat in state.top_categories(top_categories):
        extra.extend(i for i, _ in pool.category_top.get(cat, [])[:per_category])
    for segment in segments if per_segment else ():
        extra.extend(i for i, _ in pool.segment_top.get(segment, [])[:per_segment])
    extra.extend(memory_items(state, own_history))
    for item in extra:
        if item not in seen:
            seen.add(item)
            out.append(pool.candidate(item))
    return out
