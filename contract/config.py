"""Typed job config: the file data engineers edit (TOML under deploy/config/).

Every model is frozen and rejects unknown keys; each field documents its unit and default.
`load_config` turns any problem into ConfigError naming the field and the fix, before a job starts.
"""

from __future__ import annotations

import difflib
import os
import re
import ssl
import tomllib
import types
import typing
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from contract.keys import Layout
from contract.schema import MAX_FUTURE_MS, MIN_TS_MS
from contract.segments import SegmentRuleError, compile_rule


class _Strict(BaseModel):
    # the docstring under each field is its description (deploy/config/README.md is made from them)
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class KafkaConfig(_Strict):
    bootstrap_servers: str = "127.0.0.1:19092"
    """host:port list of the brokers."""
    interactions_topic: str = "interactions"
    """Topic of user interactions (JSON, key = user_id)."""
    items_topic: str = "items"
    """Compacted catalog topic (item_id, category, price)."""
    dlq_topic: str = "interactions.dlq"
    """Invalid records go here: the raw record, the reason, topic/partition/offset."""
    late_topic: str = "interactions.late"
    """Events later than the watermark go here, as received."""
    quarantine_topic: str = "interactions.quarantine"
    """Records [quarantine] flags go here (as the DLQ: the record, the rule, topic/partition/offset)."""
    rejected_delivery: Literal["at-least-once", "exactly-once"] = "at-least-once"
    """How the DLQ and late topics are written. at-least-once: a record is there as soon as it is
    rejected; after a restart from a checkpoint a replayed one can be there twice, with the same
    src_topic/partition/offset. exactly-once: in Kafka transactions that commit with each
    checkpoint, so a consumer reading with isolation.level=read_committed sees each rejected record
    once, after the checkpoint that follows it. (The ledger counts each once either way.)"""
    transaction_timeout_s: int = Field(900, gt=0)
    """With rejected_delivery = "exactly-once": Kafka's transaction.timeout.ms for those
    transactions. At most the broker's transaction.max.timeout.ms (default 900), and longer than
    a checkpoint interval plus a restart. A job killed and not restarted leaves its last
    transaction open this long, and read_committed consumers of the topic wait for it."""
    group_id: str = "streamrank-recommend"
    """Kafka consumer group (offsets live in Flink's checkpoints; the group is for lag tools)."""
    startup_mode: Literal["earliest-offset", "latest-offset", "group-offsets"] = "earliest-offset"
    """Where the job starts reading when it has no checkpoint or savepoint. group-offsets: where the
    consumer group left off (Flink commits them at each checkpoint), and the earliest offset of a
    partition the group has none for (a new group)."""
    bounded: bool = False
    """Stop at the offsets that were latest when the job started (tests, backfills)."""
    stop_offsets: dict[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]] = {}
    """Stop the interactions source at these offsets instead, partition -> first offset not read,
    e.g. {0 = 5000, 1 = 4800}: a backfill up to a known point while producers go on writing. Every
    partition of the topic needs an entry. Empty: `bounded` decides."""
    @model_validator(mode="after")
    def _one_bound(self) -> KafkaConfig:
        if self.bounded and self.stop_offsets:
            raise ValueError("kafka.bounded and kafka.stop_offsets both set: keep one (stop_offsets "
                             "stops at given offsets, bounded at the latest ones when the job starts)")
        return self


class QuarantineConfig(_Strict):
    """Records that are valid but not believable, flagged in-stream and kept out of the features
    and the item statistics: they go to kafka.quarantine_topic (like the DLQ) and are counted in
    the ledger as `quarantined`. The offline path flags the same records."""
    max_events_per_minute: int | None = Field(None, ge=1)
    """A user's interactions (not their requests) beyond this many within any minute of event time
    (the record's own minute included) are quarantined: scripts and bots, far beyond a person (e.g.
    600). Unset: off, and the job's plan has no per-user rate operator."""
    price_factor: float | None = Field(None, gt=1)
    """A purchase whose value is more than price_factor times, or less than 1/price_factor of, the
    item's usual value (the geometric mean of its other purchase values within price_window_s
    before it, same time included, so one wild value barely moves it) is quarantined, once there
    are price_min_purchases of them. A value is a line total (quantity x price), so leave room for
    bulk orders (e.g. 50). A purchase of value 0 is not judged. Unset: off (no per-item operator)."""
    price_window_s: float = Field(7 * 86400.0, gt=0, lt=100 * 86400)
    """How far back (s of event time) an item's purchases make its usual value."""
    price_min_purchases: int = Field(5, ge=1)
    """Other purchases of the item in the window before its usual value is trusted."""

    @property
    def enabled(self) -> bool:
        return self.max_events_per_minute is not None or self.price_factor is not None


class EventConfig(_Strict):
    """Which event times validation accepts: contract.schema.validate and the job's SQL alike."""
    min_ts_ms: int = Field(MIN_TS_MS, ge=0)
    """Earliest event time accepted (epoch ms): an event whose `ts` is older goes to the DLQ as
    bad_ts. The default, 946684800000, is 2000-01-01 00:00 UTC; older logs need it lowered, e.g.
    MovieLens 100K (1997-98) needs 874724710000 or lower. Never below 0: a negative ts is invalid."""
    max_future_s: float = Field(MAX_FUTURE_MS / 1000, ge=0)
    """How far (s) an event's `ts` may be ahead of its Kafka record's timestamp (the ingest time)
    before it is bad_ts (default 1 h, for producers' clock drift). A log read from a file
    (training, evaluation) has no ingest time: there it does not apply."""
    @property
    def max_future_ms(self) -> int:
        """max_future_s in ms, as contract.schema.validate and validation_sql take it."""
        return round(self.max_future_s * 1000)


def check_pem_files(model: BaseModel, *names: str) -> None:
    """Each of these fields, when set, names a readable file (TLS certificates and keys)."""
    for name in names:
        value = getattr(model, name)
        if value is not None and not Path(value).is_file():
            raise ValueError(f"{name} = {value!r} is not a readable file; give the PEM file's path")


class RedisClusterConfig(_Strict):
    """[redis.cluster]: Redis is a Redis Cluster; host and port name any one of its nodes (the
    clients find the others). The job writes each batch as one transaction per shard of users:
    the shard's users' keys and its own ledger, control counts and item boards share a hash slot
    (contract.keys.Layout), and readers sum the shards. The Python serving engine does not read a
    cluster: serve with engine = "go"."""
    nodes: list[str] = []
    """More nodes to start from ("host:port"), besides redis.host:port: a client (re)starting while
    that one is down finds the cluster through another."""
    shards: int = Field(16, ge=1, le=1024)
    """Shards the users are split into (CRC-32 of the user id). More shards spread the writes over
    more slots, so over more masters; each shard keeps its own item boards, which the job merges.
    Part of the stored layout: a job does not start over states written with another count."""
    wait_replicas: int = Field(1, ge=0, le=5)
    """After each shard's transaction the job WAITs until this many replicas have it (never more
    than the master has connected), so a failover to a replica cannot lose a write Flink's next
    checkpoint counts as done. 0: asynchronous replication, which can lose the last writes
    before a failover, after a checkpoint said they were made."""
    wait_timeout_ms: int = Field(2000, ge=1, le=60_000)
    """How long one WAIT may take; fewer replicas by then fail the batch, and Flink retries it
    from the last checkpoint."""


class RedisTlsConfig(_Strict):
    """TLS to Redis (redis-server's tls-port). The certificate Redis presents must name `host`."""
    ca_file: str | None = None
    """PEM CA that signed Redis's certificate (redis-server's tls-ca-cert-file); unset: the system's CAs."""
    cert_file: str | None = None
    """PEM client certificate, when Redis asks for one (tls-auth-clients yes); with key_file."""
    key_file: str | None = None
    """PEM private key of cert_file."""
    @model_validator(mode="after")
    def _files(self) -> RedisTlsConfig:
        check_pem_files(self, "ca_file", "cert_file", "key_file")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both (a client certificate) or neither")
        return self


class RedisConfig(_Strict):
    """Where Redis is and how to log in. Secrets never go in this file: password_env names the
    environment variable that holds the password, in every process that talks to Redis (the
    submitting shell, the TaskManagers, the lookup service, the CLI)."""
    host: str = "127.0.0.1"
    """Redis host."""
    port: int = Field(16379, ge=1, le=65535)
    """Redis port (with [redis.tls], Redis's tls-port)."""
    rec_ttl_s: int = Field(7 * 86400, ge=0)
    """TTL of rec:{user}, feat:{user} and profile:{user} keys in seconds, renewed at each of the user's
    windows: a user idle this long is forgotten (starts again from nothing). 0 keeps them forever.
    With Redis's maxmemory, use `maxmemory-policy volatile-ttl`: it evicts only these keys, the
    longest-idle users first, never the ledger or the boards."""
    username: str | None = None
    """ACL user to log in as (Redis 6+ ACL), with password_env's password (needed with it); unset: the
    `default` user, with password_env's password if set."""
    password_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Name of the environment variable holding the password (requirepass, or the ACL user's);
    unset: no password. The name, never the password itself."""
    tls: RedisTlsConfig | None = None
    """[redis.tls]: connect over TLS; absent: plaintext (loopback or a private network only)."""
    cluster: RedisClusterConfig | None = None
    """[redis.cluster]: a Redis Cluster (3 masters and their replicas, say); absent: one Redis."""

    @model_validator(mode="after")
    def _user_has_password(self) -> RedisConfig:
        # clients disagree on a user without a password (redis-py and rueidis send AUTH user "",
        # a bare connection sends nothing and runs as `default`): refuse it rather than pick one
        if self.username is not None and self.password_env is None:
            raise ValueError(f"username = {self.username!r} needs password_env: the name of the environment variable "
                             "that holds that ACL user's password (e.g. password_env = \"STREAMRANK_REDIS_PASSWORD\"); "
                             "or remove username to log in as `default`")
        return self

    def password(self) -> str | None:
        """The password from the environment; ConfigError if password_env names a variable that is not set."""
        if self.password_env is None:
            return None
        value = os.environ.get(self.password_env)
        if not value:
            raise ConfigError(f"redis.password_env names {self.password_env}, which is not set in this process's "
                              f"environment; export {self.password_env}=<the Redis password> (on TaskManagers too) "
                              "or unset redis.password_env")
        return value

    def client_kwargs(self) -> dict:
        """Keyword arguments for redis.Redis (redis-py): address, login and TLS; the caller adds timeouts."""
        kwargs: dict = {"host": self.host, "port": self.port, "username": self.username, "password": self.password()}
        if self.tls is not None:
            kwargs.update(ssl=True, ssl_ca_certs=self.tls.ca_file, ssl_certfile=self.tls.cert_file,
                          ssl_keyfile=self.tls.key_file, ssl_check_hostname=True, ssl_cert_reqs="required")
        return kwargs

    def cluster_kwargs(self) -> dict:
        """Keyword arguments for redis.RedisCluster: client_kwargs without the address, and
        `startup_nodes`, the (host, port) of redis.host:port and every [redis.cluster] node (the
        caller makes them redis.cluster.ClusterNode)."""
        kwargs = self.client_kwargs()
        seeds = [(kwargs.pop("host"), kwargs.pop("port"))]
        seeds += [(host, int(port)) for host, port in (node.rsplit(":", 1) for node in self.cluster.nodes)]
        return {**kwargs, "startup_nodes": seeds}

    def layout(self) -> Layout:
        """Where the keys are (contract.keys.Layout)."""
        return Layout(self.cluster.shards if self.cluster is not None else 0)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for an asyncio connection (serving.resp); None without [redis.tls]."""
        if self.tls is None:
            return None
        context = ssl.create_default_context(cafile=self.tls.ca_file)
        if self.tls.cert_file:
            context.load_cert_chain(self.tls.cert_file, self.tls.key_file)
        return context


EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
MIN_PSEUDONYM_KEY_BYTES = 32


class PrivacyConfig(_Strict):
    """Pseudonymous user ids: the job replaces each user id with a keyed hash (HMAC-SHA256) as it
    reads the record, so Redis, the DLQ and the late topic never hold a raw id; the lookups apply
    the same function to the id they are given. Same section in the job and the serving config."""
    pseudonymize: bool = False
    """Replace user ids with contract.keys.pseudonym(id, key) at ingestion (and in lookups)."""
    key_env: EnvName | None = None
    """Name of the environment variable holding the key (at least 32 ASCII bytes, e.g. `openssl rand -hex 32`);
    needed with pseudonymize, in every process that reads records or answers lookups (TaskManagers too)."""
    previous_key_env: EnvName | None = None
    """Serving config, while a key is rotated: the variable holding the key before key_env's. Lookups
    try the current key's pseudonym, then this one's, so lists written under either answer."""
    @model_validator(mode="after")
    def _key_named(self) -> PrivacyConfig:
        if self.pseudonymize and not self.key_env:
            raise ValueError("pseudonymize = true needs key_env: the name of the environment variable that holds "
                             "the key (e.g. key_env = \"STREAMRANK_PSEUDONYM_KEY\")")
        return self

    def keys(self) -> list[bytes]:
        """The keys from the environment, current first (empty when pseudonymize is off);
        ConfigError if a named variable is unset or its key is shorter than 32 bytes."""
        if not self.pseudonymize:
            return []
        out = []
        for field_name in ("key_env", "previous_key_env"):
            name = getattr(self, field_name)
            if name is None:
                continue
            text = os.environ.get(name, "")
            if not text.isascii():  # a JVM in the C locale would read other bytes than Python and Go
                raise ConfigError(f"privacy.{field_name} names {name}, whose key is not ASCII; use a hex or base64 key "
                                  f"(export {name}=$(openssl rand -hex 32))")
            value = text.encode()
            if len(value) < MIN_PSEUDONYM_KEY_BYTES:
                raise ConfigError(f"privacy.{field_name} names {name}, which is {'not set' if not value else 'shorter than 32 bytes'} "
                                  f"in this process's environment; export {name}=$(openssl rand -hex 32) (the same key "
                                  "everywhere: job, TaskManagers, lookups) or set privacy.pseudonymize = false")
            out.append(value)
        return out


PositiveSeconds = Annotated[float, Field(gt=0)]


class FeatureConfig(_Strict):
    micro_batch_s: float = Field(2.0, gt=0, le=3600)
    """Event-time tumbling window (s) in which Flink groups a user's events before Python folds
    them into the user's state. Smaller: fresher lists, more Python calls."""
    out_of_orderness_s: float = Field(5.0, ge=0)
    """Watermark delay (s): an event this much older than the newest seen is still used; older
    ones are late (counted, sent to the late topic)."""
    early_fire_s: float = Field(0.1, ge=0, le=60)
    """How often (s, processing time) a user's events whose window is still open are folded
    speculatively into a copy of the user's state, and the profile and list written from it: a
    list reflects an event within about this plus the Python bundle time, instead of waiting
    micro_batch_s + out_of_orderness_s for the watermark. The state, the ledger and the item
    statistics still change only when a window is final (which corrects the list if the
    speculation missed something). 0, or with [quarantine] enabled (its rules need the
    watermark): lists are written only when windows are final."""
    early_fire_max_lag_s: float = Field(30.0, gt=0)
    """Events further than this (s) behind the wall clock are not folded early: the job is
    catching up on a backlog, their windows will be final within moments, and lists of every
    step on the way would cost a scoring each."""
    watermark_emit: Literal["on-event", "on-periodic"] = "on-event"
    """on-event: a watermark after every record (exact, reproducible late accounting);
    on-periodic: every pipeline.auto-watermark-interval (cheaper)."""
    frequency_windows_s: tuple[PositiveSeconds, ...] = (3600.0, 86400.0, 604800.0)
    """Sliding windows (s) for interaction counts by type (default 1 h, 24 h, 7 d)."""
    monetary_windows_s: tuple[PositiveSeconds, ...] = (604800.0, 2592000.0)
    """Sliding windows (s) for purchase value sum and mean (default 7 d, 30 d)."""
    window_slices: int = Field(12, ge=1, le=120)
    """Each sliding window advances in steps of window/window_slices (like a HOP window's slide)."""
    session_gap_s: float = Field(1800.0, gt=0)
    """Inactivity (s) that ends a session."""
    session_window_s: float = Field(604800.0, gt=0)
    """Window (s) over which sessions are counted (default 7 d)."""
    interest_half_life_s: float = Field(86400.0, gt=0)
    """Half-life (s) of category and item affinity (default 24 h)."""
    item_half_life_s: float = Field(3600.0, gt=0)
    """Time scale (s) of short-term item and category popularity, and of trending candidates:
    counts decay with this half-life (default 1 h)."""
    item_long_half_life_s: float = Field(86400.0, gt=0)
    """Time scale (s) of long-term item/category popularity and of conversion rates (24 h)."""
    conversion_prior_weight: float = Field(20.0, ge=0)
    """Pseudo-views pulling an item's conversion rate toward the global rate (new items are
    not ranked on noise)."""
    max_items_per_user: int = Field(50, ge=1, le=1000)
    """How many of a user's items the short-term interest keeps (feature item_affinity, decayed
    at interest_half_life_s); the user's own candidates come from the memory (memory_items)."""
    memory_items: int = Field(100, ge=1, le=5000)
    """How many items the user x item memory keeps per user: the N with the largest weight decayed
    at the first of memory_half_lives_s. It holds how often and how recently the user interacted
    with and bought each item (features ui_*) and offers them as candidates (own_history)."""
    memory_half_lives_s: tuple[PositiveSeconds, ...] = (7776000.0, 31536000.0)
    """Half-lives (s) of the user x item memory's decayed interaction weights, one feature
    ui_weight_<half-life> each (default 90 d, 365 d); the first also decays the long-term category
    affinity (category_affinity_long) and the user's item-repurchase statistics."""
    dedup_horizon_s: float = Field(86400.0, gt=0)
    """How long (s) an event_id is remembered to drop duplicates: at least this long, and at most
    1/24 longer (ids are forgotten in 24 time buckets per horizon, so the state keeps ids only)."""
    @model_validator(mode="after")
    def _windows_present(self) -> FeatureConfig:
        if not self.frequency_windows_s or not self.monetary_windows_s:
            raise ValueError("frequency_windows_s and monetary_windows_s need at least one window each")
        if not self.memory_half_lives_s:
            raise ValueError("memory_half_lives_s needs at least one half-life (default (7776000.0, 31536000.0))")
        return self


def duration_label(seconds: float) -> str:
    """How feature names spell a duration: 3600 -> "1h", 604800 -> "7d"."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@lru_cache(maxsize=16)  # asked per user-window (profile); a config is frozen and hashable
def user_feature_names(cfg: FeatureConfig) -> tuple[str, ...]:
    """The user features by name, in user_vector's order (also what segments and GetUserFeatures name)."""
    w = duration_label
    names = ["recency_s", "since_click_s", "since_purchase_s"]
    for s in cfg.frequency_windows_s:
        names += [f"views_{w(s)}", f"clicks_{w(s)}", f"carts_{w(s)}", f"purchases_{w(s)}"]
    for s in cfg.monetary_windows_s:
        names += [f"spend_{w(s)}", f"mean_purchase_{w(s)}"]
    names += [f"sessions_{w(cfg.session_window_s)}", "session_events", "avg_basket"]
    return tuple(names)


class CandidateConfig(_Strict):
    trending: int = Field(100, ge=1, le=5000)
    """Globally trending items offered to every user."""
    per_category: int = Field(20, ge=0, le=1000)
    """Trending items from each of the user's top categories."""
    top_categories: int = Field(3, ge=0, le=20)
    """How many of the user's top categories feed per-category candidates."""
    own_history: int = Field(20, ge=0, le=1000)
    """The user's own items offered as candidates: the largest in the user x item memory
    (features.memory_items; repeat purchases are common in retail)."""
    per_segment: int = Field(0, ge=0, le=1000)
    """Trending items among the users of each of the user's segments ([[segments.rules]]), with the reason popular_with:<segment>; 0: none, and no segment boards are kept. Online only: the offline replay and training draw no segment candidates."""
    refresh_s: float = Field(2.0, gt=0)
    """How often a scorer reloads trending sets from Redis (s)."""


class ScoringConfig(_Strict):
    enabled: bool = True
    """false: the job keeps features (feat:{user}) and the ledger but scores nothing."""
    top_k: int = Field(25, ge=1, le=500)
    """Length of each user's list in rec:{user}."""
    reasons: bool = True
    """Write reason codes with each listed item (udfs/reasons.py): bought_before, viewed_recently, trending_in:<category>, popular_with:<segment>, model:<code>."""
    reasons_recent_s: float = Field(86400.0, gt=0)
    """viewed_recently: the user interacted with the item within this long before the list's newest event (s)."""
    reason_top_k: int = Field(0, ge=0, le=500)
    """model:<code> reasons (LightGBM TreeSHAP) for this many items at the top of each list; 0: none. TreeSHAP costs about 200 predictions a row (7 ms a row for a 992-tree model here): set it where lists are few (README, Reason codes)."""
    min_interval_s: float = Field(0.5, ge=0, le=3600)
    """Shortest time (s, processing time) between two scorings of one user while the user has
    events whose window is not final: events that come sooner reach the profile and the list
    together, at the first batch after the interval (a final window that leaves nothing pending
    scores regardless). A user whose features did not change is not scored again. Larger: less
    CPU per event, lists up to this much staler for very active users."""
    model_dir: str = "var/models/current"
    """Model directory (model.onnx + card.json); relative paths are from the project root. The
    registry's `current` symlink: the job follows promotions and rollbacks (see reload_check_s)."""
    reload_check_s: float = Field(5.0, ge=0)
    """How often the job re-resolves model_dir and switches to a newly promoted version (s);
    0: load once at start."""
    drift_window_s: float = Field(300.0, gt=0)
    """Event-time window over which the population stability index (PSI) of each feature is
    computed against the model card's reference distributions (s)."""
    drift_min_rows: int = Field(1000, ge=1)
    """Fewest scored rows a drift window needs; smaller windows are merged into the next."""
    drift_threshold: float = Field(0.25, gt=0)
    """PSI above which the job logs a drift alert for the feature (0.25: a large shift)."""
    experiments_refresh_s: float = Field(5.0, gt=0)
    """How often the job re-reads the experiments `streamrank experiments apply` stored in Redis,
    and ranks each user for their arms (s)."""


class TrainingConfig(_Strict):
    """How `streamrank train` and `evaluate` build labels and fit models (offline only)."""
    horizon_s: float = Field(0.0, ge=0)
    """Label horizon (s): an item is relevant at a cut-off when the user interacts with it within
    this long after it. 0: the span of the held-out period (the test span `evaluate` scores, or
    train's time holdout), so the model learns the question it is judged on."""
    relevance: Literal["graded", "binary"] = "graded"
    """graded: the label is the strongest interaction in the horizon (view 1, click 2, cart 3,
    purchase 4) plus 1 for each further purchase occasion, at most 7 (LambdaMART learns the
    order); binary: 1 for any interaction. The classifier always learns any interaction."""
    cutoffs: int = Field(12, ge=2, le=500)
    """Cut-offs spread evenly over the training period (each leaving a full horizon after it);
    the last fifth of them (by time) is the early-stopping validation set."""
    users_per_cutoff: int = Field(1000, ge=1)
    """At most this many users (seeded sample) per cut-off, among those the job would have a list
    for and who interact within the horizon."""
    negatives_per_query: int = Field(50, ge=1)
    """Irrelevant candidates kept per (user, cut-off) list (seeded sample); every relevant one is
    kept."""
    max_trees: int = Field(1000, ge=10)
    """Most boosting rounds; early stopping on the validation cut-offs picks fewer."""
    early_stopping_rounds: int = Field(50, ge=1)
    """Rounds without improvement on the validation cut-offs (NDCG@10 for the ranker, log loss
    for the classifier) before training stops."""
    onnx_form: Literal["fast", "exported"] = "fast"
    """fast: a binary classifier is published as a single-target tree ensemble plus a sigmoid (the
    same probabilities, about 1.2x the rows/s in onnxruntime) once it ranks the validation lists as
    onnxmltools' export does (top-10 overlap >= 0.98, Kendall tau >= 0.99); exported: onnxmltools'
    export as it is. A ranker has no faster form: both publish the export."""


class FlinkConfig(_Strict):
    parallelism: int = Field(1, ge=1, le=256)
    """Parallelism of every operator (Kafka partitions beyond it are shared out)."""
    checkpoint_interval_s: float = Field(10.0, gt=0)
    """How often (s) a checkpoint is taken: how much is replayed after a failure."""
    checkpoint_dir: str = "var/checkpoints"
    """Where checkpoints are stored (filesystem storage; the JobManager's memory caps state at
    5 MB). A path (relative to the project root) or a URI such as s3://bucket/path."""
    savepoint_dir: str = "var/savepoints"
    """Where a savepoint goes when `streamrank cluster stop` names no directory (Flink's
    execution.checkpointing.savepoint-dir). A path (relative to the project root) or a URI. Resume
    with `streamrank submit --from-savepoint PATH` (or `run --from-savepoint`)."""
    source_idle_timeout_s: float = Field(0.0, ge=0)
    """0 (the default): every Kafka partition holds the windows back until its records move on,
    so a partition that gets no records at all stops lists from updating. Above 0: a partition
    quiet this long (s) stops holding them back (Flink's table.exec.source.idle-timeout). That
    costs records: when it resumes behind the others, the windows drop its records that are
    behind their time, and nothing counts them (no ledger field, no late topic). Set it only for
    a topic where some partitions stay empty; better, give that topic fewer partitions."""
    python_bundle_size: int = Field(10000, ge=1)
    """Rows per Python bundle: Python is crossed in batches of up to this many rows."""
    python_bundle_time_ms: int = Field(50, ge=1)
    """Longest a row waits for its bundle (ms): bounds added latency."""
    prometheus_port: str = ""
    """Port, or range such as "9249-9259" (the first free one is taken), where Flink's own
    Prometheus reporter serves the job's metrics at /metrics: the ledger counters
    (streamrank_used, _duplicate, _opted_out, _late, _dlq, _control_erase, _control_opt_out,
    _control_opt_in, _dlq_reason_records by dlq_reason), drift gauges, and Flink's own
    (records in/out, checkpoints, backpressure). Empty: no reporter. Embedded runs only: on a
    cluster, reporters are the cluster's config (`streamrank cluster up --metrics-port`)."""
    web_port: str = ""
    """Port, or range such as "8081-8090", of the embedded MiniCluster's REST API and Flink web UI
    (jobs, backpressure, checkpoints, watermarks); the job logs the address it took. Empty: a
    random free port. Embedded runs only: a cluster has its own (`cluster up --rest-port`)."""
    extra: dict[str, str] = {}
    """Raw Flink options passed through unchanged (e.g. state.backend.type)."""
    @field_validator("prometheus_port", "web_port", mode="before")
    @classmethod
    def _port_or_range(cls, v: object) -> object:
        if isinstance(v, int) and not isinstance(v, bool):
            v = str(v)  # port = 9249 in TOML
        if not isinstance(v, str):
            return v  # pydantic names the type
        ports = port_range(v) if re.fullmatch(r"\d+(-\d+)?", v) else range(0)
        if v and not (ports and 1 <= ports[0] and ports[-1] <= 65535):
            raise ValueError('expected a port such as "9249", a range such as "9249-9259" (the first free one '
                             'is taken), or "" (see the field\'s description)')
        return v


def port_range(spec: str) -> range:
    """"9249" or "9249-9258" (FlinkConfig.prometheus_port, .web_port) -> the ports it names."""
    lo, _, hi = spec.partition("-")
    return range(int(lo), int(hi or lo) + 1)


class FaultConfig(_Strict):
    """For recovery tests only: make the job fail once, to exercise checkpoint recovery."""
    fail_after_windows: int = Field(0, ge=0)
    """Fail once after this many user windows have been handed to Python (0: never)."""
    marker_file: str = "/tmp/streamrank-fault-injected"
    """Created when the failure fires, so the restarted job does not fail again."""
    armed_file: str = ""
    """When set, the failure fires only once this file exists: a test creates it after a
    checkpoint has completed, so the restart has one to restore."""


class EngagementConfig(_Strict):
    window_s: float = Field(86_400.0, gt=0, le=90 * 86_400)
    """Attribution window: a click or purchase within this long after an exposure that showed the
    item counts for that exposure (s). The engagement job settles an interaction once its
    watermark has passed it by this much (its interval joins hold the watermark back by the
    window), so its clicks and conversions arrive this late."""
    half_life_s: float = Field(3_600.0, gt=0)
    """Time-decay attribution: a touch this much older than the purchase gets half the weight (s)."""
    click_types: tuple[Literal["view", "click", "add_to_cart"], ...] = ("view", "click")
    """Interaction types that count as a click on an exposed item."""
    exposures_topic: str = "exposures"
    """The services' exposure records ([exposures] topic of the serving config): the engagement
    job's other input."""
    outcomes_topic: str = "engagement"
    """The engagement job writes each interaction that touched an exposure here, with its credit
    (JSON), for warehouses."""
    micro_batch_s: float = Field(1.0, gt=0, le=3600)
    """The engagement job settles exposures and interactions in event-time batches this long,
    once the watermark has passed them (s)."""
    out_of_orderness_s: float = Field(60.0, ge=0)
    """How late an exposure or interaction may reach the engagement job (behind the latest event
    time seen) and still count: exposures wait in the services' buffers while Kafka is down (s)."""

    @property
    def window_ms(self) -> int:
        return int(round(self.window_s * 1000))


class CanaryConfig(_Strict):
    share: float = Field(0.1, gt=0, le=1)
    """Share of users in a canary experiment: half of them get the retrained model, half the
    current one (pinned, as the control)."""
    min_users: int = Field(200, ge=10)
    """Fewest users in each arm before the canary is promoted or rolled back."""
    max_conversion_drop: float = Field(0.05, ge=0, le=1)
    """Guardrail: the canary is rolled back when its conversion lift over the current model is
    surely below -this (the 95% interval's upper bound); it is promoted only when the lower bound
    is not below it."""
    max_age_s: float = Field(7 * 86_400.0, gt=0)
    """A canary still undecided this long after it started is rolled back (s)."""


class WebhooksConfig(_Strict):
    """Events for CMSs (contract/webhooks.py): the job writes them to `topic`; `streamrank webhooks
    deliver` sends them to the registered endpoints, signed, retried, dead-lettered."""
    enabled: bool = False
    """The job writes events to topic (list_changed, segment_entered, segment_left, profile_updated)."""
    topic: str = "webhooks.events"
    """Kafka topic of the events (keyed by user)."""
    list_top_n: int = Field(5, ge=1, le=100)
    """list_changed looks at this many items at the top of a list."""
    list_change_threshold: float = Field(0.4, gt=0, le=1)
    """list_changed when at least this share of the top list_top_n positions hold items that were not there before."""
    profile_updated: bool = True
    """Write profile_updated events (one per user and final window: many)."""
    dlq_topic: str = "webhooks.dlq"
    """Deliveries that failed every attempt, or that a receiver refused (4xx): `streamrank webhooks replay` resends them."""
    group_id: str = "streamrank-webhooks"
    """Consumer group of the delivery worker (it commits an event once every endpoint has it or its dead letter)."""
    max_attempts: int = Field(8, ge=1, le=100)
    """Attempts per delivery before it goes to the dead-letter topic."""
    backoff_base_s: float = Field(0.5, gt=0)
    """First retry after up to this long; each retry doubles the wait (full jitter: a random share of it)."""
    backoff_max_s: float = Field(30.0, gt=0)
    """Longest wait between two attempts."""
    timeout_s: float = Field(5.0, gt=0, le=60)
    """How long one attempt waits for the receiver's answer."""


class SegmentRule(_Strict):
    """A named segment: users whose features satisfy `when` are in it (contract/segments.py)."""
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    """1-63 of a-z 0-9 _ -: it appears in answers, webhooks and editorial rules."""
    when: str
    """Comparisons of features with numbers joined by and/or/not, e.g. "spend_30d > 200 and purchases_7d >= 3"."""


class SegmentsConfig(_Strict):
    """Named segments over the user features (contract/segments.py), evaluated on every profile
    the job writes; a user's segments travel with their profile and list."""
    rules: list[SegmentRule] = []
    """[[segments.rules]] tables, each a name and a rule; a user's segments are listed in this order."""


class JobConfig(_Strict):
    """The recommend job's config file (deploy/config/*.toml)."""
    kafka: KafkaConfig = KafkaConfig()
    events: EventConfig = EventConfig()
    redis: RedisConfig = RedisConfig()
    features: FeatureConfig = FeatureConfig()
    candidates: CandidateConfig = CandidateConfig()
    scoring: ScoringConfig = ScoringConfig()
    training: TrainingConfig = TrainingConfig()
    flink: FlinkConfig = FlinkConfig()
    faults: FaultConfig = FaultConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    quarantine: QuarantineConfig = QuarantineConfig()
    engagement: EngagementConfig = EngagementConfig()
    canary: CanaryConfig = CanaryConfig()
    segments: SegmentsConfig = SegmentsConfig()
    webhooks: WebhooksConfig = WebhooksConfig()

    @model_validator(mode="after")
    def _segments_name_features(self) -> JobConfig:
        known = user_feature_names(self.features)
        seen: set[str] = set()
        for n, rule in enumerate(self.segments.rules):
            if rule.name in seen:
                raise ValueError(f"segments.rules[{n}].name: {rule.name!r} is declared twice; give each segment one rule "
                                 "(join conditions with or)")
            seen.add(rule.name)
            try:
                compile_rule(rule.when, known)
            except SegmentRuleError as err:
                raise ValueError(f"segments.rules[{n}].when ({rule.name}): {err}") from None
        return self

    @model_validator(mode="after")
    def _micro_batch_fits(self) -> JobConfig:
        if self.features.micro_batch_s > min(self.features.frequency_windows_s):
            raise ValueError("features.micro_batch_s must not exceed the shortest frequency window")
        if (self.kafka.rejected_delivery == "exactly-once"
                and self.kafka.transaction_timeout_s <= self.flink.checkpoint_interval_s):
            raise ValueError("kafka.transaction_timeout_s must be longer than flink.checkpoint_interval_s "
                             "with kafka.rejected_delivery = \"exactly-once\" (transactions commit at checkpoints)")
        return self


M = typing.TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config file that cannot run; the message names the field and the fix."""


def _model_of(annotation: object) -> type[BaseModel] | None:
    """The config section model an annotation names (also `Section | None` and `list[Section]`)."""
    args = annotation.__args__ if isinstance(annotation, types.UnionType) else (annotation,)
    args = tuple(typing.get_args(a)[0] if typing.get_origin(a) is list else a for a in args)
    found = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
    return found[0] if found else None


def _section_model(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The config model that holds the key at loc (None when loc passes through a plain dict)."""
    model: type[BaseModel] | None = root
    for name in loc[:-1]:
        if isinstance(name, int):  # a list's index: the list's items are already `model`
            continue
        field = model.model_fields.get(str(name)) if model else None
        model = _model_of(field.annotation) if field else None
    return model


def _describe(err: ValidationError, source: str, root: type[BaseModel]) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            model = _section_model(root, e["loc"])
            close = difflib.get_close_matches(str(e["loc"][-1]), list(model.model_fields), n=1) if model else []
            fix = f"did you mean {close[0]!r}? " if close else "remove it or check its spelling; "
            lines.append(f"  {where}: unknown key; {fix}the fields are listed in deploy/config/README.md")
        elif not e["loc"]:  # a rule across sections: its message names the fields, the input is the whole file
            lines.append(f"  {e['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  {where}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def validated(model: type[M], data: dict, source: str) -> M:
    """data as `model`, or ConfigError naming each bad field of `source` and the fix (every typed
    file goes through here: the job config, experiments, editorial rules, the serving config)."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err, source, model)) from None


def parse_config(data: dict, source: str = "<dict>") -> JobConfig:
    return validated(JobConfig, data, source)


def _read_toml(path: str | Path | None, what: str = "config file") -> dict:
    """A config file's TOML ({} for None); a missing or malformed file is a ConfigError."""
    if path is None:
        return {}
    p = Path(path)
    try:
        return tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} {p} not found; pass an existing file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{what} {p} is not valid TOML: {e}") from None
    except UnicodeDecodeError as e:  # TOML is UTF-8 text: a binary file, or another encoding
        raise ConfigError(f"{what} {p} is not UTF-8 text (byte {e.start}: {e.reason}); "
                          "save it as UTF-8 TOML") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {p} is a directory; pass the .toml file inside it") from None


PRESETS_DIR = Path(__file__).resolve().parent.parent / "deploy" / "config" / "presets"
PRESETS = ("web-sessions", "retail-purchases")
# the preset each public log format is evaluated and trained with by default
FORMAT_PRESETS = {"retailrocket": "web-sessions", "online-retail": "retail-purchases",
                  "completejourney": "retail-purchases"}


def preset_path(name: str) -> Path:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)} (files in {PRESETS_DIR})")
    return PRESETS_DIR / f"{name}.toml"


# Job config fields whose change a job resumed from a savepoint cannot take: Flink's state in the
# savepoint (or the job graph) was made under the old value. `streamrank config diff` names them;
# Flink refuses some itself, the others would resume wrongly.
SAVEPOINT_SHAPE = {  # field -> (why, what of its value the savepoint depends on)
    "features.micro_batch_s": ("the size of the windows open in the savepoint", lambda v: v),
    "features.early_fire_s": ("whether the job graph has the early rows' operators (0: none)", lambda v: v > 0),
    "privacy.pseudonymize": ("the users' identity: state in the savepoint is keyed by the old ids", lambda v: v),
    "privacy.key_env": ("the users' identity, if the key differs: state in the savepoint is keyed by the old ids",
                        lambda v: v),
    "quarantine.max_events_per_minute": ("whether the job graph has the quarantine's windows (on or off; the "
                                         "threshold itself may change)", lambda v: v is None),
}


def savepoint_changes(old: JobConfig, new: JobConfig) -> dict[str, str]:
    """Each SAVEPOINT_SHAPE field whose change matters -> why a savepoint of old cannot resume new."""
    def value(cfg: JobConfig, path: str):
        section, name = path.split(".")
        return getattr(getattr(cfg, section), name)
    return {path: why for path, (why, shape) in SAVEPOINT_SHAPE.items()
            if shape(value(old, path)) != shape(value(new, path))}


def load_config(path: str | Path | None, overrides: dict | None = None, preset: str | None = None) -> JobConfig:
    """Load a TOML config file (None: all defaults), then a preset's keys over it (PRESETS), then
    dotted overrides.

    overrides maps a dotted path to a value, e.g. {"redis.port": 6380} (apply_overrides).
    """
    data = _read_toml(path)
    source = str(path) if path is not None else "<defaults>"
    if preset:
        for section, values in _read_toml(preset_path(preset)).items():
            data.setdefault(section, {}).update(values)
        source += f" with preset {preset}"
    return parse_config(apply_overrides(data, overrides, JobConfig), source)


def _section_of(annotation: object) -> type[BaseModel] | None:
    """The model of a config section's field (TlsConfig | None included), else None."""
    for t in getattr(annotation, "__args__", None) or (annotation,):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def apply_overrides(data: dict, overrides: dict | None, model: type[BaseModel]) -> dict:
    """Dotted overrides over a config file's data, the one rule for both config files and --set:
    "port" sets a top-level field, "redis.port" a section's, and the path walks into sections only,
    so a mapping field takes the rest as one key ("flink.extra.state.backend.type" sets that Flink
    option). A name the model does not have is left for validation to refuse, by its full path."""
    for dotted, value in (overrides or {}).items():
        parts, node, section = dotted.split("."), data, model
        while len(parts) > 1 and section is not None and parts[0] in section.model_fields:
            annotation = section.model_fields[parts[0]].annotation
            section = _section_of(annotation)
            mapping = getattr(annotation, "__origin__", None) is dict
            if (section is None and not mapping) or not isinstance(node.setdefault(parts[0], {}), dict):
                break  # not a table (`redis = 5` in the file): validation names it
            node = node[parts.pop(0)]
            if mapping:  # the rest of the path is one of its keys; raw options are text
                parts = [".".join(parts)]
                if getattr(annotation, "__args__", (None, None))[1] is str and not isinstance(value, str):
                    value = str(value).lower() if isinstance(value, bool) else str(value)
        node[".".join(parts)] = value
    return data


def parse_overrides(pairs: list[str], bounded: bool = False) -> dict:
    """["redis.port=6380"] -> {"redis.port": 6380} (the --set flags); values are TOML literals,
    else strings."""
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"--set expects SECTION.KEY=VALUE, got {pair!r}")
        try:
            out[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = value
    if bounded:
        out["kafka.bounded"] = True
    return out
