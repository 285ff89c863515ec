#!/usr/bin/env python3
"""Webhook delivery throughput with nothing else running (docs/BENCHMARKS.md).

    python3 examples/bench/webhooks.py BUILD     # BUILD holds drover, fleet and http-floor

Starts a release server, lets the fleet simulator poll 10,000 devices through one
operation each (about 30,000 events: enrollments and operation changes), then subscribes
a webhook from the start of the log to http-floor (which answers 204) and times how long
delivery takes to reach the newest event. Binds 127.0.0.1 only (ports 18080, 18830,
15683, 18090); bounded waits.
"""
import json, os, subprocess, sys, tempfile, time, urllib.request

build = os.path.realpath(sys.argv[1] if len(sys.argv) > 1 else "target/release")
data = tempfile.mkdtemp()
server = subprocess.Popen([f"{build}/drover", "serve", "--data-dir", f"{data}/server", "--http-addr", "127.0.0.1:18080",
                           "--mqtt-addr", "127.0.0.1:18830", "--coap-addr", "127.0.0.1:15683", "--coaps-addr", "127.0.0.1:0",
                           "--webhook-allow-private", "true", "--plaintext", "true"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
receiver = None
try:
    for _ in range(300):
        try:
            urllib.request.urlopen("http://127.0.0.1:18080/healthz", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    subprocess.run([f"{build}/fleet", "--server", "http://127.0.0.1:18080", "--data-dir", f"{data}/server",
                    "--devices", "10000", "--mode", "poll", "--concurrency", "64"], check=True, stdout=subprocess.DEVNULL)
    receiver = subprocess.Popen([f"{build}/http-floor", "--addr", "127.0.0.1:18090"], stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    token = open(f"{data}/server/admin-token").read().strip()

    def call(method, path, body=None):
        req = urllib.request.Request("http://127.0.0.1:18080" + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
        return json.load(urllib.request.urlopen(req, timeout=10))

    latest = 0
    while True:
        page = call("GET", f"/api/v1/events?after={latest}&limit=1000")
        if not page["items"]:
            break
        latest = page["next_after"]
    t0 = time.time()
    call("POST", "/api/v1/webhooks", {"name": "bench", "url": "http://127.0.0.1:18090/hook", "after": 0})
    while True:
        w = call("GET", "/api/v1/webhooks/bench")
        if w["cursor"] >= latest or time.time() - t0 > 120:
            break
        time.sleep(0.05)
    dt = time.time() - t0
    print(f"{w['cursor']} of {latest} events delivered in {dt:.2f} s: {w['cursor'] / dt:.0f} events/s, "
          f"failures {w['failures']}")
finally:
    for p in (server, receiver):
        if p:
            p.kill()
