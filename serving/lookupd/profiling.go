package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
)

// servePprof serves Go's profiles (net/http/pprof) on addr, for finding where a lookup's time and
// CPU go under load: `go tool pprof http://ADDR/debug/pprof/profile?seconds=10`. Off unless
// --pprof (or LOOKUPD_PPROF, for a lookupd started by `streamrank serve`) names an address; keep
// it on loopback, since a profile shows the service's internals to whoever can reach it.
func servePprof(addr string) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("pprof on %s: %w; pick a free host:port for --pprof or unset LOOKUPD_PPROF", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	go http.Serve(lis, mux) //nolint:errcheck // ends with the process
	slog.Info(fmt.Sprintf("pprof on http://%s/debug/pprof/", lis.Addr()))
	return nil
}
