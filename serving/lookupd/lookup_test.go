package main

// The lookup rules against the shared vectors (tests/vectors/lookup.json), which
// tests/unit/test_lookup_vectors.py also holds serving/lookup.py to.

import (
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"streamrank/lookupd/internal/pb"
)

type vectors struct {
	Contract Contract          `json:"contract"` // what `streamrank serve` passes (checked by pytest)
	DefaultK int               `json:"default_k"`
	MaxK     int               `json:"max_k"`
	NowMs    int64             `json:"now_ms"`
	Stored   map[string]string `json:"stored"`
	Popular  [][]any           `json:"popular"`
	Cases    []struct {
		Name        string         `json:"name"`
		Request     vectorRequest  `json:"request"`
		Unavailable string         `json:"unavailable"`
		Expect      map[string]any `json:"expect"`
		Error       string         `json:"error"`
		Message     *string        `json:"message"`
	} `json:"cases"`
	Batch struct {
		TooMany int    `json:"too_many"`
		Message string `json:"message"`
	} `json:"batch"`
	PopularItems struct {
		Trending [][]any `json:"trending"`
		Metas    []any   `json:"metas"`
		Expect   [][]any `json:"expect"`
	} `json:"popular_items"`
	Profiles []struct {
		Name   string  `json:"name"`
		Stored *string `json:"stored"`
		Expect struct {
			Found         bool               `json:"found"`
			Features      map[string]float64 `json:"features"`
			TopCategories []string           `json:"top_categories"`
			FeatureTsMs   int64              `json:"feature_ts_ms"`
			WindowEndMs   int64              `json:"window_end_ms"`
			Segments      []string           `json:"segments"`
		} `json:"expect"`
		Error string `json:"error"`
	} `json:"profiles"`
}

// vectorRequest is a case's request as the vectors write it.
type vectorRequest struct {
	UserID    string `json:"user_id"`
	K         uint32 `json:"k"`
	Placement string `json:"placement"`
	Filters   struct {
		Include      []string `json:"include_categories"`
		Exclude      []string `json:"exclude_categories"`
		ExcludeItems []string `json:"exclude_items"`
	} `json:"filters"`
}

func (q *vectorRequest) proto() *pb.GetRecommendationsRequest {
	f := q.Filters
	return &pb.GetRecommendationsRequest{UserId: q.UserID, K: q.K, Placement: q.Placement,
		Filters: &pb.Filters{IncludeCategories: f.Include, ExcludeCategories: f.Exclude, ExcludeItems: f.ExcludeItems}}
}

func loadVectors(t testing.TB) *vectors {
	var v vectors
	readVectors(t, "lookup.json", &v)
	return &v
}

// readVectors decodes tests/vectors/NAME, the answers Python's tests hold their side to as well.
func readVectors(t testing.TB, name string, into any) {
	raw, err := os.ReadFile("../../tests/vectors/" + name)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, into); err != nil {
		t.Fatal(err)
	}
}

func triples(items []*pb.ScoredItem) []any {
	out := []any{}
	for _, i := range items {
		out = append(out, []any{i.ItemId, i.Score, i.Category})
	}
	return out
}

// normalized: JSON numbers as float64, as the expectations decode.
func normalized(t *testing.T, x any) any {
	raw, err := json.Marshal(x)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// popularItems decodes the vectors' [id, score, category] triples.
func popularItems(raw [][]any) []*pb.ScoredItem {
	out := make([]*pb.ScoredItem, len(raw))
	for n, p := range raw {
		out[n] = &pb.ScoredItem{ItemId: p[0].(string), Score: p[1].(float64), Category: p[2].(string)}
	}
	return out
}

type cacheRun struct {
	name  string
	lists *ListCache
}

// cacheRuns: every case decoded on the call, then from a cache shared by all cases: first decoded
// into it (or from a list an earlier case decoded), then from it.
func cacheRuns() []cacheRun {
	cache := newListCache(1 << 20)
	return []cacheRun{{"decoded on the call", nil}, {"into the list cache", cache}, {"from the list cache", cache}}
}

func TestLookupRulesGiveTheSharedAnswers(t *testing.T) {
	v := loadVectors(t)
	rules, err := newRules(v.Contract, v.DefaultK, v.MaxK)
	if err != nil {
		t.Fatal(err)
	}
	popular := popularItems(v.Popular)
	for _, run := range cacheRuns() {
		for _, c := range v.Cases {
			t.Run(run.name+"/"+c.Name, func(t *testing.T) {
				q := c.Request
				checked, err := rules.Check(q.proto())
				var answer *pb.GetRecommendationsResponse
				if err == nil {
					var raw *string
					if s, ok := v.Stored[q.UserID]; ok && c.Unavailable == "" {
						raw = &s
					}
					answer, err = Answer(&checked, raw, run.lists, popular, v.NowMs, c.Unavailable, nil)
				}
				if c.Error != "" {
					if err == nil {
						t.Fatalf("want %s, got an answer", c.Error)
					}
					st, _ := status.FromError(statusOf(err))
					if codeName(st.Code()) != c.Error {
						t.Fatalf("want %s, got %s (%v)", c.Error, codeName(st.Code()), err)
					}
					if c.Message != nil && st.Message() != *c.Message {
						t.Fatalf("message %q, want %q", st.Message(), *c.Message)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				got := map[string]any{"items": triples(answer.Items), "model_version": answer.ModelVersion,
					"feature_ts_ms": answer.FeatureTsMs, "list_age_ms": answer.ListAgeMs, "fallback": answer.Fallback,
					"fallback_reason": answer.FallbackReason, "placement": answer.Placement}
				if g, w := normalized(t, got), normalized(t, c.Expect); !reflect.DeepEqual(g, w) {
					t.Fatalf("got  %v\nwant %v", g, w)
				}
			})
		}
	}
}

func TestBatchLimit(t *testing.T) {
	v := loadVectors(t)
	rules, _ := newRules(v.Contract, v.DefaultK, v.MaxK)
	if rules.CheckBatch(v.Contract.MaxBatch) != nil {
		t.Fatal("a full batch was refused")
	}
	err := rules.CheckBatch(v.Batch.TooMany)
	var inv *InvalidRequest
	if !errors.As(err, &inv) || err.Error() != v.Batch.Message {
		t.Fatalf("oversized batch: %v", err)
	}
	if status.Code(statusOf(err)) != codes.InvalidArgument {
		t.Fatal("oversized batch is not INVALID_ARGUMENT")
	}
}

func TestPopularItemsFromTheTrendingBoard(t *testing.T) {
	p := loadVectors(t).PopularItems
	ids, scores := []string{}, []float64{}
	for _, z := range p.Trending {
		ids, scores = append(ids, z[0].(string)), append(scores, z[1].(float64))
	}
	got := triples(PopularItems(ids, scores, p.Metas))
	if g, w := normalized(t, got), normalized(t, p.Expect); !reflect.DeepEqual(g, w) {
		t.Fatalf("got  %v\nwant %v", g, w)
	}
}

func TestUserFeaturesGiveTheSharedAnswers(t *testing.T) {
	for _, c := range loadVectors(t).Profiles {
		t.Run(c.Name, func(t *testing.T) {
			got, err := Features("u1", c.Stored)
			if c.Error != "" {
				if name := codeName(status.Code(statusOf(err))); name != c.Error {
					t.Fatalf("status %s, want %s (%v)", name, c.Error, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			e := c.Expect
			if got.Found != e.Found || !reflect.DeepEqual(nonNil(got.Features), nonNil(e.Features)) ||
				!slices.Equal(got.TopCategories, e.TopCategories) || got.FeatureTsMs != e.FeatureTsMs || got.WindowEndMs != e.WindowEndMs ||
				!slices.Equal(got.Segments, e.Segments) {
				t.Fatalf("got %+v, want %+v", got, e)
			}
		})
	}
}

func nonNil(m map[string]float64) map[string]float64 {
	if m == nil {
		return map[string]float64{}
	}
	return m
}
