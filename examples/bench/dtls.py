#!/usr/bin/env python3
"""What DTLS costs LwM2M devices, beside plain CoAP and beside OpenSSL (docs/BENCHMARKS.md).

    examples/bench/dtls.py [BUILD_DIR]     # default target/release

Per round, a fresh server (`--coap-nosec true`, so plain CoAP is there to compare with):

* handshakes: `openssl s_client -dtls1_2 -psk` (a peer DTLS client, PSK-AES128-CCM8, one
  process per handshake) against Drover's DTLS listener, and against `openssl s_server
  -dtls1_2 -psk` as the peer baseline; the server's CPU time per handshake from /proc
  (the client processes dominate the wall clock, so their rate says little);
* registrations: libcoap's `coap-client` registering SESSIONS pre-registered endpoints,
  each with its own key over DTLS (coap-client-openssl), and as many new endpoints over
  plain CoAP (coap-client-notls); the server's CPU time per registration, and its resident
  memory per DTLS session held afterwards (the sessions stay until their silence ends).

Environment: ROUNDS (3), HANDSHAKES (300), SESSIONS (500), PARALLEL (4 client processes).
Binds 127.0.0.1 only; bounded loops everywhere.
"""

import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

build = os.path.realpath(sys.argv[1] if len(sys.argv) > 1 else "target/release")
ROUNDS = int(os.environ.get("ROUNDS", "3"))
HANDSHAKES = int(os.environ.get("HANDSHAKES", "300"))
SESSIONS = int(os.environ.get("SESSIONS", "500"))
PARALLEL = int(os.environ.get("PARALLEL", "4"))
IDENTITY = "Client_identity"  # what openssl s_server expects by default
KEY = "000102030405060708090a0b0c0d0e0f"


def port(kind=socket.SOCK_STREAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cpu_secs(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def run_all(commands):
    """Run the commands, PARALLEL at a time; how many exited well."""
    def one(cmd):
        try:
            return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=30).returncode == 0
        except subprocess.TimeoutExpired:
            return False
    with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
        return sum(pool.map(one, commands))


def measured(pid, commands):
    """(successes, server CPU µs per command, wall seconds)."""
    cpu, start = cpu_secs(pid), time.monotonic()
    ok = run_all(commands)
    return ok, (cpu_secs(pid) - cpu) * 1e6 / len(commands), time.monotonic() - start


def s_client(p, identity):
    return ["openssl", "s_client", "-dtls1_2", "-connect", f"127.0.0.1:{p}", "-psk", KEY, "-psk_identity", identity,
            "-cipher", "PSK-AES128-CCM8", "-quiet", "-no_ign_eof"]


class Server:
    def __init__(self):
        self.data = tempfile.mkdtemp()
        self.http, self.coap, self.coaps = port(), port(socket.SOCK_DGRAM), port(socket.SOCK_DGRAM)
        args = [f"{build}/drover", "serve", "--data-dir", self.data, "--plaintext", "true",
                "--http-addr", f"127.0.0.1:{self.http}", "--mqtt-addr", f"127.0.0.1:{port()}",
                "--coap-addr", f"127.0.0.1:{self.coap}", "--coaps-addr", f"127.0.0.1:{self.coaps}",
                "--coap-nosec", "true"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env={**os.environ, "DROVER_LOG": "warn"})
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.http}/healthz", timeout=1)
                break
            except Exception:
                time.sleep(0.1)
        else:
            raise SystemExit("the server did not come up")
        self.token = open(os.path.join(self.data, "admin-token")).read().strip()

    def api(self, method, path, body, content_type="application/json"):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http}/api/v1/{path}", data=body, method=method,
                                     headers={"Authorization": f"Bearer {self.token}", "Content-Type": content_type})
        return json.load(urllib.request.urlopen(req, timeout=60))

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def endpoint_key(i):
    return f"bench-key-{i:06d}"  # 16 bytes: coap-client's -k takes them as written


def main():
    rows = []
    for r in range(ROUNDS):
        server = Server()
        try:
            # One device whose key openssl s_client presents, and SESSIONS with their own.
            lines = [f"lwm2m,hs-{r},{KEY},{IDENTITY}"]
            lines += [f"lwm2m,urn:dev:dtls:{i},{endpoint_key(i).encode().hex()},urn:dev:dtls:{i}"
                      for i in range(SESSIONS)]
            csv = "device_type,device_id,psk,psk_identity\n" + "\n".join(lines) + "\n"
            server.api("POST", "devices/import", csv.encode(), "text/csv")
            pid = server.proc.pid

            ok, drover_hs, _ = measured(pid, [s_client(server.coaps, IDENTITY)] * HANDSHAKES)
            assert ok == HANDSHAKES, f"{ok} of {HANDSHAKES} handshakes with Drover"
            p = port(socket.SOCK_DGRAM)
            peer = subprocess.Popen(["openssl", "s_server", "-dtls1_2", "-accept", f"127.0.0.1:{p}", "-nocert",
                                     "-psk", KEY, "-cipher", "PSK-AES128-CCM8", "-quiet", "-naccept", "1000000"],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            try:
                ok, peer_hs, _ = measured(peer.pid, [s_client(p, IDENTITY)] * HANDSHAKES)
                assert ok == HANDSHAKES, f"{ok} of {HANDSHAKES} handshakes with openssl s_server"
            finally:
                peer.kill()
                peer.wait()

            register = "rd?lt=3600&b=U&ep="
            before = rss_kib(pid)
            secure = [["coap-client-openssl", "-m", "post", "-u", f"urn:dev:dtls:{i}", "-k", endpoint_key(i),
                       "-t", "40", "-e", "</3/0>", "-B", "10", f"coaps://127.0.0.1:{server.coaps}/{register}"
                       f"urn:dev:dtls:{i}"] for i in range(SESSIONS)]
            ok, secure_reg, secure_wall = measured(pid, secure)
            assert ok == SESSIONS, f"{ok} of {SESSIONS} DTLS registrations"
            time.sleep(1)
            per_session = (rss_kib(pid) - before) * 1024 / SESSIONS
            plain = [["coap-client-notls", "-m", "post", "-t", "40", "-e", "</3/0>", "-B", "10",
                      f"coap://127.0.0.1:{server.coap}/{register}urn:dev:plain:{r}:{i}"] for i in range(SESSIONS)]
            ok, plain_reg, plain_wall = measured(pid, plain)
            assert ok == SESSIONS, f"{ok} of {SESSIONS} plain registrations"
            active = server.api("GET", "devices?type=lwm2m&status=active&limit=1", None)
            rows.append({
                "round": r + 1,
                "handshake_cpu_us": {"drover": round(drover_hs), "openssl_s_server": round(peer_hs),
                                     "ratio": round(drover_hs / peer_hs, 2)},
                "registration_cpu_us": {"dtls": round(secure_reg), "plain": round(plain_reg),
                                        "ratio": round(secure_reg / plain_reg, 2)},
                "registrations_per_s": {"dtls": round(SESSIONS / secure_wall), "plain": round(SESSIONS / plain_wall)},
                "bytes_per_dtls_session": round(per_session),
                "active_sample": len(active.get("items", [])),
            })
            print(json.dumps(rows[-1]), flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
