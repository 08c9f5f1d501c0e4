"""A seeded interaction stream: users with latent category interests and spend levels, sessions
with view -> click -> add_to_cart -> purchase funnels, a long-tail (Zipf) catalog.

The same seed and options give the same stream. `malformed_fraction` replaces that share of
records with broken ones (each kind of breakage the validator knows).

`replenishment` (a share of the catalog, 0 = off) adds the repeat regime of real retail: those
items get a restock interval in event time, each user a few of them as staples, and a user whose
staple is due buys it again in their next session. Its draws come from a generator of their own,
so the catalog, the users and the browsing sessions are the same as without it."""

from __future__ import annotations

import heapq
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

MALFORMED_KINDS = ("not_json", "bad_user_id", "bad_type", "bad_ts", "bad_value", "not_object")

DAY_MS = 86_400_000
# Replenishment: item intervals are lognormal around RESTOCK_MEDIAN_DAYS (about 10..40 days for
# most items); each user's own interval for a staple is the item's times lognormal(0, USER_JITTER).
RESTOCK_MEDIAN_DAYS = 20.0
RESTOCK_SPREAD = 0.35
USER_JITTER = 0.25
MAX_STAPLES = 5  # each user has 1..MAX_STAPLES staples
FIRST_BUY = 0.15  # chance per session that a staple never bought yet is bought
RESTOCK_BUY = 0.9  # chance per session that a due staple is bought (else it stays due)


@dataclass(frozen=True)
class Item:
    item_id: str
    category: str
    price: float

    def to_json(self) -> dict:
        return {"item_id": self.item_id, "category": self.category, "price": self.price}


@dataclass
class SimUser:
    user_id: str
    interests: np.ndarray  # probability over categories
    spend: float  # price scale the user is comfortable with
    buy_rate: float
    favourites: list[int]  # item indices the user returns to
    staples: dict[int, float] = field(default_factory=dict)  # item index -> this user's interval, ms
    due: dict[int, float] = field(default_factory=dict)  # staple bought -> event time it is due again


class Simulator:
    def __init__(self, seed: int = 7, users: int = 500, items: int = 2000, categories: int = 20,
                 replenishment: float = 0.0) -> None:
        """`replenishment`: share of items users rebuy at item-specific intervals (0..1; 0 = none,
        the stream is then exactly the one without the option)."""
        if not 0.0 <= replenishment <= 1.0:
            raise ValueError(f"replenishment is a share of the catalog, in [0, 1]; got {replenishment}")
        self.rng = np.random.default_rng(seed)
        self.py = random.Random(seed)
        self.categories = [f"c{i:02d}" for i in range(categories)]
        # catalog: Zipf popularity within category, lognormal prices per category
        cat_price = self.rng.lognormal(3.0, 0.7, categories)
        self.items: list[Item] = []
        self.by_category: list[list[int]] = [[] for _ in range(categories)]
        for i in range(items):
            c = int(self.rng.integers(categories))
            price = round(float(cat_price[c] * self.rng.lognormal(0, 0.4)), 2)
            self.by_category[c].append(i)
            self.items.append(Item(f"i{i:05d}", self.categories[c], price))
        self.cat_weights = []
        for members in self.by_category:
            w = 1.0 / np.arange(1, len(members) + 1) ** 1.1
            self.cat_weights.append(w / w.sum())
        self.users: list[SimUser] = []
        for u in range(users):
            interests = self.rng.dirichlet(np.full(categories, 0.3))
            favs = [self._pick_item(int(self.rng.choice(categories, p=interests))) for _ in range(5)]
            self.users.append(SimUser(
                f"u{u:05d}", interests, float(self.rng.lognormal(3.0, 0.6)),
                float(self.rng.beta(2, 8)), favs,
            ))
        activity = self.rng.pareto(1.5, users) + 1.0
        self.user_activity = activity / activity.sum()
        self._n = 0
        self.interval_ms: dict[int, float] = {}  # replenishable item index -> its median interval
        self.restock_rng = np.random.default_rng((seed, 1))
        if replenishment > 0:
            self._add_staples(replenishment)

    def _add_staples(self, share: float) -> None:
        """Pick the replenishable items and their intervals, then each user's staples: replenishable
        items drawn by the user's category interests and the items' popularity."""
        rr = self.restock_rng
        n = len(self.items)
        chosen = np.sort(rr.choice(n, size=max(1, round(share * n)), replace=False))
        medians = RESTOCK_MEDIAN_DAYS * DAY_MS * rr.lognormal(0.0, RESTOCK_SPREAD, len(chosen))
        self.interval_ms = {int(i): float(m) for i, m in zip(chosen, medians)}
        category_of = np.empty(n, dtype=int)
        popularity = np.empty(n)
        for c, members in enumerate(self.by_category):
            category_of[members] = c
            popularity[members] = self.cat_weights[c]
        for user in self.users:
            w = user.interests[category_of[chosen]] * popularity[chosen]
            k = min(int(rr.integers(1, MAX_STAPLES + 1)), int(np.count_nonzero(w)))
            for i in rr.choice(chosen, size=k, replace=False, p=w / w.sum()):
                user.staples[int(i)] = self.interval_ms[int(i)] * float(rr.lognormal(0.0, USER_JITTER))

    def _pick_item(self, c: int) -> int:
        members = self.by_category[c]
        return members[int(self.rng.choice(len(members), p=self.cat_weights[c]))]

    def _restock(self, user: SimUser, t: float) -> list[int]:
        """The staples the user buys in a session starting at t: a due one (its interval since the
        last purchase has passed) very likely, one never bought yet now and then."""
        bought = []
        for idx in user.staples:
            due = user.due.get(idx)
            chance = FIRST_BUY if due is None else RESTOCK_BUY if t >= due else 0.0
            if chance and self.restock_rng.random() < chance:
                bought.append(idx)
        return bought

    def _event(self, user: SimUser, item: Item, etype: str, t: float, rng: np.random.Generator) -> dict:
        self._n += 1
        ev = {
            "event_id": f"e{self._n:09d}",
            "user_id": user.user_id,
            "item_id": item.item_id,
            "type": etype,
            "ts": int(t),
            "category": item.category,
            "context": {"device": "mobile" if rng.random() < 0.6 else "web"},
        }
        if etype in ("add_to_cart", "purchase"):
            ev["value"] = item.price
        return ev

    def _session(self, user: SimUser, t: float, gap_ms: float) -> Iterator[tuple[float, dict]]:
        """One session: the staples the user restocks (view -> add_to_cart -> purchase), then a
        handful of item views in favoured categories, each maybe advancing through the funnel.
        Yields (time, event)."""
        if user.staples:
            for idx in self._restock(user, t):
                for etype in ("view", "add_to_cart", "purchase"):
                    t += gap_ms * float(self.restock_rng.exponential(1.0))
                    yield t, self._event(user, self.items[idx], etype, t, self.restock_rng)
                user.due[idx] = t + user.staples[idx]
        for _ in range(int(self.rng.integers(1, 8))):
            if self.rng.random() < 0.25:
                idx = self.py.choice(user.favourites)
            else:
                idx = self._pick_item(int(self.rng.choice(len(self.categories), p=user.interests)))
            item = self.items[idx]
            affordable = min(1.0, user.spend / max(item.price, 1.0))
            steps = ["view"]
            if self.rng.random() < 0.35:
                steps.append("click")
                if self.rng.random() < 0.4 * affordable + 0.05:
                    steps.append("add_to_cart")
                    if self.rng.random() < user.buy_rate + 0.3:
                        steps.append("purchase")
            for etype in steps:
                t += gap_ms * float(self.rng.exponential(1.0))
                yield t, self._event(user, item, etype, t, self.rng)
            if steps[-1] == "purchase" and idx in user.staples:
                user.due[idx] = t + user.staples[idx]  # a staple bought while browsing counts too

    def events(self, start_ms: int, rate_per_s: float, count: int) -> Iterator[dict]:
        """`count` events starting at start_ms, about rate_per_s per second of event time, in
        event-time order."""
        gap = 1000.0 / rate_per_s
        pending: list[tuple[float, int, dict]] = []
        t = float(start_ms)
        emitted = 0
        while emitted < count:
            # interleave sessions: the next one starts after as much time as this one's events take
            user = self.users[int(self.rng.choice(len(self.users), p=self.user_activity))]
            produced = 0
            for et, ev in self._session(user, t, gap * 3):
                heapq.heappush(pending, (et, self._n, ev))
                produced += 1
            t += gap * produced
            while pending and pending[0][0] <= t and emitted < count:
                yield heapq.heappop(pending)[2]
                emitted += 1
        # the loop above stops at `count`; leftover session tails are dropped

    def malform(self, event: dict) -> bytes:
        """A broken version of `event`, of a kind chosen by the seeded RNG."""
        kind = MALFORMED_KINDS[int(self.rng.integers(len(MALFORMED_KINDS)))]
        e = dict(event)
        if kind == "not_json":
            return json.dumps(e).encode()[:-7] + b"{oops"
        if kind == "bad_user_id":
            e["user_id"] = "" if self.rng.random() < 0.5 else "user with spaces!"
        elif kind == "bad_type":
            e["type"] = "teleport"
        elif kind == "bad_ts":
            e["ts"] = "yesterday"
        elif kind == "bad_value":
            e["value"] = -5
        elif kind == "not_object":
            return json.dumps([e["user_id"], e["item_id"]]).encode()
        return json.dumps(e).encode()

    def records(self, start_ms: int, rate_per_s: float, count: int,
                malformed_fraction: float = 0.0) -> Iterator[tuple[str, bytes, bool]]:
        """(key, value, valid) for each record to publish."""
        for ev in self.events(start_ms, rate_per_s, count):
            if malformed_fraction > 0 and self.rng.random() < malformed_fraction:
                yield ev["user_id"], self.malform(ev), False
            else:
                yield ev["user_id"], json.dumps(ev, separators=(",", ":")).encode(), True
