/**
 * Bypass: a cache or an index left alone while it finds nothing, judged a
 * batch at a time. Over each window of `window` tries its hit rate is
 * measured; below 1 in `hitInv` it is bypassed: batches skip it but one in
 * `probeEvery`, which tries and measures, and such a batch of at least
 * `backMin` tries that finds 1 in `backInv` or more ends the bypass at once
 * (with backInv below hitInv, a rate near the line does not turn it on and
 * off batch by batch). What is bypassed must only change where work is
 * done, never an answer. Used by the exact-match cache
 * (classifier/emc.ts) and the FPAG's covering index (control/batch-flows.ts).
 */
export class Bypass {
  /** True while bypassed. */
  bypassed = false;
  private winTries = 0;
  private winHits = 0;
  private batchNo = 0;

  constructor(
    private readonly window: number,
    private readonly hitInv: number,
    /** A power of two. */
    private readonly probeEvery: number,
    private readonly backInv: number,
    private readonly backMin: number,
  ) {}

  /** Per batch: whether this one tries (always while not bypassed; else one batch in probeEvery). */
  tries(): boolean {
    return !this.bypassed || (++this.batchNo & (this.probeEvery - 1)) === 0;
  }

  /** After a batch that tried: its tries and hits. */
  count(tries: number, hits: number): void {
    if (this.bypassed && tries >= this.backMin && hits * this.backInv >= tries) {
      // The batch that measured found hits again, clearly: on at once (not a window of such batches later).
      this.bypassed = false;
      this.winTries = 0;
      this.winHits = 0;
      return;
    }
    this.winTries += tries;
    this.winHits += hits;
    if (this.winTries < this.window) return;
    this.bypassed = this.winHits * this.hitInv < this.winTries;
    this.winTries = 0;
    this.winHits = 0;
  }
}
