import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { PacketBatch } from '../../../../datapath/batch.js';
import { Datapath } from '../../../../datapath/datapath.js';
import { DirtyBitmap, PAGE_SIZE } from '../../../../datapath/dirty-log.js';
import { DESC_BYTES, DESC_LEN, DESC_STATUS, GuestMemory, PfDriver, REG_BUF_LEN, REG_HEAD, REG_MAGIC, REG_RING_AT, REG_RING_SIZE, REG_TAIL, STATUS_DD, STATUS_EOP, VF_MAGIC, VfPort, initQueue } from '../../../../datapath/ports/vf/vf-port.js';
import { concat, eth, ipv4, udp } from '../../../../fixtures/packets.js';

const MB = 1 << 20;
const RING = 16;
const BUF = 2048;
const G = 64 << 10;

/** A guest of 1 MiB at offset 8192 of a bigger buffer, its queue set up, `posted` buffers posted from guest address `bufAt` (a buffer every 3000 bytes: some straddle pages). */
function guest(posted: number, bufAt = 5 * PAGE_SIZE - 1000) {
  const bytes = new Uint8Array(2 * MB);
  const m = new GuestMemory(bytes, 8192, MB);
  initQueue(m, RING, PAGE_SIZE, BUF);
  const bufs: number[] = [];
  const post = (k: number) => {
    const tail = m.u32(REG_TAIL);
    const d = PAGE_SIZE + (tail % RING) * DESC_BYTES;
    const a = bufAt + k * 3000;
    m.setAddr(d, a);
    m.dv.setUint8(m.base + d + DESC_STATUS, 0);
    m.setU32(REG_TAIL, tail + 1);
    bufs.push(a);
  };
  for (let k = 0; k < posted; k++) post(k);
  return { bytes, m, bufs, post };
}

/** A batch of frames (UDP, distinct payloads, lengths 60..) in one buffer. */
function frames(n: number): { batch: PacketBatch; list: Uint8Array[] } {
  const list = Array.from({ length: n }, (_, k) => eth('02:00:00:00:00:02', '02:00:00:00:00:01', 0x0800, ipv4({ src: '10.0.0.1', dst: '10.0.0.2', proto: 17 }, udp(1000 + k, 9, new Uint8Array(18 + k * 37).fill(k + 1)))));
  const batch = new PacketBatch(Math.max(1, n));
  batch.batchSetBuffer(concat(...list));
  let o = 0;
  list.forEach((f, i) => { batch.off[i] = o; batch.caplen[i] = f.length; batch.wirelen[i] = f.length; batch.inPpid[i] = 1; o += f.length; });
  batch.count = n;
  return { batch, list };
}

const idx = (n: number) => Uint16Array.from({ length: n }, (_, i) => i);

describe('VF receive path into guest memory', () => {
  it('each frame is written into the next posted buffer and its descriptor written back (length, DD|EOP); head follows; with no descriptor left, frames are counted, not written', () => {
    const { m, bufs } = guest(5);
    const vf = new VfPort(m);
    const { batch, list } = frames(7);
    vf.writeBatch(batch, idx(7), 0, 7);
    expect(vf.completed).toBe(5);
    expect(vf.rxNoDescriptor).toBe(2);
    expect(m.u32(REG_HEAD)).toBe(5);
    for (let k = 0; k < 5; k++) {
      const d = m.u32(REG_RING_AT) + k * DESC_BYTES;
      expect(m.dv.getUint16(m.base + d + DESC_LEN, true)).toBe(list[k].length);
      expect(m.dv.getUint8(m.base + d + DESC_STATUS)).toBe(STATUS_DD | STATUS_EOP);
      expect(Buffer.from(m.bytes.subarray(m.base + bufs[k], m.base + bufs[k] + list[k].length)).equals(Buffer.from(list[k]))).toBe(true);
    }
  });

  it('with dirty logging on, the PF driver marks exactly the pages the VF wrote: buffers (both pages of one that straddles) and descriptors; with it off, nothing is signalled or logged', () => {
    const { m, bufs } = guest(6, 7 * PAGE_SIZE - 50 - 9000); // buffer 3 starts 50 bytes before a page boundary
    const vf = new VfPort(m);
    const pf = new PfDriver();
    const bm = new DirtyBitmap(m.pages);
    // Off: frames written, nothing signalled, nothing marked, the VF keeps no log.
    const a = frames(2);
    vf.writeBatch(a.batch, idx(2), 0, 2);
    expect(pf.inspections).toBe(0);
    expect(vf.logTail).toBe(0);
    expect(bm.count()).toBe(0);
    // On.
    pf.startLog(vf, bm);
    const b = frames(4);
    vf.writeBatch(b.batch, idx(4), 0, 4);
    expect(pf.inspections).toBe(1); // one signal for the batch
    expect(pf.writesSeen).toBe(4);
    const want = new Set<number>();
    for (let k = 2; k < 6; k++) {
      for (let p = Math.floor(bufs[k] / PAGE_SIZE); p <= Math.floor((bufs[k] + b.list[k - 2].length - 1) / PAGE_SIZE); p++) want.add(p);
    }
    want.add(Math.floor((PAGE_SIZE + 2 * DESC_BYTES) / PAGE_SIZE)); // the ring's page
    want.add(0); // the registers' page: the VF writes its head back there
    const out = new Uint32Array(m.pages);
    const got = [...out.subarray(0, bm.readAndClear(out))];
    expect(got).toEqual([...want].sort((x, y) => x - y));
    expect(got).toContain(6); // buffer 3 (97 bytes from 50 before page 7): both pages
    expect(got).toContain(7);
    // Off again: the next writes mark nothing.
    pf.stopLog(vf);
    const { post } = { post: (k: number) => { const t = m.u32(REG_TAIL); const d = m.u32(REG_RING_AT) + (t % RING) * DESC_BYTES; m.setAddr(d, 100 * PAGE_SIZE + k * BUF); m.setU32(REG_TAIL, t + 1); } };
    post(0);
    const c = frames(1);
    vf.writeBatch(c.batch, idx(1), 0, 1);
    expect(vf.completed).toBe(7);
    expect(bm.count()).toBe(0);
  });

  it('through the datapath: a VF port takes a VM\'s frames like any port, into guest memory', () => {
    const { m, bufs } = guest(RING - 1, 8 * PAGE_SIZE);
    const vf = new VfPort(m);
    const dp = new Datapath({ maxFlows: 64 });
    dp.addPort(2, vf);
    dp.apply({ type: 'mapping-set', vpid: 2, ppid: 2 });
    const { batch, list } = frames(3);
    dp.apply({ type: 'flow-install', key: new Uint32Array(19), mask: new Uint32Array(19), actions: [{ op: 'output', vpid: 2 }] } as never);
    dp.process(batch, 1);
    expect(vf.completed).toBe(3);
    for (let k = 0; k < 3; k++) expect(Buffer.from(m.bytes.subarray(m.base + bufs[k], m.base + bufs[k] + list[k].length)).equals(Buffer.from(list[k]))).toBe(true);
    const st = dp.stats();
    expect(st.packetsIn).toBe(st.delivered + st.dropped);
  });

  it('fuzz: whatever a hostile guest writes in its registers and descriptors, the VF never writes outside its memory, never throws, and counts what it refused', () => {
    fc.assert(fc.property(
      fc.record({ ring: fc.oneof(fc.constantFrom(2, 16, 64, 3, 0, 65536, 131072), fc.nat()), ringAt: fc.oneof(fc.constantFrom(0, 4096, G, G - 16), fc.nat()), bufLen: fc.oneof(fc.constantFrom(0, 60, 2048, 70000), fc.nat()),
        head: fc.nat(), tail: fc.nat(), addrs: fc.array(fc.oneof(fc.constantFrom(0, 4096, G - 100, G + 4096, 2 ** 40), fc.nat()), { minLength: 1, maxLength: 8 }), logging: fc.boolean() }),
      (g) => {
        const bytes = new Uint8Array(3 * G);
        const m = new GuestMemory(bytes, G, G);
        m.setU32(REG_MAGIC, VF_MAGIC);
        m.setU32(REG_RING_SIZE, 16);
        m.setU32(REG_RING_AT, PAGE_SIZE);
        m.setU32(REG_BUF_LEN, BUF);
        const vf = new VfPort(m);
        const pf = new PfDriver();
        const bm = new DirtyBitmap(m.pages);
        if (g.logging) pf.startLog(vf, bm);
        const { batch } = frames(8);
        vf.writeBatch(batch, idx(1), 0, 1); // ready with sane registers, then the guest's
        m.setU32(REG_RING_SIZE, g.ring); m.setU32(REG_RING_AT, g.ringAt); m.setU32(REG_BUF_LEN, g.bufLen); m.setU32(REG_HEAD, g.head); m.setU32(REG_TAIL, g.tail);
        const at = g.ringAt % G;
        g.addrs.forEach((a, k) => { if (at + k * DESC_BYTES + 8 <= G) m.setAddr(at + k * DESC_BYTES, a); });
        bytes.fill(0xa5, 0, G);
        bytes.fill(0xa5, 2 * G, 3 * G);
        expect(() => vf.writeBatch(batch, idx(8), 0, 8)).not.toThrow();
        expect(bytes.subarray(0, G).every((b) => b === 0xa5)).toBe(true);
        expect(bytes.subarray(2 * G).every((b) => b === 0xa5)).toBe(true);
        expect(vf.completed + vf.rxNoDescriptor + vf.rxTooLong + vf.rxBadBuffer + vf.rxBadQueue).toBe(9);
      }), { numRuns: 300 });
    // (G: a 64 KiB guest between two 64 KiB guards.)
  });
});
