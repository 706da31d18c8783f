package main

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"regexp"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

type service struct {
	started     time.Time
	token       string         // compared through tokenDigest
	tokenMatch  *regexp.Regexp // finds the token in what a record keeps, to scrub it
	tokenDigest [sha256.Size]byte
	logs        *logWindow
	served      atomic.Uint64
	spawning    atomic.Bool
	spawnServed bool // /api/spawn is routed only when the recipe's smoke configuration asks for it
}

func (s *service) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/health", s.health)
	mux.HandleFunc("GET /api/data", s.data)
	if s.spawnServed {
		mux.HandleFunc("GET /api/spawn", s.spawn)
		mux.HandleFunc("POST /api/spawn", s.spawn)
	}
	mux.HandleFunc("GET /debug/logs", s.debugLogs)
	return s.logged(mux)
}

// logged stores one redacted record per request once the response is written.
func (s *service) logged(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		s.served.Add(1)
		s.logs.add(func(seq uint64) []byte {
			return encodeRecord(newRecord(seq, r, rec.status, rec.bytes, time.Since(start), s.tokenMatch), s.logs.maxBytes)
		})
	})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (r *statusRecorder) WriteHeader(status int) {
	r.status = status
	r.ResponseWriter.WriteHeader(status)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	return n, err
}

func (s *service) health(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"status":   "ok",
		"version":  version,
		"uptime_s": int64(time.Since(s.started).Seconds()),
	})
}

func (s *service) data(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"message": "hello from an ARMv6 payload",
		"go":      runtime.Version(),
		"goarch":  runtime.GOARCH,
		"goarm":   buildSetting("GOARM"),
		"served":  s.served.Load(),
	})
}

func (s *service) debugLogs(w http.ResponseWriter, r *http.Request) {
	if s.token == "" {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "debug logs disabled: no token file"})
		return
	}
	if !s.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="debug"`)
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "a valid bearer token is required"})
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Log-Window-Records", strconv.Itoa(len(s.logs.slots)))
	w.Header().Set("X-Log-Window-Record-Bytes", strconv.Itoa(s.logs.maxBytes))
	w.Write(s.logs.snapshot())
}

// authorized compares digests so that neither the content nor the length of the token leaks
// through timing.
func (s *service) authorized(r *http.Request) bool {
	scheme, credential, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(credential)))
	return subtle.ConstantTimeCompare(got[:], s.tokenDigest[:]) == 1
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(body)
}

func buildSetting(key string) string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	for _, setting := range info.Settings {
		if setting.Key == key {
			return setting.Value
		}
	}
	return ""
}
