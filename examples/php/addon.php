<?php
// A minimal Shoptet addon behind shoptet-proxy, in plain PHP: no framework, no extension beyond
// the defaults (HTTP through stream functions, a small socket server for the incoming calls).
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
// HMAC-SHA1 of the body, Shoptet's own scheme, checked here as the official SDK's
// SignatureValidator does. Anything unsigned or signed otherwise is refused with 401.
//
//   PROXY_URL=http://127.0.0.1:8080 PUBLIC_URL=http://127.0.0.1:8081 ADDON_PORT=8000 \
//       SIGNING_KEY_FILE=signing-key php addon.php

declare(strict_types=1);

// Where the proxy takes API calls, and where Shoptet reaches the proxy (for webhook URLs).
define('PROXY_URL', getenv('PROXY_URL') ?: 'http://127.0.0.1:8080');
define('PUBLIC_URL', getenv('PUBLIC_URL') ?: 'http://127.0.0.1:8081');
define('ADDON_PORT', (int) (getenv('ADDON_PORT') ?: 8000));
// The key's text without its trailing newline, as the proxy reads `signing_key_file`.
define('SIGNING_KEY', rtrim((string) file_get_contents((string) getenv('SIGNING_KEY_FILE')), "\r\n"));

/** Shoptet's check: HMAC-SHA1 of the raw body, hex, compared in constant time. */
function signed(string $body, ?string $signature): bool
{
    return $signature !== null
        && hash_equals(hash_hmac('sha1', $body, SIGNING_KEY), strtolower(trim($signature)));
}

/**
 * Calls the Shoptet API of one e-shop through the proxy and returns the envelope's `data`.
 * Base-URL style: everything under /eshops/<id>/api goes to that e-shop's API. Errors, the
 * proxy's own (`proxy-...`) included, come in Shoptet's envelope with an `errorCode`.
 */
function shoptet(string $method, int $eshopId, string $path, ?array $body = null): array
{
    $context = stream_context_create(['http' => [
        'method' => $method,
        'header' => "Content-Type: application/json\r\n",
        'content' => $body === null ? '' : json_encode($body),
        'ignore_errors' => true, // read error answers too: their body says what went wrong
        'timeout' => 30,
    ]]);
    $answer = file_get_contents(PROXY_URL . "/eshops/$eshopId/api$path", false, $context);
    if ($answer === false) {
        throw new RuntimeException("$method $path: the proxy is unreachable");
    }
    // PHP puts the answer's status line and headers in $http_response_header.
    preg_match('{^HTTP/\S+ (\d{3})}', $http_response_header[0] ?? '', $status);
    $code = (int) ($status[1] ?? 0);
    if ($code < 200 || $code >= 300) {
        throw new RuntimeException("$method $path: {$http_response_header[0]} $answer");
    }
    return json_decode($answer, true, flags: JSON_THROW_ON_ERROR)['data'];
}

/** The first calls an addon makes for a new e-shop; returns the code of the order it creates. */
function onInstalled(int $eshopId): string
{
    $orders = shoptet('GET', $eshopId, '/orders?itemsPerPage=5')['orders'];
    echo 'orders ' . count($orders) . "\n";

    // Shoptet sends webhooks to the proxy's public listener; the proxy checks their signature and
    // forwards them to this addon's /webhooks.
    $hook = ['event' => 'order:create', 'url' => PUBLIC_URL . '/webhooks'];
    shoptet('POST', $eshopId, '/webhooks', ['data' => [$hook]]);
    echo "webhook registered\n";

    // A real e-shop wants more fields (see Shoptet's API docs); the simulator takes an email.
    $order = shoptet('POST', $eshopId, '/orders', ['data' => ['email' => 'buyer@example.com']])['order'];
    echo "order created {$order['code']}\n";
    return $order['code'];
}

/**
 * Reads one HTTP request (the proxy always sends a Content-Length); returns [method, path,
 * headers (lowercase names), raw body].
 */
function readRequest($conn): array
{
    $requestLine = (string) fgets($conn); // "POST /events HTTP/1.1"
    $headers = [];
    while (($line = fgets($conn)) !== false && trim($line) !== '') {
        [$name, $value] = array_map('trim', explode(':', $line, 2)) + [1 => ''];
        $headers[strtolower($name)] = $value;
    }
    $length = (int) ($headers['content-length'] ?? 0);
    $body = $length > 0 ? (string) stream_get_contents($conn, $length) : '';
    $parts = explode(' ', $requestLine);
    return [$parts[0], $parts[1] ?? '', $headers, $body];
}

/** One setting per e-shop; a real addon keeps it in its database. */
$greetings = [];

/** The settings page: who is looking comes from the proxy's identity headers. */
function settingsPage(string $method, string $path, array $headers, string $body, array &$greetings): string
{
    $eshop = $headers['x-shoptet-eshop-id'] ?? '';
    if ($eshop === '') {
        return "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n"; // not through the proxy's /settings
    }
    // Non-ASCII values arrive percent-encoded (UTF-8).
    $name = rawurldecode($headers['x-shoptet-user-name'] ?? '');
    $email = rawurldecode($headers['x-shoptet-user-email'] ?? '');
    if ($method === 'POST' && str_ends_with(explode('?', $path)[0], '/save')) {
        parse_str($body, $form);
        $greetings[$eshop] = (string) ($form['greeting'] ?? '');
        echo "settings saved {$greetings[$eshop]}\n";
        // Relative: stays in the session.
        return "HTTP/1.1 303 See Other\r\nLocation: ./\r\nContent-Length: 0\r\n";
    }
    echo "settings shown $eshop $name\n";
    $e = fn (string $s): string => htmlspecialchars($s, ENT_QUOTES);
    $greeting = $greetings[$eshop] ?? 'Hello from the addon';
    $page = '<!doctype html><meta charset=utf-8><title>Addon settings</title>'
        . "<h1>Hello, {$e($name)}!</h1><p>E-shop <b>{$e($eshop)}</b>, signed in as {$e($email)}.</p>"
        . "<p>Greeting: <q>{$e($greeting)}</q></p>"
        . "<form method=post action=\"save\"><input name=greeting value=\"{$e($greeting)}\">"
        . '<button>Save</button></form><p><a href="about">About</a></p>';
    return "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: "
        . strlen($page) . "\r\n\r\n" . $page;
}

$server = stream_socket_server('tcp://127.0.0.1:' . ADDON_PORT, $errno, $error);
if ($server === false) {
    fwrite(STDERR, 'cannot listen on port ' . ADDON_PORT . ": $error\n");
    exit(1);
}
echo 'listening on http://127.0.0.1:' . ADDON_PORT . "\n";

$myOrder = null;
while ($conn = stream_socket_accept($server, -1)) {
    [$method, $path, $headers, $body] = readRequest($conn);
    if (str_starts_with($path, '/settings/')) {
        $answer = settingsPage($method, $path, $headers, $body, $greetings);
        // A head-only answer still needs its blank line.
        fwrite($conn, str_contains($answer, "\r\n\r\n") ? $answer : "{$answer}Connection: close\r\n\r\n");
        fclose($conn);
        continue;
    }
    $signature = $headers['shoptet-webhook-signature'] ?? null;
    // Verified on the raw bytes, before parsing: re-encoded JSON would not match.
    if (!signed($body, $signature)) {
        fwrite($conn, "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        fclose($conn);
        echo $signature === null ? "refused unsigned delivery\n" : "refused bad signature\n";
        continue;
    }
    $message = json_decode($body, true);
    $message = is_array($message) ? $message : null;
    // Answer at once (the proxy, like Shoptet, waits 4 s at most) and work afterwards.
    $status = $message === null ? '400 Bad Request' : '200 OK';
    fwrite($conn, "HTTP/1.1 $status\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    fclose($conn);

    $event = $message['event'] ?? '';
    if ($path === '/events' && $event === 'installed') {
        echo "installed {$message['eshopId']}\n";
        $myOrder = onInstalled($message['eshopId']);
    } elseif ($path === '/webhooks' && $event === 'order:create'
        && ($message['eventInstance'] ?? null) === $myOrder) {
        echo "webhook order:create $myOrder\n";
        // Keeps serving the settings page.
    }
}
