#!/usr/bin/env bash
# Builds the unchanged Dockerfile with buildah (no Docker engine) against a local
# stand-in for its base image (scripts/image-base.sh, cached), then runs the image
# with podman as Kubernetes would: read-only root, uid 1000, host networking,
# against the broker on 127.0.0.1:5672. Checks: the image's contents (no dev
# dependencies, no sources or tests), `check-config` and `--version`, /livez and
# /readyz, a confirmed publish pulled back and acked, SIGTERM -> exit 0 with a
# clean AMQP close, no password in the logs. Prints the image size and timings.
# CI runs it as its own step after the tests (.ci/run).
#   usage: bash scripts/image-test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=localhost/amqp-sidecar:image-test
BROKER_URL=${RABBITMQ_URL:-amqp://guest:guest@127.0.0.1:5672/%2F}
DRAIN_MS=3000
# Generous: 2 cores shared with other jobs. Never a pass/fail threshold on speed.
READY_DEADLINE_S=120
STOP_DEADLINE_S=90

checks=0
pass() { checks=$((checks + 1)); printf 'ok %d - %s\n' "$checks" "$*"; }
fail() { printf 'not ok - %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

need=()
for tool in buildah podman runc debootstrap newuidmap; do command -v "$tool" >/dev/null 2>&1 || need+=("$tool"); done
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing buildah podman runc debootstrap uidmap (missing: ${need[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends buildah podman runc debootstrap uidmap >/dev/null
fi
# crun fails on this host's cgroup v1; raising limits is not permitted, so pass them.
PODMAN=(podman --runtime runc --cgroup-manager cgroupfs)
RUN_OPTS=(--read-only --read-only-tmpfs=false --network host --user 1000:1000
  --ulimit nofile=20000:20000 --ulimit nproc=4096:4096)

work=$(mktemp -d /tmp/image-test.XXXXXX)
cid=""
cleanup() {
  [ -n "$cid" ] && "${PODMAN[@]}" rm -f -t 0 "$cid" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

t0=$(now)
base=$(bash scripts/image-base.sh)
t_base=$(now)
echo "== base image $base ready in $(secs "$t0" "$t_base") s"

echo "== buildah bud (the Dockerfile as it is)"
# The build's `npm ci` must trust what this machine trusts (a registry reached
# through a TLS-inspecting proxy has a CA only the host's bundle holds). Mounted
# for the RUN steps only, as npm's global config: nothing of it lands in a layer.
printf 'cafile=/run/host-ca/ca-certificates.crt\n' >"$work/npmrc"
# --layers: an unchanged package-lock.json reuses the npm ci layers of the last run.
buildah bud --isolation chroot --pull=never --layers --quiet \
  -v "$work/npmrc:/usr/local/etc/npmrc:ro" -v /etc/ssl/certs/ca-certificates.crt:/run/host-ca/ca-certificates.crt:ro \
  -t "$TAG" . >"$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log" >&2; fail "buildah bud failed"; }
t_build=$(now)
pass "the Dockerfile builds with buildah ($(secs "$t_base" "$t_build") s)"

size=$(podman image inspect --format '{{.Size}}' "$TAG")
user=$(podman image inspect --format '{{.Config.User}}' "$TAG")
[ "$user" = "1000:1000" ] || fail "image user is '$user', expected 1000:1000"
pass "the image runs as 1000:1000"

# ---- contents ----
inspect() { "${PODMAN[@]}" run --rm "${RUN_OPTS[@]}" --entrypoint /bin/sh "$TAG" -c "$1"; }
top=$(inspect 'cd /app && ls -A | tr "\n" " "')
[ "$top" = "config dist node_modules package-lock.json package.json scripts " ] || fail "unexpected files in /app: $top"
[ "$(inspect 'ls /app/scripts')" = "healthcheck.mjs" ] || fail "/app/scripts holds more than healthcheck.mjs"
stray=$(inspect 'find /app -path /app/node_modules -prune -o \( -name "*.ts" -o -name "*.test.*" -o -name test -o -name src \) -print | head -5')
[ -z "$stray" ] || fail "sources or tests in the image: $stray"
pass "/app holds only config, dist, node_modules, package files and the healthcheck"
# Every package the lockfile marks dev-only must be absent; shared ones (ws) stay.
node -e '
  const lock = require("./package-lock.json")
  for (const [path, p] of Object.entries(lock.packages)) if (path && p.dev) console.log(path)
' >"$work/dev-packages"
[ -s "$work/dev-packages" ] || fail "no dev-only packages found in package-lock.json (cannot check)"
present=$(inspect "cd /app && for p in $(tr '\n' ' ' <"$work/dev-packages"); do [ -e \"\$p\" ] && echo \"\$p\"; done; true")
[ -z "$present" ] || fail "dev dependencies in the image: $(echo "$present" | head -5 | tr '\n' ' ')"
pass "none of the $(wc -l <"$work/dev-packages") dev-only packages of package-lock.json is in the image"
# tsc's source maps point at ../src, which is not shipped: they carry line
# numbers for stack traces, never the source text itself.
embedded=$(inspect 'grep -l sourcesContent $(find /app/dist -name "*.map") 2>/dev/null | head -3; true')
outside=$(inspect 'find /app -path /app/node_modules -prune -o -path /app/dist -prune -o -name "*.map" -print | head -3')
[ -z "$embedded" ] && [ -z "$outside" ] || fail "source maps with sources, or outside dist/: $embedded $outside"
pass "source maps only in dist/, without embedded sources"

# ---- the CLI as documented ----
version=$("${PODMAN[@]}" run --rm "${RUN_OPTS[@]}" "$TAG" --version)
[ "$version" = "$(node -p 'require("./package.json").version')" ] || fail "--version printed '$version'"
"${PODMAN[@]}" run --rm "${RUN_OPTS[@]}" "$TAG" check-config >"$work/check.out" 2>"$work/check.err" \
  || { cat "$work/check.err" >&2; fail "check-config exited non-zero"; }
grep -q 'configuration OK (/app/config/default.json)' "$work/check.err" || fail "check-config: $(cat "$work/check.err")"
node -e 'JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"))' "$work/check.out" || fail "check-config did not print JSON"
grep -q 'amqp://guest:\*\*\*@127.0.0.1:5672/' "$work/check.out" || fail "check-config does not show the broker URL as user:***@host: $(grep -o '"urls"[^]]*' "$work/check.out")"
if grep -q ':guest@' "$work/check.out"; then fail "check-config printed a password"; fi
pass "--version and check-config work as documented (URL shown as user:***@host)"

# ---- run it against the broker ----
read -r api_port ops_port < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])
for s in ss: s.close()')
queue="image-test.$(date +%s).$$"
cat >"$work/sidecar.json" <<EOF
{
  "api": { "host": "127.0.0.1", "port": $api_port },
  "ops": { "host": "127.0.0.1", "port": $ops_port },
  "topology": { "queues": [{ "name": "$queue", "durable": false, "arguments": { "x-expires": 60000 } }] },
  "shutdown": { "drainMs": $DRAIN_MS }
}
EOF
chmod 644 "$work/sidecar.json"
t_run=$(now)
cid=$("${PODMAN[@]}" run -d "${RUN_OPTS[@]}" -v "$work/sidecar.json:/etc/amqp-sidecar/sidecar.json:ro" \
  -e AMQP_URL="$BROKER_URL" "$TAG" --config /etc/amqp-sidecar/sidecar.json)

wait_http() { # url expected-status deadline-s
  local deadline=$((SECONDS + $3)) code
  while :; do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$1" || true)
    [ "$code" = "$2" ] && return 0
    [ "$("${PODMAN[@]}" inspect --format '{{.State.Running}}' "$cid")" = "true" ] || { "${PODMAN[@]}" logs "$cid" >&2; fail "the container exited"; }
    [ $SECONDS -lt "$deadline" ] || { "${PODMAN[@]}" logs "$cid" | tail -20 >&2; fail "$1 answered $code, not $2, within $3 s"; }
    sleep 0.5 # a poll interval, not a synchronisation: the loop waits for the answer
  done
}
wait_http "http://127.0.0.1:$ops_port/livez" 200 "$READY_DEADLINE_S"
wait_http "http://127.0.0.1:$ops_port/readyz" 200 "$READY_DEADLINE_S"
t_ready=$(now)
pass "/livez and /readyz answer 200 ($(secs "$t_run" "$t_ready") s after start)"

api="http://127.0.0.1:$api_port"
id="image-test-$$"
published=$(curl -s --max-time 30 -w '\n%{http_code}' -H 'Content-Type: text/plain' -H "X-Message-Id: $id" \
  --data-binary 'hello from the image' "$api/v1/publish/amq.default/$queue")
[ "$(tail -n1 <<<"$published")" = "200" ] || fail "publish answered: $published"
grep -q "\"messageId\":\"$id\",\"status\":\"confirmed\"" <<<"$published" || fail "publish answered: $published"
pulled=$(curl -s --max-time 30 -X POST "$api/v1/queues/$queue/pull?max=1&waitMs=10000")
grep -q '"body":"hello from the image"' <<<"$pulled" || fail "pull answered: $pulled"
delivery=$(sed -n 's/.*"deliveryId":"\([^"]*\)".*/\1/p' <<<"$pulled")
acked=$(curl -s --max-time 30 -H 'Content-Type: application/json' -d "{\"deliveryIds\":[\"$delivery\"]}" "$api/v1/ack")
grep -q '"result":"acked"' <<<"$acked" || fail "ack answered: $acked"
pass "a publish is confirmed, pulled back and acked through the image"

t_term=$(now)
"${PODMAN[@]}" kill --signal TERM "$cid" >/dev/null
code=$(timeout "$STOP_DEADLINE_S" "${PODMAN[@]}" wait "$cid") || fail "the container did not exit within $STOP_DEADLINE_S s of SIGTERM"
t_exit=$(now)
"${PODMAN[@]}" logs "$cid" >"$work/container.log" 2>&1
[ "$code" = "0" ] || { tail -20 "$work/container.log" >&2; fail "exit code $code after SIGTERM"; }
grep -q '"msg":"signal received"' "$work/container.log" || fail "no 'signal received' log line"
grep -q '"signal":"SIGTERM"' "$work/container.log" || fail "the log does not name SIGTERM"
pass "SIGTERM: exit 0 after $(secs "$t_term" "$t_exit") s (drain $((DRAIN_MS / 1000)) s)"
if grep -q ':guest@' "$work/container.log"; then fail "a broker password in the container log"; fi
pass "no broker password in the container log"

mb=$((size / 1000 / 1000))
echo "== image $TAG: $mb MB (base $base $((($(podman image inspect --format '{{.Size}}' "$base")) / 1000 / 1000)) MB)"
echo "== timings: base $(secs "$t0" "$t_base") s, build $(secs "$t_base" "$t_build") s, run to ready $(secs "$t_run" "$t_ready") s, SIGTERM to exit $(secs "$t_term" "$t_exit") s, total $(secs "$t0" "$(now)") s"
echo "== image-test: all $checks checks passed"
