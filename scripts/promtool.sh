#!/usr/bin/env bash
# Prints the path of a promtool binary, fetching Debian's `prometheus` package
# into a cache directory the first time (the binary only: `apt-get download` and
# `dpkg-deb -x` start no daemon and install nothing). $PROMTOOL wins if set.
#   usage: "$(scripts/promtool.sh)" check rules deploy/prometheus/*.yaml
set -euo pipefail
if [ -n "${PROMTOOL:-}" ]; then echo "$PROMTOOL"; exit 0; fi
cache="${PROMTOOL_CACHE:-/var/cache/amqp-sidecar/promtool}"
bin="$cache/root/usr/bin/promtool"
if [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; then echo "$bin"; exit 0; fi
mkdir -p "$cache"
cd "$cache"
ls prometheus_*.deb >/dev/null 2>&1 || apt-get download prometheus >/dev/null 2>&1 \
  || { apt-get update -q >/dev/null && apt-get download prometheus >/dev/null 2>&1; } \
  || { echo "promtool.sh: cannot fetch Debian's prometheus package (apt-get download prometheus)" >&2; exit 1; }
rm -rf root
dpkg-deb -x "$(ls prometheus_*.deb | head -1)" root
"$bin" --version >/dev/null
echo "$bin"
