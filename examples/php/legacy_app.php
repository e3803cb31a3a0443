<?php
// A PHP app (no AMQP extension, no Composer) publishing, pulling and acking
// through amqp-sidecar with PHP's built-in HTTP stream wrapper.
//   SIDECAR_URL=http://127.0.0.1:8672 EXCHANGE=orders ROUTING_KEY=order.created \
//   QUEUE=orders.created COUNT=3 php legacy_app.php
// Optional: SIDECAR_TOKEN or SIDECAR_TOKEN_FILE. Exits 0 when every published
// message was pulled and acked.
declare(strict_types=1);

$sidecar = rtrim(getenv('SIDECAR_URL') ?: 'http://127.0.0.1:8672', '/');
$exchange = getenv('EXCHANGE') ?: 'orders';
$routingKey = getenv('ROUTING_KEY') ?: 'order.created';
$queue = getenv('QUEUE') ?: 'orders.created';
$count = (int) (getenv('COUNT') ?: '3');
$deadline = microtime(true) + (float) (getenv('DEADLINE_S') ?: '30');
$token = getenv('SIDECAR_TOKEN') ?: (getenv('SIDECAR_TOKEN_FILE') ? trim((string) file_get_contents(getenv('SIDECAR_TOKEN_FILE'))) : null);

/** One HTTP call: [status, headers, decoded JSON body or null]. */
function call(string $method, string $url, ?string $body = null, array $headers = [], float $timeout = 30.0): array
{
    global $token;
    if ($token) {
        $headers[] = "Authorization: Bearer $token";
    }
    $context = stream_context_create(['http' => [
        'method' => $method,
        'header' => implode("\r\n", $headers),
        'content' => $body ?? '',
        'timeout' => $timeout,
        'ignore_errors' => true, // 4xx/5xx still return their JSON error body
    ]]);
    $raw = @file_get_contents($url, false, $context);
    if ($raw === false) {
        throw new RuntimeException("$method $url: no response");
    }
    $responseHeaders = $http_response_header ?? [];
    preg_match('#^HTTP/\S+ (\d{3})#', $responseHeaders[0] ?? '', $m);
    return [(int) ($m[1] ?? 0), $responseHeaders, $raw === '' ? null : json_decode($raw, true)];
}

function logStep(string $step, array $fields = []): void
{
    echo json_encode(['step' => $step] + $fields), "\n";
}

// Publish with a stable X-Message-Id; retry 503 (buffer full, blocked) and
// 504 (outcome unknown) with the same id: at-least-once, never lost.
function publish(array $payload): string
{
    global $sidecar, $exchange, $routingKey, $deadline;
    $messageId = bin2hex(random_bytes(16));
    $url = "$sidecar/v1/publish/" . rawurlencode($exchange) . '/' . rawurlencode($routingKey);
    while (true) {
        [$status, , $body] = call('POST', $url, json_encode($payload), ['Content-Type: application/json', "X-Message-Id: $messageId"]);
        if ($status === 200 || $status === 202) {
            return $body['messageId'];
        }
        if (!in_array($status, [503, 504], true) || microtime(true) > $deadline) {
            throw new RuntimeException("publish failed: $status " . json_encode($body));
        }
        sleep(1);
    }
}

$sent = [];
for ($i = 0; $i < $count; $i++) {
    $sent[] = $id = publish(['orderId' => $i, 'source' => 'legacy_app.php']);
    logStep('published', ['messageId' => $id]);
}

$acked = [];
while (count($acked) < count($sent) && microtime(true) < $deadline) {
    $max = count($sent) - count($acked);
    [$status, , $messages] = call('POST', "$sidecar/v1/queues/" . rawurlencode($queue) . "/pull?max=$max&waitMs=5000&leaseMs=30000", null, [], 20.0);
    if ($status === 204) {
        continue; // nothing arrived within waitMs
    }
    if ($status !== 200) {
        throw new RuntimeException("pull failed: $status " . json_encode($messages));
    }
    foreach ($messages as $m) {
        logStep('pulled', ['messageId' => $m['properties']['messageId'] ?? null, 'payload' => json_decode($m['body'], true)]);
    }
    [$status, , $result] = call('POST', "$sidecar/v1/ack", json_encode(['deliveryIds' => array_column($messages, 'deliveryId')]), ['Content-Type: application/json']);
    if ($status !== 200) {
        throw new RuntimeException("ack failed: $status " . json_encode($result));
    }
    foreach ($result['results'] as $k => $r) {
        logStep('ack', $r);
        if ($r['result'] === 'acked') {
            $acked[] = $messages[$k]['properties']['messageId'] ?? null;
        }
    }
}

sort($sent);
sort($acked);
$ok = $sent === $acked;
logStep('done', ['published' => count($sent), 'acked' => count($acked), 'ok' => $ok]);
exit($ok ? 0 : 1);
