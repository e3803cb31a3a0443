/**
 * convict formats for the shapes convict 6 cannot check by itself: URL lists,
 * nullable strings and the topology / push arrays. Each throws a message that
 * names what is wrong, because convict prefixes it with the key.
 */
import convict from 'convict'

const NAME_RE = /^[A-Za-z0-9\-_.:]*$/
/** A DNS name or IPv4 address, or an IPv6 address in brackets; never a port. */
const HOST_RE = /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))*\.?|\[[0-9A-Fa-f:.]+\])$/
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v)

function assertKeys(where: string, obj: Record<string, unknown>, allowed: readonly string[]): void {
  for (const k of Object.keys(obj)) {
    if (!allowed.includes(k)) throw new Error(`${where}: unknown key "${k}" (allowed: ${allowed.join(', ')})`)
  }
}

function assertName(where: string, v: unknown, allowEmpty = false): void {
  if (typeof v !== 'string' || (!allowEmpty && v.length === 0) || v.length > 255 || !NAME_RE.test(v)) {
    throw new Error(`${where}: must be 1-255 characters of letters, digits, '-', '_', '.', ':'`)
  }
}

function assertOptional(where: string, v: unknown, type: 'boolean' | 'object' | 'string'): void {
  if (v === undefined) return
  if (type === 'object' ? !isObject(v) : typeof v !== type) throw new Error(`${where}: must be a ${type}`)
}

export function assertAmqpUrl(url: unknown, where = 'url'): void {
  if (typeof url !== 'string') throw new Error(`${where}: must be a string`)
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch {
    // Never echo the value: it may carry a password.
    throw new Error(`${where}: is not a valid URL`)
  }
  if (parsed.protocol !== 'amqp:' && parsed.protocol !== 'amqps:') {
    throw new Error(`${where}: must use amqp:// or amqps://`)
  }
}

/**
 * x-delivery-limit caps redeliveries of a poison message, but only quorum
 * queues count deliveries: on a classic queue the broker accepts and ignores
 * it, so the cap the operator meant would silently not exist.
 */
function assertDeliveryLimit(where: string, args: Record<string, unknown>): void {
  const limit = args['x-delivery-limit']
  if (limit === undefined) return
  if (typeof limit !== 'number' || !Number.isInteger(limit) || limit < 0) throw new Error(`${where}.x-delivery-limit: must be a non-negative integer`)
  if (args['x-queue-type'] !== 'quorum') throw new Error(`${where}.x-delivery-limit: only quorum queues count deliveries; add "x-queue-type": "quorum"`)
}

const EXCHANGE_TYPES = ['direct', 'topic', 'fanout', 'headers', 'x-delayed-message', 'x-consistent-hash']

export function registerFormats(): void {
  convict.addFormats({
    // convict's Boolean turns every string but "false" into true ("no", "0", "off",
    // "nope" all meant true). Only true and false, in any case, are accepted.
    boolean: {
      validate(v: unknown) {
        if (typeof v !== 'boolean') throw new Error('must be true or false')
      },
      coerce: (v: unknown) => (typeof v === 'string' && /^(true|false)$/i.test(v.trim()) ? v.trim().toLowerCase() === 'true' : v),
    },
    // convict's own 'nat' ignores `min`; this one enforces it (and `max`, when a key has one).
    integer: {
      validate(v: unknown, schemaObj: convict.SchemaObj) {
        const schema = schemaObj as { min?: number; max?: number }
        const min = schema.min ?? 0
        if (typeof v !== 'number' || !Number.isInteger(v)) throw new Error('must be an integer')
        if (v < min) throw new Error(`must be at least ${min}`)
        if (schema.max !== undefined && v > schema.max) throw new Error(`must be at most ${schema.max}`)
      },
      coerce: (v: unknown) => (typeof v === 'string' && /^-?\d+$/.test(v.trim()) ? Number(v) : v),
    },
    'amqp-url-list': {
      validate(v: unknown) {
        // Empty is allowed here: amqp.urlFile, when set, wins (loadConfig checks that one of them is given).
        if (!Array.isArray(v)) throw new Error('must be a list of amqp:// or amqps:// URLs')
        v.forEach((u, i) => assertAmqpUrl(u, `[${i}]`))
      },
      coerce: (v: unknown) => (typeof v === 'string' ? v.split(',').map((s) => s.trim()).filter(Boolean) : v),
    },
    'nullable-string': {
      validate(v: unknown) {
        if (v !== null && (typeof v !== 'string' || v.length === 0)) throw new Error('must be null or a non-empty string')
      },
      coerce: (v: unknown) => (v === '' || v === 'null' ? null : v),
    },
    'nullable-name-list': {
      validate(v: unknown) {
        if (v === null) return
        if (!Array.isArray(v)) throw new Error('must be null or a list of names')
        v.forEach((n, i) => assertName(`[${i}]`, n, true))
      },
      coerce: (v: unknown) => (v === 'null' || v === '' ? null : typeof v === 'string' ? v.split(',').map((s) => s.trim()) : v),
    },
    'host-list': {
      validate(v: unknown) {
        if (!Array.isArray(v)) throw new Error('must be a list of host names')
        v.forEach((h, i) => {
          if (typeof h !== 'string' || !HOST_RE.test(h)) throw new Error(`[${i}]: must be a host name or IP address without a port (IPv6 in brackets)`)
        })
      },
      coerce: (v: unknown) => (typeof v === 'string' ? v.split(',').map((s) => s.trim()).filter(Boolean) : v),
    },
    'exchange-list': {
      validate(v: unknown) {
        if (!Array.isArray(v)) throw new Error('must be a list')
        v.forEach((e, i) => {
          const w = `exchanges[${i}]`
          if (!isObject(e)) throw new Error(`${w}: must be an object`)
          assertKeys(w, e, ['name', 'type', 'durable', 'autoDelete', 'internal', 'arguments'])
          assertName(`${w}.name`, e.name)
          if (typeof e.name === 'string' && e.name.startsWith('amq.')) throw new Error(`${w}.name: "amq." names are reserved by the broker`)
          if (typeof e.type !== 'string' || !EXCHANGE_TYPES.includes(e.type)) throw new Error(`${w}.type: must be one of ${EXCHANGE_TYPES.join(', ')}`)
          assertOptional(`${w}.durable`, e.durable, 'boolean')
          assertOptional(`${w}.autoDelete`, e.autoDelete, 'boolean')
          assertOptional(`${w}.internal`, e.internal, 'boolean')
          assertOptional(`${w}.arguments`, e.arguments, 'object')
        })
      },
    },
    'queue-list': {
      validate(v: unknown) {
        if (!Array.isArray(v)) throw new Error('must be a list')
        v.forEach((q, i) => {
          const w = `queues[${i}]`
          if (!isObject(q)) throw new Error(`${w}: must be an object`)
          assertKeys(w, q, ['name', 'durable', 'exclusive', 'autoDelete', 'arguments'])
          assertName(`${w}.name`, q.name)
          assertOptional(`${w}.durable`, q.durable, 'boolean')
          assertOptional(`${w}.exclusive`, q.exclusive, 'boolean')
          assertOptional(`${w}.autoDelete`, q.autoDelete, 'boolean')
          assertOptional(`${w}.arguments`, q.arguments, 'object')
          if (isObject(q.arguments)) assertDeliveryLimit(`${w}.arguments`, q.arguments)
        })
      },
    },
    'binding-list': {
      validate(v: unknown) {
        if (!Array.isArray(v)) throw new Error('must be a list')
        v.forEach((b, i) => {
          const w = `bindings[${i}]`
          if (!isObject(b)) throw new Error(`${w}: must be an object`)
          assertKeys(w, b, ['exchange', 'queue', 'routingKey', 'arguments'])
          assertName(`${w}.exchange`, b.exchange)
          assertName(`${w}.queue`, b.queue)
          assertOptional(`${w}.routingKey`, b.routingKey, 'string')
          assertOptional(`${w}.arguments`, b.arguments, 'object')
        })
      },
    },
    'nullable-dead-letter': {
      validate(v: unknown) {
        if (v === null) return
        if (!isObject(v)) throw new Error('must be null or {"exchange": "...", "routingKey": "..."}')
        assertKeys('deadLetter', v, ['exchange', 'routingKey'])
        if (v.exchange !== '') assertName('deadLetter.exchange', v.exchange)
        if (typeof v.routingKey !== 'string' || Buffer.byteLength(v.routingKey) > 255) throw new Error('deadLetter.routingKey: must be a string of at most 255 bytes')
        if (v.exchange === '' && v.routingKey === '') throw new Error('deadLetter: the default exchange ("") needs a routingKey (the queue name)')
      },
    },
    'push-list': {
      validate(v: unknown) {
        if (!Array.isArray(v)) throw new Error('must be a list')
        v.forEach((p, i) => {
          const w = `push[${i}]`
          if (!isObject(p)) throw new Error(`${w}: must be an object`)
          assertKeys(w, p, ['queue', 'url', 'concurrency', 'timeoutMs', 'retry', 'onGiveUp'])
          assertName(`${w}.queue`, p.queue)
          if (typeof p.url !== 'string' || !/^https?:\/\//.test(p.url)) throw new Error(`${w}.url: must be an http:// or https:// URL`)
          for (const k of ['concurrency', 'timeoutMs'] as const) {
            if (p[k] !== undefined && (!Number.isInteger(p[k]) || (p[k] as number) < 1)) throw new Error(`${w}.${k}: must be a positive integer`)
          }
          if (p.retry !== undefined) {
            if (!isObject(p.retry)) throw new Error(`${w}.retry: must be an object`)
            assertKeys(`${w}.retry`, p.retry, ['maxAttempts', 'initialDelayMs', 'maxDelayMs'])
            for (const [k, n] of Object.entries(p.retry)) {
              if (!Number.isInteger(n) || (n as number) < 0) throw new Error(`${w}.retry.${k}: must be a non-negative integer`)
            }
          }
          if (p.onGiveUp !== undefined && p.onGiveUp !== 'dead-letter' && p.onGiveUp !== 'requeue') {
            throw new Error(`${w}.onGiveUp: must be "dead-letter" or "requeue"`)
          }
        })
      },
    },
  })
}
