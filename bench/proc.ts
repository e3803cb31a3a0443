/**
 * CPU time and memory of another process, read from /proc (Linux). The
 * sidecar runs as a child process so these figures are its own, not the
 * load generator's.
 */
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'

let ticksPerSecond: number | undefined

function clockTicks(): number {
  if (ticksPerSecond === undefined) {
    try {
      ticksPerSecond = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100
    } catch {
      ticksPerSecond = 100
    }
  }
  return ticksPerSecond
}

/** User + system CPU seconds the process has used so far. */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  // Fields after the command name, which is in parentheses and may contain spaces.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  const utime = Number(fields[11])
  const stime = Number(fields[12])
  return (utime + stime) / clockTicks()
}

/** Resident set size now and at its peak, in MiB. */
export function memory(pid: number): { rssMB: number; peakRssMB: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN)
  return { rssMB: kb('VmRSS') / 1024, peakRssMB: kb('VmHWM') / 1024 }
}

/** Samples RSS while a case runs, so "under load" is the largest value seen, not a lucky moment. */
export class RssSampler {
  #max = 0
  #timer: NodeJS.Timeout | undefined

  constructor(private readonly pid: number) {}

  start(intervalMs = 100): void {
    this.#timer = setInterval(() => {
      try {
        this.#max = Math.max(this.#max, memory(this.pid).rssMB)
      } catch {
        // the process is gone; the case reports that itself
      }
    }, intervalMs)
    this.#timer.unref()
  }

  stop(): number {
    clearInterval(this.#timer)
    return this.#max
  }
}

/** Share of the last minute (%) in which some runnable task waited for a CPU (Linux PSI), or null without PSI. */
export function cpuPressure(): number | null {
  try {
    const m = /^some .*avg60=([\d.]+)/m.exec(readFileSync('/proc/pressure/cpu', 'utf8'))
    return m?.[1] === undefined ? null : Number(m[1])
  } catch {
    return null
  }
}
