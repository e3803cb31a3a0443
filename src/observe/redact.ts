/**
 * Secret hygiene. Broker passwords and API tokens must never reach a log line,
 * a status body or an error message (DESIGN.md section 6). Two layers: URLs are
 * redacted where they are rendered, and every registered secret is scrubbed
 * from log output as a backstop for messages we do not control (library errors).
 */

const REDACTED = '***'

/** amqp://user:secret@host/vhost -> amqp://user:***@host/vhost. Never throws. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url)
    if (u.password) u.password = REDACTED
    return u.toString()
  } catch {
    return url.replace(/\/\/([^:/@]*):[^@/]*@/, `//$1:${REDACTED}@`)
  }
}

/** Known secret strings, scrubbed from everything the logger writes. */
export class SecretRegistry {
  #secrets = new Set<string>()

  /** Registers the password of a URL (raw and percent-decoded forms). */
  addUrl(url: string): void {
    try {
      const u = new URL(url)
      if (u.password) {
        this.add(u.password)
        this.add(decodeURIComponent(u.password))
      }
    } catch {
      // An unparseable URL is rejected by config validation before it is used.
    }
  }

  add(secret: string): void {
    // Very short secrets would scrub innocent text; "guest" is the broker's public default.
    if (secret.length >= 4 && secret !== 'guest') this.#secrets.add(secret)
  }

  scrub(text: string): string {
    let out = text
    for (const s of this.#secrets) if (out.includes(s)) out = out.split(s).join(REDACTED)
    return out
  }

  get size(): number {
    return this.#secrets.size
  }
}
