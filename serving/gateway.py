"""HTTP/JSON and GraphQL gateway for CMSs that cannot speak gRPC: FastAPI (HTTP/JSON, OpenAPI docs
at /docs) and Strawberry (GraphQL at /graphql) over the same lookup core as the gRPC service, so
the answers are the same. The same bearer token is required when auth_token_env is set.

    GET  /v1/recommendations/{user_id}?k=10&exclude_items=i1&include_categories=shoes&placement=hero
    POST /v1/recommendations:batch   {"requests": [{"user_id": "u1", "k": 5}, ...]}
    GET  /v1/users/{user_id}/features
    POST /graphql                    {recommendations(userId: "u1", k: 5) {items {itemId score}}}
    GET  /healthz   GET /metrics
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import asdict
from functools import partial

import strawberry
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import make_asgi_app
from pydantic import BaseModel, ConfigDict
from strawberry.extensions import DisableIntrospection, MaxAliasesLimiter, MaxTokensLimiter, QueryDepthLimiter
from strawberry.fastapi import GraphQLRouter

from contract.serving_config import GraphQLConfig, ServingConfig
from serving import lookup
from serving.core import LookupService, Observed, StoreUnavailable
from serving.server import authorized, bearer_token

log = logging.getLogger(__name__)


class RecommendationQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str
    k: int = 0
    include_categories: list[str] = []
    exclude_categories: list[str] = []
    exclude_items: list[str] = []
    placement: str = ""


class BatchQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests: list[RecommendationQuery]  # the lookup core caps the batch (400, as gRPC's INVALID_ARGUMENT)


def recommendation_json(rec: lookup.Recommendations) -> dict:
    """The JSON form, with the proto's field names (as gRPC JSON transcoding would give)."""
    return {"user_id": rec.user_id, "items": [{**asdict(i), "reasons": list(i.reasons)} for i in rec.items],
            "model_version": rec.model_version, "feature_ts_ms": rec.feature_ts_ms, "list_age_ms": rec.list_age_ms,
            "fallback": rec.fallback, "fallback_reason": rec.fallback_reason, "placement": rec.placement,
            "request_id": rec.request_id, "experiments": rec.experiments, "segments": rec.segments,
            "rules_version": rec.rules_version}


# ---- GraphQL schema -------------------------------------------------------------------------

@strawberry.type
class ScoredItem:
    item_id: str
    score: float
    category: str
    reasons: list[str]


@strawberry.type
class ArmAssignment:
    experiment: str
    arm: str


@strawberry.type
class Recommendations:
    user_id: str
    items: list[ScoredItem]
    model_version: str
    feature_ts_ms: float  # GraphQL Int is 32-bit: epoch milliseconds do not fit
    list_age_ms: float
    fallback: bool
    fallback_reason: str
    placement: str
    request_id: str
    experiments: list[ArmAssignment]  # GraphQL has no map type
    segments: list[str]
    rules_version: str

    @staticmethod
    def of(rec: lookup.Recommendations) -> Recommendations:
        return Recommendations(
            user_id=rec.user_id, items=[ScoredItem(item_id=i.item_id, score=i.score, category=i.category,
                                                   reasons=list(i.reasons)) for i in rec.items],
            model_version=rec.model_version, feature_ts_ms=rec.feature_ts_ms, list_age_ms=rec.list_age_ms,
            fallback=rec.fallback, fallback_reason=rec.fallback_reason, placement=rec.placement,
            request_id=rec.request_id,
            experiments=[ArmAssignment(experiment=e, arm=a) for e, a in rec.experiments.items()],
            segments=rec.segments, rules_version=rec.rules_version)


@strawberry.type
class Feature:
    name: str
    value: float


@strawberry.type
class UserFeatures:
    user_id: str
    found: bool
    features: list[Feature]
    top_categories: list[str]
    feature_ts_ms: float
    window_end_ms: float
    segments: list[str]


@strawberry.input
class Filters:
    include_categories: list[str] = strawberry.field(default_factory=list)
    exclude_categories: list[str] = strawberry.field(default_factory=list)
    exclude_items: list[str] = strawberry.field(default_factory=list)


def _service(info) -> LookupService:
    return info.context["request"].app.state.service


@strawberry.type
class GraphQuery:
    @strawberry.field(description="A user's ranked list (or the popular fallback), filtered and cut to k.")
    async def recommendations(self, info: strawberry.Info, user_id: str, k: int = 0,
                              filters: Filters | None = None, placement: str = "") -> Recommendations:
        with Observed("graphql", "recommendations"):
            service, f = _service(info), filters or Filters()
            req = service.request(user_id, k, f.include_categories, f.exclude_categories, f.exclude_items, placement)
            (rec,) = await service.recommend([req], interface="graphql")
            return Recommendations.of(rec)

    @strawberry.field(description="The features the user's list was computed from.")
    async def user_features(self, info: strawberry.Info, user_id: str) -> UserFeatures:
        with Observed("graphql", "user_features"):
            f = await _service(info).user_features(user_id)
            return UserFeatures(user_id=f.user_id, found=f.found,
                                features=[Feature(name=k, value=v) for k, v in f.features.items()],
                                top_categories=f.top_categories, feature_ts_ms=f.feature_ts_ms,
                                window_end_ms=f.window_end_ms, segments=f.segments)


def graphql_schema(limits: GraphQLConfig) -> strawberry.Schema:
    """The schema with the gateway's limits: a query over them is refused before any lookup runs."""
    # factories, not instances: strawberry then builds each extension afresh for every request, so
    # no state is shared between concurrent queries (strawberry-graphql/strawberry#4369)
    extensions = [partial(MaxTokensLimiter, limits.max_tokens), partial(MaxAliasesLimiter, limits.max_aliases),
                  partial(QueryDepthLimiter, limits.max_depth)]
    if not limits.introspection:
        extensions.append(DisableIntrospection)
    return strawberry.Schema(query=GraphQuery, extensions=extensions)


# ---- the app ------------------------------------------------------------------------------

class BodyLimit:
    """ASGI middleware: a request body over max_bytes gets 413 before the app sees any of it. The
    body is read here, at most max_bytes of it held, whether its length is declared or chunked."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(scope, receive, send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                return await self._too_large(scope, receive, send)
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send) -> None:
        await JSONResponse({"code": "INVALID_ARGUMENT", "error": f"request body over {self.max_bytes} bytes "
                            "(gateway.max_body_bytes); send a smaller batch"}, status_code=413)(scope, receive, send)


def validation_errors(err: RequestValidationError) -> list[dict]:
    """Where a request breaks its schema and why, without the offending input: an answer never
    echoes the body (it may be megabytes, or hold NaN, which JSON cannot carry)."""
    return [{"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in err.errors()[:20]]


def create_app(cfg: ServingConfig) -> FastAPI:
    expected = bearer_token(cfg)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.service = LookupService(cfg)
        await app.state.service.start()
        log.info("gateway on http://%s:%d (redis %s:%d)", cfg.gateway.host, cfg.gateway.port,
                 cfg.redis.host, cfg.redis.port)
        yield
        await app.state.service.close()

    async def require_token(request: Request) -> None:
        if not authorized(request.headers.get("authorization"), expected):
            raise HTTPException(401, "send header 'Authorization: Bearer <token>'")

    # With a token set, everything that answers about users needs it (/v1/*, /graphql); probes and
    # scrapers cannot send one and learn nothing about users, so /healthz and /metrics stay open,
    # as do the API's description (/docs, /openapi.json).
    app = FastAPI(title="streamrank lookup gateway", lifespan=lifespan)
    private = [Depends(require_token)]

    @app.exception_handler(lookup.InvalidRequest)
    async def invalid(request: Request, err: lookup.InvalidRequest):
        return JSONResponse({"code": "INVALID_ARGUMENT", "error": str(err)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def unprocessable(request: Request, err: RequestValidationError):
        return JSONResponse({"code": "INVALID_ARGUMENT", "error": "the request does not match its schema (/docs)",
                             "errors": validation_errors(err)}, status_code=422)

    @app.exception_handler(StoreUnavailable)
    async def unavailable(request: Request, err: StoreUnavailable):
        return JSONResponse({"code": "UNAVAILABLE", "error": str(err)}, status_code=503)

    def check(service: LookupService, q: RecommendationQuery) -> lookup.Request:
        return service.request(q.user_id, q.k, q.include_categories, q.exclude_categories, q.exclude_items,
                               q.placement)

    @app.get("/v1/recommendations/{user_id}", dependencies=private)
    async def recommendations(request: Request, user_id: str, k: int = 0,
                              include_categories: list[str] = Query([]), exclude_categories: list[str] = Query([]),
                              exclude_items: list[str] = Query([]), placement: str = "") -> dict:
        with Observed("http", "GetRecommendations"):
            service = request.app.state.service
            req = service.request(user_id, k, include_categories, exclude_categories, exclude_items, placement)
            (rec,) = await service.recommend([req], interface="http")
            return recommendation_json(rec)

    @app.post("/v1/recommendations:batch", dependencies=private)
    async def batch(request: Request, body: BatchQuery) -> dict:
        with Observed("http", "BatchGetRecommendations"):
            service = request.app.state.service
            answers = await service.recommend([check(service, q) for q in body.requests], interface="http")
            return {"responses": [recommendation_json(a) for a in answers]}

    @app.get("/v1/users/{user_id}/features", dependencies=private)
    async def features(request: Request, user_id: str) -> dict:
        with Observed("http", "GetUserFeatures"):
            return asdict(await request.app.state.service.user_features(user_id))

    @app.get("/healthz")
    async def healthz(request: Request):
        ok = await request.app.state.service.ping()
        return JSONResponse({"status": "SERVING" if ok else "NOT_SERVING"}, status_code=200 if ok else 503)

    limits = cfg.gateway.graphql
    app.include_router(GraphQLRouter(graphql_schema(limits), context_getter=None, allow_queries_via_get=limits.allow_get,
                                     graphql_ide="graphiql" if limits.introspection else None, dependencies=private),
                       prefix="/graphql")
    app.mount("/metrics", make_asgi_app())
    app.add_middleware(BodyLimit, max_bytes=cfg.gateway.max_body_bytes)
    return app


def run_gateway(cfg: ServingConfig) -> None:
    """Serves until SIGTERM/SIGINT (uvicorn finishes in-flight requests first)."""
    uvicorn.run(create_app(cfg), host=cfg.gateway.host, port=cfg.gateway.port, log_config=None,
                timeout_graceful_shutdown=cfg.grace_s)
