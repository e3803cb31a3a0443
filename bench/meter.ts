/**
 * Who used the CPU during a measured window: the sidecar, the broker and the
 * load generator (this process). On a small machine the three share the
 * cores, so these figures say what bounds a case.
 */
import { cpuSeconds } from './proc.js'

export interface Cores {
  /** CPU seconds per wall second (1.0 = one core busy). */
  sidecar?: number
  broker?: number
  harness: number
}

export class Meter {
  #start: { at: bigint; sidecar?: number; broker?: number; harness: NodeJS.CpuUsage } | undefined
  #result: { seconds: number; cpu: { sidecar?: number; broker?: number; harness: number } } | undefined

  constructor(private readonly pids: { sidecar?: number | undefined; broker?: number | undefined }) {}

  readonly edge = (edge: 'start' | 'end'): void => {
    if (edge === 'start') {
      this.#start = { at: process.hrtime.bigint(), ...this.#sample(), harness: process.cpuUsage() }
      return
    }
    const s = this.#start
    if (!s) return
    this.#start = undefined
    const now = this.#sample()
    const used = process.cpuUsage(s.harness)
    // Several windows (the latency case alternates slices) add up.
    const prev = this.#result ?? { seconds: 0, cpu: { harness: 0 } }
    const cpu: { sidecar?: number; broker?: number; harness: number } = { harness: prev.cpu.harness + (used.user + used.system) / 1e6 }
    if (s.sidecar !== undefined && now.sidecar !== undefined) cpu.sidecar = (prev.cpu.sidecar ?? 0) + now.sidecar - s.sidecar
    if (s.broker !== undefined && now.broker !== undefined) cpu.broker = (prev.cpu.broker ?? 0) + now.broker - s.broker
    this.#result = { seconds: prev.seconds + Number(process.hrtime.bigint() - s.at) / 1e9, cpu }
  }

  /** Cores used by each process over the window. */
  cores(): Cores | undefined {
    const r = this.#result
    if (!r) return undefined
    const per = (v: number | undefined) => (v === undefined ? undefined : v / r.seconds)
    const out: Cores = { harness: r.cpu.harness / r.seconds }
    const sidecar = per(r.cpu.sidecar)
    const broker = per(r.cpu.broker)
    if (sidecar !== undefined) out.sidecar = sidecar
    if (broker !== undefined) out.broker = broker
    return out
  }

  /** Sidecar CPU seconds spent per 1,000 messages over the window. */
  sidecarCpuPer1000(messages: number): number | undefined {
    const cpu = this.#result?.cpu.sidecar
    return cpu === undefined || messages === 0 ? undefined : (cpu / messages) * 1000
  }

  #sample(): { sidecar?: number; broker?: number } {
    const out: { sidecar?: number; broker?: number } = {}
    const read = (pid: number | undefined) => {
      if (pid === undefined) return undefined
      try {
        return cpuSeconds(pid)
      } catch {
        return undefined
      }
    }
    const sidecar = read(this.pids.sidecar)
    const broker = read(this.pids.broker)
    if (sidecar !== undefined) out.sidecar = sidecar
    if (broker !== undefined) out.broker = broker
    return out
  }
}
