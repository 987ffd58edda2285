import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MacTable } from '../../control/mac-table.js';

describe('MacTable', () => {
  it('answers as a Map keyed by the 48-bit MAC, across random sets, replacements and deletions (the two-word lookup too)', () => {
    // Few distinct MACs (collisions and reuse) from bytes that exercise the top bit and a shared prefix.
    const mac = fc.tuple(fc.constantFrom(0x02000000, 0xffffffff, 0x80000001, 0x0a0b0c0d), fc.integer({ min: 0, max: 40 })).map(([hi, lo]) => hi * 65536 + lo);
    const op = fc.tuple(fc.constantFrom('set', 'delete', 'get'), mac, fc.integer());
    fc.assert(fc.property(fc.array(op, { maxLength: 300 }), (ops) => {
      const t = new MacTable<number>();
      const m = new Map<number, number>();
      for (const [kind, k, v] of ops) {
        if (kind === 'set') { t.setMac(k, v); m.set(k, v); }
        else if (kind === 'delete') expect(t.deleteMac(k)).toBe(m.delete(k));
        expect(t.getMac(k)).toBe(m.get(k));
        expect(t.get(Math.floor(k / 65536), k % 65536)).toBe(m.get(k));
        expect(t.size).toBe(m.size);
      }
      for (const [k, v] of m) expect(t.getMac(k)).toBe(v);
    }), { numRuns: 300 });
  });
});
