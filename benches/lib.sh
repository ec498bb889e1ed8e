# Shell helpers shared by the benchmark scripts (sourced, not run): a scratch directory whose
# processes are killed on exit, ports, readiness, CPU accounting and medians.

# Sets TMP to a fresh directory named after $1 and arranges that the processes whose pids are
# pushed to PIDS die, and TMP goes, when the script exits.
bench_scratch() {
    TMP=$(mktemp -d "/tmp/$1.XXXXXX")
    PIDS=()
    trap bench_cleanup EXIT
}
bench_cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_http() { # url [tries]
    for _ in $(seq 1 "${2:-500}"); do
        curl -sf -o /dev/null --max-time 1 "$1" && return 0
        sleep 0.02
    done
    echo "timed out waiting for $1" >&2
    return 1
}

# utime + stime in clock ticks of a process and its child processes (nginx master + worker).
cpu_ticks() {
    local total=0 p
    for p in "$@" $(pgrep -P "$1" || true); do
        # Fields 14 and 15 counted after the ")" that ends the command name.
        total=$((total + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
    done
    echo "$total"
}
HZ=$(getconf CLK_TCK)

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# wrk's latency figures (123.45us, 1.20ms, 1.01s) to milliseconds.
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; print v}'; }

# Starts the simulator with its limits off -- pinned to CPU list $1 with taskset, unless "" --
# and installs $3 e-shops from id $2 whose OAuth tokens are "$4<id>". Sets SIM, SIM_PORT, SIM_PID.
start_sim() { # cpus first-id count token-prefix
    SIM_PORT=$(free_port)
    SIM=http://127.0.0.1:$SIM_PORT
    ${1:+taskset -c "$1"} "$BIN" sim --listen "127.0.0.1:$SIM_PORT" --no-limits --token-cap 0 \
        --token-lifetime 24h >"$TMP/sim.log" 2>&1 &
    SIM_PID=$!
    PIDS+=("$SIM_PID")
    wait_http "$SIM/sim/config"
    curl -sf -X POST "$SIM/sim/eshops/bulk" -H 'content-type: application/json' \
        -d "{\"from\":$2,\"count\":$3,\"oauthTokenPrefix\":\"$4\"}" >/dev/null
}

# The [shoptet] section of a benched proxy: the simulator's API and OAuth server.
shoptet_section() {
    printf '[shoptet]\napi_url = "%s"\npartner_url = "%s"\nclient_id = "sim-client"\nclient_secret = "sim-secret"\n' \
        "$SIM" "$SIM"
}
