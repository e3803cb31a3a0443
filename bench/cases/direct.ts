/**
 * (a) The ceiling: amqplib straight to the broker on a confirm channel with a
 * pipelined window, and the direct half of (g) and (h).
 */
import { connect, type ConfirmChannel } from 'amqplib'
import { randomUUID } from 'node:crypto'
import { CONSUME_PREFETCH, PUBLISH_WINDOW, type BenchContext } from '../context.js'
import { closedLoop, type LoadResult } from '../load.js'

/** The same properties the sidecar sets on a raw HTTP publish: persistent, mandatory, a UUID message id, a content type. */
function publishOne(ctx: BenchContext, ch: ConfirmChannel): Promise<number> {
  return new Promise((resolve, reject) => {
    ch.publish(ctx.exchange, ctx.routingKey, ctx.body, { persistent: true, mandatory: true, messageId: randomUUID(), contentType: 'application/octet-stream', headers: {} }, (err: unknown) =>
      err ? reject(new Error('nacked')) : resolve(1),
    )
  })
}

/** noDelay as the sidecar sets it, so both sides send the same way. */
async function withConfirmChannel<T>(ctx: BenchContext, fn: (ch: ConfirmChannel) => Promise<T>): Promise<T> {
  const conn = await connect(ctx.brokerUrl, { noDelay: true })
  try {
    const ch = await conn.createConfirmChannel()
    return await fn(ch)
  } finally {
    await conn.close().catch(() => {})
  }
}

export function directPublish(ctx: BenchContext, onWindow?: (edge: 'start' | 'end') => void, window = PUBLISH_WINDOW): Promise<LoadResult> {
  return withConfirmChannel(ctx, (ch) => closedLoop({ concurrency: window, ...ctx.timing, op: () => publishOne(ctx, ch), ...(onWindow ? { onWindow } : {}) }))
}

/** One confirm channel for the latency case: publish() resolves at the confirm. */
export async function directSession(ctx: BenchContext): Promise<{ publish: () => Promise<void>; close: () => Promise<void> }> {
  const conn = await connect(ctx.brokerUrl, { noDelay: true })
  const ch = await conn.createConfirmChannel()
  return { publish: () => publishOne(ctx, ch).then(() => undefined), close: () => conn.close().catch(() => {}) }
}

/** Fills the queue for a consume case; returns once every message is confirmed. */
export async function prefill(ctx: BenchContext, count: number): Promise<void> {
  await withConfirmChannel(ctx, async (ch) => {
    let next = 0
    const worker = async () => {
      while (next < count) {
        next++
        await publishOne(ctx, ch)
      }
    }
    await Promise.all(Array.from({ length: PUBLISH_WINDOW }, worker))
  })
}

/**
 * Consumes `count` messages with manual acks at prefetch 100; the rate is
 * taken after the first `warmup` messages.
 */
export async function directConsume(ctx: BenchContext, count: number, warmup: number): Promise<LoadResult> {
  const conn = await connect(ctx.brokerUrl, { noDelay: true })
  try {
    const ch = await conn.createChannel()
    await ch.prefetch(CONSUME_PREFETCH)
    let seen = 0
    let startAt = 0n
    const finished = new Promise<bigint>((resolve) => {
      void ch.consume(ctx.queue, (msg) => {
        if (msg === null) return
        ch.ack(msg)
        seen++
        if (seen === warmup) startAt = process.hrtime.bigint()
        if (seen === count) resolve(process.hrtime.bigint())
      })
    })
    const endAt = await finished
    const seconds = Number(endAt - startAt) / 1e9
    const messages = count - warmup
    return { messages, seconds, rate: messages / seconds, errors: 0, firstError: undefined }
  } finally {
    await conn.close().catch(() => {})
  }
}
