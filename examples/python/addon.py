"""A minimal Shoptet addon behind shoptet-proxy, in Python with `requests`.

It never handles OAuth or access tokens: the proxy holds them and adds them to every call. On the
proxy's "installed" event it lists orders, registers an `order:create` webhook, creates an order,
and waits for that order's webhook, printing one line per step.

Its settings page (/settings/..., served to the e-shop admin through the proxy's /settings) greets
the admin and saves one setting. The proxy has verified who the admin is and says so in
X-Shoptet-* headers; the page uses only those and relative links (no cookie, no token).

Every delivery from the proxy is signed with the key in SIGNING_KEY_FILE (the same file as the
proxy's `[addon] signing_key_file`): `Shoptet-Webhook-Signature` is the lowercase hex HMAC-SHA1 of
the body, Shoptet's own scheme. Anything unsigned or signed otherwise is refused with 401.

    pip install requests
    PROXY_URL=http://127.0.0.1:8080 PUBLIC_URL=http://127.0.0.1:8081 ADDON_PORT=8000 \
        SIGNING_KEY_FILE=signing-key python3 addon.py
"""

import hashlib
import hmac
import json
import os
import queue
import html
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

# Where the proxy takes API calls, and where Shoptet reaches the proxy (for webhook URLs).
PROXY_URL = os.environ.get("PROXY_URL", "http://127.0.0.1:8080")
PUBLIC_URL = os.environ.get("PUBLIC_URL", "http://127.0.0.1:8081")
ADDON_PORT = int(os.environ.get("ADDON_PORT", "8000"))


def read_signing_key():
    """The key's text without its trailing newline, as the proxy reads `signing_key_file`."""
    with open(os.environ["SIGNING_KEY_FILE"], encoding="utf-8") as f:
        return f.read().rstrip("\r\n").encode()


SIGNING_KEY = read_signing_key()


def signed(body, signature):
    """Shoptet's check (its SDKs compare in constant time): HMAC-SHA1 of the raw body, hex."""
    expected = hmac.new(SIGNING_KEY, body, hashlib.sha1).hexdigest()
    return signature is not None and hmac.compare_digest(expected, signature.strip().lower())


def shoptet(method, eshop_id, path, body=None, params=None):
    """Calls the Shoptet API of one e-shop through the proxy and returns the envelope's `data`.

    Base-URL style: everything under /eshops/<id>/api goes to that e-shop's API. Errors, the
    proxy's own (`proxy-...`) included, come in Shoptet's envelope with an `errorCode`.
    """
    url = f"{PROXY_URL}/eshops/{eshop_id}/api{path}"
    response = requests.request(method, url, json=body, params=params, timeout=30)
    if not response.ok:
        raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
    return response.json()["data"]


def on_installed(eshop_id):
    """The first calls an addon makes for a new e-shop; returns the code of the order it creates."""
    orders = shoptet("GET", eshop_id, "/orders", params={"itemsPerPage": 5})["orders"]
    print(f"orders {len(orders)}")

    # Shoptet sends webhooks to the proxy's public listener; the proxy checks their signature and
    # forwards them to this addon's /webhooks.
    hook = {"event": "order:create", "url": f"{PUBLIC_URL}/webhooks"}
    shoptet("POST", eshop_id, "/webhooks", {"data": [hook]})
    print("webhook registered")

    # A real e-shop wants more fields (see Shoptet's API docs); the simulator takes an email.
    order = shoptet("POST", eshop_id, "/orders", {"data": {"email": "buyer@example.com"}})["order"]
    print(f"order created {order['code']}")
    return order["code"]


# One setting per e-shop; a real addon keeps it in its database.
GREETINGS = {}


def settings_page(handler, method):
    """The settings page: who is looking comes from the proxy's identity headers."""
    eshop = handler.headers.get("X-Shoptet-Eshop-Id")
    if not eshop:
        handler.send_error(403)  # not through the proxy's /settings
        return
    # Non-ASCII values arrive percent-encoded (UTF-8).
    name = urllib.parse.unquote(handler.headers.get("X-Shoptet-User-Name", ""))
    email = urllib.parse.unquote(handler.headers.get("X-Shoptet-User-Email", ""))
    if method == "POST" and handler.path.split("?")[0].endswith("/save"):
        length = int(handler.headers.get("Content-Length", 0))
        form = urllib.parse.parse_qs(handler.rfile.read(length).decode())
        GREETINGS[eshop] = form.get("greeting", [""])[0]
        print(f"settings saved {GREETINGS[eshop]}")
        handler.send_response(303)
        handler.send_header("Location", "./")  # relative: stays in the session
        handler.send_header("Content-Length", "0")
        handler.end_headers()
        return
    print(f"settings shown {eshop} {name}")
    greeting = GREETINGS.get(eshop, "Hello from the addon")
    e = html.escape
    page = (
        f"<!doctype html><meta charset=utf-8><title>Addon settings</title>"
        f"<h1>Hello, {e(name)}!</h1><p>E-shop <b>{e(eshop)}</b>, signed in as {e(email)}.</p>"
        f"<p>Greeting: <q>{e(greeting)}</q></p>"
        f'<form method=post action="save"><input name=greeting value="{e(greeting)}">'
        f'<button>Save</button></form><p><a href="about">About</a></p>'
    ).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "text/html; charset=utf-8")
    handler.send_header("Content-Length", str(len(page)))
    handler.end_headers()
    handler.wfile.write(page)


def handler_for(inbox):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith("/settings/"):
                settings_page(self, "GET")
            else:
                self.send_error(404)

        def do_POST(self):
            if self.path.startswith("/settings/"):
                settings_page(self, "POST")
                return
            length = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(length)
            signature = self.headers.get("Shoptet-Webhook-Signature")
            # Verified on the raw bytes, before parsing: re-serialised JSON would not match.
            if not signed(body, signature):
                self.send_error(401)
                print("refused unsigned delivery" if signature is None else "refused bad signature")
                return
            try:
                message = json.loads(body)
            except ValueError:
                self.send_error(400)
                return
            # Answer at once (the proxy, like Shoptet, waits 4 s at most) and work afterwards.
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            inbox.put((self.path, message))

        def log_message(self, *args):
            pass  # keep the output to one line per step

    return Handler


def main():
    sys.stdout.reconfigure(line_buffering=True)
    inbox = queue.Queue()
    server = ThreadingHTTPServer(("127.0.0.1", ADDON_PORT), handler_for(inbox))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"listening on http://127.0.0.1:{ADDON_PORT}")

    my_order = None
    while True:
        path, message = inbox.get()
        event = message.get("event")
        if path == "/events" and event == "installed":
            print(f"installed {message['eshopId']}")
            my_order = on_installed(message["eshopId"])
        elif path == "/webhooks" and event == "order:create":
            if message.get("eventInstance") == my_order:
                print(f"webhook order:create {my_order}")
                # Keeps serving the settings page.


if __name__ == "__main__":
    main()
