"""Shared fixtures. Tiers are marked by folder, named for what they touch: tests/unit (no server
process), tests/redis (a real redis-server, and the lookup service's processes), tests/flink
(MiniCluster + a real Redis), tests/integration (real Kafka, Redis, Flink processes),
tests/cluster (a standalone Flink cluster), tests/install (each role's extra in a fresh venv)."""

from __future__ import annotations

import json
import os
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import trustme

from contract.config import JobConfig, load_config
from contract.paths import PROJECT_ROOT
from devstack.stack import free_port, start_kafka, start_redis, stop_pid
from models.training import build_training_set, train_and_publish
from tests import helpers as _helpers  # noqa: F401  (snapshots the environment first)
from traffic.publish import catalog_path, write_history
from traffic.simulator import Simulator

TIERS = ("unit", "redis", "flink", "integration", "cluster", "install")
# The secure Redis's ACL users' passwords, in this process's environment before any JVM starts:
# Flink's Python workers inherit the TaskManager's environment, as on a real cluster. (child_env()
# leaves them out: a child is given them explicitly.)
REDIS_PASSWORDS = {"SR_TEST_JOB_PASSWORD": "job-secret-2", "SR_TEST_LOOKUP_PASSWORD": "lookup-secret-3"}
REDIS_ADMIN_PASSWORD = "admin-secret-1"
os.environ.update(REDIS_PASSWORDS)
# privacy.pseudonymize's key (tests/vectors/pseudonym.json's) and a second one for key rotations,
# set early for the same reason
PSEUDONYM_KEY = json.loads((Path(__file__).parent / "vectors" / "pseudonym.json").read_text())["key"]
PSEUDONYM_KEYS = {"SR_TEST_PSEUDONYM_KEY": PSEUDONYM_KEY, "SR_TEST_PSEUDONYM_KEY_NEW": PSEUDONYM_KEY + "-new"}
os.environ.update(PSEUDONYM_KEYS)


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


@dataclass
class SecureRedis:
    port: int
    files: dict[str, str]
    tls: dict  # redis-py's TLS keyword arguments, with the client certificate
    admin: redis.Redis  # the default user, with requirepass

    def section(self, username: str, password_env: str) -> dict:
        """[redis] as a data engineer writes it for this server: the variable's name, no secret."""
        f = self.files
        return {"port": self.port, "username": username, "password_env": password_env,
                "tls": {"ca_file": f["ca.pem"], "cert_file": f["client.pem"], "key_file": f["client.key"]}}


@pytest.fixture(scope="session")
def secure_redis(tmp_path_factory):
    """A real redis-server as production runs it: TLS only, client certificates required
    (certificates from trustme), requirepass for the default user, and two ACL users: streamrank-job
    (everything but @dangerous, plus INFO) and streamrank-lookup (@read, @connection and @transaction:
    the Go engine's cached reads are MULTI/EXEC; no write)."""
    home = tmp_path_factory.mktemp("secure-redis")
    ca = trustme.CA()
    files = {name: str(home / name) for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}
    ca.cert_pem.write_to_path(files["ca.pem"])
    for cert, name in ((ca.issue_cert("127.0.0.1"), "server"), (ca.issue_cert("streamrank-client"), "client")):
        cert.cert_chain_pems[0].write_to_path(files[f"{name}.pem"])
        cert.private_key_pem.write_to_path(files[f"{name}.key"])
    port = free_port()
    tls = {"ssl": True, "ssl_ca_certs": files["ca.pem"], "ssl_certfile": files["client.pem"],
           "ssl_keyfile": files["client.key"]}
    job, lookup = REDIS_PASSWORDS["SR_TEST_JOB_PASSWORD"], REDIS_PASSWORDS["SR_TEST_LOOKUP_PASSWORD"]
    svc = start_redis(home, port, durable=False, login={"password": REDIS_ADMIN_PASSWORD, **tls}, extra_args=(
        "--port", "0", "--tls-port", str(port), "--tls-cert-file", files["server.pem"],
        "--tls-key-file", files["server.key"], "--tls-ca-cert-file", files["ca.pem"], "--tls-auth-clients", "yes",
        "--requirepass", REDIS_ADMIN_PASSWORD,
        "--user", "streamrank-job", "on", f">{job}", "~*", "&*", "+@all", "-@dangerous", "+info",
        "--user", "streamrank-lookup", "on", f">{lookup}", "~*", "+@read", "+@connection", "+@transaction"))
    try:
        yield SecureRedis(port, files, tls, redis.Redis(port=port, password=REDIS_ADMIN_PASSWORD, **tls))
    finally:
        stop_pid(svc.pid)


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
        "segments.rules": tomllib.loads(f"v = {_helpers.SEGMENT_RULES}")["v"],  # as job_args sets them
    }
    for key, value in sections.items():
        overrides[key.replace("__", ".")] = value
    return load_config(PROJECT_ROOT / "deploy" / "config" / "local.toml", overrides)
