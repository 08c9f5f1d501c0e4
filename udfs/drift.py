"""Feature drift: population stability index (PSI) of the rows the job scores, per feature, per
drift window, against the model card's reference distributions (training rows, decile bins).

    PSI = sum over bins of (live - ref) * ln(live / ref)     (shares floored at 1e-4)

Rule of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 large shift. The window is event
time (`scoring.drift_window_s`); a window with fewer than `scoring.drift_min_rows` rows is folded
into the next one rather than reported on noise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)
FLOOR = 1e-4


def psi(live_counts: np.ndarray, ref_shares: np.ndarray) -> float:
    total = live_counts.sum()
    if total <= 0:
        return 0.0
    live = np.maximum(live_counts / total, FLOOR)
    ref = np.maximum(np.asarray(ref_shares, dtype=float), FLOOR)
    return float(np.sum((live - ref) * np.log(live / ref)))


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per reference bin; values outside the reference range land in the end bins, as
    they did when the reference was built (models.training.reference_distributions)."""
    idx = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
    return np.bincount(idx, minlength=len(edges) - 1)


@dataclass
class DriftReport:
    model_version: str
    window_start_ms: int
    window_end_ms: int
    rows: int
    psi: dict[str, float]
    threshold: float

    @property
    def max_feature(self) -> str:
        return max(self.psi, key=self.psi.get)

    @property
    def alert(self) -> bool:
        return self.psi[self.max_feature] > self.threshold


class DriftMonitor:
    """Accumulates bin counts of scored rows; `observe` returns a report when a window closes."""

    def __init__(self, card: dict, names: tuple[str, ...], window_s: float, min_rows: int, threshold: float) -> None:
        ref = card.get("reference_distributions") or {}
        self.version = str(card.get("version", "?"))
        self.names = [n for n in names if n in ref]
        self.columns = [names.index(n) for n in self.names]
        self.edges = [np.asarray(ref[n]["edges"], dtype=float) for n in self.names]
        self.shares = [np.asarray(ref[n]["shares"], dtype=float) for n in self.names]
        self.window_ms = int(window_s * 1000)
        self.min_rows = min_rows
        self.threshold = threshold
        self._reset(None)

    def _reset(self, start_ms: int | None) -> None:
        self.start_ms = start_ms
        self.rows = 0
        self.counts = [np.zeros(len(e) - 1, dtype=np.int64) for e in self.edges]

    def observe(self, x: np.ndarray, first_ms: int, last_ms: int | None = None) -> DriftReport | None:
        """x: the rows scored for windows ending between first_ms and last_ms (event time)."""
        event_time_ms = first_ms if last_ms is None else last_ms
        if not self.names or len(x) == 0:
            return None
        if self.start_ms is None:
            self.start_ms = first_ms
        for k, col in enumerate(self.columns):
            self.counts[k] += bin_counts(x[:, col].astype(float), self.edges[k])
        self.rows += len(x)
        if event_time_ms - self.start_ms < self.window_ms or self.rows < self.min_rows:
            return None
        report = DriftReport(self.version, self.start_ms, event_time_ms, self.rows,
                             {n: round(psi(c, s), 6) for n, c, s in zip(self.names, self.counts, self.shares)},
                             self.threshold)
        self._reset(event_time_ms)
        return report
