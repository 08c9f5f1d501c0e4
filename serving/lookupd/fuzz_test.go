package main

// Fuzz targets for what a caller or a stored value can put in front of lookupd: the request codec,
// the request rules with the answer built from a stored list, and a stored profile. `go test`
// runs each on its seeds; bench.fuzz runs them with -fuzz for a bounded time and reports execs.

import (
	"fmt"
	"slices"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	"streamrank/lookupd/internal/pb"
)

func FuzzRequestCodec(f *testing.F) {
	v := loadVectors(f)
	rules, _ := newRules(v.Contract, v.DefaultK, v.MaxK)
	codec := newRequestCodec()
	f.Add(wire(1, []byte("u1"), 4, []byte("home")))
	f.Add(wire(1, []byte("u\xff1")))
	f.Add(wire(1, wire(1, []byte("u1")), 1, wire(1, []byte("u2"), 3, wire(3, []byte("i1")))))
	f.Add([]byte{0x0a, 0x05, 'a'})
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, m := range []proto.Message{&pb.GetRecommendationsRequest{}, &pb.BatchGetRecommendationsRequest{}, &pb.GetUserFeaturesRequest{}} {
			if err := codec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(data)}, m); err != nil {
				t.Fatalf("the codec failed (gRPC would answer INTERNAL): %v", err)
			}
			if undecodable(m, v.Contract.UndecodableRule) != nil {
				continue
			}
			switch q := m.(type) {
			case *pb.GetRecommendationsRequest:
				_, _ = rules.Check(q)
			case *pb.BatchGetRecommendationsRequest:
				_ = rules.CheckBatch(len(q.GetRequests()))
				for _, one := range q.GetRequests() {
					_, _ = rules.Check(one)
				}
			case *pb.GetUserFeaturesRequest:
				_ = rules.CheckUser(q.GetUserId())
			}
		}
	})
}

func FuzzLookupRulesAndAnswer(f *testing.F) {
	v := loadVectors(f)
	rules, _ := newRules(v.Contract, v.DefaultK, v.MaxK)
	popular := PopularItems([]string{"t1", "t2", "t3"}, []float64{3, 2, 1}, []any{`{"category":"c1","price":1}`, nil, "x"})
	for user, stored := range v.Stored {
		f.Add(user, uint32(3), "home", "i1", "c1", stored, true)
	}
	f.Add("u1", uint32(0), "", "", "", `{"items":[["i1",1e400,"c"]],"feature_ts":1}`, true)
	f.Add("u1", uint32(1), "", "", "", `{"items":[["i1",1,"c"],["i2"]],"feature_ts":1}`, true)
	lists := newListCache(1 << 16)
	f.Fuzz(func(t *testing.T, user string, k uint32, placement, excludeItem, category, stored string, found bool) {
		q := &pb.GetRecommendationsRequest{UserId: user, K: k, Placement: placement,
			Filters: &pb.Filters{ExcludeItems: []string{excludeItem}, IncludeCategories: []string{category}}}
		req, err := rules.Check(q)
		if err != nil {
			return
		}
		raw := &stored
		if !found {
			raw = nil
		}
		out, err := Answer(&req, raw, nil, popular, 1_700_000_000_000, "", nil)
		for range 2 { // decoded into the list cache, then read from it: the same answer or error
			cached, cerr := Answer(&req, raw, lists, popular, 1_700_000_000_000, "", nil)
			if fmt.Sprint(cerr) != fmt.Sprint(err) || !proto.Equal(cached, out) {
				t.Fatalf("with the list cache: %v, %v; without: %v, %v", cached, cerr, out, err)
			}
		}
		if err != nil {
			return // a stored list the job never writes: INTERNAL, for that user only
		}
		if len(out.Items) > req.K || req.K > v.MaxK {
			t.Fatalf("%d items for k = %d (max_k %d)", len(out.Items), req.K, v.MaxK)
		}
		for _, it := range out.Items {
			if it.ItemId == excludeItem || it.Category != category {
				t.Fatalf("item %q (category %q) passed the filters exclude %q include %q", it.ItemId, it.Category, excludeItem, category)
			}
		}
		if out.ListAgeMs < 0 || (raw == nil) != out.Fallback {
			t.Fatalf("list_age_ms %d, fallback %v with a list %v", out.ListAgeMs, out.Fallback, raw != nil)
		}
	})
}

func FuzzStoredProfile(f *testing.F) {
	v := loadVectors(f)
	for _, p := range v.Profiles {
		if p.Stored != nil {
			f.Add(*p.Stored)
		}
	}
	f.Fuzz(func(t *testing.T, stored string) {
		out, err := Features("u1", &stored)
		if err != nil {
			return
		}
		if !out.Found || out.Features == nil || slices.Contains(out.TopCategories, "\x00never") {
			t.Fatalf("a profile decoded without its features: %v", out)
		}
	})
}
