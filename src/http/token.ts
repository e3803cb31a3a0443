/**
 * The API bearer token (api.tokenFile). The file is read at start (a missing,
 * empty or too short token stops the start: fail closed), then read again at
 * most once per TOKEN_RECHECK_MS, lazily when a request arrives, so a rotated
 * token applies without a restart and no timer runs. If a later read fails or
 * finds an invalid token, the last good token stays in force and a warning is
 * logged (a half-written file during rotation must not open the API).
 *
 * Comparison is constant time: the presented and the expected token are both
 * hashed to fixed-length SHA-256 digests and compared with timingSafeEqual, so
 * neither the content nor the length of the token leaks through timing.
 */
import { createHash, timingSafeEqual } from 'node:crypto'
import { readFileSync } from 'node:fs'
import type { Logger } from '../observe/logger.js'
import type { SecretRegistry } from '../observe/redact.js'

/** How stale the token in memory may be after the file changed. */
export const TOKEN_RECHECK_MS = 1_000
/** Shorter tokens are refused: guessable, and too short for log scrubbing to be safe. */
export const MIN_TOKEN_LENGTH = 16
/** Visible ASCII only: the token travels in an HTTP header. */
const TOKEN_RE = /^[\x21-\x7e]+$/
const BEARER_RE = /^Bearer +([\x21-\x7e]+) *$/i

export class TokenFileError extends Error {
  override name = 'TokenFileError'
}

const digest = (s: string): Buffer => createHash('sha256').update(s, 'utf8').digest()

/** Reads and validates the token; the message never contains the file's content. */
function readToken(file: string): string {
  let raw: string
  try {
    raw = readFileSync(file, 'utf8')
  } catch (err) {
    throw new TokenFileError(`api.tokenFile ${file}: cannot read it (${(err as NodeJS.ErrnoException).code ?? 'error'})`, { cause: err })
  }
  const token = raw.trim()
  if (token.length < MIN_TOKEN_LENGTH || !TOKEN_RE.test(token)) {
    throw new TokenFileError(`api.tokenFile ${file}: the token must be at least ${MIN_TOKEN_LENGTH} visible ASCII characters (no spaces)`)
  }
  return token
}

/** The token from an `Authorization: Bearer <token>` header, if the header has that shape. */
export function bearerToken(authorization: string | undefined): string | undefined {
  if (authorization === undefined) return undefined
  return BEARER_RE.exec(authorization)?.[1]
}

export class ApiToken {
  #digest: Buffer
  #checkedAt: number
  #failing = false
  #generation = 0
  #listeners = new Set<(generation: number) => void>()
  #timer: NodeJS.Timeout | undefined

  /** Throws TokenFileError when the file cannot be read or holds no valid token. */
  constructor(
    readonly file: string,
    private readonly secrets: SecretRegistry,
    private readonly log: Logger,
    private readonly recheckMs = TOKEN_RECHECK_MS,
  ) {
    const token = readToken(file)
    secrets.add(token)
    this.#digest = digest(token)
    this.#checkedAt = Date.now()
  }

  /** Bumped on every rotation: what was authenticated under an older one must go. */
  get generation(): number {
    return this.#generation
  }

  /** Calls `fn` after each rotation, with the new generation. Returns an unsubscribe. */
  onRotate(fn: (generation: number) => void): () => void {
    this.#listeners.add(fn)
    return () => this.#listeners.delete(fn)
  }

  /**
   * Re-reads the file every recheckMs even with no request arriving, so that long-lived
   * WebSockets opened with the old token are closed soon after a rotation. Unref'ed.
   */
  watch(): void {
    this.#timer ??= setInterval(() => this.#refresh(), this.recheckMs).unref()
  }

  unwatch(): void {
    clearInterval(this.#timer)
    this.#timer = undefined
  }

  /** True when the Authorization header carries the current token. */
  verify(authorization: string | undefined): boolean {
    this.#refresh()
    const presented = bearerToken(authorization)
    // Hash and compare even when nothing was presented, so every refusal costs the same.
    const same = timingSafeEqual(digest(presented ?? ''), this.#digest)
    return same && presented !== undefined
  }

  #refresh(): void {
    const now = Date.now()
    if (now - this.#checkedAt < this.recheckMs) return
    this.#checkedAt = now
    let token: string
    try {
      token = readToken(this.file)
    } catch (err) {
      if (!this.#failing) this.log.warn({ err: (err as Error).message }, 'could not re-read api.tokenFile; the previous token stays in force')
      this.#failing = true
      return
    }
    this.#failing = false
    const next = digest(token)
    if (next.equals(this.#digest)) return
    // Register before swapping, so the new token can never be logged unscrubbed.
    this.secrets.add(token)
    this.#digest = next
    this.#generation++
    this.log.info({ file: this.file }, 'api.tokenFile changed: the new API token is in force')
    for (const fn of this.#listeners) fn(this.#generation)
  }
}
