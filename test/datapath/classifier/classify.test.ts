import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PacketBatch } from '../../../datapath/batch.js';
import { Classify } from '../../../datapath/classifier/classify.js';
import { Emc, keyHash } from '../../../datapath/classifier/emc.js';
import { KEY_WORDS } from '../../../datapath/classifier/flow-key.js';
import { bruteFlows } from './brute.js';
import { FlowTable } from '../../../datapath/classifier/flow-table.js';

function key(...words: number[]): Uint32Array {
  const k = new Uint32Array(KEY_WORDS);
  words.forEach((w, i) => (k[i] = w >>> 0));
  return k;
}

function batchOf(keys: Uint32Array[]): PacketBatch {
  const b = new PacketBatch(32);
  b.count = keys.length;
  keys.forEach((k, i) => { b.key.set(k, i * KEY_WORDS); b.wirelen[i] = 100; b.drop[i] = 0; });
  return b;
}

describe('Classify', () => {
  it('looks up a whole batch: megaflow hits, then exact-match cache hits, and counts per flow', () => {
    const flows = new FlowTable(64);
    const emc = new Emc(flows, 1024, 1); // cache every megaflow hit
    const c = new Classify(flows, emc, 32);
    const f = flows.install(key(9, 0, 7), key(0xffffffff), 0, 0);
    const b = batchOf([key(9, 0, 1), key(8), key(9, 0, 2), key(9, 0, 1)]);
    expect(c.process(b, 5)).toBe(1);
    expect(Array.from(b.flow.subarray(0, 4))).toEqual([f, -1, f, f]);
    expect([c.megaflowHits, c.emcHits, c.misses]).toEqual([3, 0, 1]);
    expect(c.process(batchOf([key(9, 0, 1), key(9, 0, 2)]), 6)).toBe(0);
    expect(c.emcHits).toBe(2);
    expect([flows.packetsOf(f), flows.bytesOf(f), flows.usedOf(f)]).toEqual([5, 500, 6]);
  });

  it('a cached entry dies with its flow: after removal the key misses', () => {
    const flows = new FlowTable(64);
    const emc = new Emc(flows, 1024, 1);
    const c = new Classify(flows, emc, 32);
    const f = flows.install(key(1), key(0xffffffff), 0, 0);
    c.process(batchOf([key(1)]), 0);
    expect(emc.lookup(key(1), 0, keyHash(key(1), 0))).toBe(f);
    flows.remove(f);
    expect(emc.lookup(key(1), 0, keyHash(key(1), 0))).toBe(-1);
    expect(c.process(batchOf([key(1)]), 0)).toBe(1);
  });

  it('with the cache off every hit is a megaflow hit', () => {
    const flows = new FlowTable(64);
    const c = new Classify(flows, new Emc(flows, 1024, 0), 32);
    flows.install(key(1), key(0xffffffff), 0, 0);
    for (let r = 0; r < 3; r++) c.process(batchOf([key(1), key(1)]), 0);
    expect([c.emcHits, c.megaflowHits]).toEqual([0, 6]);
  });

  it('keys that share a batch hash but differ are told apart', () => {
    const flows = new FlowTable(64);
    const emc = new Emc(flows, 16, 1);
    const a = key(1, 0, 0, 0, 0, 0, 0, 5); // word 7 is not hashed
    const b = key(1, 0, 0, 0, 0, 0, 0, 6);
    expect(keyHash(a, 0)).toBe(keyHash(b, 0));
    const fa = flows.install(a, key(0xffffffff, 0, 0, 0, 0, 0, 0, 0xffffffff), 1, 0);
    const fb = flows.install(b, key(0xffffffff, 0, 0, 0, 0, 0, 0, 0xffffffff), 2, 0);
    const c = new Classify(flows, emc, 32);
    for (let r = 0; r < 3; r++) {
      const batch = batchOf([a, b]);
      c.process(batch, 0);
      expect(Array.from(batch.flow.subarray(0, 2))).toEqual([fa, fb]);
    }
  });
});

describe('Exact-match cache bypass', () => {
  it('is bypassed while it finds under 1 in 64 of its lookups (over 16 384), keeps sampling one batch in 64, and comes back at once when a sampled batch hits 1 in 16, else over a window', () => {
    const emc = new Emc(new FlowTable(64), 1024, 100);
    expect(emc.probeBatch()).toBe(true);
    emc.countProbes(8192, 100);
    expect(emc.bypassed).toBe(false); // (half a window)
    emc.countProbes(8192, 100); // 0.6 % hits over 16 384
    expect(emc.bypassed).toBe(true);
    const probes = Array.from({ length: 256 }, () => emc.probeBatch()).filter(Boolean).length;
    expect(probes).toBe(4);
    // A sampled batch under 1 in 16 (but over 1 in 64): still bypassed (no flapping near the line).
    emc.countProbes(256, 8);
    expect(emc.bypassed).toBe(true);
    // Too few lookups to judge by: still bypassed.
    emc.countProbes(32, 32);
    expect(emc.bypassed).toBe(true);
    emc.countProbes(256, 100); // the sampled batch finds its flows again
    expect(emc.bypassed).toBe(false);
    expect(Array.from({ length: 8 }, () => emc.probeBatch()).every(Boolean)).toBe(true);
    // Or, bypassed, a window's worth of sampled lookups at 1 in 64 or more.
    emc.countProbes(16384, 0);
    expect(emc.bypassed).toBe(true);
    for (let k = 0; k < 63; k++) emc.countProbes(256, 8);
    expect(emc.bypassed).toBe(true);
    emc.countProbes(256, 8);
    expect(emc.bypassed).toBe(false);
    const off = new Emc(new FlowTable(64), 1024, 0);
    expect(off.probeBatch()).toBe(false);
  });

  it('a classifier with the cache bypassed finds the same flows in the megaflow table', () => {
    const flows = new FlowTable(64);
    const emc = new Emc(flows, 1024, 1);
    const c = new Classify(flows, emc, 32);
    const f = flows.install(key(9, 0, 7), key(0xffffffff), 0, 0);
    c.process(batchOf([key(9, 0, 1)]), 1); // cached
    emc.countProbes(65536, 0);
    expect(emc.bypassed).toBe(true);
    const b = batchOf([key(9, 0, 1), key(9, 0, 2)]);
    expect(c.process(b, 2)).toBe(0);
    expect(Array.from(b.flow.subarray(0, 2))).toEqual([f, f]);
    expect(c.megaflowHits).toBe(3); // the first batch's hit, and both of these: the cache was not asked
  });
});

describe('a batch\'s misses looked up at once (FlowTable.lookupBatch: the signature-match cache\'s buckets, or the slots and flows, read ahead)', () => {
  // Small tables of 4 masks over keys of 3 words with few values: flows are evicted and removed, their
  // indices reused by other keys, so a bucket's candidate is often stale (another key's flow, a dead one).
  const MASKS = [key(0xffffffff, 0, 0), key(0xffffffff, 0xffffffff, 0), key(0, 0xffff0000, 0xffffffff), key(0xffffffff, 0xffffffff, 0xffffffff)];
  const kOf = (a: number, b: number, c: number) => key(a * 0x01010101, b << 16, c);
  const brute = bruteFlows;
  const three = fc.tuple(fc.integer({ min: 0, max: 5 }), fc.integer({ min: 0, max: 5 }), fc.integer({ min: 0, max: 5 }));
  type Op = { t: 'install'; m: number; k: [number, number, number]; a: number } | { t: 'remove'; n: number } | { t: 'batch'; keys: [number, number, number][] };
  const op: fc.Arbitrary<Op> = fc.oneof(
    fc.record({ t: fc.constant('install' as const), m: fc.integer({ min: 0, max: 3 }), k: three, a: fc.integer({ min: 1, max: 9 }) }),
    fc.record({ t: fc.constant('remove' as const), n: fc.nat() }),
    fc.record({ t: fc.constant('batch' as const), keys: fc.array(three, { minLength: 1, maxLength: 32 }) }),
  );

  it('finds what a brute-force search finds, never a removed flow or another key\'s, and the same flows as the cache off, read ahead or not (random installs, removals and batches)', () => {
    let smcHits = 0;
    let stale = 0;
    let touchedBatches = 0;
    fc.assert(fc.property(fc.array(op, { minLength: 20, maxLength: 200 }), (ops) => {
      // The cache on; off; off with the slots and flows read ahead (lookupBatch's, at any size).
      const ways = [[true, false], [false, false], [false, true]].map(([smc, touch]) => {
        const t = new FlowTable(16, 4);
        t.smcOn = smc;
        if (touch) t.touchSlots = 0;
        return { t, c: new Classify(t, new Emc(t, 1024, 0), 32) };
      });
      const [on, off, touched] = ways;
      let now = 0;
      for (const o of ops) {
        now++;
        if (o.t === 'install') {
          const got = ways.map(({ t }) => t.install(kOf(...o.k), MASKS[o.m], o.a, now));
          expect(new Set(got).size).toBe(1);
        } else if (o.t === 'remove') {
          const live = [...Array(on.t.indices).keys()].filter((f) => on.t.live[f]);
          if (live.length) for (const { t } of ways) t.remove(live[o.n % live.length]);
        } else {
          const keys = o.keys.map((k) => kOf(...k));
          const before = on.t.smcHits;
          const staleBefore = on.t.smcStale;
          const bs = ways.map(({ c }) => { const b = batchOf(keys); c.process(b, now); return b; });
          smcHits += on.t.smcHits - before;
          stale += on.t.smcStale - staleBefore;
          keys.forEach((k, i) => {
            const all = brute(on.t, k);
            const f = bs[0].flow[i];
            if (all.length === 0) expect(f).toBe(-1);
            else expect(all).toContain(f);
            // Where the flows that match agree on actions (the FPAG never installs overlapping ones that do not), so do both ways.
            if (new Set(all.map((x) => on.t.act[x])).size <= 1) expect(on.t.act[f] ?? -1).toBe(off.t.act[bs[1].flow[i]] ?? -1);
            // Read ahead: the same flow as without (both take the first subtable's, in the same order).
            expect(bs[2].flow[i]).toBe(bs[1].flow[i]);
          });
        }
      }
      expect(off.t.smcHits).toBe(0);
      touchedBatches += touched.t.touchedBatches;
    }), { numRuns: 300, seed: 5 });
    expect(touchedBatches).toBeGreaterThan(100);
    expect(smcHits).toBeGreaterThan(100); // the batch pass answered, not only the fallback
    expect(stale).toBeGreaterThan(0); // candidates of dead flows, or of other keys' flows at reused indices, were met
  });
});
