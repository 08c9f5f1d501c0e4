package main

import (
	"context"
	"crypto/subtle"
	"errors"
	"log/slog"
	"strings"
	"time"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"streamrank/lookupd/internal/pb"
)

// The same metric names and labels as serving/core.py, so dashboards do not care which engine runs.
var (
	requests = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "streamrank_serving_requests_total", Help: "Lookup calls by interface, method and status code"},
		[]string{"interface", "method", "code"})
	latency = promauto.NewHistogramVec(prometheus.HistogramOpts{
		Name: "streamrank_serving_request_seconds", Help: "Lookup call latency in the service",
		Buckets: []float64{.0002, .0005, .001, .002, .003, .005, .01, .025, .05, .1, .25, .5, 1.0}},
		[]string{"interface", "method"})
	fallbacks = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "streamrank_serving_fallbacks_total", Help: "Answers that are not personalized, by reason"},
		[]string{"reason"})
	redisErrors = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "streamrank_serving_redis_errors_total", Help: "Failed or timed-out Redis reads"}, []string{"kind"})
	breakerOpen = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "streamrank_serving_breaker_open", Help: "1 while the Redis circuit breaker is open"})
	cacheAge = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "streamrank_serving_popular_cache_age_seconds", Help: "Age of the popular-list cache"})
	listCache = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "streamrank_serving_list_cache_total",
		Help: "Users' lists read from the in-process cache (hit) or from Redis (miss); Go engine with cache.lists_mb > 0"},
		[]string{"result"})
	// resolved once: a call counts each list it reads
	listCacheHits, listCacheMisses = listCache.WithLabelValues("hit"), listCache.WithLabelValues("miss")
)

// Service implements streamrank.v1.Recommendations.
type Service struct {
	pb.UnimplementedRecommendationsServer
	rules      *Rules
	store      *Store
	pseudonyms *Pseudonyms
	lists      *ListCache // nil: cache.lists_mb = 0
	unpacker   *Unpacker
	shards     int          // the users' shards in a Redis Cluster (Spec.shards); 0: one Redis
	exposures  *ExposureLog // nil: [exposures] enabled = false
}

// statusOf is the one mapping from failures to status codes.
func statusOf(err error) error {
	var inv *InvalidRequest
	var unavailable *StoreUnavailable
	var late *CallerDeadline
	switch {
	case err == nil:
		return nil
	case errors.As(err, &inv):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.As(err, &late):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.As(err, &unavailable):
		return status.Error(codes.Unavailable, err.Error())
	default:
		return status.Error(codes.Internal, err.Error())
	}
}

func (s *Service) recommend(ctx context.Context, qs []*pb.GetRecommendationsRequest) ([]*pb.GetRecommendationsResponse, error) {
	checked := make([]Request, len(qs))
	for n, q := range qs {
		var err error
		if checked[n], err = s.rules.Check(q); err != nil {
			return nil, err
		}
	}
	if err := s.rules.CheckBatch(len(qs)); err != nil {
		return nil, err
	}
	users, of := distinctUsers(checked)
	unavailable := ""
	values, err := s.readFirst(ctx, users, s.rules.c.RecPrefix)
	if err != nil {
		slog.Debug("answering from the popular cache", "why", err.Error())
		unavailable = "store_unavailable"
	}
	now := time.Now().UnixMilli()
	popular := s.store.Popular()
	experiments := s.store.Experiments()
	editorial := s.store.Editorial()
	out := make([]*pb.GetRecommendationsResponse, len(checked))
	for n := range checked {
		if out[n], err = Answer(&checked[n], values[of[n]], s.lists, popular, now, unavailable, editorial); err != nil {
			return nil, err
		}
		if out[n].Fallback {
			fallbacks.WithLabelValues(out[n].FallbackReason).Inc()
		}
		stored := s.pseudonyms.ids(checked[n].UserID)[0]
		out[n].RequestId = newRequestID()
		if assigned := experiments.Assign(stored, now); len(assigned) > 0 {
			out[n].Experiments = make(map[string]string, len(assigned))
			for _, a := range assigned {
				out[n].Experiments[a.Experiment] = a.Arm
			}
		}
		if s.exposures != nil {
			s.exposures.Log(exposureOf(out[n], stored, now))
		}
	}
	return out, nil
}

// distinctUsers lists the requests' users once each, in order, with the index of each request's
// user in that list.
func distinctUsers(checked []Request) (users []string, of []int) {
	of = make([]int, len(checked))
	if len(checked) == 1 { // GetRecommendations: no index to build
		return []string{checked[0].UserID}, of
	}
	at := make(map[string]int, len(checked))
	for n, q := range checked {
		i, ok := at[q.UserID]
		if !ok {
			i = len(users)
			at[q.UserID] = i
			users = append(users, q.UserID)
		}
		of[n] = i
	}
	return users, of
}

func (s *Service) GetRecommendations(ctx context.Context, q *pb.GetRecommendationsRequest) (*pb.GetRecommendationsResponse, error) {
	out, err := s.recommend(ctx, []*pb.GetRecommendationsRequest{q})
	if err != nil {
		return nil, statusOf(err)
	}
	return out[0], nil
}

func (s *Service) BatchGetRecommendations(ctx context.Context, q *pb.BatchGetRecommendationsRequest) (*pb.BatchGetRecommendationsResponse, error) {
	out, err := s.recommend(ctx, q.GetRequests())
	if err != nil {
		return nil, statusOf(err)
	}
	return &pb.BatchGetRecommendationsResponse{Responses: out}, nil
}

// GetUserFeatures answers from the user's profile, which the job writes with the features named
// (so no feature definition lives here).
func (s *Service) GetUserFeatures(ctx context.Context, q *pb.GetUserFeaturesRequest) (*pb.GetUserFeaturesResponse, error) {
	if err := s.rules.CheckUser(q.GetUserId()); err != nil {
		return nil, statusOf(err)
	}
	values, err := s.readFirst(ctx, []string{q.GetUserId()}, s.rules.c.ProfilePrefix)
	if err != nil {
		return nil, statusOf(err)
	}
	out, err := Features(q.GetUserId(), values[0])
	return out, statusOf(err)
}

// readFirst reads, in one round trip, each user's value under their current stored id (a nil
// value: none), in the order of users, or every user nil with err when Redis cannot answer.
// During a key rotation the previous key's value answers only while the job holds no state (feat:)
// under the current pseudonym: a user the job has seen since, erased or opted out included, is
// answered from the current key alone (serving/core.py's _read_first, the same rule).
func (s *Service) readFirst(ctx context.Context, users []string, prefix string) ([]*string, error) {
	stored := make([][]string, len(users))
	keys := make([]string, 0, len(users)*(2*len(s.pseudonyms.keys)+1))
	for n, u := range users {
		stored[n] = s.pseudonyms.ids(u)
		keys = append(keys, userKey(prefix, stored[n][0], s.shards))
		if len(stored[n]) > 1 {
			keys = append(keys, userKey(s.rules.c.FeatPrefix, stored[n][0], s.shards))
		}
		for _, id := range stored[n][1:] {
			keys = append(keys, userKey(prefix, id, s.shards))
		}
	}
	out := make([]*string, len(users))
	values, err := s.store.Read(ctx, keys)
	if err != nil {
		return out, err
	}
	at := 0
	for n := range users {
		value := values[at]
		at++
		if older := len(stored[n]) - 1; older > 0 {
			seen := values[at] != nil
			previous := values[at+1 : at+1+older]
			at += 1 + older
			for _, v := range previous {
				if value != nil || seen {
					break
				}
				value = v
			}
		}
		if value != nil {
			text, err := s.unpacker.Text(ctx, *value)
			if err != nil {
				return out, err
			}
			value = &text
		}
		out[n] = value
	}
	return out, nil
}

// codeName is a status code as Python's grpc names it (INVALID_ARGUMENT, not InvalidArgument; and
// CANCELLED, which grpc-go spells Canceled), so metrics carry one label per code on both engines.
func codeName(c codes.Code) string {
	if c == codes.Canceled {
		return "CANCELLED"
	}
	var b strings.Builder
	prev := ' '
	for _, r := range c.String() {
		if unicode.IsUpper(r) && unicode.IsLower(prev) {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToUpper(r))
		prev = r
	}
	return b.String()
}

// codeNames: codeName of every code gRPC defines, spelt once rather than on every call.
var codeNames = func() (names [codes.Unauthenticated + 1]string) {
	for c := range names {
		names[c] = codeName(codes.Code(c))
	}
	return names
}()

func statusName(c codes.Code) string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return codeName(c)
}

// interceptor checks the bearer token (all but health checks, constant-time compare), refuses a
// request the codec could not decode, and counts and times each lookup call under its method and
// status code.
func interceptor(service string, expected []byte, undecodableRule string) grpc.UnaryServerInterceptor {
	prefix := "/" + service + "/"
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if strings.HasPrefix(info.FullMethod, "/grpc.health.v1.") {
			if err := undecodable(req, undecodableRule); err != nil {
				return nil, err
			}
			return handler(ctx, req)
		}
		if expected != nil {
			sent := ""
			if md, ok := metadata.FromIncomingContext(ctx); ok {
				if v := md.Get("authorization"); len(v) > 0 {
					sent = v[0]
				}
			}
			if subtle.ConstantTimeCompare([]byte(sent), expected) != 1 {
				return nil, status.Error(codes.Unauthenticated, "send metadata 'authorization: Bearer <token>'")
			}
		}
		method, ours := strings.CutPrefix(info.FullMethod, prefix)
		if !ours {
			return handler(ctx, req)
		}
		t0 := time.Now()
		var resp any
		err := undecodable(req, undecodableRule)
		if err == nil {
			resp, err = handler(ctx, req)
		}
		latency.WithLabelValues("grpc", method).Observe(time.Since(t0).Seconds())
		requests.WithLabelValues("grpc", method, statusName(status.Code(err))).Inc()
		return resp, err
	}
}

// followRedisHealth keeps grpc.health.v1 in step with Redis reachability.
func followRedisHealth(ctx context.Context, h *health.Server, store *Store, service string, interval time.Duration) {
	last := healthpb.HealthCheckResponse_UNKNOWN
	for {
		st := healthpb.HealthCheckResponse_NOT_SERVING
		if store.Ping(ctx) {
			st = healthpb.HealthCheckResponse_SERVING
		}
		if st != last {
			if st == healthpb.HealthCheckResponse_SERVING {
				slog.Info("health: SERVING")
			} else {
				slog.Info("health: NOT_SERVING (redis unreachable)")
			}
			h.SetServingStatus("", st)
			h.SetServingStatus(service, st)
			last = st
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}
