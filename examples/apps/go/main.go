// A Go net/http server to run under baton, with the standard library only:
//
//	go build -o server . && baton run -l 127.0.0.1:8080 -- ./server
//	baton run -l 127.0.0.1:8080 --ready fd -- ./server
//
// What it does for baton:
//   - It takes its listener from fd 3 (os.NewFile + net.FileListener), after
//     checking LISTEN_PID and LISTEN_FDS as systemd's protocol asks.
//   - It reports ready once it serves: READY=1 in a datagram to
//     NOTIFY_SOCKET (--ready notify, baton's default), or a newline on the fd
//     in BATON_READY_FD (--ready fd).
//   - On SIGTERM it drains without failing a request: it stops accepting
//     (the socket stays open in baton, so new connections wait in its queue
//     for the next generation), answers requests still arriving on open
//     keep-alive connections with `Connection: close`, and after a short
//     grace shuts down, which closes the connections nobody used meanwhile
//     and waits for the busy ones.
//
// Why not just srv.Shutdown on SIGTERM: Shutdown (and
// SetKeepAlivesEnabled(false)) close idle keep-alive connections at once,
// without answering; a client that had just sent a request on one sees the
// connection closed.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("server.go: ")
	generation := os.Getenv("BATON_GENERATION")

	ln, err := inheritedListener()
	if err != nil {
		log.Fatalf("cannot take the listening socket: %v", err)
	}

	var draining atomic.Bool
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			body := fmt.Sprintf("hello from generation %s, pid %d\n", generation, os.Getpid())
			h := w.Header()
			h.Set("Content-Type", "text/plain")
			h.Set("Content-Length", strconv.Itoa(len(body)))
			h.Set("X-Generation", generation)
			h.Set("X-Pid", strconv.Itoa(os.Getpid()))
			if draining.Load() {
				// net/http closes the connection after this response.
				h.Set("Connection", "close")
			}
			_, _ = io.WriteString(w, body)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	if err := reportReady(); err != nil {
		log.Fatalf("cannot report readiness: %v", err)
	}
	log.Printf("gen=%s pid=%d serving on fd 3", generation, os.Getpid())

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-stop:
	case err := <-served:
		log.Fatalf("serving stopped: %v", err)
	}

	log.Printf("gen=%s pid=%d draining", generation, os.Getpid())
	draining.Store(true)
	// Stop accepting: this closes only this process's copy of the socket.
	_ = ln.Close()
	time.Sleep(drainGrace())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil && !errors.Is(err, net.ErrClosed) {
		log.Printf("shutdown: %v", err)
	}
	log.Printf("gen=%s pid=%d exiting", generation, os.Getpid())
}

// inheritedListener is the first socket of systemd's socket-activation
// protocol, which baton speaks: fds 3.. are the listeners, LISTEN_FDS says
// how many, LISTEN_PID that they are meant for this process.
func inheritedListener() (net.Listener, error) {
	if pid := os.Getenv("LISTEN_PID"); pid != strconv.Itoa(os.Getpid()) {
		return nil, fmt.Errorf("LISTEN_PID is %q, not this process (%d): not started by baton or systemd?", pid, os.Getpid())
	}
	n, err := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if err != nil || n < 1 {
		return nil, fmt.Errorf("LISTEN_FDS is %q: no socket was passed", os.Getenv("LISTEN_FDS"))
	}
	f := os.NewFile(3, "listen0")
	// FileListener works on a duplicate; fd 3 itself is not needed after.
	defer f.Close()
	return net.FileListener(f)
}

// reportReady tells baton this process serves: READY=1 on NOTIFY_SOCKET
// (sd_notify without a library), or a newline on BATON_READY_FD.
func reportReady() error {
	if path := os.Getenv("NOTIFY_SOCKET"); path != "" {
		// A leading '@' names an abstract socket; Go's net package maps it.
		conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = conn.Write([]byte("READY=1"))
		return err
	}
	if fd := os.Getenv("BATON_READY_FD"); fd != "" {
		n, err := strconv.Atoi(fd)
		if err != nil {
			return fmt.Errorf("BATON_READY_FD is %q: %w", fd, err)
		}
		f := os.NewFile(uintptr(n), "ready")
		defer f.Close()
		_, err = f.Write([]byte("\n"))
		return err
	}
	return nil
}

// drainGrace is how long busy keep-alive connections get to see
// `Connection: close` before the idle ones are closed (DRAIN_GRACE_MS).
func drainGrace() time.Duration {
	ms, err := strconv.Atoi(os.Getenv("DRAIN_GRACE_MS"))
	if err != nil || ms < 0 {
		ms = 500
	}
	return time.Duration(ms) * time.Millisecond
}
