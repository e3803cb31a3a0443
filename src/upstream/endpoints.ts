/**
 * Where and how to connect: the broker URLs (from the config or a URL file)
 * and the socket options (keepalive, connect timeout, connection name, TLS).
 * Both are rebuilt before every round over the URL list, so a rotated
 * Kubernetes Secret (URL file, CA, client certificate or key) applies on the
 * next reconnect without a restart.
 */
import { readFileSync } from 'node:fs'
import type { SidecarConfig } from '../config/index.js'
import { redactUrl, type SecretRegistry } from '../observe/redact.js'

type AmqpConfig = SidecarConfig['amqp']

export function brokerUrls(amqp: AmqpConfig, heartbeatSeconds: number, secrets: SecretRegistry): string[] {
  let urls: string[] = [...amqp.urls]
  if (amqp.urlFile) {
    urls = readFileSync(amqp.urlFile, 'utf8').split(/[\n,]/).map((s) => s.trim()).filter((s) => s && !s.startsWith('#'))
    if (urls.length === 0) throw new Error(`amqp.urlFile ${amqp.urlFile} holds no URL`)
  }
  return urls.map((raw) => {
    secrets.addUrl(raw)
    const u = new URL(raw)
    if (u.protocol !== 'amqp:' && u.protocol !== 'amqps:') throw new Error(`${redactUrl(raw)}: must use amqp:// or amqps://`)
    // The configured (or adapted) heartbeat always wins over one written in the URL.
    u.searchParams.set('heartbeat', String(heartbeatSeconds))
    return u.toString()
  })
}

export function socketOptions(amqp: AmqpConfig, connectionName: string): Record<string, unknown> {
  const tls = amqp.tls
  return {
    keepAlive: true,
    keepAliveDelay: amqp.keepAliveDelayMs,
    noDelay: true,
    // amqplib applies this to TCP connect plus the AMQP handshake only.
    timeout: amqp.connectTimeoutMs,
    clientProperties: { connection_name: connectionName },
    ...(tls.caFile ? { ca: [readFileSync(tls.caFile)] } : {}),
    ...(tls.certFile ? { cert: readFileSync(tls.certFile) } : {}),
    ...(tls.keyFile ? { key: readFileSync(tls.keyFile) } : {}),
    rejectUnauthorized: tls.rejectUnauthorized,
  }
}
