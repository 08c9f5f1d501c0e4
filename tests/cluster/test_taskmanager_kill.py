"""A TaskManager process killed with SIGKILL right after each of three completed checkpoints, on a
standalone cluster with two TaskManagers and spare slots, while records keep coming and another
process keeps one core busy. Flink restarts the job under its restart strategy from the last
checkpoint; a new TaskManager replaces the killed one. At the end the ledger is exact, every
user's features equal the offline replay, no stored list ever moved back to an older version, and
the exactly-once DLQ holds each rejected record once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import psutil

from contract import keys
from contract.keys import read_ledger
from contract.paths import PROJECT_ROOT
from devstack.cluster import FlinkCluster
from devstack.rejected import read_rejected, summarize
from devstack.stack import free_port
from tests.cluster.test_cluster_submit import close_windows, fresh_start, one_running_job, send, with_duplicates
from tests.conftest import job_config
from tests.helpers import (assert_features_equal_replay, child_env, job_args, read_states, records_replay,
                           replay_ledger, wait_until)
from traffic.simulator import Simulator

KILLS = 3


def taskmanager_pids(c: FlinkCluster) -> list[int]:
    """The live TaskManager processes (flink-daemon.sh keeps their pids in env.pid.dir)."""
    pids = []
    for f in c.dir.glob("*taskexecutor.pid"):
        for line in f.read_text().split():
            pid = int(line)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            pids.append(pid)
    return pids


def busy_taskmanager(c: FlinkCluster) -> int:
    """The pid of a TaskManager running some of the job's tasks: the one listening on the data
    port that the REST API gives for a TaskManager with slots in use."""
    ports = {tm["dataPort"] for tm in c.rest("GET", "/taskmanagers")["taskmanagers"]
             if tm["freeSlots"] < tm["slotsNumber"]}
    for pid in taskmanager_pids(c):
        listening = {conn.laddr.port for conn in psutil.Process(pid).net_connections(kind="tcp")
                     if conn.status == psutil.CONN_LISTEN}
        if listening & ports:
            return pid
    raise AssertionError(f"no TaskManager process listens on {ports}")


def test_three_taskmanager_kills_at_checkpoints_lose_and_repeat_nothing(kafka_broker, redis_server, model_dir,
                                                                        tmp_path):
    port, r = redis_server
    prefix, sim = "tmkill.", Simulator(seed=21, users=70, items=150, categories=5)
    fresh_start(kafka_broker, r, prefix, sim)
    start = int(time.time() * 1000) - 900_000
    records = with_duplicates(sim.records(start, 4.0, 3200, malformed_fraction=0.01), every=15)
    topic = f"{prefix}interactions"
    parts = [records[i * len(records) // (KILLS + 1):(i + 1) * len(records) // (KILLS + 1)] for i in range(KILLS + 1)]
    send(kafka_broker, topic, parts[0])

    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # the machine's other core, busy
    c = FlinkCluster(tmp_path / "run")
    versions: dict[str, int] = {}
    backwards: list[tuple[str, int, int]] = []
    stop = threading.Event()

    def watch_lists() -> None:  # a list's version (its newest event) must never go back
        while not stop.is_set():
            for k in list(r.scan_iter(keys.rec_key("*"), count=1000)):
                raw = r.get(k)
                if raw:
                    ts = keys.RecList.decode(raw).feature_ts
                    user = k.decode()
                    if ts < versions.get(user, 0):
                        backwards.append((user, versions[user], ts))
                    versions[user] = max(ts, versions.get(user, 0))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch_lists, daemon=True)
    try:
        c.up(rest_port=free_port(), slots=2, metrics_port=free_port())
        c.add_taskmanager()
        assert wait_until(lambda: c.overview()["taskmanagers"] == 2, 90, every_s=1), c.overview()
        env = child_env(STREAMRANK_RUN_DIR=str(tmp_path / "run"))
        args = job_args(kafka_broker, port, model_dir, prefix, "tmkill") + [
            "--set", f'flink.checkpoint_dir="{tmp_path / "checkpoints"}"',
            "--set", 'kafka.rejected_delivery="exactly-once"', "--set", "flink.parallelism=2",
            "--set", 'flink.extra.restart-strategy.type="fixed-delay"',
            "--set", "flink.extra.restart-strategy.fixed-delay.attempts=50",
            "--set", 'flink.extra.restart-strategy.fixed-delay.delay="2 s"']
        out = subprocess.run([sys.executable, "-m", "cli", "submit", "--config",
                              str(PROJECT_ROOT / "deploy" / "config" / "local.toml"), *args],
                             cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        job_id = one_running_job(c, timeout_s=120)
        watcher.start()
        killed = []
        def checkpoints() -> int:
            return c.rest("GET", f"/jobs/{job_id}/checkpoints")["counts"]["completed"]

        def failures() -> list:
            return c.rest("GET", f"/jobs/{job_id}/exceptions")["exceptionHistory"]["entries"]

        for n in range(KILLS):
            before = checkpoints()
            assert wait_until(lambda before=before: checkpoints() > before, 120, every_s=0.1), checkpoints()
            pid = busy_taskmanager(c)
            os.kill(pid, signal.SIGKILL)  # right after a completed checkpoint
            killed.append(pid)
            send(kafka_broker, topic, parts[n + 1])  # records keep coming while it recovers
            c.add_taskmanager()  # the replacement
            # Flink saw the failure (a new entry in the job's exceptions), then runs the job again
            assert wait_until(lambda n=n: len(failures()) > n, 180, every_s=0.5), failures()
            assert wait_until(lambda: {j["jid"]: j["state"] for j in c.jobs()}.get(job_id) == "RUNNING"
                              and len(taskmanager_pids(c)) == 2, 180, every_s=1), c.jobs()
        close_windows(kafka_broker, topic, start)
        assert wait_until(lambda: sum(read_ledger(r).values()) >= len(records), 300, every_s=1), read_ledger(r)
        restarts = c.rest("GET", f"/jobs/{job_id}")
        failed = failures()
        ledger = read_ledger(r)
        # the DLQ's last transaction commits with a checkpoint
        last = checkpoints()
        wait_until(lambda: checkpoints() > last + 1, 60, every_s=0.5)
    finally:
        stop.set()
        burner.kill()
        c.down()
    assert len(set(killed)) == KILLS, killed
    assert restarts["state"] == "RUNNING"
    assert len(failed) >= KILLS, failed  # each kill failed the job, which restarted from its checkpoint
    cfg = job_config(port, model_dir)
    hist, replay = records_replay([v for _, v in records], cfg, tmp_path / "stream.jsonl")
    assert ledger == replay_ledger(hist, replay)
    assert sum(ledger.values()) == len(records) and ledger["duplicate"] > 0 and ledger["dlq"] > 0
    assert_features_equal_replay(read_states(r), replay, cfg)
    assert not backwards, backwards[:5]
    assert len(versions) > 0
    dlq = summarize(read_rejected(kafka_broker, f"{prefix}interactions.dlq", idle_ms=2000, progress=False))
    assert dlq["by_reason"] == Counter(why for _, why in hist.rejected) and dlq["repeated"] == 0
