package main

// Reads from Redis with the same guards as serving/core.py: one round trip per call, never waiting
// longer than min(redis_timeout_s, the caller's deadline - reserve), a consecutive-failure circuit
// breaker, and a local cache of popular items for cold users and for when Redis cannot answer.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"

	"streamrank/lookupd/internal/pb"
)

// StoreUnavailable: Redis could not answer in time and the call has no fallback (UNAVAILABLE).
type StoreUnavailable struct{ why string }

func (e *StoreUnavailable) Error() string {
	return "recommendation store unavailable (" + e.why + "); retry"
}

// CallerDeadline: the caller's own deadline left too little time to read Redis (DEADLINE_EXCEEDED
// where there is no fallback). Not a Redis failure: it never counts toward the breaker, so no
// client can open it for everyone by calling with tiny deadlines.
type CallerDeadline struct{ budget time.Duration }

func (e *CallerDeadline) Error() string {
	return fmt.Sprintf("the caller's deadline left %.0f ms to read Redis; call with a longer deadline",
		e.budget.Seconds()*1000)
}

// Breaker opens after `failures` consecutive failures, for `reset`; then half-open, where one
// trial call closes it again (or re-opens it).
type Breaker struct {
	mu       sync.Mutex
	failures int
	reset    time.Duration
	count    int
	openedAt time.Time // zero: closed
	trial    bool
	now      func() time.Time // nil: time.Now; tests script the clock
}

func (b *Breaker) clock() time.Time {
	if b.now == nil {
		return time.Now()
	}
	return b.now()
}

func (b *Breaker) state(now time.Time) string {
	if b.openedAt.IsZero() {
		return "closed"
	}
	if now.Sub(b.openedAt) >= b.reset {
		return "half-open"
	}
	return "open"
}

func (b *Breaker) Allow() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state(b.clock()) {
	case "closed":
		return true
	case "half-open":
		if !b.trial {
			b.trial = true
			return true
		}
	}
	return false
}

func (b *Breaker) Success() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.openedAt.IsZero() {
		slog.Info("redis circuit breaker closed: redis answers again")
		breakerOpen.Set(0)
	}
	b.count, b.openedAt, b.trial = 0, time.Time{}, false
}

// Abandon ends a call that got past Allow with neither outcome (the caller's deadline, or a
// cancellation): it counts nothing, and a half-open trial it held is free again, else the breaker
// would wait forever for its verdict.
func (b *Breaker) Abandon() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.trial = false
}

func (b *Breaker) Failure() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.count++
	b.trial = false
	if b.count >= b.failures {
		if b.openedAt.IsZero() {
			slog.Warn(fmt.Sprintf("redis circuit breaker open after %d failures; answering from the cache for %.1fs",
				b.count, b.reset.Seconds()))
		}
		b.openedAt = b.clock()
		breakerOpen.Set(1)
	}
}

type popularCache struct {
	items    []*pb.ScoredItem
	loadedAt time.Time
}

// Store is the service's view of Redis.
type Store struct {
	rdb     rueidis.Client
	spec    *Spec
	timeout time.Duration
	reserve time.Duration
	breaker *Breaker
	popular atomic.Pointer[popularCache]
	// the experiments `streamrank experiments apply` stored, as last read (nil: none)
	experiments atomic.Pointer[appliedExperiments]
	// the editorial rules and unavailable items, as last read (nil: none)
	editorial atomic.Pointer[Editorial]
}

// multiplex: 2^0 = one pipelined connection to Redis: the client cache is per connection, so one
// connection means one cache (with two, a list read on one is a miss on the other).
const multiplex = 0

// newStore connects lazily: lookupd starts (and answers from its cache, health NOT_SERVING) when
// Redis is down, and reconnects by itself when Redis is back.
func newStore(spec *Spec) (*Store, error) {
	username, password, tlsConfig, err := redisLogin(spec)
	if err != nil {
		return nil, err
	}
	rdb, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress: initAddress(spec),
		Username:    username,
		Password:    password,
		TLSConfig:   tlsConfig,
		// one Redis (NewClient must not fail when Redis is down at start), or a cluster client
		// that follows the slots' masters through a failover
		ForceSingleClient: spec.Redis.Cluster == nil,
		// users' lists cached in process with CLIENT TRACKING (RESP3): Redis pushes an invalidation
		// on the same connection as soon as a list is rewritten; a lost connection drops the cache
		DisableCache:      spec.Cache.ListsMB == 0,
		AlwaysRESP2:       spec.Cache.ListsMB == 0,
		CacheSizeEachConn: max(spec.Cache.ListsMB, 1) << 20, // the one connection holds the whole cache
		// a retry would outlive the budget; the caller falls back instead
		DisableRetry: true,
		// concurrent calls' reads share writes and reads on one connection (auto-pipelining):
		// far fewer system calls per call than a connection pool
		PipelineMultiplex: multiplex,
		Dialer:            net.Dialer{Timeout: seconds(spec.RedisTimeoutS)},
	})
	if rdb == nil {
		return nil, fmt.Errorf("redis client for %s:%d: %w", spec.Redis.Host, spec.Redis.Port, err)
	}
	if err != nil {
		slog.Warn("redis not reachable at start; answering from the cache until it is", "error", err.Error())
	}
	s := &Store{rdb: rdb, spec: spec, timeout: seconds(spec.RedisTimeoutS),
		reserve: seconds(spec.Contract.DeadlineReserveS),
		breaker: &Breaker{failures: spec.Breaker.Failures, reset: seconds(spec.Breaker.ResetS)}}
	s.popular.Store(&popularCache{})
	return s, nil
}

// initAddress is where the client starts: [redis]'s host:port, and a cluster's other nodes.
func initAddress(spec *Spec) []string {
	out := []string{net.JoinHostPort(spec.Redis.Host, strconv.Itoa(spec.Redis.Port))}
	if spec.Redis.Cluster != nil {
		out = append(out, spec.Redis.Cluster.Nodes...)
	}
	return out
}

// redisLogin is [redis]'s login and TLS, as contract.config.RedisConfig gives them to redis-py:
// the password from the variable password_env names, never from the file.
func redisLogin(spec *Spec) (username, password string, conf *tls.Config, err error) {
	r := spec.Redis
	if r.Username != nil {
		username = *r.Username
	}
	if r.PasswordEnv != nil {
		if password = os.Getenv(*r.PasswordEnv); password == "" {
			return "", "", nil, fmt.Errorf("redis.password_env names %s, which is not set in this process's "+
				"environment; export %s=<the Redis password> or unset redis.password_env", *r.PasswordEnv, *r.PasswordEnv)
		}
	}
	if r.TLS == nil {
		return username, password, nil, nil
	}
	conf = &tls.Config{ServerName: r.Host, MinVersion: tls.VersionTLS12}
	if r.TLS.CAFile != nil {
		pem, err := os.ReadFile(*r.TLS.CAFile)
		if err != nil {
			return "", "", nil, fmt.Errorf("redis.tls.ca_file: %w", err)
		}
		conf.RootCAs = x509.NewCertPool()
		if !conf.RootCAs.AppendCertsFromPEM(pem) {
			return "", "", nil, fmt.Errorf("redis.tls.ca_file %s holds no PEM certificate", *r.TLS.CAFile)
		}
	}
	if r.TLS.CertFile != nil && r.TLS.KeyFile != nil {
		pair, err := tls.LoadX509KeyPair(*r.TLS.CertFile, *r.TLS.KeyFile)
		if err != nil {
			return "", "", nil, fmt.Errorf("redis.tls.cert_file/key_file: %w", err)
		}
		conf.Certificates = []tls.Certificate{pair}
	}
	return username, password, conf, nil
}

func (s *Store) budget(ctx context.Context) time.Duration {
	d, ok := ctx.Deadline()
	if !ok {
		return readBudget(s.timeout, nil, s.reserve)
	}
	remaining := time.Until(d)
	return readBudget(s.timeout, &remaining, s.reserve)
}

// readBudget is how long one Redis read may take: the timeout, cut to the caller's remaining time
// less the reserve kept for answering, never negative; remaining nil: the call has no deadline.
func readBudget(timeout time.Duration, remaining *time.Duration, reserve time.Duration) time.Duration {
	b := timeout
	if remaining != nil {
		b = min(b, *remaining-reserve)
	}
	return max(b, 0)
}

// Read returns the values of keys (nil where absent), or *StoreUnavailable; a read cut short by
// the caller (its deadline, or a cancellation) is *CallerDeadline and does not count against Redis.
func (s *Store) Read(ctx context.Context, keys []string) ([]*string, error) {
	if !s.breaker.Allow() {
		return nil, &StoreUnavailable{"circuit breaker open"}
	}
	budget := s.budget(ctx)
	callerBound := budget < s.timeout // the caller's deadline, not Redis's timeout, sets the wait
	if budget <= 0 {
		redisErrors.WithLabelValues("deadline").Inc()
		s.breaker.Abandon()
		return nil, &CallerDeadline{budget}
	}
	cctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	values, err := s.get(cctx, keys)
	if err != nil {
		var replyErr *rueidis.RedisError
		timedOut := errors.Is(err, context.DeadlineExceeded) || isTimeout(err)
		switch {
		case ctx.Err() != nil || (timedOut && callerBound):
			redisErrors.WithLabelValues("deadline").Inc()
			s.breaker.Abandon()
			return nil, &CallerDeadline{budget}
		case timedOut:
			redisErrors.WithLabelValues("timeout").Inc()
			s.breaker.Failure()
			return nil, &StoreUnavailable{fmt.Sprintf("redis did not answer within %.0f ms", budget.Seconds()*1000)}
		case errors.As(err, &replyErr):
			redisErrors.WithLabelValues("RedisReplyError").Inc()
		default:
			redisErrors.WithLabelValues("RedisUnavailable").Inc()
		}
		s.breaker.Failure()
		return nil, &StoreUnavailable{"redis error: " + err.Error()}
	}
	s.breaker.Success()
	return values, nil
}

// get is one MGET, or with the list cache on, one GET per key answered from the cache where Redis
// has not invalidated it (the misses go to Redis together, pipelined). The values are the reply's
// (or the cache's) own strings, not copies: a stored list is a few kB, read on every call.
func (s *Store) get(ctx context.Context, keys []string) ([]*string, error) {
	texts := make([]string, len(keys))
	values := make([]*string, len(keys))
	if s.spec.Cache.ListsMB == 0 && s.spec.Redis.Cluster != nil {
		// the users' keys are in many slots, which one MGET cannot span: a GET each, pipelined per node
		cmds := make(rueidis.Commands, len(keys))
		for n, k := range keys {
			cmds[n] = s.rdb.B().Get().Key(k).Build()
		}
		for n, r := range s.rdb.DoMulti(ctx, cmds...) {
			m, err := r.ToMessage()
			if err != nil && !rueidis.IsRedisNil(err) {
				return nil, err
			}
			if values[n], err = textOf(&m, &texts[n]); err != nil {
				return nil, err
			}
		}
		return values, nil
	}
	if s.spec.Cache.ListsMB == 0 {
		reply, err := s.rdb.Do(ctx, s.rdb.B().Mget().Key(keys...).Build()).ToArray()
		if err != nil {
			return nil, err
		}
		for n := range reply {
			if values[n], err = textOf(&reply[n], &texts[n]); err != nil {
				return nil, err
			}
		}
		return values, nil
	}
	ttl := seconds(s.spec.Cache.ListsTTLS)
	cmds := make([]rueidis.CacheableTTL, len(keys))
	for n, k := range keys {
		cmds[n] = rueidis.CT(s.rdb.B().Get().Key(k).Cache(), ttl)
	}
	for n, r := range s.rdb.DoMultiCache(ctx, cmds...) {
		m, err := r.ToMessage()
		if err != nil && !rueidis.IsRedisNil(err) {
			return nil, err
		}
		if m.IsCacheHit() {
			listCacheHits.Inc()
		} else {
			listCacheMisses.Inc()
		}
		if values[n], err = textOf(&m, &texts[n]); err != nil {
			return nil, err
		}
	}
	return values, nil
}

// textOf stores a string reply's text in *into and returns into; nil for a nil reply.
func textOf(m *rueidis.RedisMessage, into *string) (*string, error) {
	if m.IsNil() {
		return nil, nil
	}
	var err error
	if *into, err = m.ToString(); err != nil {
		return nil, err
	}
	return into, nil
}

// Bytes reads one key's value as bytes (nil, nil: no such key), within the store's timeout.
func (s *Store) Bytes(ctx context.Context, key string) ([]byte, error) {
	cctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	b, err := s.rdb.Do(cctx, s.rdb.B().Get().Key(key).Build()).AsBytes()
	if rueidis.IsRedisNil(err) {
		return nil, nil
	}
	return b, err
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}

func (s *Store) Ping(ctx context.Context) bool {
	cctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return s.rdb.Do(cctx, s.rdb.B().Ping().Build()).Error() == nil
}

// RefreshPopular re-reads the trending board and its items' categories; false if Redis did not answer.
func (s *Store) RefreshPopular(ctx context.Context) bool {
	cctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	board, err := s.rdb.Do(cctx, s.rdb.B().Zrevrange().Key(s.spec.Contract.Trending).Start(0).
		Stop(int64(s.spec.Cache.PopularSize-1)).Withscores().Build()).AsZScores()
	if err != nil {
		slog.Debug("popular cache not refreshed", "error", err.Error())
		return false
	}
	ids, scores := make([]string, len(board)), make([]float64, len(board))
	for n, z := range board {
		ids[n], scores[n] = z.Member, z.Score
	}
	var metas []any
	if len(ids) > 0 {
		reply, err := s.rdb.Do(cctx, s.rdb.B().Hmget().Key(s.spec.Contract.ItemMeta).Field(ids...).Build()).ToArray()
		if err != nil {
			slog.Debug("popular cache not refreshed", "error", err.Error())
			return false
		}
		metas = make([]any, len(reply))
		for n, m := range reply {
			if v, err := m.ToString(); err == nil {
				metas[n] = v
			}
		}
	}
	s.popular.Store(&popularCache{PopularItems(ids, scores, metas), time.Now()})
	return true
}

func (s *Store) Popular() []*pb.ScoredItem { return s.popular.Load().items }

func (s *Store) refreshLoop(ctx context.Context) {
	every(ctx, seconds(s.spec.Cache.RefreshS), func() {
		s.RefreshPopular(ctx)
		if c := s.popular.Load(); !c.loadedAt.IsZero() {
			cacheAge.Set(time.Since(c.loadedAt).Seconds())
		}
	})
}

// every runs fn each interval until ctx ends.
func every(ctx context.Context, interval time.Duration, fn func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}
