package main

// The serving guards (breaker, read budget, status names) against the shared vectors in
// tests/vectors/serving.json, which tests/unit/test_serving_vectors.py also holds serving/core.py to.

import (
	"encoding/json"
	"errors"
	"math"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type servingVectors struct {
	Contract Contract `json:"contract"` // a part of what `streamrank serve` passes (checked by pytest)
	Breaker  []struct {
		Name     string  `json:"name"`
		Failures int     `json:"failures"`
		ResetS   float64 `json:"reset_s"`
		Steps    []struct {
			AtS    float64 `json:"at_s"`
			Op     string  `json:"op"`
			Result *bool   `json:"result"`
			State  string  `json:"state"`
		} `json:"steps"`
	} `json:"breaker"`
	ReadBudget []struct {
		Name          string   `json:"name"`
		RedisTimeoutS float64  `json:"redis_timeout_s"`
		RemainingS    *float64 `json:"remaining_s"`
		ExpectBudgetS float64  `json:"expect_budget_s"`
	} `json:"read_budget"`
	Status []struct {
		Kind             string `json:"kind"`
		ExpectStatusName string `json:"expect_status_name"`
	} `json:"status"`
	CodeNames map[string]uint32 `json:"code_names"` // name: wire number
}

func loadServingVectors(t *testing.T) *servingVectors {
	raw, err := os.ReadFile("../../tests/vectors/serving.json")
	if err != nil {
		t.Fatal(err)
	}
	var v servingVectors
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	return &v
}

func TestBreakerFollowsTheSharedSteps(t *testing.T) {
	for _, c := range loadServingVectors(t).Breaker {
		t.Run(c.Name, func(t *testing.T) {
			// a zero openedAt means closed, so the scripted clock starts well after the zero time
			start, at := time.Unix(1_000_000, 0), time.Duration(0)
			b := &Breaker{failures: c.Failures, reset: seconds(c.ResetS), now: func() time.Time { return start.Add(at) }}
			for n, s := range c.Steps {
				at = seconds(s.AtS)
				var result *bool
				switch s.Op {
				case "allow":
					r := b.Allow()
					result = &r
				case "success":
					b.Success()
				case "failure":
					b.Failure()
				case "abandon":
					b.Abandon()
				default:
					t.Fatalf("step %d: unknown op %q", n, s.Op)
				}
				if (result == nil) != (s.Result == nil) || (result != nil && *result != *s.Result) {
					t.Fatalf("step %d (%s at %gs): result %v, want %v", n, s.Op, s.AtS, deref(result), deref(s.Result))
				}
				if got := b.state(b.clock()); got != s.State {
					t.Fatalf("step %d (%s at %gs): state %s, want %s", n, s.Op, s.AtS, got, s.State)
				}
			}
		})
	}
}

func deref(b *bool) any {
	if b == nil {
		return "none"
	}
	return *b
}

func TestReadBudgetFollowsTheSharedCases(t *testing.T) {
	v := loadServingVectors(t)
	reserve := seconds(v.Contract.DeadlineReserveS)
	if reserve <= 0 {
		t.Fatal("the vectors' contract has no deadline_reserve_s")
	}
	for _, c := range v.ReadBudget {
		t.Run(c.Name, func(t *testing.T) {
			var remaining *time.Duration
			if c.RemainingS != nil {
				r := seconds(*c.RemainingS)
				remaining = &r
			}
			got := readBudget(seconds(c.RedisTimeoutS), remaining, reserve)
			if got < 0 || math.Abs(got.Seconds()-c.ExpectBudgetS) > 1e-9 {
				t.Fatalf("budget %v, want %gs", got, c.ExpectBudgetS)
			}
		})
	}
}

func TestStatusNamesFollowTheSharedCases(t *testing.T) {
	failures := map[string]error{
		"none":              nil,
		"invalid_request":   &InvalidRequest{"user_id is empty"},
		"store_unavailable": &StoreUnavailable{"circuit breaker open"},
		"caller_deadline":   &CallerDeadline{0},
		"other":             errors.New("stored list is not JSON"),
	}
	for _, c := range loadServingVectors(t).Status {
		err, ok := failures[c.Kind]
		if !ok {
			t.Fatalf("unknown failure kind %q", c.Kind)
		}
		if got := codeName(status.Code(statusOf(err))); got != c.ExpectStatusName {
			t.Errorf("%s: status %s, want %s", c.Kind, got, c.ExpectStatusName)
		}
	}
}

func TestCodeNamesArePythonGrpcNames(t *testing.T) {
	for name, code := range loadServingVectors(t).CodeNames {
		if got := codeName(codes.Code(code)); got != name {
			t.Errorf("codeName(%d) = %s, want %s", code, got, name)
		}
	}
}
