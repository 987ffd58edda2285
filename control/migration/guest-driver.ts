/**
 * The guest (issue 21): a worker thread standing for the VM behind a VF
 * port — its NIC driver and its own work. It sees the VM's memory (a
 * SharedArrayBuffer, or the guest memory file mapped into its own port
 * memory) and:
 *
 *   - drives the VF's receive queue: sets it up when the memory has none
 *     (N descriptors in page 1 on, buffers after them), then consumes each
 *     completed descriptor in order (DD set), folds the frame into a running
 *     checksum, and posts the buffer again;
 *   - dirties its own memory at a set rate (pages a second, from the pages
 *     after the buffers), marking each page it writes in the hypervisor's
 *     CPU-side dirty bitmap — standing in for EPT dirty bits, which a
 *     hypervisor gets from the CPU for the guest's own writes (and never for
 *     a VF's DMA).
 *
 * Everything the driver must know to go on lives in the guest's memory
 * (page 0 after the queue's registers: its next descriptor, frames and
 * bytes consumed, their checksum, its workload's sequence): a driver
 * started on a migrated copy goes on where the first left off.
 *
 * Control (a SharedArrayBuffer of Int32): [0] RUN / PAUSE (asked) / PAUSED
 * (answered) / STOP; [1] the dirtying rate in pages a second.
 */
import { closeSync, openSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { Worker, isMainThread, workerData } from 'node:worker_threads';
import { DirtyBitmap, PAGE_SIZE } from '../../datapath/dirty-log.js';
import { DESC_BYTES, DESC_LEN, DESC_STATUS, GuestMemory, REG_BUF_LEN, REG_MAGIC, REG_RING_AT, REG_RING_SIZE, REG_TAIL, STATUS_DD, VF_MAGIC, initQueue } from '../../datapath/ports/vf/vf-port.js';
import { PortMemory } from '../../datapath/ports/port-memory.js';

/** The driver's own words in page 0 (after the queue's registers). */
export const DRV_NEXT = 64;
export const DRV_FRAMES = 68;
export const DRV_SUM = 72;
export const DRV_SEQ = 76;
export const DRV_BYTES_LO = 80;
export const DRV_BYTES_HI = 84;

export const CTL_RUN = 0;
export const CTL_PAUSE = 1;
export const CTL_PAUSED = 2;
export const CTL_STOP = 3;

export interface GuestSpec {
  /** The memory: a shared buffer, or a file of `size` bytes. */
  sab?: SharedArrayBuffer;
  file?: string;
  size: number;
  /** The hypervisor's CPU-side bitmap (DirtyBitmap.words.buffer). */
  cpuBits: SharedArrayBuffer;
  /** Receive queue set up when the memory has none: descriptors and buffer bytes. */
  ring: number;
  bufLen: number;
  /** Dirtying rate, pages a second (0: none). */
  dirtyRate: number;
}

const HERE = fileURLToPath(import.meta.url);
const WORKER_FILE = HERE.endsWith('.ts') ? join(dirname(HERE), '..', '..', 'dist', 'control', 'migration', 'guest-driver.js') : HERE;

/** The guest's thread, from the hypervisor's side: started, paused (for the stop-and-copy), resumed, stopped. */
export class Guest {
  readonly ctl = new Int32Array(new SharedArrayBuffer(8));
  private readonly worker: Worker;
  readonly exited: Promise<number>;

  constructor(spec: GuestSpec) {
    this.ctl[1] = spec.dirtyRate;
    this.worker = new Worker(WORKER_FILE, { workerData: { fpoGuest: { ...spec, ctl: this.ctl.buffer } } });
    this.exited = new Promise((resolve, reject) => {
      this.worker.once('error', reject);
      this.worker.once('exit', resolve);
    });
  }

  /** Resolves when the driver has stopped between two steps (nothing of it runs until resume). */
  async pause(): Promise<void> {
    Atomics.store(this.ctl, 0, CTL_PAUSE);
    // The driver answers between two of its steps (well under a millisecond); a short spin, not a wait on the event loop.
    const t0 = performance.now();
    while (Atomics.load(this.ctl, 0) !== CTL_PAUSED) {
      if (performance.now() - t0 > 2000) throw new Error('guest: no answer to pause in 2 s');
      Atomics.wait(this.ctl, 0, CTL_PAUSE, 0.05);
    }
  }

  resume(): void {
    Atomics.store(this.ctl, 0, CTL_RUN);
    Atomics.notify(this.ctl, 0);
  }

  async stop(): Promise<void> {
    Atomics.store(this.ctl, 0, CTL_STOP);
    Atomics.notify(this.ctl, 0);
    await this.exited;
  }
}

/** What the driver's words in memory say now (frames and bytes consumed, their checksum, its next descriptor). */
export function driverState(m: GuestMemory): { next: number; frames: number; sum: number; seq: number; bytes: number } {
  return { next: m.u32(DRV_NEXT), frames: m.u32(DRV_FRAMES), sum: m.u32(DRV_SUM), seq: m.u32(DRV_SEQ), bytes: m.u32(DRV_BYTES_LO) + m.u32(DRV_BYTES_HI) * 4294967296 };
}

// --- the worker ---

function run(spec: GuestSpec & { ctl: SharedArrayBuffer }): void {
  let m: GuestMemory;
  if (spec.sab !== undefined) m = new GuestMemory(new Uint8Array(spec.sab), 0, spec.size);
  else {
    const fd = openSync(spec.file!, 'r+');
    try {
      const pm = PortMemory.get();
      m = new GuestMemory(pm.bytes, pm.mapSocket(fd, spec.size, `guest ${spec.file}`), spec.size);
    } finally {
      closeSync(fd);
    }
  }
  const ctl = new Int32Array(spec.ctl);
  const cpu = new DirtyBitmap(m.pages, spec.cpuBits);
  const bytes = m.bytes;
  const base = m.base;
  // The driver's writes to its own memory: marked as the CPU would (EPT).
  const w32 = (a: number, v: number) => { m.setU32(a, v); cpu.mark(a >>> 12); };
  if (m.u32(REG_MAGIC) !== VF_MAGIC) {
    const ringAt = PAGE_SIZE;
    initQueue(m, spec.ring, ringAt, spec.bufLen);
    const bufsAt = Math.ceil((ringAt + spec.ring * DESC_BYTES) / PAGE_SIZE) * PAGE_SIZE;
    for (let k = 0; k < spec.ring; k++) m.setAddr(ringAt + k * DESC_BYTES, bufsAt + k * spec.bufLen);
    m.setU32(REG_TAIL, spec.ring);
    cpu.markBytes(0, bufsAt); // all of it written by this CPU
  }
  const n = m.u32(REG_RING_SIZE);
  const ringAt = m.u32(REG_RING_AT);
  const bufLen = m.u32(REG_BUF_LEN);
  const workAt = Math.ceil((ringAt + n * DESC_BYTES) / PAGE_SIZE) * PAGE_SIZE + Math.ceil((n * bufLen) / PAGE_SIZE) * PAGE_SIZE;
  const workPages = Math.max(0, m.pages - workAt / PAGE_SIZE);
  let last = performance.now();
  let owed = 0;
  for (;;) {
    const c = Atomics.load(ctl, 0);
    if (c === CTL_STOP) return;
    if (c === CTL_PAUSE || c === CTL_PAUSED) {
      Atomics.store(ctl, 0, CTL_PAUSED);
      Atomics.notify(ctl, 0);
      Atomics.wait(ctl, 0, CTL_PAUSED, 100);
      last = performance.now();
      continue;
    }
    // The queue: every completed descriptor, in order.
    let next = m.u32(DRV_NEXT);
    let took = 0;
    for (;;) {
      const d = ringAt + (next & (n - 1)) * DESC_BYTES;
      if ((bytes[base + d + DESC_STATUS] & STATUS_DD) === 0) break;
      const len = m.dv.getUint16(base + d + DESC_LEN, true);
      const a = m.addr(d);
      let sum = m.u32(DRV_SUM);
      for (let k = 0; k < len; k += 4) sum = (Math.imul(sum, 31) + (k + 4 <= len ? m.dv.getUint32(base + a + k, true) : bytes[base + a + k])) >>> 0;
      w32(DRV_SUM, sum);
      bytes[base + d + DESC_STATUS] = 0; // the descriptor given back to the VF, with the same buffer
      cpu.markBytes(d, DESC_BYTES);
      next = (next + 1) >>> 0;
      w32(DRV_NEXT, next);
      w32(DRV_FRAMES, m.u32(DRV_FRAMES) + 1);
      const b = m.u32(DRV_BYTES_LO) + m.u32(DRV_BYTES_HI) * 4294967296 + len;
      w32(DRV_BYTES_LO, b % 4294967296);
      w32(DRV_BYTES_HI, Math.floor(b / 4294967296));
      w32(REG_TAIL, (m.u32(REG_TAIL) + 1) >>> 0);
      if (++took === 256) break;
    }
    // Its own work: `rate` pages a second, each a word written in a page after the buffers.
    const now = performance.now();
    owed += ((now - last) * Atomics.load(ctl, 1)) / 1000;
    last = now;
    while (owed >= 1 && workPages > 0) {
      const seq = (m.u32(DRV_SEQ) + 1) >>> 0;
      w32(DRV_SEQ, seq);
      const p = workAt / PAGE_SIZE + ((Math.imul(seq, 2654435761) >>> 0) % workPages);
      w32(p * PAGE_SIZE + ((seq * 8) & (PAGE_SIZE - 8)), seq);
      owed--;
    }
    if (took === 0 && owed < 1) Atomics.wait(ctl, 0, CTL_RUN, 0.05);
  }
}

if (!isMainThread && workerData?.fpoGuest) run(workerData.fpoGuest as GuestSpec & { ctl: SharedArrayBuffer });
