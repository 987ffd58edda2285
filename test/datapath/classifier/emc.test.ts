import { describe, expect, it } from 'vitest';
import { Emc } from '../../../datapath/classifier/emc.js';
import { KEY_WORDS } from '../../../datapath/classifier/flow-key.js';
import { FlowTable } from '../../../datapath/classifier/flow-table.js';

function key(...words: number[]): Uint32Array {
  const k = new Uint32Array(KEY_WORDS);
  words.forEach((w, i) => (k[i] = w >>> 0));
  return k;
}

const EXACT = key(...new Array(KEY_WORDS).fill(0xffffffff));

describe('Emc inserts', () => {
  // Hash 0x00050003 puts a key in ways 3 and 5 of a 1024-entry cache.
  const H = 0x00050003;

  it('take a free way at once, and a live one only one time in insertInvProb', () => {
    const flows = new FlowTable(64);
    const emc = new Emc(flows, 1024, 10);
    const [a, b, c] = [1, 2, 3].map((n) => flows.install(key(n), EXACT, 0, 0));
    emc.insertMaybe(key(1), 0, H, a);
    expect(emc.lookup(key(1), 0, H)).toBe(a); // first megaflow hit: cached
    emc.insertMaybe(key(2), 0, H, b);
    expect(emc.lookup(key(2), 0, H)).toBe(b); // the other way was free too
    expect(emc.lookup(key(1), 0, H)).toBe(a);
    // Both ways live: a key gets in only one time in 10 (a countdown), over one of them.
    const d = flows.install(key(4), EXACT, 0, 0);
    const triesFor = (k: Uint32Array, f: number): number => {
      let tries = 0;
      while (emc.lookup(k, 0, H) < 0) {
        expect(tries).toBeLessThan(10);
        emc.insertMaybe(k, 0, H, f);
        tries++;
      }
      return tries;
    };
    triesFor(key(3), c); // where the countdown stood
    expect(triesFor(key(4), d)).toBe(10);
    expect(emc.lookup(key(4), 0, H)).toBe(d);
    expect([emc.lookup(key(1), 0, H), emc.lookup(key(2), 0, H), emc.lookup(key(3), 0, H)].filter((f) => f >= 0)).toHaveLength(1);
  });

  it('count a way whose flow was removed as free', () => {
    const flows = new FlowTable(64);
    const emc = new Emc(flows, 1024, 1000);
    const [a, b, c] = [1, 2, 3].map((n) => flows.install(key(n), EXACT, 0, 0));
    emc.insertMaybe(key(1), 0, H, a);
    emc.insertMaybe(key(2), 0, H, b);
    flows.remove(a);
    emc.insertMaybe(key(3), 0, H, c);
    expect(emc.lookup(key(3), 0, H)).toBe(c);
    expect(emc.lookup(key(2), 0, H)).toBe(b);
    expect(emc.lookup(key(1), 0, H)).toBe(-1);
  });

  it('with insertInvProb 0, cache nothing', () => {
    const flows = new FlowTable(64);
    const emc = new Emc(flows, 1024, 0);
    const a = flows.install(key(1), EXACT, 0, 0);
    emc.insertMaybe(key(1), 0, H, a);
    expect(emc.lookup(key(1), 0, H)).toBe(-1);
  });
});

describe('Emc.memoIpv4', () => {
  it('keeps the value with the one entry of the exact key, not with another of the same hash and flow (two keys may share both)', () => {
    const flows = new FlowTable(64);
    const emc = new Emc(flows, 1024, 1);
    // Two lookupIpv4 keys (words 0, 2..6, 10, 14 set; the rest 0) of one megaflow, given the same hash.
    const kA = key(7, 0, 1, 2, 3, 0x08000600, 0x0a000001, 0, 0, 0, 0x0a000002, 0, 0, 0, 0x1f900050);
    const kB = key(7, 0, 1, 2, 3, 0x08000600, 0x0a000001, 0, 0, 0, 0x0a000002, 0, 0, 0, 0x1f910050);
    const f = flows.install(kA, key(0xffffffff), 0, 0);
    const H = 0x00050003;
    emc.insertMaybe(kA, 0, H, f);
    emc.insertMaybe(kB, 0, H, f);
    const w = (k: Uint32Array) => [k[0], k[2], k[3], k[4], k[5], k[6], k[10], k[14]] as const;
    expect(emc.lookupIpv4(H, ...w(kA))).toBe(f);
    expect(emc.lookupIpv4(H, ...w(kB))).toBe(f);
    const xA = emc.memoIpv4(H, f, ...w(kA), 99, 42);
    const xB = emc.memoIpv4(H, f, ...w(kB), 98, 43);
    expect(new Set([xA, xB])).toEqual(new Set([3, 5])); // the two ways
    const MEMO = 23;
    expect([emc.ent[xA * 25 + MEMO], emc.ent[xA * 25 + MEMO + 1]]).toEqual([99, 42]);
    expect([emc.ent[xB * 25 + MEMO], emc.ent[xB * 25 + MEMO + 1]]).toEqual([98, 43]);
    // A key not cached, and a flow that is not the entry's: nothing kept.
    const kC = key(7, 0, 1, 2, 3, 0x08000600, 0x0a000001, 0, 0, 0, 0x0a000002, 0, 0, 0, 0x1f920050);
    expect(emc.memoIpv4(H, f, ...w(kC), 1, 1)).toBe(-1);
    expect(emc.memoIpv4(H, f + 1, ...w(kA), 1, 1)).toBe(-1);
    expect(emc.ent[xA * 25 + MEMO]).toBe(99);
  });
});
