"""Redis as production runs it, on a real redis-server: TLS only (client certificates required),
requirepass for the default user and two ACL users, the job's writer with full rights and the
lookup service's with read-only ones. The job's store, both lookup engines, the gateway and the
CLI log in from [redis] and a password in the environment; a wrong or missing one is said plainly."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import grpc
import httpx
import pytest
import redis

from contract import keys
from contract.config import ConfigError, RedisConfig, load_config
from contract.paths import PROJECT_ROOT
from contract.serving_config import load_serving_config
from jobs.store import RedisStore, redis_client
from serving.launch import start_server
from serving.server import pb, pb_grpc
from tests.conftest import REDIS_ADMIN_PASSWORD, REDIS_PASSWORDS
from tests.helpers import child_env
from tests.redis.test_serving_ops import running_gateway
from udfs.features import Event, UserState, WindowDelta, apply_window, profile
from udfs.ranking import UserWrite

ADMIN, JOB, LOOKUP = REDIS_ADMIN_PASSWORD, REDIS_PASSWORDS["SR_TEST_JOB_PASSWORD"], REDIS_PASSWORDS["SR_TEST_LOOKUP_PASSWORD"]
T0 = int(time.time() * 1000) - 60_000


def test_the_server_refuses_plaintext_anonymous_and_wrong_logins(secure_redis):
    """What the other tests prove holds only if this server really asks for all of it."""
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=secure_redis.port, password=ADMIN, socket_timeout=2).ping()  # no TLS
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=secure_redis.port, **secure_redis.tls).ping()  # no password
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=secure_redis.port, username="streamrank-lookup", password=JOB, **secure_redis.tls).ping()
    no_cert = {k: v for k, v in secure_redis.tls.items() if k not in ("ssl_certfile", "ssl_keyfile")}
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=secure_redis.port, password=ADMIN, **no_cert).ping()  # tls-auth-clients yes


def test_job_store_engines_and_gateway_log_in_over_tls(secure_redis, engine):
    secure_redis.admin.flushdb()
    job_cfg = load_config(None, {"redis": secure_redis.section("streamrank-job", "SR_TEST_JOB_PASSWORD")})
    # the job's writer, as its UDFs make it: state, profile and list of one user
    events = ";".join(Event(f"e{n}", "view", "i1", "c1", T0 + n, 0.0, True).encode() for n in range(3))
    state, _ = apply_window(UserState(), WindowDelta("u1", T0 + 2000, events), job_cfg.features)
    RedisStore(job_cfg).write({}, {"u1": UserWrite(state, profile(state, job_cfg.features))})
    items = [keys.ScoredItem(f"i{n}", 1.0 - n / 100, "c1") for n in range(5)]
    redis_client(job_cfg).set(keys.rec_key("u1"), keys.RecList(items, "v0001", T0, T0 + 5).encode())

    lookup = {"redis": secure_redis.section("streamrank-lookup", "SR_TEST_LOOKUP_PASSWORD")}
    with pytest.raises(redis.exceptions.NoPermissionError):  # the lookup user reads and nothing more
        redis.Redis(**load_serving_config(None, lookup).redis.client_kwargs()).set("x", "y")
    cfg = load_serving_config(None, {**lookup, "engine": engine, "port": 0})
    with start_server(cfg) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.RecommendationsStub(channel)
        answer = stub.GetRecommendations(pb.GetRecommendationsRequest(user_id="u1", k=3), timeout=5)
        assert not answer.fallback and [i.item_id for i in answer.items] == ["i0", "i1", "i2"]
        features = stub.GetUserFeatures(pb.GetUserFeaturesRequest(user_id="u1"), timeout=5)
        assert features.found and features.features["views_1h"] == 3
    with running_gateway(cfg) as base:
        got = httpx.get(f"{base}/v1/recommendations/u1", params={"k": 2}, timeout=5).json()
        assert got["fallback"] is False and [i["item_id"] for i in got["items"]] == ["i0", "i1"]


def test_a_wrong_password_falls_back_and_a_missing_one_stops_before_start(secure_redis, monkeypatch, engine):
    secure_redis.admin.flushdb()
    secure_redis.admin.set(keys.rec_key("u1"), keys.RecList([keys.ScoredItem("i0", 1.0, "c1")], "v1", T0, T0).encode())
    monkeypatch.setenv("SR_TEST_LOOKUP_PASSWORD", "not-the-password")
    lookup = {"redis": secure_redis.section("streamrank-lookup", "SR_TEST_LOOKUP_PASSWORD")}
    cfg = load_serving_config(None, {**lookup, "engine": engine, "port": 0})
    with start_server(cfg) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        answer = pb_grpc.RecommendationsStub(channel).GetRecommendations(
            pb.GetRecommendationsRequest(user_id="u1"), timeout=5)
        assert answer.fallback and answer.fallback_reason == "store_unavailable"
    monkeypatch.delenv("SR_TEST_LOOKUP_PASSWORD")
    with pytest.raises(ConfigError, match="redis.password_env names SR_TEST_LOOKUP_PASSWORD, which is not set"):
        RedisConfig.model_validate(lookup["redis"]).password()


def test_cli_commands_log_in_from_the_environment(secure_redis, tmp_path):
    secure_redis.admin.flushdb()
    secure_redis.admin.hset(keys.LEDGER, mapping={"used": 7})
    section = secure_redis.section("streamrank-job", "SR_TEST_JOB_PASSWORD")
    tls = "\n".join(f'{k} = "{v}"' for k, v in section.pop("tls").items())
    config = tmp_path / "job.toml"
    config.write_text("[redis]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in section.items())
                      + f"\n[redis.tls]\n{tls}\n")
    assert "job-secret" not in config.read_text()
    cmd = [sys.executable, "-m", "cli", "ledger", "--config", str(config)]
    ok = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
                        env=child_env(SR_TEST_JOB_PASSWORD=JOB))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["used"] == 7
    env = child_env()
    env.pop("SR_TEST_JOB_PASSWORD", None)
    missing = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert missing.returncode == 2 and "export SR_TEST_JOB_PASSWORD=" in missing.stderr
    assert "Traceback" not in missing.stderr
