/** The shape of bench/results/latest.json (version 1). */
import type { Cores } from './meter.js'
import type { Percentiles } from './stats.js'

export interface RepResult {
  rate: number
  messages: number
  seconds: number
  errors: number
  firstError?: string
  cores?: Cores
  /** Sidecar CPU seconds per 1,000 messages (sidecar cases only). */
  sidecarCpuPer1000?: number
}

export interface CaseResult {
  id: string
  title: string
  reps: RepResult[]
  /** Median msg/s over the repetitions; null when skipped or failed. */
  median: number | null
  /** (max - min) / median over the repetitions. */
  spread: number | null
  /** The case this one is compared with: (a) for publishing, direct consume for the sidecar's consume. */
  baseline: string | null
  /** Median over repetitions of rate / the baseline's rate in the same repetition. */
  ratio: number | null
  sidecarCpuPer1000: number | null
  skipped?: string
}

export interface LatencyRep {
  direct: Percentiles
  sidecar: Percentiles
  added: { p50: number; p90: number; p99: number }
  errors: number
  firstError?: string
  sidecarCpuPer1000?: number
  cores?: Cores
}

export interface LatencyResult {
  rate: number
  reps: LatencyRep[]
  /** Medians over repetitions, milliseconds. */
  direct: { p50: number; p90: number; p99: number } | null
  sidecar: { p50: number; p90: number; p99: number } | null
  added: { p50: number; p90: number; p99: number } | null
  /** Sidecar cores used at this rate = CPU seconds per 1,000 messages at 1,000 msg/s. */
  sidecarCpuPer1000: number | null
  skipped?: string
}

export interface Resources {
  idleRssMB: number | null
  idleRssAfterLoadMB: number | null
  /** Median over repetitions of the largest RSS sampled (every 100 ms) while the cases of a repetition ran. */
  loadRssMB: number | null
  /** The largest RSS sampled in each repetition. */
  loadRssReps: number[]
  peakRssMB: number | null
  skipped?: string
}

export interface Target {
  id: string
  description: string
  actual: number | null
  limit: number
  comparison: '>=' | '<='
  pass: boolean | null
}

export interface Machine {
  nproc: number
  cpuModel: string
  memoryGB: number
  os: string
  node: string
  rabbitmq: string
  erlang: string
  loadAverageStart: number[]
  loadAverageEnd: number[]
  /** /proc/pressure/cpu "some avg60" (% of time runnable tasks waited for a CPU): how contended the machine was. */
  cpuPressureStart: number | null
  cpuPressureEnd: number | null
}

export interface BenchResults {
  version: 1
  startedAt: string
  finishedAt: string
  command: string
  smoke: boolean
  settings: {
    seconds: number
    warmupSeconds: number
    reps: number
    bodyBytes: number
    publishWindow: number
    httpConcurrency: number
    batchSize: number
    batchConcurrency: number
    prefetch: number
    consumeMessages: number
    latencyRate: number
    latencySeconds: number
    /** Extra node flags the sidecar ran with (--node-arg). */
    sidecarNodeArgs: string[]
  }
  broker: { kind: 'private' | 'external'; plugins: string[] }
  machine: Machine
  cases: CaseResult[]
  latency: LatencyResult
  resources: Resources
  targets: Target[]
  skipped: { id: string; reason: string }[]
}
