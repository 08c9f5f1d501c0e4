"""The lookup rules, free of gRPC and of I/O: validate requests, build an answer from a stored list
(filtered, cut to k) or from the popular items. serving.core does the reading."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from contract import compact, keys
from contract.schema import valid_id

MAX_FILTER_CATEGORIES = 100
MAX_EXCLUDED_ITEMS = 1000
MAX_BATCH = 100
MAX_PLACEMENT = 64
USER_ID_RULE = "user_id must be 1-64 characters of letters, digits, '_', '.', ':' or '-'"
# a gRPC request protobuf cannot decode; {message} is the request's type
UNDECODABLE_RULE = ("the request is not a valid {message}: send a protobuf message whose string fields (user_id, "
                    "placement, include_categories, exclude_categories, exclude_items) are UTF-8 text")


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


NO_FILTERS = Filters()


def filters_of(include_categories=(), exclude_categories=(), exclude_items=()) -> Filters:
    """Filters from a request's lists (the shared NO_FILTERS when all are empty: the fast path)."""
    if not (include_categories or exclude_categories or exclude_items):
        return NO_FILTERS
    return Filters(frozenset(include_categories), frozenset(exclude_categories), frozenset(exclude_items))


@dataclass(frozen=True)
class Request:
    user_id: str
    k: int
    filters: Filters = NO_FILTERS
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
    request_id: str = ""  # set by the service that serves it (contract.exposures.new_request_id)
    experiments: dict[str, str] = field(default_factory=dict)  # experiment -> arm
    segments: list[str] = field(default_factory=list)  # the user's segments as of the list
    rules_version: str = ""  # the editorial rules applied ("" none)


def check_user(user_id: str) -> None:
    if not valid_id(user_id or ""):
        raise InvalidRequest(USER_ID_RULE)


def check_request(user_id: str, k: int, default_k: int, max_k: int, filters: Filters = NO_FILTERS,
                  placement: str = "") -> Request:
    """Validates a request; k = 0 becomes default_k and k > max_k is cut to max_k."""
    check_user(user_id)
    if k < 0:
        raise InvalidRequest("k must be >= 0 (0 means the default)")
    if len(filters.include_categories) > MAX_FILTER_CATEGORIES or len(filters.exclude_categories) > MAX_FILTER_CATEGORIES:
        raise InvalidRequest(f"include_categories and exclude_categories take at most {MAX_FILTER_CATEGORIES} entries each")
    if len(filters.exclude_items) > MAX_EXCLUDED_ITEMS:
        raise InvalidRequest(f"exclude_items takes at most {MAX_EXCLUDED_ITEMS} entries")
    if len(placement) > MAX_PLACEMENT:
        raise InvalidRequest(f"placement takes at most {MAX_PLACEMENT} characters")
    return Request(user_id, min(k or default_k, max_k), filters, placement)


@dataclass
class UserFeatures:
    user_id: str
    found: bool
    features: dict[str, float] = field(default_factory=dict)
    top_categories: list[str] = field(default_factory=list)
    feature_ts_ms: int = 0
    window_end_ms: int = 0
    segments: list[str] = field(default_factory=list)


def popular_items(trending: list[tuple[bytes, float]], metas: list[bytes | None]) -> list[keys.ScoredItem]:
    """The trending board (ZREVRANGE WITHSCORES) with item categories, scores scaled to the top."""
    top = trending[0][1] if trending else 1.0
    return [keys.ScoredItem(i.decode(), s / top if top else 0.0, keys.ItemMeta.decode(m).category if m else "")
            for (i, s), m in zip(trending, metas)]


@dataclass(frozen=True)
class Editorial:
    """The applied editorial rules (contract.editorial's spec, in file order) and the items the
    catalog marks unavailable; the precedence is contract.editorial's."""

    rules: tuple[dict, ...] = ()
    unavailable: frozenset[str] = frozenset()
    version: str = ""

    def __bool__(self) -> bool:
        return bool(self.rules or self.unavailable)

    def active(self, placement: str, segments: list[str], now_ms: int) -> list[dict]:
        return [r for r in self.rules if r["start_ms"] <= now_ms < r["end_ms"]
                and (not r["placements"] or placement in r["placements"])
                and (not r["segments"] or any(s in r["segments"] for s in segments))]

    def apply(self, items: list[keys.ScoredItem], r: Request, segments: list[str], now_ms: int
              ) -> list[keys.ScoredItem]:
        """items: the whole list, already through the request's filters; returns it cut to k."""
        rules = self.active(r.placement, segments, now_ms)

        def targets(rule: dict, item: keys.ScoredItem) -> bool:
            return item.item_id == rule["item"] if rule["item"] else item.category == rule["category"]

        excludes = [x for x in rules if x["action"] == "exclude"]
        factors = [x for x in rules if x["action"] in ("boost", "bury")]

        def allowed(item: keys.ScoredItem) -> bool:
            return (item.item_id not in self.unavailable and r.filters.keep(item)
                    and not any(targets(x, item) for x in excludes))

        kept, rescored = [], False
        for item in items:
            if not allowed(item):
                continue
            factor, reasons = 1.0, item.reasons
            for x in factors:
                if targets(x, item):
                    factor *= x["factor"]
            if factor > 1.0:
                reasons = ("boosted", *reasons)
            if factor != 1.0:  # a negative score (a ranking model's) is divided: a boost always raises it
                score = item.score * factor if item.score >= 0 else item.score / factor
                item, rescored = keys.ScoredItem(item.item_id, score, item.category, reasons), True
            kept.append(item)
        if rescored:  # only then: a list is in score order already
            kept.sort(key=lambda i: -i.score)  # stable: ties keep the model's order
        placed: dict[int, keys.ScoredItem] = {}
        pinned: set[str] = set()
        for x in rules:
            if x["action"] != "pin" or x["item"] in pinned:
                continue
            at = next((n for n, i in enumerate(kept) if i.item_id == x["item"]), None)
            item = kept.pop(at) if at is not None else keys.ScoredItem(x["item"], 0.0, x["category"])
            if not allowed(item):
                continue
            position = x["position"] - 1
            while position in placed:
                position += 1
            placed[position] = keys.ScoredItem(item.item_id, item.score, item.category,
                                               ("pinned", *(c for c in item.reasons if c != "pinned")))
            pinned.add(item.item_id)
        out: list[keys.ScoredItem] = []
        rest = iter(kept)
        while len(out) < r.k:
            if len(out) in placed:
                out.append(placed.pop(len(out)))
                continue
            nxt = next(rest, None)
            if nxt is None:
                break
            out.append(nxt)
        out += [placed[p] for p in sorted(placed)][: r.k - len(out)]  # pins past the end of the list
        return out


NO_EDITORIAL = Editorial()


def answer(request: Request, raw: bytes | None, popular: list[keys.ScoredItem], now_ms: int,
           unavailable: str = "", editorial: Editorial = NO_EDITORIAL) -> Recommendations:
    """One answer from the user's stored list (as stored, packed or JSON; or None) or, failing that, from the
    popular items, with the editorial rules applied. `unavailable` names why the store could not
    be read (then raw is None)."""
    r = request
    if raw is not None:
        d = orjson.loads(compact.text(raw))
        segments = [str(s) for s in d.get("segments", ())]
        if editorial:
            items = editorial.apply([keys.stored_item(e) for e in d["items"]], r, segments, now_ms)
        elif r.filters == NO_FILTERS:
            items = [keys.stored_item(e) for e in d["items"][: r.k]]
        else:
            keep, items = r.filters.keep, []
            for e in d["items"]:
                item = keys.stored_item(e)
                if keep(item):
                    items.append(item)
                    if len(items) == r.k:
                        break
        feature_ts = int(d["feature_ts"])
        return Recommendations(r.user_id, items, d["model_version"], feature_ts, max(0, now_ms - feature_ts),
                               placement=r.placement, segments=segments, rules_version=editorial.version)
    if editorial:
        items = editorial.apply(popular, r, [], now_ms)
    else:
        items = [i for i in popular if r.filters.keep(i)][: r.k]
    return Recommendations(r.user_id, items, fallback=True, fallback_reason=unavailable or "no_list",
                           placement=r.placement, rules_version=editorial.version)


def user_features(user_id: str, raw: bytes | None) -> UserFeatures:
    """The user's features as of the last window the job folded in (raw: the profile: value)."""
    if raw is None:
        return UserFeatures(user_id, False)
    p = keys.Profile.decode(raw)
    return UserFeatures(user_id, True, p.features, p.top_categories, p.feature_ts, p.window_end, p.segments)
