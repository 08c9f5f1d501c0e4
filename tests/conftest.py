"""Shared fixtures. Tiers are marked by folder, named for what they touch: tests/unit (no server
process), tests/redis (a real redis-server, and the lookup service's processes), tests/flink
(MiniCluster + a real Redis), tests/integration (real Kafka, Redis, Flink processes),
tests/cluster (a standalone Flink cluster), tests/install (each role's extra in a fresh venv)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from contract.config import JobConfig, load_config
from contract.paths import PROJECT_ROOT
from devstack.stack import free_port, start_kafka, start_redis, stop_pid
from models.training import build_training_set, train_and_publish
from tests import helpers as _helpers  # noqa: F401  (snapshots the environment first)
from traffic.publish import catalog_path, write_history
from traffic.simulator import Simulator

TIERS = ("unit", "redis", "flink", "integration", "cluster", "install")


def pytest_collection_modifyitems(items):
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(params=["go", "python"])
def engine(request) -> str:
    """The lookup service's engine (serving config `engine`): tests taking it run against both."""
    return request.param


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server on a free loopback port: (port, client)."""
    port = free_port()
    svc = start_redis(tmp_path_factory.mktemp("redis"), port)
    yield port, redis.Redis(port=port)
    stop_pid(svc.pid)


@pytest.fixture
def redis_db(redis_server):
    port, client = redis_server
    client.flushdb()
    return port, client


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    """A real single-node Kafka broker (KRaft) on free loopback ports: bootstrap string."""
    svc = start_kafka(tmp_path_factory.mktemp("kafka"), free_port(), free_port(), partitions=2)
    yield f"127.0.0.1:{svc.port}"
    stop_pid(svc.pid)


@pytest.fixture(scope="session")
def sim_history(tmp_path_factory):
    """A simulated history file (and its catalog) ending now."""
    d = tmp_path_factory.mktemp("history")
    sim = Simulator(seed=21, users=200, items=500, categories=10)
    path = d / "history.jsonl"
    write_history(sim, str(path), 15000, 5.0, int((time.time() - 3600) * 1000), progress=False)
    return path, catalog_path(path)


@pytest.fixture(scope="session")
def training_set(sim_history):
    """The point-in-time training set of the simulated history (default config)."""
    history, catalog = sim_history
    return build_training_set(history, load_config(None), catalog=catalog, progress=False)


@pytest.fixture(scope="session")
def model_dir(training_set, tmp_path_factory) -> Path:
    """Model v0 trained on the simulated history and published to a temporary registry."""
    registry = tmp_path_factory.mktemp("registry")
    train_and_publish(training_set, registry, load_config(None))
    return registry / "current"


def job_config(redis_port: int, model: Path, bootstrap: str = "127.0.0.1:9", **sections) -> JobConfig:
    overrides = {
        "redis.port": redis_port,
        "scoring.model_dir": str(model),
        "kafka.bootstrap_servers": bootstrap,
        "flink.checkpoint_interval_s": 2.0,
    }
    for key, value in sections.items():
        overrides[key.replace("__", ".")] = value
    return load_config(PROJECT_ROOT / "deploy" / "config" / "local.toml", overrides)
