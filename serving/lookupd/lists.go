package main

import (
	"hash/maphash"
	"sync"
	"unsafe"

	"streamrank/lookupd/internal/pb"
)

// ListCache keeps users' stored lists decoded, so a call whose list Redis (or the client-side
// cache) returns unchanged since the last call does not parse its JSON again. An entry answers
// only for the exact text it was decoded from, so a rewritten list is decoded again on its first
// read, whatever the cache holds. Only lists that decode without a fault are kept; a faulty one
// takes Answer's item-by-item path, whose errors depend on k and the filters.
type ListCache struct {
	seed   maphash.Seed
	shards [listShards]listShard
	budget int // bytes per shard
}

// listShards: calls lock one shard of the cache each, so concurrent calls rarely wait on each other.
const listShards = 64

type listShard struct {
	mu    sync.Mutex
	lists map[string]*decodedList
	bytes int
}

// decodedList is a stored list (contract.keys.RecList) as Answer reads it. The items' ids and
// categories are one string, which each item marks its end in: no item holds a pointer, so the
// collector scans a list as four pointers, however long it is (with a string per id and category,
// 10,000 lists of 100 items would be 2 million). A call makes the messages it answers with.
type decodedList struct {
	raw          string
	text         string // every item's id then category, in order
	items        []storedItem
	modelVersion string
	featureTsMs  int64
	bytes        int
	segments     []string
	reasons      [][]string // per item (nil: no item has any)
}

// storedItem: its id is text[the previous item's categoryEnd:idEnd], its category text[idEnd:categoryEnd].
type storedItem struct {
	score              float64
	idEnd, categoryEnd uint32
}

// storedItemBytes: a decoded item's memory besides its text.
const storedItemBytes = int(unsafe.Sizeof(storedItem{}))

// newListCache holds up to about `bytes` of decoded lists; nil (decode on every call) for 0.
func newListCache(bytes int) *ListCache {
	if bytes <= 0 {
		return nil
	}
	c := &ListCache{seed: maphash.MakeSeed(), budget: max(bytes/listShards, 1)}
	for n := range c.shards {
		c.shards[n].lists = map[string]*decodedList{}
	}
	return c
}

// decoded is user's list decoded from raw, from the cache when raw is the text it was decoded from
// (the same string a client-side cache hit returns compares in O(1)); nil when c is nil or raw
// does not decode cleanly.
func (c *ListCache) decoded(user, raw string) *decodedList {
	if c == nil {
		return nil
	}
	shard := &c.shards[maphash.String(c.seed, user)%listShards]
	shard.mu.Lock()
	l := shard.lists[user]
	shard.mu.Unlock()
	if l != nil && l.raw == raw {
		return l
	}
	if l = decodeList(raw); l == nil || l.bytes > c.budget {
		return l
	}
	shard.mu.Lock()
	defer shard.mu.Unlock()
	if old := shard.lists[user]; old != nil {
		shard.bytes -= old.bytes
		delete(shard.lists, user)
	}
	// Go's map iteration starts at a random entry: a random eviction, without the upkeep of an LRU
	for other, o := range shard.lists {
		if shard.bytes+l.bytes <= c.budget {
			break
		}
		shard.bytes -= o.bytes
		delete(shard.lists, other)
	}
	shard.lists[user] = l
	shard.bytes += l.bytes
	return l
}

// decodeList parses a whole stored list with the reads Answer makes item by item; nil if any part
// of it would make Answer fail for some k or filters (not JSON, an item that is not
// [id, score, category], a score that is not a number, no usable feature_ts).
func decodeList(raw string) *decodedList {
	p := parsers.Get()
	defer parsers.Put(p)
	d, err := p.Parse(raw)
	if err != nil {
		return nil
	}
	entries := d.GetArray("items")
	l := &decodedList{raw: raw, items: make([]storedItem, len(entries))}
	size := 0
	for _, e := range entries {
		parts := e.GetArray()
		if len(parts) < 2 {
			return nil
		}
		size += len(parts[0].GetStringBytes())
		if len(parts) > 2 {
			size += len(parts[2].GetStringBytes())
		}
	}
	text := make([]byte, 0, size)
	for n, e := range entries {
		parts := e.GetArray()
		if len(parts) > 3 {
			if l.reasons == nil {
				l.reasons = make([][]string, len(entries))
			}
			l.reasons[n] = stringsOf(parts[3])
			for _, r := range l.reasons[n] {
				size += len(r)
			}
		}
		text = append(text, parts[0].GetStringBytes()...)
		l.items[n].idEnd = uint32(len(text))
		if len(parts) > 2 {
			text = append(text, parts[2].GetStringBytes()...)
		}
		l.items[n].categoryEnd = uint32(len(text))
		if l.items[n].score, err = parts[1].Float64(); err != nil {
			return nil
		}
	}
	l.text = unsafe.String(unsafe.SliceData(text), len(text)) // text is not written again
	l.modelVersion = string(d.GetStringBytes("model_version"))
	l.segments = stringsOf(d.Get("segments"))
	if ts := d.Get("feature_ts"); ts == nil {
		return nil
	} else if l.featureTsMs, err = featureTsOf(ts); err != nil {
		return nil
	}
	l.bytes = len(raw) + len(l.text) + len(l.items)*storedItemBytes + len(l.modelVersion)
	return l
}

// fill sets out's list fields as Answer's item-by-item path would from the same text.
func (l *decodedList) fill(out *pb.GetRecommendationsResponse, q *Request, nowMs int64) {
	n := min(q.K, len(l.items))
	messages := make([]pb.ScoredItem, n) // one allocation for the answer's items
	out.Items = make([]*pb.ScoredItem, 0, n)
	start := uint32(0)
	for n, it := range l.items {
		if len(out.Items) == q.K {
			break
		}
		id, category := l.text[start:it.idEnd], l.text[it.idEnd:it.categoryEnd]
		start = it.categoryEnd
		if q.Filters.keep(id, category) {
			m := &messages[len(out.Items)]
			m.ItemId, m.Score, m.Category = id, it.score, category
			if l.reasons != nil {
				m.Reasons = l.reasons[n]
			}
			out.Items = append(out.Items, m)
		}
	}
	out.ModelVersion, out.FeatureTsMs, out.Segments = l.modelVersion, l.featureTsMs, l.segments
	out.ListAgeMs = max(0, nowMs-l.featureTsMs)
}
