"""The gRPC lookup service against a real Redis, on port 0: answers, filters, batch, features,
status codes, token authentication, and health following Redis."""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contract import keys
from contract.config import load_config, load_serving_config
from deploy.stack import free_port, start_redis, stop_pid
from serving.server import create_server, pb, pb_grpc
from udfs.features import Event, UserState, WindowDelta, apply_window

T0 = int(time.time() * 1000) - 60_000


def seed(r) -> None:
    items = [keys.ScoredItem(f"i{n}", 1.0 - n / 100, f"c{n % 3}") for n in range(20)]
    r.set(keys.rec_key("u1"), keys.RecList(items, "v0007", T0, T0 + 5).encode())
    r.zadd(keys.TRENDING, {f"t{n}": 100 - n for n in range(30)})
    r.hset(keys.ITEM_META, mapping={f"t{n}": keys.ItemMeta(f"c{n % 2}", 5.0).encode() for n in range(30)})
    cfg = load_config(None)
    events = ";".join(Event(f"e{n}", "view", "i1", "c1", T0 + n, 0.0, True).encode() for n in range(3))
    state, _ = apply_window(UserState(), WindowDelta("u1", T0 + 2000, events), cfg.features)
    r.set(keys.feat_key("u1"), state.encode())


@pytest.fixture
def service(redis_db, monkeypatch):
    port, r = redis_db
    seed(r)
    cfg = load_serving_config(None, {"redis.port": port, "max_k": 10, "default_k": 4})
    server, grpc_port = create_server(cfg, 0)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    yield pb_grpc.RecommendationsStub(channel), r
    channel.close()
    server.stop(0)
    server.health_monitor.stopped.set()


def req(user="u1", k=0, placement="", **filters):
    return pb.GetRecommendationsRequest(user_id=user, k=k, placement=placement, filters=pb.Filters(**filters))


def test_list_default_k_max_k_and_age(service):
    stub, _ = service
    resp = stub.GetRecommendations(req(), timeout=5)
    assert [i.item_id for i in resp.items] == ["i0", "i1", "i2", "i3"] and resp.model_version == "v0007"
    assert resp.feature_ts_ms == T0 and resp.list_age_ms >= 60_000 and not resp.fallback
    assert len(stub.GetRecommendations(req(k=500), timeout=5).items) == 10


def test_filters(service):
    stub, _ = service
    resp = stub.GetRecommendations(req(k=10, include_categories=["c1"], exclude_items=["i1"]), timeout=5)
    assert [i.item_id for i in resp.items] == ["i4", "i7", "i10", "i13", "i16", "i19"]
    assert all(i.category == "c1" for i in resp.items)
    cold = stub.GetRecommendations(req(user="nobody", k=5, exclude_categories=["c0"]), timeout=5)
    assert cold.fallback and cold.fallback_reason == "no_list"
    assert [i.item_id for i in cold.items] == ["t1", "t3", "t5", "t7", "t9"]


def test_batch_answers_in_order(service):
    stub, _ = service
    batch = pb.BatchGetRecommendationsRequest(requests=[
        req(placement="hero", k=1), req(user="cold", k=2), req(placement="rail", k=3, exclude_categories=["c0"])])
    out = stub.BatchGetRecommendations(batch, timeout=5).responses
    assert [(o.placement, o.fallback, len(o.items)) for o in out] == [("hero", False, 1), ("", True, 2), ("rail", False, 3)]
    assert [i.item_id for i in out[2].items] == ["i1", "i2", "i4"]


def test_user_features(service):
    stub, _ = service
    f = stub.GetUserFeatures(pb.GetUserFeaturesRequest(user_id="u1"), timeout=5)
    assert f.found and f.features["views_1h"] == 3 and list(f.top_categories) == ["c1"]
    assert f.window_end_ms == T0 + 2000
    assert not stub.GetUserFeatures(pb.GetUserFeaturesRequest(user_id="nobody"), timeout=5).found


@pytest.mark.parametrize("bad, says", [
    (req(user="no spaces please"), "user_id must be"),
    (req(user=""), "user_id must be"),
    (req(exclude_items=[f"x{n}" for n in range(1001)]), "at most 1000"),
    (req(include_categories=[f"c{n}" for n in range(101)]), "at most 100"),
])
def test_invalid_requests(service, bad, says):
    stub, _ = service
    with pytest.raises(grpc.RpcError) as err:
        stub.GetRecommendations(bad, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and says in err.value.details()


def test_oversized_batch_is_invalid(service):
    stub, _ = service
    with pytest.raises(grpc.RpcError) as err:
        stub.BatchGetRecommendations(pb.BatchGetRecommendationsRequest(requests=[req()] * 101), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_token_authentication(redis_db, monkeypatch):
    port, r = redis_db
    seed(r)
    monkeypatch.setenv("STREAMRANK_TEST_TOKEN", "s3cret")
    cfg = load_serving_config(None, {"redis.port": port, "auth_token_env": "STREAMRANK_TEST_TOKEN"})
    server, grpc_port = create_server(cfg, 0)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
            stub = pb_grpc.RecommendationsStub(ch)
            for metadata in (None, [("authorization", "Bearer wrong")], [("authorization", "s3cret")]):
                with pytest.raises(grpc.RpcError) as err:
                    stub.GetRecommendations(req(), timeout=5, metadata=metadata)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            ok = stub.GetRecommendations(req(), timeout=5, metadata=[("authorization", "Bearer s3cret")])
            assert ok.items
            health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(0)
        server.health_monitor.stopped.set()


def test_health_follows_redis_and_calls_fail_fast(tmp_path):
    port = free_port()
    svc = start_redis(tmp_path, port)
    cfg = load_serving_config(None, {"redis.port": port, "health_interval_s": 0.2, "redis_timeout_s": 0.3})
    server, grpc_port = create_server(cfg, 0)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            stub = pb_grpc.RecommendationsStub(ch)

            def status():
                return health.Check(health_pb2.HealthCheckRequest(service="streamrank.v1.Recommendations"),
                                    timeout=2).status

            def wait_for(want):
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and status() != want:
                    time.sleep(0.1)
                return status()

            assert wait_for(health_pb2.HealthCheckResponse.SERVING) == health_pb2.HealthCheckResponse.SERVING
            stop_pid(svc.pid)
            assert wait_for(health_pb2.HealthCheckResponse.NOT_SERVING) == health_pb2.HealthCheckResponse.NOT_SERVING
            t = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                stub.GetRecommendations(req(), timeout=3)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() - t < 3
            svc = start_redis(tmp_path, port)
            assert wait_for(health_pb2.HealthCheckResponse.SERVING) == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(0)
        server.health_monitor.stopped.set()
        stop_pid(svc.pid)
