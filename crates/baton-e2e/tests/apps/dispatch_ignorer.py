"""A --dispatch worker that ignores what it is sent, once.

The first worker 0 to start (while MARKER does not exist) says `ready` and
then never answers, holding every connection baton sends it: baton must
kill it after --dispatch-timeout and give the connection to another
worker. Every other worker (its replacement included) is the Python worker
of examples/python-dispatch serving examples/apps/app.py.

    python3 dispatch_ignorer.py MARKER EXAMPLE APPDIR
"""

import os
import signal
import socket
import sys

marker, example, appdir = sys.argv[1:4]
if os.environ.get("BATON_WORKER") == "0" and not os.path.exists(marker):
    open(marker, "w").close()
    chan = socket.socket(fileno=int(os.environ["BATON_DISPATCH_FD"]))
    chan.send(b"ready 1")
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        signal.pause()
os.execvp(sys.executable, [sys.executable, example, "--chdir", appdir, "app:app"])
