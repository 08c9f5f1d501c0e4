package main

// Editorial rules at serving time: the precedence is contract/editorial.py's, and
// tests/vectors/editorial.json holds this file and serving/lookup.py to the same answers.

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"

	"github.com/redis/rueidis"

	"streamrank/lookupd/internal/pb"
)

// EditorialRule is one rule of the applied spec (contract.editorial.Rule.spec).
type EditorialRule struct {
	Name       string   `json:"name"`
	Action     string   `json:"action"`
	Item       string   `json:"item"`
	Category   string   `json:"category"`
	Position   int      `json:"position"`
	Factor     float64  `json:"factor"`
	Placements []string `json:"placements"`
	Segments   []string `json:"segments"`
	StartMs    int64    `json:"start_ms"`
	EndMs      int64    `json:"end_ms"`
}

// Editorial is the applied rules, in file order, and the items the catalog marks unavailable.
type Editorial struct {
	Rules       []EditorialRule
	Unavailable set
	Version     string
}

// ruleFields: every field a stored rule has (contract.editorial.RULE_FIELDS); a spec with one
// missing or unknown is refused, as Python refuses it, so no engine serves rules it half reads.
var ruleFields = []string{"action", "category", "end_ms", "factor", "item", "name", "placements", "position",
	"segments", "start_ms"}

func decodeEditorial(raw []byte) ([]EditorialRule, error) {
	again := "(apply it again with this version's `streamrank rules apply`)"
	var shape struct {
		Rules *[]map[string]json.RawMessage `json:"rules"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&shape); err != nil {
		return nil, fmt.Errorf("rules spec: %w %s", err, again)
	}
	if shape.Rules == nil {
		return nil, fmt.Errorf("rules spec: no rules list %s", again)
	}
	for n, r := range *shape.Rules {
		fields := slices.Sorted(maps.Keys(r))
		if !slices.Equal(fields, ruleFields) {
			return nil, fmt.Errorf("rules spec: rule %d has fields %v, expected %v %s", n, fields, ruleFields, again)
		}
	}
	var spec struct {
		Rules []EditorialRule `json:"rules"`
	}
	if err := json.Unmarshal(raw, &spec); err != nil {
		return nil, fmt.Errorf("rules spec: %w %s", err, again)
	}
	return spec.Rules, nil
}

// on: whether e changes any answer (nil or empty: the lookup's fast path).
func (e *Editorial) on() bool { return e != nil && (len(e.Rules) > 0 || len(e.Unavailable) > 0) }

func (r *EditorialRule) targets(it *pb.ScoredItem) bool {
	if r.Item != "" {
		return it.ItemId == r.Item
	}
	return it.Category == r.Category
}

func (e *Editorial) active(placement string, segments []string, nowMs int64) []*EditorialRule {
	var out []*EditorialRule
	for n := range e.Rules {
		r := &e.Rules[n]
		if nowMs < r.StartMs || nowMs >= r.EndMs {
			continue
		}
		if len(r.Placements) > 0 && !slices.Contains(r.Placements, placement) {
			continue
		}
		if len(r.Segments) > 0 && !slices.ContainsFunc(segments, func(s string) bool { return slices.Contains(r.Segments, s) }) {
			continue
		}
		out = append(out, r)
	}
	return out
}

// Apply takes the whole list, already through the request's filters, and returns it with the
// rules applied, cut to k. owned: the items were made for this call (a stored list's), so a boost
// or bury may change them in place; a shared list's (the popular cache's) are copied instead.
func (e *Editorial) Apply(items []*pb.ScoredItem, q *Request, segments []string, nowMs int64, owned bool) []*pb.ScoredItem {
	rules := e.active(q.Placement, segments, nowMs)
	var excludes, factors, pins []*EditorialRule
	for _, r := range rules {
		switch r.Action {
		case "exclude":
			excludes = append(excludes, r)
		case "boost", "bury":
			factors = append(factors, r)
		case "pin":
			pins = append(pins, r)
		}
	}
	allowed := func(it *pb.ScoredItem) bool {
		if e.Unavailable.has(it.ItemId) || !q.Filters.keep(it.ItemId, it.Category) {
			return false
		}
		for _, x := range excludes {
			if x.targets(it) {
				return false
			}
		}
		return true
	}
	kept := make([]*pb.ScoredItem, 0, len(items))
	rescored := false
	for _, it := range items {
		if !allowed(it) {
			continue
		}
		factor := 1.0
		for _, x := range factors {
			if x.targets(it) {
				factor *= x.Factor
			}
		}
		if factor != 1.0 {
			reasons := it.Reasons
			if factor > 1.0 {
				reasons = append([]string{"boosted"}, it.Reasons...)
			}
			score := it.Score * factor
			if it.Score < 0 { // a ranking model's negative score is divided: a boost always raises it
				score = it.Score / factor
			}
			if owned {
				it.Score, it.Reasons = score, reasons
			} else {
				it = &pb.ScoredItem{ItemId: it.ItemId, Score: score, Category: it.Category, Reasons: reasons}
			}
			rescored = true
		}
		kept = append(kept, it)
	}
	if rescored { // ties keep the model's order
		slices.SortStableFunc(kept, func(a, b *pb.ScoredItem) int { return cmp.Compare(b.Score, a.Score) })
	}
	placed := map[int]*pb.ScoredItem{}
	pinned := set{}
	for _, x := range pins {
		if pinned.has(x.Item) {
			continue
		}
		var it *pb.ScoredItem
		if at := slices.IndexFunc(kept, func(i *pb.ScoredItem) bool { return i.ItemId == x.Item }); at >= 0 {
			it = kept[at]
			kept = slices.Delete(kept, at, at+1)
		} else {
			it = &pb.ScoredItem{ItemId: x.Item, Category: x.Category}
		}
		if !allowed(it) {
			continue
		}
		position := x.Position - 1
		for placed[position] != nil {
			position++
		}
		reasons := []string{"pinned"}
		for _, c := range it.Reasons {
			if c != "pinned" {
				reasons = append(reasons, c)
			}
		}
		placed[position] = &pb.ScoredItem{ItemId: it.ItemId, Score: it.Score, Category: it.Category, Reasons: reasons}
		pinned[it.ItemId] = struct{}{}
	}
	out := make([]*pb.ScoredItem, 0, min(q.K, len(kept)+len(placed)))
	rest := 0
	for len(out) < q.K {
		if p := placed[len(out)]; p != nil {
			out = append(out, p)
			delete(placed, len(out)-1)
			continue
		}
		if rest == len(kept) {
			break
		}
		out = append(out, kept[rest])
		rest++
	}
	positions := make([]int, 0, len(placed)) // pins past the end of the list, in position order
	for p := range placed {
		positions = append(positions, p)
	}
	slices.Sort(positions)
	for _, p := range positions {
		if len(out) == q.K {
			break
		}
		out = append(out, placed[p])
	}
	return out
}

// RefreshEditorial reloads the rules when `streamrank rules apply` stored a new version, and the
// set of unavailable items; false if Redis did not answer.
func (s *Store) RefreshEditorial(ctx context.Context) bool {
	cctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	c := s.spec.Contract
	replies := s.rdb.DoMulti(cctx, s.rdb.B().Hmget().Key(c.Rules).Field("spec", "version").Build(),
		s.rdb.B().Smembers().Key(c.UnavailableItems).Build())
	fields, err := replies[0].ToArray()
	if err != nil || len(fields) != 2 {
		slog.Debug("editorial rules not refreshed", "error", fmt.Sprint(err))
		return false
	}
	unavailable, err := replies[1].AsStrSlice()
	if err != nil && !rueidis.IsRedisNil(err) {
		slog.Debug("unavailable items not refreshed", "error", err.Error())
		return false
	}
	next := &Editorial{Unavailable: setOf(unavailable)}
	raw, err1 := fields[0].ToString()
	version, err2 := fields[1].ToString()
	cur := s.editorial.Load()
	switch {
	case err1 != nil || err2 != nil: // none applied, or the hash was deleted
	case cur != nil && cur.Version == version:
		next.Rules, next.Version = cur.Rules, version
	default:
		rules, err := decodeEditorial([]byte(raw))
		if err != nil {
			slog.Error("editorial rules version " + version + " not loaded: " + err.Error())
			if cur != nil {
				next.Rules, next.Version = cur.Rules, cur.Version
			}
			break
		}
		next.Rules, next.Version = rules, version
		slog.Info(fmt.Sprintf("editorial rules version %s: %d rules", version, len(rules)))
	}
	if !next.on() && next.Version == "" {
		next = nil
	}
	s.editorial.Store(next)
	return true
}

// Editorial is the applied rules and unavailable items (nil: none).
func (s *Store) Editorial() *Editorial { return s.editorial.Load() }

func (s *Store) editorialLoop(ctx context.Context) {
	every(ctx, seconds(s.spec.RulesRefreshS), func() { s.RefreshEditorial(ctx) })
}

// unlimited: a request's k while the editorial rules see the whole list (they cut it to k after).
const unlimited = math.MaxInt32
