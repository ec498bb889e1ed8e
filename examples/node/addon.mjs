// A minimal Shoptet addon behind shoptet-proxy, in Node (18+) with built-in fetch and node:http.
//
// It never handles OAuth or access tokens: the proxy holds them and adds them to every call. On
// the proxy's "installed" event it lists orders, registers an `order:create` webhook, creates an
// order, and waits for that order's webhook, printing one line per step.
//
// Its settings page (/settings/..., served to the e-shop admin through the proxy's /settings)
// greets the admin and saves one setting. The proxy has verified who the admin is and says so in
// X-Shoptet-* headers; the page uses only those and relative links (no cookie, no token).
//
// Every delivery from the proxy is signed with the key in SIGNING_KEY_FILE (the same file as the
// proxy's `[addon] signing_key_file`): `Shoptet-Webhook-Signature` is the lowercase hex
// HMAC-SHA1 of the body, Shoptet's own scheme. Anything unsigned or signed otherwise is refused
// with 401.
//
//   PROXY_URL=http://127.0.0.1:8080 PUBLIC_URL=http://127.0.0.1:8081 ADDON_PORT=8000 \
//       SIGNING_KEY_FILE=signing-key node addon.mjs

import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";

// Where the proxy takes API calls, and where Shoptet reaches the proxy (for webhook URLs).
const PROXY_URL = process.env.PROXY_URL ?? "http://127.0.0.1:8080";
const PUBLIC_URL = process.env.PUBLIC_URL ?? "http://127.0.0.1:8081";
const ADDON_PORT = Number(process.env.ADDON_PORT ?? 8000);
// The key's text without its trailing newline, as the proxy reads `signing_key_file`.
const SIGNING_KEY = fs.readFileSync(process.env.SIGNING_KEY_FILE, "utf8").replace(/[\r\n]+$/, "");

// Shoptet's check: HMAC-SHA1 of the raw body, hex, compared in constant time.
function signed(body, signature) {
  if (typeof signature !== "string") return false;
  const expected = Buffer.from(crypto.createHmac("sha1", SIGNING_KEY).update(body).digest("hex"));
  const presented = Buffer.from(signature.trim().toLowerCase());
  return expected.length === presented.length && crypto.timingSafeEqual(expected, presented);
}

// Calls the Shoptet API of one e-shop through the proxy and returns the envelope's `data`.
// Base-URL style: everything under /eshops/<id>/api goes to that e-shop's API. Errors, the
// proxy's own (`proxy-...`) included, come in Shoptet's envelope with an `errorCode`.
async function shoptet(method, eshopId, path, body) {
  const response = await fetch(`${PROXY_URL}/eshops/${eshopId}/api${path}`, {
    method,
    headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  if (!response.ok) {
    throw new Error(`${method} ${path}: ${response.status} ${await response.text()}`);
  }
  return (await response.json()).data;
}

// The first calls an addon makes for a new e-shop; resolves to the code of the order it creates.
async function onInstalled(eshopId) {
  const { orders } = await shoptet("GET", eshopId, "/orders?itemsPerPage=5");
  console.log(`orders ${orders.length}`);

  // Shoptet sends webhooks to the proxy's public listener; the proxy checks their signature and
  // forwards them to this addon's /webhooks.
  const hook = { event: "order:create", url: `${PUBLIC_URL}/webhooks` };
  await shoptet("POST", eshopId, "/webhooks", { data: [hook] });
  console.log("webhook registered");

  // A real e-shop wants more fields (see Shoptet's API docs); the simulator takes an email.
  const { order } = await shoptet("POST", eshopId, "/orders", {
    data: { email: "buyer@example.com" },
  });
  console.log(`order created ${order.code}`);
  return order.code;
}

// The code of the order this addon creates, once the installation has happened. A failure in
// onInstalled rejects it and, unhandled, ends the process with an error.
let myOrder;

// One setting per e-shop; a real addon keeps it in its database.
const greetings = new Map();
const escape = (s) =>
  s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

// The settings page: who is looking comes from the proxy's identity headers.
function settingsPage(req, res, raw) {
  const eshop = req.headers["x-shoptet-eshop-id"];
  if (!eshop) return res.writeHead(403).end(); // not through the proxy's /settings
  // Non-ASCII values arrive percent-encoded (UTF-8).
  const name = decodeURIComponent(req.headers["x-shoptet-user-name"] ?? "");
  const email = decodeURIComponent(req.headers["x-shoptet-user-email"] ?? "");
  if (req.method === "POST" && req.url.split("?")[0].endsWith("/save")) {
    greetings.set(eshop, new URLSearchParams(raw).get("greeting") ?? "");
    console.log(`settings saved ${greetings.get(eshop)}`);
    // Relative: stays in the session.
    return res.writeHead(303, { Location: "./", "Content-Length": "0" }).end();
  }
  console.log(`settings shown ${eshop} ${name}`);
  const greeting = greetings.get(eshop) ?? "Hello from the addon";
  res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" }).end(
    `<!doctype html><meta charset=utf-8><title>Addon settings</title>` +
      `<h1>Hello, ${escape(name)}!</h1><p>E-shop <b>${escape(eshop)}</b>, signed in as ${escape(email)}.</p>` +
      `<p>Greeting: <q>${escape(greeting)}</q></p>` +
      `<form method=post action="save"><input name=greeting value="${escape(greeting)}">` +
      `<button>Save</button></form><p><a href="about">About</a></p>`,
  );
}

const server = http.createServer(async (req, res) => {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const raw = Buffer.concat(chunks);
  if (req.url.startsWith("/settings/")) return settingsPage(req, res, raw.toString());
  // Verified on the raw bytes, before parsing: re-serialised JSON would not match.
  const signature = req.headers["shoptet-webhook-signature"];
  if (!signed(raw, signature)) {
    res.writeHead(401).end();
    console.log(signature === undefined ? "refused unsigned delivery" : "refused bad signature");
    return;
  }
  let message;
  try {
    message = JSON.parse(raw.toString("utf8"));
  } catch {
    res.writeHead(400).end();
    return;
  }
  // Answer at once (the proxy, like Shoptet, waits 4 s at most) and work afterwards.
  res.writeHead(200).end();

  if (req.url === "/events" && message.event === "installed") {
    console.log(`installed ${message.eshopId}`);
    myOrder = onInstalled(message.eshopId);
  } else if (req.url === "/webhooks" && message.event === "order:create") {
    // The webhook may overtake the answer to our POST: wait for the order's code first.
    if (myOrder && message.eventInstance === (await myOrder)) {
      console.log(`webhook order:create ${message.eventInstance}`);
      // Keeps serving the settings page.
    }
  }
});

server.listen(ADDON_PORT, "127.0.0.1", () => {
  console.log(`listening on http://127.0.0.1:${ADDON_PORT}`);
});
