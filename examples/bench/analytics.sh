#!/usr/bin/env bash
# Telemetry ingestion with analytics off and on, on SQLite and PostgreSQL, as
# docs/BENCHMARKS.md runs it: a fresh release server per run, `telemetry-sim --mode load`
# (DEVICES devices on MQTT, MESSAGES messages of 10 values each: a position and 8 metrics).
#
#   off: --telemetry-rollups false and no alert rules (points and latest values only)
#   rollups: rollups, no rules; rules: rules, no rollups (MODES="off rollups rules on")
#   on:  rollups, and 11 rules judging every point: a geo-fence and a speed limit on the
#        positions, an anomaly detector on m0..m3, a threshold on m4..m7, an ignore
#
#   cargo build --release -p drover --bin drover -p drover-examples --example telemetry-sim
#   examples/bench/analytics.sh [sqlite|postgres]...
#
# Binds 127.0.0.1 only. PostgreSQL: the machine's server (trust auth), database
# drover_bench, dropped and made again per run.
set -euo pipefail
cd "$(dirname "$0")/../.."
devices=${DEVICES:-1000}
messages=${MESSAGES:-100}
rounds=${ROUNDS:-1}
bin=target/release/drover
sim=target/release/examples/telemetry-sim
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

rule() { curl -sf -X POST "http://127.0.0.1:$http/api/v1/alert-rules" -H "Authorization: Bearer $token" \
    -H 'content-type: application/json' -d "$1" >/dev/null; }

run() {
    local db=$1 mode=$2
    data=$(mktemp -d)
    http=$(port)
    mqtt=$(port)
    local url=()
    if [ "$db" = postgres ]; then
        psql -q -h 127.0.0.1 -U postgres -d test -c 'DROP DATABASE IF EXISTS drover_bench' -c 'CREATE DATABASE drover_bench'
        url=(--database-url postgres://postgres@127.0.0.1:5432/drover_bench)
    fi
    local rollups=true
    [ "$mode" = off ] || [ "$mode" = rules ] && rollups=false
    "$bin" serve --data-dir "$data" --http-addr "127.0.0.1:$http" --mqtt-addr "127.0.0.1:$mqtt" \
        --coap-addr "127.0.0.1:$(port)" --coaps-addr 127.0.0.1:0 --plaintext true --enroll-rate-per-sec 0 --telemetry-rollups "$rollups" "${url[@]}" >"$data/log" 2>&1 &
    server=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$http/healthz" >/dev/null && break; sleep 0.2; done
    token=$(cat "$data/admin-token")
    if [ "$mode" = on ] || [ "$mode" = rules ]; then
        rule '{"name": "depot", "kind": "geofence", "shape": {"circle": {"lat": 6.9271, "lon": 79.8612, "radius_m": 5000}}, "speed_limit_kmh": 30}'
        rule '{"name": "speeding", "kind": "speed", "limit_kmh": 120}'
        for m in 0 1 2 3; do rule "{\"name\": \"anomaly-m$m\", \"kind\": \"anomaly\", \"metric\": \"m$m\"}"; done
        for m in 4 5 6 7; do rule "{\"name\": \"high-m$m\", \"kind\": \"threshold\", \"metric\": \"m$m\", \"above\": 100, \"for_secs\": 60}"; done
        rule '{"name": "quiet", "kind": "ignore", "metric": "m3", "applies_to": {"tags": ["lab"]}}'
    fi
    echo "== $db, analytics $mode"
    "$sim" --mode load --devices "$devices" --messages "$messages" --points 10 \
        --server "http://127.0.0.1:$http" --mqtt "127.0.0.1:$mqtt" --admin-token "$token" | grep -E 'points/s|rollups'
    kill "$server"; wait "$server" 2>/dev/null || true
    rm -rf "$data"
}

dbs=("$@")
[ ${#dbs[@]} -eq 0 ] && dbs=(sqlite postgres)
# MODES="off rollups rules on" separates the two costs.
modes=${MODES:-off on}
for _ in $(seq "$rounds"); do
    for db in "${dbs[@]}"; do
        for mode in $modes; do
            run "$db" "$mode"
        done
    done
done
