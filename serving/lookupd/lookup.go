package main

// The lookup rules, free of gRPC transport and of I/O: the same rules as serving/lookup.py, held
// to the same answers by tests/vectors/lookup.json (go test here, pytest there).

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"unicode/utf8"

	"github.com/valyala/fastjson"

	"streamrank/lookupd/internal/pb"
)

// InvalidRequest is a request the service refuses (INVALID_ARGUMENT); the message says what is allowed.
type InvalidRequest struct{ msg string }

func (e *InvalidRequest) Error() string { return e.msg }

func invalid(format string, args ...any) error { return &InvalidRequest{fmt.Sprintf(format, args...)} }

type set map[string]struct{}

func setOf(xs []string) set {
	if len(xs) == 0 {
		return nil
	}
	s := make(set, len(xs))
	for _, x := range xs {
		s[x] = struct{}{}
	}
	return s
}

func (s set) has(x string) bool { _, ok := s[x]; return ok }

// Filters as in the request; nil sets are empty.
type Filters struct{ include, exclude, excludeItems set }

func (f *Filters) none() bool { return f.include == nil && f.exclude == nil && f.excludeItems == nil }

func (f *Filters) keep(id, category string) bool {
	if f.excludeItems.has(id) || f.exclude.has(category) {
		return false
	}
	return f.include == nil || f.include.has(category)
}

// Request is a checked request: k already defaulted and capped.
type Request struct {
	UserID    string
	K         int
	Filters   Filters
	Placement string
}

// Rules checks requests against the contract's limits and this service's k settings.
type Rules struct {
	c              Contract
	id             *regexp.Regexp
	defaultK, maxK int
}

func newRules(c Contract, defaultK, maxK int) (*Rules, error) {
	id, err := regexp.Compile(c.IDPattern)
	if err != nil {
		return nil, fmt.Errorf("contract id_pattern %q: %w", c.IDPattern, err)
	}
	return &Rules{c, id, defaultK, maxK}, nil
}

func (r *Rules) CheckUser(user string) error {
	if !r.id.MatchString(user) {
		return invalid("%s", r.c.UserIDRule)
	}
	return nil
}

func (r *Rules) Check(q *pb.GetRecommendationsRequest) (Request, error) {
	if err := r.CheckUser(q.GetUserId()); err != nil {
		return Request{}, err
	}
	f := q.GetFilters()
	filters := Filters{setOf(f.GetIncludeCategories()), setOf(f.GetExcludeCategories()), setOf(f.GetExcludeItems())}
	if len(filters.include) > r.c.MaxFilterCategories || len(filters.exclude) > r.c.MaxFilterCategories {
		return Request{}, invalid("include_categories and exclude_categories take at most %d entries each", r.c.MaxFilterCategories)
	}
	if len(filters.excludeItems) > r.c.MaxExcludedItems {
		return Request{}, invalid("exclude_items takes at most %d entries", r.c.MaxExcludedItems)
	}
	if utf8.RuneCountInString(q.GetPlacement()) > r.c.MaxPlacement {
		return Request{}, invalid("placement takes at most %d characters", r.c.MaxPlacement)
	}
	k := int(q.GetK())
	if k == 0 {
		k = r.defaultK
	}
	return Request{q.GetUserId(), min(k, r.maxK), filters, q.GetPlacement()}, nil
}

func (r *Rules) CheckBatch(n int) error {
	if n > r.c.MaxBatch {
		return invalid("a batch takes at most %d requests", r.c.MaxBatch)
	}
	return nil
}

var parsers fastjson.ParserPool

// Answer builds one answer from the user's stored list (raw JSON; nil: none) or, failing that,
// from the popular items; unavailable names why the store could not be read (raw is nil then).
// raw is the text Redis (or the list cache) returned, not a copy: fastjson parses it in the
// parser's own reused buffer. lists keeps decoded lists between calls (nil: decode on every call).
// ed: the editorial rules and unavailable items (nil: none), applied to the whole list before the cut to k.
func Answer(q *Request, raw *string, lists *ListCache, popular []*pb.ScoredItem, nowMs int64, unavailable string, ed *Editorial) (*pb.GetRecommendationsResponse, error) {
	if ed.on() {
		whole := *q
		whole.K = unlimited
		out, err := answer(&whole, raw, lists, popular, nowMs, unavailable)
		if err != nil {
			return nil, err
		}
		out.Items, out.RulesVersion = ed.Apply(out.Items, q, out.Segments, nowMs, raw != nil), ed.Version
		return out, nil
	}
	out, err := answer(q, raw, lists, popular, nowMs, unavailable)
	if err == nil && ed != nil {
		out.RulesVersion = ed.Version
	}
	return out, err
}

func answer(q *Request, raw *string, lists *ListCache, popular []*pb.ScoredItem, nowMs int64, unavailable string) (*pb.GetRecommendationsResponse, error) {
	out := &pb.GetRecommendationsResponse{UserId: q.UserID, Placement: q.Placement}
	if raw == nil {
		out.Fallback, out.FallbackReason = true, "no_list"
		if unavailable != "" {
			out.FallbackReason = unavailable
		}
		out.Items = make([]*pb.ScoredItem, 0, min(q.K, len(popular)))
		for _, it := range popular {
			if len(out.Items) == q.K {
				break
			}
			if q.Filters.keep(it.ItemId, it.Category) {
				out.Items = append(out.Items, it)
			}
		}
		return out, nil
	}
	if l := lists.decoded(q.UserID, *raw); l != nil {
		l.fill(out, q, nowMs)
		return out, nil
	}
	p := parsers.Get()
	defer parsers.Put(p)
	d, err := p.Parse(*raw)
	if err != nil {
		return nil, fmt.Errorf("stored list of %s is not JSON: %w", q.UserID, err)
	}
	entries := d.GetArray("items")
	noFilters := q.Filters.none()
	out.Items = make([]*pb.ScoredItem, 0, min(q.K, len(entries)))
	for _, e := range entries {
		if len(out.Items) == q.K {
			break
		}
		parts := e.GetArray()
		if len(parts) < 2 {
			return nil, fmt.Errorf("stored list of %s: an item is not [id, score, category]", q.UserID)
		}
		id, category := string(parts[0].GetStringBytes()), ""
		if len(parts) > 2 {
			category = string(parts[2].GetStringBytes())
		}
		if noFilters || q.Filters.keep(id, category) {
			score, err := parts[1].Float64()
			if err != nil {
				return nil, fmt.Errorf("stored list of %s: score: %w", q.UserID, err)
			}
			var reasons []string
			if len(parts) > 3 {
				reasons = stringsOf(parts[3])
			}
			out.Items = append(out.Items, &pb.ScoredItem{ItemId: id, Score: score, Category: category, Reasons: reasons})
		}
	}
	out.Segments = stringsOf(d.Get("segments"))
	out.ModelVersion = string(d.GetStringBytes("model_version"))
	ts := d.Get("feature_ts")
	if ts == nil {
		return nil, errors.New("stored list of " + q.UserID + " has no feature_ts")
	}
	if out.FeatureTsMs, err = featureTsOf(ts); err != nil {
		return nil, fmt.Errorf("stored list of %s: feature_ts: %w", q.UserID, err)
	}
	out.ListAgeMs = max(0, nowMs-out.FeatureTsMs)
	return out, nil
}

// stringsOf reads a JSON array of strings (nil for a missing value or an empty array).
func stringsOf(v *fastjson.Value) []string {
	if v == nil {
		return nil
	}
	var out []string
	for _, e := range v.GetArray() {
		out = append(out, string(e.GetStringBytes()))
	}
	return out
}

// featureTsOf reads feature_ts as an integer, or a number with a fraction cut off; the error is
// the integer read's.
func featureTsOf(ts *fastjson.Value) (int64, error) {
	ms, err := ts.Int64()
	if err != nil {
		f, ferr := ts.Float64()
		if ferr != nil {
			return 0, err
		}
		ms = int64(f)
	}
	return ms, nil
}

// PopularItems turns the trending board (ZREVRANGE WITHSCORES) and the items' metadata (HMGET of
// item:meta; nil where unknown) into the fallback list, scores scaled to the top one.
func PopularItems(ids []string, scores []float64, metas []any) []*pb.ScoredItem {
	out := make([]*pb.ScoredItem, len(ids))
	top := 1.0
	if len(scores) > 0 {
		top = scores[0]
	}
	for n, id := range ids {
		score := 0.0
		if top != 0 {
			score = scores[n] / top
		}
		category := ""
		if n < len(metas) {
			if m, ok := metas[n].(string); ok {
				category = metaCategory(m)
			}
		}
		out[n] = &pb.ScoredItem{ItemId: id, Score: score, Category: category}
	}
	return out
}

// metaCategory reads an item:meta value as contract.keys.ItemMeta.decode does: a missing or
// empty category is "unknown".
func metaCategory(raw string) string {
	v, err := fastjson.Parse(raw)
	if err != nil {
		return "unknown"
	}
	c := v.Get("category")
	switch {
	case c == nil || c.Type() == fastjson.TypeNull:
		return "unknown"
	case c.Type() == fastjson.TypeString:
		if s := string(c.GetStringBytes()); s != "" {
			return s
		}
		return "unknown"
	default:
		return c.String()
	}
}

// Features builds GetUserFeatures' answer from the user's profile (raw JSON of
// contract.keys.Profile; nil: the job has written none, found = false).
func Features(userID string, raw *string) (*pb.GetUserFeaturesResponse, error) {
	out := &pb.GetUserFeaturesResponse{UserId: userID}
	if raw == nil {
		return out, nil
	}
	var p struct { // every field required, as contract.keys.Profile.decode requires it
		FeatureTs     *int64              `json:"feature_ts"`
		WindowEnd     *int64              `json:"window_end"`
		Features      map[string]*float64 `json:"features"`
		TopCategories *[]string           `json:"top_categories"`
		Segments      []string            `json:"segments"`
	}
	if err := json.Unmarshal([]byte(*raw), &p); err != nil {
		return nil, fmt.Errorf("stored profile of %s: %w", userID, err)
	}
	if p.FeatureTs == nil || p.WindowEnd == nil || p.Features == nil || p.TopCategories == nil {
		return nil, errors.New("stored profile of " + userID + " lacks feature_ts, window_end, features or top_categories")
	}
	out.Features = make(map[string]float64, len(p.Features))
	for name, v := range p.Features {
		if v == nil {
			return nil, fmt.Errorf("stored profile of %s: feature %s is null", userID, name)
		}
		out.Features[name] = *v
	}
	out.Found, out.TopCategories, out.Segments = true, *p.TopCategories, p.Segments
	out.FeatureTsMs, out.WindowEndMs = *p.FeatureTs, *p.WindowEnd
	return out, nil
}
