"""Submit the job to a standalone Flink cluster started from PyFlink's bin/ and see lists appear."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from contract.keys import read_ledger
from deploy.cluster import FlinkCluster
from deploy.paths import PROJECT_ROOT
from deploy.stack import free_port
from tests.integration.helpers import child_env, job_args, prefixed_topics, scrape_until_ledger
from traffic.publish import publish_catalog, publish_events
from traffic.simulator import Simulator

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    c = FlinkCluster(run)
    c.up(rest_port=free_port(), slots=2, metrics_port=free_port())
    yield c, run
    c.down()


def test_submitted_job_writes_lists(cluster, kafka_broker, redis_server, model_dir):
    c, run = cluster
    port, r = redis_server
    r.flushdb()
    prefix = "cl."
    prefixed_topics(kafka_broker, prefix)
    sim = Simulator(seed=5, users=60, items=200, categories=6)
    publish_catalog(sim, kafka_broker, f"{prefix}items")
    report = publish_events(sim, kafka_broker, f"{prefix}interactions", 1000, 50.0,
                            start_ms=int(time.time() * 1000) - 60_000, progress=False)
    env = child_env(STREAMRANK_RUN_DIR=str(run))
    out = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "submit", "--bounded", "--no-detached",
         "--config", str(PROJECT_ROOT / "deploy" / "config" / "local.toml"),
         *job_args(kafka_broker, port, model_dir, prefix, "cluster-test")],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    jobs = c.jobs()
    assert [j["state"] for j in jobs] == ["FINISHED"], jobs
    with_lists = {k.decode()[4:] for k in r.scan_iter("rec:*")}
    assert len(with_lists) == report.users > 0
    assert json.loads(r.get(f"rec:{sorted(with_lists)[0]}"))["items"]


def test_detached_job_reports_metrics_and_cancels(cluster, kafka_broker, redis_server, model_dir):
    """A streaming (unbounded) job submitted detached: the TaskManager's Prometheus reporter serves
    the ledger's counters, equal to the ledger once every record is in it, and
    `streamrank cluster cancel` stops the job."""
    c, run = cluster
    port, r = redis_server
    r.flushdb()
    prefix = "cl2."
    prefixed_topics(kafka_broker, prefix, partitions=1)
    sim = Simulator(seed=6, users=40, items=100, categories=5)
    publish_catalog(sim, kafka_broker, f"{prefix}items")
    start = int(time.time() * 1000) - 60_000
    publish_events(sim, kafka_broker, f"{prefix}interactions", 500, 50.0, start_ms=start, progress=False)
    # a record far ahead closes the windows of the 500; it stays in its own open window
    publish_events(Simulator(seed=7, users=1, items=1, categories=1), kafka_broker, f"{prefix}interactions", 1,
                   1.0, start_ms=start + 3_600_000, progress=False)
    env = child_env(STREAMRANK_RUN_DIR=str(run))
    cli = [sys.executable, "-m", "deploy.cli"]
    out = subprocess.run([*cli, "submit", "--config", str(PROJECT_ROOT / "deploy" / "config" / "local.toml"),
                          *job_args(kafka_broker, port, model_dir, prefix, "cluster-metrics")],
                         cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and sum(read_ledger(r).values()) < 500:
        time.sleep(0.5)
    want = read_ledger(r)
    assert sum(want.values()) == 500, want
    got, _ = scrape_until_ledger(c.metrics_endpoints()["taskmanager"], want)
    assert got == want and want["used"] > 0

    out = subprocess.run([*cli, "cluster", "cancel"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    deadline, states = time.monotonic() + 60, []
    while time.monotonic() < deadline and "CANCELED" not in states:
        states = [j["state"] for j in c.jobs()]
        time.sleep(0.5)
    assert states.count("CANCELED") == 1 and "RUNNING" not in states, states
