#!/usr/bin/env python3
"""What TLS costs, TLS and plaintext side by side in the same run (docs/BENCHMARKS.md).

    examples/bench/tls.py [BUILD_DIR]     # default target/release

For each round and each mode (the default TLS with its development certificate, then
--plaintext true), a fresh server:

* polls/s: wrk (a peer HTTP load tool, keep-alive connections) sending an Android
  device's poll, PUT /agent/v1/android/devices/{id}/pending-operations with `[]`;
* handshakes/s: `openssl s_time -new` (a full handshake per connection) against the
  server, and against `openssl s_server` with the same certificate as the peer baseline;
* MQTT connections held: asyncio opens CONNECTIONS connections to the embedded broker
  (CONNECT with an admin token, answered CONNACK 0), timing how fast they connect, and
  reads the server's resident memory before and after and its CPU time spent;
* the server's CPU time per handshake, from /proc while s_time runs (the client tools
  are single-threaded, so their rates say more about them than about the server).

Environment: ROUNDS (3), SECS (10 per wrk run), CONNECTIONS (2000), WRK_CONNECTIONS (64).
Binds 127.0.0.1 only; bounded loops everywhere.
"""

import asyncio
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

build = os.path.realpath(sys.argv[1] if len(sys.argv) > 1 else "target/release")
here = os.path.dirname(os.path.realpath(__file__))
root = os.path.realpath(os.path.join(here, "..", ".."))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
SECS = int(os.environ.get("SECS", "10"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "2000"))
WRK_CONNECTIONS = int(os.environ.get("WRK_CONNECTIONS", "64"))


def port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cpu_secs(pid):
    """The process's user + system CPU time so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Server:
    def __init__(self, tls):
        self.tls = tls
        self.data = tempfile.mkdtemp()
        self.http, self.mqtt = port(), port()
        args = [f"{build}/drover", "serve", "--data-dir", self.data, "--http-addr", f"127.0.0.1:{self.http}",
                "--mqtt-addr", f"127.0.0.1:{self.mqtt}", "--coap-addr", f"127.0.0.1:{port()}", "--coaps-addr", "127.0.0.1:0"]
        if not tls:
            args += ["--plaintext", "true"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env={**os.environ, "DROVER_LOG": "warn"})
        self.scheme = "https" if tls else "http"
        self.ca = os.path.join(self.data, "tls", "cert.pem")
        self.ctx = ssl.create_default_context(cafile=None)
        for _ in range(300):
            try:
                if tls:
                    self.ctx = ssl.create_default_context(cafile=self.ca)
                urllib.request.urlopen(f"{self.scheme}://127.0.0.1:{self.http}/healthz", timeout=1,
                                       context=self.ctx if tls else None)
                break
            except Exception:
                time.sleep(0.1)
        else:
            raise SystemExit("the server did not come up")
        self.token = open(os.path.join(self.data, "admin-token")).read().strip()
        body = open(os.path.join(root, "plugins/android/fixtures/enroll.json"), "rb").read()
        req = urllib.request.Request(f"{self.scheme}://127.0.0.1:{self.http}/agent/v1/android/enroll", data=body,
                                     method="POST")
        answer = json.load(urllib.request.urlopen(req, timeout=10, context=self.ctx if tls else None))
        self.device_token = answer["access_token"]
        self.device_id = answer["device_id"]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def wrk(server):
    script = os.path.join(server.data, "poll.lua")
    with open(script, "w") as f:
        f.write('wrk.method = "PUT"\nwrk.body = "[]"\n'
                f'wrk.headers["Authorization"] = "Bearer {server.device_token}"\n')
    url = f"{server.scheme}://127.0.0.1:{server.http}/agent/v1/android/devices/{server.device_id}/pending-operations"
    out = subprocess.run(["wrk", "-t", "2", "-c", str(WRK_CONNECTIONS), "-d", f"{SECS}s", "--latency", "-s", script,
                          url], capture_output=True, text=True, timeout=SECS + 30).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+\w+)", out).group(1)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rate, p99, int(errors.group(1)) if errors else 0


def s_time(host_port, ca):
    out = subprocess.run(["openssl", "s_time", "-connect", host_port, "-new", "-time", str(SECS), "-CAfile", ca],
                         capture_output=True, text=True, timeout=SECS + 30).stdout
    m = re.search(r"(\d+) connections in ([\d.]+)s", out)
    return int(m.group(1)) / float(m.group(2))


def s_server_rate(ca, key):
    p = port()
    srv = subprocess.Popen(["openssl", "s_server", "-accept", f"127.0.0.1:{p}", "-cert", ca, "-key", key, "-quiet",
                            "-naccept", "1000000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           stdin=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", p), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    try:
        return s_time(f"127.0.0.1:{p}", ca)
    finally:
        srv.kill()
        srv.wait()


def mqtt_connect_packet(client_id, user, password):
    def s(x):
        b = x.encode()
        return len(b).to_bytes(2, "big") + b
    var = s("MQTT") + bytes([4, 0xC2]) + (60).to_bytes(2, "big")
    payload = s(client_id) + s(user) + s(password)
    rest = var + payload
    length, n = b"", len(rest)
    while True:
        byte, n = n % 128, n // 128
        length += bytes([byte | (0x80 if n else 0)])
        if not n:
            break
    return bytes([0x10]) + length + rest


async def hold(server):
    ctx = None
    if server.tls:
        ctx = ssl.create_default_context(cafile=server.ca)
    held = []

    async def one(i):
        r, w = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", server.mqtt, ssl=ctx, server_hostname="127.0.0.1" if ctx else None),
            30)
        w.write(mqtt_connect_packet(f"bench{i}", "admin", server.token))
        await w.drain()
        ack = await asyncio.wait_for(r.readexactly(4), 30)
        assert ack[0] == 0x20 and ack[3] == 0, ack
        held.append(w)

    before = rss_kib(server.proc.pid)
    cpu = cpu_secs(server.proc.pid)
    start = time.monotonic()
    sem = asyncio.Semaphore(64)

    async def bounded(i):
        async with sem:
            await one(i)
    await asyncio.gather(*(bounded(i) for i in range(CONNECTIONS)))
    took = time.monotonic() - start
    cpu = cpu_secs(server.proc.pid) - cpu
    await asyncio.sleep(1)
    after = rss_kib(server.proc.pid)
    for w in held:
        w.close()
    return CONNECTIONS / took, (after - before) * 1024 / CONNECTIONS, cpu * 1e6 / CONNECTIONS


def main():
    rows = []
    for r in range(ROUNDS):
        for tls in (True, False):
            server = Server(tls)
            try:
                rate, p99, errors = wrk(server)
                connect_rate, per_conn, cpu_per_connect = asyncio.run(hold(server))
                cpu = cpu_secs(server.proc.pid)
                started = time.monotonic()
                handshakes = s_time(f"127.0.0.1:{server.http}", server.ca) if tls else None
                cpu_per_handshake = (cpu_secs(server.proc.pid) - cpu) * 1e6 / (handshakes * (time.monotonic() - started)) if tls else None
                baseline = s_server_rate(server.ca, os.path.join(server.data, "tls", "key.pem")) if tls else None
            finally:
                server.stop()
            row = {"round": r + 1, "mode": "tls" if tls else "plaintext", "polls_per_s": round(rate),
                   "p99": p99, "non_2xx": errors, "mqtt_connects_per_s": round(connect_rate),
                   "mqtt_bytes_per_connection": round(per_conn),
                   "server_cpu_us_per_mqtt_connect": round(cpu_per_connect)}
            if tls:
                row["handshakes_per_s"] = round(handshakes)
                row["server_cpu_us_per_http_handshake"] = round(cpu_per_handshake)
                row["openssl_s_server_handshakes_per_s"] = round(baseline)
            rows.append(row)
            print(json.dumps(row), flush=True)
    for r in range(ROUNDS):
        t, p = rows[2 * r], rows[2 * r + 1]
        print(f"round {r + 1}: polls/s TLS/plaintext {t['polls_per_s'] / p['polls_per_s']:.2f}, "
              f"MQTT connects/s {t['mqtt_connects_per_s'] / p['mqtt_connects_per_s']:.2f}, "
              f"bytes per MQTT connection {t['mqtt_bytes_per_connection']} vs {p['mqtt_bytes_per_connection']}, "
              f"server CPU per MQTT connect {t['server_cpu_us_per_mqtt_connect']} vs "
              f"{p['server_cpu_us_per_mqtt_connect']} µs, handshakes/s {t['handshakes_per_s']} "
              f"({t['server_cpu_us_per_http_handshake']} µs server CPU each) vs openssl s_server "
              f"{t['openssl_s_server_handshakes_per_s']}")


if __name__ == "__main__":
    main()
