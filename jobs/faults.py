"""Fault injection for recovery tests: fail the job once after N windows (config [faults]). It
writes a marker file, so it lives with the job, not in the pure core; a job without [faults] never
constructs it (jobs.functions builds it only when fail_after_windows is set)."""

from __future__ import annotations

import os
from pathlib import Path

from contract.config import FaultConfig


class InjectedFailure(RuntimeError):
    """Raised on purpose by [faults] fail_after_windows; Flink restarts from its checkpoint."""


class FaultInjector:
    def __init__(self, cfg: FaultConfig) -> None:
        self.cfg = cfg
        self.seen = 0

    def before_batch(self, windows: int) -> None:
        if not self.cfg.fail_after_windows:
            return
        self.seen += windows
        marker = Path(self.cfg.marker_file)
        armed = not self.cfg.armed_file or Path(self.cfg.armed_file).exists()
        if self.seen >= self.cfg.fail_after_windows and armed and not marker.exists():
            marker.write_text(str(os.getpid()))
            raise InjectedFailure(f"injected failure after {self.seen} windows (faults.fail_after_windows)")
