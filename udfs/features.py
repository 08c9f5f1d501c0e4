"""User features: one definition, used by the streaming job and by offline training.

Flink aggregates a user's events per event-time micro-batch window on the JVM (counts, sums,
last timestamps, and the (type, item, category) list); `apply_window` folds that delta into the
user's state, and `user_item_features` turns state + a candidate item into the model's vector.
Frequency and monetary counters decay exponentially with half-lives from the job config.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from contract.config import FeatureConfig

# The model's input, in order. Exported into every model card; the scorer refuses a model whose
# card lists other features.
FEATURE_NAMES: tuple[str, ...] = (
    "recency_s",
    "since_click_s",
    "since_purchase_s",
    "views_short",
    "clicks_short",
    "carts_short",
    "purchases_short",
    "events_long",
    "purchases_monetary",
    "spend_monetary",
    "category_affinity",
    "item_affinity",
    "item_popularity",
    "item_price_log",
)
N_USER_FEATURES = 10  # the first ten depend on the user only
NEVER_S = 30 * 86400.0  # "since" features of a user who never did it
EVENT_WEIGHTS = {"view": 1.0, "click": 2.0, "add_to_cart": 4.0, "purchase": 8.0}


@dataclass(frozen=True, slots=True)
class WindowDelta:
    """One user's events in one micro-batch window, as Flink's window aggregation emits it."""

    user_id: str
    window_end: int  # ms
    n_view: int
    n_click: int
    n_cart: int
    n_purchase: int
    purchase_value: float
    last_ts: int
    last_click_ts: int  # 0 when none
    last_purchase_ts: int  # 0 when none
    events: str  # "type|item_id|category;..." in no particular order


def decay(value: float, dt_ms: float, half_life_s: float) -> float:
    if dt_ms <= 0:
        return value
    return value * math.pow(2.0, -dt_ms / (half_life_s * 1000.0))


@dataclass
class UserState:
    """What `feat:{user}` holds. Counters are decayed to `as_of` (ms)."""

    window_end: int = 0
    feature_ts: int = 0
    as_of: int = 0
    last_click_ts: int = 0
    last_purchase_ts: int = 0
    views_short: float = 0.0
    clicks_short: float = 0.0
    carts_short: float = 0.0
    purchases_short: float = 0.0
    events_long: float = 0.0
    purchases_monetary: float = 0.0
    spend_monetary: float = 0.0
    affinity: dict[str, float] = field(default_factory=dict)
    items: dict[str, float] = field(default_factory=dict)

    def encode(self) -> str:
        return json.dumps(self.__dict__, separators=(",", ":"))

    @staticmethod
    def decode(raw: str | bytes | None) -> UserState:
        if not raw:
            return UserState()
        return UserState(**json.loads(raw))

    def decayed_to(self, t: int, cfg: FeatureConfig) -> UserState:
        """A copy with every counter decayed from `as_of` to time t (ms)."""
        dt = t - self.as_of
        s = UserState(**{**self.__dict__, "affinity": dict(self.affinity), "items": dict(self.items)})
        if dt <= 0 or self.as_of == 0:
            s.as_of = max(t, self.as_of)
            return s
        for name in ("views_short", "clicks_short", "carts_short", "purchases_short"):
            setattr(s, name, decay(getattr(self, name), dt, cfg.short_half_life_s))
        s.events_long = decay(self.events_long, dt, cfg.long_half_life_s)
        s.purchases_monetary = decay(self.purchases_monetary, dt, cfg.monetary_half_life_s)
        s.spend_monetary = decay(self.spend_monetary, dt, cfg.monetary_half_life_s)
        s.affinity = {c: decay(w, dt, cfg.interest_half_life_s) for c, w in self.affinity.items()}
        s.items = {i: decay(w, dt, cfg.interest_half_life_s) for i, w in self.items.items()}
        s.as_of = t
        return s

    def top_categories(self, n: int) -> list[str]:
        return [c for c, _ in sorted(self.affinity.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def parse_events(events: str) -> list[tuple[str, str, str]]:
    out = []
    for part in events.split(";"):
        if part:
            etype, item, category = part.split("|", 2)
            out.append((etype, item, category))
    return out


def apply_window(state: UserState, d: WindowDelta, cfg: FeatureConfig) -> UserState:
    """Fold one window's delta into the state. A window at or before state.window_end is a replay
    and leaves the state unchanged (idempotent recovery)."""
    if d.window_end <= state.window_end:
        return state
    s = state.decayed_to(d.window_end, cfg)
    s.window_end = d.window_end
    s.feature_ts = max(s.feature_ts, d.last_ts)
    s.last_click_ts = max(s.last_click_ts, d.last_click_ts)
    s.last_purchase_ts = max(s.last_purchase_ts, d.last_purchase_ts)
    s.views_short += d.n_view
    s.clicks_short += d.n_click
    s.carts_short += d.n_cart
    s.purchases_short += d.n_purchase
    s.events_long += d.n_view + d.n_click + d.n_cart + d.n_purchase
    s.purchases_monetary += d.n_purchase
    s.spend_monetary += d.purchase_value
    for etype, item, category in parse_events(d.events):
        w = EVENT_WEIGHTS.get(etype, 1.0)
        s.affinity[category] = s.affinity.get(category, 0.0) + w
        s.items[item] = s.items.get(item, 0.0) + w
    if len(s.items) > cfg.max_items_per_user:
        keep = sorted(s.items.items(), key=lambda kv: (-kv[1], kv[0]))[: cfg.max_items_per_user]
        s.items = dict(keep)
    return s


def user_vector(state: UserState, t: int) -> np.ndarray:
    """The user half of the model input at time t (ms): FEATURE_NAMES[:N_USER_FEATURES].
    `state` must already be decayed to t."""

    def since(ts: int) -> float:
        return min((t - ts) / 1000.0, NEVER_S) if ts > 0 else NEVER_S

    return np.array([
        since(state.feature_ts),
        since(state.last_click_ts),
        since(state.last_purchase_ts),
        state.views_short,
        state.clicks_short,
        state.carts_short,
        state.purchases_short,
        state.events_long,
        state.purchases_monetary,
        state.spend_monetary,
    ], dtype=np.float64)


def user_item_matrix(
    state: UserState,
    t: int,
    item_ids: list[str],
    item_categories: list[str],
    item_prices: np.ndarray,
    item_popularity: np.ndarray,
) -> np.ndarray:
    """Model input for the user and each of n candidate items at time t: an (n, features) float32
    matrix in FEATURE_NAMES order. One definition for the job and for training."""
    n = len(item_ids)
    x = np.empty((n, len(FEATURE_NAMES)), dtype=np.float64)
    x[:, :N_USER_FEATURES] = user_vector(state, t)
    total_aff = sum(state.affinity.values()) or 1.0
    total_items = sum(state.items.values()) or 1.0
    aff = state.affinity
    x[:, N_USER_FEATURES] = [aff.get(c, 0.0) / total_aff for c in item_categories]
    own = state.items
    x[:, N_USER_FEATURES + 1] = [own.get(i, 0.0) / total_items for i in item_ids] if own else 0.0
    x[:, N_USER_FEATURES + 2] = item_popularity
    x[:, N_USER_FEATURES + 3] = np.log1p(np.maximum(np.asarray(item_prices, dtype=np.float64), 0.0))
    return x.astype(np.float32)


def user_item_features(
    state: UserState,
    t: int,
    item_id: str,
    item_category: str,
    item_price: float,
    item_popularity: float,
) -> list[float]:
    """One (user, item) row of `user_item_matrix`, as float64 values (for inspection and tests)."""
    row = user_item_matrix(state, t, [item_id], [item_category], np.array([item_price]), np.array([item_popularity]))
    return [float(v) for v in row[0]]
