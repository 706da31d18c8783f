package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"time"
)

// spawnEnv is set (to "1") in the payload's environment only when the recipe declares the zombie
// check ([smoke.zombies]): an endpoint that starts processes on request is not served by default.
const spawnEnv = "BUILDKIT_SMOKE_ZOMBIES"

const (
	defaultSpawn  = 3
	maxSpawn      = 8
	orphanLife    = 500 * time.Millisecond
	spawnDeadline = 30 * time.Second
)

// spawn starts n short-lived processes the way a real service's helpers would, so that a test can
// check that PID 1 in the sandbox reaps them: each child (this binary with -orphan) starts a
// grandchild and exits at once; the grandchild, orphaned, is re-parented to PID 1 and exits
// shortly after. The service waits for its own children. One spawn at a time: the endpoint is
// reachable from the network, so its cost is bounded.
func (s *service) spawn(w http.ResponseWriter, r *http.Request) {
	n := defaultSpawn
	if raw := r.URL.Query().Get("n"); raw != "" {
		var err error
		if n, err = strconv.Atoi(raw); err != nil || n < 1 || n > maxSpawn {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("n must be 1 to %d", maxSpawn)})
			return
		}
	}
	if !s.spawning.CompareAndSwap(false, true) {
		writeJSON(w, http.StatusTooManyRequests, map[string]string{"error": "a spawn is already running"})
		return
	}
	defer s.spawning.Store(false)

	ctx, cancel := context.WithTimeout(r.Context(), spawnDeadline)
	defer cancel()
	children, orphans := []int{}, []int{}
	for i := 0; i < n; i++ {
		child, orphan, err := spawnOrphan(ctx)
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, map[string]any{"error": err.Error(), "children": children, "orphans": orphans})
			return
		}
		children, orphans = append(children, child), append(orphans, orphan)
	}
	writeJSON(w, http.StatusOK, map[string]any{"children": children, "orphans": orphans})
}

func spawnOrphan(ctx context.Context) (child, orphan int, err error) {
	self, err := os.Executable()
	if err != nil {
		return 0, 0, err
	}
	cmd := exec.CommandContext(ctx, self, "-orphan")
	out, err := cmd.Output()
	if err != nil {
		return 0, 0, fmt.Errorf("child %s -orphan: %w", self, err)
	}
	orphan, err = strconv.Atoi(string(bytes.TrimSpace(out)))
	return cmd.Process.Pid, orphan, err
}

// exitWithOrphan is the child's side of spawn: its own child outlives it.
func exitWithOrphan() {
	self, err := os.Executable()
	if err == nil {
		grandchild := exec.Command(self, "-exit-after", orphanLife.String())
		if err = grandchild.Start(); err == nil {
			fmt.Println(grandchild.Process.Pid)
			os.Exit(0)
		}
	}
	fmt.Fprintln(os.Stderr, "hello-go -orphan:", err)
	os.Exit(1)
}
