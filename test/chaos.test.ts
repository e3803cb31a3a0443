/**
 * The Jepsen-style loss checker (test/chaos/checker.ts), 60-second variant:
 * a private broker behind a fault proxy, the sidecar as a separate process,
 * 4 HTTP publishers and 2 WebSocket consumers, faults rotating every few
 * seconds (every kind at least once). Passes when lost = 0 and unexpected = 0.
 * Long runs: `npm run chaos -- --seconds 300`.
 *
 * The first subtest checks the checker's own rules, so a broken model cannot
 * pass the run vacuously.
 */
import t from 'tap'
import { formatReport, runChaos } from './chaos/checker.js'
import { FAULT_KINDS, SPOOL_ONLY_FAULTS } from './chaos/faults.js'
import { History } from './chaos/history.js'

t.test('the model flags lost, unexpected, duplicated and recovered messages', async (t) => {
  const h = new History()
  for (const id of ['a', 'b', 'c', 'd', 'e']) h.attempt(id)
  h.settle('a', 200) // confirmed, read twice: duplicated
  h.settle('b', 200) // confirmed, never read: lost
  h.settle('c', 504) // unknown, read: recovered
  h.settle('d', 'timeout') // unknown, not read: fine
  h.settle('e', 400) // rejected, read: a violation
  h.read('a', 'a', 'consumer')
  h.read('a', 'a', 'drain')
  h.read('c', 'c', 'drain')
  h.read('e', 'e', 'consumer')
  h.read('zz', 'zz', 'consumer') // never attempted: unexpected
  h.read(undefined, 'x', 'drain') // not ours at all: unexpected
  const r = h.check()
  t.match(r, { attempted: 5, confirmed: 2, unknown: 2, rejected: 1, lost: 1, unexpected: 2, duplicated: 1, duplicateDeliveries: 1, recovered: 1, rejectedButRead: 1, ok: false })
  t.same(r.examples.lost, ['b'])
  t.same(r.outcomesByDetail, { '504': 1, timeout: 1, '400': 1 })
  t.same(r.recoveredByDetail, { '504': 1 })
  const clean = new History()
  clean.attempt('p0-0')
  clean.settle('p0-0', 200)
  t.notOk(clean.allConfirmedRead())
  clean.read('p0-0', 'p0-0', 'consumer')
  t.ok(clean.allConfirmedRead())
  t.ok(clean.check().ok, 'a clean history passes')
  t.throws(() => clean.attempt('p0-0'), /attempted twice/)
})

t.test('60 s of rotating faults: lost = 0 and unexpected = 0', async (t) => {
  let last = ''
  const report = await runChaos({
    seconds: 45,
    progressEveryMs: 10_000,
    onProgress: (line) => {
      last = line
      t.comment(line)
    },
  })
  t.comment(`\n${formatReport(report)}`)
  t.equal(report.lost, 0, 'lost: every publish answered 200 was read')
  t.equal(report.unexpected, 0, 'unexpected: nothing read that was never published')
  t.equal(report.rejectedButRead, 0, 'nothing answered 4xx was read')
  t.equal(report.corrupted, 0, 'every body matches its message id')
  t.ok(report.ok, 'the checker passes')
  // The run must have exercised something, or the above would pass vacuously.
  t.ok(report.confirmed >= 200, `publishes were confirmed (${report.confirmed})`)
  t.ok(report.readByConsumers >= report.confirmed / 2, `the WebSocket consumers did the reading (${report.readByConsumers} deliveries)`)
  for (const kind of FAULT_KINDS.filter((k) => !SPOOL_ONLY_FAULTS.includes(k))) t.ok((report.faultsInjected[kind] ?? 0) >= 1, `fault "${kind}" was injected`)
  const disconnects = Object.values(report.sidecarDisconnects).flatMap((m) => Object.values(m)).reduce((a, b) => a + b, 0)
  t.ok(disconnects >= 4, `the faults cut the sidecar's links (${disconnects} disconnects)`)
  t.ok(last.length > 0, 'progress was reported')
})

t.test('--spool: 202s through resets, refusals and kill -9 of the sidecar: lost = 0', async (t) => {
  const report = await runChaos({
    seconds: 25,
    spool: true,
    faults: ['sidecar-kill', 'reset', 'refuse'],
    progressEveryMs: 10_000,
    onProgress: (line) => t.comment(line),
  })
  t.comment(`\n${formatReport(report)}`)
  t.equal(report.lost, 0, 'lost: every publish answered 202 was read')
  t.equal(report.unexpected, 0, 'unexpected: nothing read that was never published')
  t.ok((report.faultsInjected['sidecar-kill'] ?? 0) >= 1, 'the sidecar was killed at least once')
  t.ok(report.confirmed >= 100, `publishes were accepted (${report.confirmed})`)
  t.ok(report.ok, 'the checker passes')
})
