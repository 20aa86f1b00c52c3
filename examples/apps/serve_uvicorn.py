"""uvicorn on fd 3, with a drain that fails no request.

    baton run -l 127.0.0.1:8080 --ready fd -- python serve_uvicorn.py asgi_app:app

`uvicorn --fd 3 app:app` works under baton as it is (readiness, rollback),
but on SIGTERM uvicorn closes at once, without answering, every keep-alive
connection that is idle at that instant and every connection it has
accepted but not read yet. A client that had just sent a request on one of
them sees it fail (see docs/integrations/uvicorn.md for the figures). This
runs the same uvicorn with one change to its shutdown:

1. stop accepting first: this closes only this process's copy of the
   socket, so new connections wait in baton's accept queue for the next
   generation;
2. for DRAIN_GRACE_MS (default 500), answer every request with
   `Connection: close`, so each busy keep-alive connection ends cleanly
   after its next response;
3. then uvicorn's own shutdown, which closes the connections nobody used
   in the meantime and waits for the busy ones.

It also gives uvicorn the socket with its real family (see main()).

The app is imported from the working directory (as uvicorn's default
`--app-dir .`) and must report readiness itself, as examples/apps/asgi_app.py
does from its lifespan startup.
"""

import asyncio
import os
import socket
import sys

import uvicorn

DRAINING = False


def close_when_draining(app):
    """ASGI middleware: `Connection: close` on every response started while
    draining (uvicorn then closes the connection after the response)."""

    async def wrapped(scope, receive, send):
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def send_closing(message):
            if message["type"] == "http.response.start" and DRAINING:
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() != b"connection"
                ]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await app(scope, receive, send_closing)

    return wrapped


class DrainingServer(uvicorn.Server):
    async def shutdown(self, sockets=None):
        global DRAINING
        for server in getattr(self, "servers", []):
            server.close()
        DRAINING = True
        await asyncio.sleep(int(os.environ.get("DRAIN_GRACE_MS", "500")) / 1000)
        await super().shutdown(sockets=sockets)


def main():
    target = sys.argv[1] if len(sys.argv) > 1 else "asgi_app:app"
    sys.path.insert(0, os.getcwd())
    # The socket baton passes as fd 3, its family read from the socket
    # itself: `uvicorn --fd 3` takes every fd for a Unix socket, so asyncio
    # does not set TCP_NODELAY on its TCP connections and a response written
    # in two parts waits for the client's delayed ACK (about 40 ms).
    listener = socket.socket(fileno=3)
    config = uvicorn.Config(
        target,
        # The app reports readiness from its lifespan startup.
        lifespan="on",
        timeout_graceful_shutdown=int(os.environ.get("GRACEFUL_TIMEOUT", "20")),
        log_level=os.environ.get("LOG_LEVEL", "warning"),
    )
    config.load()
    config.loaded_app = close_when_draining(config.loaded_app)
    DrainingServer(config).run(sockets=[listener])


if __name__ == "__main__":
    main()
