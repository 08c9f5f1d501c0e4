"""The gRPC lookup service against a real Redis, on port 0: answers, filters, batch, features,
status codes, for both engines (go: lookupd; python: grpc.aio). Resilience, security and operations
are in test_serving_ops.py."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from contract import keys
from contract.config import RedisConfig, load_config
from contract.serving_config import load_serving_config
from serving.launch import start_server
from serving.resp import PipelinedRedis, RedisReplyError
from serving.server import pb, pb_grpc
from jobs.store import RedisStore
from udfs.features import Event, UserState, WindowDelta, apply_window, profile
from udfs.ranking import UserWrite

T0 = int(time.time() * 1000) - 60_000


def seed(r) -> None:
    items = [keys.ScoredItem(f"i{n}", 1.0 - n / 100, f"c{n % 3}") for n in range(20)]
    r.set(keys.rec_key("u1"), keys.RecList(items, "v0007", T0, T0 + 5).encode())
    r.zadd(keys.TRENDING, {f"t{n}": 100 - n for n in range(30)})
    r.hset(keys.ITEM_META, mapping={f"t{n}": keys.ItemMeta(f"c{n % 2}", 5.0).encode() for n in range(30)})
    cfg = load_config(None)
    events = ";".join(Event(f"e{n}", "view", "i1", "c1", T0 + n, 0.0, True).encode() for n in range(3))
    state, _ = apply_window(UserState(), WindowDelta("u1", T0 + 2000, events), cfg.features)
    # the state and its profile, as the job writes them
    RedisStore(cfg, r).write({}, {"u1": UserWrite(state, profile(state, cfg.features))})


VARIANTS = {"go": {"engine": "go"}, "go, no list cache": {"engine": "go", "cache.lists_mb": 0},
            "python": {"engine": "python"}}


@pytest.fixture(params=list(VARIANTS))
def service(redis_db, request):
    port, r = redis_db
    seed(r)
    cfg = load_serving_config(None, {"redis.port": port, "max_k": 10, "default_k": 4, **VARIANTS[request.param]})
    with start_server(cfg) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.RecommendationsStub(channel), r, channel


def req(user="u1", k=0, placement="", **filters):
    return pb.GetRecommendationsRequest(user_id=user, k=k, placement=placement, filters=pb.Filters(**filters))


def test_list_default_k_max_k_and_age(service):
    stub, *_ = service
    resp = stub.GetRecommendations(req(), timeout=5)
    assert [i.item_id for i in resp.items] == ["i0", "i1", "i2", "i3"] and resp.model_version == "v0007"
    assert resp.feature_ts_ms == T0 and resp.list_age_ms >= 60_000 and not resp.fallback
    assert len(stub.GetRecommendations(req(k=500), timeout=5).items) == 10


def test_filters(service):
    stub, *_ = service
    resp = stub.GetRecommendations(req(k=10, include_categories=["c1"], exclude_items=["i1"]), timeout=5)
    assert [i.item_id for i in resp.items] == ["i4", "i7", "i10", "i13", "i16", "i19"]
    assert all(i.category == "c1" for i in resp.items)
    cold = stub.GetRecommendations(req(user="nobody", k=5, exclude_categories=["c0"]), timeout=5)
    assert cold.fallback and cold.fallback_reason == "no_list"
    assert [i.item_id for i in cold.items] == ["t1", "t3", "t5", "t7", "t9"]


def test_batch_answers_in_order(service):
    stub, *_ = service
    batch = pb.BatchGetRecommendationsRequest(requests=[
        req(placement="hero", k=1), req(user="cold", k=2), req(placement="rail", k=3, exclude_categories=["c0"])])
    out = stub.BatchGetRecommendations(batch, timeout=5).responses
    assert [(o.placement, o.fallback, len(o.items)) for o in out] == [("hero", False, 1), ("", True, 2), ("rail", False, 3)]
    assert [i.item_id for i in out[2].items] == ["i1", "i2", "i4"]


def test_user_features(service):
    stub, *_ = service
    f = stub.GetUserFeatures(pb.GetUserFeaturesRequest(user_id="u1"), timeout=5)
    assert f.found and f.features["views_1h"] == 3 and list(f.top_categories) == ["c1"]
    assert f.window_end_ms == T0 + 2000 and f.feature_ts_ms == T0 + 2
    assert f.features["recency_s"] == pytest.approx(1.998) and f.features["since_click_s"] > 86400
    assert not stub.GetUserFeatures(pb.GetUserFeaturesRequest(user_id="nobody"), timeout=5).found


@pytest.mark.parametrize("bad, says", [
    (req(user="no spaces please"), "user_id must be"),
    (req(user=""), "user_id must be"),
    (req(exclude_items=[f"x{n}" for n in range(1001)]), "at most 1000"),
    (req(include_categories=[f"c{n}" for n in range(101)]), "at most 100"),
])
def test_invalid_requests(service, bad, says):
    stub, *_ = service
    with pytest.raises(grpc.RpcError) as err:
        stub.GetRecommendations(bad, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and says in err.value.details()


def _field(number: int, data: bytes) -> bytes:
    """One length-delimited protobuf field, written by hand: protobuf refuses to encode text that
    is not UTF-8, which a client in another language may still send."""
    return bytes([number << 3 | 2, len(data)]) + data


@pytest.mark.parametrize("method, body", [
    ("GetRecommendations", _field(1, b"u\xff1")),
    ("GetRecommendations", _field(1, b"u1") + _field(4, b"home\xc3")),
    ("GetRecommendations", _field(1, b"u1") + _field(3, _field(3, b"\xfe"))),
    ("GetRecommendations", b"\x0a\x05a"),  # truncated
    ("BatchGetRecommendations", _field(1, _field(1, b"u1")) + _field(1, _field(1, b"\x80"))),
    ("GetUserFeatures", _field(1, b"\xc0\xaf")),
])
def test_undecodable_requests_are_invalid_arguments(service, method, body):
    """Text that is not UTF-8, or bytes that are not the message: INVALID_ARGUMENT, not INTERNAL,
    which reads as the server's fault and which client libraries retry."""
    _, _, channel = service
    call = channel.unary_unary(f"/streamrank.v1.Recommendations/{method}")  # bytes in, bytes out
    with pytest.raises(grpc.RpcError) as err:
        call(body, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"the request is not a valid {method}Request: send a protobuf")


def test_an_undecodable_health_watch_is_refused(service, request):
    """lookupd refuses a streamed request it cannot decode too (Health.Watch), rather than handing
    the handler an empty one that watches the whole server."""
    if "go" not in request.node.callspec.params["service"]:
        pytest.skip("grpcio's own health servicer decodes Python's requests")
    _, _, channel = service
    watch = channel.unary_stream("/grpc.health.v1.Health/Watch")
    with pytest.raises(grpc.RpcError) as err:
        next(iter(watch(_field(1, b"svc\xff"), timeout=5)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("the request is not a valid HealthCheckRequest")


def test_oversized_batch_is_invalid(service):
    stub, *_ = service
    with pytest.raises(grpc.RpcError) as err:
        stub.BatchGetRecommendations(pb.BatchGetRecommendationsRequest(requests=[req()] * 101), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 100 requests" in err.value.details()


def test_pipelined_redis_keeps_replies_in_order_and_reconnects(redis_db):
    port, r = redis_db
    r.mset({f"k{n}": f"v{n}" for n in range(500)})

    async def scenario():
        client = PipelinedRedis(RedisConfig(port=port), 1.0)
        got = await asyncio.gather(*(client.execute("GET", f"k{n}") for n in range(500)))
        assert got == [f"v{n}".encode() for n in range(500)]
        assert await client.execute("MGET", "k1", "missing") == [b"v1", None]
        with pytest.raises(RedisReplyError, match="WRONGTYPE"):
            await client.execute("HGET", "k1", "field")
        r.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")  # drop our connection
        await asyncio.sleep(0.1)
        assert await client.execute("GET", "k2") == b"v2"  # a new connection, transparently
        await client.close()

    asyncio.run(scenario())
