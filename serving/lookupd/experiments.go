package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"

	"github.com/redis/rueidis"
)

// Experiments is the applied experiments spec (contract.experiments.ExperimentsFile.spec, stored
// by `streamrank experiments apply`): integers only, so assignment here equals Python's and the
// job's (tests/vectors/assignment.json holds all of them to the same answers).
type Experiments struct {
	Buckets         uint64       `json:"buckets"`
	LayerSaltPrefix string       `json:"layer_salt_prefix"`
	Experiments     []Experiment `json:"experiments"`
}

type Experiment struct {
	Name    string          `json:"name"`
	Layer   string          `json:"layer"`
	Salt    string          `json:"salt"`
	Traffic [2]uint64       `json:"traffic"`
	StartMs int64           `json:"start_ms"`
	EndMs   int64           `json:"end_ms"`
	Control string          `json:"control"`
	Arms    []ExperimentArm `json:"arms"`
}

type ExperimentArm struct {
	Name         string         `json:"name"`
	Upto         uint64         `json:"upto"`
	Ranker       string         `json:"ranker"`
	ModelVersion *string        `json:"model_version"`
	Candidates   map[string]int `json:"candidates"`
}

// Assignment is one experiment's arm for a user.
type Assignment struct{ Experiment, Arm string }

func decodeExperiments(raw []byte) (*Experiments, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var e Experiments
	if err := dec.Decode(&e); err != nil {
		return nil, fmt.Errorf("experiments spec: %w (apply it again with this version's `streamrank experiments apply`)", err)
	}
	if e.Buckets == 0 {
		return nil, fmt.Errorf("experiments spec: buckets is 0")
	}
	for _, x := range e.Experiments {
		if len(x.Arms) == 0 || x.Arms[len(x.Arms)-1].Upto == 0 {
			return nil, fmt.Errorf("experiments spec: experiment %q has no weighted arm", x.Name)
		}
	}
	return &e, nil
}

// bucket is contract.experiments.bucket: SHA-256(salt, NUL, user id), its first 8 bytes as a
// big-endian integer, modulo the bucket count.
func bucket(salt, userID string, buckets uint64) uint64 {
	h := sha256.New()
	h.Write([]byte(salt))
	h.Write([]byte{0})
	h.Write([]byte(userID))
	return binary.BigEndian.Uint64(h.Sum(nil)[:8]) % buckets
}

// Assign gives the user's arm in each running experiment whose traffic range holds them, in the
// spec's order: one layer hash per layer, then the experiment's own salt picks the arm by weight.
func (e *Experiments) Assign(userID string, nowMs int64) []Assignment {
	if e == nil {
		return nil
	}
	var out []Assignment
	layers := map[string]uint64{}
	for _, x := range e.Experiments {
		if nowMs < x.StartMs || nowMs >= x.EndMs {
			continue
		}
		lb, ok := layers[x.Layer]
		if !ok {
			lb = bucket(e.LayerSaltPrefix+x.Layer, userID, e.Buckets)
			layers[x.Layer] = lb
		}
		if lb < x.Traffic[0] || lb >= x.Traffic[1] {
			continue
		}
		total := x.Arms[len(x.Arms)-1].Upto
		b := bucket(x.Salt, userID, e.Buckets)
		for _, a := range x.Arms {
			if b*total < a.Upto*e.Buckets { // integer thresholds, as in Python
				out = append(out, Assignment{x.Name, a.Name})
				break
			}
		}
	}
	return out
}

// RefreshExperiments reloads the experiments when `streamrank experiments apply` stored a new
// version; false if Redis did not answer.
func (s *Store) RefreshExperiments(ctx context.Context) bool {
	cctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	key := s.spec.Contract.Experiments
	version, err := s.rdb.Do(cctx, s.rdb.B().Hget().Key(key).Field("version").Build()).ToString()
	if rueidis.IsRedisNil(err) { // none applied, or the hash was deleted: no experiment runs
		s.experiments.Store(nil)
		return true
	}
	if err != nil {
		slog.Debug("experiments not refreshed", "error", err.Error())
		return false
	}
	if cur := s.experiments.Load(); cur != nil && cur.version == version {
		return true
	}
	reply, err := s.rdb.Do(cctx, s.rdb.B().Hmget().Key(key).Field("spec", "version").Build()).ToArray()
	if err != nil || len(reply) != 2 {
		slog.Debug("experiments not refreshed", "error", fmt.Sprint(err))
		return false
	}
	raw, err1 := reply[0].ToString()
	version, err2 := reply[1].ToString()
	if err1 != nil || err2 != nil {
		return false
	}
	e, err := decodeExperiments([]byte(raw))
	if err != nil {
		slog.Error("experiments version " + version + " not loaded: " + err.Error())
		return false
	}
	s.experiments.Store(&appliedExperiments{e, version})
	names := make([]string, len(e.Experiments))
	for n, x := range e.Experiments {
		names[n] = x.Name
	}
	slog.Info(fmt.Sprintf("experiments version %s: %s", version, strings.Join(names, ", ")))
	return true
}

type appliedExperiments struct {
	spec    *Experiments
	version string
}

// Experiments is the applied spec (nil: none applied).
func (s *Store) Experiments() *Experiments {
	if a := s.experiments.Load(); a != nil {
		return a.spec
	}
	return nil
}

func (s *Store) experimentsLoop(ctx context.Context) {
	every(ctx, seconds(s.spec.ExperimentsRefreshS), func() { s.RefreshExperiments(ctx) })
}
