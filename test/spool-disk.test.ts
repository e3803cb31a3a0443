// A real full disk under the spool (issue 10): publish.spool.dir on a 256 KiB
// tmpfs, far below publish.spool.maxBytes, so the disk fills before the bound.
// Needs root (mount); skipped with the reason otherwise.
import { execFileSync } from 'node:child_process'
import { mkdtempSync, rmdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { directAmqp } from './fixtures/amqp.js'
import { errorCode, request } from './fixtures/http.js'
import { proxiedQueue } from './fixtures/spool-outage.js'
import { SHARED_BROKER_URL, startSidecar } from './fixtures/sidecar.js'
import { waitFor } from './fixtures/wait.js'

const accepted = (api: string, q: string, id: string, body: string) =>
  request(api, `/v1/publish/amq.default/${q}`, { method: 'POST', headers: { 'x-ack': 'accepted', 'x-message-id': id, 'content-type': 'text/plain' }, body, timeoutMs: 20_000 })
const spoolMessages = async (api: string) => ((await (await fetch(`${api}/v1/status`)).json()) as { spool: { messages: number } }).spool.messages

/** Mounts a tmpfs of `size`; undefined (with the reason) when this machine cannot. */
function mountTmpfs(size: string): { dir?: string; reason?: string } {
  if (process.getuid?.() !== 0) return { reason: 'mounting a tmpfs needs root' }
  const dir = mkdtempSync(join(tmpdir(), 'spool-disk-'))
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], { stdio: 'pipe' })
    return { dir }
  } catch (err) {
    rmdirSync(dir)
    return { reason: `mount -t tmpfs failed: ${(err as Error).message.split('\n')[0]}` }
  }
}

const mounted = mountTmpfs('256k')
if (!mounted.dir) {
  t.comment(`skipped: ${mounted.reason}`)
  t.pass(`skipped: ${mounted.reason}`)
} else {
  const dir = mounted.dir
  // Registered first, so it runs last: after the sidecar has closed its files.
  t.teardown(() => {
    try {
      execFileSync('umount', [dir], { stdio: 'pipe' })
    } catch {
      execFileSync('umount', ['-l', dir], { stdio: 'pipe' })
    }
    rmdirSync(dir)
  })
  const amqp = await directAmqp(t, SHARED_BROKER_URL)

  t.test('a full disk answers 503 SPOOL_UNAVAILABLE, keeps every 202, and takes 202s again once drained, with no restart', async (t) => {
    const { proxy, q, url } = await proxiedQueue(t, amqp, 'spool-disk')
    await proxy.setDown(true)
    const sc = await startSidecar(t, { amqp: { urls: [url] }, publish: { spool: { dir } } })
    const body = (id: string) => id.padEnd(4096, '.')
    const ok: string[] = []
    let full: Awaited<ReturnType<typeof request>> | undefined
    for (let i = 0; i < 200 && !full; i++) {
      const id = `fill-${i}`
      const r = await accepted(sc.api, q, id, body(id))
      if (r.status === 202) ok.push(id)
      else full = r
    }
    t.equal(full?.status, 503, 'the disk filled before 200 records of 4 KB')
    t.equal(full && errorCode(full), 'SPOOL_UNAVAILABLE', 'a full disk is a disk error, not the maxBytes bound')
    t.ok(full?.headers['retry-after'], 'with Retry-After')
    t.ok(ok.length > 10, `${ok.length} answered 202 before the disk filled`)
    const again = await accepted(sc.api, q, 'still-full', body('still-full'))
    t.equal(again.status, 503, 'still full while the broker is away')

    await proxy.setDown(false)
    const read = await amqp.drainUntil(q, ok.length, 60_000)
    const got = new Set(read.map((m) => m.properties.messageId as string))
    t.same(
      ok.filter((id) => !got.has(id)),
      [],
      `every one of the ${ok.length} answered 202 reached the queue`,
    )
    t.notOk(got.has('still-full'), 'a message answered 503 was not sent')
    await waitFor(async () => (await spoolMessages(sc.api)) === 0, { timeoutMs: 30_000, what: 'the spool to drain' })

    // More bytes than the disk holds, one at a time once the spool is empty:
    // the disk is reused without a restart.
    const more = Array.from({ length: ok.length + 5 }, (_, i) => `after-${i}`)
    for (const id of more) {
      const r = await accepted(sc.api, q, id, body(id))
      t.equal(r.status, 202, `${id}: ${r.status} ${errorCode(r) ?? ''}`)
      if (r.status !== 202) break
      await waitFor(async () => (await spoolMessages(sc.api)) === 0, { timeoutMs: 30_000, what: `${id} to be confirmed` })
    }
    const after = await amqp.drainUntil(q, more.length, 60_000)
    t.same(new Set(after.map((m) => m.properties.messageId)), new Set(more), 'and they reach the queue')
  })
}
