import fc from 'fast-check';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Arena, arenaCopy } from '../../../datapath/arena.js';
import { PacketBatch } from '../../../datapath/batch.js';
import { KEY_WORDS, W_TP } from '../../../datapath/classifier/flow-key.js';
import { Datapath } from '../../../datapath/datapath.js';
import { CaptureReader } from '../../../datapath/ports/capture-reader.js';
import { CaptureWriter } from '../../../datapath/ports/capture-writer.js';
import { eth, ipv4, udp, writePcap } from '../../../fixtures/packets.js';
import { captureFrames, cleanTemp, tempDir } from '../../helpers.js';

afterAll(cleanTemp);

const frame = (sport: number) => eth('02:00:00:00:00:01', '02:ee:00:00:00:01', 0x0800, ipv4({ src: '192.0.2.1', dst: '10.0.0.1', proto: 17 }, udp(sport, 9, new Uint8Array(18 + (sport % 3)))));


describe('Execute: direct copies into capture ports', () => {
  it('a port that gets plain (direct) and encapsulated (listed) copies in one batch writes them in arrival order', () => {
    const dir = tempDir();
    const input = join(dir, 'in.pcap');
    // Odd source ports go out plain, even ones encapsulated, to the same port; lengths vary so records are not all aligned.
    const sent = Array.from({ length: 50 }, (_, i) => frame(1000 + i));
    writePcap(input, sent.map((data, i) => ({ sec: 1, usec: i, data })));

    const arena = new Arena(1 << 16);
    const reader = new CaptureReader(input, arena, 4096);
    const dp = new Datapath({ batchCapacity: 16 });
    const out = join(dir, 'uplink.pcap');
    const w = new CaptureWriter(out, reader, arena, 1024);
    dp.addPort(1, w);
    dp.apply({ type: 'mapping-set', vpid: 10, ppid: 1 });
    dp.apply({ type: 'tunnel-add', tunnel: { kind: 'vxlan', srcMac: Uint8Array.of(2, 0, 0, 0, 0, 0xaa), dstMac: Uint8Array.of(2, 0, 0, 0, 0, 0xbb), srcIp: Uint8Array.of(192, 168, 0, 1), dstIp: Uint8Array.of(192, 168, 0, 2) } });
    const mask = new Uint32Array(KEY_WORDS);
    mask[W_TP] = 0x00010000; // the source port's low bit
    const odd = new Uint32Array(KEY_WORDS);
    odd[W_TP] = 0x00010000;
    dp.apply({ type: 'flow-install', key: odd, mask, actions: [{ op: 'output', vpid: 10 }] });
    dp.apply({ type: 'flow-install', key: new Uint32Array(KEY_WORDS), mask, actions: [{ op: 'encap', tunnel: 0, vni: 7 }, { op: 'output', vpid: 10 }] });

    const batch = new PacketBatch(16);
    while (reader.fill(batch, 5) > 0) dp.process(batch, 1000);
    w.close();
    reader.close();

    const got = captureFrames(out);
    expect(got.length).toBe(sent.length);
    got.forEach((g, i) => {
      const plain = (1000 + i) % 2 === 1;
      if (plain) expect(Buffer.from(g).equals(Buffer.from(sent[i]))).toBe(true);
      else expect(Buffer.from(g.subarray(g.length - sent[i].length)).equals(Buffer.from(sent[i]))).toBe(true);
    });
    const st = dp.stats();
    expect(st.packetsIn).toBe(50);
    expect(st.delivered).toBe(50);
    const port = st.ports.find((p) => p.ppid === 1)!;
    expect(port.txPackets).toBe(50);
    // Bytes as they went out: encapsulated copies with their outer headers.
    expect(port.txBytes).toBe(got.reduce((s, f) => s + f.length, 0));
    expect(port.txBytes).toBeGreaterThan(sent.reduce((s, f) => s + f.length, 0));
  });

  it('ports added after a direct port (the per-port arrays grow under it) leave its output whole; a 4095th port works', () => {
    const dir = tempDir();
    const input = join(dir, 'in.pcap');
    const sent = Array.from({ length: 40 }, (_, i) => frame(2000 + i));
    writePcap(input, sent.map((data, i) => ({ sec: 1, usec: i, data })));
    const arena = new Arena(1 << 16);
    const reader = new CaptureReader(input, arena, 4096);
    const dp = new Datapath({ batchCapacity: 8 });
    const first = new CaptureWriter(join(dir, 'first.pcap'), reader, arena, 1024);
    const last = new CaptureWriter(join(dir, 'last.pcap'), reader, arena, 1024);
    dp.addPort(1, first);
    for (let p = 2; p < 4095; p++) dp.addPort(p, { writeBatch: () => undefined });
    dp.addPort(4095, last);
    dp.apply({ type: 'mapping-set', vpid: 10, ppid: 1 });
    dp.apply({ type: 'mapping-set', vpid: 11, ppid: 4095 });
    const mask = new Uint32Array(KEY_WORDS);
    mask[W_TP] = 0x00010000;
    const odd = new Uint32Array(KEY_WORDS);
    odd[W_TP] = 0x00010000;
    dp.apply({ type: 'flow-install', key: odd, mask, actions: [{ op: 'output', vpid: 11 }] });
    dp.apply({ type: 'flow-install', key: new Uint32Array(KEY_WORDS), mask, actions: [{ op: 'output', vpid: 10 }] });
    const batch = new PacketBatch(8);
    while (reader.fill(batch, 5) > 0) dp.process(batch, 1000);
    first.close();
    last.close();
    reader.close();
    const even = sent.filter((_, i) => i % 2 === 0).map((f) => Buffer.from(f).toString('hex'));
    const oddF = sent.filter((_, i) => i % 2 === 1).map((f) => Buffer.from(f).toString('hex'));
    expect(captureFrames(join(dir, 'first.pcap')).map((f) => Buffer.from(f).toString('hex'))).toEqual(even);
    expect(captureFrames(join(dir, 'last.pcap')).map((f) => Buffer.from(f).toString('hex'))).toEqual(oddF);
    expect(dp.stats().delivered).toBe(40);
  });

  it('arenaCopy moves the same bytes as copyWithin, aligned or not (property)', () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: 300 }), fc.integer({ min: 0, max: 400 }), fc.integer({ min: 0, max: 400 }), (len, from, gap) => {
      const arena = new Arena(2048);
      for (let i = 0; i < 2048; i++) arena.bytes[i] = (i * 7 + 3) & 255;
      const expected = arena.bytes.slice();
      const to = from + len + gap;
      expected.copyWithin(to, from, from + len);
      arenaCopy(arena.bytes, arena.words, from, len, to);
      expect(Buffer.from(arena.bytes).equals(Buffer.from(expected))).toBe(true);
    }));
  });
});
