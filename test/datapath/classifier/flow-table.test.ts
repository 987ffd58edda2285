import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ROOT } from '../../helpers.js';
import { KEY_WORDS } from '../../../datapath/classifier/flow-key.js';
import { FULL, FlowTable } from '../../../datapath/classifier/flow-table.js';
import { bruteFlows } from './brute.js';

function key(...words: number[]): Uint32Array {
  const k = new Uint32Array(KEY_WORDS);
  words.forEach((w, i) => (k[i] = w >>> 0));
  return k;
}

describe('FlowTable', () => {
  it('with code from strings refused (node --disallow-code-generation-from-strings), its subtables\' hash and compare are loops over the masks and find the same flows, across the specialized limit', () => {
    // Flows in 1..6 subtables (the specialized functions up to 4, then the loops: the same hash either way).
    const code = `
      const { FlowTable } = await import(${JSON.stringify(new URL(`file://${join(ROOT, 'dist')}/datapath/classifier/flow-table.js`).href)});
      const out = [];
      for (const subs of [1, 4, 5, 6]) {
        const t = new FlowTable(4096);
        const flows = [];
        for (let s = 0; s < subs; s++) for (let n = 1; n <= 50; n++) { // (n > 0: no flow of one subtable matches another's keys)
          const mask = new Uint32Array(19); mask[0] = 0xffffffff; mask[s + 1] = 0xffff0000; mask[10] = 0xff00ff00;
          const key = new Uint32Array(19); key[0] = n; key[s + 1] = (n * 2654435761) >>> 0; key[10] = 0x12345678 ^ n;
          flows.push([key, t.install(key, mask, 1 + s, 0)]);
        }
        out.push(flows.every(([k, f]) => f >= 0 && t.lookup(k) === f && t.matches(k, 0, f)) && t.subCount === subs);
      }
      console.log(JSON.stringify(out));`;
    for (const flags of [['--disallow-code-generation-from-strings'], []]) {
      const r = spawnSync(process.execPath, [...flags, '--input-type=module', '-e', code], { encoding: 'utf8' });
      expect(r.stderr, flags.join(' ')).toBe('');
      expect(JSON.parse(r.stdout.trim()), flags.join(' ')).toEqual([true, true, true, true]);
    }
  });

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

  it('a flow\'s stored key is its key under its mask, every other word 0, when indices and subtables are reused under other masks (random installs, removals, evictions; up to 6 masks: the specialized copies and the loops)', () => {
    // (An install under the mask its index last held writes the mask's words alone: the others must be 0 already.)
    const masks = [
      key(0xffffffff, 0, 0, 0, 0, 0, 0xffffffff),
      key(0xffffffff, 0xffff0000, 0, 0, 0, 0, 0, 0, 0, 0, 0xffffffff),
      key(0, 0xffffffff, 0xffffffff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xffff),
      key(0xff, 0, 0, 0xffffffff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xffffffff),
      key(0, 0, 0, 0, 0xffffffff, 0xffffffff),
      key(0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff),
    ];
    const op = fc.tuple(fc.integer({ min: 0, max: 9 }), fc.integer({ min: 0, max: 5 }), fc.array(fc.integer({ min: 0, max: 0xffffffff }), { minLength: KEY_WORDS, maxLength: KEY_WORDS }));
    fc.assert(fc.property(fc.array(op, { maxLength: 200 }), fc.integer({ min: 0, max: 2 }), (ops, masksUsed) => {
      const t = new FlowTable(24);
      const used = [2, 4, 6][masksUsed];
      const installed = new Map<number, Uint32Array>(); // flow → the key installed (unmasked)
      for (const [kind, m, words] of ops) {
        const k = Uint32Array.from(words);
        if (kind < 7) {
          const f = t.install(k, masks[m % used], 1, 0);
          expect(f).toBeGreaterThanOrEqual(0);
          for (const g of [...installed.keys()]) if (t.sub[g] < 0) installed.delete(g); // evicted to make room
          installed.set(f, k);
        } else if (kind < 9 && installed.size > 0) {
          const f = [...installed.keys()][words[0] % installed.size];
          t.remove(f);
          installed.delete(f);
        } else {
          // Every flow of one mask removed: its subtable empties and is given the next new mask.
          for (const [f] of installed) if (t.sub[f] >= 0 && t.mask[t.sub[f] * KEY_WORDS] === masks[m % used][0] && t.mask[t.sub[f] * KEY_WORDS + 1] === masks[m % used][1]) { t.remove(f); installed.delete(f); }
        }
        for (const [f, ik] of installed) {
          const s = t.sub[f];
          expect(s).toBeGreaterThanOrEqual(0);
          const stored = Array.from(t.key.subarray(f * KEY_WORDS, (f + 1) * KEY_WORDS));
          expect(stored).toEqual(Array.from(ik, (w, i) => (w & t.mask[s * KEY_WORDS + i]) >>> 0));
          expect(t.lookup(ik)).toBe(f);
        }
      }
    }), { numRuns: 300 });
  });

  it('a full table evicts one flow to make room, by a CLOCK: a flow hit since the hand last passed it is passed over, the first not hit is evicted; counted', () => {
    const t = new FlowTable(32);
    const m = key(0xffffffff);
    const f = (k: number) => t.lookup(key(k));
    for (let i = 0; i < 32; i++) t.install(key(i), m, 0, i);
    // A new flow counts one packet as seen (the datapath's first, which set it up): kept for a packet more.
    for (const k of [0, 2]) t.hit(f(k), 60, 40);
    t.hit(f(2), 60, 41);
    t.install(key(1000), m, 0, 100);
    expect(t.evicted).toBe(1);
    expect(t.count).toBe(32);
    expect([0, 1, 2, 3, 1000].map((k) => f(k) >= 0)).toEqual([false, true, true, true, true]);
    t.install(key(1001), m, 0, 101);
    expect([1, 2, 3].map((k) => f(k) >= 0)).toEqual([false, true, true]);
    t.install(key(1002), m, 0, 102); // key 2 passed over (hit twice, noted), key 3 taken
    expect([2, 3, 4].map((k) => f(k) >= 0)).toEqual([true, false, true]);
    // Round the table: key 2, not hit since the hand noted it, goes; a flow hit again stays.
    t.hit(f(5), 60, 103);
    t.hit(f(5), 60, 103);
    for (let k = 2000; k < 2031; k++) t.install(key(k), m, 0, 104);
    expect(f(2)).toBe(-1);
    expect(f(5)).toBeGreaterThanOrEqual(0);
    expect(t.evicted).toBe(34);
    expect(t.count).toBe(32);
  });

  it('evict(n) removes n flows (every flow when fewer), and under a flood of new flows keeps those hit between evictions (random tables, quarantined batches)', () => {
    let seed = 99;
    const rnd = (k: number) => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) % k;
    for (let round = 0; round < 60; round++) {
      const cap = 16 + rnd(300);
      const t = new FlowTable(cap, 8);
      const m = key(0xffffffff);
      for (let i = 0; i < cap; i++) if (rnd(4) !== 0) t.install(key(i + 1), m, 0, 0);
      const before = t.count;
      const n = rnd(cap + 4);
      t.evict(n);
      expect(t.count).toBe(before - Math.min(n, before));
      expect(t.evicted).toBe(Math.min(n, before));
      // A flood: batches of up to 8 new flows, the busy flows hit in every batch.
      const busy = Array.from({ length: 1 + rnd(Math.min(8, cap >> 2)) }, (_, b) => 1_000_000 + b);
      for (const k of busy) t.install(key(k), m, 0, 0);
      let next = 2_000_000;
      for (let b = 0; b < 3 * cap; b++) {
        t.quarantine(true);
        for (const k of busy) { const f = t.lookup(key(k)); t.hit(f, 60, b); t.hit(f, 60, b); }
        const c = 1 + rnd(8);
        for (let j = 0; j < c; j++) expect(t.install(key(next++), m, 0, b)).toBeGreaterThanOrEqual(0);
        t.quarantine(false);
        expect(t.count).toBeLessThanOrEqual(cap);
      }
      for (const k of busy) expect(t.lookup(key(k))).toBeGreaterThanOrEqual(0);
      let live = 0;
      for (let x = 0; x < t.indices; x++) live += t.live[x];
      expect(live).toBe(t.count);
    }
  });

  it('the flow whose install grows the slots is in them once: removed, it is found no more (it had been put in twice, and a removal took one: a removed flow still found, then a reused index\'s cache entries served another key)', () => {
    const t = new FlowTable(1024); // slots start at 1 024 and double at the 512th flow
    const m = key(0xffffffff, 0xffffffff, 0xffffffff);
    const k = (i: number) => key(i, (i * 2654435761) >>> 0, 7);
    const fs = Array.from({ length: 600 }, (_, i) => t.install(k(i), m, 1, 0));
    expect((t as unknown as { slotMask: number }).slotMask + 1).toBe(2048);
    const slots = (t as unknown as { slots: Int32Array }).slots;
    const used = () => { let n = 0; for (let p = 0; p < slots.length; p += 2) if (slots[p] !== 0) n++; return n; };
    expect(used()).toBe(600); // one slot a flow
    fs.forEach((f, i) => { t.remove(f); expect(t.lookup(k(i)), `flow ${i}`).toBe(-1); });
    expect(used()).toBe(0);
    t.clear();
    expect(t.count).toBe(0);
  });

  it('removing a flow bumps its generation (so caches holding it can tell)', () => {
    const t = new FlowTable(8);
    const f = t.install(key(1), key(0xffffffff), 0, 0);
    const g = t.gen[f];
    t.remove(f);
    expect(t.gen[f]).toBe(g + 1);
  });

  it('lookups give the same flows and actions before and after sortSubtables reorders the subtables by hits (random masks, flows, keys)', () => {
    // Flows are a few base keys cut by random masks. Every mask matches word 0 whole, base b has
    // word 0 = b, and a flow's action is a function of word 0: so flows of different subtables
    // overlap (a base key matches every flow cut from it) and agree where they do, as the
    // FPAG's flows do.
    const actOf = (w0: number) => (w0 * 7 + 3) & 0xffff;
    const maskWord = fc.constantFrom(0, 0xffffffff, 0xffff0000, 0x0000ffff, 0xff00ff00, 0x80000000);
    const maskArb = fc.tuple(maskWord, maskWord, maskWord, maskWord).map(([a, b, c, d]) => key(0xffffffff, a, b, c, d));
    const value = fc.integer({ min: 0, max: 0xffffffff });
    const scenario = fc.record({
      masks: fc.uniqueArray(maskArb, { minLength: 2, maxLength: 12, selector: (m) => Array.from(m).join(',') }),
      bases: fc.array(fc.array(value, { minLength: 4, maxLength: 4 }), { minLength: 1, maxLength: 6 }),
      flows: fc.array(fc.tuple(fc.nat(), fc.nat()), { maxLength: 40 }),
      // [kind, base, word, value]: 0 a key no flow has (word 0 past the bases), 1 a base key itself,
      // 2 a base key with one word changed (some of its flows still match, some not).
      probes: fc.array(fc.tuple(fc.integer({ min: 0, max: 2 }), fc.nat(), fc.integer({ min: 1, max: 4 }), value), { minLength: 1, maxLength: 60 }),
      warm: fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 5 })), { maxLength: 30 }),
    });
    let runs = 0;
    const byMatches = [0, 0, 0]; // probes matched by no flow, by one, by several (overlapping subtables)
    fc.assert(fc.property(scenario, ({ masks, bases, flows, probes, warm }) => {
      runs++;
      const t = new FlowTable(256);
      const baseKey = (b: number) => key(b, ...bases[b]);
      // A model written apart: the installed (mask, masked key, action), brute-force matched.
      const model: { mask: Uint32Array; key: Uint32Array; act: number }[] = [];
      const installAt = (m: Uint32Array, full: Uint32Array) => {
        const k = full.map((w, j) => (w & m[j]) >>> 0);
        if (!model.some((x) => x.mask === m && x.key.every((w, j) => w === k[j]))) model.push({ mask: m, key: k, act: actOf(full[0]) });
        expect(t.install(k, m, actOf(full[0]), 0)).toBeGreaterThanOrEqual(0);
      };
      // Every subtable holds a flow (in the masks' order, so the lookup order starts as that order),
      // and the last one also holds a flow no other subtable can match (word 0 = 1000), the hot one.
      masks.forEach((m, i) => installAt(m, baseKey(i % bases.length)));
      const hot = masks[masks.length - 1];
      const hotKey = key(1000, 1, 2, 3, 4);
      installAt(hot, hotKey);
      for (const [mi, b] of flows) installAt(masks[mi % masks.length], baseKey(b % bases.length));
      expect(t.count).toBe(model.length);
      expect(t.subCount).toBe(masks.length);
      const matches = (k: Uint32Array) => model.filter((x) => x.key.every((w, j) => ((k[j] & x.mask[j]) >>> 0) === w));
      const keys = probes.map(([kind, b, w, v]) => {
        if (kind === 0) return key(bases.length + (b % 8), ...bases[b % bases.length]);
        const k = baseKey(b % bases.length);
        if (kind === 2) k[w] = v;
        return k;
      });
      // Skew the hits: random warm-up lookups, then the hot flow more often than all of them
      // and the probes below together.
      let warmed = 0;
      for (const [n, times] of warm) for (let r = 0; r < times; r++) { t.lookup(keys[n % keys.length]); warmed++; }
      for (let r = 0; r <= warmed + keys.length; r++) expect(t.act[t.lookup(hotKey)]).toBe(actOf(1000));
      const look = () => keys.map((k) => { const f = t.lookup(k); return { f, act: f >= 0 ? t.act[f] : -1 }; });
      const before = look();
      const order = () => Array.from((t as unknown as { order: Int16Array }).order.subarray(0, t.subCount));
      const orderBefore = order();
      t.sortSubtables();
      const orderAfter = order();
      // The order really changed: the hot subtable, last before, is first now; still every subtable once.
      const hotSub = t.sub[t.lookup(hotKey)];
      expect(orderBefore[orderBefore.length - 1]).toBe(hotSub);
      expect(orderAfter[0]).toBe(hotSub);
      expect([...orderAfter].sort((a, b) => a - b)).toEqual(range(masks.length));
      const after = look();
      let checked = 0;
      keys.forEach((k, i) => {
        const m = matches(k);
        const want = m.length ? m[0].act : -1;
        expect(m.every((x) => x.act === want)).toBe(true);
        expect(before[i].act).toBe(want);
        expect(after[i].act).toBe(want);
        // A key only one flow matches gives that very flow, whatever the order.
        if (m.length <= 1) expect(after[i].f).toBe(before[i].f);
        byMatches[Math.min(m.length, 2)]++;
        checked++;
      });
      expect(checked).toBe(probes.length);
    }), { numRuns: 300, seed: 16 });
    expect(runs).toBe(300);
    // Each kind of probe was met, many times.
    for (const n of byMatches) expect(n).toBeGreaterThan(100);
  });
});

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

describe('the signature-match cache (FlowTable.lookupHashed)', () => {
  // Keys of 3 words (the rest 0), masks from a few shapes; the hash is deliberately weak
  // (few values) so buckets are shared, ways replaced and signatures collide.
  const MASKS = [key(0xffffffff, 0, 0), key(0xffffffff, 0xffffffff, 0), key(0, 0xffff0000, 0xffffffff), key(0xffffffff, 0xffffffff, 0xffffffff)];
  const brute = bruteFlows;
  type Op = { t: 'install'; m: number; k: number[]; a: number } | { t: 'remove'; n: number } | { t: 'lookup'; k: number[]; h: number } | { t: 'sort' }
    | { t: 'clear' } | { t: 'expire'; age: number } | { t: 'hit'; k: number[] } | { t: 'quarantine'; on: boolean } | { t: 'bulk'; m: number; base: number; n: number; a: number }
    | { t: 'lookupLive'; n: number };
  /** Random operations over tables of `masks.length` masks (with sorts of the subtables when `sort`). */
  const opsOf = (masks: number, sort: boolean, bulk = false) => {
    const three = fc.array(fc.integer({ min: 0, max: 5 }), { minLength: 3, maxLength: 3 });
    const ops: fc.Arbitrary<Op>[] = [
      fc.record({ t: fc.constant('install' as const), m: fc.integer({ min: 0, max: masks - 1 }), k: three, a: fc.integer({ min: 1, max: 9 }) }),
      fc.record({ t: fc.constant('remove' as const), n: fc.integer({ min: 0, max: 40 }) }),
      fc.record({ t: fc.constant('lookup' as const), k: three, h: fc.integer({ min: 0, max: 7 }) }),
    ];
    if (sort) ops.push(fc.record({ t: fc.constant('sort' as const) }));
    // Rarer: the table cleared, idle flows expired, flows used (their time and the CLOCK's count), a quarantine
    // begun or ended (removed indices held, spare ones taken, eviction put off), many flows at once (the slots grow).
    const rare: fc.Arbitrary<Op>[] = [
      fc.record({ t: fc.constant('clear' as const) }),
      fc.record({ t: fc.constant('expire' as const), age: fc.integer({ min: 0, max: 60 }) }),
      fc.record({ t: fc.constant('hit' as const), k: three }),
      fc.record({ t: fc.constant('quarantine' as const), on: fc.boolean() }),
    ];
    // A live flow's own key (a bulk install's too), looked up: it, or a flow that also matches, is found.
    ops.push(fc.record({ t: fc.constant('lookupLive' as const), n: fc.nat() }));
    if (bulk) rare.push(fc.record({ t: fc.constant('bulk' as const), m: fc.integer({ min: 0, max: masks - 1 }), base: fc.integer({ min: 0, max: 1 << 20 }), n: fc.integer({ min: 1, max: 700 }), a: fc.integer({ min: 1, max: 9 }) }));
    return fc.array(fc.oneof({ arbitrary: fc.oneof(...ops), weight: 12 }, { arbitrary: fc.oneof(...rare), weight: 1 }), { minLength: 100, maxLength: 400 });
  };
  /**
   * Applies `ops` to every table of `ways` alike; each lookup (`look`) must
   * name a live flow that matches, -1 when none does, and the same actions
   * in every table where all the flows that match agree.
   */
  const runOps = (ways: FlowTable[], ops: Op[], masks: Uint32Array[], look: (t: FlowTable, k: Uint32Array, h: number) => number, finish = true): void => {
    const [first] = ways;
    for (const o of ops) {
      const now = ++clock.now;
      if (o.t === 'install') {
        const k = key(o.k[0] * 0x01010101, o.k[1] << 16, o.k[2]);
        const got = ways.map((t) => t.install(k, masks[o.m], o.a, now));
        expect(new Set(got).size).toBe(1); // the same index (or FULL) in every table
      } else if (o.t === 'remove') {
        const live = [...Array(first.indices).keys()].filter((f) => first.live[f]);
        if (live.length) { const f = live[o.n % live.length]; for (const t of ways) t.remove(f); }
      } else if (o.t === 'sort') {
        for (const t of ways) t.sortSubtables();
      } else if (o.t === 'clear') {
        for (const t of ways) t.clear();
        expect(first.count).toBe(0);
      } else if (o.t === 'expire') {
        const idle = [...Array(first.indices).keys()].filter((f) => first.live[f] && first.usedOf(f) < now - o.age);
        const n = ways.map((t) => t.expire(now - o.age));
        expect(n).toEqual(ways.map(() => idle.length)); // the idle ones, and only they
        for (let f = 0; f < first.indices; f++) if (first.live[f]) expect(first.usedOf(f)).toBeGreaterThanOrEqual(now - o.age); // none idle left
      } else if (o.t === 'hit') {
        // The flow a lookup finds in the first table (a brute-force match): used now in every table.
        const all = brute(first, key(o.k[0] * 0x01010101, o.k[1] << 16, o.k[2]));
        if (all.length) for (const t of ways) { t.hit(all[0], 60, now); expect(t.usedOf(all[0])).toBe(now); }
      } else if (o.t === 'quarantine') {
        // Nested at most twice; every one begun is ended (below, after the last op).
        if (o.on && clock.depth < 2) { clock.depth++; for (const t of ways) t.quarantine(true); }
        else if (!o.on && clock.depth > 0) { clock.depth--; for (const t of ways) t.quarantine(false); }
      } else if (o.t === 'lookupLive') {
        const live = [...Array(first.indices).keys()].filter((f) => first.live[f]);
        if (live.length === 0) continue;
        const f = live[o.n % live.length];
        const k = first.key.slice(f * KEY_WORDS, (f + 1) * KEY_WORDS);
        const h = (f * 0x9e3779b1) >>> 0;
        const all = brute(first, k);
        expect(all).toContain(f);
        for (const t of ways) expect(all).toContain(look(t, k, h));
        clock.liveLookups++;
      } else if (o.t === 'bulk') {
        for (let i = 0; i < o.n; i++) {
          const k = key(((o.base + i) * 2654435761) >>> 0, ((o.base + i) * 40503) << 16, o.base + i);
          for (const t of ways) t.install(k, masks[o.m], o.a, now);
        }
        clock.slots = Math.max(clock.slots, (first as unknown as { slotMask: number }).slotMask + 1);
      } else {
        const k = key(o.k[0] * 0x01010101, o.k[1] << 16, o.k[2]);
        const h = o.h * 0x9e3779b1 >>> 0; // 8 hash values for all keys: signatures collide
        const got = ways.map((t) => look(t, k, h));
        const all = brute(first, k);
        if (all.length === 0) { expect(got).toEqual(ways.map(() => -1)); continue; }
        for (const f of got) expect(all).toContain(f); // a live flow that matches: never a removed one, never none
        // Flows that match one key may overlap here (the FPAG never installs such): where they agree on actions, so does the answer.
        if (new Set(all.map((x) => first.act[x])).size === 1) expect(new Set(got.map((f) => first.act[f])).size).toBe(1);
      }
    }
    if (!finish) return;
    while (clock.depth > 0) { clock.depth--; for (const t of ways) t.quarantine(false); }
    for (const t of ways) expect(t.count).toBeLessThanOrEqual(t.capacity); // back to the capacity after the last quarantine
  };
  /** runOps's time (one tick an op), quarantine depth, and the most slots a bulk install left in use. */
  const clock = { now: 0, depth: 0, slots: 0, liveLookups: 0 };
  it('never serves a removed flow nor misses an installed one, and a flow\'s new actions are what a hit gives (random install/remove/lookup; SMC and Bloom filter each on and off; eviction on)', () => {
    let smcHits = 0;
    let bloomSkips = 0;
    let bloomRebuilds = 0;
    fc.assert(fc.property(opsOf(MASKS.length, false), (ops) => {
      clock.depth = 0; // (a failed case may have left one open: each starts with none)
      // [SMC, Bloom filter]: both, each alone, neither. Small: installs evict, slots are reused by other flows.
      const ways = ([[true, true], [true, false], [false, true], [false, false]] as const).map(([smc, bloom]) => {
        const t = new FlowTable(32, 8);
        t.smcOn = smc;
        t.bloomOn = bloom;
        return t;
      });
      const [on] = ways;
      runOps(ways, ops, MASKS, (t, k, h) => t.lookupHashed(k, 0, h));
      smcHits += on.smcHits;
      expect(ways[2].smcHits + ways[3].smcHits).toBe(0);
      bloomSkips += on.bloomSkips + ways[2].bloomSkips;
      expect(ways[1].bloomSkips + ways[3].bloomSkips).toBe(0);
      bloomRebuilds += on.bloomRebuilds;
    }), { numRuns: 400, seed: 23 });
    // Each was exercised, not bypassed: the cache hit, the filter spared probes and was made again after removals.
    expect(smcHits).toBeGreaterThan(0);
    expect(bloomSkips).toBeGreaterThan(0);
    expect(bloomRebuilds).toBeGreaterThan(0);
  });

  it('the lookup generated over all subtables (1 to 8 masks: past the specialized ones), made again at every mask and order change, finds what the loops and a brute-force search find (random install/remove/lookup/sort; Bloom filter on and off)', () => {
    const MASKS8 = [...MASKS, key(0, 0xffffffff, 0), key(0xffff0000, 0, 0xffff), key(0, 0, 0xffffffff), key(0xffffffff, 0xff000000, 0xff)];
    let gens = 0;
    let most = 0;
    fc.assert(fc.property(opsOf(MASKS8.length, true), (ops) => {
      clock.depth = 0;
      // Generated at every change; the loops always; generated, the Bloom filter off.
      const ways = ([[0, true], [Infinity, true], [0, false]] as const).map(([regen, bloom]) => {
        const t = new FlowTable(32, 8);
        t.regenEvery = regen;
        t.bloomOn = bloom;
        return t;
      });
      const [gen] = ways;
      // (Each op alone, to see the most subtables at once.)
      for (const o of ops) {
        runOps(ways, [o], MASKS8, (t, k) => t.lookup(k), false);
        most = Math.max(most, gen.subCount);
      }
      runOps(ways, [], MASKS8, (t, k) => t.lookup(k)); // (quarantines left open ended)
      gens += gen.lookupGens;
      expect(ways[1].lookupGens).toBe(0);
    }), { numRuns: 300, seed: 23 });
    expect(most).toBeGreaterThan(4); // past the specialized ones
    expect(gens).toBeGreaterThan(300); // made again, not once
  });

  it('the same with many flows at once (the slots grow past their first 1 024), cleared, expired, quarantined (spare indices taken, evictions put off): no removed flow served, no installed one missed', () => {
    let grew = 0;
    let held = 0;
    let expired = 0;
    let full = 0;
    fc.assert(fc.property(opsOf(MASKS.length, true, true), (ops) => {
      clock.slots = 0;
      clock.depth = 0;
      // [SMC, Bloom filter, generated at every change]: all; none (the loops).
      const ways = ([[true, true, 0], [false, false, Infinity]] as const).map(([smc, bloom, regen]) => {
        const t = new FlowTable(1024, 64);
        t.smcOn = smc;
        t.bloomOn = bloom;
        t.regenEvery = regen;
        return t;
      });
      const quarantine = ways[0].quarantine.bind(ways[0]);
      ways[0].quarantine = (on: boolean) => { if (on) held++; quarantine(on); };
      const install = ways[0].install.bind(ways[0]);
      ways[0].install = (...a: Parameters<FlowTable['install']>) => { const f = install(...a); if (f === FULL) full++; return f; };
      runOps(ways, ops, MASKS, (t, k, h) => t.lookupHashed(k, 0, h));
      if (clock.slots > 1024) grew++;
      expired += ways[0].expired;
    }), { numRuns: 60, seed: 23 });
    // Each was met: slots grown, quarantines, flows expired, a full quarantined table refusing.
    expect(grew).toBeGreaterThan(5);
    expect(held).toBeGreaterThan(5);
    expect(expired).toBeGreaterThan(0);
    expect(full).toBeGreaterThan(0);
  });

  it('with masks past what one generated function may hold (V8 would not optimize it), lookups take the loops, and find every flow', () => {
    const t = new FlowTable(4096);
    t.regenEvery = 0; // (made, or its source written, at the first lookup after a change)
    // 100 masks of 10 words: well past MAX_LOOKUP_SOURCE.
    const masks = Array.from({ length: 100 }, (_, s) => key(0xffffffff, (0xffffffff << (s & 31)) >>> 0, (0xffffffff >>> (s >> 5)) >>> 0, ...new Array(7).fill(0xffffffff)));
    const keys = masks.map((_, s) => key(s, 0x12345678 + s, 0x9abcdef0 ^ s, 1, 2, 3, 4, 5, 6, 7));
    masks.forEach((m, s) => t.install(keys[s], m, s + 1, 0));
    expect(t.subCount).toBe(100);
    for (let r = 0; r < 2; r++) for (let s = 0; s < 100; s++) expect(t.act[t.lookup(keys[s])]).toBe(s + 1);
    expect(t.lookupGens).toBe(0);
    expect(t.lookupSources).toBe(1); // written once, found too long, not written again while no mask changes
    // Back under the limit (a table of few masks): generated again.
    const u = new FlowTable(64);
    u.regenEvery = 0;
    masks.slice(0, 6).forEach((m, s) => u.install(keys[s], m, s + 1, 0));
    for (let s = 0; s < 6; s++) expect(u.act[u.lookup(keys[s])]).toBe(s + 1);
    expect(u.lookupGens).toBe(1);
  });

  it('the generated lookup is made only after regenEvery lookups with no change: masks that keep changing leave the loops in use (no function made, none left unoptimized); an order change keeps the one made till much later', () => {
    const t = new FlowTable(4096);
    const masks = Array.from({ length: 8 }, (_, s) => key(0xffffffff, (0xffffffff << s) >>> 0, 0xffff));
    const keys = masks.map((_, s) => key(s, 0x12345678, 0x9abc));
    masks.forEach((m, s) => t.install(keys[s], m, s + 1, 0));
    const look = (n: number) => { for (let i = 0; i < n; i++) expect(t.act[t.lookup(keys[i & 7])]).toBe((i & 7) + 1); };
    // A mask changes every 1 000 lookups (an emptied subtable given another mask): never 65 536 quiet ones.
    for (let c = 0; c < 100; c++) {
      look(1000);
      const s = 7;
      t.remove(t.lookup(keys[s]));
      masks[s] = key(0xffffffff, (0xffffffff << (8 + (c & 7))) >>> 0, 0xffff);
      t.install(keys[s], masks[s], s + 1, 0);
    }
    expect(t.lookupSources).toBe(0);
    // Quiet: made once, after regenEvery lookups.
    look(t.regenEvery + 10);
    expect(t.lookupGens).toBe(1);
    // Hits now rank the subtables differently: the order changes, the function (still right) stays a long while.
    for (let i = 0; i < 30_000; i++) t.lookup(keys[7]); // (its hits were counted from its last mask on)
    expect(t.subHits[7]).toBeGreaterThan(t.subHits[0]); // (so the sort puts 7 first: the order changes)
    t.sortSubtables();
    look(2 * t.regenEvery);
    expect(t.lookupGens).toBe(1);
    look(16 * t.regenEvery);
    expect(t.lookupGens).toBe(2);
  });

  it('answers with one probe what the subtables answer with many: a hit, counted, on the second lookup of a flow behind 20 subtables', () => {
    const t = new FlowTable(1024);
    const masks = Array.from({ length: 20 }, (_, s) => key(0xffffffff, 0xffffffff, (0xffffffff << s) >>> 0));
    for (let s = 0; s < 20; s++) t.install(key(s, 1, 0xffffffff), masks[s], s + 1, 0);
    const k = key(19, 1, 0xffffffff);
    expect(t.lookupHashed(k, 0, 12345)).toBe(t.lookup(k));
    expect(t.smcHits).toBe(0);
    const f = t.lookupHashed(k, 0, 12345);
    expect(t.smcHits).toBe(1);
    expect(t.act[f]).toBe(20);
    t.remove(f);
    expect(t.lookupHashed(k, 0, 12345)).toBe(-1);
    expect(t.smcHits).toBe(1);
  });
});

describe('eviction under pressure', () => {
  it('a flood of one-packet flows through a full table never evicts a busy flow (used every few installs)', () => {
    const t = new FlowTable(1024);
    const mask = key(0xffffffff, 0xffffffff);
    const busy = t.install(key(1, 1), mask, 7, 0);
    for (let i = 1; i <= 100_000; i++) {
      t.install(key(2, i), mask, 1, i);
      if (i % 50 === 0) {
        // The busy flow's packet: found where it was, counted (its last use now).
        expect(t.lookup(key(1, 1))).toBe(busy);
        t.hit(busy, 64, i);
      }
    }
    expect(t.evicted).toBeGreaterThan(90_000);
    expect(t.live[busy]).toBe(1);
    expect(t.act[busy]).toBe(7);
    expect(t.packetsOf(busy)).toBe(2000);
  });
});

describe('quarantine (a batch being switched)', () => {
  it('nothing is evicted during a quarantine: a full table takes spare indices (then FULL), a removed flow\'s index is held; at its end the table goes back to its capacity', () => {
    const t = new FlowTable(4, 2);
    const m = key(0xffffffff);
    expect([1, 2, 3, 4].map((i) => t.install(key(i), m, 10 + i, i))).toEqual([0, 1, 2, 3]);
    t.quarantine(true);
    expect(t.install(key(5), m, 15, 5)).toBe(4); // full: a spare index, no flow evicted
    expect(t.lookup(key(1))).toBe(0);
    expect(t.install(key(6), m, 16, 6)).toBe(5);
    expect(t.install(key(7), m, 17, 7)).toBe(FULL);
    t.remove(1); // key 2, removed mid-batch: its index is held, its actions kept
    expect(t.act[1]).toBe(12);
    expect(t.install(key(8), m, 18, 8)).toBe(FULL);
    expect(t.count).toBe(5);
    t.quarantine(false);
    expect(t.count).toBe(4); // back to the capacity: the least recently used (key 1) evicted
    expect(t.lookup(key(1))).toBe(-1);
    for (const k of [3, 4, 5, 6]) expect(t.lookup(key(k))).toBeGreaterThanOrEqual(0);
    const f = t.install(key(9), m, 19, 9); // (full again: key 3 evicted)
    expect(f).toBeLessThan(4); // an index of the capacity's, given back
    expect(t.lookup(key(9))).toBe(f);
    expect(t.count).toBe(4);
  });

  it('nested quarantines end with the outermost', () => {
    const t = new FlowTable(2, 2);
    const m = key(0xffffffff);
    t.install(key(1), m, 1, 1);
    t.install(key(2), m, 2, 2);
    t.quarantine(true);
    t.quarantine(true);
    expect(t.install(key(3), m, 3, 3)).toBe(2);
    t.quarantine(false);
    expect(t.install(key(4), m, 4, 4)).toBe(3); // still quarantined: nothing evicted
    expect(t.install(key(5), m, 5, 5)).toBe(FULL);
    expect(t.count).toBe(4);
    t.quarantine(false);
    expect(t.count).toBe(2);
    expect(t.lookup(key(3))).toBe(2);
    expect(t.lookup(key(4))).toBe(3);
  });
});
