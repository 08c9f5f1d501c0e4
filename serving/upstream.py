"""The gateway's lookups through lookupd (gateway.lookupd = "host:port"): each HTTP or GraphQL
call becomes one gRPC call to the lookup service, so the editorial rules, reasons, experiments and
exposure records are lookupd's own, and the gateway holds no Redis connection. The same interface
as serving.core.LookupService, which the gateway uses when gateway.lookupd is empty."""

from __future__ import annotations

import logging

import grpc
from opentelemetry import trace
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contract import keys
from contract.config import ConfigError
from contract.serving_config import ServingConfig
from serving import lookup
from serving.core import StoreUnavailable, check_request
from serving.server import SERVICE_NAME, bearer_token, pb, pb_grpc
from serving.tracing import inject


log = logging.getLogger(__name__)


class LookupdUnavailable(StoreUnavailable):
    """lookupd did not answer in time, or said it cannot now (a retry may succeed); the gateway answers 503."""

    def __init__(self, why: str) -> None:
        RuntimeError.__init__(self, f"lookup service unavailable ({why}); retry")


class LookupdFailed(RuntimeError):
    """lookupd refused the call for a reason a retry does not change (a token the two configs do not
    share, a gateway and lookupd of different versions, an internal error); the gateway answers 502
    with the code and the fix, and logs the details (they may name internal hosts)."""


# what a caller is told for a refusal a retry does not change (the details go to the gateway's log)
FIXES = {
    grpc.StatusCode.UNAUTHENTICATED: "the gateway and lookupd do not share a token; give both the same serving "
                                     "config's auth_token_env and its variable",
    grpc.StatusCode.PERMISSION_DENIED: "the gateway and lookupd do not share a token; give both the same serving "
                                       "config's auth_token_env and its variable",
    grpc.StatusCode.UNIMPLEMENTED: "the gateway and lookupd are of different versions; deploy them together",
}

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
             grpc.StatusCode.CANCELLED}


def _request(r: lookup.Request) -> pb.GetRecommendationsRequest:
    f = r.filters
    return pb.GetRecommendationsRequest(
        user_id=r.user_id, k=r.k, placement=r.placement,
        filters=pb.Filters(include_categories=sorted(f.include_categories),
                           exclude_categories=sorted(f.exclude_categories), exclude_items=sorted(f.exclude_items)))


def _recommendations(a) -> lookup.Recommendations:
    return lookup.Recommendations(
        a.user_id, [keys.ScoredItem(i.item_id, i.score, i.category, tuple(i.reasons)) for i in a.items],
        a.model_version, a.feature_ts_ms, a.list_age_ms, a.fallback, a.fallback_reason, a.placement, a.request_id,
        dict(a.experiments), list(a.segments), a.rules_version)


class UpstreamLookup:
    def __init__(self, cfg: ServingConfig, tracer: trace.Tracer | None = None) -> None:
        if cfg.tls is not None:
            raise ConfigError("gateway.lookupd asks lookupd in plaintext, but the serving config sets [tls]; "
                              "leave gateway.lookupd empty (the gateway then reads Redis itself)")
        self.cfg = cfg
        token = bearer_token(cfg)
        self.metadata = (("authorization", token.decode()),) if token else ()
        self.timeout_s = cfg.redis_timeout_s + 1.0  # lookupd's own Redis budget, and the hop
        self.tracer = tracer or trace.NoOpTracer()

    async def start(self) -> None:
        self.channel = grpc.aio.insecure_channel(self.cfg.gateway.lookupd)
        self.stub = pb_grpc.RecommendationsStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    def request(self, user_id: str, k: int = 0, include_categories=(), exclude_categories=(), exclude_items=(),
                placement: str = "") -> lookup.Request:
        return check_request(self.cfg, user_id, k, include_categories, exclude_categories, exclude_items, placement)

    async def _call(self, rpc: str, message, remaining_s: float | None):
        """lookupd's `rpc` (a method of the Recommendations service) in a CLIENT span, whose
        context goes with the call (lookupd continues the trace)."""
        timeout = self.timeout_s if remaining_s is None else min(self.timeout_s, remaining_s)
        with self.tracer.start_as_current_span(f"{SERVICE_NAME}/{rpc}", kind=trace.SpanKind.CLIENT, attributes={
                "rpc.system": "grpc", "rpc.service": SERVICE_NAME, "rpc.method": rpc}) as span:
            try:
                return await getattr(self.stub, rpc)(message, timeout=timeout, metadata=inject(self.metadata))
            except grpc.aio.AioRpcError as err:
                span.set_attribute("rpc.grpc.status_code", err.code().value[0])
                span.set_status(trace.Status(trace.StatusCode.ERROR, err.code().name))
                if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise lookup.InvalidRequest(err.details()) from None
                if err.code() in RETRYABLE:
                    raise LookupdUnavailable(f"{err.code().name}: {err.details()}") from None
                log.error("lookup service at %s answered %s: %s", self.cfg.gateway.lookupd, err.code().name,
                          err.details())
                raise LookupdFailed(f"the lookup service refused the call ({err.code().name}): "
                                    f"{FIXES.get(err.code(), 'see the gateway log')}") from None

    async def recommend(self, requests: list[lookup.Request], remaining_s: float | None = None,
                        interface: str = "http") -> list[lookup.Recommendations]:
        if len(requests) == 1:
            return [_recommendations(await self._call("GetRecommendations", _request(requests[0]),
                                                      remaining_s))]
        batch = pb.BatchGetRecommendationsRequest(requests=[_request(r) for r in requests])
        answer = await self._call("BatchGetRecommendations", batch, remaining_s)
        return [_recommendations(a) for a in answer.responses]

    async def user_features(self, user_id: str, remaining_s: float | None = None) -> lookup.UserFeatures:
        lookup.check_user(user_id)
        f = await self._call("GetUserFeatures", pb.GetUserFeaturesRequest(user_id=user_id), remaining_s)
        return lookup.UserFeatures(f.user_id, f.found, dict(f.features), list(f.top_categories), f.feature_ts_ms,
                                   f.window_end_ms, list(f.segments))

    async def ping(self) -> bool:
        try:
            answer = await self.health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=self.timeout_s)
        except grpc.aio.AioRpcError:
            return False
        return answer.status == health_pb2.HealthCheckResponse.SERVING
