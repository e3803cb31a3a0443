/**
 * `npm run chaos -- --seconds N`: the Jepsen-style loss checker as a long run
 * (checker.ts). Exits 0 when lost = 0 and unexpected = 0, 1 when not, 2 on a
 * usage error or a harness failure.
 *
 *   --seconds N        how long faults cycle (default 300)
 *   --publishers K     HTTP publisher loops (default 4)
 *   --consumers C      WebSocket consumers (default 2)
 *   --rate R           messages per second per publisher at most (default 50)
 *   --seed S           replay a fault schedule
 *   --faults a,b,...   subset of reset,refuse,blackhole,broker-restart,forced-close,memory-alarm
 *   --quorum           use a quorum queue instead of a classic durable queue
 *   --spool            publish 202s (X-Ack: accepted) into a durable spool and add the
 *                      sidecar-kill fault (kill -9, restart on the same spool)
 *   --json             print the report as JSON too
 *   --keep             keep the work directory (sidecar log) even on success
 *   --sabotage         negative control: a direct consumer steals messages for 1 s;
 *                      the run must then FAIL with lost > 0
 */
import { parseArgs } from 'node:util'
import { formatReport, runChaos } from './checker.js'
import { FAULT_KINDS, isFaultKind, type FaultKind } from './faults.js'

function fail(message: string): never {
  process.stderr.write(`chaos: ${message}\n`)
  process.exit(2)
}

function positiveInt(name: string, v: string | undefined, dflt: number | undefined): number | undefined {
  if (v === undefined) return dflt
  const n = Number(v)
  if (!Number.isInteger(n) || n < 1) fail(`--${name} must be a positive integer, not "${v}"`)
  return n
}

let args
try {
  args = parseArgs({
    options: {
      seconds: { type: 'string' },
      publishers: { type: 'string' },
      consumers: { type: 'string' },
      rate: { type: 'string' },
      seed: { type: 'string' },
      faults: { type: 'string' },
      quorum: { type: 'boolean' },
      spool: { type: 'boolean' },
      json: { type: 'boolean' },
      keep: { type: 'boolean' },
      sabotage: { type: 'boolean' },
    },
    strict: true,
  }).values
} catch (err) {
  fail((err as Error).message)
}
let faults: FaultKind[] | undefined
if (args.faults !== undefined) {
  faults = args.faults.split(',').map((f) => f.trim())
    .map((f) => (isFaultKind(f) ? f : fail(`unknown fault "${f}"; known: ${FAULT_KINDS.join(', ')}`)))
}
const seconds = positiveInt('seconds', args.seconds, 300) as number
const log = (line: string) => process.stdout.write(`${line}\n`)
log(`chaos: ${seconds} s of rotating faults; private broker <- fault proxy <- sidecar process <- HTTP publishers / WebSocket consumers`)
try {
  const report = await runChaos({
    seconds,
    publishers: positiveInt('publishers', args.publishers, undefined),
    consumers: positiveInt('consumers', args.consumers, undefined),
    ratePerPublisher: positiveInt('rate', args.rate, undefined),
    seed: args.seed === undefined ? undefined : Number(args.seed),
    faults,
    queueType: args.quorum ? 'quorum' : 'classic',
    spool: args.spool === true,
    keepDir: args.keep === true,
    sabotage: args.sabotage === true,
    onProgress: log,
  })
  log('')
  log(formatReport(report))
  if (args.json) log(JSON.stringify(report))
  process.exit(report.ok ? 0 : 1)
} catch (err) {
  process.stderr.write(`chaos: the run could not complete: ${(err as Error).stack ?? String(err)}\n`)
  process.exit(2)
}
