/**
 * Where a dead-lettered message came from, read from the headers RabbitMQ adds
 * when it dead-letters: x-first-death-exchange, and the x-death entry of the
 * first death (queue and reason matching x-first-death-queue/-reason, else the
 * oldest entry: x-death lists the most recent first), whose routing-keys hold
 * the routing key the message was published with (then any CC keys).
 */
export type SkipReason = 'no-x-death' | 'no-origin'

export type Origin = { exchange: string; routingKey: string } | { skip: SkipReason }

/** Header strings may arrive as bytes, depending on how the publisher encoded them. */
function text(v: unknown): string | undefined {
  if (typeof v === 'string') return v
  if (Buffer.isBuffer(v)) return v.toString('utf8')
  return undefined
}

export function originOf(headers: Record<string, unknown> | undefined): Origin {
  const deaths = headers?.['x-death']
  if (!Array.isArray(deaths) || deaths.length === 0) return { skip: 'no-x-death' }
  const entries = deaths.filter((d): d is Record<string, unknown> => typeof d === 'object' && d !== null)
  const firstQueue = text(headers?.['x-first-death-queue'])
  const firstReason = text(headers?.['x-first-death-reason'])
  const first = entries.find((d) => text(d['queue']) === firstQueue && text(d['reason']) === firstReason) ?? entries[entries.length - 1]
  const exchange = text(headers?.['x-first-death-exchange']) ?? text(first?.['exchange'])
  const keys = first?.['routing-keys']
  const routingKey = Array.isArray(keys) ? text(keys[0]) : undefined
  if (exchange === undefined || routingKey === undefined) return { skip: 'no-origin' }
  return { exchange, routingKey }
}
