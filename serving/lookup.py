"""The lookup core, free of gRPC: validate requests, read Redis in one round trip, filter, fall
back to trending when a user has no list."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import redis

from contract import keys
from contract.config import FeatureConfig
from contract.schema import ID_PATTERN

_ID_RE = re.compile(ID_PATTERN)
MAX_FILTER_CATEGORIES = 100
MAX_EXCLUDED_ITEMS = 1000
MAX_BATCH = 100
FALLBACK_POOL = 200  # trending items read for a fallback, before filters


class InvalidRequest(ValueError):
    """A request the service refuses (INVALID_ARGUMENT); the message says what is allowed."""


@dataclass(frozen=True)
class Filters:
    include_categories: frozenset[str] = frozenset()
    exclude_categories: frozenset[str] = frozenset()
    exclude_items: frozenset[str] = frozenset()

    def keep(self, item: keys.ScoredItem) -> bool:
        if item.item_id in self.exclude_items or item.category in self.exclude_categories:
            return False
        return not self.include_categories or item.category in self.include_categories

    @property
    def by_category(self) -> bool:
        return bool(self.include_categories or self.exclude_categories)


@dataclass(frozen=True)
class Request:
    user_id: str
    k: int
    filters: Filters = Filters()
    placement: str = ""


@dataclass
class Recommendations:
    user_id: str
    items: list[keys.ScoredItem]
    model_version: str = ""
    feature_ts_ms: int = 0
    list_age_ms: int = 0
    fallback: bool = False
    fallback_reason: str = ""
    placement: str = ""
    extra: dict = field(default_factory=dict)


def check_user(user_id: str) -> None:
    if not _ID_RE.match(user_id or ""):
        raise InvalidRequest("user_id must be 1-64 characters of letters, digits, '_', '.', ':' or '-'")


def check_request(user_id: str, k: int, default_k: int, max_k: int, filters: Filters = Filters(),
                  placement: str = "") -> Request:
    """Validates a request; k = 0 becomes default_k and k > max_k is cut to max_k."""
    check_user(user_id)
    if k < 0:
        raise InvalidRequest("k must be >= 0 (0 means the default)")
    if len(filters.include_categories) > MAX_FILTER_CATEGORIES or len(filters.exclude_categories) > MAX_FILTER_CATEGORIES:
        raise InvalidRequest(f"include_categories and exclude_categories take at most {MAX_FILTER_CATEGORIES} entries each")
    if len(filters.exclude_items) > MAX_EXCLUDED_ITEMS:
        raise InvalidRequest(f"exclude_items takes at most {MAX_EXCLUDED_ITEMS} entries")
    if len(placement) > 64:
        raise InvalidRequest("placement takes at most 64 characters")
    return Request(user_id, min(k or default_k, max_k), filters, placement)


def get_many(client: redis.Redis, requests: list[Request]) -> list[Recommendations]:
    """Answers for many requests with one pipelined round trip (plus one catalog read when a
    fallback must be filtered by category)."""
    if len(requests) > MAX_BATCH:
        raise InvalidRequest(f"a batch takes at most {MAX_BATCH} requests")
    users = sorted({r.user_id for r in requests})
    pipe = client.pipeline(transaction=False)
    for u in users:
        pipe.get(keys.rec_key(u))
    pipe.zrevrange(keys.TRENDING, 0, FALLBACK_POOL - 1, withscores=True)
    *raws, trending = pipe.execute()
    lists = {u: keys.RecList.decode(raw) for u, raw in zip(users, raws) if raw is not None}
    top = trending[0][1] if trending else 1.0
    popular = [keys.ScoredItem(i.decode(), s / top if top else 0.0) for i, s in trending]
    if any(r.user_id not in lists and r.filters.by_category for r in requests) and popular:
        metas = client.hmget(keys.ITEM_META, [p.item_id for p in popular])
        popular = [keys.ScoredItem(p.item_id, p.score, keys.ItemMeta.decode(m).category if m else "")
                   for p, m in zip(popular, metas)]
    now = int(time.time() * 1000)
    out = []
    for r in requests:
        rec = lists.get(r.user_id)
        if rec is not None:
            items = [i for i in rec.items if r.filters.keep(i)][: r.k]
            out.append(Recommendations(r.user_id, items, rec.model_version, rec.feature_ts,
                                       max(0, now - rec.feature_ts), placement=r.placement))
        else:
            items = [i for i in popular if r.filters.keep(i)][: r.k]
            out.append(Recommendations(r.user_id, items, fallback=True, fallback_reason="no_list",
                                       placement=r.placement))
    return out


@dataclass
class UserFeatures:
    user_id: str
    found: bool
    features: dict[str, float] = field(default_factory=dict)
    top_categories: list[str] = field(default_factory=list)
    feature_ts_ms: int = 0
    window_end_ms: int = 0


def get_user_features(client: redis.Redis, user_id: str, cfg: FeatureConfig) -> UserFeatures:
    """The user's features as of the last window the job folded in."""
    from udfs.features import UserState, describe

    check_user(user_id)
    raw = client.get(keys.feat_key(user_id))
    if raw is None:
        return UserFeatures(user_id, False)
    state = UserState.decode(raw)
    named = describe(state, state.window_end, cfg)
    tops = named.pop("top_categories")
    return UserFeatures(user_id, True, {k: float(v) for k, v in named.items()}, list(tops),
                        state.feature_ts, state.window_end)
