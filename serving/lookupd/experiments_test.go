package main

import (
	"encoding/json"
	"testing"
)

func TestAssignmentGivesTheSharedAnswers(t *testing.T) {
	var v struct {
		Buckets []struct {
			Salt   string `json:"salt"`
			UserID string `json:"user_id"`
			Bucket uint64 `json:"bucket"`
		} `json:"buckets"`
		Spec   json.RawMessage `json:"spec"`
		Assign []struct {
			UserID      string            `json:"user_id"`
			NowMs       int64             `json:"now_ms"`
			Assignments map[string]string `json:"assignments"`
		} `json:"assign"`
	}
	readVectors(t, "assignment.json", &v)
	for _, c := range v.Buckets {
		if got := bucket(c.Salt, c.UserID, 10000); got != c.Bucket {
			t.Fatalf("bucket(%q, %q) = %d, want %d", c.Salt, c.UserID, got, c.Bucket)
		}
	}
	spec, err := decodeExperiments(v.Spec)
	if err != nil {
		t.Fatal(err)
	}
	in := 0
	for _, c := range v.Assign {
		got := map[string]string{}
		for _, a := range spec.Assign(c.UserID, c.NowMs) {
			got[a.Experiment] = a.Arm
		}
		if len(got) != len(c.Assignments) {
			t.Fatalf("assign(%q, %d) = %v, want %v", c.UserID, c.NowMs, got, c.Assignments)
		}
		for k, arm := range c.Assignments {
			if got[k] != arm {
				t.Fatalf("assign(%q, %d) = %v, want %v", c.UserID, c.NowMs, got, c.Assignments)
			}
		}
		in += len(got)
	}
	if in == 0 {
		t.Fatal("the vectors assign nobody: they test nothing")
	}
	if _, err := decodeExperiments([]byte(`{"buckets": 10000, "experiments": [], "extra": 1}`)); err == nil {
		t.Fatal("an unknown field in the spec was taken")
	}
}
