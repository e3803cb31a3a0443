#!/bin/sh
# amqp-sidecar from a shell script or cron job, with curl only:
# publish one message, pull it with a lease, ack it.
#   SIDECAR_URL=http://127.0.0.1:8672 EXCHANGE=orders ROUTING_KEY=order.created \
#   QUEUE=orders.created sh publish-pull-ack.sh
# Optional: SIDECAR_TOKEN_FILE (the file api.tokenFile names).
set -eu

SIDECAR_URL="${SIDECAR_URL:-http://127.0.0.1:8672}"
EXCHANGE="${EXCHANGE:-orders}"
ROUTING_KEY="${ROUTING_KEY:-order.created}"
QUEUE="${QUEUE:-orders.created}"

# The token header goes through a file (-H @file), so it never shows in `ps`.
auth_args=""
if [ -n "${SIDECAR_TOKEN_FILE:-}" ]; then
  header_file="$(mktemp)"
  trap 'rm -f "$header_file"' EXIT
  printf 'Authorization: Bearer %s\n' "$(cat "$SIDECAR_TOKEN_FILE")" > "$header_file"
  auth_args="-H @$header_file"
fi

# 1. Publish: the raw body is the message. 200 means the broker confirmed it.
#    --fail-with-body: exit non-zero on 4xx/5xx and still print the JSON error.
message_id="shell-$(date +%s)-$$"
#    (Under `set -e` a failed $(...) would exit before printing it: hence the if.)
# shellcheck disable=SC2086
if ! published=$(curl -sS --fail-with-body --max-time 15 $auth_args \
  -H 'Content-Type: text/plain' -H "X-Message-Id: $message_id" \
  --data-binary "hello from $(hostname) at $(date -u +%FT%TZ)" \
  "$SIDECAR_URL/v1/publish/$EXCHANGE/$ROUTING_KEY"); then
  echo "publish failed: $published" >&2
  exit 1
fi
echo "published: $published"

# 2. Pull: wait up to 5 s for one message; 204 means none arrived.
# shellcheck disable=SC2086
if ! pulled=$(curl -sS --fail-with-body --max-time 20 $auth_args -X POST -w '\n%{http_code}' \
  "$SIDECAR_URL/v1/queues/$QUEUE/pull?max=1&waitMs=5000&leaseMs=30000"); then
  echo "pull failed: $pulled" >&2
  exit 1
fi
status=$(printf '%s\n' "$pulled" | tail -n 1)
body=$(printf '%s\n' "$pulled" | sed '$d')
if [ "$status" = "204" ]; then
  echo "nothing to pull" >&2
  exit 1
fi
echo "pulled: $body"

# 3. Ack by deliveryId (parsed with sed: no jq needed).
delivery_id=$(printf '%s' "$body" | sed -n 's/.*"deliveryId":"\([^"]*\)".*/\1/p')
# shellcheck disable=SC2086
if ! acked=$(curl -sS --fail-with-body --max-time 15 $auth_args \
  -H 'Content-Type: application/json' --data "{\"deliveryIds\": [\"$delivery_id\"]}" \
  "$SIDECAR_URL/v1/ack"); then
  echo "ack failed: $acked" >&2
  exit 1
fi
echo "acked: $acked"
case "$acked" in
  *'"result":"acked"'*) exit 0 ;;
  *) echo "ack not acked: $acked" >&2; exit 1 ;;
esac
