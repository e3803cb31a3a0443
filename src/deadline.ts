/**
 * Races a promise against a timer: every lifecycle step that waits on the
 * network (a cancel, a channel close, a connection close) gets a deadline,
 * so a half-open link cannot hold shutdown until TCP keepalive gives up.
 */
export const TIMED_OUT = Symbol('timed out')

export async function withDeadline<T>(work: Promise<T>, ms: number): Promise<T | typeof TIMED_OUT> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<typeof TIMED_OUT>((resolve) => {
    timer = setTimeout(() => resolve(TIMED_OUT), ms)
  })
  try {
    return await Promise.race([work, timeout])
  } finally {
    clearTimeout(timer)
  }
}
