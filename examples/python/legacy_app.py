#!/usr/bin/env python3
"""A legacy app that talks to RabbitMQ through amqp-sidecar with nothing but
the Python standard library (urllib): publish, pull with a lease, ack.

    SIDECAR_URL=http://127.0.0.1:8672 EXCHANGE=orders ROUTING_KEY=order.created \
    QUEUE=orders.created COUNT=3 python3 legacy_app.py

Optional: SIDECAR_TOKEN or SIDECAR_TOKEN_FILE (api.tokenFile's token).
Prints one JSON line per step and a summary; exits 0 when every published
message was pulled and acked.
"""
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

SIDECAR = os.environ.get("SIDECAR_URL", "http://127.0.0.1:8672").rstrip("/")
EXCHANGE = os.environ.get("EXCHANGE", "orders")
ROUTING_KEY = os.environ.get("ROUTING_KEY", "order.created")
QUEUE = os.environ.get("QUEUE", "orders.created")
COUNT = int(os.environ.get("COUNT", "3"))
DEADLINE_S = float(os.environ.get("DEADLINE_S", "30"))


def token():
    if os.environ.get("SIDECAR_TOKEN"):
        return os.environ["SIDECAR_TOKEN"]
    path = os.environ.get("SIDECAR_TOKEN_FILE")
    if path:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    return None


TOKEN = token()


def call(method, path, body=None, headers=None, timeout=30):
    """One HTTP call; returns (status, headers, parsed JSON or None)."""
    headers = dict(headers or {})
    if TOKEN:
        headers["Authorization"] = "Bearer " + TOKEN
    data = body
    if isinstance(body, (dict, list)):
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(SIDECAR + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            raw = res.read()
            return res.status, res.headers, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:  # 4xx/5xx still carry the JSON error body
        raw = err.read()
        return err.code, err.headers, json.loads(raw) if raw else None


def publish(payload):
    """Publish with a stable message id: an unknown outcome (504) or a full
    buffer (503) is retried with the same id, so nothing is lost and a
    duplicate can be recognised by the consumer (at-least-once)."""
    message_id = str(uuid.uuid4())
    path = "/v1/publish/%s/%s" % (urllib.parse.quote(EXCHANGE, safe=""), urllib.parse.quote(ROUTING_KEY, safe=""))
    deadline = time.monotonic() + DEADLINE_S
    while True:
        status, headers, body = call("POST", path, json.dumps(payload).encode(),
                                     {"Content-Type": "application/json", "X-Message-Id": message_id})
        if status in (200, 202):
            return body["messageId"]
        retryable = status in (503, 504)
        if not retryable or time.monotonic() > deadline:
            raise RuntimeError("publish failed: %s %s" % (status, body))
        time.sleep(float(headers.get("Retry-After") or 1))


def pull(max_messages, wait_ms=5000):
    path = "/v1/queues/%s/pull?max=%d&waitMs=%d&leaseMs=30000" % (urllib.parse.quote(QUEUE, safe=""), max_messages, wait_ms)
    status, _, body = call("POST", path, timeout=wait_ms / 1000 + 10)
    if status == 204:
        return []
    if status != 200:
        raise RuntimeError("pull failed: %s %s" % (status, body))
    return body


def ack(delivery_ids):
    status, _, body = call("POST", "/v1/ack", {"deliveryIds": delivery_ids})
    if status != 200:
        raise RuntimeError("ack failed: %s %s" % (status, body))
    return body["results"]


def main():
    sent = []
    for i in range(COUNT):
        message_id = publish({"orderId": i, "source": "legacy_app.py"})
        sent.append(message_id)
        print(json.dumps({"step": "published", "messageId": message_id}), flush=True)

    received = []
    deadline = time.monotonic() + DEADLINE_S
    while len(received) < len(sent) and time.monotonic() < deadline:
        messages = pull(len(sent) - len(received))
        for m in messages:
            payload = json.loads(m["body"]) if m["bodyEncoding"] == "utf8" else m["body"]
            print(json.dumps({"step": "pulled", "messageId": m["properties"].get("messageId"), "payload": payload}), flush=True)
        # Work done: ack. An ack for a delivery whose channel is gone answers
        # "stale": the broker redelivers it, so process it again then.
        results = ack([m["deliveryId"] for m in messages]) if messages else []
        for m, r in zip(messages, results):
            if r["result"] == "acked":
                received.append(m["properties"].get("messageId"))
            print(json.dumps({"step": "ack", "deliveryId": r["deliveryId"], "result": r["result"]}), flush=True)

    ok = sorted(received) == sorted(sent)
    print(json.dumps({"step": "done", "published": len(sent), "acked": len(received), "ok": ok}), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
