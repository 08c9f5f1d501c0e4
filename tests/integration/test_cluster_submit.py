"""Submit the job to a standalone Flink cluster started from PyFlink's bin/ and see lists appear."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from deploy.cluster import FlinkCluster
from deploy.paths import PROJECT_ROOT
from deploy.stack import free_port
from tests.integration.helpers import child_env, job_args, prefixed_topics
from traffic.publish import publish_catalog, publish_events
from traffic.simulator import Simulator

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    c = FlinkCluster(run)
    c.up(rest_port=free_port(), slots=2)
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
