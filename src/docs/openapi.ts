/**
 * Renders the OpenAPI document exactly as a running sidecar serves it at
 * /v1/openapi.json: a real sidecar is started on free loopback ports (its
 * broker URL points nowhere, so it only retries), asked for the document,
 * and shut down. Whatever routes are registered end up in the document.
 */
import { loadConfig } from '../config/index.js'
import { OPENAPI_PATH } from '../http/openapi.js'
import { createLogger } from '../observe/logger.js'
import { SecretRegistry } from '../observe/redact.js'
import { buildSidecar } from '../sidecar.js'

/** Port 1 on loopback: connection refused at once, and no broker is ever touched. */
const NOWHERE = 'amqp://guest:guest@127.0.0.1:1/%2F'

export async function renderOpenApi(): Promise<string> {
  const { config } = loadConfig({
    file: null,
    env: {},
    overrides: {
      amqp: { urls: [NOWHERE], reconnect: { initialDelayMs: 1000, maxDelayMs: 1000 } },
      api: { host: '127.0.0.1', port: 0 },
      ops: { host: '127.0.0.1', port: 0 },
      shutdown: { drainMs: 0 },
      log: { level: 'silent' },
    },
  })
  const secrets = new SecretRegistry()
  const sidecar = buildSidecar(config, { log: createLogger({ level: 'silent', secrets }), secrets })
  try {
    const { api } = await sidecar.start()
    const res = await fetch(`http://127.0.0.1:${api.port}${OPENAPI_PATH}`)
    if (res.status !== 200) throw new Error(`GET ${OPENAPI_PATH} answered ${res.status}: ${await res.text()}`)
    return `${JSON.stringify(await res.json(), null, 2)}\n`
  } finally {
    await sidecar.shutdown({ drainMs: 0 })
  }
}
