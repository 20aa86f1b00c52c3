"""Sequential probe: one request after another on a keep-alive connection
(reconnecting when the server closes it) for SECONDS; prints the longest
gap between two responses, in ms, and how many failed."""

import http.client
import sys
import time

port, seconds = int(sys.argv[1]), float(sys.argv[2])
end = time.monotonic() + seconds
last = time.monotonic()
longest = 0.0
failed = 0
ok = 0
conn = None
while time.monotonic() < end:
    try:
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/")
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            failed += 1
        else:
            ok += 1
        if r.getheader("Connection", "").lower() == "close":
            conn.close()
            conn = None
    except Exception:
        failed += 1
        if conn is not None:
            conn.close()
        conn = None
        continue
    now = time.monotonic()
    longest = max(longest, now - last)
    last = now
print(f"{longest * 1000:.1f} {ok} {failed}")
