"""Batch ranking: window deltas in, users' states and top-K lists out.

One call handles a whole Arrow batch from Flink: one read of the users' states, one ONNX run over
every (user, candidate) row (one per scoring when experiment arms rank with other models or
baselines: udfs.arms), one write of everything it changed (through a RankingStore, so this module
holds no I/O of its own).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np

from contract import keys
from contract.config import JobConfig
from contract import webhooks
from contract.segments import Segments, changes
from udfs.arms import NO_EXPERIMENT, ArmPlan, baseline_weights, largest_counts, plan_for
from udfs.candidates import Candidate
from udfs.drift import DriftMonitor, DriftReport
from udfs.features import (EVENT_WEIGHTS, Event, Ledger, UserState, WindowDelta, apply_window, feature_names, memory_items,
                           parse_events, profile, shared_events, user_item_matrix, user_vector)
from udfs.reasons import ReasonFacts, strongest
from udfs.scorer import ModelWatcher, OnnxScorer
from udfs.speculation import Speculation, state_digest

SCORED_MEMORY = 200_000  # users whose last scoring is remembered (a forgotten one is scored again)

log = logging.getLogger(__name__)

ITEM_COUNT_SLOT = {"view": 0, "click": 1, "add_to_cart": 2, "purchase": 3}


def item_window_counts(windows: list[tuple[int, list[Event], list[tuple[str, str]]]]
                       ) -> list[tuple[int, str, str, int, int, int, int, int]]:
    """windows: (window end, its parsed events, its repeat purchases from apply_window). Per
    (window end, item, category): consented views, clicks, carts and purchases (duplicates
    included, as models.offline counts them), and repeat purchases (used events only).
    Partial counts of one item window from several batches or subtasks add up in Redis: the
    statistics are linear in them."""
    counts: dict[tuple[int, str, str], list[int]] = {}
    for end, events, rebought in windows:
        for e in events:
            if e.consent:
                counts.setdefault((end, e.item_id, e.category), [0, 0, 0, 0, 0])[ITEM_COUNT_SLOT[e.type]] += 1
        for item, category in rebought:
            counts.setdefault((end, item, category), [0, 0, 0, 0, 0])[4] += 1
    return [(t, i, c, *n) for (t, i, c), n in counts.items()]


def segment_window_counts(windows: list[tuple[int, str, list[Event]]], segments: dict[str, list[str]]
                          ) -> list[tuple[int, str, str, float]]:
    """windows: (window end, user, its shared events); segments: each user's segments now. Per
    (window end, segment, item): the weight of the consented interactions of the segment's users,
    the amount the item's trending score got from them."""
    weights: dict[tuple[int, str, str], float] = {}
    for end, user, events in windows:
        for segment in segments.get(user, ()):
            for e in events:
                if e.consent:
                    key = (end, segment, e.item_id)
                    weights[key] = weights.get(key, 0.0) + EVENT_WEIGHTS[e.type]
    return [(t, s, i, w) for (t, s, i), w in weights.items()]


@dataclass
class ShardBatch:
    """What one batch adds to one shard's shared keys (one Redis: the one shard 0): the ledger's
    counts of its users' windows, and what their new windows add to the item and segment boards."""

    ledger: Ledger
    items: list[tuple[int, str, str, int, int, int, int, int]]
    segment_items: list[tuple[int, str, str, float]] = field(default_factory=list)


class UserWrite(NamedTuple):
    """What one batch writes for a user: the state (None: no window of the user's was final in
    the batch, only early events came), the profile (the features by name, over the final
    windows and the early events: udfs.speculation), and the list (None: none made; an erased or
    opted-out user's is deleted)."""

    state: UserState | None
    profile: keys.Profile
    rec: keys.RecList | None = None


class RankingStore(Protocol):
    """Where the ranker reads users' states and candidates and writes what it made (the job's is
    jobs.store.RedisStore)."""

    candidates: CandidateReader
    experiments: ExperimentsReader

    def read_states(self, users: list[str]) -> dict[str, UserState]: ...

    def write(self, batches: dict[int, ShardBatch], out: dict[str, UserWrite]) -> None: ...

    def shard_of(self, user_id: str) -> int:
        """The shard the user's keys are written with (contract.keys.Layout; one Redis: 0)."""
        ...

    def report_drift(self, report: DriftReport) -> None: ...

    def read_tops(self, users: list[str], n: int) -> dict[str, list[str]]:
        """The first n item ids of each user's stored list (users with none are left out)."""
        ...

    def emit(self, events: list[webhooks.WebhookEvent]) -> None:
        """Write webhook events, acknowledged, before the batch's write."""
        ...


class ExperimentsReader(Protocol):
    """The applied experiments spec (contract.experiments), or None (the job's is
    jobs.store.ExperimentsSource)."""

    def current(self) -> dict | None: ...


class CandidateReader(Protocol):
    """The candidates the ranker draws from (the job's is jobs.store.CandidateSource)."""

    def refresh(self, force: bool = False, deeper: dict[str, int] | None = None) -> None: ...

    def load_meta(self, items: set[str]) -> None: ...

    def own_stats(self, items: set[str]) -> None: ...

    def for_user(self, state: UserState, counts: dict[str, int] | None = None,
                 segments: tuple[str, ...] | list[str] = ()) -> list[Candidate]: ...

    def category_boards(self, state: UserState, counts: dict[str, int] | None = None) -> dict[str, set[str]]: ...

    def segment_boards(self, segments: tuple[str, ...] | list[str]) -> dict[str, set[str]]: ...


class BatchRanker:
    """Applies window deltas to user states, scores candidates, makes top-K lists; reads and
    writes through `store`.

    A delta with window_end 0 is an early row (features.early_fire_s): events whose window is not
    final yet, kept and folded speculatively (udfs.speculation) for the profile and the list,
    never into the stored state, the ledger or the item statistics. A user is scored only when
    the state the list comes from changed since the user's last scoring (or the model or the
    user's arms did), at most once per scoring.min_interval_s while the user has events pending
    (the profile waits with the list); a final window that leaves nothing pending and changed
    what the list was made from always scores (it corrects the speculation).
    """

    def __init__(self, cfg: JobConfig, scorer: OnnxScorer | ModelWatcher | None, store: RankingStore,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.clock = clock  # wall-clock seconds; bench.ranker replays a stream on a simulated one
        self.scorer = scorer
        self.store = store
        self.candidates = store.candidates
        self.drift: DriftMonitor | None = None
        self.last_drift: DriftReport | None = None
        self.speculation = Speculation(cfg.features)
        self.segments = Segments.of_config(cfg)
        self.scored: dict[str, tuple[bytes, float]] = {}  # user -> (what the list was made from, when)
        self.deferred: set[str] = set()  # users whose scoring waits for min_interval_s
        self.written: list[tuple[int, int]] = []  # the last batch's lists: (written_at, feature_ts)

    def _profile(self, state: UserState, user: np.ndarray | None = None) -> keys.Profile:
        return profile(state, self.cfg.features, user, self.segments)

    def _drift_monitor(self, scorer: OnnxScorer) -> DriftMonitor:
        """One monitor per model version: a new version brings its own reference distributions."""
        if self.drift is None or self.drift.version != scorer.version:
            s = self.cfg.scoring
            self.drift = DriftMonitor(scorer.card.raw, feature_names(self.cfg.features), s.drift_window_s,
                                      s.drift_min_rows, s.drift_threshold)
        return self.drift

    def _report_drift(self, report: DriftReport) -> None:
        self.last_drift = report
        self.store.report_drift(report)
        if report.alert:
            drifted = {n: v for n, v in report.psi.items() if v > report.threshold}
            log.warning("DRIFT ALERT model %s: PSI above %.2f for %s over %d rows (window ending %d)",
                        report.model_version, report.threshold, drifted, report.rows, report.window_end_ms)

    def _score(self, matrix: np.ndarray, spans: list[tuple[str, list[Candidate], int, int]],
               plans: dict[str, ArmPlan], scorer: OnnxScorer) -> tuple[np.ndarray, dict[tuple, str]]:
        """Every row's score, one call per scoring in the batch (the current model, a pinned
        version, a baseline), and the version name each scoring writes in its lists."""
        groups: dict[tuple[str, str | None], list[tuple[int, int]]] = {}
        for u, _, a, b in spans:
            groups.setdefault(plans[u].scoring, []).append((a, b))
        if list(groups) in ([], [NO_EXPERIMENT.scoring]):  # the common case: one call, no copying
            return scorer.score(matrix), {NO_EXPERIMENT.scoring: scorer.version}
        scores = np.zeros(len(matrix), np.float32)
        versions: dict[tuple[str, str | None], str] = {}
        for (ranker, version), ranges in groups.items():
            rows = np.concatenate([np.arange(a, b) for a, b in ranges])
            if ranker == "model":
                by = self.scorer.pinned(version) if version else scorer
                scores[rows] = by.score(matrix[rows])
                versions[ranker, version] = by.version
            else:
                scores[rows] = matrix[rows] @ baseline_weights(ranker, self.cfg.features)
                versions[ranker, version] = f"baseline:{ranker}"
        return scores, versions

    def rank(self, deltas: list[WindowDelta]) -> Ledger:
        """Fold the final windows into the users' states and the early rows into their
        speculation, rank, write; returns what was counted."""
        ledger = Ledger()
        self.written = []
        if not deltas:
            return ledger
        now = self.clock()
        finals = [d for d in deltas if d.window_end]
        for d in deltas:
            if not d.window_end:
                self.speculation.add(d.user_id, parse_events(d.events), int(now * 1000))
        min_interval = self.cfg.scoring.min_interval_s
        due = {u for u in self.deferred if now - self.scored.get(u, (b"", 0.0))[1] >= min_interval}
        self.deferred -= due
        spec = self.store.experiments.current()
        self.candidates.refresh(deeper=largest_counts(spec))
        final_users = {d.user_id for d in finals}
        users = sorted(final_users | {d.user_id for d in deltas} | due)
        cached = {u: s for u in users if u not in final_users and (s := self.speculation.final_state(u)) is not None}
        states = {**self.store.read_states([u for u in users if u not in cached]), **cached}
        before = dict(states)  # apply_window makes new states: these stay as read (webhooks compare)
        read_end = {u: states[u].window_end for u in users}
        fresh: list[tuple[int, list[Event], list]] = []  # windows that are not replays after a restart
        fresh_by_user: list[tuple[int, str, list[Event]]] = []  # the same, with their users (segment boards)
        shard_ledgers: dict[int, Ledger] = {}
        for d in sorted(finals, key=lambda d: d.window_end):
            events = parse_events(d.events)
            rebought: list[tuple[str, str]] = []  # filled by apply_window below
            if d.window_end > states[d.user_id].window_end:  # else only after a restart: see apply_window
                fresh.append((d.window_end, shared_events(events, states[d.user_id].opted_out), rebought))
                fresh_by_user.append((d.window_end, d.user_id, fresh[-1][1]))
            states[d.user_id], counted = apply_window(states[d.user_id], d, self.cfg.features, events, rebought)
            ledger.add(counted)
            shard_ledgers.setdefault(self.store.shard_of(d.user_id), Ledger()).add(counted)
        # every state a window moved on is written, also one with only duplicates or opted-out
        # events so far: its `seen` ids must be there for the user's next batch, and for a replay
        # after a restart (which would count them a second time)
        committed = {u for u in final_users if states[u].feature_ts > 0 or states[u].window_end > read_end[u]}
        ms = int(now * 1000)
        views: dict[str, UserState] = {}  # what each profile and list describe
        for u in users:
            last = self.scored.get(u)
            if u not in committed and last is not None and now - last[1] < min_interval and self.scorer is not None:
                self.deferred.add(u)  # held back (below): its events are folded when it is due
                continue
            view = self.speculation.view(u, states[u], ms)
            if view is not None:
                views[u] = view
            elif u in committed:
                views[u] = states[u]
        f = self.cfg.features
        out: dict[str, UserWrite] = {}
        if self.scorer is None:
            for u, v in views.items():
                out[u] = UserWrite(states[u] if u in committed else None, self._profile(v))
            self._emit(before, states, committed, out)
            self.store.write(self._batches(shard_ledgers, fresh, fresh_by_user, out), out)
            return ledger
        for u, v in views.items():  # erased or opted out: lists deleted (when final)
            if not v.personalized():
                out[u] = UserWrite(states[u] if u in committed else None, self._profile(v))
        scorer = self.scorer.current()  # one model version for the whole batch
        plans = {u: plan_for(spec, u, ms) for u in views if u not in out}
        basis: dict[str, bytes] = {}
        for u, plan in plans.items():
            last = self.scored.get(u)
            if last is not None and now - last[1] < min_interval and views[u] is not states[u]:
                # scored less than min_interval_s ago, with events still pending: the profile and
                # list at the first batch after the interval (a final window that leaves nothing
                # pending is not held back: it is the correction)
                self.deferred.add(u)
                continue
            key = state_digest(views[u]) + repr((scorer.version, plan.scoring, plan.arms)).encode()
            if last is not None and last[0] == key:
                if u in committed:  # the final state is what the list was made from: no scoring
                    out[u] = UserWrite(states[u], self._profile(views[u]))
            else:
                basis[u] = key
        for u in committed:
            if u not in out and u not in basis:  # deferred: the state is written, the list waits
                # and so do the pending events: the profile is the final state's
                out[u] = UserWrite(states[u], self._profile(states[u]))
        scoring = sorted(basis)
        own = {i for u in scoring
               for i in memory_items(views[u], plans[u].candidates.get("own_history", self.cfg.candidates.own_history))}
        self.candidates.load_meta(own)
        self.candidates.own_stats(own)

        blocks: list[np.ndarray] = []
        spans: list[tuple[str, list[Candidate], int, int]] = []
        start = 0
        profiles: dict[str, keys.Profile] = {}
        item_rows: dict = {}  # the batch's candidates' item columns, computed once
        for u in scoring:
            s = views[u]
            user = user_vector(s, s.window_end, f)  # once, for the model's input and the profile
            profiles[u] = self._profile(s, user)
            cands = self.candidates.for_user(s, plans[u].candidates, profiles[u].segments)
            blocks.append(user_item_matrix(s, s.window_end, f, cands, user, item_rows))
            spans.append((u, cands, start, start + len(cands)))
            start += len(cands)
        matrix = np.concatenate(blocks) if start else np.zeros((0, len(feature_names(self.cfg.features))), np.float32)
        scores, versions = self._score(matrix, spans, plans, scorer)
        if scoring:
            ends = [views[u].window_end for u in scoring]
            report = self._drift_monitor(scorer).observe(matrix, min(ends), max(ends))
            if report is not None:
                self._report_drift(report)

        k = self.cfg.scoring.top_k
        orders = {u: np.argsort(-scores[a:b], kind="stable")[:k] for u, _, a, b in spans}
        model_reasons = self._model_reasons(matrix, spans, orders, plans, scorer)
        written_at = int(self.clock() * 1000)
        for u, cands, a, b in spans:
            s = views[u]
            user_scores = scores[a:b]
            order = orders[u]
            why = self._reasons(s, plans[u], [cands[i].item_id for i in order], model_reasons.get(u, ()),
                               profiles[u].segments)
            out[u] = UserWrite(states[u] if u in committed else None, profiles[u], keys.RecList(
                items=[keys.ScoredItem(cands[i].item_id, float(user_scores[i]), cands[i].category, r)
                       for i, r in zip(order, why)],
                model_version=versions[plans[u].scoring],
                feature_ts=s.feature_ts,
                written_at=written_at,
                extra={"arms": plans[u].arms} if plans[u].arms else {},
                segments=profiles[u].segments,
            ))
            self._remember(u, basis[u], now)
            self.written.append((written_at, s.feature_ts))
        self._emit(before, states, committed, out)
        self.store.write(self._batches(shard_ledgers, fresh, fresh_by_user, out), out)
        return ledger

    def _batches(self, ledgers: dict[int, Ledger], fresh: list[tuple[int, list[Event], list]],
                 fresh_by_user: list[tuple[int, str, list[Event]]], out: dict[str, UserWrite]) -> dict[int, ShardBatch]:
        """What the batch adds to each shard: its users' ledger counts and their new windows' items."""
        windows: dict[int, tuple[list, list]] = {}
        for window, by_user in zip(fresh, fresh_by_user):
            mine = windows.setdefault(self.store.shard_of(by_user[1]), ([], []))
            mine[0].append(window)
            mine[1].append(by_user)
        return {shard: ShardBatch(ledgers.get(shard, Ledger()), item_window_counts(windows.get(shard, ([], []))[0]),
                                  self._segment_items(windows.get(shard, ([], []))[1], out))
                for shard in sorted(set(ledgers) | set(windows))}

    def _segment_items(self, windows: list[tuple[int, str, list[Event]]], out: dict[str, UserWrite]
                       ) -> list[tuple[int, str, str, float]]:
        """What the batch's new windows add to the segment boards: only kept when
        candidates.per_segment draws from them."""
        if not self.cfg.candidates.per_segment or not self.segments:
            return []
        return segment_window_counts(windows, {u: w.profile.segments for u, w in out.items()})

    def _emit(self, before: dict[str, UserState], states: dict[str, UserState], committed: set[str],
              out: dict[str, UserWrite]) -> None:
        """The batch's webhook events (contract.webhooks), written before the batch's Redis write:
        a crash between the two replays the batch, which makes the same events (their ids depend
        only on what happened), so receivers keyed on them see each once."""
        w = self.cfg.webhooks
        if not w.enabled:
            return
        events: list[webhooks.WebhookEvent] = []
        for u in sorted(committed):
            after, old = states[u], before[u]
            if not after.personalized():
                continue
            now_p = self._profile(after)
            was = self._profile(old) if old.window_end else None
            entered, left = changes(was.segments if was else [], now_p.segments)
            at = after.window_end
            events += [webhooks.event("segment_entered", u, at, {"segment": s}, s) for s in entered]
            events += [webhooks.event("segment_left", u, at, {"segment": s}, s) for s in left]
            if w.profile_updated and (was is None or was.features != now_p.features):
                events.append(webhooks.event("profile_updated", u, at, {
                    "features": now_p.features, "segments": now_p.segments, "window_end_ms": at}))
        listed = sorted(u for u, o in out.items() if o.rec is not None)
        previous = self.store.read_tops(listed, w.list_top_n) if listed else {}
        for u in listed:
            rec = out[u].rec
            top = [i.item_id for i in rec.items[: w.list_top_n]]
            old_top = previous.get(u)
            change = webhooks.list_change(old_top or [], top, w.list_top_n)
            if old_top != top and change >= w.list_change_threshold:
                events.append(webhooks.event("list_changed", u, rec.feature_ts, {
                    "top": top, "previous": old_top or [], "change": round(change, 4),
                    "model_version": rec.model_version}, ",".join(top)))
        if events:
            self.store.emit(events)

    def _model_reasons(self, matrix: np.ndarray, spans: list, orders: dict[str, np.ndarray],
                       plans: dict[str, ArmPlan], scorer: OnnxScorer) -> dict[str, list[str]]:
        """Per user scored by the current model: the model reason of each of its first
        scoring.reason_top_k items, from one TreeSHAP call over those rows of the whole batch."""
        n = self.cfg.scoring.reason_top_k
        if not n or not self.cfg.scoring.reasons or not scorer.explains:
            return {}
        mine = [(u, a, orders[u][:n]) for u, _, a, _ in spans if plans[u].scoring == NO_EXPERIMENT.scoring]
        if not mine:
            return {}
        codes = iter(strongest(scorer.contributions(matrix[np.concatenate([a + o for _, a, o in mine])]),
                               scorer.card.feature_names))
        return {u: [next(codes) for _ in o] for u, _, o in mine}

    def _reasons(self, state: UserState, plan: ArmPlan, items: list[str], model: list[str],
                 segments: list[str]) -> list[tuple[str, ...]]:
        if not self.cfg.scoring.reasons:
            return [()] * len(items)
        facts = ReasonFacts(state, len(self.cfg.features.memory_half_lives_s),
                            self.candidates.category_boards(state, plan.candidates),
                            int(self.cfg.scoring.reasons_recent_s * 1000), self.candidates.segment_boards(segments))
        return [facts.of(item, model[n] if n < len(model) else "") for n, item in enumerate(items)]

    def _remember(self, user: str, basis: bytes, at: float) -> None:
        self.scored.pop(user, None)  # re-inserted last: the dict's order is the scorings' order
        self.scored[user] = (basis, at)
        if len(self.scored) > SCORED_MEMORY:  # forget the oldest half
            for u in list(self.scored)[: SCORED_MEMORY // 2]:
                del self.scored[u]
