/**
 * Pre-copy of a guest's memory under traffic (issue 21), in one process: the
 * source guest (its driver thread consuming its VF's ring and dirtying its
 * own pages) gets ≥ 500 k frames a second through the datapath into its VF
 * while its memory is copied round by round to a destination memory; after
 * the stop-and-copy the two are equal byte for byte, and a driver started on
 * the copy goes on consuming its ring where the first stopped. Without the
 * VF-side log (the PF driver's marks) the copy misses what the DMA wrote:
 * pages differ — the log is what makes it exact.
 */
import { describe, expect, it } from 'vitest';
import { PacketBatch } from '../../../datapath/batch.js';
import { Datapath } from '../../../datapath/datapath.js';
import { DirtyBitmap, PAGE_SIZE } from '../../../datapath/dirty-log.js';
import { GuestMemory, PfDriver, REG_HEAD, VfPort } from '../../../datapath/ports/vf/vf-port.js';
import { concat, eth, ipv4, udp } from '../../../fixtures/packets.js';
import { Guest, driverState } from '../../../control/migration/guest-driver.js';
import { copyInto, precopy } from '../../../control/migration/precopy.js';

const SIZE = 32 << 20;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A datapath whose every frame goes to `vf` (ppid 2), and a sender of 256-frame batches. */
function switchTo(vf: VfPort) {
  const dp = new Datapath({ maxFlows: 64 });
  dp.addPort(2, vf);
  dp.apply({ type: 'mapping-set', vpid: 2, ppid: 2 });
  dp.apply({ type: 'flow-install', key: new Uint32Array(19), mask: new Uint32Array(19), actions: [{ op: 'output', vpid: 2 }] } as never);
  const frames = Array.from({ length: 256 }, (_, k) => eth('02:00:00:00:00:02', '02:00:00:00:00:01', 0x0800, ipv4({ src: '10.0.0.1', dst: '10.0.0.2', proto: 17 }, udp(1000 + k, 9, new Uint8Array(40).fill(k)))));
  const buf = concat(...frames);
  const batch = new PacketBatch(256);
  let now = 1;
  let sent = 0;
  const stamp = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const send = () => {
    // Each frame carries its number (the payload's first word): what the VF writes differs from what was there.
    for (let i = 0, o = 0; i < 256; o += frames[i].length, i++) stamp.setUint32(o + 42, sent + i);
    batch.batchSetBuffer(buf);
    batch.count = 256;
    for (let i = 0, o = 0; i < 256; i++, o += frames[i - 1].length) { batch.off[i] = o; batch.caplen[i] = frames[i].length; batch.wirelen[i] = frames[i].length; batch.inPpid[i] = 1; batch.drop[i] = 0; }
    dp.process(batch, (now += 0.01));
    sent += 256;
  };
  return { dp, send, sent: () => sent };
}

/** Traffic at `pps` (frames a second) on the event loop's turns until stopped. */
function traffic(send: () => void, pps: number) {
  let on = true;
  const t0 = performance.now();
  let done = 0;
  const turn = () => {
    if (!on) return;
    const due = ((performance.now() - t0) * pps) / 1000;
    while (done < due) { send(); done += 256; }
    setImmediate(turn);
  };
  setImmediate(turn);
  return { stop: () => { on = false; }, rate: () => (done * 1000) / (performance.now() - t0) };
}

async function migrateOnce(withVfLog: boolean) {
  const srcSab = new SharedArrayBuffer(SIZE);
  const dstSab = new SharedArrayBuffer(SIZE);
  const src = new GuestMemory(new Uint8Array(srcSab), 0, SIZE);
  const dst = new GuestMemory(new Uint8Array(dstSab), 0, SIZE);
  const cpu = new DirtyBitmap(src.pages);
  const guest = new Guest({ sab: srcSab, size: SIZE, cpuBits: cpu.words.buffer as SharedArrayBuffer, ring: 1024, bufLen: 2048, dirtyRate: 20_000 });
  const vf = new VfPort(src);
  const pf = new PfDriver();
  const sw = switchTo(vf);
  for (let i = 0; i < 100 && src.u32(0) === 0; i++) await sleep(10); // the driver sets its queue up
  const tr = traffic(sw.send, 600_000);
  await sleep(300);
  const report = await precopy({ src, sink: copyInto(dst), cpu, vf: withVfLog ? { port: vf, pf } : null, vfPort: vf, guest, maxRounds: 20, smallPages: 64, chunk: 1024, targetDowntimeMs: 0 }); // rounds until the set is small: the VF log's work shows
  tr.stop();
  const rate = tr.rate();
  // Everything paused: the source as the migration left it.
  const differ: number[] = [];
  for (let p = 0; p < src.pages; p++) {
    const a = Buffer.from(srcSab, p * PAGE_SIZE, PAGE_SIZE);
    const b = Buffer.from(dstSab, p * PAGE_SIZE, PAGE_SIZE);
    if (!a.equals(b)) differ.push(p);
  }
  return { src, dst, srcSab, dstSab, cpu, guest, vf, sw, report, rate, differ };
}

describe('pre-copy migration of a guest\'s memory under traffic into its VF', () => {
  it('with the VF-side log: the destination\'s memory equals the source\'s, and a driver there goes on where the first left off; every frame is written, counted paused, or counted without a descriptor', async () => {
    const r = await migrateOnce(true);
    try {
      expect(r.rate).toBeGreaterThan(500_000);
      expect(r.report.rounds.length).toBeGreaterThan(1);
      expect(r.report.rounds.slice(1).some((x) => x.vfPages > 0)).toBe(true); // the DMA dirtied pages the CPU did not
      expect(r.differ).toEqual([]);
      const before = driverState(r.src);
      expect(before.frames).toBeGreaterThan(10_000);
      // Every frame sent: written into the guest, counted paused, or counted for want of a descriptor.
      expect(r.vf.completed + r.vf.rxPaused + r.vf.rxNoDescriptor).toBe(r.sw.sent());
      // The destination: its VF on the copy (head where the source's stopped), a driver on the copy.
      await r.guest.stop();
      const cpu2 = new DirtyBitmap(r.dst.pages);
      const vf2 = new VfPort(r.dst);
      const g2 = new Guest({ sab: r.dstSab, size: r.dst.size, cpuBits: cpu2.words.buffer as SharedArrayBuffer, ring: 1024, bufLen: 2048, dirtyRate: 0 });
      const sw2 = switchTo(vf2);
      const drained = async () => { for (let i = 0; i < 300 && driverState(r.dst).next !== r.dst.u32(REG_HEAD); i++) await sleep(10); };
      await drained(); // first what the source's VF wrote and its driver had not taken yet
      for (let k = 0; k < 4; k++) { sw2.send(); await drained(); }
      const after = driverState(r.dst);
      // The frames it had not consumed at the pause (completed on the source) and the 1024 new ones, in order.
      expect(after.frames - before.frames).toBe(vf2.completed + (r.vf.completed - before.frames));
      expect(after.next).toBe(r.dst.u32(REG_HEAD));
      expect(vf2.rxNoDescriptor).toBe(0);
      await g2.stop();
    } finally {
      await r.guest.stop().catch(() => undefined);
    }
  }, 60_000);

  it('without it (the hypervisor\'s CPU-side log alone), the copy misses pages the VF wrote: they differ', async () => {
    const r = await migrateOnce(false);
    try {
      expect(r.rate).toBeGreaterThan(500_000);
      expect(r.differ.length).toBeGreaterThan(0);
    } finally {
      await r.guest.stop();
    }
  }, 60_000);
});
