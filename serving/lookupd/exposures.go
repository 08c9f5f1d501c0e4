package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/twmb/franz-go/pkg/kgo"

	"streamrank/lookupd/internal/pb"
)

// The same metric as serving/exposures.py.
var exposureOutcomes = promauto.NewCounterVec(prometheus.CounterOpts{
	Name: "streamrank_serving_exposures_total",
	Help: "Exposure records by outcome: sent (Kafka acknowledged), dropped (buffer full), failed (Kafka refused after retries)"},
	[]string{"outcome"})

const warnEvery = 10 * time.Second

// Exposure is one answer served, as contract/exposures.py defines it (EXPOSURE_FIELDS, in order).
type Exposure struct {
	RequestID      string            `json:"request_id"`
	UserID         string            `json:"user_id"` // the stored id: the pseudonym under [privacy]
	Placement      string            `json:"placement"`
	Experiments    map[string]string `json:"experiments"`
	Items          []ExposedItem     `json:"items"`
	ModelVersion   string            `json:"model_version"`
	ListAgeMs      int64             `json:"list_age_ms"`
	Fallback       bool              `json:"fallback"`
	FallbackReason string            `json:"fallback_reason"`
	ServedAtMs     int64             `json:"served_at_ms"`
	Interface      string            `json:"interface"`
}

type ExposedItem struct {
	ItemID   string  `json:"item_id"`
	Position int     `json:"position"` // 1 for the top item
	Score    float64 `json:"score"`
	Category string  `json:"category"`
}

func exposureOf(r *pb.GetRecommendationsResponse, storedID string, servedAtMs int64) *Exposure {
	items := make([]ExposedItem, len(r.Items))
	for n, i := range r.Items {
		items[n] = ExposedItem{i.ItemId, n + 1, i.Score, i.Category}
	}
	experiments := r.Experiments
	if experiments == nil {
		experiments = map[string]string{}
	}
	return &Exposure{r.RequestId, storedID, r.Placement, experiments, items, r.ModelVersion, r.ListAgeMs,
		r.Fallback, r.FallbackReason, servedAtMs, "grpc"}
}

// newRequestID is contract.exposures.new_request_id: 128 random bits as 32 hex digits.
func newRequestID() string {
	var b [16]byte
	var id [32]byte        // on the stack: the string is the one allocation
	_, _ = rand.Read(b[:]) // never fails (crypto/rand on Linux)
	hex.Encode(id[:], b[:])
	return string(id[:])
}

// ExposureLog sends exposure records to Kafka with franz-go, from one goroutine: a call only
// counts its record as held and hands it over (no encoding, no Kafka client work on the call's
// path). At most buffer_records are held (handed over, or in the client unacknowledged): while
// Kafka is slow or down they fill up, and then further records are dropped and counted. What is
// held is sent when Kafka is back.
type ExposureLog struct {
	client     *kgo.Client
	queue      chan *Exposure // capacity buffer_records: a send never waits while held <= buffer
	held       atomic.Int64
	dropped    atomic.Int64
	lastWarned atomic.Int64 // unix nanoseconds
	sending    chan struct{}
	bootstrap  string
	buffer     int
}

func newExposureLog(spec *Spec) (*ExposureLog, error) {
	x := spec.Exposures
	if !x.Enabled {
		return nil, nil
	}
	client, err := kgo.NewClient(
		kgo.SeedBrokers(strings.Split(x.BootstrapServers, ",")...),
		kgo.DefaultProduceTopic(x.Topic),
		kgo.MaxBufferedRecords(x.BufferRecords), // never reached: held counts these too
		kgo.ProducerLinger(time.Duration(x.LingerMs*float64(time.Millisecond))),
		kgo.RequiredAcks(kgo.LeaderAck()),
		// uncompressed, as the Python front ends send: any consumer reads them (franz-go's default,
		// snappy, needs a codec kafka-python does not bring), and no CPU goes to compressing
		kgo.ProducerBatchCompression(kgo.NoCompression()),
		kgo.DisableIdempotentWrite(), // leader acks; an exposure duplicated by a retry is rare and harmless to counts joined by request_id
	)
	if err != nil {
		return nil, fmt.Errorf("exposures: Kafka client for %s: %w", x.BootstrapServers, err)
	}
	l := &ExposureLog{client: client, queue: make(chan *Exposure, x.BufferRecords), sending: make(chan struct{}),
		bootstrap: x.BootstrapServers, buffer: x.BufferRecords}
	go l.send()
	return l, nil
}

// Log hands one record over; it never waits on Kafka.
func (l *ExposureLog) Log(e *Exposure) {
	if l.held.Add(1) > int64(l.buffer) {
		l.held.Add(-1)
		l.drop()
		return
	}
	l.queue <- e
}

func (l *ExposureLog) send() {
	defer close(l.sending)
	for e := range l.queue {
		value, err := json.Marshal(e)
		if err != nil {
			slog.Error("exposure not encoded: " + err.Error())
			l.held.Add(-1)
			continue
		}
		l.client.Produce(context.Background(), &kgo.Record{Key: []byte(e.UserID), Value: value}, l.done)
	}
}

func (l *ExposureLog) drop() {
	n := l.dropped.Add(1)
	exposureOutcomes.WithLabelValues("dropped").Inc()
	now := time.Now().UnixNano()
	if last := l.lastWarned.Load(); now-last >= int64(warnEvery) && l.lastWarned.CompareAndSwap(last, now) {
		slog.Warn(fmt.Sprintf("exposure buffer full (%d records; Kafka %s slow or down): %d records dropped so far",
			l.buffer, l.bootstrap, n))
	}
}

func (l *ExposureLog) done(_ *kgo.Record, err error) {
	l.held.Add(-1)
	if err == nil {
		exposureOutcomes.WithLabelValues("sent").Inc()
		return
	}
	exposureOutcomes.WithLabelValues("failed").Inc()
	slog.Warn("exposure record refused by Kafka: " + err.Error())
}

// Close sends what is held (until ctx ends), then closes the client. Calls have ended: Log is
// not called again.
func (l *ExposureLog) Close(ctx context.Context) {
	close(l.queue)
	select {
	case <-l.sending:
	case <-ctx.Done():
	}
	if err := l.client.Flush(ctx); err != nil {
		slog.Warn("exposures not all sent before stopping: " + err.Error())
	}
	l.client.Close()
}
