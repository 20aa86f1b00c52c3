"""The --metrics endpoint's cost to baton (run it with bench/metrics/run).

Starts `baton run --metrics 127.0.0.1:0 --workers 4` with the probe, then
sends N requests of each page (/metrics, /ready, /live) back to back on one
keep-alive connection and reads baton's CPU time (utime + stime of its
whole process, /proc/PID/stat) before and after: CPU per request is what a
scrape takes from the event loop (an upper bound: the loop does nothing
else meanwhile). The client's round trip per request is given beside it.
An idle stretch of the same length measures baton's CPU without scrapes.
"""

import argparse
import http.client
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 (1-based); fields[0] is field 3.
    return (int(fields[11]) + int(fields[12])) / TICK


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--out")
    ap.add_argument("--summary")
    ap.add_argument("--commit", default="unknown")
    a = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="baton-bench-metrics-")
    log_path = os.path.join(tmp, "baton.log")
    env = dict(os.environ, XDG_RUNTIME_DIR=tmp)
    log = open(log_path, "w")
    baton = subprocess.Popen(
        [
            os.path.join(a.bin_dir, "baton"), "run", "-l", "127.0.0.1:0",
            "--metrics", "127.0.0.1:0", "--workers", "4", "--",
            os.path.join(a.bin_dir, "baton-probe"),
        ],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    try:
        port = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and baton.poll() is None:
            text = open(log_path).read()
            m = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/", text)
            if m and "generation 1 ready" in text:
                port = int(m.group(1))
                break
            time.sleep(0.05)  # polling a log file: nothing to wait on
        if port is None:
            sys.exit(f"baton did not become ready within 60 s; see {log_path}")

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        rows = []
        for path in ["/metrics", "/ready", "/live"]:
            lat = []
            size = 0
            before = cpu_seconds(baton.pid)
            t0 = time.monotonic()
            for _ in range(a.requests):
                s = time.perf_counter()
                conn.request("GET", path)
                r = conn.getresponse()
                body = r.read()
                lat.append(time.perf_counter() - s)
                assert r.status == 200, (path, r.status)
                size = len(body)
            wall = time.monotonic() - t0
            cpu = cpu_seconds(baton.pid) - before
            rows.append((path, size, cpu / a.requests * 1e6,
                         statistics.median(lat) * 1e6, pct(lat, 99) * 1e6, wall))
        idle_wall = max(r[5] for r in rows)
        before = cpu_seconds(baton.pid)
        time.sleep(idle_wall)  # the idle stretch itself is what is measured
        idle = cpu_seconds(baton.pid) - before
    finally:
        baton.send_signal(signal.SIGTERM)
        try:
            baton.wait(timeout=30)
        except subprocess.TimeoutExpired:
            baton.kill()
            baton.wait()

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    lines = [
        f"{p}: {size} bytes; baton CPU {cpu:.1f} µs per request; "
        f"round trip p50 {p50:.0f} µs, p99 {p99:.0f} µs"
        for p, size, cpu, p50, p99, _ in rows
    ]
    lines.append(f"idle for {idle_wall:.1f} s without requests: baton CPU {idle * 1e3:.1f} ms")
    print("\n".join(lines))
    print(f"load average during the run: {load}")
    if a.out:
        table = "\n".join(
            f"| `{p}` | {size} | {cpu:.1f} µs | {p50:.0f} µs | {p99:.0f} µs |"
            for p, size, cpu, p50, p99, _ in rows
        )
        with open(a.out, "w") as f:
            f.write(
                f"""# What the metrics endpoint costs

Measured by `bench/metrics/run --requests {a.requests}` ({date}, commit {a.commit}, load average {load}):
release build, `baton run --metrics 127.0.0.1:0 --workers 4` with the probe, {a.requests}
requests of each page back to back on one keep-alive connection. baton CPU is
its user + system time (from `/proc/PID/stat`, in {1000 // TICK} ms ticks) over
the requests, divided by their number: what each takes from the event loop.

| page | body bytes | baton CPU per request | round trip p50 | p99 |
| --- | --- | --- | --- | --- |
{table}

Idle for {idle_wall:.1f} s without requests: baton CPU {idle * 1e3:.1f} ms.

The CPU figures are coarse (clock ticks over the whole run); the round trip
includes the client's own (Python) time, so it bounds the loop's time from
above. Other agents shared the two cores during the run (see the load average).
"""
            )
    if a.summary:
        text = open(a.summary).read()
        m = rows[0]
        section = (
            "<!-- metrics -->\n## The metrics endpoint\n\n"
            f"`bench/metrics/run` ({date}, load average {load}): a scrape of `/metrics` "
            f"({m[1]} bytes, 4 workers) costs baton {m[2]:.0f} µs of CPU, round trip p50 "
            f"{m[3]:.0f} µs, p99 {m[4]:.0f} µs; `/ready` {rows[1][2]:.0f} µs, `/live` "
            f"{rows[2][2]:.0f} µs. Details: [bench/metrics/RESULTS.md](metrics/RESULTS.md).\n"
            "<!-- /metrics -->"
        )
        if "<!-- metrics -->" in text:
            text = re.sub(r"<!-- metrics -->.*?<!-- /metrics -->", section, text, flags=re.S)
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
        with open(a.summary, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
