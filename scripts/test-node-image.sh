#!/usr/bin/env bash
# CI leg: run the test suite under the exact Node version the Docker image
# ships (read from the Dockerfile's NODE_IMAGE), taken from the npm registry's
# `node` package, besides the machine's own Node. Extra arguments go to tap.
#   npm run test:node-image            # the whole suite
#   npm run test:node-image -- test/cli.test.ts
# The binary is cached in $NODE_IMAGE_CACHE (default ~/.cache/amqp-sidecar/node-<version>).
set -euo pipefail
cd "$(dirname "$0")/.."

# NODE_VERSION=<x.y.z> runs another version the same way (CI's leg for the oldest
# Node that package.json's engines allow).
version=${NODE_VERSION:-$(sed -n 's/^ARG NODE_IMAGE=node:\([0-9][0-9.]*\)-.*/\1/p' Dockerfile)}
if [ -z "$version" ]; then
  echo "test-node-image: cannot read 'ARG NODE_IMAGE=node:<x.y.z>-...' from Dockerfile" >&2
  exit 2
fi
dir="${NODE_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/amqp-sidecar/node-$version}"
node_bin="$dir/node_modules/.bin/node"

if [ "$("$node_bin" --version 2>/dev/null || true)" != "v$version" ]; then
  echo "== installing node@$version from the npm registry into $dir"
  mkdir -p "$dir"
  npm install --no-save --no-package-lock --no-audit --no-fund --prefix "$dir" "node@$version"
fi
actual=$("$node_bin" --version)
if [ "$actual" != "v$version" ]; then
  echo "test-node-image: expected node v$version, got $actual from $node_bin" >&2
  exit 1
fi

echo "== tap under node $actual"
# First on PATH too, so anything a test starts as plain `node` is this one.
export PATH="$(dirname "$(readlink -f "$node_bin")"):$PATH"
exec "$node_bin" node_modules/.bin/tap "$@"
