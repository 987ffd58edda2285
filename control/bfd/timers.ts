/**
 * Timers: one binary heap of deadlines for all BFD sessions and one
 * setTimeout armed for the earliest, instead of a setInterval per session
 * (a thousand sessions are a thousand heap entries, one timer). Cancelling
 * (every received packet re-arms a detection timer) marks the entry dead in
 * O(1); dead entries are dropped when they reach the top. Entries with the
 * same deadline run in the order they were set (the heap orders by deadline,
 * then by sequence number), so no session's timer is always served last.
 */
/**
 * A histogram of timer lateness in 10 µs buckets up to 1 s (beyond: the
 * last bucket; the maximum is kept exactly): O(1) to record and a fixed
 * 400 KB however long the run. It replaced an array of every sample, which
 * after a minute of 1000 sessions held ~1.4 M numbers, and whose copying and
 * sorting at the end of a hold stalled the BFD thread and its peer long
 * enough to take sessions down (measured: 34 at the end of one run).
 */
export class Lateness {
  private readonly buckets = new Uint32Array(100_000);
  count = 0;
  max = 0;

  record(ms: number): void {
    const i = Math.min(this.buckets.length - 1, Math.max(0, Math.floor(ms * 100)));
    this.buckets[i]++;
    this.count++;
    if (ms > this.max) this.max = ms;
  }

  /** The p-th percentile, ms (the upper edge of its bucket). */
  percentile(p: number): number {
    if (this.count === 0) return 0;
    const want = Math.ceil((p / 100) * this.count);
    let seen = 0;
    for (let i = 0; i < this.buckets.length; i++) {
      seen += this.buckets[i];
      if (seen >= want) return Math.min(this.max, (i + 1) / 100);
    }
    return this.max;
  }

  /** p50, p99 and max, ms, rounded to 0.01. */
  summary(): { p50: number; p99: number; max: number; samples: number } {
    const r2 = (x: number) => Number(x.toFixed(2));
    return { p50: r2(this.percentile(50)), p99: r2(this.percentile(99)), max: r2(this.max), samples: this.count };
  }

  reset(): void {
    this.buckets.fill(0);
    this.count = 0;
    this.max = 0;
  }
}

export class TimerHeap {
  private heap: { at: number; seq: number; fn: () => void; dead: boolean }[] = [];
  /** Live entries by handle: cancel marks an entry dead in O(1); fire skips the dead. */
  private readonly live = new Map<number, { dead: boolean }>();
  private seq = 0;
  private timer: NodeJS.Timeout | null = null;
  private armedAt = Infinity;
  /** How late callbacks ran (for the scale benchmark), while recordLateness is set. */
  readonly lateness = new Lateness();
  recordLateness = false;

  /** Runs fn at time `at` (ms, performance.now() clock); returns a handle for cancel. */
  at(at: number, fn: () => void): number {
    const e = { at, seq: ++this.seq, fn, dead: false };
    this.heap.push(e);
    this.live.set(e.seq, e);
    this.up(this.heap.length - 1);
    this.arm();
    return e.seq;
  }

  cancel(handle: number): void {
    const e = this.live.get(handle);
    if (!e) return;
    e.dead = true;
    this.live.delete(handle);
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.heap = [];
    this.live.clear();
    this.armedAt = Infinity;
  }

  private arm(): void {
    // Dead entries at the top need no timer of their own.
    while (this.heap.length && this.heap[0].dead) {
      const last = this.heap.pop()!;
      if (this.heap.length) {
        this.heap[0] = last;
        this.down(0);
      }
    }
    const next = this.heap[0];
    if (!next || next.at >= this.armedAt) return;
    if (this.timer) clearTimeout(this.timer);
    this.armedAt = next.at;
    this.timer = setTimeout(() => this.fire(), Math.max(0, next.at - performance.now()));
  }

  private fire(): void {
    this.timer = null;
    this.armedAt = Infinity;
    // The clock is read again after each callback: one that falls due while others run
    // runs in this turn, and its lateness counts the time they took. Entries set by this
    // turn's callbacks wait for the next turn, so a callback that re-arms at once cannot
    // keep the loop here for ever.
    let now = performance.now();
    const lastSeq = this.seq;
    while (this.heap.length && this.heap[0].at <= now + 0.5 && this.heap[0].seq <= lastSeq) {
      const e = this.heap[0];
      const last = this.heap.pop()!;
      if (this.heap.length) {
        this.heap[0] = last;
        this.down(0);
      }
      if (e.dead) continue;
      this.live.delete(e.seq);
      if (this.recordLateness) this.lateness.record(now - e.at);
      e.fn();
      now = performance.now();
    }
    this.arm();
  }

  private static before(a: { at: number; seq: number }, b: { at: number; seq: number }): boolean {
    return a.at < b.at || (a.at === b.at && a.seq < b.seq);
  }

  private up(i: number): void {
    const h = this.heap;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!TimerHeap.before(h[i], h[p])) break;
      [h[p], h[i]] = [h[i], h[p]];
      i = p;
    }
  }

  private down(i: number): void {
    const h = this.heap;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < h.length && TimerHeap.before(h[l], h[m])) m = l;
      if (r < h.length && TimerHeap.before(h[r], h[m])) m = r;
      if (m === i) return;
      [h[m], h[i]] = [h[i], h[m]];
      i = m;
    }
  }
}
