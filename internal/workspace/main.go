// Command workspace is a stand-in for a real workspace image, small enough
// to build into an image with no base: it writes a marker into each of its
// data folders, serves its version and health over HTTP, and exits
// promptly on SIGTERM. Tests and the demo build it into images v1, v2 and a
// deliberately unhealthy one.
//
//	workspace serve    serve on :8080 (the default)
//	workspace health   exit 0 if the server answers /healthz, else 1 (the image's HEALTHCHECK)
package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

func main() {
	cmd := "serve"
	if len(os.Args) > 1 {
		cmd = os.Args[1]
	}
	switch cmd {
	case "serve":
		if err := serve(); err != nil {
			fmt.Fprintln(os.Stderr, "workspace:", err)
			os.Exit(1)
		}
	case "health":
		c := http.Client{Timeout: 2 * time.Second}
		resp, err := c.Get("http://127.0.0.1:8080/healthz")
		if err != nil || resp.StatusCode != http.StatusOK {
			os.Exit(1)
		}
	default:
		fmt.Fprintln(os.Stderr, "usage: workspace [serve|health]")
		os.Exit(2)
	}
}

func serve() error {
	version := os.Getenv("WS_VERSION")
	host, _ := os.Hostname()
	// Each data folder (a volume in tests) records every version that ran on it.
	for _, dir := range strings.Split(os.Getenv("WS_DATA_DIRS"), ",") {
		if dir == "" {
			continue
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		f, err := os.OpenFile(filepath.Join(dir, "history"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		fmt.Fprintf(f, "%s %s %s\n", time.Now().UTC().Format(time.RFC3339Nano), version, host)
		f.Close()
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if os.Getenv("WS_HEALTHY") == "false" {
			http.Error(w, "unhealthy by design", http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	started := time.Now().UTC().Format(time.RFC3339Nano)
	mux.HandleFunc("/version", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, version) })
	// /started tells one process from the next, for downtime benchmarks.
	mux.HandleFunc("/started", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, started) })
	mux.HandleFunc("/env", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, os.Getenv(r.URL.Query().Get("name"))) })
	mux.HandleFunc("/file", func(w http.ResponseWriter, r *http.Request) {
		b, err := os.ReadFile(r.URL.Query().Get("path"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		w.Write(b)
	})
	srv := &http.Server{Addr: ":8080", Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
	}()
	if err := srv.ListenAndServe(); err != http.ErrServerClosed {
		return err
	}
	return nil
}
