package main

import (
	"encoding/json"
	"reflect"
	"testing"

	"streamrank/lookupd/internal/pb"
)

func TestExposureRecordsHaveTheContractsShape(t *testing.T) {
	var v struct {
		Answer struct {
			UserID string `json:"user_id"`
			Items  []struct {
				ItemID   string  `json:"item_id"`
				Score    float64 `json:"score"`
				Category string  `json:"category"`
			} `json:"items"`
			ModelVersion   string            `json:"model_version"`
			FeatureTsMs    int64             `json:"feature_ts_ms"`
			ListAgeMs      int64             `json:"list_age_ms"`
			Fallback       bool              `json:"fallback"`
			FallbackReason string            `json:"fallback_reason"`
			Placement      string            `json:"placement"`
			RequestID      string            `json:"request_id"`
			Experiments    map[string]string `json:"experiments"`
		} `json:"answer"`
		StoredID   string         `json:"stored_id"`
		ServedAtMs int64          `json:"served_at_ms"`
		Record     map[string]any `json:"record"`
	}
	readVectors(t, "exposure.json", &v)
	a := v.Answer
	r := &pb.GetRecommendationsResponse{UserId: a.UserID, ModelVersion: a.ModelVersion, FeatureTsMs: a.FeatureTsMs,
		ListAgeMs: a.ListAgeMs, Fallback: a.Fallback, FallbackReason: a.FallbackReason, Placement: a.Placement,
		RequestId: a.RequestID, Experiments: a.Experiments}
	for _, i := range a.Items {
		r.Items = append(r.Items, &pb.ScoredItem{ItemId: i.ItemID, Score: i.Score, Category: i.Category})
	}
	encoded, err := json.Marshal(exposureOf(r, v.StoredID, v.ServedAtMs))
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(encoded, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, v.Record) {
		t.Fatalf("exposure record\n got %s\nwant %v", encoded, v.Record)
	}
	// no arms: an empty object, as Python writes, not null
	r.Experiments = nil
	if e := exposureOf(r, v.StoredID, v.ServedAtMs); e.Experiments == nil {
		t.Fatal("experiments encoded as null")
	}
	if id := newRequestID(); len(id) != 32 || id == newRequestID() {
		t.Fatalf("request id %q", id)
	}
}
