"""gRPC server (grpc.aio): a thin servicer over serving.core, with grpc.health.v1 following Redis,
bearer-token authentication, TLS/mTLS from config, opt-in reflection, Prometheus metrics and a
graceful drain on SIGTERM. Errors leave as status codes from one place."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import signal
import threading
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from google.protobuf.message import DecodeError
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from contract.config import ConfigError
from contract.serving_config import ServingConfig
from serving import lookup
from serving.core import LookupService, Observed, StoreUnavailable, status_of
from serving.stubs import load

log = logging.getLogger(__name__)
pb, pb_grpc = load()
SERVICE_NAME = "streamrank.v1.Recommendations"


def _response(rec: lookup.Recommendations):
    return pb.GetRecommendationsResponse(
        user_id=rec.user_id,
        items=[pb.ScoredItem(item_id=i.item_id, score=i.score, category=i.category, reasons=i.reasons)
               for i in rec.items],
        model_version=rec.model_version, feature_ts_ms=rec.feature_ts_ms, list_age_ms=rec.list_age_ms,
        fallback=rec.fallback, fallback_reason=rec.fallback_reason, placement=rec.placement,
        request_id=rec.request_id, experiments=rec.experiments, segments=rec.segments,
        rules_version=rec.rules_version,
    )


class Undecodable:
    """A request protobuf could not decode: a string field that is not UTF-8 (which Python's str
    cannot hold), or bytes that are not the message. grpc answers a deserializer's exception with
    INTERNAL, which reads as a server fault and which clients retry; the servicer answers this with
    INVALID_ARGUMENT instead (as lookupd does)."""
    def __init__(self, message_type) -> None:
        self.why = lookup.UNDECODABLE_RULE.replace("{message}", message_type.DESCRIPTOR.name)


def _decoder(message_type):
    def decode(data: bytes):
        try:
            return message_type.FromString(data)
        except (DecodeError, UnicodeDecodeError):  # the pure-Python protobuf raises the latter for bad UTF-8
            return Undecodable(message_type)
    return decode


class RecommendationsServicer(pb_grpc.RecommendationsServicer):
    def __init__(self, service: LookupService) -> None:
        self.service = service

    def _request(self, r) -> lookup.Request:
        f = r.filters
        return self.service.request(r.user_id, r.k, f.include_categories, f.exclude_categories, f.exclude_items,
                                    r.placement)

    async def _answer(self, context, method: str, request, work):
        """Runs one call under its metrics; the one mapping from failures to status codes."""
        try:
            with Observed("grpc", method):
                if isinstance(request, Undecodable):
                    raise lookup.InvalidRequest(request.why)
                return await work()
        except (lookup.InvalidRequest, StoreUnavailable) as e:
            await context.abort(grpc.StatusCode[status_of(e)], str(e))

    async def GetRecommendations(self, request, context):  # noqa: N802 (gRPC method name)
        async def work():
            (rec,) = await self.service.recommend([self._request(request)], context.time_remaining())
            return _response(rec)

        return await self._answer(context, "GetRecommendations", request, work)

    async def BatchGetRecommendations(self, request, context):  # noqa: N802
        async def work():
            answers = await self.service.recommend([self._request(r) for r in request.requests],
                                                   context.time_remaining())
            return pb.BatchGetRecommendationsResponse(responses=[_response(a) for a in answers])

        return await self._answer(context, "BatchGetRecommendations", request, work)

    async def GetUserFeatures(self, request, context):  # noqa: N802
        async def work():
            f = await self.service.user_features(request.user_id, context.time_remaining())
            return pb.GetUserFeaturesResponse(
                user_id=f.user_id, found=f.found, features=f.features, top_categories=f.top_categories,
                feature_ts_ms=f.feature_ts_ms, window_end_ms=f.window_end_ms, segments=f.segments)

        return await self._answer(context, "GetUserFeatures", request, work)

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's methods, as the generated add_RecommendationsServicer_to_server registers
        them, but with requests decoded by _decoder."""
        methods = {"GetRecommendations": (pb.GetRecommendationsRequest, pb.GetRecommendationsResponse),
                   "BatchGetRecommendations": (pb.BatchGetRecommendationsRequest, pb.BatchGetRecommendationsResponse),
                   "GetUserFeatures": (pb.GetUserFeaturesRequest, pb.GetUserFeaturesResponse)}
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {
            name: grpc.unary_unary_rpc_method_handler(getattr(self, name), request_deserializer=_decoder(req),
                                                      response_serializer=resp.SerializeToString)
            for name, (req, resp) in methods.items()})


def bearer_token(cfg: ServingConfig) -> bytes | None:
    """`Bearer <token>` callers must send, from the variable auth_token_env names (None: no auth)."""
    if not cfg.auth_token_env:
        return None
    token = os.environ.get(cfg.auth_token_env)
    if not token:
        raise ConfigError(f"auth_token_env names {cfg.auth_token_env}, which is not set; export it or unset auth_token_env")
    return f"Bearer {token}".encode()


def authorized(sent: str | None, expected: bytes | None) -> bool:
    """Constant-time check of an `authorization` value."""
    return expected is None or hmac.compare_digest((sent or "").encode(), expected)


class TokenAuth(grpc.aio.ServerInterceptor):
    """Requires `authorization: Bearer <token>` on every call but health checks; constant-time
    compare; UNAUTHENTICATED otherwise."""
    def __init__(self, expected: bytes) -> None:
        self.expected = expected

        async def deny(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "send metadata 'authorization: Bearer <token>'")

        self.denied = grpc.unary_unary_rpc_method_handler(deny)

    async def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith("/grpc.health.v1."):
            return await continuation(handler_call_details)
        sent = dict(handler_call_details.invocation_metadata or ()).get("authorization")
        if authorized(sent, self.expected):
            return await continuation(handler_call_details)
        return self.denied


async def follow_redis_health(servicer, service: LookupService, interval_s: float) -> None:
    """Keeps grpc.health.v1 status in step with Redis reachability."""
    last = None
    while True:
        ok = await service.ping()
        status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
        if status != last:
            log.info("health: %s", "SERVING" if ok else "NOT_SERVING (redis unreachable)")
            for name in ("", SERVICE_NAME):
                await servicer.set(name, status)
            last = status
        await asyncio.sleep(interval_s)


def server_credentials(cfg: ServingConfig) -> grpc.ServerCredentials | None:
    if cfg.tls is None:
        return None
    key, cert = Path(cfg.tls.key_file).read_bytes(), Path(cfg.tls.cert_file).read_bytes()
    ca = Path(cfg.tls.client_ca_file).read_bytes() if cfg.tls.client_ca_file else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


class Running:
    """A started server: its port, and how to stop it (drain for grace_s)."""
    def __init__(self, server: grpc.aio.Server, port: int, service: LookupService, tasks: list[asyncio.Task]) -> None:
        self.server, self.port, self.service, self.tasks = server, port, service, tasks

    async def stop(self, grace_s: float | None) -> None:
        await self.server.stop(grace_s)
        for t in self.tasks:
            t.cancel()
        await self.service.close()


async def start(cfg: ServingConfig, port: int | None = None) -> Running:
    """Builds and starts the server on the running loop; port 0 binds a free one."""
    expected = bearer_token(cfg)
    service = LookupService(cfg)
    await service.start()
    server = grpc.aio.server(interceptors=[TokenAuth(expected)] if expected else None)
    server.add_generic_rpc_handlers((RecommendationsServicer(service).handler(),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if cfg.reflection:
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{cfg.host}:{cfg.port if port is None else port}"
    creds = server_credentials(cfg)
    bound = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    await server.start()
    tasks = [asyncio.create_task(follow_redis_health(health_servicer, service, cfg.health_interval_s))]
    log.info("serving %s on %s:%d (%s; redis %s:%d)", SERVICE_NAME, cfg.host, bound,
             "mTLS" if cfg.tls and cfg.tls.client_ca_file else "TLS" if cfg.tls else "plaintext",
             cfg.redis.host, cfg.redis.port)
    return Running(server, bound, service, tasks)


def start_metrics(cfg: ServingConfig) -> int | None:
    """Prometheus /metrics on metrics_host:metrics_port (None: off); returns the bound port."""
    if cfg.metrics_port is None:
        return None

    httpd, _ = start_http_server(cfg.metrics_port, addr=cfg.metrics_host)
    port = httpd.server_port
    log.info("metrics on http://%s:%d/metrics", cfg.metrics_host, port)
    return port


def serve(cfg: ServingConfig, port: int | None = None) -> None:
    """Runs until SIGTERM/SIGINT, then stops taking calls and drains in-flight ones for grace_s."""
    async def main() -> None:
        running = await start(cfg, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("draining in-flight calls (grace %.1fs)", cfg.grace_s)
        await running.stop(cfg.grace_s)
        log.info("stopped")

    start_metrics(cfg)
    asyncio.run(main())


class ServerThread:
    """The server on its own event loop in a background thread (tests, the demo, benches):
    `with ServerThread(cfg) as s: ... s.port`."""
    def __init__(self, cfg: ServingConfig, port: int = 0) -> None:
        self.cfg, self.loop = cfg, asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="grpc-server", daemon=True)
        self.thread.start()
        self.running: Running = asyncio.run_coroutine_threadsafe(start(cfg, port), self.loop).result(30)
        self.port = self.running.port

    def stop(self, grace_s: float | None = 0) -> None:
        asyncio.run_coroutine_threadsafe(self.running.stop(grace_s), self.loop).result(30 + (grace_s or 0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc) -> None:
        self.stop(0)
