<?php
// A minimal Shoptet addon behind shoptet-proxy, in plain PHP: no framework, no extension beyond
// the defaults (HTTP through stream functions, a small socket server for the incoming calls).
//
// It never handles OAuth or access tokens: the proxy holds them and adds them to every call. On
// the proxy's "installed" event it lists orders, registers an `order:create` webhook, creates an
// order, and waits for that order's webhook, printing one line per step.
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
 * Reads one HTTP request (the proxy always sends a Content-Length); returns [path, raw body,
 * signature header or null].
 */
function readRequest($conn): array
{
    $requestLine = (string) fgets($conn); // "POST /events HTTP/1.1"
    $length = 0;
    $signature = null;
    while (($line = fgets($conn)) !== false && trim($line) !== '') {
        [$name, $value] = array_pad(explode(':', $line, 2), 2, '');
        if (strcasecmp($name, 'Content-Length') === 0) {
            $length = (int) $value;
        } elseif (strcasecmp($name, 'Shoptet-Webhook-Signature') === 0) {
            $signature = trim($value);
        }
    }
    $body = $length > 0 ? (string) stream_get_contents($conn, $length) : '';
    return [explode(' ', $requestLine)[1] ?? '', $body, $signature];
}

$server = stream_socket_server('tcp://127.0.0.1:' . ADDON_PORT, $errno, $error);
if ($server === false) {
    fwrite(STDERR, 'cannot listen on port ' . ADDON_PORT . ": $error\n");
    exit(1);
}
echo 'listening on http://127.0.0.1:' . ADDON_PORT . "\n";

$myOrder = null;
while ($conn = stream_socket_accept($server, -1)) {
    [$path, $body, $signature] = readRequest($conn);
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
        exit(0); // the walkthrough is complete; a real addon keeps serving
    }
}
