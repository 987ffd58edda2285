import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { KEY_WORDS } from '../../../datapath/classifier/flow-key.js';
import { FlowTable } from '../../../datapath/classifier/flow-table.js';

function key(...words: number[]): Uint32Array {
  const k = new Uint32Array(KEY_WORDS);
  words.forEach((w, i) => (k[i] = w >>> 0));
  return k;
}

describe('FlowTable', () => {
  it('finds a flow by its masked key and ignores wildcarded words', () => {
    const t = new FlowTable(16);
    const mask = key(0xffffffff, 0, 0xffff0000);
    const f = t.install(key(5, 123, 0xabcd1234), mask, 7, 0);
    expect(t.lookup(key(5, 999, 0xabcd0000))).toBe(f);
    expect(t.lookup(key(5, 999, 0xabce0000))).toBe(-1);
    expect(t.lookup(key(6, 123, 0xabcd1234))).toBe(-1);
    expect(t.act[f]).toBe(7);
  });

  it('matches words with the top bit set (no sign trouble)', () => {
    const t = new FlowTable(16);
    const f = t.install(key(0x80000001, 0xffffffff), key(0xffffffff, 0xffffffff), 1, 0);
    expect(t.lookup(key(0x80000001, 0xffffffff))).toBe(f);
  });

  it('installing the same key and mask again replaces the actions, not the flow', () => {
    const t = new FlowTable(16);
    const a = t.install(key(1), key(0xffffffff), 1, 0);
    const b = t.install(key(1), key(0xffffffff), 2, 0);
    expect(b).toBe(a);
    expect(t.count).toBe(1);
    expect(t.act[a]).toBe(2);
  });

  it('stays consistent with a Map model under random installs and removals', () => {
    fc.assert(fc.property(fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 0, max: 60 }), fc.integer({ min: 0, max: 2 })), { maxLength: 300 }), (ops) => {
      const t = new FlowTable(64);
      const masks = [key(0xffffffff), key(0xffffffff, 0xff), key(0xff00ff00)];
      const model = new Map<string, number>();
      for (const [add, v, m] of ops) {
        const k = key(v * 0x01010101, v);
        const name = `${m}/${Array.from(k, (w, i) => w & masks[m][i]).join(',')}`;
        if (add && model.size < 64) { t.install(k, masks[m], v, 0); model.set(name, v); }
        else {
          const f = t.lookup(k);
          if (f >= 0) {
            const s = t.sub[f];
            const mk = Array.from(k, (w, i) => w & t.mask[s * KEY_WORDS + i]).join(',');
            const mi = masks.findIndex((mm) => mm.every((w, i) => w === t.mask[s * KEY_WORDS + i]));
            model.delete(`${mi}/${mk}`);
            t.remove(f);
          }
        }
      }
      expect(t.count).toBe(model.size);
      for (const [name, v] of model) {
        const [m, ws] = name.split('/');
        const f = t.lookup(Uint32Array.from(ws.split(',').map(Number)));
        expect(f).toBeGreaterThanOrEqual(0);
        expect(t.sub[f] >= 0 && t.act[f]).toBe(v);
        void m;
      }
    }), { numRuns: 200 });
  });

  it('a full table evicts the least recently used flows to make room, and counts them', () => {
    const t = new FlowTable(32);
    const m = key(0xffffffff);
    for (let i = 0; i < 32; i++) t.install(key(i), m, 0, i);
    expect(t.count).toBe(32);
    t.install(key(1000), m, 0, 100);
    expect(t.evicted).toBe(2); // capacity/16
    expect(t.count).toBe(31);
    expect(t.lookup(key(0))).toBe(-1);
    expect(t.lookup(key(1))).toBe(-1);
    expect(t.lookup(key(2))).toBeGreaterThanOrEqual(0);
    expect(t.lookup(key(1000))).toBeGreaterThanOrEqual(0);
  });

  it('eviction removes exactly the n least recently used flows, however the times tie (random tables)', () => {
    let seed = 99;
    const rnd = (k: number) => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) % k;
    for (let round = 0; round < 200; round++) {
      const cap = 16 + rnd(300);
      const t = new FlowTable(cap);
      const m = key(0xffffffff);
      const spread = 1 + rnd(50); // few distinct times: many ties
      for (let i = 0; i < cap; i++) if (rnd(4) !== 0) t.install(key(i + 1), m, 0, rnd(spread));
      const live = () => Array.from({ length: cap }, (_, f) => f).filter((f) => t.live[f] === 1);
      const before = live();
      const n = 1 + rnd(cap);
      t.evictOldest(n);
      const after = new Set(live());
      const gone = before.filter((f) => !after.has(f));
      expect(gone.length).toBe(Math.min(n, before.length));
      const newestGone = Math.max(...gone.map((f) => t.usedOf(f)), -1);
      const oldestLeft = Math.min(...[...after].map((f) => t.usedOf(f)), Infinity);
      expect(newestGone).toBeLessThanOrEqual(oldestLeft);
    }
  });

  it('removing a flow bumps its generation (so caches holding it can tell)', () => {
    const t = new FlowTable(8);
    const f = t.install(key(1), key(0xffffffff), 0, 0);
    const g = t.gen[f];
    t.remove(f);
    expect(t.gen[f]).toBe(g + 1);
  });

});
