"""Offline replay of an event log through the streaming job's feature definitions.

Records are classified as the job does: invalid (DLQ reason), late (at or behind the watermark,
computed in file order as on one Kafka partition with on-event watermarks), or on time. On-time
events are grouped into the job's event-time micro-batch windows (window end = ts - ts mod mb +
mb) and folded with the same functions (`udfs.features.apply_window`,
`udfs.candidates.TrendingBoards`), so a user's state after window W is what the job wrote to
feat:{user} after W."""

from __future__ import annotations

import json
import math
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Iterable, Iterator
from itertools import accumulate
from dataclasses import dataclass, field, replace
from pathlib import Path

from contract.config import JobConfig, QuarantineConfig
from contract.keys import pseudonym
from contract.schema import CONTROL_ACTIONS, MIN_TS_MS, QUARANTINED, Interaction, InvalidEvent, validate
from udfs.candidates import GLOBAL, Candidate, CandidatePool, TrendingBoards, gather_candidates
from udfs.features import Event, Ledger, UserState, WindowDelta, apply_window, memory_items, shared_events


@dataclass
class History:
    events: list[Interaction]  # on time, sorted by event time
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (line number, DLQ reason)
    late: list[int] = field(default_factory=list)  # line numbers


def read_history(path: str | Path, cfg: JobConfig | None = None) -> History:
    """Parse a JSONL log in arrival order. With cfg, late events are set apart as the job would,
    and `ts` is checked against cfg.events.min_ts_ms (a file has no ingest time, so no future bound)."""
    delay_ms = int(cfg.features.out_of_orderness_s * 1000) if cfg else None
    min_ts_ms = cfg.events.min_ts_ms if cfg else MIN_TS_MS
    keys = cfg.privacy.keys() if cfg else []  # pseudonymous ids, as the job makes them
    out = History([])
    watermark: int | None = None
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                ev = validate(line, min_ts_ms=min_ts_ms)
            except InvalidEvent as e:
                out.rejected.append((n, e.reason))
                continue
            if delay_ms is not None:
                if watermark is not None and ev.ts <= watermark:
                    out.late.append(n)
                    continue
                watermark = max(watermark or ev.ts - delay_ms, ev.ts - delay_ms)
            out.events.append(replace(ev, user_id=pseudonym(ev.user_id, keys[0])) if keys else ev)
    if cfg is not None and cfg.quarantine.enabled:
        out.events = quarantine(out.events, cfg.quarantine)
    out.events.sort(key=lambda e: e.ts)
    return out


def in_features(e: Interaction) -> bool:
    """Whether the job's features use this interaction: neither a user's request nor quarantined.
    Baselines, labels and relevance count the same ones."""
    return e.type not in CONTROL_ACTIONS and not e.type.startswith(QUARANTINED)


def quarantine(events: list[Interaction], q: QuarantineConfig) -> list[Interaction]:
    """[quarantine]'s rules as the job's OVER windows apply them (jobs.recommend.quarantine_views),
    the type of each quarantined interaction marked QUARANTINED. price: a purchase whose value is
    beyond price_factor (either way) of the geometric mean of the item's other purchase values
    (positive ones) with event times in [ts - price_window_s, ts], once there are
    price_min_purchases of them; rate: an interaction whose
    user has more than max_events_per_minute interactions in [ts - 60 s, ts]. Every record of the
    same time is in; requests are neither counted nor marked. (The job's sums run in another order:
    a value within rounding of the threshold may be judged apart.)"""
    times: dict[str, list[int]] = defaultdict(list)
    bought: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for e in events:
        if e.type not in CONTROL_ACTIONS:
            times[e.user_id].append(e.ts)
        if e.type == "purchase" and e.value > 0:
            bought[e.item_id].append((e.ts, math.log(e.value)))
    for ts in times.values():
        ts.sort()
    sums = {}
    for item, rows in bought.items():
        rows.sort(key=lambda r: r[0])
        sums[item] = ([t for t, _ in rows], [0.0, *accumulate(v for _, v in rows)])
    window = int(round(q.price_window_s * 1000))  # as the job's SQL interval
    out = []
    for e in events:
        rule = None
        if q.price_factor is not None and e.type == "purchase" and e.value > 0:
            ts, prefix = sums[e.item_id]
            lo, hi = bisect_left(ts, e.ts - window), bisect_right(ts, e.ts)
            others, ln = hi - lo - 1, math.log(e.value)
            if others >= q.price_min_purchases and abs(ln - (prefix[hi] - prefix[lo] - ln) / others) > math.log(q.price_factor):
                rule = "price"
        if rule is None and q.max_events_per_minute is not None and e.type not in CONTROL_ACTIONS:
            ts = times[e.user_id]
            if bisect_right(ts, e.ts) - bisect_left(ts, e.ts - 60_000) > q.max_events_per_minute:
                rule = "rate"
        out.append(replace(e, type=QUARANTINED + e.type) if rule else e)
    return out


def window_end(ts: int, mb_ms: int) -> int:
    return ts - ts % mb_ms + mb_ms


def user_deltas(window: list[Interaction], end: int) -> list[WindowDelta]:
    """What Flink's per-user window aggregation emits for one window."""
    by_user: dict[str, list[str]] = defaultdict(list)
    for e in window:
        by_user[e.user_id].append(
            Event(e.event_id, e.type, e.item_id, e.category, e.ts, e.value, e.consent).encode())
    return [WindowDelta(u, end, ";".join(evs)) for u, evs in sorted(by_user.items())]


@dataclass
class ReplayStep:
    window_end: int
    active_users: list[str]


class OfflineReplay:
    """Folds windows in order; between steps, `states`, `boards` and `catalog` hold exactly what
    the job would have after that window, and `ledger` what it would have counted."""

    def __init__(self, cfg: JobConfig) -> None:
        self.cfg = cfg
        self.mb_ms = int(round(cfg.features.micro_batch_s * 1000))
        self.states: dict[str, UserState] = defaultdict(UserState)
        self.boards = TrendingBoards(cfg.features.item_half_life_s, cfg.features.item_long_half_life_s)
        self.catalog: dict[str, tuple[str, float]] = {}
        self.listed: set[str] = set()  # items from a catalog file (add_catalog): events do not change them
        self.ledger = Ledger()

    def run(self, events: Iterable[Interaction], until_ms: int | None = None) -> Iterator[ReplayStep]:
        """Windows in order; with until_ms, only windows that end at or before it."""
        window: list[Interaction] = []
        current = None
        for e in events:
            end = window_end(e.ts, self.mb_ms)
            if until_ms is not None and end > until_ms:
                break
            if current is not None and end != current:
                yield self._fold(window, current)
                window = []
            current = end
            window.append(e)
        if window and current is not None:
            yield self._fold(window, current)

    def add_catalog(self, entries: dict[str, tuple[str, float]]) -> None:
        """Items as the `items` topic gives them to the job (load_catalog's mapping)."""
        self.catalog.update(entries)
        self.listed.update(entries)

    def candidate_pool(self) -> CandidatePool:
        """The pool the job's scorer would draw from now (see jobs.store.CandidateSource)."""
        c = self.cfg.candidates
        boards = {b: self.boards.top(c.per_category, b) for b in self.boards.boards
                  if b != GLOBAL and not b.startswith(":")}
        global_top = self.boards.top(c.trending)
        wanted = {i for i, _ in global_top} | {i for top in boards.values() for i, _ in top}
        return CandidatePool(global_top, boards, self.catalog, self.boards.stats(wanted),
                             self.cfg.features.conversion_prior_weight)

    def _fold(self, window: list[Interaction], end: int) -> ReplayStep:
        items: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        kinds = {"view": 0, "click": 1, "add_to_cart": 2, "purchase": 3}
        by_user: dict[str, list[Interaction]] = defaultdict(list)
        for e in window:
            by_user[e.user_id].append(e)
        # as udfs.ranking counts them: not users' requests, nor events while the user is opted out
        shared = {id(e) for u, evs in by_user.items() for e in shared_events(evs, self.states[u].opted_out)}
        for e in window:
            if not e.consent or id(e) not in shared:
                continue
            items[(e.item_id, e.category)][kinds[e.type]] += 1
            # the catalog's unit price wins: an event's value is a line total (quantity x price)
            if e.item_id not in self.listed and (e.item_id not in self.catalog or e.value > 0):
                self.catalog[e.item_id] = (e.category, e.value or self.catalog.get(e.item_id, ("", 0.0))[1])
        active = []
        rebuys: dict[tuple[str, str], int] = defaultdict(int)
        for d in user_deltas(window, end):
            rebought: list[tuple[str, str]] = []
            self.states[d.user_id], counted = apply_window(self.states[d.user_id], d, self.cfg.features,
                                                           rebought=rebought)
            for key in rebought:
                rebuys[key] += 1
            self.ledger.add(counted)
            if counted.used:
                active.append(d.user_id)
        for key in sorted(set(items) | set(rebuys)):
            self.boards.add(end, *key, tuple(items.get(key, (0, 0, 0, 0))), rebuys.get(key, 0))
        return ReplayStep(end, active)

    def candidates(self, pool: CandidatePool, state: UserState) -> list[Candidate]:
        """The user's candidates as the job gathers them, with the statistics of the user's own
        items read from the boards first (jobs.store.CandidateSource.own_stats)."""
        c = self.cfg.candidates
        missing = pool.unasked(memory_items(state, c.own_history))
        if missing:
            pool.add_stats(missing, self.boards.stats(set(missing)))
        return gather_candidates(state, pool, c.top_categories, c.own_history)


def replay_file(path: str | Path, cfg: JobConfig, until_ms: int | None = None) -> tuple[History, OfflineReplay]:
    """Read a log as the job would and fold it up to until_ms: (what was rejected/late, replay)."""
    hist = read_history(path, cfg)
    replay = OfflineReplay(cfg)
    for _ in replay.run(hist.events, until_ms=until_ms):
        pass
    return hist, replay


def load_catalog(path: str | Path) -> dict[str, tuple[str, float]]:
    """items JSONL (item_id, category, price) -> catalog mapping."""
    out = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                out[str(d["item_id"])] = (str(d.get("category") or "unknown"), float(d.get("price") or 0.0))
    return out
