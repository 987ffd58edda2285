/**
 * bench:migration — iterative pre-copy of a 256 MiB guest (issue 21), in one
 * process: the guest's driver thread consuming its VF's ring and dirtying
 * its own pages at a set rate, frames into its VF at a set rate through the
 * datapath, the memory copied round by round (the CPU-side and the VF-side
 * logs) into a second memory, then the stop-and-copy. Per case (traffic
 * rate × the guest's dirtying rate): the downtime (stop-and-copy), rounds,
 * pages copied, whether it converged, and whether the copy is exact. The
 * baseline, in the same run: stopping the guest and copying all of its
 * memory at once (a migration that is not live) — ratio = downtime /
 * baseline. Goal (issue 21): downtime ≤ 50 ms (QEMU's default maximum is
 * 300 ms), convergence whenever the dirty rate is below the copy rate.
 *
 *   node dist/bench/control/migration.js     (FPO_BENCH_SHORT=1: a 32 MiB guest, two cases)
 */
import { PacketBatch } from '../../datapath/batch.js';
import { Datapath } from '../../datapath/datapath.js';
import { DirtyBitmap, PAGE_SIZE } from '../../datapath/dirty-log.js';
import { GuestMemory, PfDriver, VfPort } from '../../datapath/ports/vf/vf-port.js';
import { concat, eth, ipv4, udp } from '../../fixtures/packets.js';
import { Guest } from '../../control/migration/guest-driver.js';
import { copyInto, precopy } from '../../control/migration/precopy.js';
import { SHORT, emit } from '../harness.js';

const SIZE = (SHORT ? 32 : 256) << 20;
const CASES: [number, number][] = SHORT ? [[0, 0], [500_000, 10_000]] : [[0, 0], [500_000, 0], [500_000, 10_000], [500_000, 50_000]];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function switchTo(vf: VfPort) {
  const dp = new Datapath({ maxFlows: 64 });
  dp.addPort(2, vf);
  dp.apply({ type: 'mapping-set', vpid: 2, ppid: 2 });
  dp.apply({ type: 'flow-install', key: new Uint32Array(19), mask: new Uint32Array(19), actions: [{ op: 'output', vpid: 2 }] } as never);
  const frames = Array.from({ length: 256 }, (_, k) => eth('02:00:00:00:00:02', '02:00:00:00:00:01', 0x0800, ipv4({ src: '10.0.0.1', dst: '10.0.0.2', proto: 17 }, udp(1000 + k, 9, new Uint8Array(22)))));
  const buf = concat(...frames);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const batch = new PacketBatch(256);
  let now = 1;
  let n = 0;
  return () => {
    for (let i = 0; i < 256; i++) dv.setUint32(i * 64 + 42, n++);
    batch.batchSetBuffer(buf);
    batch.count = 256;
    for (let i = 0; i < 256; i++) { batch.off[i] = i * 64; batch.caplen[i] = 64; batch.wirelen[i] = 64; batch.inPpid[i] = 1; batch.drop[i] = 0; }
    dp.process(batch, (now += 0.01));
  };
}

async function oneCase(pps: number, dirtyRate: number) {
  const srcSab = new SharedArrayBuffer(SIZE);
  const dstSab = new SharedArrayBuffer(SIZE);
  new Uint8Array(dstSab).fill(0); // touched before: the copy is timed, not the first touch of fresh pages
  const src = new GuestMemory(new Uint8Array(srcSab), 0, SIZE);
  const dst = new GuestMemory(new Uint8Array(dstSab), 0, SIZE);
  new Uint8Array(srcSab).fill(0);
  const cpu = new DirtyBitmap(src.pages);
  const guest = new Guest({ sab: srcSab, size: SIZE, cpuBits: cpu.words.buffer as SharedArrayBuffer, ring: 1024, bufLen: 2048, dirtyRate });
  const vf = new VfPort(src);
  const send = switchTo(vf);
  for (let i = 0; i < 200 && src.u32(0) === 0; i++) await sleep(10);
  let on = true;
  const t0 = performance.now();
  let sent = 0;
  const turn = () => {
    if (!on) return;
    const due = ((performance.now() - t0) * pps) / 1000;
    while (sent < due) { send(); sent += 256; }
    setImmediate(turn);
  };
  if (pps > 0) setImmediate(turn);
  await sleep(200);
  const r = await precopy({ src, sink: copyInto(dst), cpu, vf: { port: vf, pf: new PfDriver() }, vfPort: vf, guest, maxRounds: 30, smallPages: 256, chunk: 2048 });
  on = false;
  const offered = (sent * 1000) / (performance.now() - t0);
  const exact = Buffer.from(srcSab).equals(Buffer.from(dstSab));
  // The baseline: the guest stopped, all of its memory copied at once.
  const b0 = performance.now();
  new Uint8Array(dstSab).set(new Uint8Array(srcSab));
  const baselineMs = performance.now() - b0;
  await guest.stop();
  return {
    trafficPps: pps, offeredPps: Math.round(offered), guestDirtyPagesPerSec: dirtyRate,
    downtimeMs: r.downtimeMs, stopAndCopyPages: r.stopAndCopy.pages, rounds: r.rounds.length, pagesCopied: r.pagesCopied, converged: r.converged, stoppedBy: r.stoppedBy, exact,
    roundPages: r.rounds.map((x) => x.pages), baselineFullCopyMs: +baselineMs.toFixed(3), ratio: +(r.downtimeMs / baselineMs).toFixed(3),
    vfPaused: vf.rxPaused, vfCompleted: vf.completed,
  };
}

async function main(): Promise<void> {
  const cases = [];
  for (const [pps, d] of CASES) cases.push(await oneCase(pps, d));
  emit({ bench: 'migration', guestBytes: SIZE, pages: SIZE / PAGE_SIZE, cases, goalDowntimeMs: 50, met: cases.every((c) => c.downtimeMs <= 50 && c.converged && c.exact) });
}

main().catch((e) => { process.stderr.write(`bench migration: ${(e as Error).stack}\n`); process.exit(1); });
