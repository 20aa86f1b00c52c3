"""A WSGI server for `baton run --dispatch`, standard library only.

    baton run -l 127.0.0.1:8080 -w 4 --dispatch -- \\
        python3 examples/python-dispatch/baton_dispatch.py --chdir examples/apps app:app

Each process is one synchronous worker, like the children of a preforking
server: baton hands it one connection at a time over the channel in
BATON_DISPATCH_FD, and gives the next one only when it says `done`. Both
of baton's modes work (BATON_DISPATCH says which):

* pass: baton accepts and sends the connection's descriptor with
  `conn ID LISTENER`; the worker answers `taken ID`, serves it, `done ID`;
* accept: baton says `accept ID INDEX LISTENER`; the worker accepts one
  connection, non-blocking, on descriptor 3+INDEX and answers `got ID`
  (then `done ID` once it is closed) or `none ID` if another process was
  quicker.

On SIGTERM the worker says `stopping`, serves whatever baton sent before
its `end`, and exits. The protocol is in docs/dispatch.md; this file is
its reference implementation in another language than Rust.

Each connection carries one request (HTTP/1.0 semantics, as wsgiref
serves it): a synchronous worker held by an idle keep-alive client would
serve nobody else.
"""

import argparse
import importlib
import os
import signal
import socket
import sys
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

MAX_MESSAGE = 1024
# How long one client may hold this worker (reading its request, or
# reading our answer) before it is dropped.
CLIENT_TIMEOUT = 30.0


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (wsgiref's name)
        pass


class Server(WSGIServer):
    """wsgiref's server without a socket of its own: it serves sockets it
    is handed (`finish_request`)."""

    def __init__(self, app):
        super().__init__(("127.0.0.1", 0), QuietHandler, bind_and_activate=False)
        # TCPServer made a socket we never use.
        self.socket.close()
        self.server_name = "localhost"
        self.server_port = 0
        self.setup_environ()
        self.set_app(app)

    def serve_one(self, conn):
        conn.setblocking(True)
        conn.settimeout(CLIENT_TIMEOUT)
        try:
            peer = conn.getpeername()
        except OSError:
            peer = ("", 0)
        if not isinstance(peer, tuple):
            peer = (str(peer), 0)
        try:
            self.finish_request(conn, peer)
        except Exception as e:  # one client's failure is not the worker's
            print(f"baton_dispatch: a connection failed: {e!r}", file=sys.stderr)
        finally:
            try:
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            conn.close()


def load_app(spec):
    module, _, name = spec.partition(":")
    if not module or not name:
        sys.exit(f"baton_dispatch: {spec!r} is not MODULE:APP (e.g. app:app)")
    return getattr(importlib.import_module(module), name)


def channel_from_env():
    fd = os.environ.get("BATON_DISPATCH_FD")
    if fd is None:
        sys.exit(
            "baton_dispatch: no BATON_DISPATCH_FD: run me under `baton run --dispatch`"
        )
    try:
        fd = int(fd)
    except ValueError:
        sys.exit(f"baton_dispatch: BATON_DISPATCH_FD={fd!r} is not a descriptor")
    return socket.socket(fileno=fd)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("app", help="the WSGI application, MODULE:NAME")
    p.add_argument("--chdir", help="import the module from this directory")
    args = p.parse_args()
    if args.chdir:
        os.chdir(args.chdir)
    sys.path.insert(0, os.getcwd())
    server = Server(load_app(args.app))
    chan = channel_from_env()
    mode = os.environ.get("BATON_DISPATCH", "pass")
    count = int(os.environ.get("LISTEN_FDS", "0"))
    listeners = [socket.socket(fileno=3 + i) for i in range(count)]
    for l in listeners:
        l.setblocking(False)

    stopping = False

    def on_term(signum, frame):
        nonlocal stopping
        if not stopping:
            stopping = True
            # baton answers `end`; what it sent before is still served.
            chan.send(b"stopping")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    chan.send(b"ready 1")
    while True:
        msg, fds, _flags, _addr = socket.recv_fds(
            chan, MAX_MESSAGE, 1, socket.MSG_CMSG_CLOEXEC
        )
        if not msg:
            return  # baton is gone
        words = msg.split()
        verb = words[0] if words else b""
        if verb == b"conn" and fds:
            conn_id = words[1]
            conn = socket.socket(fileno=fds[0])
            chan.send(b"taken " + conn_id)
            server.serve_one(conn)
            chan.send(b"done " + conn_id)
        elif verb == b"accept" and mode == "accept":
            conn_id, index = words[1], int(words[2])
            try:
                conn, _ = listeners[index].accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                chan.send(b"none " + conn_id)
                continue
            chan.send(b"got " + conn_id)
            server.serve_one(conn)
            chan.send(b"done " + conn_id)
        elif verb == b"end":
            return
        else:
            for fd in fds:
                os.close(fd)
            print(f"baton_dispatch: unexpected message {msg!r}", file=sys.stderr)


if __name__ == "__main__":
    main()
