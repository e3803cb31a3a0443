/** Command-line options of `npm run bench`, with their defaults. */

export const CASE_IDS = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j'] as const
export type CaseId = (typeof CASE_IDS)[number]

export interface BenchOptions {
  /** Measured seconds per throughput case and repetition. Default 5. */
  seconds: number
  /** Unmeasured warm-up before each measured window. Default 1 s. */
  warmupSeconds: number
  /** Repetitions; medians are reported. Default 3. */
  reps: number
  /** Cases to run. Default all. */
  only: ReadonlySet<CaseId>
  /** A few seconds in total, for CI: checks the harness works, not how fast anything is. */
  smoke: boolean
  /** Use this broker instead of a private node (e and f are then skipped: they need plugins). */
  brokerUrl: string | undefined
  /** Fixed publish rate of the latency case (h). Default 1000 msg/s. */
  latencyRate: number
  /** Measured seconds of the latency case per side and repetition. Default 10. */
  latencySeconds: number
  /** Messages per consume run (g). Default 30000. */
  consumeMessages: number
  /** Where the results JSON goes. Default bench/results/latest.json. */
  out: string
  /** Rewrite docs/benchmarks.svg and the generated part of docs/benchmarks.md. Default true, false with --smoke. */
  docs: boolean
  /** Run the sidecar under `node --cpu-prof` and keep the profile in this directory. */
  profileDir: string | undefined
  /** Extra node flags for the sidecar under test (V8 flags, --heap-prof), in order. Default none. */
  nodeArgs: string[]
  /** The arguments as given, for the record. */
  argv: string[]
}

export const USAGE = `npm run bench -- [options]

  --seconds <n>        measured seconds per case and repetition (default 5)
  --warmup <n>         warm-up seconds before each measurement (default 1)
  --reps <n>           repetitions; medians are reported (default 3)
  --only <ids>         comma-separated cases, e.g. a,b,c (default all: ${CASE_IDS.join(',')})
  --smoke              a few seconds in total, to check the harness works (no docs written)
  --broker-url <url>   use this broker instead of a private node (skips e and f)
  --latency-rate <n>   fixed rate for the latency case h (default 1000 msg/s)
  --latency-seconds <n> measured seconds per side of h (default 10)
  --consume <n>        messages per consume run, g (default 30000)
  --out <file>         results JSON (default bench/results/latest.json)
  --no-docs            do not rewrite docs/benchmarks.md and docs/benchmarks.svg
  --profile <dir>      run the sidecar with --cpu-prof and write the profile there
  --node-arg <flag>    a node flag for the sidecar under test, e.g. --node-arg=--max-semi-space-size=1
                       or --node-arg --heap-prof (repeatable)
`

export class UsageError extends Error {
  override name = 'UsageError'
}

export function parseOptions(argv: readonly string[]): BenchOptions {
  const smoke = argv.includes('--smoke')
  const o: BenchOptions = {
    seconds: smoke ? 0.5 : 5,
    warmupSeconds: smoke ? 0.2 : 1,
    reps: smoke ? 1 : 3,
    only: new Set(CASE_IDS),
    smoke,
    brokerUrl: undefined,
    latencyRate: 1000,
    latencySeconds: smoke ? 0.5 : 10,
    consumeMessages: smoke ? 1000 : 30_000,
    out: 'bench/results/latest.json',
    docs: !smoke,
    profileDir: undefined,
    nodeArgs: [],
    argv: [...argv],
  }
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i] as string
    // --node-arg=--flag=value: the value may itself start with "--".
    if (flag.startsWith('--node-arg=')) {
      o.nodeArgs.push(flag.slice('--node-arg='.length))
      continue
    }
    const value = () => {
      const v = argv[++i]
      if (v === undefined) throw new UsageError(`${flag} needs a value`)
      return v
    }
    const num = () => {
      const v = Number(value())
      if (!Number.isFinite(v) || v <= 0) throw new UsageError(`${flag} needs a positive number`)
      return v
    }
    switch (flag) {
      case '--smoke':
        break
      case '--seconds':
        o.seconds = num()
        break
      case '--warmup':
        o.warmupSeconds = num()
        break
      case '--reps':
        o.reps = Math.round(num())
        break
      case '--only': {
        const ids = value().split(',').map((s) => s.trim())
        for (const id of ids) if (!(CASE_IDS as readonly string[]).includes(id)) throw new UsageError(`unknown case "${id}" (cases: ${CASE_IDS.join(',')})`)
        o.only = new Set(ids as CaseId[])
        break
      }
      case '--broker-url':
        o.brokerUrl = value()
        break
      case '--latency-rate':
        o.latencyRate = num()
        break
      case '--latency-seconds':
        o.latencySeconds = num()
        break
      case '--consume':
        o.consumeMessages = Math.round(num())
        break
      case '--out':
        o.out = value()
        break
      case '--no-docs':
        o.docs = false
        break
      case '--profile':
        o.profileDir = value()
        break
      case '--node-arg':
        o.nodeArgs.push(value())
        break
      default:
        throw new UsageError(`unknown option ${flag}`)
    }
  }
  return o
}
