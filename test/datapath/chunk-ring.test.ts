/**
 * ChunkRing (datapath/chunk-ring.ts): a classic pcap read once into shared
 * chunks, each worker given its share. Two workers are driven here from
 * one thread, each with its own ChunkRing over the same shared block, the
 * indexing taken by turns as the threads take it.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { PacketBatch } from '../../datapath/batch.js';
import { ChunkRing, FAULT_HEADER_CUT, FAULT_RECORD_CUT, FAULT_TOO_LONG, RING_CHUNK, chunkRingShared, type ChunkRingShared } from '../../datapath/chunk-ring.js';
import { flowHash, workerOf } from '../../datapath/spread.js';
import { eth, ipv4, udp, writePcap, type Record as PcapRecord } from '../../fixtures/packets.js';
import { cleanTemp, tempDir } from '../helpers.js';

afterAll(cleanTemp);

/** `n` UDP frames of 64 flows, of lengths that vary (60..1400 bytes), each carrying its number. */
function records(n: number): PcapRecord[] {
  const recs: PcapRecord[] = [];
  for (let i = 0; i < n; i++) {
    const f = i % 64;
    const pay = new Uint8Array(18 + ((i * 7919) % 1340));
    pay[0] = i >> 16; pay[1] = (i >> 8) & 255; pay[2] = i & 255;
    recs.push({ sec: 1_700_000_000 + (i >> 12), usec: i & 4095, data: eth('02:00:00:00:00:01', '02:fe:00:00:00:01', 0x0800, ipv4({ src: `10.1.${f}.1`, dst: '10.0.0.1', proto: 17 }, udp(1000 + f, 53, pay))) });
  }
  return recs;
}

const LIMIT = 262144;

function ringOf(path: string, workers: number, le = true): { sh: ChunkRingShared; rings: ChunkRing[] } {
  const size = readFileSync(path).length;
  const sh = chunkRingShared(path, size, le, LIMIT, workers, 4096);
  const rings = Array.from({ length: workers }, (_, w) => new ChunkRing(sh, w, new Uint8Array(sh.mem)));
  return { sh, rings };
}

interface Seen { index: number; worker: number; bytes: string; caplen: number; tsA: number; tsB: number }

/**
 * Drives every worker over the whole capture: chunk by chunk, the indexing
 * taken by worker (c % workers) when it may be, each worker's share filled
 * (full fills) and finished. Returns what each saw, with input indices.
 */
function drive(rings: ChunkRing[], batch = 64): { seen: Seen[]; chunks: number[] } {
  const seen: Seen[] = [];
  const chunks: number[] = [];
  const b = new PacketBatch(batch);
  for (let c = 0; ; c++) {
    const idx = rings[c % rings.length];
    while (!rings[0].ready(c) && !rings[0].ended(c)) {
      if (!idx.tryIndex(c + 1) && !rings[0].tryIndex(c)) throw new Error(`chunk ${c}: nothing to index and not ready`);
    }
    if (rings[0].ended(c)) break;
    chunks.push(rings[0].records(c));
    for (const r of rings) {
      const own = r.ownCount(c);
      for (let j = 0; j < own; j += batch) {
        const n = r.fill(b, c, j, Math.min(own, j + batch), true, 7);
        for (let i = 0; i < n; i++) {
          expect(b.inPpid[i]).toBe(7);
          expect(b.drop[i]).toBe(0);
          seen.push({ index: r.first(c) + r.posOf(c, j + i), worker: r.me, bytes: Buffer.from(b.buf.subarray(b.off[i], b.off[i] + b.caplen[i])).toString('hex'), caplen: b.caplen[i], tsA: b.tsA[i], tsB: b.tsB[i] });
        }
      }
      r.finish(c);
    }
  }
  return { seen, chunks };
}

describe('ChunkRing: a classic pcap read once, each worker its share', () => {
  it('a capture of many chunks whose records straddle the chunk ends: every record once, whole, in its worker by flow hash, each worker\'s in input order', () => {
    const recs = records(12_000); // ~8.5 MB: many 1 MiB chunks, records cut by every chunk end
    const cap = join(tempDir('ring'), 'in.pcap');
    writePcap(cap, recs);
    const { rings } = ringOf(cap, 2);
    rings[0].join(1);
    const { seen, chunks } = drive(rings);
    expect(chunks.length).toBeGreaterThan(6);
    expect(seen.length).toBe(recs.length);
    const byIndex = [...seen].sort((a, b) => a.index - b.index);
    byIndex.forEach((s, i) => {
      expect(s.index).toBe(i);
      const d = recs[i].data;
      expect(s.bytes).toBe(Buffer.from(d).toString('hex'));
      expect(s.caplen).toBe(d.length);
      expect([s.tsA, s.tsB]).toEqual([recs[i].sec, recs[i].usec]);
      expect(s.worker).toBe(workerOf(flowHash(d, new DataView(d.buffer, d.byteOffset, d.byteLength), 0, d.length), 2));
    });
    for (const w of [0, 1]) {
      const mine = seen.filter((s) => s.worker === w).map((s) => s.index);
      expect(mine.length).toBeGreaterThan(1000);
      expect(mine).toEqual([...mine].sort((a, b) => a - b));
    }
    for (const r of rings) r.close();
  });

  it('before worker 1 joins, every record is worker 0\'s (no hashing); from the chunk claimed after the join on, the split', () => {
    const recs = records(4000);
    const cap = join(tempDir('ring-join'), 'in.pcap');
    writePcap(cap, recs);
    const { rings } = ringOf(cap, 2);
    rings[0].maxRecords(1000);
    let joinedAt = -1;
    rings[0].onClaim = (c, first) => {
      if (c === 2) {
        rings[0].join(1);
        joinedAt = first;
      }
    };
    const b = new PacketBatch(256);
    let worker1 = 0;
    for (let c = 0; !rings[0].ended(c); c++) {
      while (!rings[0].ready(c) && !rings[0].ended(c)) rings[0].tryIndex(c);
      if (rings[0].ended(c)) break;
      expect(rings[0].records(c)).toBeLessThanOrEqual(1000);
      if (c < 2) {
        expect(rings[0].ownCount(c)).toBe(rings[0].records(c));
        expect(rings[1].ownCount(c)).toBe(0);
      } else {
        expect(rings[0].ownCount(c) + rings[1].ownCount(c)).toBe(rings[0].records(c));
        worker1 += rings[1].ownCount(c);
        if (rings[1].ownCount(c) > 0) rings[1].fill(b, c, 0, Math.min(256, rings[1].ownCount(c)), false, 3);
        rings[1].finish(c);
      }
      rings[0].finish(c);
    }
    expect(joinedAt).toBe(2000);
    expect(worker1).toBeGreaterThan(500);
    // A lazy fill: offsets, packet 0's time, the rest in the record headers.
    expect(b.unfilled).toBe(true);
    expect(b.rawPcapLE).toBe(true);
    for (const r of rings) r.close();
  });

  it('a slot is not reused until every owner of its chunk is done with it', () => {
    const cap = join(tempDir('ring-slots'), 'in.pcap');
    writePcap(cap, records(14_000));
    const { sh, rings } = ringOf(cap, 2);
    rings[0].join(1);
    // Index as far as the ring allows, with nobody finishing: exactly `slots` chunks.
    let indexed = 0;
    while (rings[0].tryIndex(1000)) indexed++;
    expect(indexed).toBe(sh.slots);
    // Worker 0 done with chunk 0: still not free (worker 1 is not).
    rings[0].finish(0);
    expect(rings[0].tryIndex(1000)).toBe(false);
    rings[1].finish(0);
    expect(rings[0].tryIndex(1000)).toBe(true);
    expect(rings[0].ready(sh.slots)).toBe(true);
    for (const r of rings) r.close();
  });

  it('big-endian pcap: full fills read the byte order right (no lazy fill: its headers are not what a writer writes)', () => {
    const recs = records(3000);
    const le = join(tempDir('ring-be'), 'le.pcap');
    writePcap(le, recs);
    const b = readFileSync(le);
    const be = Buffer.from(b);
    be.writeUInt32BE(0xa1b2c3d4, 0); be.writeUInt16BE(2, 4); be.writeUInt16BE(4, 6); be.writeUInt32BE(LIMIT, 16); be.writeUInt32BE(1, 20);
    for (let o = 24; o < be.length; ) {
      const incl = b.readUInt32LE(o + 8);
      for (let w = 0; w < 16; w += 4) be.writeUInt32BE(b.readUInt32LE(o + w), o + w);
      o += 16 + incl;
    }
    const cap = join(tempDir('ring-be'), 'be.pcap');
    writeFileSync(cap, be);
    const { rings } = ringOf(cap, 2, false);
    rings[0].join(1);
    const { seen } = drive(rings);
    expect(seen.length).toBe(recs.length);
    for (const s of seen) {
      const r = recs[s.index];
      expect([s.caplen, s.tsA, s.tsB]).toEqual([r.data.length, r.sec, r.usec]);
    }
    for (const r of rings) r.close();
  });

  it('faults end the capture where they are, with the offset and numbers of the reader\'s message: a record cut short, a header cut short, a length above the limit', () => {
    const recs = records(2500);
    const dir = tempDir('ring-fault');
    const whole = join(dir, 'whole.pcap');
    writePcap(whole, recs);
    const bytes = readFileSync(whole);
    // Record boundaries: the offset of each record's header.
    const at: number[] = [];
    for (let o = 24; o < bytes.length; o += 16 + bytes.readUInt32LE(o + 8)) at.push(o);
    const k = 2000; // in the second chunk
    const cases: [string, Buffer, number, number, number, number][] = [
      ['record cut', bytes.subarray(0, at[k] + 16 + 5), FAULT_RECORD_CUT, at[k], 5, recs[k].data.length],
      ['header cut', bytes.subarray(0, at[k] + 9), FAULT_HEADER_CUT, at[k], 9, 0],
      ['too long', (() => { const c = Buffer.from(bytes); c.writeUInt32LE(LIMIT + 1, at[k] + 8); return c; })(), FAULT_TOO_LONG, at[k], LIMIT + 1, LIMIT],
    ];
    expect(at[k]).toBeGreaterThan(RING_CHUNK);
    for (const [name, data, kind, offset, a, b] of cases) {
      const cap = join(dir, `${name.replace(' ', '-')}.pcap`);
      writeFileSync(cap, data);
      const { rings } = ringOf(cap, 2);
      rings[0].join(1);
      const { seen } = drive(rings);
      expect(seen.length, name).toBe(k);
      expect(rings[0].fault(), name).toEqual({ kind, offset, a, b });
      for (const r of rings) r.close();
    }
  });
});
