// Command inventory is a test payload that is not one of the reference services: other endpoints
// (/status, /v1/items), another port, another user, no /api/ and no /debug/logs. `buildkit smoke`
// must check it with what its recipe declares.
package main

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"
)

type inventory struct {
	mu    sync.Mutex
	items []string
	token string
}

func main() {
	listen := flag.String("listen", ":9090", "address to listen on")
	tokenFile := flag.String("token-file", "", "file holding the bearer token that may add items")
	flag.Parse()
	inv := &inventory{items: []string{"widget", "sprocket"}}
	if raw, err := os.ReadFile(*tokenFile); err == nil {
		inv.token = strings.TrimSpace(string(raw))
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"ok": true})
	})
	mux.HandleFunc("GET /v1/items", inv.list)
	mux.HandleFunc("POST /v1/items", inv.add)
	srv := &http.Server{Addr: *listen, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	if err := srv.ListenAndServe(); err != http.ErrServerClosed {
		fmt.Fprintln(os.Stderr, "inventory:", err)
		os.Exit(1)
	}
}

func (inv *inventory) list(w http.ResponseWriter, _ *http.Request) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"items": inv.items})
}

func (inv *inventory) add(w http.ResponseWriter, r *http.Request) {
	got := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	if inv.token == "" || subtle.ConstantTimeCompare([]byte(got), []byte(inv.token)) != 1 {
		writeJSON(w, http.StatusUnauthorized, map[string]any{"error": "a bearer token is required"})
		return
	}
	name := r.URL.Query().Get("name")
	if name == "" {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": "?name= is required"})
		return
	}
	inv.mu.Lock()
	inv.items = append(inv.items, name)
	inv.mu.Unlock()
	writeJSON(w, http.StatusCreated, map[string]any{"added": name})
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}
