#!/usr/bin/env bash
# Runs one example addon end to end against `shoptet-proxy demo` and checks what it printed.
#
#   examples/run.sh php|python|node
#
# The binary is $SHOPTET_PROXY_BIN, or built with `cargo build`. Every port is picked free on
# loopback, so this runs beside a `cargo run -- demo` on the default ports. Exit status: 0 passed;
# 1 failed (both logs printed); 2 usage; 77 skipped, the language's runtime is missing.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
lang=${1:-}
# The addon's command, and a command that fails when its runtime (or library) is missing.
case $lang in
    php) addon=(php "$here/php/addon.php"); runtime="php -r 'exit(0);'" ;;
    python) addon=(python3 "$here/python/addon.py"); runtime="python3 -c 'import requests'" ;;
    node)
        addon=(node "$here/node/addon.mjs")
        runtime="node -e 'process.exit(typeof fetch === \"function\" ? 0 : 1)'"
        ;;
    *) echo "usage: $0 php|python|node" >&2; exit 2 ;;
esac
# python3 also picks the free ports below.
for check in "$runtime" "python3 -c pass"; do
    if ! bash -c "$check" >/dev/null 2>&1; then
        echo "examples/run.sh: skipped $lang: \`$check\` failed (runtime or library missing)" >&2
        exit 77
    fi
done

if [ -n "${SHOPTET_PROXY_BIN:-}" ]; then
    bin=$SHOPTET_PROXY_BIN
else
    (cd "$here/.." && cargo build --quiet)
    bin=${CARGO_TARGET_DIR:-$here/../target}/debug/shoptet-proxy
fi

work=$(mktemp -d)
addon_pid= demo_pid=
cleanup() {
    for pid in $addon_pid $demo_pid; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

fail() {
    echo "examples/run.sh $lang: FAILED: $*" >&2
    echo "--- addon output ($lang) ---" >&2; cat "$work/addon.log" >&2 || true
    echo "--- shoptet-proxy demo output ---" >&2; cat "$work/demo.log" >&2 || true
    exit 1
}

# Four free loopback ports (the OS picks them; all held until all are known, so they differ).
read -r addon_port proxy_port admin_port public_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')

touch "$work/addon.log" "$work/demo.log"
# The key that signs every delivery: the proxy's `[addon] signing_key_file` and the addon's.
python3 -c 'import secrets; print(secrets.token_hex(16))' >"$work/signing-key"
PROXY_URL=http://127.0.0.1:$proxy_port PUBLIC_URL=http://127.0.0.1:$public_port \
    ADDON_PORT=$addon_port SIGNING_KEY_FILE=$work/signing-key \
    timeout 60 "${addon[@]}" >"$work/addon.log" 2>&1 &
addon_pid=$!

# The demo installs the e-shop at once, so the addon listens first (or the event waits a retry).
for _ in $(seq 100); do
    grep -q '^listening on ' "$work/addon.log" && break
    kill -0 "$addon_pid" 2>/dev/null || fail "the addon exited before listening"
    sleep 0.1
done
grep -q '^listening on ' "$work/addon.log" || fail "the addon did not listen within 10 s"

# What a forger sends straight to the addon: unsigned, then signed with another key. Both must be
# refused (401) before the real deliveries come.
forged=$(python3 - "http://127.0.0.1:$addon_port/webhooks" <<'PY'
import hashlib, hmac, sys, urllib.error, urllib.request
body = b'{"eshopId":222651,"event":"order:create","eventCreated":"2019-01-08T15:13:39+0100","eventInstance":"forged"}'
codes = []
for sig in (None, hmac.new(b"not-the-key", body, hashlib.sha1).hexdigest()):
    req = urllib.request.Request(sys.argv[1], data=body, method="POST")
    req.add_header("Content-Type", "application/json")
    if sig:
        req.add_header("Shoptet-Webhook-Signature", sig)
    try:
        codes.append(str(urllib.request.urlopen(req, timeout=10).status))
    except urllib.error.HTTPError as e:
        codes.append(str(e.code))
print(" ".join(codes))
PY
) || fail "could not send the forged deliveries"
[ "$forged" = "401 401" ] || fail "forged deliveries answered '$forged', not '401 401'"

# From the work directory and with only these SHOPTET_PROXY_* variables, so no configuration of
# the caller's applies (the binary refuses unknown ones such as SHOPTET_PROXY_BIN).
(
    cd "$work"
    for name in $(compgen -e | grep '^SHOPTET_PROXY_'); do unset "$name"; done
    export SHOPTET_PROXY_PROXY__LISTEN=127.0.0.1:$proxy_port
    export SHOPTET_PROXY_ADMIN__LISTEN=127.0.0.1:$admin_port
    export SHOPTET_PROXY_PUBLIC__LISTEN=127.0.0.1:$public_port
    export SHOPTET_PROXY_ADDON__EVENTS_URL=http://127.0.0.1:$addon_port/events
    export SHOPTET_PROXY_ADDON__WEBHOOKS_URL=http://127.0.0.1:$addon_port/webhooks
    export SHOPTET_PROXY_ADDON__SETTINGS_URL=http://127.0.0.1:$addon_port/settings
    export SHOPTET_PROXY_ADDON__SIGNING_KEY_FILE=$work/signing-key
    exec "$bin" demo
) >"$work/demo.log" 2>&1 &
demo_pid=$!

# The walkthrough ends with the webhook (the addon's timeout: 60 s); the demo must stay up.
until grep -q '^webhook order:create ' "$work/addon.log"; do
    kill -0 "$addon_pid" 2>/dev/null || fail "the addon exited before the webhook"
    kill -0 "$demo_pid" 2>/dev/null || fail "shoptet-proxy demo exited early"
    sleep 0.1
done

# The settings page, as the e-shop admin's browser sees it: the simulated administration frames
# the proxy's /settings link, which signs the admin in and lands on the addon's page; a relative
# link and the form stay inside the session.
admin_url=$(sed -n 's/^  settings page: *\(http[^ ]*\).*/\1/p' "$work/demo.log")
[ -n "$admin_url" ] || fail "the demo printed no settings page URL"
python3 - "$admin_url" >"$work/browser.log" 2>&1 <<'EOF' || { cat "$work/browser.log" >&2; fail "settings page"; }
import html, re, sys, urllib.parse, urllib.request
admin = urllib.request.urlopen(sys.argv[1]).read().decode()
src = html.unescape(re.search(r'<iframe[^>]* src="([^"]*)"', admin).group(1))
first = urllib.request.urlopen(src)  # 303 to /settings/s/<session>/, followed
base, page = first.geturl(), first.read().decode()
assert "/settings/s/" in base, base
assert "Hello, Owner 222651!" in page and "<b>222651</b>" in page, page
about = urllib.request.urlopen(urllib.parse.urljoin(base, "about"))
assert about.geturl().startswith(base), about.geturl()
saved = urllib.request.urlopen(urllib.parse.urljoin(base, "save"), data=b"greeting=Ahoj+sv%C4%9Bte")
after = saved.read().decode()
assert saved.geturl() == base, saved.geturl()
assert "Ahoj světe" in after, after
EOF
kill "$addon_pid" 2>/dev/null || true
wait "$addon_pid" 2>/dev/null || true
addon_pid=

code=$(sed -n 's/^order created \([0-9][0-9]*\)$/\1/p' "$work/addon.log")
[ -n "$code" ] || fail "no 'order created CODE' line"
for line in "refused unsigned delivery" "refused bad signature" \
    "installed 222651" "orders 5" "webhook registered" "webhook order:create $code" \
    "settings shown 222651 Owner 222651" "settings saved Ahoj světe"; do
    grep -qxF "$line" "$work/addon.log" || fail "missing line '$line'"
done
cat "$work/addon.log"
echo "examples/run.sh $lang: passed"
