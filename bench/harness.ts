/**
 * Small helpers the benchmarks share: one JSON line per result, a warm-up
 * before timing, and the short mode CI uses (FPO_BENCH_SHORT=1: small N, so
 * the benchmarks run in the test suite and never rot; they assert nothing
 * about time).
 */
export const SHORT = process.env.FPO_BENCH_SHORT === '1';

export function emit(result: Record<string, unknown>): void {
  process.stdout.write(JSON.stringify({ ...result, short: SHORT || undefined }) + '\n');
}

/** Runs fn once to warm up, then `reps` times; returns the best seconds of one run. */
export function best(fn: () => void, reps = 3): number {
  fn();
  let min = Infinity;
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    fn();
    min = Math.min(min, (performance.now() - t0) / 1000);
  }
  return min;
}
