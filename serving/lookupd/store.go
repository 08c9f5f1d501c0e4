package main

// Reads from Redis with the same guards as serving/core.py: one MGET per call, never waiting
// longer than min(redis_timeout_s, the caller's deadline - reserve), a consecutive-failure circuit
// breaker, and a local cache of popular items for cold users and for when Redis cannot answer.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"streamrank/lookupd/internal/pb"
)

// StoreUnavailable: Redis could not answer in time and the call has no fallback (UNAVAILABLE).
type StoreUnavailable struct{ why string }

func (e *StoreUnavailable) Error() string {
	return "recommendation store unavailable (" + e.why + "); retry"
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
	switch b.state(time.Now()) {
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

// Blocked tells whether calls skip Redis now, without taking the half-open trial.
func (b *Breaker) Blocked() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := b.state(time.Now())
	return st == "open" || (st == "half-open" && b.trial)
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
		b.openedAt = time.Now()
		breakerOpen.Set(1)
	}
}

type popularCache struct {
	items    []*pb.ScoredItem
	loadedAt time.Time
}

// Store is the service's view of Redis.
type Store struct {
	rdb     *redis.Client
	spec    *Spec
	timeout time.Duration
	reserve time.Duration
	breaker *Breaker
	popular atomic.Pointer[popularCache]
}

func newStore(spec *Spec) *Store {
	rdb := redis.NewClient(&redis.Options{
		Addr:                  spec.Redis.Host + ":" + strconv.Itoa(spec.Redis.Port),
		Protocol:              2,
		DisableIndentity:      true,
		ContextTimeoutEnabled: true, // the per-call budget, not go-redis's own 3 s read timeout
		MaxRetries:            -1,   // a retry would outlive the budget; the caller falls back instead
		DialTimeout:           seconds(spec.RedisTimeoutS),
		PoolSize:              32,
		MinIdleConns:          4,
	})
	s := &Store{rdb: rdb, spec: spec, timeout: seconds(spec.RedisTimeoutS),
		reserve: seconds(spec.Contract.DeadlineReserveS),
		breaker: &Breaker{failures: spec.Breaker.Failures, reset: seconds(spec.Breaker.ResetS)}}
	s.popular.Store(&popularCache{})
	return s
}

func (s *Store) budget(ctx context.Context) time.Duration {
	b := s.timeout
	if d, ok := ctx.Deadline(); ok {
		b = min(b, time.Until(d)-s.reserve)
	}
	return max(b, 0)
}

// Read returns the values of keys (nil where absent), or *StoreUnavailable.
func (s *Store) Read(ctx context.Context, keys []string) ([]any, error) {
	if !s.breaker.Allow() {
		return nil, &StoreUnavailable{"circuit breaker open"}
	}
	budget := s.budget(ctx)
	if budget <= 0 {
		redisErrors.WithLabelValues("timeout").Inc()
		s.breaker.Failure()
		return nil, &StoreUnavailable{"redis did not answer within 0 ms"}
	}
	cctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	values, err := s.rdb.MGet(cctx, keys...).Result()
	if err != nil {
		var reply redis.Error
		switch {
		case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
			redisErrors.WithLabelValues("timeout").Inc()
			s.breaker.Failure()
			return nil, &StoreUnavailable{fmt.Sprintf("redis did not answer within %.0f ms", budget.Seconds()*1000)}
		case errors.As(err, &reply):
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

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}

func (s *Store) Ping(ctx context.Context) bool {
	cctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return s.rdb.Ping(cctx).Err() == nil
}

// RefreshPopular re-reads the trending board and its items' categories; false if Redis did not answer.
func (s *Store) RefreshPopular(ctx context.Context) bool {
	cctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	board, err := s.rdb.ZRevRangeWithScores(cctx, s.spec.Contract.Trending, 0, int64(s.spec.Cache.PopularSize-1)).Result()
	if err != nil {
		slog.Debug("popular cache not refreshed", "error", err.Error())
		return false
	}
	ids, scores := make([]string, len(board)), make([]float64, len(board))
	for n, z := range board {
		ids[n], scores[n] = fmt.Sprint(z.Member), z.Score
	}
	var metas []any
	if len(ids) > 0 {
		if metas, err = s.rdb.HMGet(cctx, s.spec.Contract.ItemMeta, ids...).Result(); err != nil {
			slog.Debug("popular cache not refreshed", "error", err.Error())
			return false
		}
	}
	s.popular.Store(&popularCache{PopularItems(ids, scores, metas), time.Now()})
	return true
}

func (s *Store) Popular() []*pb.ScoredItem { return s.popular.Load().items }

func (s *Store) refreshLoop(ctx context.Context) {
	t := time.NewTicker(seconds(s.spec.Cache.RefreshS))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.RefreshPopular(ctx)
			if c := s.popular.Load(); !c.loadedAt.IsZero() {
				cacheAge.Set(time.Since(c.loadedAt).Seconds())
			}
		}
	}
}
