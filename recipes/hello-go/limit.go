package main

import (
	"net"
	"sync"
	"syscall"
)

const (
	defaultMaxConnections = 512
	reservedFiles         = 32 // descriptors kept for the listener, stderr, /api/spawn's pipes...
)

// connectionBound returns wanted, lowered to what the open-file limit leaves room for.
func connectionBound(wanted int) int {
	var limit syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &limit); err != nil || limit.Cur > uint64(wanted+reservedFiles) {
		return wanted
	}
	return max(1, int(limit.Cur)-reservedFiles)
}

// limitListener accepts at most n connections at once: Accept waits for one to close, and the
// connections beyond n wait in the kernel's listen queue (what golang.org/x/net/netutil's
// LimitListener does; this module has no dependencies).
type limitListener struct {
	net.Listener
	slots chan struct{}
	done  chan struct{}
	once  sync.Once
}

func newLimitListener(inner net.Listener, n int) *limitListener {
	return &limitListener{Listener: inner, slots: make(chan struct{}, n), done: make(chan struct{})}
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	conn, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &limitedConn{Conn: conn, release: func() { <-l.slots }}, nil
}

func (l *limitListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// limitedConn gives its slot back once, on the first Close.
type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
