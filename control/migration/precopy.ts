/**
 * Iterative pre-copy of a VM's memory (issue 21), as a live migration does
 * it: every page, then, round by round, the pages dirtied meanwhile — by the
 * guest's CPU (its bitmap: EPT's stand-in) and by its VF's DMA (the PF
 * driver's marks: the seed's log) — while the VM runs and traffic flows,
 * until what is left is small or the rounds run out; then the
 * stop-and-copy: the VF's receive paused (what arrives is counted,
 * `rxPaused`), the guest paused, the last dirty pages copied. The downtime
 * is the stop-and-copy's time.
 *
 * Pages go to a sink: another memory in this process (tests, the bench), or
 * the wire to another host. The copy yields to the event loop every
 * `chunk` pages, so the datapath forwards between them.
 */
import { DirtyBitmap, PAGE_SIZE } from '../../datapath/dirty-log.js';
import type { GuestMemory, PfDriver, VfPort } from '../../datapath/ports/vf/vf-port.js';
import type { Guest } from './guest-driver.js';

export interface PrecopyOptions {
  src: GuestMemory;
  /** Where pages go: `n` page numbers of `pages`, their bytes in src (a copy, or a send). */
  sink: (pages: Uint32Array, n: number, src: GuestMemory) => void | Promise<void>;
  /** The guest's CPU-side dirty bitmap (its driver marks what it writes). */
  cpu: DirtyBitmap;
  /** The VF and the PF driver, or null: no VF-side log (a migration that never sees the DMA: for comparison). */
  vf: { port: VfPort; pf: PfDriver } | null;
  /** The VF, to pause at the stop-and-copy whether or not its writes are logged. */
  vfPort: VfPort;
  guest: Guest;
  /** Rounds of pre-copy after the first (default 30), and the dirty set small enough to stop and copy (pages, default 256). */
  maxRounds?: number;
  smallPages?: number;
  /**
   * The downtime aimed at (ms, default 25): the pre-copy also stops when the dirty set would be
   * copied within it at the rate the rounds so far copied — as QEMU stops when the rest fits its
   * downtime limit. (A VF at full speed keeps its ring's buffers dirty however often they are
   * copied: a set that never shrinks below `smallPages`, but copies in a few ms.)
   */
  targetDowntimeMs?: number;
  /** Pages copied between two yields (default 2048). */
  chunk?: number;
}

export interface PrecopyReport {
  rounds: { pages: number; ms: number; cpuPages: number; vfPages: number }[];
  pagesCopied: number;
  converged: boolean;
  /** Why the pre-copy stopped: the set was small, it fit the target downtime, or the rounds ran out. */
  stoppedBy: 'small' | 'downtime' | 'rounds';
  stopAndCopy: { pages: number; ms: number };
  /** Stop-and-copy's time: VF and guest paused to the last page copied. */
  downtimeMs: number;
}

/** A sink that copies into another memory in this process. */
export function copyInto(dst: GuestMemory): (pages: Uint32Array, n: number, src: GuestMemory) => void {
  return (pages, n, src) => {
    let k = 0;
    while (k < n) {
      // A run of consecutive pages in one copy.
      let e = k + 1;
      while (e < n && pages[e] === pages[e - 1] + 1) e++;
      const from = src.base + pages[k] * PAGE_SIZE;
      dst.bytes.set(src.bytes.subarray(from, from + (e - k) * PAGE_SIZE), dst.base + pages[k] * PAGE_SIZE);
      k = e;
    }
  };
}

const tick = () => new Promise((r) => setImmediate(r));

export async function precopy(o: PrecopyOptions): Promise<PrecopyReport> {
  const m = o.src;
  const pagesN = m.pages;
  const chunk = o.chunk ?? 2048;
  const maxRounds = o.maxRounds ?? 30;
  const small = o.smallPages ?? 256;
  const target = o.targetDowntimeMs ?? 25;
  let copiedMs = 0;
  const vfBits = new DirtyBitmap(pagesN);
  const list = new Uint32Array(pagesN);
  const cpuList = new Uint32Array(pagesN);
  const vfList = new Uint32Array(pagesN);
  const mark = new Uint8Array(pagesN);
  if (o.vf !== null) o.vf.pf.startLog(o.vf.port, vfBits);
  o.cpu.readAndClear(list); // the log starts now: what was written before is in the first round
  let copied = 0;
  const send = async (n: number, yieldBetween: boolean) => {
    for (let k = 0; k < n; k += chunk) {
      const c = Math.min(chunk, n - k);
      await o.sink(list.subarray(k, k + c), c, m);
      copied += c;
      if (yieldBetween) await tick();
    }
  };
  // The dirty set: the union of both logs, in page order.
  const gather = (): { n: number; cpu: number; vf: number } => {
    const a = o.cpu.readAndClear(cpuList);
    const b = o.vf !== null ? vfBits.readAndClear(vfList) : 0;
    for (let k = 0; k < a; k++) mark[cpuList[k]] = 1;
    for (let k = 0; k < b; k++) mark[vfList[k]] = 1;
    let n = 0;
    for (let p = 0; p < pagesN; p++) if (mark[p] === 1) { list[n++] = p; mark[p] = 0; }
    return { n, cpu: a, vf: b };
  };
  const rounds: PrecopyReport['rounds'] = [];
  let t = performance.now();
  for (let p = 0; p < pagesN; p++) list[p] = p;
  await send(pagesN, true);
  rounds.push({ pages: pagesN, ms: performance.now() - t, cpuPages: 0, vfPages: 0 });
  copiedMs += rounds[0].ms;
  let stoppedBy: PrecopyReport['stoppedBy'] = 'rounds';
  for (let r = 0; r < maxRounds; r++) {
    const g = gather();
    // Pages a ms the rounds so far took (their time includes the traffic forwarded between chunks: a low estimate).
    const rate = copied / Math.max(copiedMs, 0.001);
    if (g.n <= small || g.n / rate <= target) {
      // These go in the stop-and-copy, with whatever dirties meanwhile.
      for (let k = 0; k < g.n; k++) mark[list[k]] = 1;
      stoppedBy = g.n <= small ? 'small' : 'downtime';
      break;
    }
    t = performance.now();
    await send(g.n, true);
    const ms = performance.now() - t;
    copiedMs += ms;
    rounds.push({ pages: g.n, ms, cpuPages: g.cpu, vfPages: g.vf });
  }
  const converged = stoppedBy !== 'rounds';
  // Stop and copy.
  const t0 = performance.now();
  o.vfPort.paused = true;
  await o.guest.pause();
  const g = gather();
  await send(g.n, false);
  const ms = performance.now() - t0;
  if (o.vf !== null) o.vf.pf.stopLog(o.vf.port);
  return { rounds: rounds.map((x) => ({ ...x, ms: +x.ms.toFixed(3) })), pagesCopied: copied, converged, stoppedBy, stopAndCopy: { pages: g.n, ms: +ms.toFixed(3) }, downtimeMs: +ms.toFixed(3) };
}
