/** Small statistics helpers: medians over repetitions, percentiles over latencies. */

export function median(values: readonly number[]): number {
  if (values.length === 0) return NaN
  const sorted = [...values].sort((x, y) => x - y)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2
}

/** Nearest-rank percentile (p in 0..100) of an already sorted array. */
export function percentileSorted(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil((p / 100) * sorted.length)))
  return sorted[rank - 1] as number
}

export interface Percentiles {
  p50: number
  p90: number
  p99: number
  count: number
}

export function percentiles(values: readonly number[]): Percentiles {
  const sorted = Float64Array.from(values).sort()
  const arr = Array.from(sorted)
  return { p50: percentileSorted(arr, 50), p90: percentileSorted(arr, 90), p99: percentileSorted(arr, 99), count: arr.length }
}

/** Relative spread of repetitions: (max - min) / median, the noise figure the report shows. */
export function spread(values: readonly number[]): number {
  if (values.length < 2) return 0
  const m = median(values)
  return m === 0 ? 0 : (Math.max(...values) - Math.min(...values)) / m
}

export function round(n: number, digits = 2): number {
  const f = 10 ** digits
  return Math.round(n * f) / f
}
