"""Where the project's files are on disk: its root, the cache `make setup` fills, the run
directory of locally started processes, and the config files the commands default to."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CACHE = PROJECT_ROOT / ".cache"
CONFIG_DIR = PROJECT_ROOT / "deploy" / "config"


def run_dir() -> Path:
    """The directory holding pids, ports and logs of locally started processes."""
    return Path(os.environ.get("STREAMRANK_RUN_DIR", PROJECT_ROOT / ".run")).resolve()


def catalog_path(history: str | Path) -> Path:
    """Where a history file's item catalog (item_id, category, price JSONL) lives."""
    return Path(history).with_suffix(".items.jsonl")
