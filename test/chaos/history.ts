/**
 * The Jepsen-style model of a chaos run (FAULTS.md "A Jepsen-style checker"):
 * every publish attempt with its outcome, every read with where it came from,
 * and the check that turns them into the figures. Pure bookkeeping, no I/O, so
 * the rules can be read (and unit-checked) on their own.
 *
 * Outcomes of a publish through the HTTP API:
 *   200                  -> confirmed: it MUST be read (else "lost")
 *   4xx, 503             -> rejected: not published; it must NOT be read (the
 *                           sidecar answers 503 only for messages it never sent:
 *                           BUFFER_FULL, UPSTREAM_BLOCKED, SHUTTING_DOWN)
 *   other 5xx, timeout   -> unknown: may or may not be read ("recovered" if read)
 * A read of an id never attempted is "unexpected". Lost and unexpected must be 0.
 */

export type Outcome = 'pending' | 'confirmed' | 'rejected' | 'unknown'
export type ReadVia = 'consumer' | 'drain'

interface Attempt {
  outcome: Outcome
  /** HTTP status, or 'timeout' / 'error:<code>' when there was no answer. */
  detail: string
}

export interface CheckResult {
  attempted: number
  confirmed: number
  /** 4xx and 503: not published. */
  rejected: number
  /** 502, 504, timeouts, transport errors. */
  unknown: number
  /** Confirmed but never read. Must be 0. */
  lost: number
  /** Read but never attempted (or not one of ours). Must be 0. */
  unexpected: number
  /** Ids read more than once. */
  duplicated: number
  /** Reads beyond the first, summed over all ids. */
  duplicateDeliveries: number
  /** Unknown outcome, and read after all. */
  recovered: number
  /** Answered 4xx or 503 (not published) yet read. Must be 0. */
  rejectedButRead: number
  /** Read with a body other than its id (corruption). Must be 0. */
  corrupted: number
  /** Distinct ids read, and deliveries by path. */
  read: number
  readByConsumers: number
  readByDrain: number
  /** Unknown and rejected outcomes by status/cause, e.g. {"504": 12, "timeout": 1}. */
  outcomesByDetail: Record<string, number>
  /** The recovered ones by the answer they got. */
  recoveredByDetail: Record<string, number>
  /** Up to 20 examples of each violation, for the report. */
  examples: { lost: string[]; unexpected: string[]; rejectedButRead: string[]; corrupted: string[] }
  ok: boolean
}

const EXAMPLES = 20

export class History {
  readonly #attempts = new Map<string, Attempt>()
  readonly #reads = new Map<string, number>()
  readonly #corrupted: string[] = []
  #readByConsumers = 0
  #readByDrain = 0
  // Running counters for progress lines (the check recomputes from scratch).
  counts = { attempted: 0, confirmed: 0, rejected: 0, unknown: 0, pending: 0, deliveries: 0 }

  attempt(id: string): void {
    if (this.#attempts.has(id)) throw new Error(`message id ${id} attempted twice: ids must be unique`)
    this.#attempts.set(id, { outcome: 'pending', detail: '' })
    this.counts.attempted++
    this.counts.pending++
  }

  /** Records the answer to an attempt: an HTTP status, or a string for no answer ('timeout', 'error:ECONNRESET'). */
  settle(id: string, answer: number | string): void {
    const a = this.#attempts.get(id)
    if (!a || a.outcome !== 'pending') throw new Error(`settling ${id}, which is not pending`)
    const notSent = typeof answer === 'number' && ((answer >= 400 && answer < 500) || answer === 503)
    // 202 only comes in --spool mode, where it promises the message is on disk.
    const outcome: Outcome = answer === 200 || answer === 202 ? 'confirmed' : notSent ? 'rejected' : 'unknown'
    a.outcome = outcome
    a.detail = String(answer)
    this.counts.pending--
    this.counts[outcome]++
  }

  read(id: string | undefined, body: string, via: ReadVia): void {
    const key = id ?? '(no message_id)'
    this.#reads.set(key, (this.#reads.get(key) ?? 0) + 1)
    if (id !== undefined && body !== id && this.#corrupted.length < 10_000) this.#corrupted.push(id)
    this.counts.deliveries++
    if (via === 'consumer') this.#readByConsumers++
    else this.#readByDrain++
  }

  /** Has every confirmed id been read at least once? */
  allConfirmedRead(): boolean {
    for (const [id, a] of this.#attempts) if (a.outcome === 'confirmed' && !this.#reads.has(id)) return false
    return true
  }

  check(): CheckResult {
    const r: CheckResult = {
      attempted: this.#attempts.size,
      confirmed: 0,
      rejected: 0,
      unknown: 0,
      lost: 0,
      unexpected: 0,
      duplicated: 0,
      duplicateDeliveries: 0,
      recovered: 0,
      rejectedButRead: 0,
      corrupted: this.#corrupted.length,
      read: this.#reads.size,
      readByConsumers: this.#readByConsumers,
      readByDrain: this.#readByDrain,
      outcomesByDetail: {},
      recoveredByDetail: {},
      examples: { lost: [], unexpected: [], rejectedButRead: [], corrupted: this.#corrupted.slice(0, EXAMPLES) },
      ok: false,
    }
    const add = (list: string[], id: string) => void (list.length < EXAMPLES && list.push(id))
    for (const [id, a] of this.#attempts) {
      const reads = this.#reads.get(id) ?? 0
      if (a.outcome !== 'confirmed') r.outcomesByDetail[a.detail] = (r.outcomesByDetail[a.detail] ?? 0) + 1
      switch (a.outcome) {
        case 'confirmed':
          r.confirmed++
          if (reads === 0) {
            r.lost++
            add(r.examples.lost, id)
          }
          break
        case 'rejected':
          r.rejected++
          if (reads > 0) {
            r.rejectedButRead++
            add(r.examples.rejectedButRead, id)
          }
          break
        case 'unknown':
        case 'pending': // never answered before the run ended: as unknown as it gets
          r.unknown++
          if (reads > 0) {
            r.recovered++
            r.recoveredByDetail[a.detail || 'no answer'] = (r.recoveredByDetail[a.detail || 'no answer'] ?? 0) + 1
          }
          break
      }
    }
    for (const [id, n] of this.#reads) {
      if (!this.#attempts.has(id)) {
        r.unexpected++
        add(r.examples.unexpected, id)
      }
      if (n > 1) {
        r.duplicated++
        r.duplicateDeliveries += n - 1
      }
    }
    r.ok = r.lost === 0 && r.unexpected === 0 && r.rejectedButRead === 0 && r.corrupted === 0
    return r
  }
}
