/**
 * The faults the chaos checker cycles through (issue 4, FAULTS.md): each is an
 * inject and a heal against the fault proxy between the sidecar and its
 * private broker, or against the broker itself.
 */
import type { PrivateBroker } from '../fixtures/broker.js'
import type { FaultProxy } from '../fixtures/fault-proxy.js'

export const FAULT_KINDS = ['reset', 'refuse', 'blackhole', 'broker-restart', 'forced-close', 'memory-alarm', 'sidecar-kill'] as const
/** Faults that need --spool: without a spool a killed sidecar loses its 202s by design. */
export const SPOOL_ONLY_FAULTS: readonly FaultKind[] = ['sidecar-kill']
export type FaultKind = (typeof FAULT_KINDS)[number]

export interface FaultTargets {
  proxy: FaultProxy
  broker: PrivateBroker
  /** kill -9 the sidecar process, and start it again on the same spool directory and ports. */
  sidecar?: { kill(): Promise<void>; restart(): Promise<void> }
}

export interface Fault {
  kind: FaultKind
  /** An instantaneous fault has nothing to hold or heal (reset, forced close). */
  instant: boolean
  inject(): Promise<void>
  heal(): Promise<void>
}

export function isFaultKind(s: string): s is FaultKind {
  return (FAULT_KINDS as readonly string[]).includes(s)
}

export function makeFault(kind: FaultKind, { proxy, broker, sidecar }: FaultTargets): Fault {
  const noop = async () => {}
  switch (kind) {
    case 'reset':
      // A real RST on every live link, both ways (seeds: econnreset).
      return { kind, instant: true, inject: async () => proxy.resetPeers('both'), heal: noop }
    case 'refuse':
      // Live links reset, new connections refused (ECONNREFUSED) until healed.
      return { kind, instant: false, inject: () => proxy.setDown(true, 'refuse'), heal: () => proxy.setDown(false) }
    case 'blackhole':
      // Sockets stay open, nothing flows: only heartbeats notice (if it lasts long enough).
      return { kind, instant: false, inject: async () => proxy.setBlackhole(true), heal: async () => proxy.setBlackhole(false) }
    case 'broker-restart':
      return { kind, instant: false, inject: () => broker.stopApp(), heal: () => broker.startApp() }
    case 'forced-close':
      // 320 CONNECTION_FORCED on every connection (rabbitmqctl close_all_connections).
      return { kind, instant: true, inject: () => broker.closeAllConnections('chaos checker'), heal: noop }
    case 'memory-alarm':
      // Publishing connections are blocked; consumers and acks keep going.
      return { kind, instant: false, inject: () => broker.setMemoryAlarm(true), heal: () => broker.setMemoryAlarm(false) }
    case 'sidecar-kill':
      // A crash of the sidecar (OOM kill, node trouble): its spool must keep every 202.
      if (!sidecar) throw new Error('the sidecar-kill fault needs --spool')
      return { kind, instant: false, inject: () => sidecar.kill(), heal: () => sidecar.restart() }
  }
}

/** Deterministic PRNG (mulberry32), so a run's fault schedule can be replayed with --seed. */
export function rng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

export function shuffled<T>(items: readonly T[], random: () => number): T[] {
  const out = [...items]
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1))
    ;[out[i], out[j]] = [out[j] as T, out[i] as T]
  }
  return out
}
