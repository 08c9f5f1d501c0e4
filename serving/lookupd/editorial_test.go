package main

// The editorial rules against the shared vectors (tests/vectors/editorial.json), which
// tests/unit/test_lookup_vectors.py also holds serving/lookup.py to.

import (
	"reflect"
	"testing"
)

type editorialVectors struct {
	NowMs    int64             `json:"now_ms"`
	DefaultK int               `json:"default_k"`
	MaxK     int               `json:"max_k"`
	Stored   map[string]string `json:"stored"`
	Popular  [][]any           `json:"popular"`
	Cases    []struct {
		Name        string          `json:"name"`
		Rules       []EditorialRule `json:"rules"`
		Unavailable []string        `json:"unavailable"`
		Request     vectorRequest   `json:"request"`
		Expect      map[string]any  `json:"expect"`
	} `json:"cases"`
}

func TestEditorialRulesGiveTheSharedAnswers(t *testing.T) {
	var v editorialVectors
	readVectors(t, "editorial.json", &v)
	rules, err := newRules(loadVectors(t).Contract, v.DefaultK, v.MaxK)
	if err != nil {
		t.Fatal(err)
	}
	popular := popularItems(v.Popular)
	for _, run := range cacheRuns() {
		for _, c := range v.Cases {
			t.Run(run.name+"/"+c.Name, func(t *testing.T) {
				q := c.Request
				checked, err := rules.Check(q.proto())
				if err != nil {
					t.Fatal(err)
				}
				var raw *string
				if s, ok := v.Stored[q.UserID]; ok {
					raw = &s
				}
				ed := &Editorial{Rules: c.Rules, Unavailable: setOf(c.Unavailable), Version: "v-test"}
				answer, err := Answer(&checked, raw, run.lists, popular, v.NowMs, "", ed)
				if err != nil {
					t.Fatal(err)
				}
				items := []any{}
				for _, i := range answer.Items {
					items = append(items, []any{i.ItemId, i.Score, i.Category, append([]string{}, i.Reasons...)})
				}
				got := map[string]any{"items": items, "segments": append([]string{}, answer.Segments...), "fallback": answer.Fallback}
				if g, w := normalized(t, got), normalized(t, c.Expect); !reflect.DeepEqual(g, w) {
					t.Fatalf("got  %v\nwant %v", g, w)
				}
				if answer.RulesVersion != "v-test" {
					t.Fatalf("rules version %q", answer.RulesVersion)
				}
			})
		}
	}
}

func TestStoredRulesSpecsNotAsApplyStoresThemAreRefused(t *testing.T) {
	var v struct {
		Refused []struct {
			Name string `json:"name"`
			Spec string `json:"spec"`
		} `json:"refused_specs"`
	}
	readVectors(t, "editorial.json", &v)
	if len(v.Refused) == 0 {
		t.Fatal("no refused specs in the vectors")
	}
	for _, c := range v.Refused {
		if _, err := decodeEditorial([]byte(c.Spec)); err == nil {
			t.Errorf("%s: loaded", c.Name)
		}
	}
}
