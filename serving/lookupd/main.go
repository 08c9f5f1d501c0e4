// lookupd: the streamrank.v1.Recommendations gRPC service's hot path, compiled. It answers
// GetRecommendations and BatchGetRecommendations from Redis with the rules of serving/lookup.py
// (held to the same answers by tests/vectors/lookup.json), serves grpc.health.v1 following Redis,
// TLS/mTLS, the bearer token, opt-in reflection, Prometheus metrics, JSON logs, and drains
// in-flight calls on SIGTERM. GetUserFeatures answers from the profile the job writes per user.
//
// It is started by `streamrank serve` (engine = "go"), which validates the TOML config and hands
// lookupd the result as JSON: `lookupd --spec FILE`.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"streamrank/lookupd/internal/pb"
)

func main() {
	specPath := flag.String("spec", "", "JSON spec written by `streamrank serve` (the validated serving config)")
	checkOnly := flag.Bool("check-spec", false, "decode and check the spec, print it back as lookupd read it, and exit")
	pprofAddr := flag.String("pprof", os.Getenv("LOOKUPD_PPROF"), "serve net/http/pprof on this host:port (default: $LOOKUPD_PPROF; empty: off)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "lookupd: streamrank's compiled gRPC lookup service.\n"+
			"Start it with `streamrank serve` (engine = \"go\" in the serving config), which validates the\n"+
			"config and passes it here.\n\nUsage: lookupd --spec FILE\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *specPath == "" {
		flag.Usage()
		os.Exit(2)
	}
	spec, err := loadSpec(*specPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "lookupd:", err)
		os.Exit(2)
	}
	if *checkOnly {
		out, _ := json.Marshal(spec)
		fmt.Println(string(out))
		return
	}
	setupLogging(spec.LogFormat)
	if *pprofAddr != "" {
		if err := servePprof(*pprofAddr); err != nil {
			fmt.Fprintln(os.Stderr, "lookupd:", err)
			os.Exit(2)
		}
	}
	if os.Getenv("GOGC") == "" {
		// a lookup allocates ~5 kB that is garbage at once: at the default GOGC=100 the heap is
		// collected each time it grows by its live size. 400 makes collections 4x rarer, and halved
		// p99 at 2,000 calls/s in bench.serving (1.0 -> 0.45-0.57 ms, when a lookup allocated
		// ~20 kB); GOGC in the environment overrides it.
		debug.SetGCPercent(400)
	}
	if err := run(spec); err != nil {
		slog.Error(err.Error())
		os.Exit(1)
	}
}

func setupLogging(format string) {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	if format != "json" {
		slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, opts)))
		return
	}
	// the keys of the Python services' JSON lines (python-json-logger), so one log shipper reads both
	opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
		if len(groups) == 0 {
			switch a.Key {
			case slog.TimeKey:
				a.Key = "asctime"
			case slog.MessageKey:
				a.Key = "message"
			}
		}
		return a
	}
	slog.SetDefault(slog.New(slog.NewJSONHandler(os.Stderr, opts)).With("logger", "lookupd"))
}

func serverOptions(spec *Spec, expected []byte) ([]grpc.ServerOption, string, error) {
	opts := []grpc.ServerOption{grpc.UnaryInterceptor(interceptor(spec.Contract.ServiceName, expected, spec.Contract.UndecodableRule)),
		grpc.StreamInterceptor(streamInterceptor(spec.Contract.UndecodableRule)), grpc.ForceServerCodecV2(newRequestCodec()),
		// calls run on long-lived goroutines instead of one new goroutine each: a new one starts
		// with a small stack and grew (copied) it on every call, 14% of lookupd's CPU at the
		// closed-loop peak. A call waits on Redis, so more run at once than there are cores; when
		// all workers are busy grpc-go starts a goroutine for the call as before.
		grpc.NumStreamWorkers(streamWorkers)}
	if spec.TLS == nil {
		return opts, "plaintext", nil
	}
	cert, err := tls.LoadX509KeyPair(spec.TLS.CertFile, spec.TLS.KeyFile)
	if err != nil {
		return nil, "", fmt.Errorf("tls: %w", err)
	}
	conf := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	mode := "TLS"
	if spec.TLS.ClientCAFile != nil {
		pem, err := os.ReadFile(*spec.TLS.ClientCAFile)
		if err != nil {
			return nil, "", fmt.Errorf("tls.client_ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, "", fmt.Errorf("tls.client_ca_file %s holds no PEM certificate", *spec.TLS.ClientCAFile)
		}
		conf.ClientCAs, conf.ClientAuth, mode = pool, tls.RequireAndVerifyClientCert, "mTLS"
	}
	return append(opts, grpc.Creds(credentials.NewTLS(conf))), mode, nil
}

// streamWorkers: an idle worker costs its stack only; 64 covers the calls bench.serving's closed
// loop keeps in flight at its highest concurrency.
const streamWorkers = 64

func bearerToken(spec *Spec) ([]byte, error) {
	if spec.AuthTokenEnv == nil || *spec.AuthTokenEnv == "" {
		return nil, nil
	}
	token := os.Getenv(*spec.AuthTokenEnv)
	if token == "" {
		return nil, fmt.Errorf("auth_token_env names %s, which is not set; export it or unset auth_token_env", *spec.AuthTokenEnv)
	}
	return []byte("Bearer " + token), nil
}

func run(spec *Spec) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rules, err := newRules(spec.Contract, spec.DefaultK, spec.MaxK)
	if err != nil {
		return err
	}
	expected, err := bearerToken(spec)
	if err != nil {
		return err
	}
	pseudonyms, err := newPseudonyms(spec)
	if err != nil {
		return err
	}
	opts, mode, err := serverOptions(spec, expected)
	if err != nil {
		return err
	}
	traced, stopTracing, err := startTracing(ctx, spec)
	if err != nil {
		return err
	}
	opts = append(opts, traced...)
	store, err := newStore(spec)
	if err != nil {
		return err
	}
	store.RefreshPopular(ctx)
	go store.refreshLoop(ctx)
	store.RefreshExperiments(ctx)
	go store.experimentsLoop(ctx)
	store.RefreshEditorial(ctx)
	go store.editorialLoop(ctx)
	exposures, err := newExposureLog(spec)
	if err != nil {
		return err
	}

	server := grpc.NewServer(opts...)
	pb.RegisterRecommendationsServer(server, &Service{rules: rules, store: store, pseudonyms: pseudonyms,
		lists: newListCache(spec.Cache.ListsMB << 20), exposures: exposures,
		unpacker: newUnpacker(spec.Contract.DictionaryPrefix, store.Bytes), shards: spec.shards()})
	healthServer := health.NewServer()
	healthpb.RegisterHealthServer(server, healthServer)
	if spec.Reflection {
		reflection.Register(server)
	}
	lis, err := net.Listen("tcp", net.JoinHostPort(spec.Host, strconv.Itoa(spec.Port)))
	if err != nil {
		return fmt.Errorf("listening on %s:%d: %w", spec.Host, spec.Port, err)
	}
	port := lis.Addr().(*net.TCPAddr).Port
	if spec.MetricsPort != nil {
		mlis, err := net.Listen("tcp", net.JoinHostPort(spec.MetricsHost, strconv.Itoa(*spec.MetricsPort)))
		if err != nil {
			return fmt.Errorf("metrics on %s:%d: %w", spec.MetricsHost, *spec.MetricsPort, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.Handler())
		go http.Serve(mlis, mux) //nolint:errcheck // ends with the process
		slog.Info(fmt.Sprintf("metrics on http://%s/metrics", mlis.Addr()))
	}
	go followRedisHealth(ctx, healthServer, store, spec.Contract.ServiceName, seconds(spec.HealthIntervalS))

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	served := make(chan error, 1)
	go func() { served <- server.Serve(lis) }()
	if spec.PortFile != "" {
		if err := writePortFile(spec.PortFile, port); err != nil {
			return err
		}
	}
	slog.Info(fmt.Sprintf("serving %s on %s:%d (%s; redis %s:%d; engine go)", spec.Contract.ServiceName,
		spec.Host, port, mode, spec.Redis.Host, spec.Redis.Port))

	select {
	case err := <-served:
		return err
	case <-stop:
	}
	slog.Info(fmt.Sprintf("draining in-flight calls (grace %.1fs)", spec.GraceS))
	healthServer.Shutdown() // health answers NOT_SERVING while draining
	drained := make(chan struct{})
	go func() { server.GracefulStop(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(seconds(spec.GraceS)):
		slog.Warn("grace period over; cancelling the calls still in flight")
		server.Stop()
	}
	if exposures != nil {
		flushCtx, stopFlush := context.WithTimeout(context.Background(), seconds(spec.GraceS))
		exposures.Close(flushCtx)
		stopFlush()
	}
	flushCtx, stopFlush := context.WithTimeout(context.Background(), seconds(spec.GraceS))
	stopTracing(flushCtx)
	stopFlush()
	slog.Info("lookupd stopped")
	return nil
}

func writePortFile(path string, port int) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(port)), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
