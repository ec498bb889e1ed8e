#!/usr/bin/env bash
# Cluster benchmark (issue 17): three `shoptet-proxy serve` replicas on one throwaway PostgreSQL
# behind HAProxy running systemd/haproxy.cfg, in front of the simulator -- the cluster
# tests/cluster_haproxy.rs starts -- built in release mode and measured:
#
#   cluster throughput: requests/s over 30 e-shops (two clients each, the simulator's bucket off),
#                       each replica's share, getAccessToken calls, upstream 429s
#   cluster drain:      30 clients on one e-shop with the bucket on, the rate over the window as a
#                       share of the drain rate (target >= 90 %, with 0 bucket 429s)
#   KILL, TERM:         a replica killed or drained under load over 6 e-shops (GETs answered, POSTs,
#                       HAProxy's retries and redispatches)
#
# Usage: benches/cluster.sh          (about 2 minutes after the build)
# Env:   SECS=30   the measured window of the throughput and drain runs
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${SECS:-30}
command -v haproxy >/dev/null || { echo "haproxy is required (apt-get install haproxy)" >&2; exit 1; }

STATE=$(mktemp -u "${TMPDIR:-/tmp}/shoptet-cluster-bench-pg.XXXXXX")
export SHOPTET_PROXY_PG_STATE=$STATE
eval "$(tests/pg.sh start)"
trap 'tests/pg.sh stop' EXIT

export SHOPTET_PROXY_REQUIRE_PG=1 SHOPTET_PROXY_REQUIRE_HAPROXY=1
export SHOPTET_PROXY_CLUSTER_SECS=$SECS
# One scenario at a time: the machine's cores are the load generator's too.
cargo test --release --quiet --test cluster_haproxy -- --include-ignored --nocapture \
    --test-threads 1 2>&1 | grep -oE '(cluster (throughput|drain)|KILL|TERM|error)[: ].*|test result.*'
