/**
 * Deadlines without a timer per item: lease expiry (consume/leases.ts) and
 * publish deadlines (publish/publisher.ts). A consumer or publisher at
 * thousands of messages a second armed and cleared a setTimeout per message
 * (an object, a timer list insert and removal each). Here every length has one
 * ordered list and at most one timer: since the length is the same for every
 * entry of a list, an entry started later is due later, so entries are nearly
 * always appended at the tail and expire from the head. An entry whose start
 * was taken before an await (a publish that checked its exchange first) may
 * be due before the tail: it is inserted in order, scanning from the tail.
 * Removing an entry (ack, nack, confirm, extend) unlinks it in O(1) and leaves
 * the timer alone: a timer that finds nothing due re-arms for the new head, or
 * lets the list go when it is empty.
 *
 * Invariant: a list with entries has a timer armed no later than its head is due.
 */

/** A due time is compared with this clock: monotonic, so a wall-clock step neither fires nor holds leases. */
const monotonicNow = (): number => performance.now()

export interface ExpiryEntry<T> {
  readonly item: T
  /** monotonicNow() when the entry is due. */
  readonly due: number
  prev: ExpiryEntry<T> | undefined
  next: ExpiryEntry<T> | undefined
  /** The list holding it; undefined once it expired or was removed. */
  list: ExpiryList<T> | undefined
}

interface ExpiryList<T> {
  readonly ms: number
  head: ExpiryEntry<T> | undefined
  tail: ExpiryEntry<T> | undefined
  timer: NodeJS.Timeout | undefined
  /** now() when the armed timer fires. */
  armedFor: number
}

export class Expiries<T> {
  /** Lease length (ms) -> its list; a list is dropped when its timer finds it empty. */
  readonly #lists = new Map<number, ExpiryList<T>>()
  #size = 0

  constructor(
    private readonly onExpire: (item: T) => void,
    private readonly now: () => number = monotonicNow,
  ) {}

  /** Entries not yet expired or removed. */
  get size(): number {
    return this.#size
  }

  /** Lists (lease lengths) that currently hold a timer: one per distinct length in use. */
  get timers(): number {
    let n = 0
    for (const list of this.#lists.values()) if (list.timer) n++
    return n
  }

  /** The clock entries are due by (monotonic ms); a caller that takes a start before an await passes it to add(). */
  clock(): number {
    return this.now()
  }

  /** `item` expires `ms` after `start` (a clock() reading; now by default), unless removed first. */
  add(item: T, ms: number, start: number = this.now()): ExpiryEntry<T> {
    let list = this.#lists.get(ms)
    if (!list) this.#lists.set(ms, (list = { ms, head: undefined, tail: undefined, timer: undefined, armedFor: 0 }))
    const due = start + ms
    // Walk back from the tail past entries due later (none, unless start was taken before an await).
    let after = list.tail
    while (after && after.due > due) after = after.prev
    const before = after ? after.next : list.head
    const entry: ExpiryEntry<T> = { item, due, prev: after, next: before, list }
    if (after) after.next = entry
    else list.head = entry
    if (before) before.prev = entry
    else list.tail = entry
    this.#size++
    if (!list.timer) this.#arm(list, due)
    else if (due < list.armedFor) {
      // A new head due before the armed timer: fire for it instead.
      clearTimeout(list.timer)
      this.#arm(list, due)
    }
    return entry
  }

  /** Idempotent: an entry already expired or removed is left alone. */
  remove(entry: ExpiryEntry<T>): void {
    const list = entry.list
    if (!list) return
    if (entry.prev) entry.prev.next = entry.next
    else list.head = entry.next
    if (entry.next) entry.next.prev = entry.prev
    else list.tail = entry.prev
    entry.prev = entry.next = entry.list = undefined
    this.#size--
  }

  /** Stops every timer and forgets every entry (close); nothing expires afterwards. */
  clear(): void {
    for (const list of this.#lists.values()) {
      if (list.timer) clearTimeout(list.timer)
      for (let e = list.head; e; e = e.next) e.list = undefined
    }
    this.#lists.clear()
    this.#size = 0
  }

  #arm(list: ExpiryList<T>, due: number): void {
    list.armedFor = due
    list.timer = setTimeout(() => this.#fire(list), Math.max(0, Math.ceil(due - this.now())))
    list.timer.unref()
  }

  #fire(list: ExpiryList<T>): void {
    list.timer = undefined
    const now = this.now()
    for (let e = list.head; e && e.due <= now; e = list.head) {
      this.remove(e)
      this.onExpire(e.item)
    }
    // An onExpire that added to this list armed its timer already.
    if (list.timer) return
    // Node's timer clock and performance.now() may differ by a fraction of a millisecond: re-arm for what is left.
    if (list.head) this.#arm(list, Math.max(now + 1, list.head.due))
    else if (this.#lists.get(list.ms) === list) this.#lists.delete(list.ms)
  }
}
