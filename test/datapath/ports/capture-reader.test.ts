import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import pcapParser from 'pcap-parser';
import { PacketBatch } from '../../../datapath/batch.js';
import { D } from '../../../datapath/drops.js';
import { FpoError } from '../../../datapath/errors.js';
import { CaptureReader } from '../../../datapath/ports/capture-reader.js';
import { CORPUS, cleanTemp, needTool, tempDir, tsharkFields } from '../../helpers.js';

afterAll(cleanTemp);

interface Rec { a: number; b: number; caplen: number; wirelen: number; ifIndex: number; drop: number; hex: string }

function readAll(path: string, batchSize = 7): { recs: Rec[]; reader: CaptureReader } {
  const r = new CaptureReader(path, undefined, 4096);
  const b = new PacketBatch(batchSize);
  const recs: Rec[] = [];
  while (r.fill(b, 3) > 0) {
    for (let i = 0; i < b.count; i++) {
      expect(b.inPpid[i]).toBe(3);
      recs.push({ a: b.tsA[i], b: b.tsB[i], caplen: b.caplen[i], wirelen: b.wirelen[i], ifIndex: b.ifIndex[i], drop: b.drop[i], hex: Buffer.from(b.buf.subarray(b.off[i], b.off[i] + b.caplen[i])).toString('hex') });
    }
  }
  r.close();
  return { recs, reader: r };
}

/** A classic pcap in either byte order and either resolution. */
function classic(le: boolean, nanos: boolean, frames: { s: number; f: number; data: Buffer; orig?: number }[], linktype = 1): Buffer {
  const b = Buffer.alloc(24 + frames.reduce((n, x) => n + 16 + x.data.length, 0));
  const w32 = (v: number, o: number) => (le ? b.writeUInt32LE(v, o) : b.writeUInt32BE(v, o));
  const w16 = (v: number, o: number) => (le ? b.writeUInt16LE(v, o) : b.writeUInt16BE(v, o));
  w32(nanos ? 0xa1b23c4d : 0xa1b2c3d4, 0); w16(2, 4); w16(4, 6); w32(65535, 16); w32(linktype, 20);
  let o = 24;
  for (const x of frames) {
    w32(x.s, o); w32(x.f, o + 4); w32(x.data.length, o + 8); w32(x.orig ?? x.data.length, o + 12);
    x.data.copy(b, o + 16);
    o += 16 + x.data.length;
  }
  return b;
}

function block(le: boolean, type: number, body: Buffer): Buffer {
  const pad = (4 - (body.length % 4)) % 4;
  const len = 12 + body.length + pad;
  const b = Buffer.alloc(len);
  const w32 = (v: number, o: number) => (le ? b.writeUInt32LE(v, o) : b.writeUInt32BE(v, o));
  w32(type, 0); w32(len, 4); body.copy(b, 8); w32(len, len - 4);
  return b;
}

function u32s(le: boolean, ...v: number[]): Buffer {
  const b = Buffer.alloc(v.length * 4);
  v.forEach((x, i) => (le ? b.writeUInt32LE(x, i * 4) : b.writeUInt32BE(x, i * 4)));
  return b;
}

function pcapng(le: boolean): Buffer {
  const shbBody = Buffer.alloc(16);
  if (le) { shbBody.writeUInt32LE(0x1a2b3c4d, 0); shbBody.writeUInt16LE(1, 4); } else { shbBody.writeUInt32BE(0x1a2b3c4d, 0); shbBody.writeUInt16BE(1, 4); }
  shbBody.fill(0xff, 8);
  const idb = (linktype: number, snap: number, tsresol?: number) => {
    const h = Buffer.alloc(8);
    if (le) { h.writeUInt16LE(linktype, 0); h.writeUInt32LE(snap, 4); } else { h.writeUInt16BE(linktype, 0); h.writeUInt32BE(snap, 4); }
    if (tsresol === undefined) return h;
    const opt = Buffer.alloc(12);
    if (le) { opt.writeUInt16LE(9, 0); opt.writeUInt16LE(1, 2); } else { opt.writeUInt16BE(9, 0); opt.writeUInt16BE(1, 2); }
    opt[4] = tsresol;
    return Buffer.concat([h, opt]);
  };
  const frame = (n: number) => Buffer.from(Array.from({ length: 60 + n }, (_, i) => (i * 7 + n) & 255));
  return Buffer.concat([
    block(le, 0x0a0d0d0a, shbBody),
    block(le, 1, idb(1, 0, 9)),
    block(le, 0xbad, Buffer.from('unknown block, skipped')),
    block(le, 1, idb(101, 65535)),
    block(le, 6, Buffer.concat([u32s(le, 0, 1, 2, 61, 61), frame(1)])),
    block(le, 6, Buffer.concat([u32s(le, 1, 3, 4, 62, 62), frame(2)])),
    block(le, 3, Buffer.concat([u32s(le, 63), frame(3)])),
    block(le, 6, Buffer.concat([u32s(le, 0, 5, 6, 64, 100), frame(4)])),
  ]);
}

describe('CaptureReader', () => {
  it('reads classic pcap in both byte orders, µs and ns, the same records', () => {
    const frames = [1, 2, 3].map((n) => ({ s: 1000 + n, f: n * 10, data: Buffer.alloc(60 + n, n), orig: n === 2 ? 1500 : undefined }));
    const dir = tempDir();
    const seen: Rec[][] = [];
    for (const le of [true, false]) {
      for (const nanos of [false, true]) {
        const p = join(dir, `c-${le}-${nanos}.pcap`);
        writeFileSync(p, classic(le, nanos, frames));
        const { recs, reader } = readAll(p, 2);
        expect(reader.format).toBe('pcap');
        expect(reader.nanos).toBe(nanos);
        expect(reader.bigEndian).toBe(!le);
        expect(reader.error).toBeNull();
        seen.push(recs);
      }
    }
    for (const s of seen) expect(s).toEqual(seen[0]);
    expect(seen[0].map((r) => [r.a, r.b, r.caplen, r.wirelen])).toEqual([[1001, 10, 61, 61], [1002, 20, 62, 1500], [1003, 30, 63, 63]]);
  });

  it('reads pcapng with several interfaces, SPB and EPB, skips unknown blocks, marks non-Ethernet packets', () => {
    const dir = tempDir();
    for (const le of [true, false]) {
      const p = join(dir, `n-${le}.pcapng`);
      writeFileSync(p, pcapng(le));
      const { recs, reader } = readAll(p, 3);
      expect(reader.format).toBe('pcapng');
      expect(reader.error).toBeNull();
      expect(reader.interfaces.map((i) => [i.linktype, i.tsresol])).toEqual([[1, 9], [101, 6]]);
      expect(recs.map((r) => [r.ifIndex, r.a, r.b, r.caplen, r.wirelen, r.drop])).toEqual([
        [0, 1, 2, 61, 61, 0],
        [1, 3, 4, 62, 62, D.linkType],
        [0, 0, 0, 63, 63, 0],
        [0, 5, 6, 64, 100, 0],
      ]);
    }
  });

  it('refuses a file that is not a capture, naming the file and offset', () => {
    const p = join(tempDir(), 'not.pcap');
    writeFileSync(p, 'hello, this is text');
    expect(() => new CaptureReader(p)).toThrowError(FpoError);
    try { new CaptureReader(p); } catch (e) {
      expect((e as FpoError).code).toBe('FPO_ERR_BAD_CAPTURE');
      expect((e as FpoError).message).toContain(p);
      expect((e as FpoError).message).toContain('offset 0');
      expect((e as FpoError).message).toContain('magic');
    }
  });

  it('a record cut short stops reading at its offset, after delivering the records before it', () => {
    const frames = [1, 2, 3].map((n) => ({ s: n, f: 0, data: Buffer.alloc(100, n) }));
    const whole = classic(true, false, frames);
    const p = join(tempDir(), 'cut.pcap');
    writeFileSync(p, whole.subarray(0, whole.length - 30));
    const { recs, reader } = readAll(p);
    expect(recs.length).toBe(2);
    expect(reader.error?.code).toBe('FPO_ERR_TRUNCATED_CAPTURE');
    expect(reader.error?.offset).toBe(24 + 2 * 116);
    expect(reader.error?.message).toMatch(/offset 256: record cut short: 70 of 100 captured bytes/);
  });

  it('an absurd record length is an error at that record, not an allocation', () => {
    const b = classic(true, false, [{ s: 1, f: 0, data: Buffer.alloc(64) }, { s: 2, f: 0, data: Buffer.alloc(64) }]);
    b.writeUInt32LE(0x7fffffff, 24 + 80 + 8);
    const p = join(tempDir(), 'absurd.pcap');
    writeFileSync(p, b);
    const { recs, reader } = readAll(p);
    expect(recs.length).toBe(1);
    expect(reader.error?.code).toBe('FPO_ERR_BAD_CAPTURE');
    expect(reader.error?.offset).toBe(104);
  });

  it('a pcapng block whose trailing length disagrees is an error naming the offset', () => {
    const b = pcapng(true);
    b.writeUInt32LE(0x999, b.length - 4);
    const p = join(tempDir(), 'bad.pcapng');
    writeFileSync(p, b);
    const { recs, reader } = readAll(p);
    expect(recs.length).toBe(3);
    expect(reader.error?.message).toMatch(/trailing length 2457 differs from leading length/);
  });

  it('records larger than the chunk buffer are read whole', () => {
    const frames = [{ s: 1, f: 0, data: Buffer.alloc(10000, 1) }, { s: 2, f: 0, data: Buffer.alloc(60, 2) }];
    const p = join(tempDir(), 'big.pcap');
    writeFileSync(p, classic(true, false, frames));
    const { recs, reader } = readAll(p);
    expect(reader.error).toBeNull();
    expect(recs.map((r) => r.caplen)).toEqual([10000, 60]);
    expect(recs[0].hex).toBe('01'.repeat(10000));
  });
});

/**
 * Every batch of `path` read twice, in step: a full fill, and a lazy one
 * whose arrays are completed from packet `from(j)` of batch j on. Returns
 * how many batches were lazy (little-endian Ethernet pcap) and the records
 * compared.
 */
function lazyAgainstFull(path: string, chunk: number, from: (j: number, count: number) => number): { lazy: number; records: number } {
  const full = new CaptureReader(path, undefined, chunk);
  const lazy = new CaptureReader(path, undefined, chunk);
  const a = new PacketBatch(7);
  const b = new PacketBatch(7);
  let lazyBatches = 0;
  let records = 0;
  for (let j = 0; ; j++) {
    const n = full.fill(a, 3);
    expect(lazy.fill(b, 3, true), `${path} batch ${j}`).toBe(n);
    if (n === 0) break;
    records += n;
    const k = b.unfilled ? from(j, n) : 0;
    if (b.unfilled) {
      lazyBatches++;
      expect([b.tsA[0], b.tsB[0]]).toEqual([a.tsA[0], a.tsB[0]]);
      b.completeRecords(k);
      expect(b.unfilled).toBe(false);
    }
    for (let i = 0; i < n; i++) {
      expect(b.off[i], `${path} batch ${j} packet ${i}`).toBe(a.off[i]);
      if (i < k) continue; // taken by the lane before the fill: never read
      const row = (x: PacketBatch) => [x.caplen[i], x.wirelen[i], x.tsA[i], x.tsB[i], x.ifIndex[i], x.inPpid[i], x.drop[i], Buffer.from(x.buf.subarray(x.off[i] - 16, x.off[i])).toString('hex')];
      expect(row(b), `${path} batch ${j} packet ${i}`).toEqual(row(a));
    }
  }
  expect(lazy.error?.message).toBe(full.error?.message);
  full.close();
  lazy.close();
  return { lazy: lazyBatches, records };
}

describe('CaptureReader, lazy fill', () => {
  it('a lazy fill completed from any packet is the full fill (headers, lengths, a wire length below the captured one)', () => {
    const dir = tempDir();
    const frames = Array.from({ length: 40 }, (_, i) => ({ s: 1000 + i, f: i * 3, data: Buffer.alloc(20 + ((i * 37) % 300), i), orig: i % 5 === 0 ? 10 : undefined }));
    const path = join(dir, 'lazy.pcap');
    writeFileSync(path, classic(true, false, frames));
    for (const at of [0, 1, 3, 7]) {
      const r = lazyAgainstFull(path, 1024, (_j, n) => Math.min(at, n));
      expect(r.records).toBe(40);
      expect(r.lazy).toBeGreaterThan(3);
    }
    // Big-endian pcap and pcapng: never lazy.
    writeFileSync(path, classic(false, false, frames));
    expect(lazyAgainstFull(path, 1024, () => 0).lazy).toBe(0);
    writeFileSync(path, pcapng(true));
    expect(lazyAgainstFull(path, 1024, () => 0).lazy).toBe(0);
  });

  it('on the corpus: every classic pcap read lazily and completed gives the full fill', () => {
    let lazy = 0;
    let records = 0;
    for (const f of readdirSync(CORPUS).sort()) {
      const path = join(CORPUS, f);
      if (readFileSync(path).subarray(0, 4).toString('hex') !== 'd4c3b2a1') continue;
      const r = lazyAgainstFull(path, 4096, (j, n) => j % (n + 1));
      lazy += r.lazy;
      records += r.records;
    }
    expect(lazy).toBeGreaterThan(1000);
    expect(records).toBeGreaterThan(9000);
  }, 300_000);
});

describe('CaptureReader on the corpus', () => {
  const files = readdirSync(CORPUS).sort();

  it('agrees with pcap-parser on every record of every classic µs pcap it can read', async () => {
    let compared = 0;
    let records = 0;
    for (const f of files) {
      const path = join(CORPUS, f);
      const head = readFileSync(path).subarray(0, 4).toString('hex');
      if (head !== 'd4c3b2a1' && head !== 'a1b2c3d4') continue; // pcap-parser reads only µs pcap
      const theirs = await new Promise<{ h: { timestampSeconds: number; timestampMicroseconds: number; capturedLength: number }; d: Buffer }[]>((resolve) => {
        const out: { h: { timestampSeconds: number; timestampMicroseconds: number; capturedLength: number }; d: Buffer }[] = [];
        const parser = pcapParser.parse(path);
        parser.on('packet', (p: { header: { timestampSeconds: number; timestampMicroseconds: number; capturedLength: number }; data: Buffer }) => out.push({ h: p.header, d: p.data }));
        parser.on('error', () => undefined);
        parser.on('end', () => resolve(out));
      });
      const { recs } = readAll(path, 32);
      expect(recs.length, f).toBe(theirs.length);
      for (let i = 0; i < recs.length; i++) {
        const t = theirs[i];
        expect([recs[i].a, recs[i].b, recs[i].caplen, recs[i].hex], `${f} record ${i}`).toEqual([t.h.timestampSeconds, t.h.timestampMicroseconds, t.h.capturedLength, t.d.toString('hex')]);
      }
      compared++;
      records += recs.length;
    }
    expect(compared).toBeGreaterThan(700);
    expect(records).toBeGreaterThan(9000);
  }, 300_000);

  it('agrees with tshark on the frame count and captured lengths of every pcapng file', (ctx) => {
    needTool(ctx, 'tshark', 'needed to read pcapng files independently');
    let compared = 0;
    let frames = 0;
    const pcapng = files.filter((f) => readFileSync(join(CORPUS, f)).subarray(0, 4).toString('hex') === '0a0d0d0a');
    for (const f of pcapng) {
      const path = join(CORPUS, f);
      const { recs, reader } = readAll(path, 32);
      const theirs = tsharkFields(path, ['frame.cap_len']); // tshark reads every pcapng of the corpus: a refusal fails here
      if (reader.error) {
        // Where fpo stops at a damaged block, what it read is what tshark read up to there.
        expect(recs.map((r) => String(r.caplen)), f).toEqual(theirs.slice(0, recs.length).map((t) => t[0]));
      } else {
        expect(recs.map((r) => String(r.caplen)), f).toEqual(theirs.map((t) => t[0]));
      }
      compared++;
      frames += theirs.length;
    }
    expect(pcapng.length).toBe(45);
    expect(compared).toBe(pcapng.length);
    expect(frames).toBeGreaterThan(250);
  }, 300_000);
});

/** Descriptors this process holds now (its /proc/self/fd entries). */
const fdCount = () => readdirSync('/proc/self/fd').length;

describe('CaptureReader closes what it opened', () => {
  it('a directory, a FIFO, an empty file and a file that is not a capture are refused 100 times each, and no descriptor is left open', () => {
    const dir = tempDir();
    const fifo = join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    const empty = join(dir, 'empty.pcap');
    writeFileSync(empty, '');
    const text = join(dir, 'text.pcap');
    writeFileSync(text, 'SECRET-BYTES');
    const cases: [string, string, RegExp][] = [
      [dir, 'FPO_ERR_IO', /cannot open: is a directory/],
      [fifo, 'FPO_ERR_IO', /cannot open: not a regular file/], // and it does not block waiting for a writer
      [empty, 'FPO_ERR_BAD_CAPTURE', /file is 0 bytes, too short/],
      [text, 'FPO_ERR_BAD_CAPTURE', /offset 0: not a pcap or pcapng file/],
    ];
    const before = fdCount();
    let refused = 0;
    for (const [path, code, msg] of cases) {
      for (let i = 0; i < 100; i++) {
        let err: unknown = null;
        try { new CaptureReader(path); } catch (e) { err = e; }
        expect(err).toBeInstanceOf(FpoError);
        expect((err as FpoError).code).toBe(code);
        expect((err as FpoError).message).toMatch(msg);
        expect((err as FpoError).message).toContain(path);
        refused++;
      }
    }
    expect(refused).toBe(400);
    expect(fdCount()).toBe(before);
  });

  it('the refusal of a file that is not a capture does not echo the file\'s bytes', () => {
    const p = join(tempDir(), 'x.pcap');
    writeFileSync(p, 'SECRET-BYTES');
    let msg = '';
    try { new CaptureReader(p); } catch (e) { msg = (e as Error).message; }
    expect(msg).toMatch(/not a pcap or pcapng file/);
    expect(msg).not.toMatch(/SECR|53454352|0x5345/);
  });

  it('a source that throws on its first read is closed, and the error names it', () => {
    let closed = 0;
    const src = { name: 'broken', size: -1, read: () => { throw new Error('EIO: i/o error'); }, close: () => { closed++; } };
    expect(() => new CaptureReader(src)).toThrowError(/broken: offset 0: cannot read: EIO/);
    expect(closed).toBe(1);
  });
});

describe('CaptureReader from a source that delivers bytes as they arrive', () => {
  it('a stream that runs dry mid-record makes fill return 0 unfinished; the records come out whole and in order as bytes arrive', () => {
    const frames = Array.from({ length: 50 }, (_, n) => ({ s: n, f: n, data: Buffer.alloc(60 + n, n) }));
    const whole = classic(true, false, frames);
    // Bytes arrive in pieces of 37, the last piece with the end.
    let have = 24;
    let ended = false;
    let closed = 0;
    const src = {
      name: 'stream', size: -1,
      read(buf: Uint8Array, off: number, len: number, pos: number): number {
        if (pos >= have) return ended ? 0 : -1;
        const n = Math.min(len, have - pos);
        buf.set(whole.subarray(pos, pos + n), off);
        return n;
      },
      close() { closed++; },
    };
    const r = new CaptureReader(src, undefined, 4096);
    const b = new PacketBatch(4);
    const seen: number[] = [];
    let starvedFills = 0;
    while (!r.finished) {
      if (r.fill(b, 0) === 0) {
        if (r.finished) break;
        starvedFills++;
        have = Math.min(whole.length, have + 37);
        ended = have === whole.length;
        continue;
      }
      for (let i = 0; i < b.count; i++) {
        expect(Buffer.from(b.buf.subarray(b.off[i], b.off[i] + b.caplen[i])).equals(frames[b.tsA[i]].data)).toBe(true);
        seen.push(b.tsA[i]);
      }
    }
    expect(r.error).toBeNull();
    expect(seen).toEqual(frames.map((f) => f.s));
    // Worked out apart: (whole − 24) / 37 pieces, at least one dry fill each.
    expect(starvedFills).toBeGreaterThanOrEqual(Math.ceil((whole.length - 24) / 37));
    r.close();
    r.close();
    expect(closed).toBe(1);
  });

  it('a stream that ends mid-record is a truncated capture at that record\'s offset', () => {
    const frames = [1, 2, 3].map((n) => ({ s: n, f: 0, data: Buffer.alloc(100, n) }));
    const whole = classic(true, false, frames);
    const cut = whole.subarray(0, whole.length - 30);
    let pos0 = 0;
    const src = { name: 'cut', size: -1, read(buf: Uint8Array, off: number, len: number) { const n = Math.min(len, cut.length - pos0); buf.set(cut.subarray(pos0, pos0 + n), off); pos0 += n; return n; }, close() {} };
    const r = new CaptureReader(src, undefined, 4096);
    const b = new PacketBatch(8);
    let n = 0;
    while (r.fill(b, 0) > 0) n += b.count;
    expect(n).toBe(2);
    expect(r.finished).toBe(true);
    expect(r.error?.code).toBe('FPO_ERR_TRUNCATED_CAPTURE');
    expect(r.error?.offset).toBe(24 + 2 * 116);
  });
});
