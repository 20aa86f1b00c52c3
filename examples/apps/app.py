"""A tiny WSGI app to run under baton with gunicorn, unchanged.

    baton run -l 127.0.0.1:8080 -- gunicorn --preload --workers 2 app:app

gunicorn takes its listening socket from baton through LISTEN_FDS (systemd
socket activation) and reports READY=1 on NOTIFY_SOCKET, so `--ready notify`
(baton's default) works; see docs/integrations/gunicorn.md for why
`--preload` matters. Every response says which generation answered.

For the tests: APP_IMPORT_DELAY=SECONDS makes the import slow (an app that
loads a big framework); APP_FAIL_IF=PATH makes the import fail while PATH
exists (a broken release).
"""

import os
import time

if os.path.exists(os.environ.get("APP_FAIL_IF", "/nonexistent/baton-e2e")):
    raise RuntimeError("this release is broken (APP_FAIL_IF exists)")

time.sleep(float(os.environ.get("APP_IMPORT_DELAY", "0")))

GENERATION = os.environ.get("BATON_GENERATION", "")


def app(environ, start_response):
    body = f"hello from generation {GENERATION}, pid {os.getpid()}\n".encode()
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/plain"),
            ("Content-Length", str(len(body))),
            ("X-Generation", GENERATION),
            ("X-Pid", str(os.getpid())),
        ],
    )
    return [body]
