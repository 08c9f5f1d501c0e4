"""Helpers for the integration tier: run the job as the user would, read topics back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from kafka import KafkaConsumer
import pytest

from contract import keys
from contract.segments import Segments
from contract.paths import PROJECT_ROOT
from devstack.metrics import control_counters, ledger_counters, scrape
from devstack.stack import create_topics
from models.offline import replay_file
from udfs.features import UserState, describe, memory_at, profile

# Taken at import, before any test runs Flink in this process: an in-process MiniCluster run (the
# flink tier) changes os.environ (PYFLINK_GATEWAY_DISABLED, JAVA_HOME, ...) in ways that stop a
# child process from starting Flink.
_START_ENV = dict(os.environ)


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: this process's as it was before Flink ran in it."""
    return {**_START_ENV, **extra}


# the segments every job the tests run evaluates (a TOML array for --set)
SEGMENT_RULES = ('[{name = "buyers", when = "purchases_7d >= 1"}, '
                 '{name = "browsers", when = "views_7d >= 3 and purchases_7d == 0"}]')


def job_args(bootstrap: str, redis_port: int, model: Path, topic_prefix: str, group: str) -> list[str]:
    """--set overrides pointing the shipped local config at the test's broker, Redis and topics."""
    sets = {
        "kafka.bootstrap_servers": json.dumps(bootstrap),
        "kafka.interactions_topic": json.dumps(f"{topic_prefix}interactions"),
        "kafka.items_topic": json.dumps(f"{topic_prefix}items"),
        "kafka.dlq_topic": json.dumps(f"{topic_prefix}interactions.dlq"),
        "kafka.late_topic": json.dumps(f"{topic_prefix}interactions.late"),
        "kafka.quarantine_topic": json.dumps(f"{topic_prefix}interactions.quarantine"),
        "kafka.group_id": json.dumps(group),
        "redis.port": str(redis_port),
        "scoring.model_dir": json.dumps(str(model)),
        "flink.checkpoint_interval_s": "2.0",
        "segments.rules": SEGMENT_RULES,
    }
    return [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]


def start_job_embedded(args: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`streamrank run` in the background (args say how it is bounded); Flink's own log goes to
    log_path's folder (flink-*.log). env: more variables for it (a key, a password)."""
    cmd = [sys.executable, "-m", "cli", "run", *args]
    with open(log_path, "wb") as log:
        return subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env=child_env(FLINK_LOG_DIR=str(log_path.parent), **(env or {})))


def wait_job(job: subprocess.Popen, log_path: Path, timeout_s: float = 300) -> None:
    try:
        rc = job.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        job.kill()
        raise
    assert rc == 0, f"job failed ({rc}); tail of {log_path}:\n{log_path.read_text()[-3000:]}"


def wait_until(check, timeout_s: float = 10.0, every_s: float = 0.05) -> bool:
    """Poll `check` until it is true or time runs out; whether it became true (asked once more at
    the end)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every_s)
    return bool(check())


def wait_for(condition, timeout_s: float, what: str, job: subprocess.Popen, log_path: Path) -> None:
    """Poll `condition` while the background job runs; fail with its log if it exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if job.poll() is not None:
            pytest.fail(f"the job exited ({job.returncode}) while waiting for {what}; tail of {log_path}:\n"
                        f"{log_path.read_text()[-3000:]}")
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def scrape_until_ledger(url: str, want: dict[str, int], want_control: dict[str, int] | None = None,
                        timeout_s: float = 60) -> tuple[dict[str, int], str]:
    """Scrape a Flink Prometheus reporter until its ledger counters equal `want` (and its control
    counters `want_control`, when given) or time runs out (Python's counters reach the JVM when a
    bundle ends); the last ledger counters and scrape text."""
    got, text, deadline = {}, "", time.monotonic() + timeout_s
    while time.monotonic() < deadline and (got != want or (want_control is not None
                                                           and control_counters(text) != want_control)):
        text = scrape(url) or ""
        got = ledger_counters(text)
        time.sleep(0.5)
    return got, text


def run_job_embedded(args: list[str], log_path: Path, timeout_s: float = 300, env: dict[str, str] | None = None) -> None:
    """`streamrank run --bounded`, to the end."""
    wait_job(start_job_embedded(["--bounded", *args], log_path, env), log_path, timeout_s)


def read_topic(bootstrap: str, topic: str, idle_ms: int = 5000, committed: bool = False) -> list[bytes]:
    """Every record of a topic; with committed, only those of committed transactions
    (isolation.level=read_committed, as a consumer of exactly-once output reads)."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=idle_ms, enable_auto_commit=False,
                             isolation_level="read_committed" if committed else "read_uncommitted")
    try:
        return [m.value for m in consumer]
    finally:
        consumer.close()


def records_replay(records: list[bytes], cfg, path: Path):
    """Write raw records as a history file and replay it offline: (History, OfflineReplay)."""
    path.write_bytes(b"\n".join(records) + b"\n")
    return replay_file(path, cfg)


def replay_ledger(hist, replay) -> dict[str, int]:
    """The ledger the offline replay of a stream counts (records_replay's pair)."""
    return {"used": replay.ledger.used, "duplicate": replay.ledger.duplicate, "opted_out": replay.ledger.opted_out,
            "quarantined": replay.ledger.quarantined,
            "late": len(hist.late), "dlq": len(hist.rejected)}


def read_states(r, layout: keys.Layout = keys.ONE_REDIS) -> dict:
    """user -> UserState of every feat:{user} in Redis (a cluster client and its layout: every node's)."""
    return {layout.user_of(k): UserState.decode(r.get(k)) for k in r.scan_iter(keys.feat_key("*"))}


def assert_features_equal_replay(states: dict, replay, cfg) -> None:
    """Every user the replay folded has a state, and it describes the same features (at the last
    window's end); no other user has one."""
    want = {u: s for u, s in replay.states.items() if s.window_end}
    assert states.keys() == want.keys() and len(want) > 50
    t = max(s.window_end for s in want.values())
    for user, s in want.items():
        assert describe(states[user], t, cfg.features) == describe(s, t, cfg.features), user
        got, exp = memory_at(states[user], t, cfg.features), memory_at(s, t, cfg.features)
        assert got.keys() == exp.keys(), user  # the user x item memory: the same items, counts and times
        for item, values in exp.items():
            assert got[item] == pytest.approx(values, rel=1e-9, abs=1e-12), (user, item)


def assert_profiles_are_the_states(r, cfg) -> None:
    """Every user's profile (what GetUserFeatures answers) is the one their stored state gives."""
    states = read_states(r)
    assert states
    segments = Segments.of_config(cfg)
    for user, s in states.items():
        assert keys.Profile.decode(r.get(keys.profile_key(user))) == profile(s, cfg.features, None, segments), user


def assert_segments_equal_replay(r, replay, cfg) -> None:
    """Online and offline give the same segments: every user's stored profile and list name the
    segments the offline replay's state puts them in, and the rules split the users (else the
    check could not fail)."""
    segments = Segments.of_config(cfg)
    assert segments, "the job config has no segments to compare"
    seen = set()
    for user, s in replay.states.items():
        if not s.window_end:
            continue
        want = profile(s, cfg.features, None, segments).segments
        assert keys.Profile.decode(r.get(keys.profile_key(user))).segments == want, user
        if (raw := r.get(keys.rec_key(user))) is not None:
            assert keys.RecList.decode(raw).segments == want, user
        seen.add(tuple(want))
    assert len(seen) > 1, f"every user is in the same segments {seen}: the rules split no one"


def prefixed_topics(bootstrap: str, prefix: str, partitions: int = 2) -> dict[str, str]:
    """Create interactions/items/dlq/late/quarantine/exposures topics named with a test's prefix; returns the names."""
    names = {"interactions": f"{prefix}interactions", "items": f"{prefix}items",
             "dlq": f"{prefix}interactions.dlq", "late": f"{prefix}interactions.late",
             "quarantine": f"{prefix}interactions.quarantine", "exposures": f"{prefix}exposures"}
    create_topics(bootstrap, partitions, names)
    return names
