#!/usr/bin/env node
// Docker HEALTHCHECK: exit 0 when the process answers /livez on the ops port.
// Liveness only (never the broker): a broker outage must not restart the sidecar.
// Kubernetes does not use this; it probes /livez and /readyz itself (k8s/).
const port = Number(process.env.AMQP_SIDECAR_OPS_PORT ?? 8673)
const TIMEOUT_MS = 2000

try {
  const res = await fetch(`http://127.0.0.1:${port}/livez`, { signal: AbortSignal.timeout(TIMEOUT_MS) })
  process.exitCode = res.status === 200 ? 0 : 1
  if (res.status !== 200) process.stderr.write(`healthcheck: /livez answered ${res.status}\n`)
} catch (err) {
  process.stderr.write(`healthcheck: ${err instanceof Error ? err.message : String(err)}\n`)
  process.exitCode = 1
}
