import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { FpoError } from '../../../datapath/errors.js';
import { FrameReader, MAX_FRAME, T_FINAL, T_HELLO, T_PAGES, jsonFrame, pagesFrame } from '../../../control/migration/wire.js';

describe('the migration wire', () => {
  it('frames come out whole however the bytes are cut', () => {
    const mem = new Uint8Array(8 * 4096).map((_, k) => k * 7);
    const bytes = Buffer.concat([jsonFrame(T_HELLO, { interface: 'vm1-eth0', destPort: 'vf1', size: 32768 }), pagesFrame(Uint32Array.of(3, 5), 2, mem, 0), jsonFrame(T_FINAL, {})]);
    fc.assert(fc.property(fc.array(fc.nat(bytes.length), { maxLength: 6 }), (cuts) => {
      const at = [0, ...cuts.sort((a, b) => a - b), bytes.length];
      const r = new FrameReader();
      const got = [];
      for (let k = 1; k < at.length; k++) got.push(...r.push(bytes.subarray(at[k - 1], at[k])));
      expect(got.map((f) => f.type)).toEqual([T_HELLO, T_PAGES, T_FINAL]);
      const p = got[1] as { n: number; body: Buffer };
      expect(p.n).toBe(2);
      expect(p.body.readUInt32LE(0)).toBe(3);
      expect(Buffer.compare(p.body.subarray(4, 4100), Buffer.from(mem.subarray(3 * 4096, 4 * 4096)))).toBe(0);
    }));
  });

  it('fuzz: any bytes give frames or an FpoError naming what was expected, never another exception', () => {
    const valid = Buffer.concat([jsonFrame(T_HELLO, { a: 1 }), pagesFrame(Uint32Array.of(1), 1, new Uint8Array(8192), 0)]);
    fc.assert(fc.property(fc.oneof(fc.uint8Array({ maxLength: 300 }), fc.array(fc.tuple(fc.nat(valid.length - 1), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 5 }).map((edits) => { const b = Buffer.from(valid); for (const [i, v] of edits) b[i] = v; return new Uint8Array(b); })), (b) => {
      try {
        new FrameReader().push(Buffer.from(b));
      } catch (e) {
        expect(e).toBeInstanceOf(FpoError);
        expect((e as FpoError).code).toBe('FPO_ERR_BAD_INPUT');
      }
    }), { numRuns: 1000 });
    const big = Buffer.alloc(8);
    big.writeUInt32LE(MAX_FRAME + 1, 0);
    expect(() => new FrameReader().push(big)).toThrow(/a frame of \d+ bytes \(expected 1\.\./);
  });
});
