// Command hello-go is PiSec's reference payload for the Raspberry Pi 1B.
//
// It shows the single-port observability pattern a sealed device needs: business endpoints under
// /api/, and under /debug/logs a bounded, redacted window of JSON-lines request records that only
// the holder of a bearer token (read from a file at start, never compiled in) can read.
package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

const (
	version       = "1.0.0"
	shutdownGrace = 5 * time.Second
	minRecordSize = 256
)

type config struct {
	listen         string
	tokenFile      string
	logRecords     int
	logRecordBytes int
	maxConnections int
}

func main() {
	cfg := config{}
	flag.StringVar(&cfg.listen, "listen", ":8080", "address to listen on")
	flag.StringVar(&cfg.tokenFile, "token-file", "", "file holding the bearer token for /debug/logs (missing or empty: /debug/logs disabled)")
	flag.IntVar(&cfg.logRecords, "log-records", 512, "records kept in the /debug/logs window")
	flag.IntVar(&cfg.logRecordBytes, "log-record-bytes", 2048, "maximum size of one stored record, in bytes")
	flag.IntVar(&cfg.maxConnections, "max-connections", defaultMaxConnections, "connections open at once (lowered to fit the open-file limit); more wait")
	orphan := flag.Bool("orphan", false, "internal (/api/spawn): start a short-lived child, print its pid and exit without waiting for it")
	exitAfter := flag.Duration("exit-after", 0, "internal (/api/spawn): sleep this long, then exit")
	flag.Parse()

	switch {
	case *exitAfter > 0:
		time.Sleep(*exitAfter)
	case *orphan:
		exitWithOrphan()
	default:
		if err := run(cfg); err != nil {
			fmt.Fprintln(os.Stderr, "hello-go:", err)
			os.Exit(1)
		}
	}
}

func run(cfg config) error {
	if os.Geteuid() == 0 {
		return errors.New("refusing to run as root: start it as the recipe's service user")
	}
	if cfg.logRecords < 1 || cfg.logRecordBytes < minRecordSize {
		return fmt.Errorf("-log-records must be at least 1 and -log-record-bytes at least %d", minRecordSize)
	}
	svc := &service{
		started:     time.Now(),
		token:       readToken(cfg.tokenFile),
		logs:        newLogWindow(cfg.logRecords, cfg.logRecordBytes),
		spawnServed: os.Getenv(spawnEnv) == "1",
	}
	if svc.token != "" {
		svc.tokenDigest = sha256.Sum256([]byte(svc.token))
		svc.tokenMatch = tokenPattern(svc.token)
	}
	if cfg.maxConnections < 1 {
		return errors.New("-max-connections must be at least 1")
	}
	inner, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return err
	}
	limit := connectionBound(cfg.maxConnections)
	ln := newLimitListener(inner, limit)
	fmt.Fprintf(os.Stderr, "hello-go: at most %d connections open at once\n", limit)
	// ReadHeaderTimeout and ReadTimeout are deadlines for the whole head and the whole request
	// (net/http sets them once per request), not timeouts per read: a client that sends a byte now
	// and then is cut off all the same. Each connection holds a goroutine, not a thread.
	srv := &http.Server{
		Handler:           svc.routes(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	fmt.Fprintf(os.Stderr, "hello-go %s: listening on %s\n", version, ln.Addr())

	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	fmt.Fprintln(os.Stderr, "hello-go: SIGTERM, shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	fmt.Fprintln(os.Stderr, "hello-go: stopped")
	return nil
}

// readToken returns the token, or "" (and says why on stderr) when /debug/logs must stay disabled.
func readToken(path string) string {
	if path == "" {
		fmt.Fprintln(os.Stderr, "hello-go: no -token-file: /debug/logs disabled")
		return ""
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "hello-go: token file unreadable (%v): /debug/logs disabled\n", err)
		return ""
	}
	token := strings.TrimSpace(string(raw))
	if token == "" {
		fmt.Fprintln(os.Stderr, "hello-go: token file is empty: /debug/logs disabled")
	}
	return token
}
