import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Arena } from '../../../datapath/arena.js';
import { PacketBatch } from '../../../datapath/batch.js';
import { CaptureReader } from '../../../datapath/ports/capture-reader.js';
import { CaptureWriter } from '../../../datapath/ports/capture-writer.js';
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
