/**
 * (j) X-Ack: accepted, 1 msg/request at the concurrency of (b): the 202 held
 * in memory against the 202 written to the durable spool (fdatasync before the
 * answer, shared by concurrent requests). Each side is its own sidecar process
 * with a buffer bound large enough that the measured window never reaches it,
 * so what is compared is the 202 path itself; after each window the harness
 * waits until the sidecar has sent its backlog, so it cannot slow the next case.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Pool } from 'undici'
import { HTTP_CONCURRENCY, type BenchContext } from '../context.js'
import { closedLoop, type LoadResult } from '../load.js'
import { startSidecarProcess, type SidecarCommand, type SidecarProcess } from '../sidecar-process.js'

const BIG_BUFFER = ['--publish.maxBufferedMessages', '2000000', '--publish.maxBufferedBytes', String(4 * 1024 ** 3)]
const DRAIN_TIMEOUT_MS = 300_000

export interface AcceptedSidecars {
  memory: SidecarProcess
  spool: SidecarProcess
  stop(): Promise<void>
}

export async function startAcceptedSidecars(cmd: SidecarCommand, brokerUrl: string): Promise<AcceptedSidecars> {
  const dir = mkdtempSync(join(tmpdir(), 'bench-spool-'))
  const memory = await startSidecarProcess(cmd, brokerUrl, BIG_BUFFER)
  const spool = await startSidecarProcess(cmd, brokerUrl, [...BIG_BUFFER, '--publish.spool.dir', dir, '--publish.spool.maxBytes', String(8 * 1024 ** 3)])
  return {
    memory,
    spool,
    async stop() {
      await Promise.all([memory.stop(), spool.stop()])
      rmSync(dir, { recursive: true, force: true })
    },
  }
}

export async function acceptedPublish(ctx: BenchContext, sidecar: SidecarProcess, onWindow: (e: 'start' | 'end') => void): Promise<LoadResult> {
  const path = `/v1/publish/${encodeURIComponent(ctx.exchange)}/${encodeURIComponent(ctx.routingKey)}`
  const pool = new Pool(sidecar.api, { connections: HTTP_CONCURRENCY, pipelining: 1, keepAliveTimeout: 60_000 })
  try {
    const r = await closedLoop({
      concurrency: HTTP_CONCURRENCY,
      ...ctx.timing,
      onWindow,
      op: async () => {
        const res = await pool.request({ method: 'POST', path, body: ctx.body, headers: { 'content-type': 'application/octet-stream', 'x-ack': 'accepted' } })
        const text = await res.body.text()
        if (res.statusCode !== 202) throw new Error(`HTTP ${res.statusCode}: ${text.slice(0, 200)}`)
        return 1
      },
    })
    await drained(sidecar)
    return r
  } finally {
    await pool.close()
  }
}

/** Waits until the sidecar holds nothing for the broker, in memory or in its spool. */
async function drained(sidecar: SidecarProcess): Promise<void> {
  const until = Date.now() + DRAIN_TIMEOUT_MS
  while (Date.now() < until) {
    const s = (await (await fetch(`${sidecar.api}/v1/status`)).json()) as { buffer: { messages: number }; spool: { messages: number } | null }
    if (s.buffer.messages === 0 && (s.spool?.messages ?? 0) === 0) return
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error(`the sidecar did not send its 202 backlog within ${DRAIN_TIMEOUT_MS / 1000} s`)
}
