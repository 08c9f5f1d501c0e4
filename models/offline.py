"""Offline replay of an event log through the streaming job's feature definitions.

Events are grouped into the same event-time micro-batch windows Flink uses (window end =
ts - ts mod mb + mb), and each window's per-user and per-item deltas are folded with the same
functions (`udfs.features.apply_window`, `udfs.candidates.TrendingBoards`). So a user's state
after window W is what the job wrote to feat:{user} after W."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from contract.config import JobConfig
from contract.schema import Interaction, InvalidEvent, validate
from udfs.candidates import GLOBAL, CandidatePool, TrendingBoards, item_weight
from udfs.features import UserState, WindowDelta, apply_window


def read_history(path: str | Path) -> tuple[list[Interaction], list[tuple[int, str]]]:
    """Valid, consented events sorted by time, and (line number, reason) of rejected lines."""
    events: list[Interaction] = []
    rejected: list[tuple[int, str]] = []
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                ev = validate(line)
            except InvalidEvent as e:
                rejected.append((n, e.reason))
                continue
            if ev.consent:
                events.append(ev)
    events.sort(key=lambda e: e.ts)
    return events, rejected


def window_end(ts: int, mb_ms: int) -> int:
    return ts - ts % mb_ms + mb_ms


def user_deltas(window: list[Interaction], end: int) -> list[WindowDelta]:
    """What Flink's per-user window aggregation emits for one window."""
    by_user: dict[str, list[Interaction]] = defaultdict(list)
    for e in window:
        by_user[e.user_id].append(e)
    out = []
    for user, evs in sorted(by_user.items()):
        n = {t: sum(1 for e in evs if e.type == t) for t in ("view", "click", "add_to_cart", "purchase")}
        out.append(WindowDelta(
            user_id=user, window_end=end, n_view=n["view"], n_click=n["click"],
            n_cart=n["add_to_cart"], n_purchase=n["purchase"],
            purchase_value=sum(e.value for e in evs if e.type == "purchase"),
            last_ts=max(e.ts for e in evs),
            last_click_ts=max((e.ts for e in evs if e.type == "click"), default=0),
            last_purchase_ts=max((e.ts for e in evs if e.type == "purchase"), default=0),
            events=";".join(f"{e.type}|{e.item_id}|{e.category}" for e in evs),
        ))
    return out


@dataclass
class ReplayStep:
    window_end: int
    active_users: list[str]


class OfflineReplay:
    """Folds windows in order; between steps, `states`, `boards` and `catalog` hold exactly what
    the job would have after that window."""

    def __init__(self, cfg: JobConfig) -> None:
        self.cfg = cfg
        self.mb_ms = int(round(cfg.features.micro_batch_s * 1000))
        self.states: dict[str, UserState] = defaultdict(UserState)
        self.boards = TrendingBoards(cfg.features.item_half_life_s)
        self.catalog: dict[str, tuple[str, float]] = {}

    def run(self, events: Iterable[Interaction]) -> Iterator[ReplayStep]:
        window: list[Interaction] = []
        current = None
        for e in events:
            end = window_end(e.ts, self.mb_ms)
            if current is not None and end != current:
                yield self._fold(window, current)
                window = []
            current = end
            window.append(e)
        if window and current is not None:
            yield self._fold(window, current)

    def candidate_pool(self) -> CandidatePool:
        """The pool the job's scorer would draw from now (see udfs.ranking.CandidateSource)."""
        c = self.cfg.candidates
        boards = {b: self.boards.top(c.per_category, b) for b in self.boards.boards if b != GLOBAL}
        return CandidatePool(self.boards.top(c.trending), boards, self.catalog)

    def _fold(self, window: list[Interaction], end: int) -> ReplayStep:
        items: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        kinds = {"view": 0, "click": 1, "add_to_cart": 2, "purchase": 3}
        for e in window:
            items[(e.item_id, e.category)][kinds[e.type]] += 1
            if e.item_id not in self.catalog or e.value > 0:
                self.catalog[e.item_id] = (e.category, e.value or self.catalog.get(e.item_id, ("", 0.0))[1])
        for (item, category), c in sorted(items.items()):
            self.boards.add(end, item, category, item_weight(*c))
        deltas = user_deltas(window, end)
        for d in deltas:
            self.states[d.user_id] = apply_window(self.states[d.user_id], d, self.cfg.features)
        return ReplayStep(end, [d.user_id for d in deltas])


def load_catalog(path: str | Path) -> dict[str, tuple[str, float]]:
    """items JSONL (item_id, category, price) -> catalog mapping."""
    out = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                out[str(d["item_id"])] = (str(d.get("category") or "unknown"), float(d.get("price") or 0.0))
    return out
