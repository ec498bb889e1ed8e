#!/usr/bin/env bash
# The test command (README): installs what the tests need when it is missing, starts a throwaway
# PostgreSQL, runs every test (unit, integration, CLI), and stops PostgreSQL again.
#
#   tests/run.sh                 # everything
#   tests/run.sh --test proxy    # extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || need+=(postgresql)
command -v promtool >/dev/null || need+=(prometheus)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v php >/dev/null || need+=(php-cli)
command -v node >/dev/null || need+=(nodejs)
command -v python3 >/dev/null || need+=(python3 python3-pip)
command -v haproxy >/dev/null || need+=(haproxy)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "tests/run.sh: installing ${need[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    else
        echo "tests/run.sh: please install: ${need[*]} (sudo apt-get install ${need[*]})" >&2
        exit 1
    fi
fi

# The Python example addon uses requests.
python3 -c 'import requests' 2>/dev/null || python3 -m pip install --quiet requests

eval "$(tests/pg.sh start)"
trap 'tests/pg.sh stop' EXIT
# Nothing may silently skip here: tests that need PostgreSQL, promtool, systemd-analyze, HAProxy,
# Chromium or the examples' runtimes fail without them.
export SHOPTET_PROXY_REQUIRE_PG=1
export SHOPTET_PROXY_REQUIRE_PROMTOOL=1
export SHOPTET_PROXY_REQUIRE_SYSTEMD=1
export SHOPTET_PROXY_REQUIRE_EXAMPLES=1
export SHOPTET_PROXY_REQUIRE_HAPROXY=1
export SHOPTET_PROXY_REQUIRE_CHROMIUM=1
cargo test "$@"
