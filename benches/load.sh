#!/usr/bin/env bash
# End-to-end load benchmark (issue 9): the simulator with its limits off, measured three ways in
# interleaved rounds -- direct, through nginx (a static header-injecting reverse proxy) and through
# shoptet-proxy -- then start-up, memory and the scale curve over 1, 1,000 and 100,000 e-shops.
#
# Pinning: the proxy under test (nginx or shoptet-proxy) alone on CPU 0; wrk and the simulator on
# CPU 1. On a 2-core machine the load side caps every target near the direct rate, so the figure
# that separates proxies is CPU time per request: utime+stime of the whole proxy process (all
# threads) over the measured window, divided by the requests wrk completed.
#
# Usage: benches/load.sh            (about 8 minutes with the defaults)
# Targets: direct, nginx, proxy (`log.level = "warn"`: no access line) and proxy_info (the default
# `info`: one access line per request, written to a file as a service's journal would take it).
#
# Env:   ROUNDS=5 DURATION=10 CONNECTIONS=64 ESHOPS=100000 SCALE=1
#        SCALE=0 skips the start-up / memory / scale part.
#        BASELINE=path/to/shoptet-proxy adds that binary as targets base and base_info, measured in
#        the same interleaved rounds (a change's effect, side by side).
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
ESHOPS=${ESHOPS:-100000}
SCALE=${SCALE:-1}
FIRST_ID=1000001
PREFIX=loadbench

cd "$(dirname "$0")/.."
source benches/lib.sh
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release/shoptet-proxy

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need nginx; then
    echo "installing wrk and nginx-light" >&2
    SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
    $SUDO apt-get install -y wrk nginx-light >&2
fi
for t in curl taskset python3; do need "$t" || { echo "$t is required" >&2; exit 1; }; done

echo "building release..." >&2
cargo build --release --quiet
cargo bench --quiet --bench fleet --no-run 2>/dev/null

bench_scratch shoptet-load

# ---------------------------------------------------------------- simulator
start_sim "1" "$FIRST_ID" "$([ "$SCALE" = 1 ] && echo "$ESHOPS" || echo 1)" "$PREFIX"
TOKEN=$(curl -sf -H "Authorization: Bearer $PREFIX$FIRST_ID" \
    "$SIM/action/ApiOAuthServer/getAccessToken" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')

# ---------------------------------------------------------------- nginx
NGX_PORT=$(free_port)
mkdir -p "$TMP/nginx"
cat >"$TMP/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/body;
    proxy_temp_path $TMP/nginx/proxy;
    upstream sim { server 127.0.0.1:$SIM_PORT; keepalive 128; }
    server {
        listen 127.0.0.1:$NGX_PORT;
        location / {
            proxy_pass http://sim;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Shoptet-Access-Token "$TOKEN";
        }
    }
}
EOF
taskset -c 0 nginx -c "$TMP/nginx.conf" -p "$TMP/nginx" -e "$TMP/nginx/error.log" &
NGX_PID=$!
PIDS+=("$NGX_PID")
wait_http "http://127.0.0.1:$NGX_PORT/api/eshop"

# ---------------------------------------------------------------- shoptet-proxy
"$BIN" gen-key >"$TMP/store.key"
echo "bench-admin-token" >"$TMP/admin.token"
write_config() { # name store-file proxy-port admin-port log-level
    cat >"$TMP/$1.toml" <<EOF
$(shoptet_section)
[proxy]
listen = "127.0.0.1:$3"
max_in_flight_per_eshop = $CONNECTIONS
max_in_flight = 1024
[admin]
listen = "127.0.0.1:$4"
token_file = "$TMP/admin.token"
[store]
url = "sqlite://$TMP/$2"
key_file = "$TMP/store.key"
[log]
level = "$5"
EOF
}
echo "$PREFIX$FIRST_ID" >"$TMP/oauth"
# name level binary
PROXIES=("proxy warn $BIN" "proxy_info info $BIN")
[ -n "${BASELINE:-}" ] && PROXIES+=("base warn $BASELINE" "base_info info $BASELINE")
declare -A PX_PORT PX_PID
for p in "${PROXIES[@]}"; do
    read -r name level bin <<<"$p"
    PX_PORT[$name]=$(free_port)
    admin=$(free_port)
    write_config "$name" "$name.db" "${PX_PORT[$name]}" "$admin" "$level"
    "$bin" --config "$TMP/$name.toml" eshops import "$FIRST_ID" --oauth-token-file "$TMP/oauth" >/dev/null
    taskset -c 0 "$bin" --config "$TMP/$name.toml" serve >"$TMP/$name.log" 2>&1 &
    PX_PID[$name]=$!
    PIDS+=("$!")
    wait_http "http://127.0.0.1:$admin/readyz"
done

# ---------------------------------------------------------------- rounds
# run_wrk name pid url [header] [lua]: one measured run; appends "rps p50 p99 cpu_us_per_req".
run_wrk() {
    local name=$1 pid=$2 url=$3 header=${4:-} lua=${5:-} out before after reqs
    local args=(-t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency)
    [ -n "$header" ] && args+=(-H "$header")
    [ -n "$lua" ] && args+=(-s "$lua")
    before=$(cpu_ticks "$pid")
    out=$(taskset -c 1 wrk "${args[@]}" "$url")
    after=$(cpu_ticks "$pid")
    if grep -q "Non-2xx" <<<"$out"; then
        echo "warning: $name: $(grep Non-2xx <<<"$out")" >&2
    fi
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    echo "$(awk '/^Requests\/sec/ {print $2}' <<<"$out") \
$(awk '$1 == "50%" {print $2}' <<<"$out" | to_ms) \
$(awk '$1 == "99%" {print $2}' <<<"$out" | to_ms) \
$(awk -v t=$((after - before)) -v hz="$HZ" -v n="$reqs" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')" \
        >>"$TMP/$name.runs"
}

TARGETS=(direct nginx)
declare -A URL=([direct]="$SIM/api/eshop" [nginx]="http://127.0.0.1:$NGX_PORT/api/eshop")
declare -A HDR=([direct]="Shoptet-Access-Token: $TOKEN" [nginx]="")
declare -A PID=([direct]=$SIM_PID [nginx]=$NGX_PID)
for p in "${PROXIES[@]}"; do
    read -r name _ <<<"$p"
    TARGETS+=("$name")
    URL[$name]="http://127.0.0.1:${PX_PORT[$name]}/api/eshop"
    HDR[$name]="X-Shoptet-Eshop-Id: $FIRST_ID"
    PID[$name]=${PX_PID[$name]}
done

echo "warming up..." >&2
for t in "${TARGETS[@]}"; do
    warm=(-t1 -c"$CONNECTIONS" -d2s)
    [ -n "${HDR[$t]}" ] && warm+=(-H "${HDR[$t]}")
    taskset -c 1 wrk "${warm[@]}" "${URL[$t]}" >/dev/null
done
for r in $(seq 1 "$ROUNDS"); do
    echo "round $r/$ROUNDS" >&2
    for t in "${TARGETS[@]}"; do
        run_wrk "$t" "${PID[$t]}" "${URL[$t]}" "${HDR[$t]}"
    done
done

col() { awk -v c="$1" '{print $c}' "$TMP/$2.runs" | median; }
echo
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r)"
echo "command: ROUNDS=$ROUNDS DURATION=$DURATION CONNECTIONS=$CONNECTIONS benches/load.sh"
echo "load: wrk -t1 -c$CONNECTIONS, GET /api/eshop, ${DURATION}s x $ROUNDS interleaved rounds; medians"
echo "pinning: proxy under test on CPU 0; wrk + simulator on CPU 1"
echo
printf '%-10s %10s %9s %9s %16s\n' target req/s p50_ms p99_ms cpu_us/req
for t in "${TARGETS[@]}"; do
    printf '%-10s %10.0f %9.3f %9.3f %16.2f\n' "$t" "$(col 1 "$t")" "$(col 2 "$t")" "$(col 3 "$t")" "$(col 4 "$t")"
done
echo "(direct: cpu_us/req is the simulator's)"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}'; }
echo
for t in "${TARGETS[@]:2}"; do
    echo "$t/nginx: req/s $(ratio "$(col 1 $t)" "$(col 1 nginx)")" \
        " p99 $(ratio "$(col 3 $t)" "$(col 3 nginx)")" \
        " cpu/req $(ratio "$(col 4 $t)" "$(col 4 nginx)")"
done
echo "shoptet-proxy/direct: req/s $(ratio "$(col 1 proxy)" "$(col 1 direct)")" \
    " p99 $(ratio "$(col 3 proxy)" "$(col 3 direct)")"
echo "proxy RSS after the rounds: $(awk '/VmRSS/ {print $2, $3}' "/proc/${PX_PID[proxy]}/status")"

[ "$SCALE" = 1 ] || exit 0

# ---------------------------------------------------------------- start-up, memory, scale
kill "$NGX_PID" "${PX_PID[@]}"
wait "$NGX_PID" "${PX_PID[@]}" 2>/dev/null || true
echo
echo "writing $ESHOPS installations into a fresh SQLite store..." >&2
cargo bench --quiet --bench fleet -- "$TMP/fleet.db" "$TMP/store.key" "$FIRST_ID" "$ESHOPS" "$PREFIX"
FL_PORT=$(free_port)
FL_ADMIN=$(free_port)
write_config fleet fleet.db "$FL_PORT" "$FL_ADMIN" warn
start_ns=$(date +%s%N)
taskset -c 0 "$BIN" --config "$TMP/fleet.toml" serve >"$TMP/fleet.log" 2>&1 &
FL_PID=$!
PIDS+=("$FL_PID")
until curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$FL_ADMIN/readyz"; do
    kill -0 "$FL_PID" || { cat "$TMP/fleet.log" >&2; exit 1; }
done
ready_ms=$((($(date +%s%N) - start_ns) / 1000000))
rss_start=$(awk '/VmRSS/ {print $2}' "/proc/$FL_PID/status")

# Lua: `walk` visits every e-shop once, in order, then stops; `pick` chooses one of N at random.
cat >"$TMP/walk.lua" <<EOF
local i, n, done = -1, $ESHOPS, 0
request = function()
    i = i + 1
    return wrk.format("GET", "/eshops/" .. ($FIRST_ID + i % n) .. "/api/eshop")
end
response = function(status)
    if status ~= 200 then error("status " .. status) end
    done = done + 1
    if done == n then io.open("$TMP/walked", "w"):close() end
end
EOF
pick_lua() {
    cat >"$TMP/pick$1.lua" <<EOF
math.randomseed(42)
request = function()
    return wrk.format("GET", "/eshops/" .. ($FIRST_ID + math.random(0, $1 - 1)) .. "/api/eshop")
end
EOF
    echo "$TMP/pick$1.lua"
}
echo "first pass over all $ESHOPS e-shops (tokens loaded lazily and minted)..." >&2
first_s=$(date +%s%N)
# wrk cannot stop after N requests by itself (a stopped thread still waits out -d): the script
# stops it by its pid once the Lua script marks the walk complete.
taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d600s -s "$TMP/walk.lua" "http://127.0.0.1:$FL_PORT" >"$TMP/walk.out" &
WALK_PID=$!
until [ -e "$TMP/walked" ]; do
    kill -0 "$WALK_PID" 2>/dev/null || { echo "the first pass failed" >&2; exit 1; }
    sleep 0.1
done
first_ms=$((($(date +%s%N) - first_s) / 1000000))
kill "$WALK_PID"
wait "$WALK_PID" 2>/dev/null || true

for n in 1 1000 "$ESHOPS"; do
    lua=$(pick_lua "$n")
    for r in $(seq 1 "$ROUNDS"); do
        run_wrk "scale$n" "$FL_PID" "http://127.0.0.1:$FL_PORT" "" "$lua"
    done
done
rss_end=$(awk '/VmRSS/ {print $2}' "/proc/$FL_PID/status")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$FL_PID/status")
budget=$((20 * 1024 + ESHOPS))

echo "start-up with $ESHOPS installations in the store: ready (/readyz 200) after ${ready_ms} ms" \
    "(includes curl polling; RSS then $((rss_start / 1024)) MiB)"
echo "first pass over all $ESHOPS e-shops (lazy load + token mint each): ${first_ms} ms"
echo "RSS after traffic over all $ESHOPS e-shops: $((rss_end / 1024)) MiB (peak $((hwm / 1024)) MiB);" \
    "target 20 MiB + 1 KiB x $ESHOPS = $((budget / 1024)) MiB"
echo
echo "scale curve (same proxy, medians of $ROUNDS x ${DURATION}s, e-shop chosen at random per request):"
printf '%-9s %10s %9s %9s %16s\n' e-shops req/s p50_ms p99_ms cpu_us/req
for n in 1 1000 "$ESHOPS"; do
    printf '%-9s %10.0f %9.3f %9.3f %16.2f\n' "$n" "$(col 1 "scale$n")" "$(col 2 "scale$n")" \
        "$(col 3 "scale$n")" "$(col 4 "scale$n")"
done
