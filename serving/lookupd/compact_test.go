package main

// Packed values against the shared vectors (tests/vectors/compact.json, which
// tests/unit/test_compact.py holds contract/compact.py to), with the dictionaries as the job
// ships them (contract/dicts), read through the same fetch lookupd uses against Redis.

import (
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPackedValuesDecodeToTheirText(t *testing.T) {
	var v struct {
		Values []struct {
			Kind   string `json:"kind"`
			Text   string `json:"text"`
			Packed string `json:"packed"`
		} `json:"values"`
	}
	readVectors(t, "compact.json", &v)
	files, _ := filepath.Glob("../../contract/dicts/*.zdict")
	dicts := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		id := strings.SplitN(strings.TrimSuffix(filepath.Base(f), ".zdict"), "-", 2)[1]
		dicts["codec:dict:"+id] = b
	}
	fetched := 0
	u := newUnpacker("codec:dict:", func(_ context.Context, key string) ([]byte, error) {
		fetched++
		return dicts[key], nil
	})
	if len(v.Values) != 3 {
		t.Fatalf("%d vectors, want one per kind", len(v.Values))
	}
	for round := 0; round < 2; round++ {
		for _, c := range v.Values {
			packed, err := base64.StdEncoding.DecodeString(c.Packed)
			if err != nil {
				t.Fatal(err)
			}
			got, err := u.Text(context.Background(), string(packed))
			if err != nil || got != c.Text {
				t.Fatalf("%s: %q, %v; want %q", c.Kind, got, err, c.Text)
			}
			if same, _ := u.Text(context.Background(), c.Text); same != c.Text {
				t.Fatalf("%s: JSON text changed on the way through: %q", c.Kind, same)
			}
		}
	}
	if fetched != 3 {
		t.Fatalf("dictionaries fetched %d times, want once each (3)", fetched)
	}
	missing := newUnpacker("codec:dict:", func(context.Context, string) ([]byte, error) { return nil, nil })
	packed, _ := base64.StdEncoding.DecodeString(v.Values[0].Packed)
	if _, err := missing.Text(context.Background(), string(packed)); err == nil || !strings.Contains(err.Error(), "restart it") {
		t.Fatalf("a dictionary Redis lacks: %v", err)
	}
	if _, err := u.Text(context.Background(), "z:1:not a frame"); err == nil {
		t.Fatal("a damaged frame was read")
	}
}

func TestUserKeysFollowTheLayoutVectors(t *testing.T) {
	var v struct {
		Cases []struct {
			User    string `json:"user"`
			Shards  int    `json:"shards"`
			Rec     string `json:"rec"`
			Profile string `json:"profile"`
		} `json:"cases"`
	}
	readVectors(t, "layout.json", &v)
	if len(v.Cases) == 0 {
		t.Fatal("no layout vectors")
	}
	for _, c := range v.Cases {
		if got := userKey("rec:", c.User, c.Shards); got != c.Rec {
			t.Errorf("%s with %d shards: %q, want %q", c.User, c.Shards, got, c.Rec)
		}
		if got := userKey("profile:", c.User, c.Shards); got != c.Profile {
			t.Errorf("%s with %d shards: %q, want %q", c.User, c.Shards, got, c.Profile)
		}
	}
}
