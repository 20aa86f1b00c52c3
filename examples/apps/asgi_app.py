"""A tiny ASGI app to run under baton with uvicorn, unchanged.

    baton run -l 127.0.0.1:8080 --ready fd -- uvicorn --fd 3 asgi_app:app

uvicorn serves the socket baton passes as fd 3 (`--fd 3`; it does not read
LISTEN_FDS) and does not speak sd_notify, so the app reports readiness
itself: its lifespan startup writes a newline to the fd in BATON_READY_FD
(`--ready fd`). uvicorn runs the startup once the app is imported, so a
release that fails to import or to start up never reports ready and baton
rolls it back. Frameworks give the same hook as `@app.on_event("startup")`
or a `lifespan=` function (see docs/integrations/uvicorn.md). Every
response says which generation answered.

For the tests: APP_FAIL_IF=PATH makes the startup fail while PATH exists
(a broken release).
"""

import os

GENERATION = os.environ.get("BATON_GENERATION", "")


def report_ready():
    """Tells baton this generation can serve (`--ready fd`)."""
    fd = os.environ.get("BATON_READY_FD")
    if fd:
        os.write(int(fd), b"\n")
        os.close(int(fd))


async def lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            broken = os.environ.get("APP_FAIL_IF")
            if broken and os.path.exists(broken):
                await send(
                    {
                        "type": "lifespan.startup.failed",
                        "message": "this release is broken (APP_FAIL_IF exists)",
                    }
                )
                return
            report_ready()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    assert scope["type"] == "http", scope["type"]
    body = f"hello from generation {GENERATION}, pid {os.getpid()}\n".encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
                (b"x-generation", GENERATION.encode()),
                (b"x-pid", str(os.getpid()).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
