"""A server that waits for connections in the way it is told, for the
tests of `--ready accepting` (tests/ready_accepting.rs). It never reports
readiness itself: baton has to see it.

    python3 waiter.py MODE [--sleep SECONDS]

MODE is how it waits on baton's socket (fd 3):

* epoll: in an epoll set watching a dup of fd 3 (an event loop);
* accept: blocked in accept(2) on fd 3, in a thread of its own;
* prefork: forks 2 children that each serve fd 3 from an epoll set, while
  the parent only waits for them (a pre-forking master);
* poll, select: in poll(2) / select(2) on fd 3 (baton reads the set from
  the process's memory);
* poll-other: in poll(2) on a pipe only, fd 3 open (not waiting on it);
* own: closes fd 3 and serves a socket of its own from an epoll set (not
  baton's socket: not visible either);
* never: sleeps forever with fd 3 open, never waiting on it.

--sleep waits that long first (time.sleep: no epoll, no accept);
--notify sends READY=1 to NOTIFY_SOCKET (for `notify|accepting`) before it
waits. Each answer is a minimal HTTP/1.1 response with X-Generation, then
close.
"""

import os
import select
import signal
import socket
import sys
import threading
import time

GENERATION = os.environ.get("BATON_GENERATION", "")


def answer(conn):
    try:
        conn.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        body = f"hello from generation {GENERATION}, pid {os.getpid()}\n".encode()
        head = (
            "HTTP/1.1 200 OK\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"X-Generation: {GENERATION}\r\n"
            f"X-Pid: {os.getpid()}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        conn.sendall(head + body)
    except OSError:
        pass
    finally:
        conn.close()


def serve_epoll(listener):
    listener.setblocking(False)
    ep = select.epoll()
    ep.register(os.dup(listener.fileno()), select.EPOLLIN)
    while True:
        for _ in ep.poll():
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                continue
            conn.setblocking(True)
            answer(conn)


def serve_accept(listener):
    def loop():
        while True:
            conn, _ = listener.accept()
            answer(conn)

    threading.Thread(target=loop, daemon=True).start()
    while True:
        time.sleep(3600)


def serve_poll(listener):
    listener.setblocking(False)
    p = select.poll()
    p.register(listener.fileno(), select.POLLIN)
    while True:
        p.poll()
        try:
            answer(listener.accept()[0])
        except BlockingIOError:
            pass


def serve_select(listener):
    listener.setblocking(False)
    while True:
        select.select([listener], [], [])
        try:
            answer(listener.accept()[0])
        except BlockingIOError:
            pass


def serve_poll_other(listener):
    """Polls a pipe, never the listener, with the listener open: not
    waiting for connections, whatever it holds."""
    r, _w = os.pipe()
    p = select.poll()
    p.register(r, select.POLLIN)
    while True:
        p.poll()


def serve_prefork(listener):
    children = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            serve_epoll(listener)
            os._exit(0)
        children.append(pid)
    listener.close()

    def stop(*_):
        for c in children:
            try:
                os.kill(c, signal.SIGTERM)
            except ProcessLookupError:
                pass
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    while True:
        os.wait()


def serve_own(listener):
    listener.close()
    mine = socket.create_server(("127.0.0.1", 0))
    print(f"waiter: listening on a socket of its own, {mine.getsockname()}", flush=True)
    serve_epoll(mine)


def main():
    mode = sys.argv[1]
    if "--sleep" in sys.argv:
        time.sleep(float(sys.argv[sys.argv.index("--sleep") + 1]))
    listener = socket.socket(fileno=3)
    if "--notify" in sys.argv:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as n:
            n.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
    print(f"waiter: gen={GENERATION} pid={os.getpid()} waits ({mode})", flush=True)
    if mode == "never":
        while True:
            time.sleep(3600)
    {
        "epoll": serve_epoll,
        "accept": serve_accept,
        "prefork": serve_prefork,
        "poll": serve_poll,
        "select": serve_select,
        "poll-other": serve_poll_other,
        "own": serve_own,
    }[mode](listener)


if __name__ == "__main__":
    main()
