/**
 * bench:vf — the cost of dirty-page logging on the datapath (issue 21): 64-
 * byte frames through the datapath to a VF port (DMA into a guest's memory,
 * descriptors written back), the guest's driver reposting each buffer as it
 * is used (in between batches, as a driver thread would), with the
 * hypervisor's dirty log off and on (the VF's completion signal, the PF
 * driver's inspection, the bitmap's marks), alternating rounds, best of
 * each. ratio = pps logged / pps unlogged. `dirtyPages` says the log saw the
 * writes (pages marked in the last logged round).
 *
 *   node dist/bench/ports/vf.js     (FPO_BENCH_SHORT=1: fewer frames)
 */
import { PacketBatch } from '../../datapath/batch.js';
import { Datapath } from '../../datapath/datapath.js';
import { DirtyBitmap } from '../../datapath/dirty-log.js';
import { DESC_BYTES, GuestMemory, PfDriver, REG_RING_AT, REG_TAIL, VfPort, initQueue } from '../../datapath/ports/vf/vf-port.js';
import { concat, eth, ipv4, udp } from '../../fixtures/packets.js';
import { SHORT, emit } from '../harness.js';

const FRAMES = (SHORT ? 782 : 15_625) * 256; // whole batches of 256
const ROUNDS = 3;
const RING = 4096;
const BUF = 2048;
const MEM = 64 << 20;

function main(): void {
  const bytes = new Uint8Array(MEM);
  bytes.fill(0);
  const m = new GuestMemory(bytes, 0, MEM);
  initQueue(m, RING, 4096, BUF);
  const ringAt = m.u32(REG_RING_AT);
  const bufsAt = 1 << 20;
  // The driver: every descriptor posted with its own buffer; reposting = advancing tail over what the VF used.
  for (let k = 0; k < RING; k++) m.setAddr(ringAt + k * DESC_BYTES, bufsAt + k * BUF);
  m.setU32(REG_TAIL, RING);
  const vf = new VfPort(m);
  const repost = () => m.setU32(REG_TAIL, (vf.headIndex + RING) >>> 0); // the driver took every completed one and gave it back
  const dp = new Datapath({ maxFlows: 64 });
  dp.addPort(2, vf);
  dp.apply({ type: 'mapping-set', vpid: 2, ppid: 2 });
  const key = new Uint32Array(19);
  dp.apply({ type: 'flow-install', key, mask: new Uint32Array(19), actions: [{ op: 'output', vpid: 2 }] } as never);
  const frames = Array.from({ length: 256 }, (_, k) => eth('02:00:00:00:00:02', '02:00:00:00:00:01', 0x0800, ipv4({ src: '10.0.0.1', dst: '10.0.0.2', proto: 17 }, udp(1000 + (k & 31), 9, new Uint8Array(22)))));
  const FL = frames[0].length; // 64 bytes
  const buf = concat(...frames);
  const batch = new PacketBatch(256);
  let now = 1;
  const fill = () => {
    batch.batchSetBuffer(buf);
    batch.count = 256;
    for (let i = 0, o = 0; i < 256; i++, o += FL) { batch.off[i] = o; batch.caplen[i] = FL; batch.wirelen[i] = FL; batch.inPpid[i] = 1; batch.drop[i] = 0; }
  };
  const pf = new PfDriver();
  const bitmap = new DirtyBitmap(m.pages);
  const out = new Uint32Array(m.pages);
  let dirty = 0;
  const run = (logged: boolean): number => {
    if (logged) pf.startLog(vf, bitmap);
    else pf.stopLog(vf);
    const t0 = performance.now();
    for (let done = 0; done < FRAMES; done += 256) {
      fill();
      dp.process(batch, (now += 0.001));
      repost();
    }
    const s = (performance.now() - t0) / 1000;
    if (logged) dirty = bitmap.readAndClear(out);
    return s;
  };
  run(false);
  run(true); // warm both
  const secs = { off: [] as number[], on: [] as number[] };
  for (let r = 0; r < ROUNDS; r++) {
    secs.off.push(run(false));
    secs.on.push(run(true));
  }
  const best = (a: number[]) => Math.min(...a);
  const pps = (x: number) => Math.round(FRAMES / x);
  emit({
    bench: 'vf', what: '64-byte frames through the datapath into a VF\'s guest memory (DMA, descriptor write-back), the driver reposting; dirty logging off and on',
    frames: FRAMES, ppsUnlogged: pps(best(secs.off)), ppsLogged: pps(best(secs.on)), ratio: Number((best(secs.off) / best(secs.on)).toFixed(3)),
    dirtyPages: dirty, completed: vf.completed, rxNoDescriptor: vf.rxNoDescriptor,
    runs: { unlogged: secs.off.map((x) => Number(x.toFixed(4))), logged: secs.on.map((x) => Number(x.toFixed(4))) },
  });
}

main();
