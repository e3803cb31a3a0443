/**
 * An append-only log of records in segment files (`<16-digit seq>.seg`), on
 * plain node:fs with fdatasync. Why this and not SQLite: the spool only ever
 * appends at the tail, reads in order and drops whole segments, so a segment
 * log is the whole job in a few hundred lines, with no native module (the
 * image's build stage needs no compiler) and group commit that is just "one
 * writev + one fdatasync per batch".
 *
 * Durability: append() resolves only after the record's bytes and the
 * segment's directory entry are on disk. Concurrent appends share one
 * fdatasync (group commit). A segment is deleted when it is sealed and every
 * record in it was released. How many leading records of a segment were
 * released is written to `<seq>.ack` a few times a second (no fsync: it
 * survives a crash of the process, and a stale one only means more
 * duplicates); after a crash, the records past it are sent again (some may
 * have been confirmed already: duplicates, never loss).
 *
 * Recovery at open: each segment is read through; a torn tail (a write cut by
 * the crash) or a corrupt record ends that segment there, the rest is
 * truncated away, and the dropped bytes are reported.
 */
import { mkdir, open, readdir, readFile, rm, writeFile, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { decodeRecord, RECORD_HEADER_BYTES, type SpoolRecord } from './record.js'

/** Appends go to a new segment past this size; smaller segments are freed sooner. */
export const SEGMENT_BYTES = 8 * 1024 * 1024
const READ_CHUNK_BYTES = 1024 * 1024
const NAME_RE = /^(\d{16})\.seg$/
const ACK_WRITE_INTERVAL_MS = 200

interface Segment {
  seq: number
  path: string
  /** Bytes of whole records (for the active segment: durable ones). */
  size: number
  records: number
  released: number
  sealed: boolean
  /** Bytes of this segment handed out by read(). */
  readOffset: number
  /** Records handed out by read() (the next one's index). */
  readCount: number
  /** Leading records released (all of 0..ackPrefix-1). */
  ackPrefix: number
  /** Released records past the prefix, waiting for the gap before them. */
  ackedAhead: Set<number>
  ackDirty: boolean
}

export interface RecordRef {
  segment: Segment
  index: number
}

export interface Recovery {
  segments: number
  records: number
  droppedBytes: number
  problems: string[]
}

export class SpoolOpenError extends Error {}

export class SegmentLog {
  #segments: Segment[] = []
  #active: Segment | undefined
  #fd: FileHandle | undefined
  #pending: Array<{ buf: Buffer; resolve: () => void; reject: (e: Error) => void }> = []
  #pendingBytes = 0
  #committing = false
  #closed = false
  #ackTimer: NodeJS.Timeout | undefined
  #nextSeq = 1

  private constructor(readonly dir: string) {}

  /** Opens (creating) the directory, recovers what it holds, and starts a fresh segment for appends. */
  static async open(dir: string): Promise<{ log: SegmentLog; recovery: Recovery }> {
    const log = new SegmentLog(dir)
    let recovery: Recovery
    try {
      await mkdir(dir, { recursive: true })
      recovery = await log.#recover()
      await log.#startSegment()
    } catch (err) {
      await log.close().catch(() => {})
      throw new SpoolOpenError(`publish.spool.dir "${dir}" cannot be used: ${(err as Error).message}`, { cause: err })
    }
    return { log, recovery }
  }

  /** Records not yet released (pending appends not counted). */
  get records(): number {
    let n = 0
    for (const s of this.#segments) n += s.records - s.released
    return n
  }

  /** Bytes on disk plus bytes waiting to be written. */
  get bytes(): number {
    let n = this.#pendingBytes
    for (const s of this.#segments) n += s.size
    return n
  }

  /** Appends one encoded record; resolves when it is durable. */
  append(buf: Buffer): Promise<void> {
    if (this.#closed) return Promise.reject(new Error('the spool is closed'))
    return new Promise((resolve, reject) => {
      this.#pending.push({ buf, resolve, reject })
      this.#pendingBytes += buf.length
      void this.#commit()
    })
  }

  /** Reads records not yet handed out, in append order, up to the given bounds. */
  async read(maxRecords: number, maxBytes: number): Promise<Array<{ record: SpoolRecord; ref: RecordRef }>> {
    const out: Array<{ record: SpoolRecord; ref: RecordRef }> = []
    let bytes = 0
    for (const seg of this.#segments) {
      while (seg.readOffset < seg.size && out.length < maxRecords && bytes < maxBytes) {
        const chunk = await this.#readAt(seg, seg.readOffset, Math.min(READ_CHUNK_BYTES, seg.size - seg.readOffset))
        let o = 0
        let progressed = false
        while (o < chunk.length && out.length < maxRecords && bytes < maxBytes) {
          const d = decodeRecord(chunk, o)
          if (d.kind === 'incomplete') {
            if (o === 0) {
              // One record larger than a chunk: read exactly it.
              const whole = await this.#readAt(seg, seg.readOffset, d.need)
              const again = decodeRecord(whole, 0)
              if (again.kind !== 'record') throw new Error(`spool segment ${seg.path} changed under the reader`)
              out.push({ record: again.record, ref: { segment: seg, index: seg.readCount++ } })
              bytes += again.bytes
              o = again.bytes
              progressed = true
            }
            break
          }
          // Recovery checked every byte up to seg.size: anything else is a bug or tampering.
          if (d.kind === 'corrupt') throw new Error(`spool segment ${seg.path} is corrupt at ${seg.readOffset + o}: ${d.reason}`)
          out.push({ record: d.record, ref: { segment: seg, index: seg.readCount++ } })
          bytes += d.bytes
          o += d.bytes
          progressed = true
        }
        seg.readOffset += o
        if (!progressed) break
      }
      if (out.length >= maxRecords || bytes >= maxBytes || seg.readOffset < seg.size) break
    }
    return out
  }

  /** The broker has the record (or it was refused for good): it may go. */
  release(ref: RecordRef): void {
    const seg = ref.segment
    seg.released++
    if (ref.index === seg.ackPrefix) {
      seg.ackPrefix++
      while (seg.ackedAhead.delete(seg.ackPrefix)) seg.ackPrefix++
    } else {
      seg.ackedAhead.add(ref.index)
    }
    seg.ackDirty = true
    this.#ackTimer ??= setTimeout(() => void this.#writeAcks(), ACK_WRITE_INTERVAL_MS).unref()
    void this.#dropIfDone(seg)
  }

  /** Stops appends, waits for pending ones, closes the file. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    while (this.#committing) await new Promise((r) => setImmediate(r))
    clearTimeout(this.#ackTimer)
    await this.#writeAcks()
    const fd = this.#fd
    this.#fd = undefined
    await fd?.close()
  }

  async #recover(): Promise<Recovery> {
    const all = await readdir(this.dir)
    const names = all.filter((n) => NAME_RE.test(n)).sort()
    // Sequence numbers are never reused, so an ack file can never apply to a newer segment.
    for (const n of all) {
      const seq = /^(\d{16})\.(seg|ack)$/.exec(n)?.[1]
      if (seq !== undefined) this.#nextSeq = Math.max(this.#nextSeq, Number(seq) + 1)
      if (n.endsWith('.ack') && !names.includes(n.replace(/\.ack$/, '.seg'))) await rm(join(this.dir, n), { force: true })
    }
    const recovery: Recovery = { segments: names.length, records: 0, droppedBytes: 0, problems: [] }
    for (const name of names) {
      const path = join(this.dir, name)
      const fd = await open(path, 'r+')
      try {
        const { size: fileSize } = await fd.stat()
        const buf = Buffer.alloc(fileSize)
        await fd.read(buf, 0, fileSize, 0)
        let o = 0
        let records = 0
        while (o < fileSize) {
          const d = decodeRecord(buf, o)
          if (d.kind !== 'record') {
            recovery.problems.push(`${name}: ${d.kind === 'corrupt' ? d.reason : 'torn record'} at byte ${o}; ${fileSize - o} bytes dropped`)
            break
          }
          o += d.bytes
          records++
        }
        if (o < fileSize) {
          recovery.droppedBytes += fileSize - o
          await fd.truncate(o)
          await fd.datasync()
        }
        const seq = Number(NAME_RE.exec(name)?.[1])
        // Skip what the broker already has, as far as the last ack write knew.
        const acked = Math.min(records, await readAck(ackPath(path)))
        let readOffset = 0
        for (let i = 0; i < acked; i++) readOffset += RECORD_HEADER_BYTES + buf.readUInt32LE(readOffset)
        recovery.records += records - acked
        const seg: Segment = { seq, path, size: o, records, released: acked, sealed: true, readOffset, readCount: acked, ackPrefix: acked, ackedAhead: new Set(), ackDirty: false }
        if (acked === records) {
          await this.#remove(seg)
          continue
        }
        this.#segments.push(seg)
      } finally {
        await fd.close()
      }
    }
    return recovery
  }

  async #startSegment(): Promise<void> {
    const seq = this.#nextSeq++
    const path = join(this.dir, `${String(seq).padStart(16, '0')}.seg`)
    const fd = await open(path, 'wx+')
    // The new file's directory entry must be durable before any record in it is acknowledged.
    await syncDir(this.dir)
    const old = this.#fd
    if (this.#active) this.#active.sealed = true
    const seg: Segment = { seq, path, size: 0, records: 0, released: 0, sealed: false, readOffset: 0, readCount: 0, ackPrefix: 0, ackedAhead: new Set(), ackDirty: false }
    this.#segments.push(seg)
    this.#active = seg
    this.#fd = fd
    await old?.close()
    // Awaited: a retry after a full disk needs the space back first.
    if (this.#segments.length > 1) for (const s of this.#segments.slice(0, -1)) await this.#dropIfDone(s)
  }

  async #commit(): Promise<void> {
    if (this.#committing) return
    this.#committing = true
    try {
      while (this.#pending.length > 0 && !this.#closed) {
        if ((this.#active?.size ?? 0) >= SEGMENT_BYTES) await this.#startSegment()
        const batch = this.#pending.splice(0)
        const total = batch.reduce((n, b) => n + b.buf.length, 0)
        const seg = this.#active as Segment
        const fd = this.#fd as FileHandle
        try {
          const { bytesWritten } = await fd.writev(batch.map((b) => b.buf), seg.size)
          if (bytesWritten !== total) throw new Error(`short write (${bytesWritten} of ${total} bytes; disk full?)`)
          await fd.datasync()
        } catch (err) {
          // Leave the segment as it was: a partial batch must not be read back.
          await fd.truncate(seg.size).catch(() => {})
          if (seg.size > 0 && seg.released === seg.records && seg.readOffset === seg.size) {
            // The active segment is sealed only at SEGMENT_BYTES, so on a volume
            // smaller than that a drained spool would keep the disk full for good.
            // Everything in it is confirmed: start a new segment, free this one,
            // and try the batch once more.
            const retried = await this.#startSegment().then(
              () => true,
              () => false,
            )
            if (retried) {
              this.#pending.unshift(...batch)
              continue
            }
          }
          this.#pendingBytes -= total
          for (const b of batch) b.reject(err as Error)
          continue
        }
        seg.size += total
        seg.records += batch.length
        this.#pendingBytes -= total
        for (const b of batch) b.resolve()
      }
    } finally {
      this.#committing = false
      for (const b of this.#closed ? this.#pending.splice(0) : []) b.reject(new Error('the spool is closed'))
    }
  }

  async #dropIfDone(seg: Segment): Promise<void> {
    if (!seg.sealed || seg.released < seg.records || seg.readOffset < seg.size) return
    const i = this.#segments.indexOf(seg)
    if (i < 0) return
    this.#segments.splice(i, 1)
    await this.#remove(seg)
  }

  async #remove(seg: Segment): Promise<void> {
    // The ack file last: a crash in between leaves a segment whose records are all skipped.
    await rm(seg.path, { force: true })
    await rm(ackPath(seg.path), { force: true })
  }

  async #writeAcks(): Promise<void> {
    this.#ackTimer = undefined
    for (const seg of [...this.#segments]) {
      if (!seg.ackDirty) continue
      seg.ackDirty = false
      await writeFile(ackPath(seg.path), String(seg.ackPrefix)).catch(() => {})
    }
  }

  async #readAt(seg: Segment, position: number, length: number): Promise<Buffer> {
    const fd = seg === this.#active && this.#fd ? this.#fd : await open(seg.path, 'r')
    try {
      const buf = Buffer.alloc(length)
      const { bytesRead } = await fd.read(buf, 0, length, position)
      return bytesRead === length ? buf : buf.subarray(0, bytesRead)
    } finally {
      if (fd !== this.#fd) await fd.close()
    }
  }
}

const ackPath = (segmentPath: string) => segmentPath.replace(/\.seg$/, '.ack')

async function readAck(path: string): Promise<number> {
  const text = await readFile(path, 'utf8').catch(() => '0')
  const n = Number(text.trim())
  return Number.isInteger(n) && n > 0 ? n : 0
}

async function syncDir(dir: string): Promise<void> {
  const d = await open(dir, 'r')
  try {
    await d.sync()
  } finally {
    await d.close()
  }
}

export { RECORD_HEADER_BYTES }
