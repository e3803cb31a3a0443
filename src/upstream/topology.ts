/**
 * Declares the configured exchanges, queues and bindings on every (re)connect.
 * Uses a throwaway channel with its own 'error' listener: a 406 (inequivalent
 * arguments) closes only that channel, never the connection, and is reported
 * with the object that caused it instead of being retried in a silent loop.
 */
import type { ChannelModel } from 'amqplib'
import type { SidecarConfig } from '../config/index.js'

export class TopologyError extends Error {
  override name = 'TopologyError'
  constructor(
    readonly object: string,
    readonly replyCode: number | undefined,
    cause: unknown,
  ) {
    super(`declaring ${object} failed: ${(cause as Error)?.message ?? String(cause)}`, { cause })
  }
}

export async function declareTopology(connection: ChannelModel, topology: SidecarConfig['topology']): Promise<void> {
  if (topology.exchanges.length + topology.queues.length + topology.bindings.length === 0) return
  const ch = await connection.createChannel()
  // Swallow here; the failing call's rejection carries the same error to us.
  ch.on('error', () => {})
  let current = ''
  try {
    for (const e of topology.exchanges) {
      current = `exchange "${e.name}"`
      await ch.assertExchange(e.name, e.type, {
        durable: e.durable ?? true,
        autoDelete: e.autoDelete ?? false,
        internal: e.internal ?? false,
        arguments: { ...e.arguments },
      })
    }
    for (const q of topology.queues) {
      current = `queue "${q.name}"`
      await ch.assertQueue(q.name, {
        durable: q.durable ?? true,
        exclusive: q.exclusive ?? false,
        autoDelete: q.autoDelete ?? false,
        arguments: { ...q.arguments },
      })
    }
    for (const b of topology.bindings) {
      current = `binding ${b.exchange} -> ${b.queue} (${b.routingKey ?? ''})`
      await ch.bindQueue(b.queue, b.exchange, b.routingKey ?? '', { ...b.arguments })
    }
  } catch (err) {
    const code = (err as { code?: unknown }).code
    throw new TopologyError(current, typeof code === 'number' ? code : undefined, err)
  } finally {
    await ch.close().catch(() => {})
  }
}

/** Re-declares one queue from the topology (after a broker-side cancel). False if the queue is not in the topology. */
export async function redeclareQueue(connection: ChannelModel, topology: SidecarConfig['topology'], queue: string): Promise<boolean> {
  const q = topology.queues.find((x) => x.name === queue)
  if (!q) return false
  await declareTopology(connection, {
    exchanges: topology.exchanges.filter((e) => topology.bindings.some((b) => b.queue === queue && b.exchange === e.name)),
    queues: [q],
    bindings: topology.bindings.filter((b) => b.queue === queue),
  })
  return true
}
