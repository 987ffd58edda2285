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
