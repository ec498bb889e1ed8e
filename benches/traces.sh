#!/usr/bin/env bash
# Traces must never slow a request (SPEC B7, issue 18): the same proxy measured side by side with
# telemetry off and with `otlp_endpoint` pointing at a collector that is down (a closed port, so
# every export fails and every span is dropped and counted), in interleaved rounds against the
# simulator with its limits off. Prints medians of req/s, p99 and CPU per request, and the ratios.
#
# Usage: benches/traces.sh           (release build; PROFILE=debug uses target/debug)
# Env:   ROUNDS=5 DURATION=5 CONNECTIONS=32 PROFILE=release
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-32}
PROFILE=${PROFILE:-release}
ESHOP=1000001

cd "$(dirname "$0")/.."
source benches/lib.sh
BIN=${CARGO_TARGET_DIR:-$PWD/target}/$PROFILE/shoptet-proxy
command -v wrk >/dev/null || apt-get install -y -qq wrk >&2
if [ "$PROFILE" = release ]; then cargo build --release --quiet; else cargo build --quiet; fi

bench_scratch shoptet-traces

start_sim "" "$ESHOP" "1" bench
"$BIN" gen-key >"$TMP/store.key"
echo "bench$ESHOP" >"$TMP/oauth"
# A port nothing listens on: the collector is down.
DEAD=$(free_port)

declare -A URL PID ADMIN
for name in off down; do
    port=$(free_port)
    admin=$(free_port)
    telemetry=""
    [ "$name" = down ] && telemetry="[telemetry]
otlp_endpoint = \"http://127.0.0.1:$DEAD\""
    cat >"$TMP/$name.toml" <<EOF
$(shoptet_section)
[proxy]
listen = "127.0.0.1:$port"
max_in_flight_per_eshop = $CONNECTIONS
max_in_flight = 1024
bucket_pacing = false
[admin]
listen = "127.0.0.1:$admin"
[store]
url = "sqlite://$TMP/$name.db"
key_file = "$TMP/store.key"
[log]
level = "warn"
$telemetry
EOF
    "$BIN" --config "$TMP/$name.toml" eshops import "$ESHOP" --oauth-token-file "$TMP/oauth" >/dev/null
    "$BIN" --config "$TMP/$name.toml" serve >"$TMP/$name.log" 2>&1 &
    PID[$name]=$!
    PIDS+=("$!")
    URL[$name]="http://127.0.0.1:$port/api/eshop"
    ADMIN[$name]=$admin
    wait_http "http://127.0.0.1:$admin/readyz"
done

run() { # name
    local before after out reqs
    before=$(cpu_ticks "${PID[$1]}")
    out=$(wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "X-Shoptet-Eshop-Id: $ESHOP" "${URL[$1]}")
    after=$(cpu_ticks "${PID[$1]}")
    grep -q "Non-2xx" <<<"$out" && echo "warning: $1: $(grep Non-2xx <<<"$out")" >&2
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    echo "$(awk '/^Requests\/sec/ {print $2}' <<<"$out") \
$(awk '$1 == "99%" {print $2}' <<<"$out" | to_ms) \
$(awk -v t=$((after - before)) -v hz="$HZ" -v n="$reqs" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')" \
        >>"$TMP/$1.runs"
}

for name in off down; do
    wrk -t1 -c"$CONNECTIONS" -d1s -H "X-Shoptet-Eshop-Id: $ESHOP" "${URL[$name]}" >/dev/null
done
for r in $(seq 1 "$ROUNDS"); do
    echo "round $r/$ROUNDS" >&2
    run off
    run down
done

printf '%-28s %10s %9s %14s\n' "telemetry ($PROFILE)" "req/s" "p99 ms" "CPU µs/req"
for name in off down; do
    label=$([ "$name" = off ] && echo "off" || echo "on, collector down")
    printf '%-28s %10s %9s %14s\n' "$label" \
        "$(awk '{print $1}' "$TMP/$name.runs" | median)" \
        "$(awk '{print $2}' "$TMP/$name.runs" | median)" \
        "$(awk '{print $3}' "$TMP/$name.runs" | median)"
done
for col in 1 2 3; do
    a=$(awk -v c=$col '{print $c}' "$TMP/off.runs" | median)
    b=$(awk -v c=$col '{print $c}' "$TMP/down.runs" | median)
    echo "ratio down/off column $col: $(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.3f", b / a}')"
done
dropped=$(curl -sf "http://127.0.0.1:${ADMIN[down]}/metrics" | awk '/^shoptet_proxy_trace_spans_dropped_total/ {print $2}')
echo "spans dropped (counted) with the collector down: ${dropped:-0}"
