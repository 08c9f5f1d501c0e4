"""Early lists: a user's events whose event-time window is still open, folded speculatively.

The job folds a user's events into the stored state only when their micro-batch window is final
(the watermark has passed it): that keeps the ledger, deduplication and the features exactly those
of an offline replay, and a restart replays whole windows. It also made a list wait
micro_batch_s + out_of_orderness_s for its newest event. Early rows (the user's on-time events of
the last features.early_fire_s of processing time) are kept here, per user, until their window is
final. Until then they are folded, window by window in event-time order, over a copy of the
user's final state: the same apply_window, so the early list means "the features over the events
this subtask has seen so far", and once every window it holds is final the two are equal.

Events more than features.early_fire_max_lag_s behind the wall clock are not kept: a job
catching up on a backlog sees its windows final within moments, and speculating on each step
would cost a scoring each. The view then holds the events seen within that lag.

Nothing here is checkpointed: after a restart the pending events are those read again, and the
final windows correct whatever the speculation missed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from contract.config import FeatureConfig
from contract.schema import CONTROL_ACTIONS
from udfs.features import Event, UserState, WindowDelta, apply_window

PENDING_TTL_MS = 120_000  # pending events older than this (processing time) are dropped: their final never came


def window_end_of(ts: int, micro_batch_ms: int) -> int:
    """The end of the event-time micro-batch window holding ts, as the job's SQL computes it."""
    return ts - ts % micro_batch_ms + micro_batch_ms


def state_digest(state: UserState) -> bytes:
    """A fingerprint of everything the features are computed from (equal states fold equally)."""
    return hashlib.blake2b(state.encode().encode(), digest_size=16).digest()


@dataclass
class Pending:
    """One user's events that are not final yet, by window end, and the speculative fold of them."""

    windows: dict[int, list[Event]] = field(default_factory=dict)
    arrived_ms: int = 0  # when the newest of them came (processing time)
    # the fold: (window end, state after it) for the windows in ascending order, the final state
    # it starts from and that state's digest; () until folded
    final: UserState | None = None
    base: bytes = b""
    chain: list[tuple[int, UserState]] = field(default_factory=list)


class Speculation:
    """Pending events per user and their speculative fold over the user's final state."""

    def __init__(self, cfg: FeatureConfig) -> None:
        self.cfg = cfg
        self.mb_ms = int(round(cfg.micro_batch_s * 1000))
        self.max_lag_ms = int(cfg.early_fire_max_lag_s * 1000)
        self.users: dict[str, Pending] = {}

    def add(self, user: str, events: list[Event], now_ms: int) -> None:
        """Early events of one user: each goes to its window's pending list, unless it is more
        than features.early_fire_max_lag_s behind now_ms (a backlog: its window is final soon)."""
        oldest = now_ms - self.max_lag_ms
        events = [e for e in events if e.ts >= oldest]
        if not events:
            return
        p = self.users.get(user)
        if p is None:
            p = self.users[user] = Pending()
        first_changed = None
        for e in events:
            end = window_end_of(e.ts, self.mb_ms)
            p.windows.setdefault(end, []).append(e)
            first_changed = end if first_changed is None else min(first_changed, end)
        p.arrived_ms = now_ms
        if first_changed is not None:  # the fold from that window on is stale
            p.chain = [(end, s) for end, s in p.chain if end < first_changed]

    def view(self, user: str, final: UserState, now_ms: int) -> UserState | None:
        """The user's state with the pending events folded over `final` (the stored state after
        this batch's final windows); None when nothing is pending (the final state is the view),
        or when a user's request (erase, opt-out, opt-in) is pending: requests act when final."""
        p = self.users.get(user)
        if p is None:
            return None
        for end in [end for end in p.windows if end <= final.window_end]:
            del p.windows[end]  # final now (or late, when they come again after a restart)
        if not p.windows or now_ms - p.arrived_ms > PENDING_TTL_MS:
            del self.users[user]
            return None
        if any(e.type in CONTROL_ACTIONS for events in p.windows.values() for e in events):
            return None
        base = p.base if final is p.final else state_digest(final)
        chain = [(end, s) for end, s in p.chain if end > final.window_end]
        if p.base != base and chain:
            # the final windows folded something other than what was speculated (an event the early
            # rows did not bring, after a restart): fold again from the final state
            head = [(end, s) for end, s in p.chain if end <= final.window_end]
            if not head or state_digest(head[-1][1]) != base:
                chain = []
        state = chain[-1][1] if chain else final
        for end in sorted(e for e in p.windows if e > state.window_end):
            events = p.windows[end]
            state, _ = apply_window(state, WindowDelta(user, end, ""), self.cfg, events)
            chain.append((end, state))
        p.final, p.base, p.chain = final, base, chain
        return state

    def final_state(self, user: str) -> UserState | None:
        """The user's final state as the last view() was given it, while events are pending: the
        stored one, since only this subtask writes the user's state (None: read it)."""
        p = self.users.get(user)
        return p.final if p is not None else None

    def pending_users(self) -> set[str]:
        return set(self.users)
