"""gRPC server: a thin servicer over serving.lookup, with grpc.health.v1 following Redis,
bearer-token authentication and opt-in reflection. Errors leave as status codes from one place."""

from __future__ import annotations

import hmac
import logging
import os
import signal
import threading
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path

import grpc
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from contract.config import ConfigError, ServingConfig, load_config
from deploy.paths import PROJECT_ROOT
from serving import lookup
from serving.stubs import load

log = logging.getLogger(__name__)
pb, pb_grpc = load()
SERVICE_NAME = "streamrank.v1.Recommendations"


@contextmanager
def status_codes(context):
    """The one mapping from failures to gRPC status codes."""
    try:
        yield
    except lookup.InvalidRequest as e:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    except redis.RedisError as e:
        log.warning("redis error: %s", e)
        context.abort(grpc.StatusCode.UNAVAILABLE, "recommendation store unavailable; retry")


def _filters(msg) -> lookup.Filters:
    return lookup.Filters(frozenset(msg.include_categories), frozenset(msg.exclude_categories),
                          frozenset(msg.exclude_items))


def _response(rec: lookup.Recommendations):
    return pb.GetRecommendationsResponse(
        user_id=rec.user_id,
        items=[pb.ScoredItem(item_id=i.item_id, score=i.score, category=i.category) for i in rec.items],
        model_version=rec.model_version, feature_ts_ms=rec.feature_ts_ms, list_age_ms=rec.list_age_ms,
        fallback=rec.fallback, fallback_reason=rec.fallback_reason, placement=rec.placement,
    )


class RecommendationsServicer(pb_grpc.RecommendationsServicer):
    def __init__(self, cfg: ServingConfig, client: redis.Redis) -> None:
        self.cfg = cfg
        self.redis = client
        path = Path(cfg.job_config)
        path = path if path.is_absolute() else PROJECT_ROOT / path
        try:
            self.features_cfg = load_config(path).features
        except ConfigError:
            log.warning("job config %s not loadable; GetUserFeatures uses default windows", path)
            self.features_cfg = load_config(None).features

    def _request(self, r) -> lookup.Request:
        return lookup.check_request(r.user_id, r.k, self.cfg.default_k, self.cfg.max_k, _filters(r.filters), r.placement)

    def GetRecommendations(self, request, context):  # noqa: N802 (gRPC method name)
        with status_codes(context):
            return _response(lookup.get_many(self.redis, [self._request(request)])[0])

    def BatchGetRecommendations(self, request, context):  # noqa: N802
        with status_codes(context):
            if len(request.requests) > lookup.MAX_BATCH:
                raise lookup.InvalidRequest(f"a batch takes at most {lookup.MAX_BATCH} requests")
            answers = lookup.get_many(self.redis, [self._request(r) for r in request.requests])
            return pb.BatchGetRecommendationsResponse(responses=[_response(a) for a in answers])

    def GetUserFeatures(self, request, context):  # noqa: N802
        with status_codes(context):
            f = lookup.get_user_features(self.redis, request.user_id, self.features_cfg)
            return pb.GetUserFeaturesResponse(
                user_id=f.user_id, found=f.found, features=f.features, top_categories=f.top_categories,
                feature_ts_ms=f.feature_ts_ms, window_end_ms=f.window_end_ms)


class TokenAuth(grpc.ServerInterceptor):
    """Requires `authorization: Bearer <token>` on every call but health checks; constant-time
    compare; UNAUTHENTICATED otherwise."""

    def __init__(self, token: str) -> None:
        self.expected = f"Bearer {token}".encode()

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "send metadata 'authorization: Bearer <token>'")

        self.denied = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith("/grpc.health.v1."):
            return continuation(handler_call_details)
        sent = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(sent.encode(), self.expected):
            return continuation(handler_call_details)
        return self.denied


class HealthMonitor(threading.Thread):
    """Keeps grpc.health.v1 status in step with Redis reachability."""

    def __init__(self, servicer: health.HealthServicer, client: redis.Redis, interval_s: float) -> None:
        super().__init__(name="redis-health", daemon=True)
        self.servicer, self.client, self.interval_s = servicer, client, interval_s
        self.stopped = threading.Event()

    def run(self) -> None:
        last = None
        while not self.stopped.is_set():
            try:
                ok = bool(self.client.ping())
            except redis.RedisError:
                ok = False
            status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
            if status != last:
                log.info("health: %s", "SERVING" if ok else "NOT_SERVING (redis unreachable)")
                for name in ("", SERVICE_NAME):
                    self.servicer.set(name, status)
                last = status
            self.stopped.wait(self.interval_s)


def create_server(cfg: ServingConfig, port: int | None = None) -> tuple[grpc.Server, int]:
    """Build (not start) the server; port 0 binds a free port, returned."""
    # no client-side retries: a dead Redis answers UNAVAILABLE within redis_timeout_s, and the
    # caller (with its deadline) decides whether to retry
    client = redis.Redis(host=cfg.redis.host, port=cfg.redis.port, socket_timeout=cfg.redis_timeout_s,
                         socket_connect_timeout=cfg.redis_timeout_s, retry=Retry(NoBackoff(), 0))
    interceptors = []
    if cfg.auth_token_env:
        token = os.environ.get(cfg.auth_token_env)
        if not token:
            raise ConfigError(f"auth_token_env names {cfg.auth_token_env}, which is not set; export it or unset auth_token_env")
        interceptors.append(TokenAuth(token))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=cfg.workers), interceptors=interceptors)
    pb_grpc.add_RecommendationsServicer_to_server(RecommendationsServicer(cfg, client), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    monitor = HealthMonitor(health_servicer, client, cfg.health_interval_s)
    monitor.start()
    server.health_monitor = monitor  # type: ignore[attr-defined]  (stopped with the server)
    if cfg.reflection:
        from grpc_reflection.v1alpha import reflection

        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    bound = server.add_insecure_port(f"{cfg.host}:{cfg.port if port is None else port}")
    return server, bound


def serve(cfg: ServingConfig) -> None:
    server, port = create_server(cfg)
    server.start()
    log.info("serving %s on %s:%d (redis %s:%d)", SERVICE_NAME, cfg.host, port, cfg.redis.host, cfg.redis.port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("draining in-flight calls (grace %.0fs)", cfg.grace_s)
    server.stop(cfg.grace_s).wait()
    server.health_monitor.stopped.set()


def lookup_once(target: str, user_id: str, k: int, timeout_s: float = 5.0, token: str | None = None):
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RecommendationsStub(channel)
        metadata = [("authorization", f"Bearer {token}")] if token else None
        return stub.GetRecommendations(pb.GetRecommendationsRequest(user_id=user_id, k=k), timeout=timeout_s,
                                       metadata=metadata)
