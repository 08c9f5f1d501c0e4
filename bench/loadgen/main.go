// loadgen: the load process of `python -m bench.serving`. It drives the streamrank gRPC lookup
// service (closed loop at each concurrency, then open loop at half of the peak rate), calls the
// same server's health check the same ways beside k=25's steps (closed loop at each concurrency,
// then open loop at the lookups' rates, in turns with them: the cost of a gRPC round trip alone,
// and the peak a call that does no lookup reaches), and reads
// the same keys from Redis directly, from this one process, and prints one JSON object. It is written
// in Go so that the load generator's own CPU cost (2 cores shared with the server) stays small.
// Requests are encoded with protowire and sent through a pass-through codec: no generated stubs.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"math/rand"
	"os"
	"runtime/debug"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/protobuf/encoding/protowire"
)

const (
	method       = "/streamrank.v1.Recommendations/GetRecommendations"
	healthMethod = "/grpc.health.v1.Health/Check"
)

// rawCodec passes pre-encoded protobuf bytes through unchanged.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

func encodeRequest(user string, k int) []byte {
	b := protowire.AppendTag(nil, 1, protowire.BytesType)
	b = protowire.AppendString(b, user)
	b = protowire.AppendTag(b, 2, protowire.VarintType)
	return protowire.AppendVarint(b, uint64(k))
}

// countItems counts field 2 (items) of a GetRecommendationsResponse.
func countItems(b []byte) int {
	n := 0
	for len(b) > 0 {
		num, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return -1
		}
		b = b[l:]
		l = protowire.ConsumeFieldValue(num, typ, b)
		if l < 0 {
			return -1
		}
		if num == 2 {
			n++
		}
		b = b[l:]
	}
	return n
}

type Summary struct {
	QPS         float64  `json:"qps"`
	P50         *float64 `json:"p50_ms"`
	P99         *float64 `json:"p99_ms"`
	Calls       int      `json:"calls"`
	Concurrency int      `json:"concurrency,omitempty"`
	Rate        float64  `json:"rate,omitempty"`
	Errors      int64    `json:"errors"`
	// the service process's CPU per call over the step (its warm-up included), when -server-pid is given
	ServerCPUUs *float64 `json:"server_cpu_us_per_call,omitempty"`
	// a step run several times: every run's p99 in run order (this summary is the median run's)
	P99Repeats []*float64 `json:"p99_ms_repeats,omitempty"`
}

// serverPid: the service's process, whose CPU time each step reads from /proc (0: none).
var serverPid int

// cpuTicks: the process's user+system CPU time in clock ticks (USER_HZ, 100 on Linux); -1 if unknown.
func cpuTicks(pid int) int64 {
	if pid <= 0 {
		return -1
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	s := string(raw)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(fields) < 13 {
		return -1
	}
	u, err1 := strconv.ParseInt(fields[11], 10, 64)
	st, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		return -1
	}
	return u + st
}

// cpuPerCall sets s.ServerCPUUs from the ticks before and after a step of `calls` calls.
func cpuPerCall(s *Summary, before int64, calls int64) {
	after := cpuTicks(serverPid)
	if before < 0 || after < 0 || calls == 0 {
		return
	}
	us := round(float64(after-before)*1e4/float64(calls), 1) // a tick is 10 ms = 1e4 µs
	s.ServerCPUUs = &us
}

func summarize(lat []time.Duration, seconds float64) Summary {
	s := Summary{Calls: len(lat), QPS: round(float64(len(lat))/seconds, 1)}
	if len(lat) == 0 {
		return s
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	p50 := round(float64(lat[len(lat)/2].Microseconds())/1000, 3)
	i99 := int(float64(len(lat)) * 0.99)
	if i99 >= len(lat) {
		i99 = len(lat) - 1
	}
	p99 := round(float64(lat[i99].Microseconds())/1000, 3)
	s.P50, s.P99 = &p50, &p99
	return s
}

func round(x float64, digits int) float64 {
	f, _ := strconv.ParseFloat(strconv.FormatFloat(x, 'f', digits, 64), 64)
	return f
}

// call makes one call; pick is a random number choosing the user (and the connection).
type call func(pick uint64) error

// splitmix64 gives the open loop's i-th call its random pick without a generator per call
// (rand.NewSource per call cost ~10 µs and 5 kB of garbage at 10k+ calls/s: load-generator jitter).
func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

func closedLoop(c call, concurrency int, seconds, warmup float64) Summary {
	var mu sync.Mutex
	var all []time.Duration
	var errors, calls int64
	ticks := cpuTicks(serverPid)
	start := time.Now()
	measure := start.Add(time.Duration(warmup * float64(time.Second)))
	end := measure.Add(time.Duration(seconds * float64(time.Second)))
	var wg sync.WaitGroup
	for n := 0; n < concurrency; n++ {
		wg.Add(1)
		go func(n int) {
			defer wg.Done()
			r := rand.New(rand.NewSource(int64(n)))
			var mine []time.Duration
			for {
				t := time.Now()
				if !t.Before(end) {
					break
				}
				if err := c(r.Uint64()); err != nil {
					atomic.AddInt64(&errors, 1)
				}
				atomic.AddInt64(&calls, 1)
				if !t.Before(measure) {
					mine = append(mine, time.Since(t))
				}
			}
			mu.Lock()
			all = append(all, mine...)
			mu.Unlock()
		}(n)
	}
	wg.Wait()
	s := summarize(all, seconds)
	s.Concurrency, s.Errors = concurrency, errors
	cpuPerCall(&s, ticks, calls)
	return s
}

// openLoop starts calls on a fixed schedule, each in its own goroutine, so a slow answer never
// delays the next call (no coordinated omission); latency counts from the call's start, so the
// generator's own timer jitter is not charged to the server.
// The first `warmup` seconds run at the same rate and are not measured, as in the closed loop.
func openLoop(c call, rate, seconds, warmup float64) Summary {
	ticks := cpuTicks(serverPid)
	lat, errors, total := openRun(c, rate, seconds, warmup)
	s := summarize(lat, seconds)
	s.Rate, s.Errors = round(rate, 1), errors
	cpuPerCall(&s, ticks, total)
	return s
}

// openRun is one open-loop run: the measured calls' latencies, their errors, and every call made.
func openRun(c call, rate, seconds, warmup float64) ([]time.Duration, int64, int64) {
	skip := int(rate * warmup)
	total := skip + int(rate*seconds)
	lat := make([]time.Duration, total)
	var errors int64
	var wg sync.WaitGroup
	t0 := time.Now()
	for i := 0; i < total; i++ {
		due := t0.Add(time.Duration(float64(i) / rate * float64(time.Second)))
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			start := time.Now()
			if err := c(splitmix64(uint64(i))); err != nil && i >= skip {
				atomic.AddInt64(&errors, 1)
			}
			lat[i] = time.Since(start)
		}(i)
	}
	wg.Wait()
	return lat[skip:], errors, int64(total)
}

// soak runs the open loop at rate for seconds, printing each interval's summary as it ends (one
// JSON line each, with the seconds since the start), so a long run is read while it goes.
func soak(c call, rate, seconds, interval float64) {
	enc := json.NewEncoder(os.Stdout)
	t0 := time.Now()
	for n := 0; time.Since(t0).Seconds() < seconds; n++ {
		offset := uint64(n) << 32 // other users each interval
		s := openLoop(func(pick uint64) error { return c(pick + offset) }, rate, interval, 0)
		if err := enc.Encode(map[string]any{"t_s": round(time.Since(t0).Seconds(), 1), "summary": s}); err != nil {
			os.Exit(1)
		}
	}
}

// pairedOpenLoop runs the open loop of a and of b at the same rate in turns, `slices` turns each
// of seconds/slices, and summarizes each over all its turns: both meet the same background load
// (on this shared 2-core machine other work comes and goes within minutes), so the ratio of their
// p99s reads the difference between the two calls rather than the moment each was measured.
func pairedOpenLoop(a, b call, rate, seconds, warmup float64, slices int) (Summary, Summary) {
	var out [2]Summary
	var lats [2][]time.Duration
	var errors, calls, ticks [2]int64
	for range slices {
		for n, c := range []call{a, b} {
			before := cpuTicks(serverPid)
			lat, e, total := openRun(c, rate, seconds/float64(slices), warmup)
			if after := cpuTicks(serverPid); before >= 0 && after >= 0 && ticks[n] >= 0 {
				ticks[n] += after - before
			} else {
				ticks[n] = -1
			}
			lats[n], errors[n], calls[n] = append(lats[n], lat...), errors[n]+e, calls[n]+total
		}
	}
	for n := range out {
		out[n] = summarize(lats[n], seconds)
		out[n].Rate, out[n].Errors = round(rate, 1), errors[n]
		if ticks[n] >= 0 && calls[n] > 0 {
			us := round(float64(ticks[n])*1e4/float64(calls[n]), 1)
			out[n].ServerCPUUs = &us
		}
	}
	return out[0], out[1]
}

// invoke sends one pre-encoded request on the connection `pick` chooses, with a 2 s deadline.
func invoke(conns []*grpc.ClientConn, pick uint64, fullMethod string, req []byte) ([]byte, error) {
	var resp []byte
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := conns[(pick>>32)%uint64(len(conns))].Invoke(ctx, fullMethod, &req, &resp)
	return resp, err
}

// halfRepeats: how many times the open loop runs at half of the peak (the figure the targets read).
var halfRepeats = 3

// openSteps runs the open loop at half of `peakRate` (halfRepeats times), then at each fraction of it.
func openSteps(c call, peakRate float64, fractions []float64, seconds, warmup float64) (Summary, []Summary) {
	half := medianRun(halfRepeats, func() Summary { return openLoop(c, peakRate/2, seconds, warmup) })
	var open []Summary
	for _, f := range fractions {
		open = append(open, openLoop(c, peakRate*f, seconds, warmup))
	}
	return half, open
}

// medianRun runs a step n times and returns the run with the median p99, carrying every run's
// p99 and the errors of all runs: one run's p99 on this 2-core machine moved between 3 and 10 ms
// from one bench run to the next.
func medianRun(n int, step func() Summary) Summary {
	runs := make([]Summary, 0, n)
	for i := 0; i < n; i++ {
		runs = append(runs, step())
	}
	return median(runs)
}

// median is medianRun's choice among runs already made.
func median(runs []Summary) Summary {
	n := len(runs)
	var p99s []*float64
	var errors int64
	for _, s := range runs {
		p99s = append(p99s, s.P99)
		errors += s.Errors
	}
	runs = slices.Clone(runs)
	sort.SliceStable(runs, func(a, b int) bool { return p99OrInf(runs[a]) < p99OrInf(runs[b]) })
	m := runs[len(runs)/2]
	m.Errors = errors
	if n > 1 {
		m.P99Repeats = p99s
	}
	return m
}

func p99OrInf(s Summary) float64 {
	if s.P99 == nil {
		return math.Inf(1)
	}
	return *s.P99
}

type Curve struct {
	Curve   []Summary `json:"curve"`
	PeakQPS float64   `json:"peak_qps"`
	Half    *Summary  `json:"at_half_peak,omitempty"`
	Open    []Summary `json:"open_loop,omitempty"`
	Direct  *Summary  `json:"at_grpc_half_peak,omitempty"`
}

func peak(c []Summary) float64 {
	p := 0.0
	for _, s := range c {
		if s.QPS > p {
			p = s.QPS
		}
	}
	return p
}

func ints(s string) []int {
	var out []int
	for _, v := range floats(s) {
		out = append(out, int(v))
	}
	return out
}

func floats(s string) []float64 {
	var out []float64
	if strings.TrimSpace(s) == "" {
		return out
	}
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil {
			fmt.Fprintf(os.Stderr, "not a number list: %q\n", s)
			os.Exit(2)
		}
		out = append(out, v)
	}
	return out
}

func main() {
	target := flag.String("target", "127.0.0.1:50051", "gRPC host:port")
	redisAddr := flag.String("redis", "127.0.0.1:16379", "Redis host:port (direct GETs of the same keys)")
	users := flag.Int("users", 10000, "users u0..u{N-1} with stored lists")
	recKeyPrefix := flag.String("rec-key-prefix", "", "the stored list's Redis key without the user id (contract/keys.py's rec_key(\"\")); required for the direct Redis GETs")
	ks := flag.String("k", "10,25,100", "k values")
	concs := flag.String("concurrency", "1,2,4,8,16,32,64", "closed-loop concurrency steps")
	channels := flag.Int("channels", 4, "gRPC connections the callers share")
	seconds := flag.Float64("seconds", 3, "measured seconds per step")
	warmup := flag.Float64("warmup", 0.5, "unmeasured seconds before each closed-loop step")
	openFractions := flag.String("open-fractions", "0.1,0.25", "also run the open loop at these fractions of each peak (comma list); Redis at the same rates as k=25 (or the first k)")
	flag.IntVar(&halfRepeats, "half-repeats", 3, "runs of the open loop at half of each peak; the median p99's run is reported, with every run's p99")
	flag.IntVar(&serverPid, "server-pid", 0, "the service's process id: report its CPU per call for each step (from /proc)")
	floor := flag.Bool("floor", true, "also call grpc.health.v1 Health/Check (the same server, a call that does no lookup) "+
		"closed loop at the same concurrencies and open loop at the k=25 rates, each step beside k=25's: what a gRPC round trip alone costs on this machine")
	exactK := flag.Bool("exact-k", true, "an answer must hold exactly k items; false: 1 to k (editorial rules may exclude items)")
	turns := flag.Int("floor-turns", 3, "the open loops at fractions of the k=25 peak alternate k=25 and health-check runs in this many turns each")
	soakRate := flag.Float64("soak-rate", 0, "soak mode (bench.soak): only the open loop at this rate, with the first k of -k, "+
		"one JSON line per -soak-interval for -soak-seconds")
	soakSeconds := flag.Float64("soak-seconds", 60, "soak mode: how long")
	soakInterval := flag.Float64("soak-interval", 10, "soak mode: seconds summarized per line")
	userFormat := flag.String("user-format", "u%d", "the user ids asked for: this format over 0..users-1 (the simulator's: u%05d)")
	flag.Parse()
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400) // fewer collections in the load process: less of its own jitter in every figure
	}

	conns := make([]*grpc.ClientConn, *channels)
	for i := range conns {
		c, err := grpc.NewClient(*target, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.ForceCodec(encoding.Codec(rawCodec{}))))
		if err != nil {
			fmt.Fprintln(os.Stderr, "dial:", err)
			os.Exit(1)
		}
		conns[i] = c
	}
	// HealthCheckRequest{} is empty; the answer must be SERVING (field 1 = 1)
	health := func(pick uint64) error {
		resp, err := invoke(conns, pick, healthMethod, []byte{})
		if err != nil {
			return err
		}
		if len(resp) != 2 || resp[0] != 0x08 || resp[1] != 0x01 {
			return fmt.Errorf("health answer %x is not SERVING", resp)
		}
		return nil
	}
	kList := ints(*ks)
	floorK := kList[0] // the k the health check is measured beside: 25, or the first
	if slices.Contains(kList, 25) {
		floorK = 25
	}
	out := map[string]any{}
	grpcOut := map[string]Curve{}
	var kHalf float64
	for _, k := range kList {
		reqs := make([][]byte, *users)
		for u := range reqs {
			reqs[u] = encodeRequest(fmt.Sprintf(*userFormat, u), k)
		}
		want := k
		c := func(pick uint64) error {
			resp, err := invoke(conns, pick, method, reqs[pick%uint64(len(reqs))])
			if err != nil {
				return err
			}
			if n := countItems(resp); n != want && (*exactK || n < 1 || n > want) {
				return fmt.Errorf("%d items, wanted %d", n, want)
			}
			return nil
		}
		if *soakRate > 0 {
			soak(c, *soakRate, *soakSeconds, *soakInterval)
			return
		}
		if k != floorK || !*floor {
			var curve []Summary
			for _, n := range ints(*concs) {
				curve = append(curve, closedLoop(c, n, *seconds, *warmup))
			}
			p := peak(curve)
			half, open := openSteps(c, p, floats(*openFractions), *seconds, *warmup)
			grpcOut[strconv.Itoa(k)] = Curve{Curve: curve, PeakQPS: p, Half: &half, Open: open}
			if k == floorK {
				kHalf = p / 2
			}
			continue
		}
		// each step of this k, then the health check's, so both meet the same background load
		var curve, floorCurve []Summary
		for _, n := range ints(*concs) {
			curve = append(curve, closedLoop(c, n, *seconds, *warmup))
			floorCurve = append(floorCurve, closedLoop(health, n, *seconds, *warmup))
		}
		p := peak(curve)
		kHalf = p / 2
		var halves, floorHalves []Summary
		for range halfRepeats {
			halves = append(halves, openLoop(c, kHalf, *seconds, *warmup))
			floorHalves = append(floorHalves, openLoop(health, kHalf, *seconds, *warmup))
		}
		var open, floorOpen []Summary
		for _, f := range floats(*openFractions) {
			o, fo := pairedOpenLoop(c, health, p*f, *seconds, *warmup, *turns)
			open, floorOpen = append(open, o), append(floorOpen, fo)
		}
		half, floorHalf := median(halves), median(floorHalves)
		grpcOut[strconv.Itoa(k)] = Curve{Curve: curve, PeakQPS: p, Half: &half, Open: open}
		out["grpc_floor"] = Curve{Curve: floorCurve, PeakQPS: peak(floorCurve), Direct: &floorHalf, Open: floorOpen}
	}
	out["grpc"] = grpcOut

	if *recKeyPrefix == "" {
		fmt.Fprintln(os.Stderr, "loadgen: -rec-key-prefix is required (bench/serving.py passes contract.keys.rec_key(\"\"))")
		os.Exit(2)
	}
	rdb := redis.NewClient(&redis.Options{Addr: *redisAddr, PoolSize: 128})
	keys := make([]string, *users)
	for u := range keys {
		keys[u] = fmt.Sprintf("%su%d", *recKeyPrefix, u)
	}
	rc := func(pick uint64) error {
		return rdb.Get(context.Background(), keys[pick%uint64(len(keys))]).Err()
	}
	var curve []Summary
	for _, n := range ints(*concs) {
		curve = append(curve, closedLoop(rc, n, *seconds, *warmup))
	}
	direct, open := openSteps(rc, 2*kHalf, floats(*openFractions), *seconds, *warmup)
	out["redis"] = Curve{Curve: curve, PeakQPS: peak(curve), Direct: &direct, Open: open}
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(out); err != nil {
		os.Exit(1)
	}
}
