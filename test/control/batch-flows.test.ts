import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { Action } from '../../datapath/actions/action-sets.js';
import { KEY_WORDS } from '../../datapath/classifier/flow-key.js';
import { BatchFlows } from '../../control/batch-flows.js';

// Keys and masks over a few words and few values, so that random keys often fall under random megaflows.
const word = fc.constantFrom(0, 1, 2, 0xffffffff, 0x80000000);
const maskWords = fc.array(fc.constantFrom(0, 0xffffffff, 0xff000000, 0x1), { minLength: 4, maxLength: 4 });
const keyWords = fc.array(word, { minLength: 4, maxLength: 4 });
const at = [0, 5, 10, 18]; // words of the key the masks use
function full(words: number[]): Uint32Array {
  const k = new Uint32Array(KEY_WORDS);
  at.forEach((w, j) => { k[w] = words[j]; });
  return k;
}
const covers = (key: Uint32Array, k: Uint32Array, m: Uint32Array) => key.every((_, w) => ((key[w] ^ k[w]) & m[w]) === 0);

describe('BatchFlows (the megaflows of one upcall batch)', () => {
  it('covers a key exactly when a megaflow of the batch does (up to 16 masks; past that, never wrongly); the message holds every flow added, in order, each batch mask once', () => {
    fc.assert(fc.property(
      fc.array(maskWords, { minLength: 1, maxLength: 24 }),
      fc.array(fc.tuple(keyWords, fc.nat(23), fc.boolean()), { minLength: 1, maxLength: 120 }),
      (maskList, steps) => {
        const bf = new BatchFlows();
        bf.begin();
        const masks = maskList.map(full);
        const added: { k: Uint32Array; m: Uint32Array; mi: number; at: number }[] = [];
        const acts: Action[][] = [];
        const distinct: string[] = [];
        for (const [s, [kw, mi0, add]] of steps.entries()) {
          const key = full(kw);
          const truth = added.some((a) => covers(key, a.k, a.m));
          const indexed = added.some((a) => distinct.indexOf(String(a.m)) < 16 && covers(key, a.k, a.m));
          const got = bf.covers(key);
          if (got) expect(truth).toBe(true); // never a key no megaflow covers
          expect(got).toBe(indexed);
          if (!got && add) {
            const m = masks[mi0 % masks.length];
            const a: Action[] = [{ op: 'output', vpid: added.length }];
            bf.add(key, m, a, s);
            acts.push(a);
            added.push({ k: key, m, mi: mi0, at: s });
            if (!distinct.includes(String(m))) distinct.push(String(m));
          }
        }
        const msg = bf.message;
        expect(msg.count).toBe(added.length);
        // Each of the batch's first 16 masks goes once; a flow of another has its own copy.
        expect(bf.maskCount).toBe(Math.min(16, distinct.length) + added.filter((a) => distinct.indexOf(String(a.m)) >= 16).length);
        added.forEach((a, j) => {
          expect([...msg.keys.subarray(j * KEY_WORDS, (j + 1) * KEY_WORDS)]).toEqual([...a.k]);
          const mo = msg.maskAt[j] * KEY_WORDS;
          expect([...msg.masks.subarray(mo, mo + KEY_WORDS)]).toEqual([...a.m]);
          expect(msg.keyOf[j]).toBe(a.at);
          expect(msg.actions[j]).toBe(acts[j]);
        });
      },
    ), { numRuns: 300 });
  });

  it('a key covered under its first mask, then added under a later one (a caller\'s own choice), is indexed under that mask\'s hash: keys it covers are found', () => {
    const bf = new BatchFlows();
    bf.begin();
    const maskA = full([0xffffffff, 0, 0, 0]);
    const maskB = full([0, 0xffffffff, 0, 0]);
    expect(bf.covering(full([1, 1, 0, 0]))).toBe(-1);
    bf.add(full([1, 1, 0, 0]), maskA, []);
    const y = full([2, 2, 0, 0]);
    expect(bf.covering(y)).toBe(-1); // y's hash under both masks computed
    bf.add(y, maskB, []);
    const key = full([1, 7, 0, 0]);
    expect(bf.covers(key)).toBe(true); // under maskA, the first: maskB's hash of it not computed (y's must not stand in)
    expect(bf.add(key, maskB, [])).toBe(2);
    expect(bf.covering(full([9, 7, 3, 3]))).toBe(2);
  });

  it('begin() forgets the last batch: nothing covers, and the message is empty', () => {
    const bf = new BatchFlows();
    bf.begin();
    const k = full([1, 2, 0, 0]);
    bf.add(k, full([0xffffffff, 0, 0, 0]), []);
    expect(bf.covers(k)).toBe(true);
    bf.begin();
    expect(bf.covers(k)).toBe(false);
    expect(bf.message.count).toBe(0);
  });

  it('covering is bypassed while keys are their own megaflows (no hash, no index: a key then is decided again), and back on in the first batch that measures keys covered again; the message is whole either way', () => {
    const bf = new BatchFlows();
    const exact = new Uint32Array(KEY_WORDS).fill(0xffffffff);
    const wide = full([0xffffffff, 0, 0, 0]);
    let n = 0;
    // A key per connection: 64 batches of 128 new keys, none covered (two windows of 4096).
    for (let b = 0; b < 64; b++) {
      bf.begin();
      for (let j = 0; j < 128; j++) {
        const k = full([++n, n, n, n]);
        expect(bf.covering(k)).toBe(-1);
        bf.add(k, exact, [], j);
      }
      expect(bf.message.count).toBe(128);
    }
    expect(bf.bypassed).toBe(true);
    // Bypassed: a batch that skips finds nothing even for a key it was just given (it is decided again:
    // the same flow, installed once); one in 16 batches measures.
    let skipped = 0;
    let measuredAt = -1;
    for (let b = 0; b < 16 && measuredAt < 0; b++) {
      bf.begin();
      const k = full([7, 7, 7, 7]);
      bf.add(k, wide, [], 0);
      const again = bf.covering(full([7, 8, 9, 10]));
      if (bf.skipping) { expect(again).toBe(-1); skipped++; }
      else {
        expect(again).toBe(0);
        for (let j = 1; j < 64; j++) expect(bf.covering(full([7, j, j, j]))).toBe(0);
        measuredAt = b;
      }
    }
    expect(skipped).toBeGreaterThan(0);
    expect(measuredAt).toBeGreaterThanOrEqual(0);
    // The measuring batch found its keys covered: the next batch covers again.
    bf.begin();
    expect(bf.bypassed).toBe(false);
    expect(bf.skipping).toBe(false);
    bf.add(full([7, 7, 7, 7]), wide, [], 0);
    expect(bf.covering(full([7, 1, 2, 3]))).toBe(0);
  });

  it('with the batch\'s keys in place (begin(keys): a whole batch), it covers and answers as with copies, and the message names each flow\'s key where it is (keys the batch\'s, keyAt its index; since() too)', () => {
    fc.assert(fc.property(
      fc.array(maskWords, { minLength: 1, maxLength: 20 }),
      fc.array(fc.tuple(keyWords, fc.nat(19)), { minLength: 1, maxLength: 100 }),
      fc.nat(100),
      (maskList, steps, cut) => {
        const masks = maskList.map(full);
        const batch = new Uint32Array(steps.length * KEY_WORDS);
        steps.forEach(([kw], j) => batch.set(full(kw), j * KEY_WORDS));
        const view = (j: number) => batch.subarray(j * KEY_WORDS, (j + 1) * KEY_WORDS);
        const copied = new BatchFlows();
        const inPlace = new BatchFlows();
        copied.begin();
        inPlace.begin(batch);
        const from = Math.min(cut, steps.length);
        let sinceAt = -1;
        for (const [j, [, mi]] of steps.entries()) {
          if (j === from) sinceAt = inPlace.message.count;
          const a = copied.covering(view(j));
          expect(inPlace.covering(view(j))).toBe(a);
          if (a < 0) {
            const act: Action[] = [{ op: 'output', vpid: j }];
            expect(inPlace.add(view(j), masks[mi % masks.length], act, j)).toBe(copied.add(view(j), masks[mi % masks.length], act, j));
          }
        }
        const m = inPlace.message;
        expect(m.keys).toBe(batch);
        expect(m.count).toBe(copied.message.count);
        for (let f = 0; f < m.count; f++) {
          const at = m.keyAt![f] * KEY_WORDS;
          expect([...m.keys.subarray(at, at + KEY_WORDS)]).toEqual([...copied.message.keys.subarray(f * KEY_WORDS, (f + 1) * KEY_WORDS)]);
        }
        if (sinceAt >= 0) {
          const part = inPlace.since(sinceAt);
          for (let f = 0; f < part.count; f++) {
            const at = part.keyAt![f] * KEY_WORDS;
            expect([...part.keys.subarray(at, at + KEY_WORDS)]).toEqual([...copied.message.keys.subarray((sinceAt + f) * KEY_WORDS, (sinceAt + f + 1) * KEY_WORDS)]);
          }
        }
        // The next batch without keys in place copies again.
        inPlace.begin();
        inPlace.add(view(0), masks[0], [], 0);
        expect(inPlace.message.keys).not.toBe(batch);
        expect(inPlace.message.keyAt).toBeUndefined();
        expect([...inPlace.message.keys.subarray(0, KEY_WORDS)]).toEqual([...view(0)]);
      },
    ), { numRuns: 200 });
  });
});
