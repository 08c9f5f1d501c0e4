"""Batch ranking: window deltas in, features and top-K lists written to Redis.

One call handles a whole Arrow batch from Flink: one pipelined read of the users' states, one
ONNX run over every (user, candidate) row, one pipelined guarded write.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import redis

from contract import keys
from contract.config import JobConfig
from udfs.candidates import ALL, Candidate, CandidatePool, ItemStats, gather_candidates, item_weight
from udfs.drift import DriftMonitor, DriftReport
from udfs.features import (Event, Ledger, UserState, WindowDelta, apply_window, feature_names, memory_items,
                           parse_events, shared_events, user_item_matrix)
from udfs.scorer import ModelWatcher, OnnxScorer

log = logging.getLogger(__name__)

TRENDING_LANDMARK = "trending:landmark"
TRENDING_BOARDS = "trending:boards"
LONG_KEY, CATS_KEY, CATS_LONG_KEY = "trending:long", "trending:cats", "trending:cats:long"
VIEWS_KEY, BUYS_KEY, REBUYS_KEY = "trending:views", "trending:buys", "trending:rebuys"

# ARGV: short and long half-life (ms), max board size, then (t, item, category, views, purchases,
# repeat purchases, weight) per item window, in time order. Same math as udfs.candidates.TrendingBoards.add; all
# boards share the landmark in KEYS[1]; KEYS[2] lists the boards for rescaling. The per-category
# boards and the '__all__' members get one ZINCRBY per window end and category, with the window's
# items summed first (the sums differ from adding item by item only in rounding, ~1e-16), and each
# board is registered once per call: ZINCRBY and SADD per item window were most of Redis's work.
ITEM_STATS_LUA = """
local hs, hl, maxn = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local lm = tonumber(redis.call('GET', KEYS[1]) or '')
local function islong(b)
  return string.sub(b, -5) == ':long' or b == 'trending:views' or b == 'trending:buys'
    or b == 'trending:rebuys'
end
local function add(key, amount, member)
  if amount > 0 then redis.call('ZINCRBY', key, string.format('%.17g', amount), member) end
end
local cats, cats_long, views_all, buys_all, rebuys_all = {}, {}, 0, 0, 0
local function flush()
  for c, a in pairs(cats) do add('trending:cats', a, c) end
  for c, a in pairs(cats_long) do add('trending:cats:long', a, c) end
  add('trending:views', views_all, '__all__')
  add('trending:buys', buys_all, '__all__')
  add('trending:rebuys', rebuys_all, '__all__')
  cats, cats_long, views_all, buys_all, rebuys_all = {}, {}, 0, 0, 0
end
local registered, current = {}, nil
if #ARGV >= 4 then
  redis.call('SADD', KEYS[2], 'trending', 'trending:long', 'trending:cats', 'trending:cats:long',
             'trending:views', 'trending:buys', 'trending:rebuys')
end
for i = 4, #ARGV, 7 do
  local t = tonumber(ARGV[i])
  if t ~= current then
    flush()  -- before a rescale: the sums were scaled to the landmark they were made with
    current = t
  end
  if not lm then lm = t; redis.call('SET', KEYS[1], t) end
  if (t - lm) / hs > 256 then
    for _, b in ipairs(redis.call('SMEMBERS', KEYS[2])) do
      local f = 2 ^ (-(t - lm) / (islong(b) and hl or hs))
      local all = redis.call('ZRANGE', b, 0, -1, 'WITHSCORES')
      for j = 1, #all, 2 do
        redis.call('ZADD', b, string.format('%.17g', tonumber(all[j + 1]) * f), all[j])
      end
    end
    lm = t; redis.call('SET', KEYS[1], t)
  end
  local ms, ml = 2 ^ ((t - lm) / hs), 2 ^ ((t - lm) / hl)
  local item, cat = ARGV[i + 1], ARGV[i + 2]
  local nv, np, nr, w = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5]), tonumber(ARGV[i + 6])
  local ck = 'trending:cat:' .. cat
  if not registered[ck] then
    registered[ck] = true
    redis.call('SADD', KEYS[2], ck)
  end
  add('trending', w * ms, item)
  add(ck, w * ms, item)
  add('trending:long', w * ml, item)
  cats[cat] = (cats[cat] or 0) + w * ms
  cats_long[cat] = (cats_long[cat] or 0) + w * ml
  add('trending:views', nv * ml, item)
  add('trending:buys', np * ml, item)
  add('trending:rebuys', nr * ml, item)
  views_all = views_all + nv * ml
  buys_all = buys_all + np * ml
  rebuys_all = rebuys_all + nr * ml
end
flush()
for _, b in ipairs({'trending', 'trending:long', 'trending:views', 'trending:buys', 'trending:rebuys'}) do
  redis.call('ZREMRANGEBYRANK', b, 0, -(maxn + 1))
end
return 1
"""


# KEYS[1] the ledger hash, KEYS[2] the high-water hash; ARGV: (partition key, offset, ledger field)
# per rejected record, in the order of their partition. A record at or below its partition's
# high-water offset was counted before a failure and is being replayed from the checkpoint.
COUNT_REJECTED_LUA = """
local hw, counts = {}, {}
for i = 1, #ARGV, 3 do
  local p, off, f = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  if hw[p] == nil then hw[p] = tonumber(redis.call('HGET', KEYS[2], p) or '-1') end
  if off > hw[p] then
    hw[p] = off
    counts[f] = (counts[f] or 0) + 1
  end
end
local counted = 0
for p, off in pairs(hw) do redis.call('HSET', KEYS[2], p, string.format('%d', off)) end
for f, n in pairs(counts) do
  redis.call('HINCRBY', KEYS[1], f, n)
  counted = counted + n
end
return counted
"""


class RejectedCounter:
    """Counts DLQ'd and late records into the ledger exactly once, replays included."""

    def __init__(self, client: redis.Redis) -> None:
        self.script = client.register_script(COUNT_REJECTED_LUA)

    def count(self, rows: list[tuple[str, int, int, str]]) -> int:
        """rows: (topic, partition, offset, 'dlq' | 'late'); returns how many were new."""
        args: list = []
        for topic, partition, offset, field in rows:
            args += [f"{topic}:{partition}", offset, field]
        return int(self.script(keys=[keys.LEDGER, keys.REJECTED_OFFSETS], args=args)) if rows else 0


def count_in_ledger(pipe, counts: dict[str, int]) -> None:
    """Queue HINCRBYs of the ledger hash (used/duplicate/opted_out/dlq/late) on a pipeline."""
    for name, n in counts.items():
        if n:
            pipe.hincrby(keys.LEDGER, str(name), int(n))


def redis_client(cfg: JobConfig) -> redis.Redis:
    return redis.Redis(host=cfg.redis.host, port=cfg.redis.port, socket_timeout=10)


class TrendingWriter:
    """Adds per-item window counts to the item statistics in Redis (one script call per batch)."""

    MAX_BOARD = 5000

    def __init__(self, cfg: JobConfig, client: redis.Redis | None = None) -> None:
        self.cfg = cfg
        self.redis = client or redis_client(cfg)
        self.script = self.redis.register_script(ITEM_STATS_LUA)

    def write(self, rows: list[tuple[int, str, str, int, int, int, int, int]], pipe=None) -> int:
        """rows: (window_end, item_id, category, n_view, n_click, n_cart, n_purchase, n_repeat). With pipe
        (a MULTI pipeline), the script is queued there instead of run at once."""
        f = self.cfg.features
        argv: list = [f.item_half_life_s * 1000.0, f.item_long_half_life_s * 1000.0, self.MAX_BOARD]
        for t, item, category, nv, nc, na, np_, nr in sorted(rows):
            argv += [t, item, category, nv, np_, nr, repr(item_weight(nv, nc, na, np_))]
        if rows:
            self.script(keys=[TRENDING_LANDMARK, TRENDING_BOARDS], args=argv, client=pipe)
        return len(rows)


ITEM_COUNT_SLOT = {"view": 0, "click": 1, "add_to_cart": 2, "purchase": 3}


def item_window_counts(windows: list[tuple[int, list[Event], list[tuple[str, str]]]]
                       ) -> list[tuple[int, str, str, int, int, int, int, int]]:
    """windows: (window end, its parsed events, its repeat purchases from apply_window). Per
    (window end, item, category): consented views, clicks, carts and purchases (duplicates
    included, as models.offline counts them), and repeat purchases (used events only).
    Partial counts of one item window from several batches or subtasks add up in Redis: the
    statistics are linear in them."""
    counts: dict[tuple[int, str, str], list[int]] = {}
    for end, events, rebought in windows:
        for e in events:
            if e.consent:
                counts.setdefault((end, e.item_id, e.category), [0, 0, 0, 0, 0])[ITEM_COUNT_SLOT[e.type]] += 1
        for item, category in rebought:
            counts.setdefault((end, item, category), [0, 0, 0, 0, 0])[4] += 1
    return [(t, i, c, *n) for (t, i, c), n in counts.items()]


class CandidateSource:
    """Trending boards and item metadata read from Redis, refreshed every `refresh_s`."""

    def __init__(self, cfg: JobConfig, client: redis.Redis) -> None:
        self.cfg = cfg
        self.redis = client
        self.loaded_at = -1e18
        self.catalog: dict[str, tuple[str, float]] = {}
        self.unknown: set[str] = set()  # items without metadata yet; asked again after a refresh
        self.pool = CandidatePool([], {}, self.catalog, ItemStats(), cfg.features.conversion_prior_weight)

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.loaded_at < self.cfg.candidates.refresh_s:
            return
        c = self.cfg.candidates
        boards = [b.decode() for b in self.redis.smembers(TRENDING_BOARDS)]
        cat_keys = [b for b in boards if b.startswith("trending:cat:")]
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrevrange(keys.TRENDING, 0, c.trending - 1, withscores=True)
        for b in cat_keys:
            pipe.zrevrange(b, 0, c.per_category - 1, withscores=True)
        res = pipe.execute()
        global_top = [(i.decode(), s) for i, s in res[0]]
        category_top = {
            b[len("trending:cat:"):]: [(i.decode(), s) for i, s in r] for b, r in zip(cat_keys, res[1:])
        }
        self.unknown.clear()
        wanted = {i for i, _ in global_top}
        for top in category_top.values():
            wanted.update(i for i, _ in top)
        self.load_meta(wanted)
        self.pool = CandidatePool(global_top, category_top, self.catalog, self._stats(sorted(wanted)),
                                  self.cfg.features.conversion_prior_weight)
        self.loaded_at = now

    def _stats(self, items: list[str], boards: bool = True) -> ItemStats:
        """Long-term popularity and conversion/repurchase counts of these items; with boards, also
        the top long-term score and category popularity (a refresh needs them, own_stats not)."""
        pipe = self.redis.pipeline(transaction=False)
        if boards:
            pipe.zrevrange(LONG_KEY, 0, 0, withscores=True)
            pipe.zrange(CATS_KEY, 0, -1, withscores=True)
            pipe.zrange(CATS_LONG_KEY, 0, -1, withscores=True)
        with_all = [*items, ALL]
        pipe.zmscore(LONG_KEY, with_all)
        pipe.zmscore(VIEWS_KEY, with_all)
        pipe.zmscore(BUYS_KEY, with_all)
        pipe.zmscore(REBUYS_KEY, with_all)
        res = pipe.execute()
        long_top, cats, cats_long = res[:3] if boards else ([], [], [])
        long_scores, views, buys, rebuys = res[-4:]

        def known(names: list[str], scores: list) -> dict[str, float]:
            return {n: float(s) for n, s in zip(names, scores) if s is not None}

        return ItemStats(
            long=known(items, long_scores),
            long_top=float(long_top[0][1]) if long_top else 0.0,
            categories={c.decode(): float(s) for c, s in cats},
            categories_long={c.decode(): float(s) for c, s in cats_long},
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

    def for_user(self, state: UserState) -> list[Candidate]:
        c = self.cfg.candidates
        return gather_candidates(state, self.pool, c.top_categories, c.own_history)


class BatchRanker:
    """Applies window deltas to user states in Redis, scores candidates, writes top-K lists."""

    def __init__(self, cfg: JobConfig, scorer: OnnxScorer | ModelWatcher | None,
                 client: redis.Redis | None = None) -> None:
        self.cfg = cfg
        self.scorer = scorer
        self.redis = client or redis_client(cfg)
        self.guarded_set = self.redis.register_script(keys.GUARDED_SET_LUA)
        self.candidates = CandidateSource(cfg, self.redis)
        self.trending = TrendingWriter(cfg, self.redis)
        self.drift: DriftMonitor | None = None
        self.last_drift: DriftReport | None = None

    def _drift_monitor(self, scorer: OnnxScorer) -> DriftMonitor:
        """One monitor per model version: a new version brings its own reference distributions."""
        if self.drift is None or self.drift.version != scorer.version:
            s = self.cfg.scoring
            self.drift = DriftMonitor(scorer.card.raw, feature_names(self.cfg.features), s.drift_window_s,
                                      s.drift_min_rows, s.drift_threshold)
        return self.drift

    def _report_drift(self, report: DriftReport) -> None:
        self.last_drift = report
        worst = report.max_feature
        self.redis.hset(keys.DRIFT, mapping={
            "model_version": report.model_version, "window_start_ms": report.window_start_ms,
            "window_end_ms": report.window_end_ms, "rows": report.rows, "psi": json.dumps(report.psi),
            "max_feature": worst, "max_psi": report.psi[worst], "alert": int(report.alert)})
        if report.alert:
            drifted = {n: v for n, v in report.psi.items() if v > report.threshold}
            log.warning("DRIFT ALERT model %s: PSI above %.2f for %s over %d rows (window ending %d)",
                        report.model_version, report.threshold, drifted, report.rows, report.window_end_ms)

    def rank(self, deltas: list[WindowDelta]) -> Ledger:
        """Fold the windows into the users' states, rank, write; returns what was counted."""
        ledger = Ledger()
        if not deltas:
            return ledger
        self.candidates.refresh()
        users = sorted({d.user_id for d in deltas})
        raw_states = self.redis.mget([keys.feat_key(u) for u in users])
        states = {u: UserState.decode(r) for u, r in zip(users, raw_states)}
        fresh: list[tuple[int, list[Event], list]] = []  # windows that are not replays after a restart
        for d in sorted(deltas, key=lambda d: d.window_end):
            events = parse_events(d.events)
            rebought: list[tuple[str, str]] = []  # filled by apply_window below
            if d.window_end > states[d.user_id].window_end:  # else only after a restart: see apply_window
                fresh.append((d.window_end, shared_events(events, states[d.user_id].opted_out), rebought))
            states[d.user_id], counted = apply_window(states[d.user_id], d, self.cfg.features, events, rebought)
            ledger.add(counted)
        items = item_window_counts(fresh)
        users = [u for u in users if states[u].feature_ts > 0]  # only duplicates/opted-out so far
        if self.scorer is None:
            self._write(ledger, {u: (states[u], None) for u in users}, items)
            return ledger
        out: dict[str, tuple[UserState, keys.RecList | None]] = {
            u: (states[u], None) for u in users if not states[u].personalized()}  # erased: lists deleted
        users = [u for u in users if u not in out]
        scorer = self.scorer.current()  # one model version for the whole batch
        own = {i for u in users for i in memory_items(states[u], self.cfg.candidates.own_history)}
        self.candidates.load_meta(own)
        self.candidates.own_stats(own)

        blocks: list[np.ndarray] = []
        spans: list[tuple[str, list[Candidate], int, int]] = []
        start = 0
        for u in users:
            s = states[u]
            cands = self.candidates.for_user(s)
            blocks.append(user_item_matrix(s, s.window_end, self.cfg.features, cands))
            spans.append((u, cands, start, start + len(cands)))
            start += len(cands)
        matrix = np.concatenate(blocks) if start else np.zeros((0, len(feature_names(self.cfg.features))), np.float32)
        scores = scorer.score(matrix)
        ends = [d.window_end for d in deltas]
        report = self._drift_monitor(scorer).observe(matrix, min(ends), max(ends))
        if report is not None:
            self._report_drift(report)

        now_ms = int(time.time() * 1000)
        k = self.cfg.scoring.top_k
        for u, cands, a, b in spans:
            s = states[u]
            user_scores = scores[a:b]
            order = np.argsort(-user_scores, kind="stable")[:k]
            out[u] = (s, keys.RecList(
                items=[keys.ScoredItem(cands[i].item_id, float(user_scores[i]), cands[i].category) for i in order],
                model_version=scorer.version,
                feature_ts=s.feature_ts,
                written_at=now_ms,
            ))
        self._write(ledger, out, items)
        return ledger

    def _write(self, ledger: Ledger, out: dict[str, tuple[UserState, keys.RecList | None]],
               items: list[tuple[int, str, str, int, int, int, int, int]]) -> None:
        """One MULTI: item statistics, states, lists and the ledger change together or not at all
        (a replayed window finds its state already applied and adds nothing anywhere). A user
        whose history was erased, or who opted out, loses the list (the service falls back)."""
        ttl = self.cfg.redis.rec_ttl_s
        pipe = self.redis.pipeline(transaction=True)
        self.trending.write(items, pipe)
        count_in_ledger(pipe, ledger.interactions())
        for action, n in ledger.controls().items():
            if n:
                pipe.hincrby(keys.CONTROL, action, n)
        for u, (s, rec) in out.items():
            self.guarded_set(keys=[keys.feat_key(u)], args=[s.feature_ts, s.encode(), ttl], client=pipe)
            if rec is not None:
                self.guarded_set(keys=[keys.rec_key(u)], args=[s.feature_ts, rec.encode(), ttl], client=pipe)
            elif not s.personalized():
                pipe.delete(keys.rec_key(u))
        pipe.execute()


def write_item_meta(client: redis.Redis, rows: list[tuple[str, str, float]]) -> int:
    """rows: (item_id, category, price) from the `items` catalog topic."""
    if rows:
        client.hset(keys.ITEM_META, mapping={i: keys.ItemMeta(c, p).encode() for i, c, p in rows})
    return len(rows)
