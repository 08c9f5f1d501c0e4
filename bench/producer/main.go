// producer: a Kafka load generator that costs little CPU, for bench.e2e's live runs (a Python
// producer took a large share of the 2 cores it was measuring).
//
// It reads records prepared by bench.e2e, one per line as KEY<TAB>JSON, where the JSON holds the
// event time as "ts":0000000000000 (13 digits). It sends them at -rate records/s, writing the
// current wall-clock time (ms) into those 13 bytes just before each send, so event time = send
// time. The records are cycled if -count exceeds the file; event ids ending in the placeholder
// ".c000" get the cycle number there, so each cycle's ids are new. At the end it prints one JSON
// object: records sent, seconds, and its own CPU (user + system) from getrusage.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

var tsField = []byte(`"ts":0000000000000`)
var cycleField = []byte(`.c000"`)

func main() {
	brokers := flag.String("brokers", "127.0.0.1:9092", "Kafka bootstrap servers")
	topic := flag.String("topic", "", "topic to write to")
	file := flag.String("records", "", "file of KEY<TAB>JSON lines (see the package comment)")
	rate := flag.Float64("rate", 10000, "records per second")
	count := flag.Int("count", 0, "records to send (0: every line once)")
	tick := flag.Duration("tick", 5*time.Millisecond, "how often a batch of rate*tick records is sent")
	flag.Parse()
	if *topic == "" || *file == "" {
		fmt.Fprintln(os.Stderr, "producer: -topic and -records are required (see -help)")
		os.Exit(2)
	}
	keys, values, err := load(*file)
	if err != nil || len(values) == 0 {
		fmt.Fprintf(os.Stderr, "producer: no records from %s: %v\n", *file, err)
		os.Exit(2)
	}
	if *count == 0 {
		*count = len(values)
	}
	client, err := kgo.NewClient(kgo.SeedBrokers(*brokers), kgo.DefaultProduceTopic(*topic),
		kgo.ProducerLinger(2*time.Millisecond), kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerBatchCompression(kgo.NoCompression()))
	if err != nil {
		fmt.Fprintln(os.Stderr, "producer:", err)
		os.Exit(1)
	}
	defer client.Close()

	ctx := context.Background()
	var failed atomic.Int64
	done := func(_ *kgo.Record, err error) {
		if err != nil {
			failed.Add(1)
		}
	}
	start := time.Now()
	sent := 0
	ticker := time.NewTicker(*tick)
	defer ticker.Stop()
	for sent < *count {
		<-ticker.C
		due := int(time.Since(start).Seconds()**rate) + 1
		if due > *count {
			due = *count
		}
		now := []byte(strconv.FormatInt(time.Now().UnixMilli(), 10))
		for ; sent < due; sent++ {
			i := sent % len(values)
			v := bytes.Clone(values[i])
			stamp(v, now, sent/len(values))
			client.Produce(ctx, &kgo.Record{Key: keys[i], Value: v}, done)
		}
	}
	if err := client.Flush(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "producer: flush:", err)
	}
	wall := time.Since(start).Seconds()
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	cpu := tv(ru.Utime) + tv(ru.Stime)
	out, _ := json.Marshal(map[string]any{
		"sent": sent, "failed": failed.Load(), "seconds": wall, "rate": float64(sent) / wall,
		"cpu_s": cpu, "cpu_share_of_one_core": cpu / wall,
	})
	fmt.Println(string(out))
}

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

// stamp writes now (13 digits) over the ts placeholder and the cycle number over ".c000".
func stamp(v, now []byte, cycle int) {
	if i := bytes.Index(v, tsField); i >= 0 && len(now) == 13 {
		copy(v[i+len(`"ts":`):], now)
	}
	if i := bytes.Index(v, cycleField); i >= 0 {
		copy(v[i+2:], []byte(fmt.Sprintf("%03d", cycle%1000)))
	}
}

func load(path string) ([][]byte, [][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	var keys, values [][]byte
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		k, v, ok := bytes.Cut(sc.Bytes(), []byte("\t"))
		if !ok {
			return nil, nil, fmt.Errorf("a line without a tab: %q", sc.Text())
		}
		keys, values = append(keys, bytes.Clone(k)), append(values, bytes.Clone(v))
	}
	return keys, values, sc.Err()
}
