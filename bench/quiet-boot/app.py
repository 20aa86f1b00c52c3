"""The quiet-boot benchmark's app: Flask under gunicorn, whose import
burns CPU the way loading a big framework does (BOOT_CPU_SECONDS, default
0.4), so that a booting generation competes for the CPUs with the one
serving."""

import os
import time

from flask import Flask

_end = time.process_time() + float(os.environ.get("BOOT_CPU_SECONDS", "0.4"))
_x = 0
while time.process_time() < _end:
    _x = (_x * 31 + 7) % 1000003

app = Flask(__name__)
GENERATION = os.environ.get("BATON_GENERATION", "-")


@app.route("/")
def index():
    return f"generation {GENERATION}\n", 200, {"X-Generation": GENERATION}
