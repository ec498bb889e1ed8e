#!/usr/bin/env bash
# Where a proxied request's CPU goes (issue 19): the release proxy pinned to CPU 0 under wrk
# (GET /api/eshop, the simulator with its limits off on CPU 1), sampled by `perf record`; prints
# the top symbols by self time -- kernel and user space apart -- and `strace -c`'s syscall counts
# per request.
#
# Usage: benches/profile.sh
# Env:   DURATION=10 CONNECTIONS=32 LOG_LEVEL=warn TOP=25 CALLGRAPH=0 (1: perf record -g, dwarf)
set -euo pipefail

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
LOG_LEVEL=${LOG_LEVEL:-warn}
TOP=${TOP:-25}
CALLGRAPH=${CALLGRAPH:-0}
ESHOP=1000001

cd "$(dirname "$0")/.."
source benches/lib.sh
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/shoptet-proxy
for t in wrk perf strace; do
    command -v "$t" >/dev/null || { echo "$t is required (apt-get install wrk linux-perf strace)" >&2; exit 1; }
done
cargo build --release --quiet
bench_scratch shoptet-profile

start_sim "1" "$ESHOP" "1" prof
"$BIN" gen-key >"$TMP/store.key"
echo "prof$ESHOP" >"$TMP/oauth"
PORT=$(free_port)
ADMIN=$(free_port)
cat >"$TMP/proxy.toml" <<CONF
$(shoptet_section)
[proxy]
listen = "127.0.0.1:$PORT"
max_in_flight_per_eshop = $CONNECTIONS
max_in_flight = 1024
[admin]
listen = "127.0.0.1:$ADMIN"
[store]
url = "sqlite://$TMP/proxy.db"
key_file = "$TMP/store.key"
[log]
level = "$LOG_LEVEL"
CONF
"$BIN" --config "$TMP/proxy.toml" eshops import "$ESHOP" --oauth-token-file "$TMP/oauth" >/dev/null
taskset -c 0 "$BIN" --config "$TMP/proxy.toml" serve >"$TMP/proxy.log" 2>&1 &
PX=$!
PIDS+=("$PX")
wait_http "http://127.0.0.1:$ADMIN/readyz"
URL="http://127.0.0.1:$PORT/api/eshop"
load() { taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$1s" -H "X-Shoptet-Eshop-Id: $ESHOP" "$URL"; }
load 2 >/dev/null

graph=()
[ "$CALLGRAPH" = 1 ] && graph=(--call-graph dwarf,16384)
perf record -q -F 999 "${graph[@]}" -p "$PX" -o "$TMP/perf.data" -- sleep "$DURATION" 2>/dev/null &
PERF=$!
load "$DURATION" >"$TMP/wrk.txt"
wait "$PERF" || true
echo "load: $(awk '/^Requests\/sec/ {print $2}' "$TMP/wrk.txt") req/s, LOG_LEVEL=$LOG_LEVEL, wrk -c$CONNECTIONS"
echo
echo "top symbols by self time (share of the proxy's samples):"
perf report -i "$TMP/perf.data" --no-children -g none --sort dso,sym --percent-limit 0.4 --stdio 2>/dev/null |
    grep -E '^ +[0-9]' | head -n "$TOP" || true
echo
printf 'user space: '
perf report -i "$TMP/perf.data" --no-children -g none --sort dso --stdio 2>/dev/null |
    awk '/^ +[0-9]/ && $2 !~ /kernel/ {sub(/%/,"",$1); u += $1} END {printf "%.1f %% of samples\n", u}'
echo
echo "top user-space symbols (share of the proxy's samples):"
perf report -i "$TMP/perf.data" --no-children -g none --sort dso,sym --stdio 2>/dev/null |
    grep -E '^ +[0-9]' | grep -v kernel | head -n "$TOP" || true
[ -n "${KEEP:-}" ] && cp "$TMP/perf.data" "$KEEP"

# Read and write syscalls per request without a tracer in the way (/proc/PID/io, all threads).
io() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$PX/io"; }
r0=$(io syscr); w0=$(io syscw)
out=$(load 3)
reqs=$(awk '/requests in/ {print $1}' <<<"$out")
echo
echo "read/write syscalls per request, untraced: $(awk -v a="$(($(io syscr) - r0))" -v b="$(($(io syscw) - w0))" -v n="$reqs" 'BEGIN {printf "%.2f / %.2f", a / n, b / n}')"

# Syscalls per request: strace -f slows the process a lot, so only the counts matter.
timeout 5 strace -c -f -p "$PX" -o "$TMP/strace.txt" 2>/dev/null &
ST=$!
sleep 0.5
out=$(load 3)
wait "$ST" 2>/dev/null || true
reqs=$(awk '/requests in/ {print $1}' <<<"$out")
echo
echo "syscalls per request under strace ($reqs requests):"
awk -v n="$reqs" '$NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ && $NF != "total" {printf "  %-16s %.2f\n", $NF, $4 / n}' \
    "$TMP/strace.txt" | sort -k2 -gr | head -12
