"""User features: one definition, used by the streaming job and by offline training.

Flink groups a user's valid, on-time events per event-time micro-batch window on the JVM and
hands the window's event list to Python in Arrow batches. `apply_window` folds it into the user's
state: duplicates (by event_id, within the dedup horizon) and opted-out events are counted and
not used; the rest update recency, sliding-window counts and sums (per window, in
window/window_slices steps), sessions, baskets and decayed category/item affinity.
`user_item_matrix` turns the state and candidate items into the model's input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from operator import attrgetter
from typing import NamedTuple

import numpy as np
import orjson

from contract import compact, keys
from contract.config import FeatureConfig, duration_label, user_feature_names
from contract.schema import CONTROL_ACTIONS, QUARANTINED
from contract.segments import Segments

NEVER_S = 3650 * 86400.0  # "since" features of a user who never did it (longer than any horizon kept)
NO_INTERVAL = -1.0  # ui_purchase_interval_s / ui_repurchase_due of an item bought on fewer than two occasions
MEMORY_RESCALE = 64.0  # rescale the memory's forward-decayed weights before 2^exponent grows large
WEIGHT_DIGITS = 6  # significant digits a stored decayed weight keeps (a relative error under 5e-6)
EVENT_WEIGHTS = {"view": 1.0, "click": 2.0, "add_to_cart": 4.0, "purchase": 8.0}
TYPE_SLOT = {"view": 0, "click": 1, "add_to_cart": 2, "purchase": 3}  # bucket: [v, c, a, p, value]


def new_purchase_occasion(ts: int, last_purchase_ts: int, gap_ms: int) -> bool:
    """A purchase is a new occasion of an item unless one was less than a session gap from it
    (the lines of one basket are one occasion). Shared by the memory and the training labels."""
    return not last_purchase_ts or abs(ts - last_purchase_ts) > gap_ms


_w = duration_label


def item_feature_names(cfg: FeatureConfig) -> tuple[str, ...]:
    short, long_ = _w(cfg.item_half_life_s), _w(cfg.item_long_half_life_s)
    return ("category_affinity", "item_affinity", f"item_popularity_{short}", f"item_popularity_{long_}",
            f"category_popularity_{short}", f"category_popularity_{long_}", "item_conversion", "item_price_log",
            *memory_feature_names(cfg))


def memory_feature_names(cfg: FeatureConfig) -> tuple[str, ...]:
    """The user x item memory's features (see UserState.memory), then the item's repurchase rate
    across users, its popularity within its category, and its price against the user's mean
    purchase value (log ratio; 0 for a user who bought nothing in the longest monetary window)."""
    return (*(f"ui_weight_{_w(h)}" for h in cfg.memory_half_lives_s), "ui_purchases", "ui_since_s",
            "ui_since_purchase_s", "ui_purchase_interval_s", "ui_repurchase_due", "category_affinity_long",
            "item_repurchase_rate", "item_category_share", "price_vs_usual_log")


def feature_names(cfg: FeatureConfig) -> tuple[str, ...]:
    """The model's input, in order; exported into every model card and checked by the scorer."""
    return user_feature_names(cfg) + item_feature_names(cfg)


# The [features] fields that give a user's stored state (feat:{user}) its shape: a state written
# under one value is misread under another, silently (wrong features, a wrong model input), so a
# job does not resume across a change to one (jobs.store.check_state_layout).
STATE_SHAPE = {
    "frequency_windows_s": "the count windows a user's buckets are kept per",
    "monetary_windows_s": "the spend windows a user's buckets are kept per",
    "window_slices": "the slices each window's buckets are cut into: a stored bucket's index would mean another time",
    "memory_half_lives_s": "the weights kept per remembered item",
    "dedup_horizon_s": "the time buckets the seen event ids are kept in: duplicates could be counted again",
}
FEATURE_SET = "feature_names"


def state_layout(cfg: FeatureConfig) -> dict[str, object]:
    """What a stored state's shape depends on: the STATE_SHAPE fields and the feature set."""
    out: dict[str, object] = {f"features.{name}": _plain(getattr(cfg, name)) for name in STATE_SHAPE}
    out[FEATURE_SET] = list(feature_names(cfg))
    return out


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def layout_changes(old: dict, new: dict) -> dict[str, str]:
    """Each field of the layout that differs -> why a state written under old cannot be read under new."""
    why = {f"features.{k}": v for k, v in STATE_SHAPE.items()}
    why[FEATURE_SET] = "the features kept and the model's input"
    return {k: why.get(k, "the state's shape") for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


class Event(NamedTuple):
    """One valid interaction inside a window delta. A NamedTuple, not a frozen dataclass: the job
    makes one per event, and a frozen dataclass sets each field through object.__setattr__."""

    event_id: str
    type: str
    item_id: str
    category: str
    ts: int
    value: float
    consent: bool

    def encode(self) -> str:
        return f"{self.event_id}|{self.type}|{self.item_id}|{self.category}|{self.ts}|{self.value!r}|{int(self.consent)}"


def parse_events(events: str) -> list[Event]:
    """The window's event list as Flink's LISTAGG builds it (see jobs.recommend.EVENT_LIST_SQL)."""
    out = []
    for part in events.split(";"):
        if part:
            eid, etype, item, category, ts, value, consent = part.split("|")
            out.append(Event(eid, etype, item, category, int(ts), float(value), consent not in _WITHDRAWN))
    return out


_WITHDRAWN = frozenset(("0", "false"))


class WindowDelta(NamedTuple):
    """One user's events in one micro-batch window, as Flink's window aggregation emits it (a
    NamedTuple: the job makes one per row of every batch)."""

    user_id: str
    window_end: int  # ms
    events: str  # Event.encode() joined by ';', in no particular order


@dataclass
class Ledger:
    used: int = 0
    duplicate: int = 0
    opted_out: int = 0
    quarantined: int = 0
    late: int = 0  # only after a restart: see apply_window
    # control records applied (not interactions: their own hash, keys.CONTROL)
    erase: int = 0
    opt_out: int = 0
    opt_in: int = 0

    def add(self, other: Ledger) -> None:  # once per user-window: spelled out, not a loop over fields
        self.used += other.used
        self.duplicate += other.duplicate
        self.opted_out += other.opted_out
        self.quarantined += other.quarantined
        self.late += other.late
        self.erase += other.erase
        self.opt_out += other.opt_out
        self.opt_in += other.opt_in

    def interactions(self) -> dict[str, int]:
        return {"used": self.used, "duplicate": self.duplicate, "opted_out": self.opted_out,
                "quarantined": self.quarantined, "late": self.late}

    def controls(self) -> dict[str, int]:
        return {a: getattr(self, a) for a in CONTROL_ACTIONS}


@dataclass
class UserState:
    """What `feat:{user}` holds."""

    window_end: int = 0
    feature_ts: int = 0  # newest used event (ms)
    as_of: int = 0  # affinity is decayed to this time (ms)
    last_click_ts: int = 0
    last_purchase_ts: int = 0
    # window seconds (as str) -> slice index (as str) -> [views, clicks, carts, purchases, value]
    buckets: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    session_start: int = 0
    session_events: int = 0
    session_purchased: bool = False
    sessions: list[int] = field(default_factory=list)  # session start times within session window
    baskets: list[int] = field(default_factory=list)  # starts of sessions with a purchase
    affinity: dict[str, float] = field(default_factory=dict)
    items: dict[str, float] = field(default_factory=dict)
    # event ids within the dedup horizon: bucket (event ts // dedup_bucket_ms, as str) -> the ids
    # joined by " " (ids never hold a space); 11 bytes an event instead of 27 as id -> ts
    seen: dict[str, str] = field(default_factory=dict)
    # user x item memory, the memory_items items of largest first-half-life weight: item ->
    # [weight per memory half-life (forward-decayed: w * 2^((ts - memory_landmark) / half-life)),
    #  purchase occasions (purchases more than session_gap_s apart), last interaction ts,
    #  last purchase ts, first purchase ts (ms; 0: never)]
    memory: dict[str, list[float]] = field(default_factory=dict)
    # category -> forward-decayed weight at the first memory half-life (long-term affinity)
    categories_long: dict[str, float] = field(default_factory=dict)
    memory_landmark: int = 0  # ms; 0 before the first used event
    erased_ts: int = 0  # the last erase or opt_out (ms); nothing before it is kept but the ids above
    opted_out: bool = False  # opt_out until opt_in: events are counted opted_out, not used

    def personalized(self) -> bool:
        """Whether the user gets a list: a used event since the last erase, and not opted out."""
        return self.feature_ts > self.erased_ts and not self.opted_out

    def encode(self) -> str:
        return orjson.dumps(self.__dict__).decode()

    @staticmethod
    def decode(raw: str | bytes | None) -> UserState:
        if not raw:
            return UserState()
        return UserState(**orjson.loads(compact.text(raw)))

    def top_categories(self, n: int) -> list[str]:
        return [c for c, _ in sorted(self.affinity.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def _slice_of(window_s: float, slices: int) -> int:
    """The step (ms) a sliding window moves in."""
    return max(1, int(window_s * 1000 / slices))


@lru_cache(maxsize=64)
def _boards(frequency: tuple[float, ...], monetary: tuple[float, ...], slices: int) -> tuple[tuple[str, float, int], ...]:
    """(bucket key, window seconds, slice ms) for every window, computed once per config."""
    return tuple((f"{w:g}", w, _slice_of(w, slices)) for w in sorted(set(frequency) | set(monetary)))


def boards_of(cfg: FeatureConfig) -> tuple[tuple[str, float, int], ...]:
    return _boards(tuple(cfg.frequency_windows_s), tuple(cfg.monetary_windows_s), cfg.window_slices)


def window_sum(state: UserState, window_s: float, t: int, cfg: FeatureConfig) -> list[float]:
    """[views, clicks, carts, purchases, value] over the window ending at t: the slices whose end
    is after t - window (the window moves in window/window_slices steps)."""
    size = _slice_of(window_s, cfg.window_slices)
    horizon = t - window_s * 1000
    total = [0.0] * 5
    for idx, counts in state.buckets.get(f"{window_s:g}", {}).items():
        if (int(idx) + 1) * size > horizon:
            for k in range(5):
                total[k] += counts[k]
    return total


def apply_window(state: UserState, d: WindowDelta, cfg: FeatureConfig,
                 events: list[Event] | None = None, rebought: list[tuple[str, str]] | None = None) -> tuple[UserState, Ledger]:
    """Fold one window into the state. events: d.events already parsed (saves a parse). rebought:
    gets the item of every used purchase that is a new occasion of an item the memory holds a
    purchase of (the item statistics' repeat purchases).

    A window at or before state.window_end changes nothing. It only arrives after a restart:
    - a replay of a window folded before the failure: its events are in `seen`, counted already;
    - events the restarted job let through because watermarks are not checkpointed (the new
      watermark starts low), whose window had closed before the failure: the uninterrupted job
      sent them to the late topic. Their ids are new here, so they are counted as late: the
      ledger stays exact and the features equal the uninterrupted run's."""
    ledger = Ledger()
    if d.window_end <= state.window_end:
        parsed = parse_events(d.events) if events is None else events
        seen_ids = seen_event_ids(state.seen, cfg)
        ledger.late = sum(1 for e in parsed if e.event_id not in seen_ids)  # per record, as SQL counts late
        return state, ledger
    # a new state; the containers folded into are copies (the original never changes)
    t = d.window_end
    dt = t - state.as_of if state.as_of else 0
    if dt > 0:  # exponential decay to t: one factor 2^(-dt / half-life) for every entry
        f = math.pow(2.0, -dt / (cfg.interest_half_life_s * 1000.0))
        affinity = {c: w * f for c, w in state.affinity.items()}
        items = {i: w * f for i, w in state.items.items()}
    else:
        affinity, items = dict(state.affinity), dict(state.items)
    # ids are forgotten, before matching, by whole buckets: those ending at or before the horizon
    # (so an id is remembered at least dedup_horizon_s, at most one bucket longer)
    dedup_ms = dedup_bucket_ms(cfg)  # its own name: the slice loop below rebinds `size`
    horizon = t - cfg.dedup_horizon_s * 1000
    seen = {k: v for k, v in _seen_buckets(state.seen, dedup_ms).items() if (int(k) + 1) * dedup_ms > horizon}
    seen_ids = set(" ".join(seen.values()).split())
    fresh: dict[str, list[str]] = {}
    buckets = {w: {i: list(c) for i, c in b.items()} for w, b in state.buckets.items()}
    slices = [(buckets.setdefault(key, {}), size) for key, _, size in boards_of(cfg)]
    gap_ms = cfg.session_gap_s * 1000
    feature_ts, last_click, last_purchase = state.feature_ts, state.last_click_ts, state.last_purchase_ts
    session_start, session_events, session_purchased = state.session_start, state.session_events, state.session_purchased
    sessions, baskets = list(state.sessions), list(state.baskets)
    parsed = parse_events(d.events) if events is None else events
    erased_ts, opted_out = state.erased_ts, state.opted_out
    # the memory is copied on touch: an entry is a list, and the original state never changes
    memory, categories_long, landmark = dict(state.memory), dict(state.categories_long), state.memory_landmark
    half_lives = [h * 1000.0 for h in cfg.memory_half_lives_s]
    nh = len(half_lives)
    if landmark and (t - landmark) / min(half_lives) > MEMORY_RESCALE:
        memory = {i: [_significant(m[k] * math.pow(2.0, -(t - landmark) / half_lives[k])) for k in range(nh)]
                  + m[nh:] for i, m in memory.items()}
        f = math.pow(2.0, -(t - landmark) / half_lives[0])
        categories_long = {c: _significant(w * f) for c, w in categories_long.items()}
        landmark = t
    touched: set[str] = set()
    touched_categories: set[str] = set()
    for e in sorted(parsed, key=_TIME_ORDER):
        eid, etype, item, category, ts, value, consent = e
        if eid in seen_ids:
            ledger.duplicate += 1
            continue
        seen_ids.add(eid)
        bucket = fresh.get(seen_key := str(ts // dedup_ms))
        if bucket is None:
            fresh[seen_key] = [eid]
        else:
            bucket.append(eid)
        if etype in CONTROL_ACTIONS:
            setattr(ledger, etype, getattr(ledger, etype) + 1)
            if etype == "opt_in":
                opted_out = False
                continue
            # erase / opt_out: everything the events made goes; feature_ts moves to the request's
            # time (it versions the Redis writes, which never go back), and reads as "never"
            opted_out = opted_out or etype == "opt_out"
            erased_ts = feature_ts = max(feature_ts, ts)
            last_click = last_purchase = session_start = session_events = 0
            session_purchased = False
            sessions, baskets, affinity, items = [], [], {}, {}
            memory, categories_long, landmark = {}, {}, 0
            buckets.clear()
            slices = [(buckets.setdefault(key, {}), size) for key, _, size in boards_of(cfg)]
            continue
        if etype.startswith(QUARANTINED):
            ledger.quarantined += 1
            continue
        if not consent or opted_out:
            ledger.opted_out += 1
            continue
        ledger.used += 1
        if feature_ts <= erased_ts or ts - feature_ts > gap_ms:
            session_start, session_events, session_purchased = ts, 0, False
            sessions.append(ts)
        session_events += 1
        if ts > feature_ts:
            feature_ts = ts
        if etype == "click" and ts > last_click:
            last_click = ts
        slot = TYPE_SLOT[etype]
        purchase = etype == "purchase"
        for board, size in slices:
            key = str(ts // size)
            b = board.get(key)
            if b is None:
                b = board[key] = [0.0] * 5
            b[slot] += 1
            if purchase:
                b[4] += value
        if purchase:
            if ts > last_purchase:
                last_purchase = ts
            if not session_purchased:
                session_purchased = True
                baskets.append(session_start)
        weight = EVENT_WEIGHTS[etype]
        affinity[category] = affinity.get(category, 0.0) + weight
        items[item] = items.get(item, 0.0) + weight
        if not landmark:
            landmark = ts
        m = memory.get(item)
        if m is None:
            m = memory[item] = [0.0] * nh + [0, 0, 0, 0]
            touched.add(item)
        elif item not in touched:
            m = memory[item] = list(m)
            touched.add(item)
        gain = weight * math.pow(2.0, (ts - landmark) / half_lives[0])
        m[0] += gain
        for k in range(1, nh):
            m[k] += weight * math.pow(2.0, (ts - landmark) / half_lives[k])
        categories_long[category] = categories_long.get(category, 0.0) + gain
        touched_categories.add(category)
        if ts > m[nh + 1]:
            m[nh + 1] = ts
        if purchase:
            last_buy = m[nh + 2]
            if new_purchase_occasion(ts, last_buy, gap_ms):
                if m[nh] and rebought is not None:
                    rebought.append((item, category))
                m[nh] += 1
                if not m[nh + 3] or ts < m[nh + 3]:
                    m[nh + 3] = ts
            if ts > last_buy:
                m[nh + 2] = ts
    for seen_key, ids in fresh.items():
        seen[seen_key] = f"{seen[seen_key]} {' '.join(ids)}" if seen_key in seen else " ".join(ids)
    s = UserState(window_end=t, feature_ts=feature_ts, as_of=t, last_click_ts=last_click,
                  last_purchase_ts=last_purchase, buckets=buckets, session_start=session_start,
                  session_events=session_events, session_purchased=session_purchased, sessions=sessions,
                  baskets=baskets, affinity=affinity, items=items, seen=seen, memory=memory,
                  categories_long=categories_long, memory_landmark=landmark, erased_ts=erased_ts,
                  opted_out=opted_out)
    _prune(s, t, cfg)
    _round_weights(s, touched & s.memory.keys(), touched_categories & s.categories_long.keys(), nh)
    return s, ledger


def _significant(x: float) -> float:
    return float(f"{x:.{WEIGHT_DIGITS}g}")


def _round_weights(s: UserState, items, categories, nh: int) -> None:
    """The decayed weights to WEIGHT_DIGITS significant digits, in place. s is new: its memory
    entries of the `items` this window touched are its own copies. Affinity and items decay every
    window, so all are rounded; the forward-decayed memory and long-term categories change only
    where touched (a rescale rounds what it makes). Full doubles are 17 digits of noise to the
    dictionary; rounded ones pack the state to about 0.6 of its size. The job and the offline
    replay both fold through here, so their states stay equal."""
    s.affinity = {c: _significant(w) for c, w in s.affinity.items()}
    s.items = {i: _significant(w) for i, w in s.items.items()}
    for c in categories:
        s.categories_long[c] = _significant(s.categories_long[c])
    for item in items:
        m = s.memory[item]
        m[:nh] = [_significant(w) for w in m[:nh]]


_TIME_ORDER = attrgetter("ts", "event_id")


def shared_events(events: list[Event], opted_out: bool) -> list[Event]:
    """The window's interactions that may feed statistics shared across users (item popularity):
    not control records, not quarantined ones, and not while the user is opted out (opted_out: at
    the window's start)."""
    if not opted_out and not any(e.type in CONTROL_ACTIONS or e.type.startswith(QUARANTINED) for e in events):
        return events  # nearly every window
    out = []
    for e in sorted(events, key=_TIME_ORDER):
        if e.type in CONTROL_ACTIONS:
            opted_out = e.type == "opt_out" or (opted_out and e.type != "opt_in")
        elif not opted_out and not e.type.startswith(QUARANTINED):
            out.append(e)
    return out

DEDUP_BUCKETS = 24  # buckets per dedup horizon: the most an id outlives the horizon is 1/24 of it


def dedup_bucket_ms(cfg: FeatureConfig) -> int:
    return max(1, int(cfg.dedup_horizon_s * 1000 / DEDUP_BUCKETS))


def _seen_buckets(seen: dict, size: int) -> dict[str, str]:
    """seen as buckets; a state written before the buckets (event_id -> ts) is converted."""
    if not seen or isinstance(next(iter(seen.values())), str):
        return seen
    out: dict[str, list[str]] = {}
    for eid, ts in sorted(seen.items(), key=lambda kv: (kv[1], kv[0])):
        out.setdefault(str(ts // size), []).append(eid)
    return {k: " ".join(ids) for k, ids in out.items()}


def seen_event_ids(seen: dict, cfg: FeatureConfig) -> set[str]:
    """The event ids a state remembers (any age: pruning happens in apply_window)."""
    return set(" ".join(_seen_buckets(seen, dedup_bucket_ms(cfg)).values()).split())


def _prune(s: UserState, t: int, cfg: FeatureConfig) -> None:
    for key, w, size in boards_of(cfg):
        horizon = t - w * 1000
        board = s.buckets.get(key, {})
        for idx in [i for i in board if (int(i) + 1) * size <= horizon]:
            del board[idx]
    s.sessions = [x for x in s.sessions if x > t - cfg.session_window_s * 1000]
    s.baskets = [x for x in s.baskets if x > t - max(cfg.monetary_windows_s) * 1000]
    if len(s.items) > cfg.max_items_per_user:
        keep = sorted(s.items.items(), key=lambda kv: (-kv[1], kv[0]))[: cfg.max_items_per_user]
        s.items = dict(keep)
    if len(s.memory) > cfg.memory_items:  # weights share the landmark: raw values order as decayed ones
        s.memory = {i: s.memory[i] for i in memory_items(s, cfg.memory_items)}
    if len(s.categories_long) > cfg.memory_items:
        s.categories_long = dict(sorted(s.categories_long.items(), key=lambda kv: (-kv[1], kv[0]))[: cfg.memory_items])


def memory_items(state: UserState, n: int) -> list[str]:
    """The user's n items of largest long-term weight (own-history candidates)."""
    return [i for i, _ in sorted(state.memory.items(), key=lambda kv: (-kv[1][0], kv[0]))[:n]]


def user_vector(state: UserState, t: int, cfg: FeatureConfig) -> np.ndarray:
    """The user half of the model input at time t (ms), in user_feature_names order."""

    def since(ts: int) -> float:  # an erase leaves feature_ts at its time: no event since is "never"
        return min((t - ts) / 1000.0, NEVER_S) if ts > state.erased_ts else NEVER_S

    v = [since(state.feature_ts), since(state.last_click_ts), since(state.last_purchase_ts)]
    for w in cfg.frequency_windows_s:
        v += window_sum(state, w, t, cfg)[:4]
    for w in cfg.monetary_windows_s:
        total = window_sum(state, w, t, cfg)
        v += [total[4], total[4] / total[3] if total[3] else 0.0]
    sessions = sum(1 for x in state.sessions if x > t - cfg.session_window_s * 1000)
    in_session = state.session_events if state.feature_ts and t - state.feature_ts <= cfg.session_gap_s * 1000 else 0
    longest = max(cfg.monetary_windows_s)
    baskets = sum(1 for x in state.baskets if x > t - longest * 1000)
    spend = window_sum(state, longest, t, cfg)[4]
    v += [float(sessions), float(in_session), spend / baskets if baskets else 0.0]
    return np.array(v, dtype=np.float64)


def user_item_matrix(state: UserState, t: int, cfg: FeatureConfig, cands: list,
                     user: np.ndarray | None = None, item_rows: dict | None = None) -> np.ndarray:
    """Model input for the user and each candidate (udfs.candidates.Candidate) at time t: an
    (n, features) float32 matrix in feature_names(cfg) order. One definition for the job and
    for training. item_rows: a cache of the candidates' item-side columns (item_columns), shared
    by the users of one batch, whose candidates are mostly the same objects."""
    n = len(cands)
    if user is None:  # else the caller's user_vector(state, t, cfg), computed once per user
        user = user_vector(state, t, cfg)
    nu = len(user)
    nh = len(cfg.memory_half_lives_s)
    mem = nu + 8  # the memory's columns, then the four item columns after them (memory_feature_names)
    tail = mem + nh + 5
    x = np.empty((n, tail + 4), dtype=np.float64)
    x[:, :nu] = user
    # affinity shares: a common decay factor from as_of to t cancels out, so no decay step here
    total_aff = sum(state.affinity.values()) or 1.0
    total_items = sum(state.items.values()) or 1.0
    aff, own = state.affinity, state.items
    x[:, nu] = [aff.get(c.category, 0.0) / total_aff for c in cands] if aff else 0.0
    x[:, nu + 1] = [own.get(c.item_id, 0.0) / total_items for c in cands] if own else 0.0
    items = item_matrix(cands, item_rows)
    x[:, nu + 2:nu + 8] = items[:, :6]
    x[:, tail + 1:tail + 3] = items[:, 6:8]
    # the memory's columns: most candidates are not in the user's memory
    x[:, mem:tail] = [0.0] * nh + _NO_MEMORY
    memory = state.memory
    for j, c in enumerate(cands):
        if c.item_id in memory:
            x[j, mem:tail] = _memory_row(state, t, c, nh)
    if n and memory:  # forward-decayed weights -> decayed to t
        x[:, mem:mem + nh] *= _memory_decay(state, t, cfg)
    total_long = sum(state.categories_long.values()) or 1.0
    x[:, tail] = [state.categories_long.get(c.category, 0.0) / total_long for c in cands] if n else 0.0
    usual = user[_mean_purchase_column(cfg)]
    x[:, tail + 3] = items[:, 5] - math.log1p(usual) if usual > 0 else 0.0
    return x.astype(np.float32)


def item_columns(c) -> tuple[float, ...]:
    """A candidate's item-side inputs: popularity (short, long), its category's (short, long),
    conversion, log price, repurchase rate, share within its category."""
    return (c.popularity, c.popularity_long, c.category_popularity, c.category_popularity_long, c.conversion,
            math.log1p(max(c.price, 0.0)), c.repurchase_rate, c.category_share)


def item_matrix(cands: list, item_rows: dict | None = None) -> np.ndarray:
    """(n, 8) item_columns of the candidates, through the item_rows cache when given (keyed by the
    candidate object's id, holding the object so the id stays its own)."""
    if not cands:
        return np.zeros((0, 8))
    if item_rows is None:
        return np.array([item_columns(c) for c in cands], dtype=np.float64)
    rows = []
    for c in cands:
        hit = item_rows.get(id(c))
        if hit is None or hit[0] is not c:
            hit = item_rows[id(c)] = (c, item_columns(c))
        rows.append(hit[1])
    return np.array(rows, dtype=np.float64)


_NO_MEMORY = [0.0, NEVER_S, NEVER_S, NO_INTERVAL, NO_INTERVAL]  # after the weights: an item not in memory


def _memory_decay(state: UserState, t: int, cfg: FeatureConfig) -> list[float]:
    """Per memory half-life, the factor that turns a forward-decayed weight into one decayed to t."""
    return [math.pow(2.0, (state.memory_landmark - t) / (h * 1000.0)) for h in cfg.memory_half_lives_s]


def _mean_purchase_column(cfg: FeatureConfig) -> int:
    """Index in user_vector of mean_purchase over the longest monetary window."""
    return user_feature_names(cfg).index(f"mean_purchase_{_w(max(cfg.monetary_windows_s))}")


def _memory_row(state: UserState, t: int, cand, nh: int) -> list[float]:
    """The memory features of one candidate (weights still forward-decayed)."""
    m = state.memory.get(cand.item_id)
    if m is None:
        return [0.0] * nh + _NO_MEMORY
    occasions, last, last_buy, first_buy = m[nh], m[nh + 1], m[nh + 2], m[nh + 3]
    since_buy = (t - last_buy) / 1000.0 if last_buy else NEVER_S
    interval = (last_buy - first_buy) / 1000.0 / (occasions - 1) if occasions >= 2 else NO_INTERVAL
    return [*m[:nh], occasions, (t - last) / 1000.0 if last else NEVER_S, since_buy, interval,
            since_buy / interval if interval > 0 else NO_INTERVAL]


def user_item_features(state: UserState, t: int, cfg: FeatureConfig, cand) -> list[float]:
    """One (user, candidate) row of `user_item_matrix`, as floats (for inspection and tests)."""
    return [float(v) for v in user_item_matrix(state, t, cfg, [cand])[0]]


def memory_at(state: UserState, t: int, cfg: FeatureConfig) -> dict[str, list[float]]:
    """The user x item memory with its weights decayed to t (ms), and the long-term category
    affinity as items "category:<name>" (for inspection and the online/offline parity tests:
    forward-decayed values depend on the landmark, decayed ones do not)."""
    nh = len(cfg.memory_half_lives_s)
    factors = _memory_decay(state, t, cfg)
    out = {i: [m[k] * factors[k] for k in range(nh)] + [float(v) for v in m[nh:]] for i, m in state.memory.items()}
    out.update({f"category:{c}": [w * factors[0]] for c, w in state.categories_long.items()})
    return out


def describe(state: UserState, t: int, cfg: FeatureConfig) -> dict[str, float | list[str]]:
    """The user's features at t by name (`streamrank features`; `profile` for GetUserFeatures)."""
    out: dict[str, float | list[str]] = dict(zip(user_feature_names(cfg), user_vector(state, t, cfg).tolist()))
    out["top_categories"] = state.top_categories(3)
    return out


def profile(state: UserState, cfg: FeatureConfig, user: np.ndarray | None = None,
            segments: Segments | None = None) -> keys.Profile:
    """The user's features by name as of the last window folded in: what GetUserFeatures answers,
    with the segments they put the user in. user: user_vector(state, state.window_end, cfg) when
    the caller has it already."""
    if user is None:
        user = user_vector(state, state.window_end, cfg)
    named = dict(zip(user_feature_names(cfg), user.tolist()))
    return keys.Profile(named, state.top_categories(3), state.feature_ts, state.window_end,
                        segments.of(named) if segments else [])
