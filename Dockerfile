# syntax=docker/dockerfile:1
# amqp-sidecar image: build with dev dependencies, ship production ones only.
# The Node version here is also a CI leg: scripts/test-node-image.sh runs the
# test suite under the same major (keep NODE_MAJOR in that script in step).

ARG NODE_IMAGE=node:24.21.0-bookworm-slim

# ---- build: compile TypeScript to dist/ ----
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# ---- runtime: production dependencies, compiled code, non-root ----
FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production
# A 1 MiB young generation (V8's default is 16 MiB per semi-space): about -11 MB RSS idle
# and -21 MB under load, for a CPU cost within noise (docs/benchmarks.md, "Footprint").
# One V8 worker thread instead of four (GC helpers, background compiles): a further 2-4 MB
# idle, no measurable CPU cost at a paced 1,000 msg/s (issue 12). Override NODE_OPTIONS to
# trade memory back; a NODE_OPTIONS set elsewhere replaces this one, so repeat these flags.
ENV NODE_OPTIONS="--max-semi-space-size=1 --v8-pool-size=1"
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
COPY --from=build /app/dist ./dist
COPY config ./config
COPY scripts/healthcheck.mjs ./scripts/healthcheck.mjs
# The image's `node` user (uid 1000). Kubernetes can check runAsNonRoot only for a numeric user.
USER 1000:1000
# 8672: the app API (loopback by default); 8673: /livez, /readyz, /metrics.
EXPOSE 8672 8673
# Docker and Compose only; Kubernetes ignores HEALTHCHECK and uses the probes in k8s/.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 CMD ["node", "scripts/healthcheck.mjs"]
# node is the process (never npm, which swallows signals): main.ts drains on
# SIGTERM and exits at once on a second signal. It starts no children to reap.
STOPSIGNAL SIGTERM
# The CLI is the entrypoint, so `docker run <image> check-config` and
# `--version` work, and Kubernetes `args: [--config, <file>]` picks the config.
ENTRYPOINT ["node", "dist/main.js"]
# Empty on purpose: clears the base image's CMD ["node"].
CMD []
