/**
 * (b) single-message HTTP publish, (c) batch publish, and the sidecar half of
 * (h). undici's Pool keeps `connections` keep-alive sockets busy with one
 * request each (no HTTP pipelining), which is what an app's HTTP client does.
 */
import { Pool } from 'undici'
import { BATCH_CONCURRENCY, BATCH_SIZE, HTTP_CONCURRENCY, type BenchContext } from '../context.js'
import { closedLoop, type LoadResult } from '../load.js'

type Edge = (edge: 'start' | 'end') => void

async function post(pool: Pool, path: string, body: Buffer | string, contentType: string, expect: number): Promise<void> {
  const res = await pool.request({ method: 'POST', path, body, headers: { 'content-type': contentType } })
  const text = await res.body.text()
  if (res.statusCode !== expect) throw new Error(`HTTP ${res.statusCode}: ${text.slice(0, 200)}`)
}

async function withPool<T>(origin: string, connections: number, fn: (pool: Pool) => Promise<T>): Promise<T> {
  const pool = new Pool(origin, { connections, pipelining: 1, keepAliveTimeout: 60_000 })
  try {
    return await fn(pool)
  } finally {
    await pool.close()
  }
}

function sidecarOrigin(ctx: BenchContext): string {
  if (!ctx.sidecar) throw new Error('no sidecar running')
  return ctx.sidecar.api
}

const rawPath = (ctx: BenchContext) => `/v1/publish/${encodeURIComponent(ctx.exchange)}/${encodeURIComponent(ctx.routingKey)}`

export function httpSingle(ctx: BenchContext, onWindow?: Edge): Promise<LoadResult> {
  return withPool(sidecarOrigin(ctx), HTTP_CONCURRENCY, (pool) =>
    closedLoop({
      concurrency: HTTP_CONCURRENCY,
      ...ctx.timing,
      op: () => post(pool, rawPath(ctx), ctx.body, 'application/octet-stream', 200).then(() => 1),
      ...(onWindow ? { onWindow } : {}),
    }),
  )
}

export function httpBatch(ctx: BenchContext, onWindow?: Edge): Promise<LoadResult> {
  const envelope = { exchange: ctx.exchange, routingKey: ctx.routingKey, body: ctx.bodyText }
  const batch = JSON.stringify(Array.from({ length: BATCH_SIZE }, () => envelope))
  return withPool(sidecarOrigin(ctx), BATCH_CONCURRENCY, (pool) =>
    closedLoop({
      concurrency: BATCH_CONCURRENCY,
      ...ctx.timing,
      op: () => post(pool, '/v1/publish', batch, 'application/json', 200).then(() => BATCH_SIZE),
      ...(onWindow ? { onWindow } : {}),
    }),
  )
}

/** A keep-alive pool for the latency case: publish() resolves at the 200. */
export function httpSession(ctx: BenchContext): { publish: () => Promise<void>; close: () => Promise<void> } {
  const pool = new Pool(sidecarOrigin(ctx), { connections: HTTP_CONCURRENCY, pipelining: 1, keepAliveTimeout: 60_000 })
  const path = rawPath(ctx)
  return { publish: () => post(pool, path, ctx.body, 'application/octet-stream', 200), close: () => pool.close() }
}

/** (e) RabbitMQ's management HTTP API: one message per request, the same concurrency as (b). */
export function managementPublish(ctx: BenchContext, onWindow?: Edge): Promise<LoadResult> {
  const mgmt = ctx.management
  if (!mgmt) throw new Error('no management listener')
  const body = JSON.stringify({ properties: { delivery_mode: 2, content_type: 'application/octet-stream' }, routing_key: ctx.routingKey, payload: ctx.bodyText, payload_encoding: 'string' })
  const path = `/api/exchanges/%2F/${ctx.exchange}/publish`
  return withPool(mgmt.url, HTTP_CONCURRENCY, (pool) =>
    closedLoop({
      concurrency: HTTP_CONCURRENCY,
      ...ctx.timing,
      op: async () => {
        const res = await pool.request({ method: 'POST', path, body, headers: { 'content-type': 'application/json', authorization: mgmt.authorization } })
        const text = await res.body.text()
        if (res.statusCode !== 200 || !text.includes('"routed":true')) throw new Error(`management HTTP ${res.statusCode}: ${text.slice(0, 200)}`)
        return 1
      },
      ...(onWindow ? { onWindow } : {}),
    }),
  )
}
