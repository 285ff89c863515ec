#!/usr/bin/env bash
# The delivery benchmarks of docs/BENCHMARKS.md, as they are run: a fresh release server
# and the fleet simulator on this machine, with the server's CPU over the measured phase
# read from /proc. Build first:
#
#   cargo build --release -p drover -p drover-examples --bins --examples
#
# Usage:
#   examples/bench/delivery.sh MODE [BUILD ...]
#
#   MODE   poll      10,000 devices, one operation each, 64 polls in flight (SQLite)
#          poll-pg   the same on PostgreSQL (a fresh database `drover_bench` each run)
#          poll-pg2  the same with two replicas on that database (HTTP 18080 and 18081,
#                    one shared admin token and secret key); the simulator's connections
#                    alternate between them, and the server CPU is both replicas'
#          push      10,000 devices on the embedded broker, one operation each at once
#          push-ext  the same through the external mosquitto on 127.0.0.1:1883
#          floor     the HTTP floor: `http-floor` answering the same requests
#   BUILD  a directory holding `drover`, `fleet` and `http-floor` (default: target/release
#          and its examples). Give two or more to run them in turn, round after round: this
#          machine's speed moves by more than most changes do from one minute to the next,
#          so builds are compared only within a round.
#
# Environment: DEVICES (10000; floor 200000), ROUNDS (1), CONCURRENCY (64), WEBHOOK (1: a
# webhook subscribed to every operation event, delivered to http-floor on 18090, which
# answers 204; the run then reports how far delivery got),
# PG_URL (postgres://postgres@127.0.0.1:5432). Everything binds to 127.0.0.1; the ports
# are fixed (HTTP 18080, MQTT 18830, CoAP 15683, floor 18090), so run one at a time.
set -euo pipefail
usage="usage: examples/bench/delivery.sh poll|poll-pg|poll-pg2|push|push-ext|floor [BUILD ...]"
mode=${1:?$usage}
shift
case $mode in poll | poll-pg | poll-pg2 | push | push-ext | floor) ;; *)
    echo "$usage" >&2
    exit 2
    ;;
esac
# BUILD directories are taken relative to where the script was started.
builds=()
for b in "$@"; do builds+=("$(realpath "$b")"); done
cd "$(dirname "$0")/../.."
if [ ${#builds[@]} -eq 0 ]; then
    # The current release build, copied so that a rebuild during the run cannot change it.
    for exe in target/release/drover target/release/examples/fleet target/release/examples/http-floor; do
        [ -x "$exe" ] || { echo "$exe is missing: cargo build --release -p drover -p drover-examples --bins --examples" >&2; exit 2; }
    done
    mkdir -p target/bench/current
    cp target/release/drover target/release/examples/fleet target/release/examples/http-floor target/bench/current/
    builds=("$PWD/target/bench/current")
fi
for bin in "${builds[@]}"; do
    for exe in drover fleet http-floor; do
        [ -x "$bin/$exe" ] || { echo "$bin/$exe is missing: a BUILD directory holds drover, fleet and http-floor" >&2; exit 2; }
    done
done
rounds=${ROUNDS:-1}
concurrency=${CONCURRENCY:-64}
pg_url=${PG_URL:-postgres://postgres@127.0.0.1:5432}
data=$(mktemp -d)
log=$data/fleet.log
trap 'kill "${server:-}" "${second:-}" "${receiver:-}" 2>/dev/null || true; rm -rf "$data"' EXIT
# 10,000 and more MQTT connections (and the 19,000-connection run) need the descriptors.
ulimit -n 20000 2>/dev/null || echo "warning: cannot raise the open-file limit to 20000 ($(ulimit -n))" >&2

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

wait_for() { # pid file pattern: bounded wait for the simulator to reach its measured phase
    for _ in $(seq 1 6000); do
        grep -q "$3" "$2" 2>/dev/null && return 0
        kill -0 "$1" 2>/dev/null || break
        sleep 0.02
    done
    echo "the simulator never printed '$3':" >&2
    cat "$2" "$data/server.log" >&2
    return 1
}

one_run() { # build
    local bin=$1 devices args=() server_args=() hz
    hz=$(getconf CLK_TCK)
    rm -rf "$data/server"
    mkdir -p "$data/server"
    if [ "$mode" = floor ]; then
        devices=${DEVICES:-200000}
        "$bin/http-floor" --addr 127.0.0.1:18090 >"$data/server.log" 2>&1 &
        server=$!
        sleep 0.5
        "$bin/fleet" --mode floor --server http://127.0.0.1:18090 --devices "$devices" \
            --concurrency "$concurrency" >"$log" 2>&1
        kill "$server"
        wait "$server" 2>/dev/null || true
        grep -E "polls/s|poll latency|simulator CPU" "$log"
        return
    fi
    devices=${DEVICES:-10000}
    case $mode in
    poll | poll-pg | poll-pg2) args=(--mode poll --concurrency "$concurrency") ;;
    push)
        args=(--mqtt 127.0.0.1:18830 --mode push --timeout-secs 400)
        # The default cap (12,000) is below the 19,000-connection run.
        server_args=(--mqtt-max-connections $((devices + 100)))
        ;;
    push-ext)
        args=(--mqtt 127.0.0.1:1883 --mode push --announce-online --timeout-secs 400)
        server_args=(--broker mqtt://127.0.0.1:1883)
        ;;
    esac
    if [ "${WEBHOOK:-0}" = 1 ]; then
        "$bin/http-floor" --addr 127.0.0.1:18090 >"$data/receiver.log" 2>&1 &
        receiver=$!
        server_args+=(--webhook-allow-private true)
    fi
    if [ "$mode" = poll-pg ] || [ "$mode" = poll-pg2 ]; then
        psql -q "$pg_url/test" -c "DROP DATABASE IF EXISTS drover_bench" -c "CREATE DATABASE drover_bench" >/dev/null
        server_args=(--database-url "$pg_url/drover_bench")
    fi
    if [ "$mode" = poll-pg2 ]; then
        # Replicas share the admin token and the key that seals secrets (docs/deploy.md).
        head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$data/admin-token"
        server_args+=(--secret-key-file "$data/secret.key")
        export DROVER_ADMIN_TOKEN
        DROVER_ADMIN_TOKEN=$(cat "$data/admin-token")
    fi
    "$bin/drover" serve --data-dir "$data/server" --http-addr 127.0.0.1:18080 --mqtt-addr 127.0.0.1:18830 \
        --coap-addr 127.0.0.1:15683 --coaps-addr 127.0.0.1:0 --plaintext true --enroll-rate-per-sec 0 "${server_args[@]}" >"$data/server.log" 2>&1 &
    server=$!
    for _ in $(seq 1 300); do
        curl -sf --max-time 1 http://127.0.0.1:18080/healthz >/dev/null && break
        kill -0 "$server" 2>/dev/null || { cat "$data/server.log" >&2; echo "the server did not start" >&2; return 1; }
        sleep 0.1
    done
    # The embedded broker's memory per connection (docs/BENCHMARKS.md), read by the simulator.
    [ "$mode" != push ] || args+=(--server-pid "$server")
    second=
    if [ "$mode" = poll-pg2 ]; then
        rm -rf "$data/second"
        mkdir -p "$data/second"
        "$bin/drover" serve --data-dir "$data/second" --http-addr 127.0.0.1:18081 --mqtt-addr 127.0.0.1:18831 \
            --coap-addr 127.0.0.1:15684 --coaps-addr 127.0.0.1:0 --plaintext true "${server_args[@]}" \
            >"$data/second.log" 2>&1 &
        second=$!
        for _ in $(seq 1 300); do
            curl -sf --max-time 1 http://127.0.0.1:18081/healthz >/dev/null && break
            kill -0 "$second" 2>/dev/null || { cat "$data/second.log" >&2; echo "the second replica did not start" >&2; return 1; }
            sleep 0.1
        done
        args+=(--also-server http://127.0.0.1:18081)
    fi
    if [ "${WEBHOOK:-0}" = 1 ]; then
        curl -sf -X POST http://127.0.0.1:18080/api/v1/webhooks -H "Authorization: Bearer $(cat "$data/server/admin-token")" \
            -d '{"name":"bench","url":"http://127.0.0.1:18090/hook","types":["operation."]}' >/dev/null
    fi
    # The last run's log must be gone before `wait_for` looks: the simulator's shell
    # truncates it only once it runs, and a stale "stored in" would start the CPU count
    # during enrollment.
    rm -f "$log"
    "$bin/fleet" --server http://127.0.0.1:18080 --data-dir "$data/server" --devices "$devices" "${args[@]}" \
        >"$log" 2>&1 &
    local fleet=$! t0 t1
    # Poll: from the end of setup (operations stored) to the simulator's exit. Push: from
    # the devices connected; that phase also holds the bare-broker passes.
    case $mode in poll*) wait_for "$fleet" "$log" "stored in" ;; *) wait_for "$fleet" "$log" "connected and subscribed" ;; esac
    t0=$(ticks "$server")
    [ -z "$second" ] || t0=$((t0 + $(ticks "$second")))
    wait "$fleet" || { cat "$log" >&2; echo "the simulator failed" >&2; return 1; }
    t1=$(ticks "$server")
    [ -z "$second" ] || t1=$((t1 + $(ticks "$second")))
    if [ "${WEBHOOK:-0}" = 1 ]; then
        local auth="Authorization: Bearer $(cat "$data/server/admin-token")"
        curl -sf http://127.0.0.1:18080/api/v1/webhooks/bench -H "$auth" |
            python3 -c 'import json,sys; w=json.load(sys.stdin); print("webhook: delivered up to event %s, failures %s" % (w["cursor"], w["failures"]))'
        kill "$receiver" 2>/dev/null || true
    fi
    kill "$server" $second
    wait "$server" $second 2>/dev/null || true
    grep -E "polls/s|ops/s|poll latency|added → at device|round trips/s|msg/s|simulator CPU|server memory" "$log"
    case $mode in
    poll*) echo "server CPU: $(((t1 - t0) * 1000000 / hz / (2 * devices))) µs per poll" ;;
    *) echo "server CPU over the push phase: $(((t1 - t0) * 1000 / hz)) ms" ;;
    esac
}

for round in $(seq 1 "$rounds"); do
    for bin in "${builds[@]}"; do
        echo "== round $round: $bin ($mode)"
        one_run "$bin"
    done
done
