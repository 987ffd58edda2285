import { describe, expect, it } from 'vitest';
import { FLOAT64_COPY_EXACT } from '../../datapath/arena.js';

describe('arena', () => {
  it('Float64Array copies keep every NaN bit for bit, in the interpreter and in optimized code (FLOAT64_COPY_EXACT)', () => {
    expect(FLOAT64_COPY_EXACT).toBe(true);
    const n = 1 << 14;
    const w = new Uint32Array(n * 4);
    const f = new Float64Array(w.buffer);
    // NaNs of every kind: signalling and quiet, both signs, payloads from 1 bit to all ones.
    let seed = 12345;
    const rnd = () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0);
    for (let i = 0; i < n; i++) {
      const lo = i % 7 === 0 ? 1 : rnd();
      const hi = (i & 1 ? 0xfff00000 : 0x7ff00000) | (i % 3 === 0 ? 0 : rnd() & 0xfffff) | (i % 5 === 0 ? 0x80000 : 0);
      w[2 * i] = lo;
      w[2 * i + 1] = hi >>> 0;
    }
    // A straight run of 12, as the fast lane's hot loop copies a record; called until V8 optimizes it.
    const copy12 = (x: number, y: number) => {
      f[x] = f[y]; f[x + 1] = f[y + 1]; f[x + 2] = f[y + 2]; f[x + 3] = f[y + 3]; f[x + 4] = f[y + 4]; f[x + 5] = f[y + 5];
      f[x + 6] = f[y + 6]; f[x + 7] = f[y + 7]; f[x + 8] = f[y + 8]; f[x + 9] = f[y + 9]; f[x + 10] = f[y + 10]; f[x + 11] = f[y + 11];
    };
    let wrong = 0;
    for (let round = 0; round < 300; round++) {
      w.fill(0, 2 * n);
      for (let i = 0; i + 12 <= n; i += 12) copy12(n + i, i);
      for (let i = 0; i < 2 * (n - (n % 12)); i++) if (w[2 * n + i] !== w[i]) wrong++;
    }
    expect(wrong).toBe(0);
  });

});
