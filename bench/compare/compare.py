"""baton beside the tools people pick instead, on one gunicorn + Flask app.

Run by bench/compare/run (which installs everything). For each tool: start
it, put a paced load on it (baton-load, no retries, every request kept in
a timeline), let it serve STEADY seconds, then reload it every INTERVAL
seconds RELOADS times (a new app version each time), stop it, and count
what is left. Writes, under the output directory:

  <tool>.csv       every request (baton-load --timeline)
  results.json     the figures per tool
  results.md       the table
  latency.png      latency over time through the reloads, one panel per tool

Usage: compare.py OUT_DIR RUN_LABEL
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
VENV = os.environ.get("BENCH_VENV", os.path.join(ROOT, "target", "bench-venv"))
BIN = os.path.join(VENV, "bin")
BATON = os.environ.get("BENCH_BATON", os.path.join(ROOT, "target", "release", "baton"))
LOAD = os.environ.get("BENCH_LOAD", os.path.join(ROOT, "target", "release", "baton-load"))

STEADY = 4.0
INTERVAL = 2.0
# BENCH_RELOADS: fewer for a quick try of the script itself.
RELOADS = int(os.environ.get("BENCH_RELOADS", "10"))
TAIL = 3.0
RATE = 400
CONNECTIONS = 4
WORKERS = 2


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port, want=None, timeout=20.0):
    """Polls until the app answers (with X-Generation `want`, if given)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as r:
                if want is None or r.headers.get("X-Generation") == want:
                    return True
        except OSError:
            pass
        time.sleep(0.02)
    return False


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid):
    out = []
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="utf-8") as f:
            out = [int(p) for p in f.read().split()]
    except OSError:
        pass
    return out


def session_members(sid):
    """Processes of session `sid` (every tool is started in its own)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="utf-8") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        # fields[0] is the state, [3] the session id.
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(int(name))
    return found


def gunicorn(port, *extra):
    return [
        os.path.join(BIN, "gunicorn"),
        "--workers",
        str(WORKERS),
        "--bind",
        f"127.0.0.1:{port}",
        "--graceful-timeout",
        "10",
        "--no-control-socket",
        *extra,
        "app:app",
    ]


class Tool:
    """One way of running and reloading the app."""

    name = ""
    label = ""

    def __init__(self, work, port):
        self.work = work
        self.port = port
        self.proc = None

    def command(self):
        raise NotImplementedError

    def start(self):
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.work,
            stdin=subprocess.DEVNULL,
            stdout=open(os.path.join(self.work, "out.log"), "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=self.env(),
        )

    def env(self):
        e = dict(os.environ)
        e["PATH"] = BIN + ":" + e.get("PATH", "")
        e["XDG_RUNTIME_DIR"] = self.work
        e.pop("NOTIFY_SOCKET", None)
        return e

    def reload(self, version):
        """Starts a reload to `version` (written to version.txt before)."""
        os.kill(self.proc.pid, signal.SIGHUP)

    def supervisors(self):
        """The pids whose memory is the tool's own (not the app's)."""
        return [self.proc.pid]

    def stop(self):
        os.kill(self.proc.pid, signal.SIGTERM)


class GunicornHup(Tool):
    name = "gunicorn-hup"
    label = "gunicorn alone, HUP"

    def command(self):
        return gunicorn(self.port)


class GunicornUsr2(Tool):
    """USR2: gunicorn re-executes itself as a new master beside the old;
    once the new one answers, TERM the old (gunicorn's documented upgrade)."""

    name = "gunicorn-usr2"
    label = "gunicorn USR2 + TERM old master"

    def command(self):
        return gunicorn(self.port, "--pid", os.path.join(self.work, "gunicorn.pid"))

    def master(self):
        try:
            with open(os.path.join(self.work, "gunicorn.pid"), encoding="utf-8") as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return self.proc.pid

    def reload(self, version):
        old = self.master()
        os.kill(old, signal.SIGUSR2)
        # The script a user writes: wait for the new master to answer, then
        # stop the old one (bounded: a new master that never comes is left).
        if wait_http(self.port, version, timeout=INTERVAL * 0.9) and self.master() != old:
            os.kill(old, signal.SIGTERM)

    def supervisors(self):
        return [self.master()]

    def stop(self):
        os.kill(self.master(), signal.SIGTERM)


class Hupwatch(Tool):
    """hupwatch starts a new gunicorn on HUP, waits its warm-up time, then
    TERMs the old one; the two share the port with SO_REUSEPORT."""

    name = "hupwatch"
    label = "hupwatch + gunicorn --reuse-port"

    def command(self):
        return [
            os.path.join(BIN, "hupwatch"),
            "--warmup-time",
            "1",
            "--kill-at-exit",
            "--",
            *gunicorn(self.port, "--reuse-port"),
        ]


class SupervisordHupwatch(Tool):
    name = "supervisord-hupwatch"
    label = "supervisord + hupwatch"

    def command(self):
        conf = os.path.join(self.work, "supervisord.conf")
        hup = Hupwatch(self.work, self.port).command()
        with open(conf, "w", encoding="utf-8") as f:
            f.write(
                f"""[supervisord]
nodaemon=true
logfile={self.work}/supervisord.log
pidfile={self.work}/supervisord.pid
[unix_http_server]
file={self.work}/supervisor.sock
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl=unix://{self.work}/supervisor.sock
[program:app]
command={" ".join(hup)}
directory={self.work}
stopsignal=TERM
stopwaitsecs=15
stopasgroup=true
"""
            )
        self.conf = conf
        return [os.path.join(BIN, "supervisord"), "-c", conf]

    def reload(self, version):
        subprocess.run(
            [os.path.join(BIN, "supervisorctl"), "-c", self.conf, "signal", "HUP", "app"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
            timeout=10,
        )

    def supervisors(self):
        return [self.proc.pid] + children(self.proc.pid)


class Baton(Tool):
    name = "baton"
    label = "baton"

    def command(self):
        return [
            BATON,
            "run",
            "--name",
            "bench",
            "-l",
            f"tcp://127.0.0.1:{self.port}",
            "--grace",
            "15s",
            "--",
            os.path.join(BIN, "gunicorn"),
            "--preload",
            "--workers",
            str(WORKERS),
            "--graceful-timeout",
            "10",
            "--no-control-socket",
            "app:app",
        ]

    def env(self):
        e = super().env()
        e["BATON_LOG"] = "info"
        return e


TOOLS = [GunicornHup, GunicornUsr2, Hupwatch, SupervisordHupwatch, Baton]


def read_timeline(path):
    started_ns = 0
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("# started_unix_ns="):
                started_ns = int(line.split("=", 1)[1])
            elif line and line[0].isdigit():
                start, lat, outcome, gen = line.rstrip("\n").split(",", 3)
                rows.append((int(start) / 1e6, int(lat) / 1e6, outcome, gen))
    return started_ns / 1e9, rows


def percentile(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(p / 100 * len(v)))]


def run_tool(cls, out_dir):
    work = tempfile.mkdtemp(prefix=f"bench-compare-{cls.name}-")
    for f in ("app.py",):
        os.symlink(os.path.join(HERE, f), os.path.join(work, f))
    version_file = os.path.join(work, "version.txt")
    with open(version_file, "w", encoding="utf-8") as f:
        f.write("1\n")
    port = free_port()
    tool = cls(work, port)
    tool.start()
    if not wait_http(port, "1", timeout=30):
        tool.stop()
        raise SystemExit(f"{cls.name} did not start serving; see {work}/out.log")
    timeline = os.path.join(out_dir, f"{cls.name}.csv")
    duration = STEADY + RELOADS * INTERVAL + TAIL
    load = subprocess.Popen(
        [
            LOAD,
            "--url",
            f"http://127.0.0.1:{port}/",
            "-c",
            str(CONNECTIONS),
            "--no-keep-alive",
            "--rate",
            str(RATE),
            "--timeout",
            "10s",
            "-d",
            f"{duration}s",
            "--timeline",
            timeline,
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    t0 = time.time()
    reloads = []
    for i in range(RELOADS):
        at = t0 + STEADY + i * INTERVAL
        time.sleep(max(0.0, at - time.time()))
        version = str(i + 2)
        with open(version_file + ".tmp", "w", encoding="utf-8") as f:
            f.write(version + "\n")
        os.replace(version_file + ".tmp", version_file)
        reloads.append((time.time(), version))
        tool.reload(version)
    report = json.loads(load.communicate(timeout=duration + 60)[0] or b"{}")
    rss = sum(rss_kb(p) for p in tool.supervisors())
    sid = tool.proc.pid
    tool.stop()
    try:
        tool.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    # What is left once the tool's top process has gone: give stragglers a
    # bounded moment to exit on their own, then count and kill them.
    deadline = time.monotonic() + 5
    left = session_members(sid)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = session_members(sid)
    left_commands = []
    for p in left:
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            left_commands.append(" ".join(a.decode(errors="replace") for a in argv[:3]))
        except OSError:
            pass
    for p in left:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    if tool.proc.poll() is None:
        tool.proc.kill()
        tool.proc.wait()

    started, rows = read_timeline(timeline)
    reload_at = [(t - started, v) for t, v in reloads]
    first_reload = reload_at[0][0]
    steady = [lat for s, lat, o, _ in rows if o == "ok" and 0.5 <= s < first_reload]
    during = [lat for s, lat, o, _ in rows if o == "ok" and s >= first_reload]
    failed = [r for r in rows if r[2] != "ok"]
    failed_in_reloads = [r for r in failed if r[0] >= first_reload]
    done = sorted(s + lat for s, lat, o, _ in rows if o == "ok")
    gap = max((b - a for a, b in zip(done, done[1:])), default=0.0)
    latencies = []
    for t, v in reload_at:
        seen = [s + lat for s, lat, o, g in rows if o == "ok" and g == v and s + lat >= t]
        latencies.append(min(seen) - t if seen else None)
    served = [x for x in latencies if x is not None]
    result = {
        "tool": cls.name,
        "label": cls.label,
        "requests": len(rows),
        "failed": len(failed),
        "failed_per_reload": len(failed_in_reloads) / RELOADS,
        "failure_kinds": sorted({r[2] for r in failed}),
        "p99_steady_ms": percentile(steady, 99) * 1e3,
        "p99_reloads_ms": percentile(during, 99) * 1e3,
        "longest_gap_ms": gap * 1e3,
        "reload_latency_median_ms": percentile(served, 50) * 1e3 if served else None,
        "reload_latency_max_ms": max(served) * 1e3 if served else None,
        "reloads_not_served": sum(1 for x in latencies if x is None),
        "supervisor_rss_kb": rss,
        "processes_left": len(left),
        "processes_left_commands": left_commands,
        "reloads_at_s": [t for t, _ in reload_at],
        "load_report": report,
    }
    return result


def fmt(v, unit=""):
    if v is None:
        return "never"
    if isinstance(v, float):
        return f"{v:.1f}{unit}"
    return f"{v}{unit}"


def table(results, label, load):
    lines = [
        f"Run {label}; load average before: {load}. "
        f"{RATE} req/s paced over {CONNECTIONS} connections (no keep-alive), "
        f"{STEADY:.0f} s steady, then {RELOADS} reloads every {INTERVAL:.0f} s; "
        f"gunicorn {WORKERS} sync workers.",
        "",
        "| tool | failed / reload | p99 steady | p99 during reloads | longest gap | "
        "reload latency (median / max) | reloads never served | supervisor RSS | processes left after stop |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r['label']} | {r['failed_per_reload']:.1f} | {fmt(r['p99_steady_ms'], ' ms')} | "
            f"{fmt(r['p99_reloads_ms'], ' ms')} | {fmt(r['longest_gap_ms'], ' ms')} | "
            f"{fmt(r['reload_latency_median_ms'], ' ms')} / {fmt(r['reload_latency_max_ms'], ' ms')} | "
            f"{r['reloads_not_served']} | {r['supervisor_rss_kb'] / 1024:.1f} MiB | {r['processes_left']} |"
        )
    kinds = [f"{r['label']}: {', '.join(r['failure_kinds'])}" for r in results if r["failure_kinds"]]
    if kinds:
        lines += ["", "Failures seen: " + "; ".join(kinds) + "."]
    return "\n".join(lines) + "\n"


def plot(results, out_dir, label):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(11, 2.3 * len(results)), sharex=True)
    for ax, r in zip(axes, results):
        _, rows = read_timeline(os.path.join(out_dir, f"{r['tool']}.csv"))
        ok = [(s, lat * 1e3) for s, lat, o, _ in rows if o == "ok"]
        bad = [(s, max(lat * 1e3, 0.1)) for s, lat, o, _ in rows if o != "ok"]
        ax.scatter([x for x, _ in ok], [y for _, y in ok], s=2, color="tab:blue", label="ok")
        if bad:
            ax.scatter([x for x, _ in bad], [y for _, y in bad], s=18, marker="x",
                       color="tab:red", label=f"failed ({len(bad)})")
        for t in r["reloads_at_s"]:
            ax.axvline(t, color="grey", linewidth=0.6, alpha=0.6)
        ax.set_yscale("log")
        ax.set_ylabel("ms")
        ax.set_title(
            f"{r['label']}: {r['failed']} failed, p99 {r['p99_reloads_ms']:.0f} ms during reloads, "
            f"longest gap {r['longest_gap_ms']:.0f} ms",
            fontsize=9,
            loc="left",
        )
        ax.legend(loc="upper left", fontsize=7, markerscale=3)
    axes[-1].set_xlabel("seconds into the run (grey lines: reloads)")
    fig.suptitle(f"Latency of every request through {RELOADS} reloads ({label})", fontsize=11)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "latency.png"), dpi=90)


def main():
    out_dir, label = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    load = open("/proc/loadavg", encoding="utf-8").read().split()[:3]
    results = []
    for cls in TOOLS:
        print(f"compare: {cls.label} ...", flush=True)
        r = run_tool(cls, out_dir)
        print(
            f"compare:   {r['failed']} failed of {r['requests']}, p99 {r['p99_reloads_ms']:.1f} ms "
            f"during reloads, gap {r['longest_gap_ms']:.0f} ms, left {r['processes_left']}",
            flush=True,
        )
        results.append(r)
    after = open("/proc/loadavg", encoding="utf-8").read().split()[:3]
    with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"label": label, "loadavg_before": load, "loadavg_after": after,
                   "results": results}, f, indent=1)
    text = (
        table(results, label, " ".join(load))
        + f"\nLoad average after: {' '.join(after)}.\n\nRerun: `bench/compare/run`.\n"
    )
    with open(os.path.join(out_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write(text)
    plot(results, out_dir, label)
    print(text)


if __name__ == "__main__":
    main()
