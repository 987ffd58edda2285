import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Arena } from '../../../datapath/arena.js';
import { PacketBatch } from '../../../datapath/batch.js';
import { CaptureReader } from '../../../datapath/ports/capture-reader.js';
import { CaptureWriter, partialPath } from '../../../datapath/ports/capture-writer.js';
import { demoFrames, parseFrames, toRecords } from '../../../fixtures/make.js';
import { writePcap } from '../../../fixtures/packets.js';
import { CORPUS, cleanTemp, needTool, tempDir, tsharkFields } from '../../helpers.js';

afterAll(cleanTemp);

/** Copies every record of `input` through a writer sharing the reader's arena. */
function copy(input: string, output: string, writerBuffer = 4096): void {
  const arena = new Arena(1 << 16);
  const r = new CaptureReader(input, arena, 8192);
  const w = new CaptureWriter(output, r, arena, writerBuffer);
  const b = new PacketBatch(5);
  const idx = Uint16Array.from({ length: 5 }, (_, i) => i);
  while (r.fill(b, 1) > 0) w.writeBatch(b, idx, 0, b.count);
  w.close();
  r.close();
}

function records(path: string): string[] {
  const r = new CaptureReader(path);
  const b = new PacketBatch(16);
  const out: string[] = [];
  while (r.fill(b, 0) > 0) for (let i = 0; i < b.count; i++) out.push(`${b.ifIndex[i]}/${b.tsA[i]}/${b.tsB[i]}/${b.wirelen[i]}/${Buffer.from(b.buf.subarray(b.off[i], b.off[i] + b.caplen[i])).toString('hex')}`);
  r.close();
  return out;
}

describe('CaptureWriter', () => {
  it('a classic pcap copied through reader and writer is byte-identical', () => {
    const dir = tempDir();
    const a = join(dir, 'a.pcap');
    writePcap(a, toRecords([...demoFrames(), ...parseFrames()]));
    copy(a, join(dir, 'b.pcap'));
    expect(readFileSync(join(dir, 'b.pcap')).equals(readFileSync(a))).toBe(true);
  });

  it('a pcapng copy keeps every record, interface and timestamp, and tshark reads it alike', (ctx) => {
    needTool(ctx, 'tshark', 'checks the written pcapng');
    const dir = tempDir();
    let compared = 0;
    for (const f of ['OSPFv2_Capture_FINAL.pcapng', 'time_2107.pcapng', 'of10_7050q.pcapng', 'vsock-1.pcapng']) {
      const src = join(CORPUS, f);
      const srcRecs = records(src); // each of these is a file the reader takes: a refusal fails the test
      const srcRows = tsharkFields(src, ['frame.time_epoch', 'frame.cap_len']);
      expect(srcRecs.length, f).toBe(srcRows.length);
      expect(srcRecs.length, f).toBeGreaterThan(0);
      const out = join(dir, f);
      copy(src, out);
      expect(records(out), f).toEqual(srcRecs);
      expect(tsharkFields(out, ['frame.time_epoch', 'frame.cap_len']), f).toEqual(srcRows);
      compared += srcRecs.length;
    }
    expect(compared).toBe(30 + 1 + 4 + 10);
  });

  it('a record larger than the write buffer is written whole, and later records still are', () => {
    const dir = tempDir();
    const a = join(dir, 'big.pcap');
    const frames = [new Uint8Array(60).fill(1), new Uint8Array(9000).fill(2), new Uint8Array(70).fill(3), new Uint8Array(5000).fill(4), new Uint8Array(80).fill(5)];
    writePcap(a, toRecords(frames));
    copy(a, join(dir, 'big2.pcap'), 4096);
    expect(readFileSync(join(dir, 'big2.pcap')).equals(readFileSync(a))).toBe(true);
  });

  it('a port that emits nothing leaves no file', () => {
    const dir = tempDir();
    const w = new CaptureWriter(join(dir, 'none.pcap'), { format: 'pcap', nanos: false, interfaces: [{ linktype: 1, snaplen: 65535, tsresol: 6, tsoffset: 0 }] });
    w.close();
    expect(w.opened).toBe(false);
    expect(() => readFileSync(join(dir, 'none.pcap'))).toThrow();
  });

  it('writes ns timestamps with the ns magic', () => {
    const dir = tempDir();
    const a = join(dir, 'ns.pcap');
    const b = Buffer.alloc(24 + 16 + 60);
    b.writeUInt32LE(0xa1b23c4d, 0); b.writeUInt16LE(2, 4); b.writeUInt16LE(4, 6); b.writeUInt32LE(65535, 16); b.writeUInt32LE(1, 20);
    b.writeUInt32LE(5, 24); b.writeUInt32LE(123456789, 28); b.writeUInt32LE(60, 32); b.writeUInt32LE(60, 36);
    writeFileSync(a, b);
    copy(a, join(dir, 'ns2.pcap'));
    expect(readFileSync(join(dir, 'ns2.pcap')).equals(b)).toBe(true);
  });
});

describe('CaptureWriter with partial (a replay\'s outputs)', () => {
  it('writes under <path>.partial-PID while open and takes the final name only on close; tshark reads the result', (ctx) => {
    needTool(ctx, 'tshark', 'reads the renamed capture');
    const dir = tempDir();
    const input = join(dir, 'in.pcap');
    writePcap(input, toRecords(demoFrames()));
    const arena = new Arena(1 << 16);
    const r = new CaptureReader(input, arena, 8192);
    const out = join(dir, 'out.pcap');
    const w = new CaptureWriter(out, r, arena, 4096, { partial: true });
    expect(w.writingPath).toBe(partialPath(out));
    expect(w.writingPath).toBe(`${out}.partial-${process.pid}`);
    const b = new PacketBatch(5);
    const idx = Uint16Array.from({ length: 5 }, (_, i) => i);
    let n = 0;
    while (r.fill(b, 1) > 0) {
      w.writeBatch(b, idx, 0, b.count);
      n += b.count;
      // Mid-way (as a killed run would leave it): only the temp name exists.
      expect(readdirSync(dir).sort()).toEqual(['in.pcap', `out.pcap.partial-${process.pid}`]);
    }
    r.close();
    expect(n).toBe(demoFrames().length);
    w.close();
    expect(readdirSync(dir).sort()).toEqual(['in.pcap', 'out.pcap']);
    expect(readFileSync(out)).toEqual(readFileSync(input));
    expect(tsharkFields(out, ['frame.number'])).toHaveLength(n);
  });

  it('abandon() removes the temp file and leaves an existing file of the final name as it was', () => {
    const dir = tempDir();
    const input = join(dir, 'in.pcap');
    writePcap(input, toRecords(demoFrames()));
    const out = join(dir, 'out.pcap');
    writeFileSync(out, 'an earlier run\'s');
    const r = new CaptureReader(input);
    const w = new CaptureWriter(out, r, undefined, 4096, { partial: true });
    const b = new PacketBatch(5);
    r.fill(b, 1);
    w.writeBatch(b, Uint16Array.of(0, 1, 2, 3, 4), 0, b.count);
    w.flush();
    expect(existsSync(w.writingPath)).toBe(true);
    w.abandon();
    r.close();
    expect(w.opened).toBe(false);
    expect(readdirSync(dir).sort()).toEqual(['in.pcap', 'out.pcap']);
    expect(readFileSync(out, 'utf8')).toBe('an earlier run\'s');
  });

  it('without partial the file has its final name from the first packet (fpo run\'s ports)', () => {
    const dir = tempDir();
    const input = join(dir, 'in.pcap');
    writePcap(input, toRecords(demoFrames()));
    const out = join(dir, 'out.pcap');
    const r = new CaptureReader(input);
    const w = new CaptureWriter(out, r);
    const b = new PacketBatch(5);
    r.fill(b, 1);
    w.writeBatch(b, Uint16Array.of(0, 1, 2, 3, 4), 0, b.count);
    w.flush();
    expect(readdirSync(dir).sort()).toEqual(['in.pcap', 'out.pcap']);
    w.close();
    r.close();
  });
});
