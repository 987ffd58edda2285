import { describe, expect, it } from 'vitest';
import { Bypass } from '../../datapath/bypass.js';

/** Runs `n` batches of `tries` tries with `hits` hits each (only the batches that try count); returns how many tried. */
function batches(b: Bypass, n: number, tries: number, hits: number): number {
  let tried = 0;
  for (let i = 0; i < n; i++) {
    if (!b.tries()) continue;
    tried++;
    b.count(tries, hits);
  }
  return tried;
}

describe('Bypass', () => {
  // window 1024 tries, bypassed under 1 hit in 64, one batch in 8 tries while bypassed, back at 1 in 16 over 64 tries or more.
  const make = () => new Bypass(1024, 64, 8, 16, 64);

  it('is judged over whole windows: under 1 hit in 64 it is bypassed, and then one batch in 8 tries', () => {
    const b = make();
    expect(batches(b, 3, 256, 0)).toBe(3); // 768 tries: not yet a window
    expect(b.bypassed).toBe(false);
    batches(b, 1, 256, 0);
    expect(b.bypassed).toBe(true);
    expect(batches(b, 64, 256, 0)).toBe(8);
    expect(b.bypassed).toBe(true);
  });

  it('a window at 1 in 64 or better keeps it (or puts it back) in use', () => {
    const b = make();
    batches(b, 4, 256, 4); // 16 in 1024: exactly 1 in 64
    expect(b.bypassed).toBe(false);
    batches(b, 4, 256, 3);
    expect(b.bypassed).toBe(true);
  });

  it('a batch that tries while bypassed and finds 1 in 16 ends it at once; one of fewer than 64 tries, or near the line, does not', () => {
    const b = make();
    batches(b, 4, 256, 0);
    expect(b.bypassed).toBe(true);
    // Near the line (1 in 32: above the 1 in 64 that judges a window, under the 1 in 16 that ends it at once):
    // the batches that try accumulate a window, which then puts it back.
    let tried = 0;
    while (b.bypassed && tried < 10) {
      if (!b.tries()) continue;
      tried++;
      b.count(256, 8);
    }
    expect(tried).toBe(4); // a window of 4 such batches, not the first of them
    expect(b.bypassed).toBe(false);
    batches(b, 4, 256, 0);
    expect(b.bypassed).toBe(true);
    // Few tries, all hits: not enough to judge by.
    while (!b.tries());
    b.count(63, 63);
    expect(b.bypassed).toBe(true);
    // 64 tries, 4 hits: 1 in 16, at once.
    while (!b.tries());
    b.count(64, 4);
    expect(b.bypassed).toBe(false);
    expect(batches(b, 16, 1, 1)).toBe(16); // in use: every batch tries
  });
});
