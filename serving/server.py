"""gRPC server: a thin servicer over serving.lookup, with grpc.health.v1 and opt-in reflection."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures

import grpc
import redis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from contract.config import ServingConfig
from serving import lookup
from serving.stubs import load

log = logging.getLogger(__name__)
pb, pb_grpc = load()
SERVICE_NAME = "streamrank.v1.Recommendations"


class RecommendationsServicer(pb_grpc.RecommendationsServicer):
    def __init__(self, cfg: ServingConfig, client: redis.Redis) -> None:
        self.cfg = cfg
        self.redis = client

    def GetRecommendations(self, request, context):  # noqa: N802 (gRPC method name)
        try:
            k = lookup.check_request(request.user_id, request.k, self.cfg.default_k, self.cfg.max_k)
            rec = lookup.get_recommendations(self.redis, request.user_id, k)
        except lookup.InvalidRequest as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except redis.RedisError as e:
            log.warning("redis error: %s", e)
            context.abort(grpc.StatusCode.UNAVAILABLE, "recommendation store unavailable; retry")
        return pb.GetRecommendationsResponse(
            user_id=rec.user_id,
            items=[pb.ScoredItem(item_id=i.item_id, score=i.score) for i in rec.items],
            model_version=rec.model_version, feature_ts_ms=rec.feature_ts_ms,
            list_age_ms=rec.list_age_ms, fallback=rec.fallback, fallback_reason=rec.fallback_reason,
        )


def create_server(cfg: ServingConfig, port: int | None = None) -> tuple[grpc.Server, int]:
    """Build (not start) the server; port 0 binds a free port, returned."""
    client = redis.Redis(host=cfg.redis.host, port=cfg.redis.port, socket_timeout=cfg.redis_timeout_s)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=cfg.workers))
    pb_grpc.add_RecommendationsServicer_to_server(RecommendationsServicer(cfg, client), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
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


def lookup_once(target: str, user_id: str, k: int, timeout_s: float = 5.0):
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RecommendationsStub(channel)
        return stub.GetRecommendations(pb.GetRecommendationsRequest(user_id=user_id, k=k), timeout=timeout_s)
