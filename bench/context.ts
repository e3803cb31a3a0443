/** What every case gets: the broker, the sidecar under test, the message and the knobs. */
import type { SidecarProcess } from './sidecar-process.js'

/** Messages in flight for the pipelined publishers (a, d, f): deep enough that the pipe never runs dry. */
export const PUBLISH_WINDOW = 1000
/** Concurrent keep-alive HTTP requests (b, e): the figure. */
export const HTTP_CONCURRENCY = 64
/** Messages per batch request (c) and concurrent batch requests. */
export const BATCH_SIZE = 100
export const BATCH_CONCURRENCY = 8
export const CONSUME_PREFETCH = 100
export const BODY_BYTES = 1024

export interface Timing {
  warmupMs: number
  measureMs: number
}

export interface BenchContext {
  brokerUrl: string
  /** A durable direct exchange bound to a durable queue with the routing key. Unique per run, so runs on a shared broker do not mix. */
  exchange: string
  queue: string
  routingKey: string
  timing: Timing
  /** 1 KB of printable ASCII: valid UTF-8 and JSON without escaping, so every protocol carries the same bytes. */
  body: Buffer
  bodyText: string
  sidecar: SidecarProcess | undefined
  management: { url: string; authorization: string } | undefined
  webStompUrl: string | undefined
  /** Progress line on stderr. */
  progress(line: string): void
}

export function makeBody(bytes = BODY_BYTES): Buffer {
  const alphabet = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_'
  const out = Buffer.alloc(bytes)
  for (let i = 0; i < bytes; i++) out[i] = alphabet.charCodeAt((i * 7919) % alphabet.length)
  return out
}
