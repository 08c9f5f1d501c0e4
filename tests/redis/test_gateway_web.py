"""What the gateway gives pages and CDNs, against a real Redis: Cache-Control from the config and
the list's age, an ETag that a 304 honours, CORS for the configured origins only, several
placements in one call (HTTP and GraphQL) within the configured limits, and beacons refused with
what is allowed."""

from __future__ import annotations

import time

import httpx

from contract import keys
from contract.serving_config import load_serving_config
from tests.redis.test_serving_ops import running_gateway

def seed(r) -> None:
    now = int(time.time() * 1000)  # at the test, not at collection: list ages are what the test reads
    items = [keys.ScoredItem(f"i{n}", 1.0 - n / 100, f"c{n % 3}") for n in range(12)]
    r.set(keys.rec_key("idle"), keys.RecList(items, "v1", now - 3_600_000, now, segments=["vip"]).encode())
    r.set(keys.rec_key("active"), keys.RecList(items, "v1", now - 20_000, now).encode())


def config(port: int, **more):
    return load_serving_config(None, {"redis.port": port, "engine": "python", "gateway.cache_max_age_s": 60,
                                      "gateway.fallback_max_age_s": 7, **more})


def test_cache_control_etag_and_304(redis_db):
    port, r = redis_db
    seed(r)
    with running_gateway(config(port)) as base:
        idle = httpx.get(f"{base}/v1/recommendations/idle", params={"k": 3})
        assert idle.headers["cache-control"] == "private, max-age=60"  # an hour old: the config's cap
        active = httpx.get(f"{base}/v1/recommendations/active", params={"k": 3})
        assert active.headers["cache-control"] == "private, max-age=2"  # 20 s old: a tenth of it
        cold = httpx.get(f"{base}/v1/recommendations/nobody", params={"k": 3})
        assert cold.headers["cache-control"] == "private, max-age=7"

        tag = idle.headers["etag"]
        again = httpx.get(f"{base}/v1/recommendations/idle", params={"k": 3}, headers={"If-None-Match": tag})
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == tag
        # the call was served all the same: its own request id, for the clicks on the cached body
        assert len(again.headers["x-request-id"]) == 32 and again.headers["x-request-id"] != idle.json()["request_id"]
        other_k = httpx.get(f"{base}/v1/recommendations/idle", params={"k": 4}, headers={"If-None-Match": tag})
        assert other_k.status_code == 200 and other_k.headers["etag"] != tag

        now = int(time.time() * 1000)
        r.set(keys.rec_key("idle"), keys.RecList([keys.ScoredItem("new", 1.0, "c1")], "v2", now, now).encode())
        changed = httpx.get(f"{base}/v1/recommendations/idle", params={"k": 3}, headers={"If-None-Match": tag})
        assert changed.status_code == 200 and changed.json()["items"][0]["item_id"] == "new"


def test_cors_only_for_the_configured_origins(redis_db):
    port, r = redis_db
    seed(r)
    with running_gateway(config(port)) as base:  # none configured: no CORS header at all
        assert "access-control-allow-origin" not in httpx.get(
            f"{base}/v1/recommendations/idle", headers={"Origin": "https://shop.example"}).headers
    with running_gateway(config(port, **{"gateway.cors_origins": ["https://shop.example"]})) as base:
        ok = httpx.get(f"{base}/v1/recommendations/idle", headers={"Origin": "https://shop.example"})
        assert ok.headers["access-control-allow-origin"] == "https://shop.example"
        assert "etag" in ok.headers["access-control-expose-headers"].lower()
        pre = httpx.options(f"{base}/v1/page/idle", headers={"Origin": "https://shop.example",
                                                             "Access-Control-Request-Method": "GET",
                                                             "Access-Control-Request-Headers": "if-none-match"})
        assert pre.status_code == 200
        other = httpx.options(f"{base}/v1/page/idle", headers={"Origin": "https://evil.example",
                                                               "Access-Control-Request-Method": "GET"})
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers


def test_several_placements_in_one_call_over_http_and_graphql_within_the_limits(redis_db):
    port, r = redis_db
    seed(r)
    cfg = config(port, **{"gateway.graphql.max_placements": 3, "gateway.graphql.max_cost": 20})
    with running_gateway(cfg) as base:
        page = httpx.get(f"{base}/v1/page/idle", params=[("p", "hero:2"), ("p", "rail:5")]).json()
        assert page["segments"] == ["vip"]
        assert [(p["placement"], len(p["items"])) for p in page["placements"]] == [("hero", 2), ("rail", 5)]
        assert len({p["request_id"] for p in page["placements"]}) == 2
        bad = httpx.get(f"{base}/v1/page/idle", params=[("p", "hero:two")])
        assert bad.status_code == 400 and "p takes name:k" in bad.json()["error"]

        def graphql(query: str) -> dict:
            return httpx.post(f"{base}/graphql", json={"query": query}).json()

        ok = graphql('{page(userId: "idle", placements: [{name: "hero", k: 2}, {name: "rail", k: 5}]) '
                     '{segments placements {placement items {itemId reasons}}}}')
        assert ok["data"]["page"]["segments"] == ["vip"]
        assert [len(p["items"]) for p in ok["data"]["page"]["placements"]] == [2, 5]
        too_many = graphql('{page(userId: "idle", placements: [{name: "a"}, {name: "b"}, {name: "c"}, {name: "d"}]) '
                           '{segments}}')
        assert "at most 3 placements" in too_many["errors"][0]["message"]
        costly = graphql('{a: page(userId: "idle", placements: [{name: "a", k: 10}]) {segments} '
                         'b: page(userId: "idle", placements: [{name: "b", k: 10}]) {segments} '
                         'c: recommendations(userId: "idle", k: 5) {userId}}')
        assert any("over gateway.graphql.max_cost = 20" in e["message"] for e in costly["errors"])
        deep = graphql('{page(userId: "idle", placements: [{name: "a"}]) {placements {items {itemId}}}}')
        assert "data" in deep and not deep.get("errors")  # within the default depth (5)
        cfg_shallow = config(port, **{"gateway.graphql.max_depth": 2})
    with running_gateway(cfg_shallow) as base:
        deep = httpx.post(f"{base}/graphql", json={
            "query": '{page(userId: "idle", placements: [{name: "a"}]) {placements {items {itemId}}}}'}).json()
        assert "exceeds maximum operation depth of 2" in deep["errors"][0]["message"]


def test_beacons_are_refused_with_what_is_allowed(redis_db):
    port, r = redis_db
    with running_gateway(config(port)) as base:  # beacons off by default
        off = httpx.post(f"{base}/v1/beacon", content=b'{"events": []}')
        assert off.status_code == 404 and "gateway.beacons.enabled" in off.json()["detail"]
    with running_gateway(config(port, **{"gateway.beacons.enabled": True,
                                         "gateway.beacons.bootstrap_servers": "127.0.0.1:9"})) as base:
        bad = httpx.post(f"{base}/v1/beacon", content=b'{"events": [{"type": "buy", "user_id": "u1"}]}')
        assert bad.status_code == 400 and bad.json()["code"] == "INVALID_ARGUMENT"
        assert "click" in bad.json()["error"] and any("type" in e["loc"] for e in bad.json()["errors"])
        no_item = httpx.post(f"{base}/v1/beacon", content=(
            b'{"events": [{"type": "click", "user_id": "u1", "request_id": "' + b"a" * 32 + b'"}]}'))
        assert no_item.status_code == 400 and "a click needs item_id" in no_item.json()["error"]
