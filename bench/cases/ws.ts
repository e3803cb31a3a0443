/**
 * (d) publish over the sidecar's WebSocket, pipelined: `publish {id, ...}`
 * answered by `confirm {id}` (or `error {id}`); and the sidecar half of (g):
 * `subscribe {queue, prefetch}`, `message {deliveryId}`, `ack {deliveryId}`.
 */
import { close, open } from '../sockets.js'
import { CONSUME_PREFETCH, PUBLISH_WINDOW, type BenchContext } from '../context.js'
import { closedLoop, type LoadResult } from '../load.js'

type Edge = (edge: 'start' | 'end') => void

function wsUrl(ctx: BenchContext): string {
  if (!ctx.sidecar) throw new Error('no sidecar running')
  return `${ctx.sidecar.api.replace(/^http/, 'ws')}/v1/ws`
}

/** Why the WebSocket cases cannot run on this sidecar, or undefined when they can. */
export async function wsUnavailable(ctx: BenchContext): Promise<string | undefined> {
  try {
    await close(await open(wsUrl(ctx)))
    return undefined
  } catch (err) {
    return `the sidecar has no working GET /v1/ws (${(err as Error).message}); src/http/ws.ts has not landed`
  }
}

interface Frame {
  op?: string
  id?: string
  deliveryId?: string
  code?: string
  message?: string
}

export async function wsPublish(ctx: BenchContext, onWindow?: Edge): Promise<LoadResult> {
  const ws = await open(wsUrl(ctx))
  const waiting = new Map<string, { resolve: (n: number) => void; reject: (e: Error) => void }>()
  ws.on('message', (data) => {
    const f = JSON.parse(data.toString()) as Frame
    if (f.id === undefined) return
    const w = waiting.get(f.id)
    if (!w) return
    waiting.delete(f.id)
    if (f.op === 'confirm') w.resolve(1)
    else w.reject(new Error(`${f.op} ${f.code ?? ''} ${f.message ?? ''}`))
  })
  ws.on('close', () => {
    for (const w of waiting.values()) w.reject(new Error('WebSocket closed'))
    waiting.clear()
  })
  const head = `{"op":"publish","exchange":${JSON.stringify(ctx.exchange)},"routingKey":${JSON.stringify(ctx.routingKey)},"body":${JSON.stringify(ctx.bodyText)},"id":"`
  let seq = 0
  try {
    return await closedLoop({
      concurrency: PUBLISH_WINDOW,
      ...ctx.timing,
      op: () =>
        new Promise<number>((resolve, reject) => {
          const id = String(++seq)
          waiting.set(id, { resolve, reject })
          ws.send(`${head}${id}"}`)
        }),
      ...(onWindow ? { onWindow } : {}),
    })
  } finally {
    await close(ws)
  }
}

/**
 * Consumes `count` messages (acking each) at prefetch 100; the rate is taken after `warmup`.
 * batched: the ids of the frames of one turn of the event loop go in one `ack {deliveryIds}`
 * (sent on setImmediate), as a client that handles a burst and acks it would.
 */
export async function wsConsume(ctx: BenchContext, count: number, warmup: number, batched = false): Promise<LoadResult> {
  const ws = await open(wsUrl(ctx))
  try {
    let seen = 0
    let startAt = 0n
    let pending: string[] = []
    const flush = () => {
      ws.send(JSON.stringify({ op: 'ack', deliveryIds: pending }))
      pending = []
    }
    const endAt = await new Promise<bigint>((resolve, reject) => {
      ws.on('message', (data) => {
        const f = JSON.parse(data.toString()) as Frame
        if (f.op === 'message' && f.deliveryId !== undefined) {
          if (!batched) ws.send(`{"op":"ack","deliveryId":${JSON.stringify(f.deliveryId)}}`)
          else if (pending.push(f.deliveryId) === 1) setImmediate(flush)
          seen++
          if (seen === warmup) startAt = process.hrtime.bigint()
          if (seen === count) resolve(process.hrtime.bigint())
        } else if (f.op === 'error') reject(new Error(`${f.code ?? ''} ${f.message ?? ''}`))
      })
      ws.once('close', () => reject(new Error(`WebSocket closed after ${seen} of ${count} messages`)))
      ws.send(JSON.stringify({ op: 'subscribe', queue: ctx.queue, prefetch: CONSUME_PREFETCH }))
    })
    const seconds = Number(endAt - startAt) / 1e9
    const messages = count - warmup
    return { messages, seconds, rate: messages / seconds, errors: 0, firstError: undefined }
  } finally {
    await close(ws)
  }
}
