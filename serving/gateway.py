"""HTTP/JSON and GraphQL gateway for CMSs that cannot speak gRPC: FastAPI (HTTP/JSON, OpenAPI docs
at /docs) and Strawberry (GraphQL at /graphql) over the same lookup core as the gRPC service, so
the answers are the same. The same bearer token is required when auth_token_env is set.

    GET  /v1/recommendations/{user_id}?k=10&exclude_items=i1&include_categories=shoes&placement=hero
    POST /v1/recommendations:batch   {"requests": [{"user_id": "u1", "k": 5}, ...]}
    GET  /v1/page/{user_id}?p=hero:4&p=rail:10    several placements in one call (the web SDK's)
    GET  /v1/users/{user_id}/features
    POST /v1/beacon                  {"events": [{"type": "click", "user_id": .., "item_id": .., "request_id": ..}]}
    POST /graphql                    {recommendations(userId: "u1", k: 5) {items {itemId score reasons}}}
                                     {page(userId: "u1", placements: [{name: "hero", k: 4}]) {segments ...}}
    GET  /demo   GET /sdk/streamrank.js   GET /healthz   GET /metrics

GET answers carry an ETag (a digest of the answer less its request_id and age) and Cache-Control
(private, max-age: a tenth of the list's age up to gateway.cache_max_age_s); If-None-Match with the
same ETag gets 304. The request ids of the call are in X-Request-Id either way: a page that reuses a
cached body sends clicks with the new id, which the exposure log holds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import asdict
from functools import partial
from typing import Literal

import strawberry
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from prometheus_client import make_asgi_app
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from strawberry.extensions import DisableIntrospection, MaxAliasesLimiter, MaxTokensLimiter, QueryDepthLimiter
from strawberry.fastapi import GraphQLRouter

from contract.paths import PROJECT_ROOT
from contract.config import ConfigError
from contract.serving_config import ExposuresConfig, GatewayConfig, GraphQLConfig, ServingConfig
from serving import lookup
from serving.core import LookupService, Observed, StoreUnavailable
from serving.exposures import ExposureLog
from serving.tracing import TraceRequests, Tracing
from serving.upstream import LookupdFailed, UpstreamLookup
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


WEB = PROJECT_ROOT / "serving" / "web"
VOLATILE = ("request_id", "list_age_ms")  # left out of the ETag: they change on every call
PLACEMENT_RULE = "p takes name:k or name (k 0: the default), e.g. p=hero:4&p=rail:10"


def etag_of(body: dict) -> str:
    def stable(x):
        if isinstance(x, dict):
            return {k: stable(v) for k, v in x.items() if k not in VOLATILE}
        return [stable(v) for v in x] if isinstance(x, list) else x
    return 'W/"' + hashlib.sha256(json.dumps(stable(body), sort_keys=True).encode()).hexdigest()[:32] + '"'


def fresh_for_s(cfg: GatewayConfig, age_ms: int) -> int:
    """How long a browser may reuse what was computed age_ms ago: a tenth of that age (an old
    list is unlikely to change in the next tenth of its life), up to cache_max_age_s."""
    return min(cfg.cache_max_age_s, max(age_ms, 0) // 10_000)


def max_age_s(cfg: GatewayConfig, answers: list[lookup.Recommendations]) -> int:
    """How long a browser may reuse these answers: the least any of them allows, popular lists
    fallback_max_age_s."""
    return min((cfg.fallback_max_age_s if a.fallback else fresh_for_s(cfg, a.list_age_ms) for a in answers),
               default=0)


def cached(request: Request, body: dict, max_age: int, request_ids: list[str]) -> Response:
    """The answer with its ETag and Cache-Control, or 304 when the caller holds it already."""
    tag = etag_of(body)
    headers = {"ETag": tag, "Cache-Control": f"private, max-age={max_age}", "Vary": "Authorization",
               "X-Request-Id": ",".join(request_ids)}
    held = [t.strip() for t in request.headers.get("if-none-match", "").split(",")]
    if tag in held:
        return Response(status_code=304, headers=headers)
    return JSONResponse(body, headers=headers)


def placements_of(ps: list[str], limit: int) -> list[tuple[str, int]]:
    if not ps:
        raise lookup.InvalidRequest(f"name at least one placement: {PLACEMENT_RULE}")
    if len(ps) > limit:
        raise lookup.InvalidRequest(f"a page takes at most {limit} placements")
    out = []
    for p in ps:
        name, _, k = p.partition(":")
        if not name or (k and not k.isdigit()):
            raise lookup.InvalidRequest(f"{p!r}: {PLACEMENT_RULE}")
        out.append((name, int(k or 0)))
    return out


class BeaconEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["click", "exposure"]
    user_id: str
    request_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    item_id: str | None = Field(None, min_length=1, max_length=256)
    category: str | None = Field(None, max_length=256)
    placement: str = Field("", max_length=lookup.MAX_PLACEMENT)
    items: list[str] = Field([], max_length=500)


class BeaconBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[BeaconEvent] = Field(min_length=1, max_length=100)


def beacon_records(body: BeaconBody, now_ms: int) -> list[tuple[str, dict]]:
    """(topic kind, record) per event: a click is an interaction event (contract.schema) with the
    answer's request_id; an exposure is the page's word that it rendered the answer."""
    out = []
    for e in body.events:
        lookup.check_user(e.user_id)
        if e.type == "click":
            if not e.item_id:
                raise lookup.InvalidRequest("a click needs item_id")
            out.append(("click", {"event_id": uuid.uuid4().hex, "user_id": e.user_id, "item_id": e.item_id,
                                  "type": "click", "ts": now_ms, "request_id": e.request_id,
                                  **({"category": e.category} if e.category else {})}))
        else:
            out.append(("exposure", {"request_id": e.request_id, "user_id": e.user_id, "placement": e.placement,
                                     "items": e.items, "rendered_at_ms": now_ms}))
    return out


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


@strawberry.input
class PlacementInput:
    name: str
    k: int = 0
    filters: Filters | None = None


@strawberry.type
class Page:
    user_id: str
    segments: list[str]
    placements: list[Recommendations]


def _service(info) -> LookupService:
    return info.context["request"].app.state.service


def _charge(info, items: int) -> None:
    """Adds a lookup's items to the query's cost; over gateway.graphql.max_cost, the query fails
    before it reads anything more (a page's slots as aliases add up too)."""
    request = info.context["request"]
    limit = request.app.state.limits.max_cost
    spent = getattr(request.state, "graphql_cost", 0) + items
    request.state.graphql_cost = spent
    if spent > limit:
        raise lookup.InvalidRequest(f"the query asks for {spent} items, over gateway.graphql.max_cost = {limit}; "
                                    "ask for fewer placements or a smaller k")


@strawberry.type
class GraphQuery:
    @strawberry.field(description="A user's ranked list (or the popular fallback), filtered and cut to k.")
    async def recommendations(self, info: strawberry.Info, user_id: str, k: int = 0,
                              filters: Filters | None = None, placement: str = "") -> Recommendations:
        with Observed("graphql", "recommendations"):
            service, f = _service(info), filters or Filters()
            req = service.request(user_id, k, f.include_categories, f.exclude_categories, f.exclude_items, placement)
            _charge(info, req.k)
            (rec,) = await service.recommend([req], interface="graphql")
            return Recommendations.of(rec)

    @strawberry.field(description="Several placements of one page in one lookup, each with its own k and "
                                  "filters, with the user's segments.")
    async def page(self, info: strawberry.Info, user_id: str, placements: list[PlacementInput]) -> Page:
        with Observed("graphql", "page"):
            service, limits = _service(info), info.context["request"].app.state.limits
            if len(placements) > limits.max_placements:
                raise lookup.InvalidRequest(f"a page takes at most {limits.max_placements} placements "
                                            "(gateway.graphql.max_placements)")
            reqs = []
            for p in placements:
                f = p.filters or Filters()
                reqs.append(service.request(user_id, p.k, f.include_categories, f.exclude_categories,
                                            f.exclude_items, p.name))
            _charge(info, sum(r.k for r in reqs))
            answers = await service.recommend(reqs, interface="graphql") if reqs else []
            return Page(user_id=user_id, segments=answers[0].segments if answers else [],
                        placements=[Recommendations.of(a) for a in answers])

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


def validation_errors(err: RequestValidationError | ValidationError) -> list[dict]:
    """Where a request breaks its schema and why, without the offending input: an answer never
    echoes the body (it may be megabytes, or hold NaN, which JSON cannot carry)."""
    return [{"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in err.errors()[:20]]


def create_app(cfg: ServingConfig) -> FastAPI:
    if cfg.redis.cluster is not None and not cfg.gateway.lookupd:
        # the gateway's own Redis reads (the Python lookup core) are for one Redis
        raise ConfigError("[redis.cluster] needs gateway.lookupd = \"host:port\" of lookupd, the cluster client: "
                          "start `streamrank serve` (engine go) and point the gateway at it")
    expected = bearer_token(cfg)

    tracing = Tracing(cfg.tracing, "streamrank-gateway")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.service = UpstreamLookup(cfg, tracing.tracer) if cfg.gateway.lookupd else LookupService(cfg)
        await app.state.service.start()
        app.state.beacons = beacon_logs(cfg.gateway) if cfg.gateway.beacons.enabled else None
        log.info("gateway on http://%s:%d (%s)", cfg.gateway.host, cfg.gateway.port,
                 f"lookupd {cfg.gateway.lookupd}" if cfg.gateway.lookupd else f"redis {cfg.redis.host}:{cfg.redis.port}")
        yield
        await app.state.service.close()
        for log_ in (app.state.beacons or {}).values():
            log_.close()
        tracing.shutdown()

    async def require_token(request: Request) -> None:
        if not authorized(request.headers.get("authorization"), expected):
            raise HTTPException(401, "send header 'Authorization: Bearer <token>'")

    # With a token set, everything that answers about users needs it (/v1/*, /graphql); probes and
    # scrapers cannot send one and learn nothing about users, so /healthz and /metrics stay open,
    # as do the API's description (/docs, /openapi.json).
    app = FastAPI(title="streamrank lookup gateway", lifespan=lifespan)
    if tracing.provider is not None:
        app.add_middleware(TraceRequests, tracer=tracing.tracer)
    private = [Depends(require_token)]

    @app.exception_handler(lookup.InvalidRequest)
    async def invalid(request: Request, err: lookup.InvalidRequest):
        return JSONResponse({"code": "INVALID_ARGUMENT", "error": str(err)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def unprocessable(request: Request, err: RequestValidationError):
        return JSONResponse({"code": "INVALID_ARGUMENT", "error": "the request does not match its schema (/docs)",
                             "errors": validation_errors(err)}, status_code=422)

    @app.exception_handler(LookupdFailed)
    async def upstream_failed(request: Request, err: LookupdFailed):
        return JSONResponse({"code": "UPSTREAM_FAILED", "error": str(err)}, status_code=502)

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
            return cached(request, recommendation_json(rec), max_age_s(cfg.gateway, [rec]), [rec.request_id])

    @app.get("/v1/page/{user_id}", dependencies=private)
    async def page(request: Request, user_id: str, p: list[str] = Query([])) -> Response:
        """Several placements of one page in one lookup: p=name:k, repeated."""
        with Observed("http", "GetPage"):
            service = request.app.state.service
            reqs = [service.request(user_id, k, placement=name) for name, k in placements_of(p, lookup.MAX_BATCH)]
            answers = await service.recommend(reqs, interface="http")
            body = {"user_id": user_id, "segments": answers[0].segments,
                    "placements": [recommendation_json(a) for a in answers]}
            return cached(request, body, max_age_s(cfg.gateway, answers), [a.request_id for a in answers])

    @app.post("/v1/beacon", dependencies=private, status_code=202)
    async def beacon(request: Request) -> Response:
        """What a page reports (navigator.sendBeacon sends text/plain, so the body is read as JSON
        whatever its type): clicks become interaction events with their request_id."""
        logs = request.app.state.beacons
        if logs is None:
            raise HTTPException(404, "beacons are off; set gateway.beacons.enabled = true")
        try:
            body = BeaconBody.model_validate_json(await request.body())
        except ValidationError as err:
            return JSONResponse({"code": "INVALID_ARGUMENT", "error": "the beacon does not match its schema "
                                 "({\"events\": [{\"type\": \"click\" | \"exposure\", \"user_id\", "
                                 "\"request_id\", ...}]})",
                                 "errors": validation_errors(err)}, status_code=400)
        records = beacon_records(body, int(time.time() * 1000))
        for kind, record in records:
            logs[kind].log(record)
        return JSONResponse({"accepted": len(records)}, status_code=202)

    @app.post("/v1/recommendations:batch", dependencies=private)
    async def batch(request: Request, body: BatchQuery) -> dict:
        with Observed("http", "BatchGetRecommendations"):
            service = request.app.state.service
            answers = await service.recommend([check(service, q) for q in body.requests], interface="http")
            return {"responses": [recommendation_json(a) for a in answers]}

    @app.get("/v1/users/{user_id}/features", dependencies=private)
    async def features(request: Request, user_id: str) -> Response:
        with Observed("http", "GetUserFeatures"):
            f = await request.app.state.service.user_features(user_id)
            age_ms = int(time.time() * 1000) - f.feature_ts_ms if f.found else 0
            return cached(request, asdict(f), fresh_for_s(cfg.gateway, age_ms), [])

    if cfg.gateway.demo:
        @app.get("/demo", include_in_schema=False)
        async def demo() -> FileResponse:
            return FileResponse(WEB / "demo.html", media_type="text/html")

        @app.get("/sdk/streamrank.js", include_in_schema=False)
        async def sdk() -> FileResponse:
            built = WEB / "dist" / "streamrank.js"
            if not built.is_file():
                raise HTTPException(404, f"{built} is not built; run `make setup` (it builds serving/web)")
            return FileResponse(built, media_type="text/javascript")

    @app.get("/healthz")
    async def healthz(request: Request):
        ok = await request.app.state.service.ping()
        return JSONResponse({"status": "SERVING" if ok else "NOT_SERVING"}, status_code=200 if ok else 503)

    limits = cfg.gateway.graphql
    app.state.limits = limits
    app.include_router(GraphQLRouter(graphql_schema(limits), context_getter=None, allow_queries_via_get=limits.allow_get,
                                     graphql_ide="graphiql" if limits.introspection else None, dependencies=private),
                       prefix="/graphql")
    app.mount("/metrics", make_asgi_app())
    app.add_middleware(BodyLimit, max_bytes=cfg.gateway.max_body_bytes)
    if cfg.gateway.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=cfg.gateway.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "If-None-Match"],
                           expose_headers=["ETag", "X-Request-Id"], max_age=600)
    return app


def beacon_logs(cfg: GatewayConfig) -> dict[str, ExposureLog]:
    """One buffered Kafka producer per beacon topic (the exposure log's: a call never waits on Kafka)."""
    b = cfg.beacons
    return {kind: ExposureLog(ExposuresConfig(enabled=True, bootstrap_servers=b.bootstrap_servers, topic=topic))
            for kind, topic in (("click", b.interactions_topic), ("exposure", b.rendered_topic))}


def run_gateway(cfg: ServingConfig) -> None:
    """Serves until SIGTERM/SIGINT (uvicorn finishes in-flight requests first)."""
    uvicorn.run(create_app(cfg), host=cfg.gateway.host, port=cfg.gateway.port, log_config=None,
                timeout_graceful_shutdown=cfg.grace_s)
