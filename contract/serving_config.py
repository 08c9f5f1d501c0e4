"""Typed serving config: `serving.toml`, the lookup service's and the gateway's file. Validated
like the job config (contract.config): frozen, unknown keys refused, each field documented."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from contract.config import (PrivacyConfig, RedisConfig, _read_toml, _Strict, apply_overrides, validated,
                             check_pem_files)


class TlsConfig(_Strict):
    """TLS for the gRPC service; with client_ca_file, mutual TLS (clients must present a
    certificate signed by that CA)."""
    cert_file: str
    """PEM certificate chain the service presents."""
    key_file: str
    """PEM private key of cert_file."""
    client_ca_file: str | None = None
    """PEM CA that client certificates must be signed by (mutual TLS); unset: no client certificates."""
    @model_validator(mode="after")
    def _files_exist(self) -> TlsConfig:
        check_pem_files(self, "cert_file", "key_file", "client_ca_file")
        return self


class CacheConfig(_Strict):
    """The local cache of popular lists that answers cold users, and every user while Redis is
    slow or down."""
    refresh_s: float = Field(1.0, gt=0)
    """How often the popular lists are re-read from Redis."""
    popular_size: int = Field(200, ge=1, le=10_000)
    """Trending items kept (before filters)."""
    lists_mb: int = Field(64, ge=0, le=65_536)
    """Go engine: memory for users' lists kept in the service, with Redis's server-assisted
    client-side caching (CLIENT TRACKING): Redis tells the service the moment the job rewrites a
    list, so an entry is never older than Redis's copy. The lists are kept decoded too, in up to as
    much again, so a list read unchanged is not parsed again. 0 turns both off (every call reads
    Redis and parses the list)."""
    lists_ttl_s: float = Field(30.0, gt=0)
    """Go engine: the longest a cached list is kept, invalidation or not."""


class BreakerConfig(_Strict):
    """Circuit breaker in front of Redis: after `failures` consecutive errors or timeouts, calls
    skip Redis (and answer from the cache) for `reset_s`, then one trial call decides."""
    failures: int = Field(5, ge=1)
    """Consecutive Redis errors or timeouts that open the breaker."""
    reset_s: float = Field(2.0, gt=0)
    """How long (s) the breaker stays open before a trial call."""


class GraphQLConfig(_Strict):
    """Limits on one GraphQL query. A query can ask for one lookup per alias, so max_aliases
    bounds its cost: at most (max_aliases + 2) lookups of at most max_k items each."""
    max_aliases: int = Field(20, ge=0)
    """Most aliased fields in one query (a page's slots, one alias each)."""
    max_depth: int = Field(5, ge=1)
    """Deepest selection nesting (the schema's own is 3: recommendations { items { itemId } })."""
    max_tokens: int = Field(2000, ge=50)
    """Most lexical tokens in one query; a longer document is refused before it is parsed whole."""
    introspection: bool = False
    """Answer introspection queries (and serve the GraphiQL page at /graphql); for development."""
    allow_get: bool = False
    """Take queries by GET (?query=...) as well as POST; off, as GET queries end up in logs and caches."""
    max_placements: int = Field(10, ge=1, le=100)
    """Most placements one page query fetches."""
    max_cost: int = Field(200, ge=1)
    """Most items one query may ask for: the sum of k over its lookups (k 0 counts as default_k), aliases included."""


class BeaconConfig(_Strict):
    """Where the gateway's POST /v1/beacon sends what pages report (serving/web's SDK uses it)."""
    enabled: bool = False
    """Accept beacons; off: /v1/beacon answers 404."""
    bootstrap_servers: str = "127.0.0.1:19092"
    """host:port list of the Kafka brokers."""
    interactions_topic: str = "interactions"
    """Clicks go here as interaction events (type click) with the answer's request_id, so the job and the engagement job attribute them."""
    rendered_topic: str = "exposures.rendered"
    """Exposures a page confirms it rendered (the services log every answer served on [exposures] topic already)."""


class GatewayConfig(_Strict):
    """The HTTP/JSON + GraphQL gateway (`streamrank gateway`)."""
    host: str = "127.0.0.1"
    """Address the gateway binds (loopback by default)."""
    port: int = Field(8080, ge=0, le=65535)
    """HTTP port of the gateway; 0 binds a free one."""
    max_body_bytes: int = Field(1 << 20, ge=1024)
    """Largest request body, in bytes; a larger one gets 413 before anything parses it. The
    default (1 MiB) holds a full batch of 100 requests with their filters."""
    graphql: GraphQLConfig = GraphQLConfig()
    cache_max_age_s: int = Field(30, ge=0, le=86400)
    """Longest a browser may reuse an answer (Cache-Control: private, max-age). A list is reused for a tenth of its age, up to this: an idle user's list changes rarely, an active user's often."""
    fallback_max_age_s: int = Field(5, ge=0, le=86400)
    """max-age of a popular-list answer (a cold user's, or one Redis could not give)."""
    cors_origins: list[str] = []
    """Origins whose pages may call the gateway (CORS), e.g. ["https://shop.example"]; empty: none but the gateway's own (/demo)."""
    lookupd: str = ""
    """host:port of the lookup service (`streamrank serve`, engine go) the gateway asks over gRPC: rules, reasons, experiments and exposures are then lookupd's, and the gateway holds no Redis connection. Empty: the gateway reads Redis itself with the Python lookup core (the same rules: tests/vectors)."""
    demo: bool = True
    """Serve the demo page (/demo) and the web SDK it loads (/sdk/streamrank.js)."""
    beacons: BeaconConfig = BeaconConfig()


class ExposuresConfig(_Strict):
    enabled: bool = False
    """Log every answer served (gRPC, HTTP, GraphQL) as one record on `topic`: who was shown which
    items, in which experiment arms (contract/exposures.py)."""
    bootstrap_servers: str = "127.0.0.1:19092"
    """host:port list of the Kafka brokers."""
    topic: str = "exposures"
    """Kafka topic of the exposure records."""
    buffer_records: int = Field(10_000, ge=1, le=1_000_000)
    """Records held while Kafka is slow or down. Sending never holds up a call: once this many
    wait, further records are dropped and counted (streamrank_serving_exposures_total{outcome="dropped"})."""
    linger_ms: float = Field(50.0, ge=0, le=1000)
    """How long records wait to be sent together (ms): longer means fewer produce requests, so
    less of the service's CPU goes to Kafka between calls."""


class TracingConfig(_Strict):
    """OpenTelemetry traces of the lookups (README, Traces): the gateway's HTTP and GraphQL calls
    and lookupd's gRPC calls, continuing a caller's W3C `traceparent`."""
    otlp_endpoint: str = ""
    """OTLP/HTTP collector base URL (spans are POSTed to <url>/v1/traces), e.g.
    "http://127.0.0.1:4318"; empty: no traces are made."""
    sample_ratio: float = Field(1.0, ge=0, le=1)
    """Share of the traces a lookup starts that are kept; a caller's sampled traceparent is always followed."""

    @field_validator("otlp_endpoint")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not re.fullmatch(r"https?://[^/\s]+(/\S*)?", v):
            raise ValueError(f"{v!r} is not an OTLP/HTTP base URL; give one such as http://127.0.0.1:4318 "
                             "(spans go to <url>/v1/traces), or leave it empty for no traces")
        if v.rstrip("/").endswith("/v1/traces"):
            raise ValueError(f"{v!r} names the traces path; give the collector's base URL "
                             f"({v.rstrip('/')[:-len('/v1/traces')]!r}): /v1/traces is added")
        return v.rstrip("/")


class ServingConfig(_Strict):
    """The gRPC lookup service's config file (deploy/config/serving.toml)."""
    engine: Literal["go", "python"] = "go"
    """go: the compiled lookup service (serving/lookupd) answers every gRPC method; python: the
    grpc.aio service (serving.server), the same rules in Python."""
    host: str = "127.0.0.1"
    """Address the gRPC service binds (loopback by default)."""
    port: int = Field(50051, ge=0, le=65535)
    """gRPC port; 0 binds a free one."""
    default_k: int = Field(10, ge=1)
    """k when a request does not give one."""
    max_k: int = Field(100, ge=1, le=1000)
    """Larger k in a request is cut to this."""
    redis: RedisConfig = RedisConfig()
    redis_timeout_s: float = Field(0.25, gt=0)
    """Longest wait for Redis in one call (shortened further by the caller's deadline)."""
    reflection: bool = False
    """Serve grpc.reflection (off unless enabled)."""
    grace_s: float = Field(5.0, ge=0)
    """How long SIGTERM waits for in-flight calls."""
    auth_token_env: str | None = None
    """Name of an environment variable holding the bearer token callers must send
    (`authorization: Bearer <token>`); unset: no authentication."""
    health_interval_s: float = Field(1.0, gt=0)
    """How often grpc.health.v1 status is refreshed from a Redis PING."""
    tls: TlsConfig | None = None
    """[tls] cert_file/key_file (and client_ca_file for mTLS); absent: plaintext on loopback."""
    cache: CacheConfig = CacheConfig()
    breaker: BreakerConfig = BreakerConfig()
    metrics_port: int | None = Field(None, ge=0, le=65535)
    """Prometheus /metrics port (0: a free one); unset: no metrics endpoint."""
    metrics_host: str = "127.0.0.1"
    """Address the /metrics endpoint binds."""
    log_format: Literal["json", "text"] = "json"
    """json: one JSON object per log line (for log shippers); text: for people."""
    gateway: GatewayConfig = GatewayConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    exposures: ExposuresConfig = ExposuresConfig()
    tracing: TracingConfig = TracingConfig()
    experiments_refresh_s: float = Field(5.0, gt=0)
    """How often the service polls Redis for experiments `streamrank experiments apply` stored (s)."""
    rules_refresh_s: float = Field(1.0, gt=0)
    """How often the service polls Redis for the editorial rules (`streamrank rules apply`) and the
    items the catalog marks unavailable (s): an edit is served within this time, with no restart."""

    @model_validator(mode="after")
    def _cluster_needs_lookupd(self) -> ServingConfig:
        # the Python engine's Redis client (serving.resp) speaks to one Redis, not a cluster
        if self.redis.cluster is not None and self.engine == "python":
            raise ValueError("[redis.cluster] needs engine = \"go\": lookupd is a cluster client, the Python "
                             "engine is not; set engine = \"go\" (or remove [redis.cluster] for one Redis)")
        return self


def load_serving_config(path: str | Path | None, overrides: dict | None = None) -> ServingConfig:
    """Load serving.toml (None: all defaults), then dotted overrides (contract.config.apply_overrides)."""
    data = apply_overrides(_read_toml(path or None), overrides, ServingConfig)
    return validated(ServingConfig, data, str(path or "<defaults>"))
