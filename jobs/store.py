"""The job's Redis store: users' states and lists (guarded writes), item statistics, the
candidate source, the item catalog and the ledger. Keys, codecs and scripts come from
contract.keys; what is computed lives in udfs (udfs.ranking.BatchRanker ranks through this)."""

from __future__ import annotations

import json
import logging
import time

import redis
from kafka import KafkaProducer

from contract import compact, keys
from contract.compact import pack
from contract.config import ConfigError, JobConfig
from contract.experiments import read_experiments
from contract.webhooks import WebhookEvent
from jobs.redis_client import connect
from udfs.arms import CANDIDATE_COUNTS
from udfs.attribution import Group, Shares
from udfs.candidates import Candidate, CandidatePool, ItemStats, gather_candidates, item_weight
from udfs.drift import DriftReport
from udfs.features import UserState, layout_changes, state_layout
from udfs.ranking import ShardBatch, UserWrite

log = logging.getLogger(__name__)


def redis_client(cfg: JobConfig) -> redis.Redis | redis.RedisCluster:
    return connect(cfg.redis, socket_timeout=10)



class Shards:
    """The connections the job's transactions go over. One Redis: the client itself. A Redis
    Cluster: one connection to the master of each shard's slot, so that a shard's MULTI and the
    WAIT after it (redis.cluster.wait_replicas) are on the same connection. A failover makes these
    fail (the master is gone, or answers MOVED): the batch fails and Flink restarts the job from
    its last checkpoint, with new connections to the new masters."""

    REPLICAS_REFRESH_S = 5.0

    def __init__(self, cfg: JobConfig, client) -> None:
        self.cfg, self.client = cfg, client
        self.layout = cfg.redis.layout()
        self.nodes: dict[tuple[str, int], redis.Redis] = {}
        self.replicas: dict[tuple[str, int], tuple[int, float]] = {}  # node -> (connected replicas, when read)

    def connection(self, shard: int) -> redis.Redis:
        if not self.layout.shards:
            return self.client
        node = self.client.get_node_from_key(self.layout.ledger(shard))
        address = (node.host, int(node.port))
        if address not in self.nodes:
            self.nodes[address] = redis.Redis(**{**self.cfg.redis.client_kwargs(), "host": node.host, "port": int(node.port)},
                                              socket_timeout=10, single_connection_client=True)
        return self.nodes[address]

    def replicated(self, conn: redis.Redis) -> None:
        """Return once the configured replicas (no more than the master has) hold every write made
        on conn; raise if they do not within wait_timeout_ms."""
        c = self.cfg.redis.cluster
        if c is None or not c.wait_replicas:
            return
        address = (conn.connection_pool.connection_kwargs["host"], conn.connection_pool.connection_kwargs["port"])
        known, at = self.replicas.get(address, (0, -1e18))
        if time.monotonic() - at > self.REPLICAS_REFRESH_S:
            known = int(conn.info("replication").get("connected_slaves", 0))
            self.replicas[address] = (known, time.monotonic())
        want = min(c.wait_replicas, known)
        if want and (got := int(conn.execute_command("WAIT", want, c.wait_timeout_ms))) < want:
            raise redis.RedisError(f"only {got} of {want} replicas of {address[0]}:{address[1]} acknowledged the batch "
                                   f"within redis.cluster.wait_timeout_ms = {c.wait_timeout_ms}; the batch is retried "
                                   "from the last checkpoint")


class RejectedCounter:
    """Counts DLQ'd and late records into the ledger exactly once, replays included."""

    def __init__(self, client, cfg: JobConfig | None = None) -> None:
        self.script = client.register_script(keys.lua("count_rejected"))
        self.shards = Shards(cfg, client) if cfg is not None else None
        self.layout = self.shards.layout if self.shards else keys.Layout()

    def count(self, rows: list[tuple[str, int, int, str]]) -> int:
        """rows: (topic, partition, offset, 'dlq' | 'late'); returns how many were new. Counted
        into the first shard's ledger (a cluster's readers sum the shards)."""
        args: list = []
        for topic, partition, offset, field in rows:
            args += [f"{topic}:{partition}", offset, field]
        if not rows:
            return 0
        conn = self.shards.connection(0) if self.shards else None
        new = int(self.script(keys=[self.layout.ledger(0), self.layout.rejected_offsets()], args=args, client=conn))
        if self.shards:
            self.shards.replicated(conn)
        return new


def count_in_ledger(pipe, counts: dict[str, int], ledger_key: str = keys.LEDGER) -> None:
    """Queue HINCRBYs of the ledger hash (used/duplicate/opted_out/dlq/late) on a pipeline."""
    for name, n in counts.items():
        if n:
            pipe.hincrby(ledger_key, str(name), int(n))


class TrendingWriter:
    """Adds per-item window counts to the item statistics in Redis (one script call per batch)."""

    MAX_BOARD = 5000

    def __init__(self, cfg: JobConfig, client: redis.Redis | None = None) -> None:
        self.cfg = cfg
        self.redis = client or redis_client(cfg)
        self.script = self.redis.register_script(keys.lua("item_stats"))
        self.segment_script = self.redis.register_script(keys.lua("segment_stats"))
        self.layout = cfg.redis.layout()

    def write(self, rows: list[tuple[int, str, str, int, int, int, int, int]], pipe=None, shard: int = 0) -> int:
        """rows: (window_end, item_id, category, n_view, n_click, n_cart, n_purchase, n_repeat), into
        the shard's boards. With pipe (a MULTI pipeline), the script is queued there instead of run at once."""
        f, layout = self.cfg.features, self.layout
        argv: list = [f.item_half_life_s * 1000.0, f.item_long_half_life_s * 1000.0, self.MAX_BOARD,
                      keys.TRENDING_CATEGORY_PREFIX, layout.tag(shard)]
        for t, item, category, nv, nc, na, np_, nr in sorted(rows):
            argv += [t, item, category, nv, np_, nr, repr(item_weight(nv, nc, na, np_))]
        if rows:
            boards = (keys.TRENDING_LANDMARK, keys.TRENDING_BOARDS, *keys.ITEM_STATS_BOARDS)
            self.script(keys=[layout.board(b, shard) for b in boards], args=argv, client=pipe)
        return len(rows)

    def write_segments(self, rows: list[tuple[int, str, str, float]], pipe=None, shard: int = 0) -> int:
        """rows: (window_end, segment, item_id, weight), after write's rows of the same batch (their
        landmark is this one's)."""
        argv: list = [self.cfg.features.item_half_life_s * 1000.0, self.MAX_BOARD, keys.TRENDING_SEGMENT_PREFIX,
                      self.layout.tag(shard)]
        for t, segment, item, w in sorted(rows):
            argv += [t, segment, item, repr(w)]
        if rows:
            self.segment_script(keys=[self.layout.board(keys.TRENDING_LANDMARK, shard),
                                      self.layout.board(keys.TRENDING_BOARDS, shard)], args=argv, client=pipe)
        return len(rows)


class BoardReader:
    """The item boards as the candidate source reads them. One Redis: one set of boards, read as
    they are. A Redis Cluster: a set per shard (contract.keys.Layout), each forward-decayed from
    its own landmark; a score is brought to the newest landmark (x 2^((landmark - newest) /
    half-life)) and summed over the shards. A top-n is the top of the sum of each shard's top 2n:
    exact unless an item outside a shard's top 2n there is in the summed top n."""

    def __init__(self, cfg: JobConfig, client) -> None:
        self.client, self.layout = client, cfg.redis.layout()
        self.half_lives = (cfg.features.item_half_life_s * 1000.0, cfg.features.item_long_half_life_s * 1000.0)
        self.factors: dict[int, tuple[float, float]] = {0: (1.0, 1.0)}

    def _each(self, command, board: str) -> list:
        """command(pipe, the shard's name of board) queued for every shard; the replies in shard order."""
        pipe = self.client.pipeline(transaction=False)
        for shard in self.factors:
            command(pipe, self.layout.board(board, shard))
        return pipe.execute()

    def begin(self) -> None:
        """Read the shards' landmarks (once per refresh)."""
        if not self.layout.shards:
            return
        shards = list(self.layout.all_shards())
        pipe = self.client.pipeline(transaction=False)
        for shard in shards:
            pipe.get(self.layout.board(keys.TRENDING_LANDMARK, shard))
        landmarks = {s: float(lm) for s, lm in zip(shards, pipe.execute()) if lm is not None}
        newest = max(landmarks.values(), default=0.0)
        hs, hl = self.half_lives
        self.factors = {s: (2.0 ** ((lm - newest) / hs), 2.0 ** ((lm - newest) / hl)) for s, lm in landmarks.items()}

    def names(self) -> list[str]:
        """Every board registered in any shard, by its name in one Redis."""
        found = self._each(lambda pipe, name: pipe.smembers(name), keys.TRENDING_BOARDS)
        return sorted({b.decode().removeprefix(self.layout.tag(shard))
                       for shard, members in zip(self.factors, found) for b in members})

    def _summed(self, replies: list, long: bool) -> dict[str, float]:
        sums: dict[str, float] = {}
        for f, rows in zip(self.factors.values(), replies):
            for member, score in rows:
                m = member.decode()
                sums[m] = sums.get(m, 0.0) + score * f[long]
        return sums

    def top(self, board: str, n: int, long: bool = False) -> list[tuple[str, float]]:
        if n <= 0:
            return []
        if not self.layout.shards:
            return [(i.decode(), sc) for i, sc in self.client.zrevrange(board, 0, n - 1, withscores=True)]
        replies = self._each(lambda pipe, name: pipe.zrevrange(name, 0, 2 * n - 1, withscores=True), board)
        candidates = sorted({m.decode() for rows in replies for m, _ in rows})
        scores = self.scores(board, candidates, long)
        ranked = sorted(((m, sc) for m, sc in zip(candidates, scores) if sc is not None), key=lambda kv: (-kv[1], kv[0]))
        return ranked[:n]

    def everything(self, board: str, long: bool = False) -> list[tuple[str, float]]:
        if not self.layout.shards:
            return [(i.decode(), sc) for i, sc in self.client.zrange(board, 0, -1, withscores=True)]
        return sorted(self._summed(self._each(lambda pipe, name: pipe.zrange(name, 0, -1, withscores=True), board),
                                   long).items(), key=lambda kv: (kv[1], kv[0]))

    def scores(self, board: str, members: list[str], long: bool = False) -> list[float | None]:
        if not members:
            return []
        if not self.layout.shards:
            return self.client.zmscore(board, members)
        out: list[float | None] = [None] * len(members)
        for f, found in zip(self.factors.values(),
                                     self._each(lambda pipe, name: pipe.zmscore(name, members), board)):
            for n, score in enumerate(found):
                if score is not None:
                    out[n] = (out[n] or 0.0) + score * f[long]
        return out

    def publish_global(self, top: list[tuple[str, float]]) -> None:
        """A cluster's summed trending board under keys.TRENDING, which the lookup services read
        for their popular fallback (one Redis: the board itself is there)."""
        if not self.layout.shards or not top:
            return
        # the same hash slot as TRENDING (its whole name is its hash), so RENAME can swap it in
        staging = f"{keys.TRENDING}:next{{{keys.TRENDING}}}"
        self.client.delete(staging)
        self.client.zadd(staging, dict(top))
        self.client.rename(staging, keys.TRENDING)  # a cluster pipeline refuses RENAME


class CandidateSource:
    """Trending boards and item metadata read from Redis, refreshed every `refresh_s`."""

    def __init__(self, cfg: JobConfig, client) -> None:
        self.cfg = cfg
        self.redis = client
        self.boards = BoardReader(cfg, client)
        self.loaded_at = -1e18
        self.catalog: dict[str, tuple[str, float]] = {}
        self.unknown: set[str] = set()  # items without metadata yet; asked again after a refresh
        self.pool = CandidatePool([], {}, self.catalog, ItemStats(), cfg.features.conversion_prior_weight)

    def refresh(self, force: bool = False, deeper: dict[str, int] | None = None) -> None:
        """Re-read the boards every refresh_s (force: now); deeper: experiment arms' larger
        trending / per_category counts (udfs.arms.largest_counts), which the pool then holds."""
        now = time.monotonic()
        if not force and now - self.loaded_at < self.cfg.candidates.refresh_s:
            return
        c, deeper, boards = self.cfg.candidates, deeper or {}, self.boards
        boards.begin()
        names = boards.names()
        cat_keys = [b for b in names if b.startswith(keys.TRENDING_CATEGORY_PREFIX)]
        seg_keys = [b for b in names if b.startswith(keys.TRENDING_SEGMENT_PREFIX)] if c.per_segment else []
        global_top = boards.top(keys.TRENDING, max(c.trending, deeper.get("trending", 0)))
        boards.publish_global(global_top)
        per_category = max(c.per_category, deeper.get("per_category", 0))
        category_top = {b[len(keys.TRENDING_CATEGORY_PREFIX):]: boards.top(b, per_category) for b in cat_keys}
        segment_top = {b[len(keys.TRENDING_SEGMENT_PREFIX):]: boards.top(b, c.per_segment) for b in seg_keys}
        self.unknown.clear()
        wanted = {i for i, _ in global_top}
        for top in (*category_top.values(), *segment_top.values()):
            wanted.update(i for i, _ in top)
        self.load_meta(wanted)
        self.pool = CandidatePool(global_top, category_top, self.catalog, self._stats(sorted(wanted)),
                                  self.cfg.features.conversion_prior_weight, segment_top)
        self.loaded_at = now

    def _stats(self, items: list[str], boards: bool = True) -> ItemStats:
        """Long-term popularity and conversion/repurchase counts of these items; with boards, also
        the top long-term score and category popularity (a refresh needs them, own_stats not)."""
        b = self.boards
        long_top = b.top(keys.TRENDING_LONG, 1, long=True) if boards else []
        cats = b.everything(keys.TRENDING_CATS) if boards else []
        cats_long = b.everything(keys.TRENDING_CATS_LONG, long=True) if boards else []
        with_all = [*items, keys.ALL_ITEMS]
        long_scores = b.scores(keys.TRENDING_LONG, with_all, long=True)
        views, buys, rebuys = (b.scores(board, with_all, long=True)
                               for board in (keys.TRENDING_VIEWS, keys.TRENDING_BUYS, keys.TRENDING_REBUYS))

        def known(names: list[str], scores: list) -> dict[str, float]:
            return {n: float(s) for n, s in zip(names, scores) if s is not None}

        return ItemStats(
            long=known(items, long_scores),
            long_top=float(long_top[0][1]) if long_top else 0.0,
            categories={c: float(s) for c, s in cats},
            categories_long={c: float(s) for c, s in cats_long},
            views=known(with_all, views),
            buys=known(with_all, buys),
            rebuys=known(with_all, rebuys),
        )

    def own_stats(self, items: set[str]) -> None:
        """Statistics of users' own items that the pool lacks (one read per item and refresh)."""
        missing = self.pool.unasked(items)
        if missing:
            self.pool.add_stats(missing, self._stats(missing, boards=False))

    def load_meta(self, items: set[str]) -> None:
        """One HMGET for every item whose metadata is not known yet."""
        missing = sorted(i for i in items if i not in self.catalog and i not in self.unknown)
        if not missing:
            return
        for item, raw in zip(missing, self.redis.hmget(keys.ITEM_META, missing)):
            if raw is None:
                self.unknown.add(item)
            else:
                meta = keys.ItemMeta.decode(raw)
                self.catalog[item] = (meta.category, meta.price)

    def for_user(self, state: UserState, counts: dict[str, int] | None = None,
                 segments: tuple[str, ...] | list[str] = ()) -> list[Candidate]:
        """The user's candidates with the config's counts, or those an experiment arm changes."""
        c = {**self.cfg.candidates.model_dump(include=set(CANDIDATE_COUNTS)), **(counts or {})}
        return gather_candidates(state, self.pool, c["top_categories"], c["own_history"], c["trending"],
                                 c["per_category"], segments, self.cfg.candidates.per_segment)

    def category_boards(self, state: UserState, counts: dict[str, int] | None = None) -> dict[str, set[str]]:
        """The items for_user takes from each of the user's top categories' boards (the facts
        behind `trending_in:<category>`), in the categories' order."""
        c = {**self.cfg.candidates.model_dump(include=set(CANDIDATE_COUNTS)), **(counts or {})}
        return {cat: {i for i, _ in self.pool.category_top.get(cat, [])[:c["per_category"]]}
                for cat in state.top_categories(c["top_categories"])}

    def segment_boards(self, segments: tuple[str, ...] | list[str]) -> dict[str, set[str]]:
        """The items for_user takes from each of these segments' boards (the facts behind
        `popular_with:<segment>`), in the segments' order."""
        n = self.cfg.candidates.per_segment
        return {s: {i for i, _ in self.pool.segment_top.get(s, [])[:n]} for s in segments} if n else {}


class ExperimentsSource:
    """The experiments `streamrank experiments apply` stored, re-read every refresh_s."""

    def __init__(self, client: redis.Redis, refresh_s: float) -> None:
        self.redis, self.refresh_s = client, refresh_s
        self.spec: dict | None = None
        self.version: str | None = None
        self.loaded_at = -1e18

    def current(self) -> dict | None:
        now = time.monotonic()
        if now - self.loaded_at >= self.refresh_s:
            self.loaded_at = now
            version = self.redis.hget(keys.EXPERIMENTS, "version")
            if version is None:
                self.spec = self.version = None
            elif version.decode() != self.version:
                try:
                    applied = read_experiments(self.redis)
                except ValueError as e:  # a spec this version cannot read: keep ranking as before
                    log.error("experiments version %s not loaded (apply them again with this version's "
                              "`streamrank experiments apply`): %s", version.decode(), e)
                    return self.spec
                self.spec, self.version = applied if applied else (None, None)
                log.info("experiments version %s: %s", self.version,
                         ", ".join(e["name"] for e in (self.spec or {}).get("experiments", [])) or "none")
        return self.spec


SHARED_REPUBLISH_S = 60.0


class RedisStore:
    """The ranker's reads and writes: users' states, the candidate source, and per batch one MULTI
    per shard (one Redis: one) of states, lists, item statistics and the ledger."""

    def __init__(self, cfg: JobConfig, client=None) -> None:
        self.cfg = cfg
        self.redis = client or redis_client(cfg)
        self.shards = Shards(cfg, self.redis)
        self.key_layout = self.shards.layout
        self.guarded_set = self.redis.register_script(keys.lua("guarded_set"))
        self.candidates = CandidateSource(cfg, self.redis)
        self.trending = TrendingWriter(cfg, self.redis)
        self.experiments = ExperimentsSource(self.redis, cfg.scoring.experiments_refresh_s)
        self.producer: KafkaProducer | None = None  # webhook events, made at the first
        self.stored_layout = json.dumps(stored_layout(cfg))
        self.shared_published = -SHARED_REPUBLISH_S  # monotonic s

    def shard_of(self, user_id: str) -> int:
        return self.key_layout.shard(user_id)

    def _publish_shared(self) -> None:
        """The state layout (contract.keys.STATE_LAYOUT) and the dictionaries this job packs values
        with, where readers find them (lookupd has no files); again now and then, in case Redis
        lost them (a flush, a restore). SET NX: a layout recorded first stays."""
        now = time.monotonic()
        if now - self.shared_published < SHARED_REPUBLISH_S:
            return
        self.shared_published = now
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(keys.STATE_LAYOUT, self.stored_layout, nx=True)
        for kind in compact.KINDS:
            dict_id = compact.current(kind)
            pipe.set(compact.dictionary_key(dict_id), compact.dictionaries()[dict_id][1], nx=True)
        pipe.execute()

    def _mget(self, names: list[str]) -> list:
        # a cluster's MGET cannot span slots: redis-py splits it by slot
        return self.redis.mget_nonatomic(names) if self.key_layout.shards else self.redis.mget(names)

    def read_states(self, users: list[str]) -> dict[str, UserState]:
        raw_states = self._mget([self.key_layout.feat(u) for u in users])
        return {u: UserState.decode(r) for u, r in zip(users, raw_states)}

    def read_tops(self, users: list[str], n: int) -> dict[str, list[str]]:
        raws = self._mget([self.key_layout.rec(u) for u in users])
        return {u: [i.item_id for i in keys.RecList.decode(raw).items[:n]] for u, raw in zip(users, raws) if raw}

    def emit(self, events: list[WebhookEvent]) -> None:
        if self.producer is None:
            self.producer = KafkaProducer(bootstrap_servers=self.cfg.kafka.bootstrap_servers, acks="all",
                                          retries=10, linger_ms=5)
        sent = [self.producer.send(self.cfg.webhooks.topic, key=e.user_id.encode("utf-8", "surrogatepass"),
                                   value=e.encode()) for e in events]
        self.producer.flush(timeout=30)
        for future in sent:  # an event Kafka refused fails the batch: Flink retries it from the checkpoint
            future.get(timeout=30)

    def report_drift(self, report: DriftReport) -> None:
        worst = report.max_feature
        self.redis.hset(keys.DRIFT, mapping={
            "model_version": report.model_version, "window_start_ms": report.window_start_ms,
            "window_end_ms": report.window_end_ms, "rows": report.rows, "psi": json.dumps(report.psi),
            "max_feature": worst, "max_psi": report.psi[worst], "alert": int(report.alert)})

    def write(self, batches: dict[int, ShardBatch], out: dict[str, UserWrite]) -> None:
        """Per shard, one MULTI: its item statistics, its users' states (with their profiles) and
        lists, and its ledger change together or not at all (a replayed window finds its state
        already applied and adds nothing anywhere). A user whose history was erased, or who opted
        out, loses the list (the service falls back). In a Redis Cluster each shard's MULTI is on
        its slot's master, and WAITs for its replicas (redis.cluster.wait_replicas)."""
        ttl, layout = self.cfg.redis.rec_ttl_s, self.key_layout
        self._publish_shared()
        users: dict[int, list[str]] = {}
        for u in out:
            users.setdefault(layout.shard(u), []).append(u)
        for shard in sorted(set(batches) | set(users)):
            conn = self.shards.connection(shard)
            pipe = conn.pipeline(transaction=True)
            batch = batches.get(shard)
            if batch is not None:
                self.trending.write(batch.items, pipe, shard)
                self.trending.write_segments(list(batch.segment_items), pipe, shard)
                count_in_ledger(pipe, batch.ledger.interactions(), layout.ledger(shard))
                for action, n in batch.ledger.controls().items():
                    if n:
                        pipe.hincrby(layout.control(shard), action, n)
            for u in users.get(shard, ()):
                s, named, rec = out[u]
                if s is not None:
                    self.guarded_set(keys=[layout.feat(u)], args=[s.feature_ts, pack("feat", s.feature_ts, s.encode()), ttl],
                                     client=pipe)
                # profile and list: over the final state and the early events (udfs.speculation), so
                # their guard is their own newest event
                self.guarded_set(keys=[layout.profile(u)],
                                 args=[named.feature_ts, pack("profile", named.feature_ts, named.encode()), ttl],
                                 client=pipe)
                if rec is not None:
                    self.guarded_set(keys=[layout.rec(u)], args=[rec.feature_ts, pack("rec", rec.feature_ts, rec.encode()), ttl],
                                     client=pipe)
                elif s is not None and not s.personalized():
                    pipe.delete(layout.rec(u))
            pipe.execute()
            self.shards.replicated(conn)


def stored_layout(cfg: JobConfig) -> dict[str, object]:
    """What STATE_LAYOUT records: the state's shape (udfs.features.state_layout), and in a Redis
    Cluster the shard count, which decides where every user's keys are."""
    out = state_layout(cfg.features)
    if cfg.redis.cluster is not None:
        out["redis.cluster.shards"] = cfg.redis.cluster.shards
    return out


def write_item_meta(client: redis.Redis, rows: list[tuple[str, str, float, bool]]) -> int:
    """rows: (item_id, category, price, available) from the `items` catalog topic, in its order;
    the last record of an item says whether it is served (the lookup services poll the set)."""
    if rows:
        available = {i: a for i, _, _, a in rows}
        pipe = client.pipeline(transaction=False)
        pipe.hset(keys.ITEM_META, mapping={i: keys.ItemMeta(c, p).encode() for i, c, p, _ in rows})
        if gone := [i for i, a in available.items() if not a]:
            pipe.sadd(keys.UNAVAILABLE_ITEMS, *gone)
        if back := [i for i, a in available.items() if a]:
            pipe.srem(keys.UNAVAILABLE_ITEMS, *back)
        pipe.execute()
    return len(rows)


def probe_client(cfg: JobConfig) -> redis.Redis:
    """A client for the checks before the job starts: a Redis that does not answer in 3 s is reported, not waited for."""
    return connect(cfg.redis, socket_timeout=3, socket_connect_timeout=3)


def check_state_layout(cfg: JobConfig) -> None:
    """Stop before the start when the users' states in Redis were written with another shape than
    cfg gives them (ConfigError naming each field): the job would misread them silently."""
    try:
        client = probe_client(cfg)
        stored = client.get(keys.STATE_LAYOUT)
    except redis.RedisError:
        return  # warn_if_redis_forgets says so; the job fails over until Redis answers
    if stored is None:
        if next(client.scan_iter(match=keys.feat_key("*"), count=1000), None) is not None:
            log.warning("the users' states in Redis %s:%d were written before jobs recorded their layout: this "
                        "config's is recorded with the next write. If its windows, slices, memory half-lives or "
                        "dedup horizon differ from the ones they were written with, stop now and start over an "
                        "empty Redis database", cfg.redis.host, cfg.redis.port)
        return
    old, new = json.loads(stored), stored_layout(cfg)
    changes = layout_changes(old, new)
    if changes:
        named = "; ".join(f"{k} was {_short(old.get(k))}, the config says {_short(new.get(k))} ({why})"
                          for k, why in changes.items())
        raise ConfigError(
            f"the users' states in Redis {cfg.redis.host}:{cfg.redis.port} have another shape "
            f"than this config gives them: {named}. Keep the old values, or run the changed job from the start "
            f"(no savepoint) over an empty Redis database; `streamrank config diff OLD NEW` tells such changes apart")


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def warn_if_redis_forgets(cfg: JobConfig) -> None:
    """Flink's checkpoints hold the Kafka offsets, Redis the features and the ledger they made: a
    Redis without an append-only file comes back empty from a restart while the job reads on from
    its offsets, and what it had folded is gone without an error. Say so before the job starts."""
    try:
        aof = probe_client(cfg).info("persistence").get("aof_enabled")
    except redis.RedisError as e:
        log.warning("Redis %s:%d does not answer (%s); the job will fail over until it does",
                    cfg.redis.host, cfg.redis.port, e)
        return
    if aof == 0:
        log.warning("Redis %s:%d keeps the features and the ledger in memory only (aof_enabled:0): if it "
                    "restarts they are lost, while the job reads on from its checkpointed offsets. Turn on "
                    "`appendonly yes` (appendfsync everysec or always), as `streamrank stack up` does",
                    cfg.redis.host, cfg.redis.port)
    try:
        memory = probe_client(cfg).info("memory")
    except redis.RedisError:
        return
    if problem := eviction_problem(int(memory.get("maxmemory", 0)), str(memory.get("maxmemory_policy", "")),
                                   cfg.redis.rec_ttl_s):
        log.warning("Redis %s:%d: %s", cfg.redis.host, cfg.redis.port, problem)


def eviction_problem(maxmemory: int, policy: str, user_ttl_s: int) -> str | None:
    """What is wrong with Redis's eviction for the job, or None. The per-user values (rec, feat,
    profile) carry redis.rec_ttl_s, refreshed at every write, and nothing else the job keeps does
    (the ledger, the boards, the dictionaries): a volatile-* policy can only take users, and
    volatile-ttl takes the longest idle first. An allkeys-* policy can take the ledger or a board."""
    if not maxmemory:
        return None
    if policy.startswith("allkeys-"):
        return (f"maxmemory-policy {policy} can evict the ledger, the item boards and the codec dictionaries, "
                "not only users; set `maxmemory-policy volatile-ttl` (evicts the longest-idle users first)")
    if policy.startswith("volatile-") and not user_ttl_s:
        return (f"maxmemory-policy {policy} evicts only keys with a TTL, and redis.rec_ttl_s = 0 gives the users "
                "none: at maxmemory every write fails; set redis.rec_ttl_s (e.g. 604800)")
    if policy == "noeviction":
        return ("maxmemory-policy noeviction: at maxmemory the job's writes fail and it restarts from its "
                "checkpoint until memory is freed; `volatile-ttl` evicts the longest-idle users instead")
    return None


class EngagementStore:
    """The engagement job's totals per (experiment, arm, placement, model_version) in Redis
    (contract.keys engagement:*), one pipeline per batch. Every addition goes through a marker
    (contract/lua/once.lua), so a record Kafka delivers twice, or one the job reads again after a
    restart from its checkpoint, counts once: an exposure by its request id, a click once per
    exposure, a purchase's credit by its event id."""

    def __init__(self, client: redis.Redis, window_ms: int) -> None:
        self.redis = client
        self.once = client.register_script(keys.lua("once"))
        # an interaction can touch an exposure until window_ms after it was served; markers outlive
        # that by as much again, for records the job reads late (a backlog, a restart)
        self.marker_ttl_ms = 2 * window_ms + 3_600_000

    def _once(self, pipe, marker: str, adds: list[tuple[str, str, int]]) -> None:
        """Queue one script call: the (hash, field, amount) additions, made only if marker is new."""
        hashes = list(dict.fromkeys(h for h, _, _ in adds))
        args: list = [self.marker_ttl_ms]
        for h, f, n in adds:
            args += [hashes.index(h) + 2, f, n]
        self.once(keys=[marker, *hashes], args=args, client=pipe)

    def _index(self, pipe, groups: set[Group]) -> None:
        for g in groups:
            pipe.hsetnx(keys.ENGAGEMENT_GROUPS, keys.engagement_key(g), json.dumps(g))

    def add_exposures(self, rows: list[tuple[str, list[Group], list[str]]]) -> list[int]:
        """rows: (user, the exposures' groups, their request ids); returns, per row, how many were new."""
        pipe = self.redis.pipeline(transaction=False)
        calls = 0
        for _, groups, request_ids in rows:
            for rid in request_ids:
                self._once(pipe, keys.exposed_key(rid), [(keys.engagement_key(g), "exposures", 1) for g in groups])
                calls += 1
        for user, groups, _ in rows:
            for g in groups:
                pipe.sadd(keys.engagement_users_key(g), user)
        self._index(pipe, {g for _, groups, _ in rows for g in groups})
        replies = iter(pipe.execute()[:calls])
        return [sum(next(replies) for _ in request_ids) for _, _, request_ids in rows]

    def add_outcomes(self, settled: list[tuple[str, list[tuple[Shares, list[Group]]]]]) -> tuple[list[bool], list[bool]]:
        """Per action, its event id and its shares with each touched exposure's groups. Returns,
        per share, whether it was the exposure's first click, and per action whether it was new
        (a purchase's credit is added once per event id)."""
        pipe = self.redis.pipeline(transaction=False)
        purchases = []  # per action: whether it queued a credit call (after its click calls)
        for event_id, shares in settled:
            for s, groups in shares:
                if s.click:
                    self._once(pipe, keys.clicked_key(s.touch.request_id),
                               [(keys.engagement_key(g), "clicks", 1) for g in groups])
            credit = [(keys.engagement_key(g), f"{kind}_{m}", n) for s, groups in shares if not s.click
                      for g in groups for kind, units in (("conversions", s.conversions), ("revenue", s.revenue))
                      for m, n in units.items()]
            purchases.append(any(not s.click for s, _ in shares))
            if purchases[-1]:  # marked even when no group gets its credit
                self._once(pipe, keys.settled_key(event_id), credit)
        self._index(pipe, {g for _, shares in settled for _, groups in shares for g in groups})
        replies = iter(pipe.execute())
        first_click, new_action = [], []
        for (_, shares), purchase in zip(settled, purchases, strict=True):
            clicks = [bool(next(replies)) for s, _ in shares if s.click]
            first_click += clicks
            new_action.append(bool(next(replies)) if purchase else any(clicks))
        return first_click, new_action
