import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { DirtyBitmap, PAGE_SIZE } from '../../datapath/dirty-log.js';

describe('DirtyBitmap', () => {
  it('marking is idempotent; read-and-clear gives each dirty page once and leaves none', () => {
    fc.assert(fc.property(fc.array(fc.nat(999), { maxLength: 300 }), (pages) => {
      const b = new DirtyBitmap(1000);
      for (const p of pages) { b.mark(p); b.mark(p); }
      const want = [...new Set(pages)].sort((x, y) => x - y);
      expect(b.count()).toBe(want.length);
      const out = new Uint32Array(1000);
      const n = b.readAndClear(out);
      expect([...out.subarray(0, n)]).toEqual(want);
      expect(b.count()).toBe(0);
      expect(b.readAndClear(out)).toBe(0);
    }));
  });

  it('a write that straddles page boundaries dirties every page it touches, and no other', () => {
    const b = new DirtyBitmap(16);
    b.markBytes(PAGE_SIZE - 10, 20); // pages 0 and 1
    b.markBytes(5 * PAGE_SIZE, PAGE_SIZE); // exactly page 5
    b.markBytes(7 * PAGE_SIZE + 1, 2 * PAGE_SIZE); // pages 7, 8, 9
    b.markBytes(12 * PAGE_SIZE, 0); // nothing
    const out = new Uint32Array(16);
    expect([...out.subarray(0, b.readAndClear(out))]).toEqual([0, 1, 5, 7, 8, 9]);
  });

  it('a read with too little room returns what fits and keeps the rest dirty for the next', () => {
    const b = new DirtyBitmap(100);
    for (const p of [3, 4, 40, 41, 99]) b.mark(p);
    const out = new Uint32Array(3);
    expect([...out.subarray(0, b.readAndClear(out))]).toEqual([3, 4, 40]);
    expect([...out.subarray(0, b.readAndClear(out))]).toEqual([41, 99]);
  });

  it('read-and-clear is exact under concurrent marking from other threads: every mark is in a read, none twice between two marks, none made up', async () => {
    const pages = 4096;
    const b = new DirtyBitmap(pages);
    const rounds = 2000;
    // Two threads each mark a page `rounds` times: round r marks page (seed * r) % pages and counts it in its own
    // array once the mark is done, so the reader knows what had been marked before each read.
    const src = `
      const { workerData, parentPort } = require('node:worker_threads');
      const words = new Int32Array(workerData.bits);
      const done = new Int32Array(workerData.done);
      for (let r = 0; r < ${rounds}; r++) {
        const p = (workerData.seed * (r + 1) * 2654435761 >>> 0) % ${pages};
        Atomics.or(words, p >>> 5, 1 << (p & 31));
        Atomics.store(done, r, p + 1);
        if (r % 64 === 0) for (let k = 0; k < 2000; k++); // let the reader in between
      }
      parentPort.postMessage('ok');`;
    const dones = [new SharedArrayBuffer(rounds * 4), new SharedArrayBuffer(rounds * 4)];
    const workers = dones.map((done, k) => new Worker(src, { eval: true, workerData: { bits: b.words.buffer, done, seed: 7 + k * 1000 } }));
    const finished = Promise.all(workers.map((w) => new Promise((r) => w.once('message', r))));
    const seen = new Set<number>();
    const out = new Uint32Array(pages);
    let reads = 0;
    let over = false;
    finished.then(() => { over = true; });
    while (!over) {
      for (let k = 0, n = b.readAndClear(out); k < n; k++) seen.add(out[k]);
      reads++;
      await new Promise((r) => setImmediate(r));
    }
    for (let k = 0, n = b.readAndClear(out); k < n; k++) seen.add(out[k]);
    await Promise.all(workers.map((w) => w.terminate()));
    const marked = new Set<number>();
    for (const d of dones) for (const v of new Int32Array(d)) { expect(v).toBeGreaterThan(0); marked.add(v - 1); }
    expect(reads).toBeGreaterThan(1);
    expect([...seen].sort((x, y) => x - y)).toEqual([...marked].sort((x, y) => x - y));
    expect(b.count()).toBe(0);
  });
});
