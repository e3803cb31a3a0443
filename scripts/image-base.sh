#!/usr/bin/env bash
# Builds (or reuses) a local stand-in for the Dockerfile's base image, so the
# unchanged Dockerfile can be built here with buildah and no registry of images:
# Debian bookworm minbase (debootstrap), the Node binary of the exact version the
# Dockerfile names (the npm registry's `node` package), npm, and a `node` user
# (uid 1000), imported into podman under the exact name the Dockerfile's FROM uses.
# The tarball is cached in $IMAGE_CACHE (default /var/cache/amqp-sidecar), keyed by
# the Node and npm versions, so a second run neither debootstraps nor downloads.
#   usage: scripts/image-base.sh          prints the imported image name
set -euo pipefail
cd "$(dirname "$0")/.."

# The official images bundle an npm 11 with Node 24; the build stage only runs
# `npm ci` and `npm run build`, which any npm 11 does alike.
NPM_VERSION=11.19.1
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

image=$(sed -n 's/^ARG NODE_IMAGE=\(node:[0-9][0-9.]*-bookworm-slim\)$/\1/p' Dockerfile)
version=$(printf '%s' "$image" | sed -n 's/^node:\([0-9.]*\)-.*/\1/p')
if [ -z "$image" ] || [ -z "$version" ]; then
  echo "image-base: cannot read 'ARG NODE_IMAGE=node:<x.y.z>-bookworm-slim' from Dockerfile" >&2
  exit 2
fi
cache="${IMAGE_CACHE:-/var/cache/amqp-sidecar}"
tarball="$cache/base-node-$version-npm-$NPM_VERSION.tar"
mkdir -p "$cache"

if podman image exists "$image" && [ -f "$tarball" ] \
   && [ "$(podman image inspect --format '{{index .Labels "amqp-sidecar.base"}}' "$image" 2>/dev/null)" = "$(basename "$tarball")" ]; then
  echo "$image"
  exit 0
fi

if [ ! -f "$tarball" ]; then
  work=$(mktemp -d "$cache/base.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  rootfs="$work/rootfs"
  echo "image-base: debootstrap $DEBIAN_SUITE minbase (cold cache, a few minutes)" >&2
  debootstrap --variant=minbase --include=ca-certificates "$DEBIAN_SUITE" "$rootfs" "$DEBIAN_MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  # Slim like the official -slim images: no apt lists, docs or man pages.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*

  echo "image-base: node@$version and npm@$NPM_VERSION from the npm registry" >&2
  npm install --no-save --no-package-lock --no-audit --no-fund --prefix "$work/node" "node@$version" >/dev/null
  node_bin=$(readlink -f "$work/node/node_modules/.bin/node")
  [ "$("$node_bin" --version)" = "v$version" ] || { echo "image-base: wrong node binary $node_bin" >&2; exit 1; }
  install -m 0755 "$node_bin" "$rootfs/usr/local/bin/node"
  mkdir -p "$rootfs/usr/local/lib/node_modules"
  (cd "$work" && npm pack --silent "npm@$NPM_VERSION" >/dev/null)
  tar -C "$rootfs/usr/local/lib/node_modules" -xzf "$work/npm-$NPM_VERSION.tgz"
  mv "$rootfs/usr/local/lib/node_modules/package" "$rootfs/usr/local/lib/node_modules/npm"
  ln -s ../lib/node_modules/npm/bin/npm-cli.js "$rootfs/usr/local/bin/npm"
  ln -s ../lib/node_modules/npm/bin/npx-cli.js "$rootfs/usr/local/bin/npx"

  # The official images' user: node, uid/gid 1000, home /home/node.
  chroot "$rootfs" groupadd --gid 1000 node
  chroot "$rootfs" useradd --uid 1000 --gid node --shell /bin/bash --create-home node

  tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
fi

# Both spellings, so FROM resolves with --pull=never whatever the short-name policy.
podman rmi -f "$image" "docker.io/library/$image" >/dev/null 2>&1 || true
podman import --quiet \
  --change 'CMD ["node"]' --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change "LABEL amqp-sidecar.base=$(basename "$tarball")" \
  "$tarball" "docker.io/library/$image" >/dev/null
podman tag "docker.io/library/$image" "$image"
echo "$image"
