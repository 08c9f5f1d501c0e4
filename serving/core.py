"""The lookup core both front ends share (gRPC in serving.server, HTTP/GraphQL in
serving.gateway): asyncio reads from Redis (one MGET per call, batch calls included), a local
cache of popular lists, a circuit breaker, deadlines, and Prometheus metrics.

A call never waits on Redis longer than min(redis_timeout_s, the caller's remaining deadline minus
a small reserve); when Redis is slow, down or behind an open breaker, recommendations come from the
popular-list cache, marked fallback with reason `store_unavailable`."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

from contract import keys
from contract.editorial import decode_spec as editorial_spec
from contract.experiments import APPLIED_FIELDS, assign, decode_applied
from contract.exposures import new_request_id
from contract.serving_config import ServingConfig
from serving import lookup
from serving.exposures import ExposureLog, exposure_record
from serving.resp import PipelinedRedis, RedisReplyError, RedisUnavailable

log = logging.getLogger(__name__)

# time kept back from the caller's deadline for building and sending the answer
DEADLINE_RESERVE_S = 0.005

REQUESTS = Counter("streamrank_serving_requests_total", "Lookup calls by interface, method and status code",
                   ["interface", "method", "code"])
LATENCY = Histogram("streamrank_serving_request_seconds", "Lookup call latency in the service",
                    ["interface", "method"],
                    buckets=(.0002, .0005, .001, .002, .003, .005, .01, .025, .05, .1, .25, .5, 1.0))
FALLBACKS = Counter("streamrank_serving_fallbacks_total", "Answers that are not personalized, by reason", ["reason"])
REDIS_ERRORS = Counter("streamrank_serving_redis_errors_total", "Failed or timed-out Redis reads", ["kind"])
BREAKER_OPEN = Gauge("streamrank_serving_breaker_open", "1 while the Redis circuit breaker is open")
CACHE_AGE = Gauge("streamrank_serving_popular_cache_age_seconds", "Age of the popular-list cache")


class StoreUnavailable(RuntimeError):
    """Redis could not answer in time and there is no fallback for this call (UNAVAILABLE); the
    message is the one callers see, on every front end."""

    def __init__(self, why: str) -> None:
        super().__init__(f"recommendation store unavailable ({why}); retry")


class CallerDeadline(StoreUnavailable):
    """The caller's own deadline left too little time to read Redis (DEADLINE_EXCEEDED where there
    is no fallback). Not a Redis failure: it never counts toward the breaker, so no client can open
    it for everyone by calling with tiny deadlines."""

    def __init__(self, budget_s: float) -> None:
        RuntimeError.__init__(self, f"the caller's deadline left {budget_s * 1000:.0f} ms to read Redis; "
                                    "call with a longer deadline")


class Breaker:
    """Consecutive-failure circuit breaker: open after `failures` in a row, for `reset_s`; then
    half-open, where one trial call closes it again (or re-opens it). Single event loop, so no locks."""

    def __init__(self, failures: int, reset_s: float, clock=time.monotonic) -> None:
        self.failures, self.reset_s, self.clock = failures, reset_s, clock
        self.count = 0
        self.opened_at: float | None = None
        self.trial = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.reset_s else "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self.trial:
            self.trial = True
            return True
        return False

    def success(self) -> None:
        if self.opened_at is not None:
            log.info("redis circuit breaker closed: redis answers again")
        self.count, self.opened_at, self.trial = 0, None, False
        BREAKER_OPEN.set(0)

    def abandon(self) -> None:
        """A call that got past allow() ended with neither outcome (the caller's deadline, or a
        cancellation): it counts nothing, and a half-open trial it held is free again, else the
        breaker would wait forever for its verdict."""
        self.trial = False

    def failure(self) -> None:
        self.count += 1
        self.trial = False
        if self.count >= self.failures:
            if self.opened_at is None:
                log.warning("redis circuit breaker open after %d failures; answering from the cache for %.1fs",
                            self.count, self.reset_s)
            self.opened_at = self.clock()
            BREAKER_OPEN.set(1)


def read_budget(redis_timeout_s: float, remaining_s: float | None, reserve_s: float = DEADLINE_RESERVE_S) -> float:
    """How long one Redis read may take: redis_timeout_s, cut to the caller's remaining time less the
    reserve kept for answering, never negative; remaining_s None: the call has no deadline."""
    budget = redis_timeout_s
    if remaining_s is not None:
        budget = min(budget, remaining_s - reserve_s)
    return max(budget, 0.0)


@dataclass
class PopularCache:
    items: list[keys.ScoredItem]
    loaded_at: float  # monotonic; 0 = never loaded


class LookupService:
    """Answers lookups from Redis; one instance per event loop (it owns an asyncio client)."""

    def __init__(self, cfg: ServingConfig) -> None:
        self.cfg = cfg
        self.redis = PipelinedRedis(cfg.redis, cfg.redis_timeout_s)
        self.breaker = Breaker(cfg.breaker.failures, cfg.breaker.reset_s)
        self.pseudonym_keys = cfg.privacy.keys()  # current first; an unset key variable stops the start
        self.popular = PopularCache([], 0.0)
        self.experiments: dict | None = None  # the applied spec (contract.experiments), None: none
        self.experiments_version: str | None = None
        self.editorial = lookup.NO_EDITORIAL  # the rules `streamrank rules apply` stored, unavailable items
        self.exposures = ExposureLog(cfg.exposures) if cfg.exposures.enabled else None
        self._refreshers: list[asyncio.Task] = []

    async def start(self) -> None:
        """Loads the popular cache and the experiments (if Redis answers) and keeps them fresh in
        the background."""
        await self.refresh_popular()
        await self.refresh_experiments()
        await self.refresh_editorial()
        self._refreshers = [asyncio.create_task(self._refresh_loop(), name="popular-cache"),
                            asyncio.create_task(self._experiments_loop(), name="experiments"),
                            asyncio.create_task(self._editorial_loop(), name="editorial")]

    async def close(self) -> None:
        for task in self._refreshers:
            task.cancel()
        if self.exposures:
            await asyncio.to_thread(self.exposures.close)
        await self.redis.close()

    async def refresh_experiments(self) -> bool:
        """Reload the experiments when `streamrank experiments apply` stored a new version."""
        try:
            async with asyncio.timeout(self.cfg.redis_timeout_s):
                (version,) = await self.redis.execute("HMGET", keys.EXPERIMENTS, "version")
                if version is None:  # none applied, or the hash was deleted: no experiment runs
                    self.experiments = self.experiments_version = None
                elif version.decode() != self.experiments_version:
                    applied = decode_applied(*await self.redis.execute("HMGET", keys.EXPERIMENTS, *APPLIED_FIELDS))
                    if applied:
                        self.experiments, self.experiments_version = applied
                        log.info("experiments version %s: %s", self.experiments_version,
                                 ", ".join(e["name"] for e in self.experiments["experiments"]) or "none")
        except (TimeoutError, RedisUnavailable, RedisReplyError) as err:
            log.debug("experiments not refreshed: %r", err)
            return False
        except (ValueError, KeyError) as err:  # a spec this version cannot read: keep the one loaded
            log.error("experiments in Redis not loaded (apply them again with this version's "
                      "`streamrank experiments apply`): %r", err)
            return False
        return True

    async def _experiments_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.experiments_refresh_s)
            await self.refresh_experiments()

    async def refresh_editorial(self) -> bool:
        """Reload the editorial rules when `streamrank rules apply` stored a new version, and the
        items the catalog marks unavailable (every time: a set the job changes as the catalog does)."""
        try:
            async with asyncio.timeout(self.cfg.redis_timeout_s):
                (raw, version) = await self.redis.execute("HMGET", keys.RULES, "spec", "version")
                unavailable = frozenset(i.decode() for i in await self.redis.execute("SMEMBERS", keys.UNAVAILABLE_ITEMS))
        except (TimeoutError, RedisUnavailable, RedisReplyError) as err:
            log.debug("editorial rules not refreshed: %r", err)
            return False
        rules, current = self.editorial.rules, self.editorial.version
        if not (raw and version):
            rules, current = (), ""
        elif version.decode() != current:
            try:
                rules, current = tuple(editorial_spec(raw)["rules"]), version.decode()
                log.info("editorial rules version %s: %d rules", current, len(rules))
            except (ValueError, KeyError) as err:  # a spec this version cannot read: keep the one loaded
                log.error("editorial rules version %s not loaded: %s", version.decode(), err)
        self.editorial = lookup.Editorial(rules, unavailable, current)
        return True

    async def _editorial_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.rules_refresh_s)
            await self.refresh_editorial()

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self.cfg.redis_timeout_s):
                return await self.redis.execute("PING") == b"PONG"
        except (TimeoutError, RedisUnavailable, RedisReplyError):
            return False

    async def refresh_popular(self) -> bool:
        try:
            async with asyncio.timeout(self.cfg.redis_timeout_s):
                flat = await self.redis.execute("ZREVRANGE", keys.TRENDING, 0, self.cfg.cache.popular_size - 1,
                                                "WITHSCORES")
                trending = [(flat[n], float(flat[n + 1])) for n in range(0, len(flat), 2)]
                metas = await self.redis.execute("HMGET", keys.ITEM_META, *[i for i, _ in trending]) if trending else []
        except (TimeoutError, RedisUnavailable, RedisReplyError) as err:
            log.debug("popular cache not refreshed: %r", err)
            return False
        self.popular = PopularCache(lookup.popular_items(trending, metas), time.monotonic())
        return True

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.cache.refresh_s)
            await self.refresh_popular()
            if self.popular.loaded_at:
                CACHE_AGE.set(time.monotonic() - self.popular.loaded_at)

    async def _read(self, redis_keys: list[str], remaining_s: float | None) -> list[bytes | None]:
        """Values for keys, or StoreUnavailable (breaker open, error or past the budget); a read cut
        short by the caller's deadline is CallerDeadline and does not count against Redis."""
        if not self.breaker.allow():
            raise StoreUnavailable("circuit breaker open")
        budget = read_budget(self.cfg.redis_timeout_s, remaining_s)
        caller_bound = budget < self.cfg.redis_timeout_s  # the caller's deadline, not Redis's timeout, sets the wait
        outcome = None
        try:
            if budget <= 0:
                raise TimeoutError
            async with asyncio.timeout(budget):  # no extra task per call, unlike wait_for
                values = await self.redis.execute("MGET", *redis_keys)
            outcome = "success"
        except TimeoutError:
            REDIS_ERRORS.labels("deadline" if caller_bound else "timeout").inc()
            if caller_bound:
                raise CallerDeadline(budget) from None
            outcome = "failure"
            raise StoreUnavailable(f"redis did not answer within {budget * 1000:.0f} ms") from None
        except (RedisUnavailable, RedisReplyError) as err:
            REDIS_ERRORS.labels(type(err).__name__).inc()
            outcome = "failure"
            raise StoreUnavailable(f"redis error: {err}") from None
        finally:  # a cancellation (a sibling GraphQL field failed) or the caller's deadline: abandon
            {"success": self.breaker.success, "failure": self.breaker.failure}.get(outcome, self.breaker.abandon)()
        return values

    def request(self, user_id: str, k: int = 0, include_categories=(), exclude_categories=(), exclude_items=(),
                placement: str = "") -> lookup.Request:
        return check_request(self.cfg, user_id, k, include_categories, exclude_categories, exclude_items, placement)

    async def recommend(self, requests: list[lookup.Request], remaining_s: float | None = None,
                        interface: str = "grpc") -> list[lookup.Recommendations]:
        """Answers in request order; one MGET for all users. Each answer gets a request id and its
        user's experiment arms, and is logged as an exposure."""
        if len(requests) > lookup.MAX_BATCH:
            raise lookup.InvalidRequest(f"a batch takes at most {lookup.MAX_BATCH} requests")
        users = list(dict.fromkeys(r.user_id for r in requests))
        unavailable = ""
        try:
            raws = await self._read_first(users, keys.rec_key, remaining_s)
        except StoreUnavailable as err:
            log.debug("answering from the popular cache: %s", err)
            raws, unavailable = {}, "store_unavailable"
        now = int(time.time() * 1000)
        popular = self.popular.items
        editorial = self.editorial
        out = [lookup.answer(r, raws.get(r.user_id), popular, now, unavailable, editorial) for r in requests]
        for a in out:
            if a.fallback:
                FALLBACKS.labels(a.fallback_reason).inc()
            stored = self.stored_ids(a.user_id)[0]
            a.request_id = new_request_id()
            if self.experiments:
                a.experiments = assign(self.experiments, stored, now)
            if self.exposures:
                self.exposures.log(exposure_record(a, stored, interface, now))
        return out

    async def user_features(self, user_id: str, remaining_s: float | None = None) -> lookup.UserFeatures:
        lookup.check_user(user_id)
        raws = await self._read_first([user_id], keys.profile_key, remaining_s)
        return lookup.user_features(user_id, raws[user_id])

    def stored_ids(self, user_id: str) -> list[str]:
        """The ids the job stores this user under, in order of preference: with privacy.pseudonymize,
        the pseudonyms under the current and the previous key (a rotation); else the id itself."""
        return [keys.pseudonym(user_id, k) for k in self.pseudonym_keys] or [user_id]

    async def _read_first(self, users: list[str], key_of, remaining_s: float | None) -> dict[str, bytes | None]:
        """Each user's value under their current stored id, in one MGET. During a key rotation, the
        previous key's value answers only while the job holds no state (feat:) under the current
        pseudonym: a user the job has seen since, erased or opted out included, is answered from
        the current key alone, so an erase during a rotation is not undone by the old list."""
        stored = {u: self.stored_ids(u) for u in users}
        want = []
        for u in users:
            current, *older = stored[u]
            want += [key_of(current), *([keys.feat_key(current)] if older else []), *map(key_of, older)]
        got = iter(await self._read(want, remaining_s))
        out = {}
        for u in users:
            current, *older = stored[u]
            value = next(got)
            if older:
                seen, previous = next(got) is not None, [next(got) for _ in older]
                if value is None and not seen:
                    value = next((v for v in previous if v is not None), None)
            out[u] = value
        return out


def check_request(cfg: ServingConfig, user_id: str, k: int = 0, include_categories=(), exclude_categories=(),
                  exclude_items=(), placement: str = "") -> lookup.Request:
    """A checked request (INVALID_ARGUMENT otherwise), with the config's default and maximum k."""
    return lookup.check_request(user_id, k, cfg.default_k, cfg.max_k,
                                lookup.filters_of(include_categories, exclude_categories, exclude_items), placement)


def status_of(exc: BaseException | None) -> str:
    """The gRPC status name a failure maps to (the HTTP gateway maps these names to HTTP codes)."""
    if exc is None:
        return "OK"
    if isinstance(exc, lookup.InvalidRequest):
        return "INVALID_ARGUMENT"
    if isinstance(exc, CallerDeadline):
        return "DEADLINE_EXCEEDED"
    if isinstance(exc, StoreUnavailable):
        return "UNAVAILABLE"
    return "INTERNAL"


@functools.cache
def _latency(interface: str, method: str):
    return LATENCY.labels(interface, method)


@functools.cache
def _requests(interface: str, method: str, code: str):
    return REQUESTS.labels(interface, method, code)


class Observed:
    """Times one call and counts it by interface, method and status code."""

    def __init__(self, interface: str, method: str) -> None:
        self.interface, self.method = interface, method

    def __enter__(self) -> Observed:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.code = status_of(exc)
        _latency(self.interface, self.method).observe(time.perf_counter() - self.t0)
        _requests(self.interface, self.method, self.code).inc()
