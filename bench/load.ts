/**
 * Closed-loop load: `concurrency` workers each repeat an operation for the
 * warm-up plus the measured window; only completions inside the window count.
 * A pipelined protocol (a confirm window, WebSocket ids, STOMP receipts) is a
 * closed loop too: one worker per in-flight slot.
 */
import { setTimeout as sleep } from 'node:timers/promises'

export interface LoadOptions {
  concurrency: number
  warmupMs: number
  measureMs: number
  /** One operation; resolves with how many messages it completed. */
  op: () => Promise<number>
  /** Called when the measured window opens and closes (CPU/RSS snapshots). */
  onWindow?: (edge: 'start' | 'end') => void
}

export interface LoadResult {
  messages: number
  seconds: number
  rate: number
  errors: number
  firstError: string | undefined
}

/** After this many failures the run is abandoned: a broken case must not spin for the whole window. */
const MAX_ERRORS = 1000

export async function closedLoop(opts: LoadOptions): Promise<LoadResult> {
  let done = 0
  let errors = 0
  let firstError: string | undefined
  let stopped = false
  const worker = async () => {
    while (!stopped) {
      try {
        // Not `done += await ...`: that would read `done` before the await and lose other workers' counts.
        const n = await opts.op()
        done += n
      } catch (err) {
        errors++
        firstError ??= err instanceof Error ? err.message : String(err)
        if (errors >= MAX_ERRORS) stopped = true
      }
    }
  }
  const workers = Array.from({ length: opts.concurrency }, worker)
  await sleep(opts.warmupMs)
  const startCount = done
  const startAt = process.hrtime.bigint()
  opts.onWindow?.('start')
  await sleep(opts.measureMs)
  const endCount = done
  const seconds = Number(process.hrtime.bigint() - startAt) / 1e9
  opts.onWindow?.('end')
  stopped = true
  await Promise.all(workers)
  if (errors >= MAX_ERRORS) throw new Error(`gave up after ${errors} errors; first: ${firstError}`)
  const messages = endCount - startCount
  return { messages, seconds, rate: messages / seconds, errors, firstError }
}

/**
 * Open-loop load at a fixed rate: operations start on schedule whether or not
 * earlier ones finished, so a slow answer cannot hide the ones queued behind it.
 * Resolves with each operation's latency in milliseconds (warm-up excluded).
 */
export async function fixedRate(opts: {
  rate: number
  warmupMs: number
  measureMs: number
  op: () => Promise<void>
  onWindow?: (edge: 'start' | 'end') => void
}): Promise<{ latenciesMs: number[]; errors: number; firstError: string | undefined; sent: number }> {
  const latencies: number[] = []
  let errors = 0
  let firstError: string | undefined
  const total = Math.round(((opts.warmupMs + opts.measureMs) / 1000) * opts.rate)
  const warmupCount = Math.round((opts.warmupMs / 1000) * opts.rate)
  const pending: Promise<void>[] = []
  const fire = (i: number) => {
    const t0 = process.hrtime.bigint()
    if (i === warmupCount) opts.onWindow?.('start')
    pending.push(
      opts.op().then(
        () => {
          if (i >= warmupCount) latencies.push(Number(process.hrtime.bigint() - t0) / 1e6)
        },
        (err: unknown) => {
          errors++
          firstError ??= err instanceof Error ? err.message : String(err)
        },
      ),
    )
  }
  const start = process.hrtime.bigint()
  let sent = 0
  await new Promise<void>((resolve) => {
    const tick = () => {
      const due = Math.min(total, Math.floor((Number(process.hrtime.bigint() - start) / 1e9) * opts.rate))
      while (sent < due) fire(sent++)
      if (sent >= total) {
        clearInterval(timer)
        resolve()
      }
    }
    const timer = setInterval(tick, 1)
  })
  await Promise.all(pending)
  opts.onWindow?.('end')
  return { latenciesMs: latencies, errors, firstError, sent }
}
