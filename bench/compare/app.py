"""The app every tool serves in bench/compare: Flask on gunicorn.

Its version is read from version.txt when the app is imported (in the
master with --preload, in each worker without), and sent in the
X-Generation header, so the load client sees which release answered.
"""

import os

from flask import Flask, Response

HERE = os.path.dirname(os.path.abspath(__file__))
VERSION_FILE = os.environ.get("BENCH_VERSION_FILE", os.path.join(HERE, "version.txt"))
with open(VERSION_FILE, encoding="utf-8") as f:
    VERSION = f.read().strip()

app = Flask(__name__)


@app.route("/")
def index():
    return Response("hello\n", headers={"X-Generation": VERSION})
