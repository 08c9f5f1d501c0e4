package main

import (
	"fmt"
	"strings"
	"sync"
	"testing"
)

func storedList(version string, n int) string {
	items := ""
	for i := range n {
		if i > 0 {
			items += ","
		}
		items += fmt.Sprintf(`["i%d",%g,"c%d"]`, i, 1-float64(i)/100, i%3)
	}
	return `{"items":[` + items + `],"model_version":"` + version + `","feature_ts":1000,"written_at":1000,"extra":{}}`
}

func TestListCacheAnswersOnlyForTheTextItDecoded(t *testing.T) {
	lists := newListCache(1 << 20)
	v1, v2 := storedList("v1", 3), storedList("v2", 3)
	first := lists.decoded("u1", v1)
	if again := lists.decoded("u1", strings.Clone(v1)); again != first {
		t.Fatal("the same text, read again, was decoded again instead of answered from the cache")
	}
	q := &Request{UserID: "u1", K: 2}
	rewritten, _ := Answer(q, &v2, lists, nil, 2000, "", nil)
	if rewritten.ModelVersion != "v2" {
		t.Fatalf("a rewritten list answered from the cache with model_version %q", rewritten.ModelVersion)
	}
	// an answer's items are its own: a change to one never reaches the cached list
	rewritten.Items[0].ItemId = "changed"
	if next, _ := Answer(q, &v2, lists, nil, 2000, "", nil); next.Items[0].ItemId != "i0" {
		t.Fatalf("the cached list was changed through an answer: %v", next.Items)
	}
}

func TestListCacheKeepsToItsBudget(t *testing.T) {
	one := decodeList(storedList("v1", 100))
	lists := newListCache(listShards * 3 * one.bytes)
	for u := range 2000 {
		raw := storedList("v1", 100)
		if _, err := Answer(&Request{UserID: fmt.Sprint("u", u), K: 10}, &raw, lists, nil, 2000, "", nil); err != nil {
			t.Fatal(err)
		}
	}
	for n := range lists.shards {
		if s := &lists.shards[n]; s.bytes > lists.budget || len(s.lists) > 3 {
			t.Fatalf("shard %d holds %d lists, %d bytes (budget %d)", n, len(s.lists), s.bytes, lists.budget)
		}
	}
}

func TestListCacheKeepsNoFaultyList(t *testing.T) {
	// the second item is not [id, score, category]: an error only for a k that reaches it
	raw := `{"items":[["i1",1,"c"],["i2"]],"feature_ts":1}`
	lists := newListCache(1 << 20)
	if out, err := Answer(&Request{UserID: "u1", K: 1}, &raw, lists, nil, 2, "", nil); err != nil || len(out.Items) != 1 {
		t.Fatalf("k = 1: %v, %v", out, err)
	}
	if _, err := Answer(&Request{UserID: "u1", K: 2}, &raw, lists, nil, 2, "", nil); err == nil {
		t.Fatal("k = 2 reached the faulty item without an error")
	}
	if countLists(lists) != 0 {
		t.Fatal("a faulty list was kept")
	}
}

func countLists(c *ListCache) int {
	n := 0
	for i := range c.shards {
		n += len(c.shards[i].lists)
	}
	return n
}

func TestListCacheUnderConcurrentCallsAndRewrites(t *testing.T) {
	lists := newListCache(listShards * 4 * decodeList(storedList("v0", 20)).bytes)
	versions := []string{storedList("v0", 20), storedList("v1", 20), storedList("v2", 20)}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range 2000 {
				raw := versions[(g+n)%len(versions)]
				q := &Request{UserID: fmt.Sprint("u", n%50), K: 5}
				out, err := Answer(q, &raw, lists, nil, 2000, "", nil)
				if err != nil || len(out.Items) != 5 || out.ModelVersion != fmt.Sprint("v", (g+n)%len(versions)) {
					t.Errorf("answer %v, %v for %s", out, err, raw[:40])
					return
				}
			}
		}()
	}
	wg.Wait()
}
