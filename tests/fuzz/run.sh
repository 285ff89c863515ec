#!/usr/bin/env bash
# The OpenAPI fuzzer against a live server: schemathesis generates requests from
# /api/v1/openapi.json (every operation, authenticated as admin, after a device has
# enrolled so device paths have something to find) and runs its default checks: no 5xx,
# status codes, content types and bodies as documented, schema-valid requests accepted
# (with the exceptions, and why, in schemathesis.toml).
#
#   tests/fuzz/run.sh DROVER_BINARY [SCHEMATHESIS]
#
# Environment: EXAMPLES (20 per operation), SEED (fixed, so CI runs the same cases; give
# another, or SEED=random, for a longer run by hand). Binds 127.0.0.1 only.
set -euo pipefail
drover=$(realpath "${1:?usage: tests/fuzz/run.sh DROVER_BINARY [SCHEMATHESIS]}")
st=${2:-st}
[[ $st == */* ]] && st=$(realpath "$st")
here=$(cd "$(dirname "$0")" && pwd)
examples=${EXAMPLES:-20}
seed=${SEED:-20261203}
data=$(mktemp -d)
trap 'kill "${server:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$data"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
http=$(port)
token=drv_admin_fuzz_$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')
# No per-address limit on requests before a credential: the fuzzer is one address making
# hundreds of logins, and would otherwise fuzz the limit instead of the login.
DROVER_ADMIN_TOKEN=$token "$drover" serve --data-dir "$data/server" --http-addr "127.0.0.1:$http" \
    --mqtt-addr "127.0.0.1:$(port)" --coap-addr "127.0.0.1:$(port)" --coaps-addr 127.0.0.1:0 --plaintext true \
    --enroll-rate-per-sec 0 >"$data/server.log" 2>&1 &
server=$!
# Python's urllib rather than curl: python3 is there wherever schemathesis is.
get() { python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null; }
for _ in $(seq 150); do
    get "http://127.0.0.1:$http/healthz" && break
    kill -0 "$server" 2>/dev/null || { cat "$data/server.log" >&2; exit 1; }
    sleep 0.2
done
python3 - "http://127.0.0.1:$http/agent/v1/android/enroll" "$here/../../plugins/android/fixtures/enroll.json" <<'PY'
import sys, urllib.request
body = open(sys.argv[2], "rb").read()
urllib.request.urlopen(urllib.request.Request(sys.argv[1], data=body, method="POST"), timeout=10)
PY
seed_arg=(--seed "$seed")
[ "$seed" = random ] && seed_arg=()
# One worker: several threads trip a CPython 3.11 bug in hypothesis' lambda descriptions
# ("AST constructor recursion depth mismatch"), a runtime error of the fuzzer itself.
status=0
(cd "$data" && "$st" --config-file "$here/schemathesis.toml" run "http://127.0.0.1:$http/api/v1/openapi.json" \
    -H "Authorization: Bearer $token" --max-examples "$examples" --workers 1 "${seed_arg[@]}") || status=$?
if [ "$status" -ne 0 ]; then
    echo "--- server log (last 50 lines)" >&2
    tail -50 "$data/server.log" >&2
fi
exit "$status"
