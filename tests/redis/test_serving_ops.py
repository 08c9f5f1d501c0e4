"""The lookup service's resilience, security and operations, against real Redis processes and real
servers on free ports: Redis killed or frozen mid-load (answers fall back within the deadline, the
breaker opens, health flips and recovers), TLS and mutual TLS, client retries, graceful drain on
SIGTERM with metrics and JSON logs from the real `streamrank serve` process, and the HTTP/GraphQL
gateway answering what gRPC answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
import httpx
import pytest
import redis
import trustme
import uvicorn

from contract import keys
from contract.config import ConfigError
from contract.serving_config import load_serving_config
from contract.paths import PROJECT_ROOT
from devstack.stack import free_port, port_open, start_redis, stop_pid
from serving.client import RecommendationsClient
from serving.gateway import create_app
from serving.core import LookupService
from serving.launch import GoServer, start_server
from serving.server import pb, pb_grpc
from tests.helpers import child_env, wait_until
from tests.redis.test_serving import seed

SERVICE = "streamrank.v1.Recommendations"


@contextmanager
def running_gateway(cfg):
    """The HTTP/GraphQL gateway on a free port in a thread: yields its base URL."""
    port = free_port()
    gateway = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=gateway.run, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: gateway.started, 20)
        yield f"http://127.0.0.1:{port}"
    finally:
        gateway.should_exit = True
        thread.join(10)


def health_status(channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=2).status


@pytest.fixture
def own_redis(tmp_path):
    """A Redis this test may kill: (port, client, restart)."""
    port = free_port()
    svc = {"pid": start_redis(tmp_path, port).pid}
    client = redis.Redis(port=port)
    seed(client)

    def restart():
        svc["pid"] = start_redis(tmp_path, port).pid
        seed(client)

    yield port, client, restart, svc
    stop_pid(svc["pid"])


def test_redis_killed_mid_load_answers_fall_back_within_deadline(own_redis, engine):
    port, r, restart, svc = own_redis
    cfg = load_serving_config(None, {"engine": engine, "redis.port": port, "health_interval_s": 0.1, "redis_timeout_s": 0.2,
                                     "breaker.failures": 3, "breaker.reset_s": 0.5, "cache.refresh_s": 0.2})
    # Redis's own timeout (0.2 s) well inside the caller's deadline: the fallback must come from the
    # service giving up on Redis, with room left for this process's scheduling on loaded cores
    deadline_s = 1.0
    with start_server(cfg) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = pb_grpc.RecommendationsStub(ch)
        assert wait_until(lambda: health_status(ch) == health_pb2.HealthCheckResponse.SERVING)
        results: list[tuple[float, float, str, list[str]]] = []  # (start, seconds, fallback reason, items)
        stop = threading.Event()

        def load():
            while not stop.is_set():
                t = time.monotonic()
                resp = stub.GetRecommendations(pb.GetRecommendationsRequest(user_id="u1", k=3), timeout=deadline_s)
                results.append((t, time.monotonic() - t, resp.fallback_reason, [i.item_id for i in resp.items]))

        with ThreadPoolExecutor(4) as pool:
            workers = [pool.submit(load) for _ in range(4)]
            time.sleep(0.5)
            killed_at = time.monotonic()
            os.killpg(svc["pid"], signal.SIGKILL)
            assert wait_until(lambda: health_status(ch) == health_pb2.HealthCheckResponse.NOT_SERVING)
            time.sleep(1.0)
            restarting_at = time.monotonic()  # Redis is back some time after this, before health says so
            restart()
            assert wait_until(lambda: health_status(ch) == health_pb2.HealthCheckResponse.SERVING)
            restarted_at = time.monotonic()
            time.sleep(1.5)  # past the breaker's reset
            stop.set()
            for w in workers:
                w.result()  # no call raised: none outlived its deadline, none failed

        before = [x for x in results if x[0] + x[1] < killed_at]
        during = [x for x in results if killed_at + 0.05 < x[0] < restarting_at - 0.05]
        after = [x for x in results if x[0] > restarted_at + 1.0]
        assert before and during and after
        # Every call answered (w.result() above re-raises a DEADLINE_EXCEEDED): gRPC's own timer saw
        # each answer arrive inside the deadline. The durations this process measures add its own
        # scheduling, so they only place calls before, during and after, and are not asserted.
        assert all(x[2] == "" and x[3] == ["i0", "i1", "i2"] for x in before)
        # while Redis is dead every answer is the cached popular list, marked as such
        assert all(x[2] == "store_unavailable" and x[3] == ["t0", "t1", "t2"] for x in during)
        assert all(x[2] == "" and x[3] == ["i0", "i1", "i2"] for x in after), sorted({x[2] for x in after})
        # GetUserFeatures has no fallback: UNAVAILABLE while Redis is down is the honest answer
        assert stub.GetUserFeatures(pb.GetUserFeaturesRequest(user_id="u1"), timeout=1).found


def test_frozen_redis_breaker_opens_and_calls_keep_their_deadline(own_redis, engine):
    port, r, restart, svc = own_redis
    # Redis's own timeout (0.1 s) is well inside the caller's deadline (1 s): the failures that open
    # the breaker are Redis's, not a deadline the client chose.
    cfg = load_serving_config(None, {"engine": engine, "redis.port": port, "redis_timeout_s": 0.1, "breaker.failures": 2,
                                     "breaker.reset_s": 30})
    with start_server(cfg) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = pb_grpc.RecommendationsStub(ch)
        os.killpg(svc["pid"], signal.SIGSTOP)  # a Redis that accepts connections and never answers
        try:
            # Every call answers inside its deadline (gRPC raises DEADLINE_EXCEEDED otherwise) with the
            # cached popular list, marked as such.
            for _ in range(6):
                resp = stub.GetRecommendations(pb.GetRecommendationsRequest(user_id="u1", k=2), timeout=1)
                assert resp.fallback_reason == "store_unavailable" and [i.item_id for i in resp.items] == ["t0", "t1"]
            # the breaker is open: a call with no fallback says so instead of waiting on Redis
            with pytest.raises(grpc.RpcError) as err:
                stub.GetUserFeatures(pb.GetUserFeaturesRequest(user_id="u1"), timeout=1)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "circuit breaker open" in err.value.details()
        finally:
            os.killpg(svc["pid"], signal.SIGCONT)


def test_list_cache_follows_every_rewrite_and_survives_a_frozen_redis(own_redis):
    """lookupd's in-process list cache (Redis CLIENT TRACKING): a rewritten list, or a first list for a
    user who had none, is answered at once; while Redis is frozen a cached list is still the
    truth (nothing can have changed it) and an uncached user falls back."""
    port, r, restart, svc = own_redis
    metrics_port = free_port()
    cfg = load_serving_config(None, {"engine": "go", "redis.port": port, "metrics_port": metrics_port,
                                     "redis_timeout_s": 0.3})
    with GoServer(cfg, 0, metrics=True) as server, RecommendationsClient(f"127.0.0.1:{server.port}", deadline_s=2,
                                                                       retries=0) as client:
        def items(user: str, k: int = 2) -> list[str]:
            return [i.item_id for i in client.recommendations(user, k).items]

        def cache_count(result: str) -> float:
            text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
            m = re.search(rf'^streamrank_serving_list_cache_total{{result="{result}"}} (\S+)$', text, re.M)
            return float(m.group(1)) if m else 0.0

        assert items("u1") == ["i0", "i1"] and items("u1") == ["i0", "i1"]
        assert cache_count("miss") == 1 and cache_count("hit") == 1

        def rewrite(user: str, prefix: str) -> None:
            now = int(time.time() * 1000)
            r.set(keys.rec_key(user), keys.RecList([keys.ScoredItem(f"{prefix}{n}", 1 - n / 10, "c0") for n in range(5)],
                                                   "v0008", now, now).encode())

        for n in range(5):  # every rewrite is seen, each within half a second (in practice at once)
            rewrite("u1", f"r{n}-")
            assert wait_until(lambda: items("u1") == [f"r{n}-0", f"r{n}-1"], 0.5)  # noqa: B023 (waited on here)
        assert client.recommendations("late-joiner", 2).fallback  # no list yet: cached as absent
        rewrite("late-joiner", "j")
        assert wait_until(lambda: items("late-joiner") == ["j0", "j1"], 0.5)

        os.killpg(svc["pid"], signal.SIGSTOP)
        try:
            cached = client.recommendations("u1", 2)
            assert not cached.fallback and [i.item_id for i in cached.items] == ["r4-0", "r4-1"]
            cold = client.recommendations("never-read", 2)
            assert cold.fallback and cold.fallback_reason == "store_unavailable"
        finally:
            os.killpg(svc["pid"], signal.SIGCONT)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.private_key_pem.write_to_path(str(d / "server.key"))
    server.cert_chain_pems[0].write_to_path(str(d / "server.pem"))
    client = ca.issue_cert("cms-middleware@example.test")
    client.private_key_pem.write_to_path(str(d / "client.key"))
    client.cert_chain_pems[0].write_to_path(str(d / "client.pem"))
    return d


def test_tls_and_mutual_tls(redis_db, pki, engine):
    port, r = redis_db
    seed(r)
    tls = {"tls": {"cert_file": str(pki / "server.pem"), "key_file": str(pki / "server.key")}}
    cfg = load_serving_config(None, {"engine": engine, "redis.port": port, **tls})
    with start_server(cfg) as server:
        target = f"127.0.0.1:{server.port}"
        with RecommendationsClient(target, ca_file=str(pki / "ca.pem"), deadline_s=5) as client:
            assert [i.item_id for i in client.recommendations("u1", 2).items] == ["i0", "i1"]
        with RecommendationsClient(target, deadline_s=2, retries=0) as plaintext:
            with pytest.raises(grpc.RpcError) as err:
                plaintext.recommendations("u1", 2)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE

    mtls = {"tls": {**tls["tls"], "client_ca_file": str(pki / "ca.pem")}}
    cfg = load_serving_config(None, {"engine": engine, "redis.port": port, **mtls})
    with start_server(cfg) as server:
        target = f"127.0.0.1:{server.port}"
        with RecommendationsClient(target, ca_file=str(pki / "ca.pem"), cert_file=str(pki / "client.pem"),
                                   key_file=str(pki / "client.key"), deadline_s=5) as client:
            assert client.recommendations("u1", 2).items
        with RecommendationsClient(target, ca_file=str(pki / "ca.pem"), deadline_s=2, retries=0) as anonymous:
            with pytest.raises(grpc.RpcError) as err:
                anonymous.recommendations("u1", 2)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_config_names_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="tls.*cert_file.*not a readable file"):
        load_serving_config(None, {"tls": {"cert_file": str(tmp_path / "nope.pem"), "key_file": str(tmp_path / "k")}})


def test_token_authentication(redis_db, monkeypatch, engine):
    port, r = redis_db
    seed(r)
    monkeypatch.setenv("STREAMRANK_TEST_TOKEN", "s3cret")
    cfg = load_serving_config(None, {"engine": engine, "redis.port": port, "auth_token_env": "STREAMRANK_TEST_TOKEN"})
    with start_server(cfg) as server:
        target = f"127.0.0.1:{server.port}"
        for token in (None, "wrong"):
            with RecommendationsClient(target, token=token, deadline_s=5) as client:
                with pytest.raises(grpc.RpcError) as err:
                    client.recommendations("u1")
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with RecommendationsClient(target, token="s3cret", deadline_s=5) as client:
            assert client.recommendations("u1").items
            assert client.user_features("u1").found
            assert health_status(client.channel) == health_pb2.HealthCheckResponse.SERVING  # no token needed


class Flaky(pb_grpc.RecommendationsServicer):
    """A real gRPC server that fails the first `failures` calls with UNAVAILABLE."""
    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    def GetRecommendations(self, request, context):  # noqa: N802
        self.calls += 1
        if self.calls <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        return pb.GetRecommendationsResponse(user_id=request.user_id)


@pytest.mark.parametrize("failures, retries, ok", [(2, 2, True), (3, 2, False), (1, 0, False)])
def test_client_retries_unavailable(failures, retries, ok):
    servicer = Flaky(failures)
    server = grpc.server(futures.ThreadPoolExecutor(2))
    pb_grpc.add_RecommendationsServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with RecommendationsClient(f"127.0.0.1:{port}", retries=retries, deadline_s=5) as client:
            if ok:
                assert client.recommendations("u1").user_id == "u1"
            else:
                with pytest.raises(grpc.RpcError) as err:
                    client.recommendations("u1")
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert servicer.calls == min(failures + 1, retries + 1)
    finally:
        server.stop(0)


def test_sigterm_drains_in_flight_calls_with_metrics_and_json_logs(own_redis, tmp_path, engine):
    port, r, restart, svc = own_redis
    grpc_port, metrics_port = free_port(), free_port()
    config = tmp_path / "serving.toml"
    config.write_text(f'engine = "{engine}"\nport = {grpc_port}\nredis_timeout_s = 10.0\ngrace_s = 10.0\nmetrics_port = {metrics_port}\n'
                      f'[redis]\nport = {port}\n')
    stderr = tmp_path / "serve.log"
    with open(stderr, "wb") as err_out:
        proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--config", str(config)],
                                cwd=PROJECT_ROOT, stdout=err_out, stderr=subprocess.STDOUT, env=child_env())
    try:
        assert wait_until(lambda: port_open(grpc_port) and port_open(metrics_port), 30), stderr.read_text()
        with RecommendationsClient(f"127.0.0.1:{grpc_port}", deadline_s=10, retries=0) as client:
            assert client.recommendations("u1", 2).items
            with pytest.raises(grpc.RpcError):
                client.recommendations("not valid!")
            metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
            # (Go's client prints 1, Python's 1.0)
            assert re.search(r'^streamrank_serving_requests_total\{code="OK",interface="grpc",method="GetRecommendations"\} 1(\.0)?$',
                             metrics, re.M), metrics
            assert re.search(r'code="INVALID_ARGUMENT",interface="grpc",method="GetRecommendations"\} 1(\.0)?$', metrics, re.M)
            assert "streamrank_serving_request_seconds_bucket" in metrics

            r.set(keys.rec_key("u2"), r.get(keys.rec_key("u1")))  # a list no cache holds yet
            os.killpg(svc["pid"], signal.SIGSTOP)  # the next call stays in flight until Redis resumes
            with ThreadPoolExecutor(1) as pool:
                in_flight = pool.submit(client.recommendations, "u2", 2)
                time.sleep(0.3)
                proc.send_signal(signal.SIGTERM)
                time.sleep(0.5)
                assert proc.poll() is None  # still draining
                os.killpg(svc["pid"], signal.SIGCONT)
                resp = in_flight.result()
            assert not resp.fallback and [i.item_id for i in resp.items] == ["i0", "i1"]
        assert proc.wait(15) == 0
    finally:
        os.killpg(svc["pid"], signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
    lines = [json.loads(line) for line in stderr.read_text().splitlines() if line.startswith("{")]
    messages = [x["message"] for x in lines]
    assert all({"asctime", "level", "logger", "message"} <= set(x) for x in lines)
    assert any(m.startswith("serving streamrank.v1.Recommendations") for m in messages)
    assert any(m.startswith("draining in-flight calls") for m in messages) and messages[-1] == "stopped"


def test_gateway_and_graphql_answer_what_grpc_answers(redis_db):
    port, r = redis_db
    seed(r)
    cfg = load_serving_config(None, {"redis.port": port, "max_k": 10, "default_k": 4})
    with running_gateway(cfg) as base:
        with start_server(cfg) as server, RecommendationsClient(f"127.0.0.1:{server.port}", deadline_s=5) as client:
            cases = [("u1", 3, {}), ("u1", 10, {"include_categories": ["c1"], "exclude_items": ["i1"]}),
                     ("nobody", 5, {"exclude_categories": ["c0"]})]
            for user, k, filters in cases:
                g = client.recommendations(user, k, **filters)
                want = {"items": [(i.item_id, round(i.score, 6), i.category) for i in g.items],
                        "model_version": g.model_version, "feature_ts_ms": g.feature_ts_ms,
                        "fallback_reason": g.fallback_reason}

                h = httpx.get(f"{base}/v1/recommendations/{user}", params={"k": k, **filters}).json()
                assert {"items": [(i["item_id"], round(i["score"], 6), i["category"]) for i in h["items"]],
                        "model_version": h["model_version"], "feature_ts_ms": h["feature_ts_ms"],
                        "fallback_reason": h["fallback_reason"]} == want

                gql = httpx.post(f"{base}/graphql", json={
                    "query": "query($u: String!, $k: Int!, $f: Filters) { recommendations(userId: $u, k: $k, filters: $f)"
                             " { items { itemId score category } modelVersion featureTsMs fallbackReason } }",
                    "variables": {"u": user, "k": k, "f": {_camel(n): v for n, v in filters.items()}}}).json()
                q = gql["data"]["recommendations"]
                assert {"items": [(i["itemId"], round(i["score"], 6), i["category"]) for i in q["items"]],
                        "model_version": q["modelVersion"], "feature_ts_ms": int(q["featureTsMs"]),
                        "fallback_reason": q["fallbackReason"]} == want

            batch = httpx.post(f"{base}/v1/recommendations:batch",
                               json={"requests": [{"user_id": "u1", "k": 1}, {"user_id": "cold", "k": 2}]}).json()
            assert [(x["fallback"], len(x["items"])) for x in batch["responses"]] == [(False, 1), (True, 2)]
            f = httpx.get(f"{base}/v1/users/u1/features").json()
            assert f["found"] and f["features"] == dict(client.user_features("u1").features)

        too_many = httpx.post(f"{base}/v1/recommendations:batch", json={"requests": [{"user_id": "u1"}] * 101})
        assert too_many.status_code == 400 and "at most 100" in too_many.json()["error"]
        bad = httpx.get(f"{base}/v1/recommendations/not%20valid")
        assert bad.status_code == 400 and bad.json()["code"] == "INVALID_ARGUMENT"
        gql_bad = httpx.post(f"{base}/graphql", json={"query": '{ recommendations(userId: "not valid") { userId } }'}).json()
        assert "user_id must be" in gql_bad["errors"][0]["message"]
        assert httpx.get(f"{base}/healthz").json() == {"status": "SERVING"}
        assert 'interface="http",method="GetRecommendations"' in httpx.get(f"{base}/metrics/").text


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def test_tiny_client_deadlines_do_not_open_the_breaker_for_others(redis_db, engine):
    """calls whose own deadline leaves no time to read Redis (here 4 ms, inside
    the 5 ms reserve) opened the shared breaker, and every later caller got the popular list. A
    deadline the client chose is not a Redis failure."""
    port, r = redis_db
    seed(r)
    cfg = load_serving_config(None, {"engine": engine, "redis.port": port, "breaker.failures": 5, "breaker.reset_s": 60})
    with start_server(cfg) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = pb_grpc.RecommendationsStub(ch)
        assert not stub.GetRecommendations(pb.GetRecommendationsRequest(user_id="u1", k=2), timeout=5).fallback
        rushed = []
        for n in range(20):
            try:
                stub.GetRecommendations(pb.GetRecommendationsRequest(user_id=f"user{n}", k=2), timeout=0.004)
            except grpc.RpcError as e:
                rushed.append(e.code())
        with pytest.raises(grpc.RpcError) as err:
            stub.GetUserFeatures(pb.GetUserFeaturesRequest(user_id="u1"), timeout=0.004)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # no fallback here: the deadline, not UNAVAILABLE
        assert set(rushed) <= {grpc.StatusCode.DEADLINE_EXCEEDED}
        # another caller, with time to spare, still gets the personalized list and the features
        resp = stub.GetRecommendations(pb.GetRecommendationsRequest(user_id="u1", k=2), timeout=5)
        assert not resp.fallback and [i.item_id for i in resp.items] == ["i0", "i1"], resp.fallback_reason
        assert stub.GetUserFeatures(pb.GetUserFeaturesRequest(user_id="u1"), timeout=5).found


def test_a_cancelled_half_open_trial_does_not_wedge_the_breaker(own_redis):
    """the gateway's core took the half-open trial for a read that was then
    cancelled (a sibling GraphQL alias failed), recorded neither outcome, and answered
    store_unavailable to everyone from then on, with Redis healthy."""
    port, _, _, svc = own_redis
    cfg = load_serving_config(None, {"engine": "python", "redis.port": port, "breaker.failures": 1,
                                     "breaker.reset_s": 0.2, "redis_timeout_s": 2.0})

    async def scenario():
        service = LookupService(cfg)
        service.breaker.failure()  # open, as after a burst of failed reads
        await asyncio.sleep(0.3)
        assert service.breaker.state == "half-open"
        os.killpg(svc["pid"], signal.SIGSTOP)  # the trial's read hangs ...
        try:
            trial = asyncio.create_task(service.user_features("u1"))
            await asyncio.sleep(0.1)
            trial.cancel()  # ... and is cancelled
            with pytest.raises(asyncio.CancelledError):
                await trial
        finally:
            os.killpg(svc["pid"], signal.SIGCONT)
        f = await service.user_features("u1")  # a new trial, which Redis answers
        assert f.found and service.breaker.state == "closed"
        await service.close()

    asyncio.run(scenario())


def test_gateway_refuses_large_bodies_and_never_echoes_input(redis_db):
    """a 20 MB body was taken (and a 20 MB 422 echoed it back); NaN in a
    body gave a 500 while rendering the 422, and reset the next request on the connection."""
    port, r = redis_db
    seed(r)
    cfg = load_serving_config(None, {"redis.port": port, "gateway.max_body_bytes": 65536})
    with running_gateway(cfg) as base:
        url = f"{base}/v1/recommendations:batch"
        with httpx.Client(timeout=30) as http:  # one keep-alive connection for all of it
            huge = json.dumps({"requests": [{"user_id": "u1", "exclude_items": ["x" * 2_000_000]}]})
            big = http.post(url, content=huge, headers={"content-type": "application/json"})
            assert big.status_code == 413 and "gateway.max_body_bytes" in big.json()["error"]

            def chunks():  # no Content-Length: the limit holds for a streamed body too
                for _ in range(40):
                    yield b"x" * 4096
            assert http.post(url, content=chunks()).status_code == 413
            text = http.post(url, content=b"y" * 60_000, headers={"content-type": "text/plain"})
            assert text.status_code == 422 and len(text.content) < 2000 and b"yyyy" not in text.content
            for nan in ("NaN", "Infinity", "-Infinity"):
                bad = http.post(url, content=f'{{"requests": [{{"user_id": "u1", "k": {nan}}}]}}',
                                headers={"content-type": "application/json"})
                assert bad.status_code == 422 and bad.json()["errors"][0]["loc"][-1] == "k", bad.text
            ok = http.post(url, json={"requests": [{"user_id": "u1", "k": 2}]})  # the connection still serves
            assert ok.status_code == 200 and [i["item_id"] for i in ok.json()["responses"][0]["items"]] == ["i0", "i1"]


def test_graphql_limits_aliases_tokens_introspection_and_get(redis_db):
    """5,000 aliases at k = 100 ran 10.9 s, answered 22.6 MB and opened the
    breaker for everyone. Now such a query is refused before any lookup, and introspection and GET
    queries are off unless the config turns them on."""
    port, r = redis_db
    seed(r)
    cfg = load_serving_config(None, {"redis.port": port, "gateway.max_body_bytes": 1 << 20})
    with running_gateway(cfg) as base:
        url = f"{base}/graphql"
        with httpx.Client(timeout=30) as http:
            def ask(query: str) -> dict:
                return http.post(url, json={"query": query}).json()

            many = "{ " + " ".join(f'a{n}: recommendations(userId: "u{n}", k: 100) {{ userId }}' for n in range(5000)) + " }"
            refused = http.post(url, json={"query": many})
            assert len(refused.content) < 10_000 and "errors" in refused.json() and not refused.json().get("data")
            aliases = "{ " + " ".join(f'a{n}: recommendations(userId: "u1", k: 2) {{ userId }}' for n in range(21)) + " }"
            assert "aliases" in ask(aliases)["errors"][0]["message"].lower()
            page = ask("{ " + " ".join(f'a{n}: recommendations(userId: "u1", k: 2) {{ items {{ itemId }} }}' for n in range(20)) + " }")
            assert [i["itemId"] for i in page["data"]["a19"]["items"]] == ["i0", "i1"]  # a page of 20 slots is fine
            assert "introspection" in ask("{ __schema { types { name } } }")["errors"][0]["message"].lower()
            assert http.get(url, params={"query": '{ recommendations(userId: "u1") { userId } }'}).status_code in (400, 404, 405)
            # the refused queries cost nobody anything: another caller is answered from the list
            q = ask('{ recommendations(userId: "u1", k: 2) { items { itemId } fallbackReason } }')["data"]["recommendations"]
            assert q["fallbackReason"] == "" and [i["itemId"] for i in q["items"]] == ["i0", "i1"]


def test_gateway_with_a_token_keeps_probes_and_metrics_open(redis_db, monkeypatch):
    """with a token, /healthz answered 401 (so a Kubernetes probe failed) while /metrics
    and /docs were open. User data needs the token; probes, metrics and the API's description do not."""
    port, r = redis_db
    seed(r)
    monkeypatch.setenv("STREAMRANK_TEST_TOKEN", "s3cret")
    cfg = load_serving_config(None, {"redis.port": port, "auth_token_env": "STREAMRANK_TEST_TOKEN"})
    with running_gateway(cfg) as base:
        with httpx.Client(base_url=base, timeout=10) as http:
            assert http.get("/healthz").json() == {"status": "SERVING"}
            assert http.get("/metrics/").status_code == 200 and http.get("/openapi.json").status_code == 200
            private = [("GET", "/v1/recommendations/u1", None), ("GET", "/v1/users/u1/features", None),
                       ("POST", "/v1/recommendations:batch", {"requests": [{"user_id": "u1"}]}),
                       ("POST", "/graphql", {"query": '{ recommendations(userId: "u1") { userId } }'})]
            for method, path, body in private:
                assert http.request(method, path, json=body).status_code == 401, path
                authorized = http.request(method, path, json=body, headers={"authorization": "Bearer s3cret"})
                assert authorized.status_code == 200, path


def test_one_abusive_client_does_not_degrade_another(redis_db, tmp_path):
    """The outside probe, repeated: while one client sends every pattern that once hurt others
    (1 ms deadlines on both methods, text that is not UTF-8, oversized batches, 5,000-alias and
    twin-alias GraphQL queries, oversized, chunked, NaN and text/plain bodies), a second client
    asking the Go engine and the gateway (each its own process) gets its personalized list every
    time, and neither breaker opens."""
    port, r = redis_db
    seed(r)
    grpc_port, gateway_port, metrics_port = free_port(), free_port(), free_port()
    config = tmp_path / "serving.toml"
    config.write_text(f'engine = "go"\nport = {grpc_port}\nmetrics_port = {metrics_port}\n'
                      f'[redis]\nport = {port}\n[gateway]\nport = {gateway_port}\n')
    cfg = load_serving_config(config)
    gateway = subprocess.Popen([sys.executable, "-m", "cli", "gateway", "--config", str(config)], cwd=PROJECT_ROOT,
                               env=child_env(), stdout=subprocess.DEVNULL, stderr=open(tmp_path / "gateway.log", "w"))
    http_base, stop = f"http://127.0.0.1:{gateway_port}", threading.Event()
    try:
        with GoServer(cfg, metrics=True) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            assert wait_until(lambda: port_open(gateway_port), 30), (tmp_path / "gateway.log").read_text()
            stub = pb_grpc.RecommendationsStub(ch)
            raw = ch.unary_unary("/streamrank.v1.Recommendations/GetRecommendations")
            aliases = "{ " + " ".join(f'a{n}: recommendations(userId: "u{n}", k: 100) {{ userId }}' for n in range(5000)) + " }"
            twins = '{ a: userFeatures(userId: "u1") { found } b: userFeatures(userId: "u2") { found } }'

            def abuse(n: int) -> None:
                with httpx.Client(base_url=http_base, timeout=30) as http:
                    while not stop.is_set():
                        for call in (
                            lambda: stub.GetRecommendations(pb.GetRecommendationsRequest(user_id=f"x{n}"), timeout=0.001),
                            lambda: stub.GetUserFeatures(pb.GetUserFeaturesRequest(user_id="u1"), timeout=0.001),
                            lambda: raw(b"\x0a\x03u\xff1", timeout=5),
                            lambda: stub.BatchGetRecommendations(pb.BatchGetRecommendationsRequest(
                                requests=[pb.GetRecommendationsRequest(user_id="u1")] * 101), timeout=5),
                        ):
                            with contextlib.suppress(grpc.RpcError):
                                call()
                        http.post("/graphql", json={"query": aliases})
                        http.post("/graphql", json={"query": twins})
                        http.post("/v1/recommendations:batch", content=b'{"requests": [{"user_id": "' + b"x" * 2_000_000 + b'"}]}',
                                  headers={"content-type": "application/json"})
                        http.post("/v1/recommendations:batch", content=b'{"requests": [{"user_id": "u1", "k": NaN}]}',
                                  headers={"content-type": "application/json"})
                        http.post("/v1/recommendations:batch", content=b"y" * 60_000, headers={"content-type": "text/plain"})
                        http.get("/v1/recommendations/" + "z" * 65, params={"k": 10**9})

            with ThreadPoolExecutor(3) as pool:
                abusers = [pool.submit(abuse, n) for n in range(3)]
                answers = []
                with httpx.Client(base_url=http_base, timeout=30) as http:
                    for _ in range(40):
                        got = stub.GetRecommendations(pb.GetRecommendationsRequest(user_id="u1", k=2), timeout=5)
                        answers.append(("grpc", got.fallback_reason, [i.item_id for i in got.items]))
                        body = http.get("/v1/recommendations/u1", params={"k": 2}).json()
                        answers.append(("http", body["fallback_reason"], [i["item_id"] for i in body["items"]]))
                        time.sleep(0.05)
                    stop.set()
                    for a in abusers:
                        a.result()  # an abuser that raised means a call hung or a connection broke
                    breakers = [httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text, http.get("/metrics/").text]
            assert [a for a in answers if a[1:] != ("", ["i0", "i1"])] == []
            for text in breakers:
                assert re.search(r"^streamrank_serving_breaker_open 0(\.0)?$", text, re.M), text
    finally:
        stop.set()
        gateway.terminate()
        gateway.wait(20)
