/**
 * A VF's receive path into guest memory (issue 21): the datapath's output
 * to a VF-kind port is a DMA write into the VM's own memory, as an SR-IOV
 * NIC's virtual function does — which is why the hypervisor's own write
 * tracking never sees those pages change.
 *
 * Guest memory (GuestMemory) is a region of 4 KiB pages: a shared-memory
 * file per VM mapped into port memory (so the copy is a copyWithin), or any
 * buffer in tests. Its layout is a NIC's receive queue:
 *
 *   page 0, the queue's registers (u32, little-endian):
 *     0 magic "FPOV"   4 descriptors N (a power of two)   8 the ring's
 *     guest address    12 each buffer's length            16 head: the next
 *     descriptor the VF fills (the VF's; free-running)    20 tail: one past
 *     the last descriptor the driver posted (the driver's; free-running)
 *   the ring: N descriptors of 16 bytes, the 82599's legacy receive layout:
 *     0 buffer address (u64)  8 length (u16)  10 checksum  12 status (DD 1,
 *     EOP 2)  13 errors  14 VLAN
 *   the rest: buffers the driver posts, and the guest's own memory.
 *
 * The guest's driver posts a buffer by writing its address into descriptor
 * tail % N, clearing its status and advancing tail; the VF (writeBatch)
 * takes descriptors head .. tail - 1 in order, writes each frame into its
 * buffer, writes the descriptor back (length, DD | EOP) and advances head.
 * With no descriptor posted the frame is dropped, counted (rxNoDescriptor),
 * as a NIC's rx_missed.
 *
 * While the hypervisor logs dirty pages, each write also goes into the VF's own log of what it wrote (its
 * internal state: buffer address and length, descriptor slot), which the PF
 * driver reads (PfDriver.inspect) when the VF signals completions — the
 * seed's path for dirty-page tracking. The signal (`onCompletion`, once per
 * batch that completed descriptors) is set only while the hypervisor logs
 * dirty pages: logging off costs one comparison per batch.
 */
import type { Encap } from '../../actions/encap.js';
import { TX_PLAIN } from '../../actions/vlan.js';
import type { PacketBatch } from '../../batch.js';
import type { TxPort } from '../../datapath.js';
import { DirtyBitmap, PAGE_SIZE } from '../../dirty-log.js';
import { FpoError } from '../../errors.js';
import { writeFrame } from '../frame-out.js';
import { PortMemory } from '../port-memory.js';
import { closeSync, fstatSync, ftruncateSync, openSync } from 'node:fs';

export const VF_MAGIC = 0x564f5046; // "FPOV" little-endian
export const REG_MAGIC = 0;
export const REG_RING_SIZE = 4;
export const REG_RING_AT = 8;
export const REG_BUF_LEN = 12;
export const REG_HEAD = 16;
export const REG_TAIL = 20;
export const DESC_BYTES = 16;
export const DESC_LEN = 8;
export const DESC_STATUS = 12;
export const STATUS_DD = 1;
export const STATUS_EOP = 2;
/** Writes the VF logs between two looks of the PF (it looks after every batch that wrote: a batch is at most 256). */
const LOG_CAP = 4096;

/** A VM's memory: `size` bytes at `base` in `bytes` (4 KiB pages; guest address a = bytes[base + a]). */
export class GuestMemory {
  readonly dv: DataView;
  readonly pages: number;
  constructor(readonly bytes: Uint8Array, readonly base: number, readonly size: number) {
    if (size % PAGE_SIZE !== 0 || size < 4 * PAGE_SIZE) throw new FpoError('FPO_ERR_USAGE', `guest memory: ${size} bytes (expected a multiple of ${PAGE_SIZE}, 4 pages at least)`);
    if (base + size > bytes.length) throw new FpoError('FPO_ERR_USAGE', `guest memory: ${size} bytes at ${base} do not fit a buffer of ${bytes.length}`);
    this.dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.pages = size / PAGE_SIZE;
  }

  u32(a: number): number {
    return this.dv.getUint32(this.base + a, true);
  }

  setU32(a: number, v: number): void {
    this.dv.setUint32(this.base + a, v >>> 0, true);
  }

  /** A guest address (u64, below 2^53) at a. */
  addr(a: number): number {
    return this.dv.getUint32(this.base + a, true) + this.dv.getUint32(this.base + a + 4, true) * 4294967296;
  }

  setAddr(a: number, v: number): void {
    this.dv.setUint32(this.base + a, v >>> 0, true);
    this.dv.setUint32(this.base + a + 4, Math.floor(v / 4294967296), true);
  }
}

/**
 * A VM's memory as a file (in /dev/shm: memory, not disk) of `size` bytes,
 * mapped shared into this thread's port memory (port-memory.ts: with the
 * live ports' rings, so the DMA is a copyWithin); another process or thread
 * that maps the same file (the guest's driver) sees the same bytes. Made
 * (zeroed) when `create`, else it must exist with that size.
 */
export function openGuestMemory(path: string, size: number, create: boolean): GuestMemory {
  let fd: number;
  try {
    fd = openSync(path, create ? 'w+' : 'r+');
  } catch (e) {
    throw new FpoError('FPO_ERR_IO', `${path}: cannot open the guest memory: ${(e as Error).message}`, { path });
  }
  try {
    if (create) ftruncateSync(fd, size);
    else if (fstatSync(fd).size !== size) throw new FpoError('FPO_ERR_IO', `${path}: the guest memory file has ${fstatSync(fd).size} bytes, the topology says ${size}`, { path });
    const pm = PortMemory.get();
    const at = pm.mapSocket(fd, size, `guest memory ${path}`);
    return new GuestMemory(pm.bytes, at, size);
  } finally {
    closeSync(fd);
  }
}

/**
 * Sets up the receive queue's registers as the guest's driver does at
 * start: N descriptors at `ringAt`, buffers of `bufLen` bytes, head and
 * tail 0 (nothing posted yet).
 */
export function initQueue(m: GuestMemory, n: number, ringAt: number, bufLen: number): void {
  if ((n & (n - 1)) !== 0 || n < 2 || n > 1 << 16) throw new FpoError('FPO_ERR_USAGE', `VF queue: ${n} descriptors (a power of two, 2..65536)`);
  if (ringAt % PAGE_SIZE !== 0 || ringAt < PAGE_SIZE || ringAt + n * DESC_BYTES > m.size) throw new FpoError('FPO_ERR_USAGE', `VF queue: a ring at ${ringAt} (page-aligned, after page 0, inside the ${m.size} bytes)`);
  m.setU32(REG_MAGIC, VF_MAGIC);
  m.setU32(REG_RING_SIZE, n);
  m.setU32(REG_RING_AT, ringAt);
  m.setU32(REG_BUF_LEN, bufLen);
  m.setU32(REG_HEAD, 0);
  m.setU32(REG_TAIL, 0);
}

export class VfPort implements TxPort {
  /** Frames dropped for want of a posted descriptor, and frames longer than a buffer. */
  rxNoDescriptor = 0;
  rxTooLong = 0;
  /** Descriptors whose buffer lies outside the guest's memory (a driver's bug): skipped, their frames dropped. */
  rxBadBuffer = 0;
  /** Frames dropped while the queue's registers made no sense (a ring not a power of two, or outside the memory). */
  rxBadQueue = 0;
  /** Descriptors the VF completed (frames written into the guest). */
  completed = 0;
  /** The hypervisor's handler of the VF's completion signal (set only while it logs dirty pages: PfDriver). */
  onCompletion: ((vf: VfPort) => void) | null = null;
  /**
   * The VF's log of its DMA writes since the PF last looked (its internal
   * state, PfDriver.inspect reads it): per write the buffer's guest address
   * and length, and the descriptor's slot. A ring of logCap; a write with
   * the log full sets `logLost` (the PF then takes the whole queue's memory
   * as written).
   */
  logAddr = new Float64Array(LOG_CAP);
  logLen = new Uint32Array(LOG_CAP);
  /** The written-back descriptor's guest address (checked inside the memory when it was written). */
  logDesc = new Float64Array(LOG_CAP);
  logHead = 0;
  logTail = 0;
  logLost = false;
  /** Frames dropped before the guest's driver set its queue up (no magic yet: a NIC before its driver loads). */
  rxNotReady = 0;
  /** A migration's stop-and-copy: receive paused, frames counted (rxPaused), not written. */
  paused = false;
  rxPaused = 0;
  private head = 0;
  private ready = false;

  constructor(readonly mem: GuestMemory) {}

  // Slow path: the driver has set the queue up (the magic is there) — the VF starts at its head.
  private checkReady(): boolean {
    const m = this.mem;
    const n = m.u32(REG_RING_SIZE);
    if (m.u32(REG_MAGIC) !== VF_MAGIC || (n & (n - 1)) !== 0 || n < 2 || n > 1 << 16) return false;
    this.head = m.u32(REG_HEAD);
    this.ready = true;
    return true;
  }

  /** Slow path: the next batch reads the queue's registers afresh (a memory that was just written whole: a migration's destination). */
  resync(): void {
    this.ready = false;
  }

  /** The VF's head (its next descriptor), as it last wrote it. */
  get headIndex(): number {
    return this.head;
  }

  /** Fast path: each frame DMA'd into the next posted buffer, its descriptor written back; the completion signal once after. */
  writeBatch(batch: PacketBatch, idx: Uint16Array, from: number, n: number, enc?: Int32Array, encap?: Encap): void {
    const m = this.mem;
    if (this.paused) { this.rxPaused += n; return; }
    if (!this.ready && !this.checkReady()) { this.rxNotReady += n; return; }
    // The registers are the guest's to write at any time: checked each batch, so that no value of them
    // makes the VF write outside the guest's memory.
    const ring = m.u32(REG_RING_SIZE);
    const n1 = ring - 1;
    const ringAt = m.u32(REG_RING_AT);
    const bufLen = m.u32(REG_BUF_LEN);
    const tail = m.u32(REG_TAIL);
    if ((ring & n1) !== 0 || ring < 2 || ring > 1 << 16 || ringAt < PAGE_SIZE || ringAt + ring * DESC_BYTES > m.size || bufLen > 65536) {
      this.rxBadQueue += n;
      return;
    }
    let head = this.head;
    let done = 0;
    const logging = this.onCompletion !== null; // off: nothing logged, nothing signalled
    for (let j = from; j < from + n; j++) {
      if (head === tail) { this.rxNoDescriptor++; continue; }
      const slot = head & n1;
      const d = ringAt + slot * DESC_BYTES;
      const addr = m.addr(d);
      if (addr + bufLen > m.size || addr < PAGE_SIZE) { this.rxBadBuffer++; head = (head + 1) >>> 0; continue; } // a buffer outside the guest: skipped, not written
      const len = writeFrame(m.bytes, m.base + addr, bufLen, batch, idx[j], enc !== undefined ? enc[j] : TX_PLAIN, encap);
      if (len < 0) { this.rxTooLong++; continue; }
      m.dv.setUint16(m.base + d + DESC_LEN, len, true);
      m.dv.setUint8(m.base + d + DESC_STATUS, STATUS_DD | STATUS_EOP);
      head = (head + 1) >>> 0;
      done++;
      if (!logging) continue;
      const k = this.logTail;
      if (k - this.logHead === this.logAddr.length) this.logLost = true;
      else {
        const at = k % this.logAddr.length;
        this.logAddr[at] = addr;
        this.logLen[at] = len;
        this.logDesc[at] = d;
        this.logTail = k + 1;
      }
    }
    this.head = head;
    m.setU32(REG_HEAD, head);
    this.completed += done;
    if (done > 0 && this.onCompletion !== null) this.onCompletion(this);
  }
}

/**
 * The PF driver's side of dirty-page tracking: asked by the hypervisor
 * when a VF signals completions, it reads the VF's state — the DMA writes
 * it logged since the last look — and marks every page they touched in the
 * hypervisor's dirty bitmap: each buffer's pages (a buffer across a page
 * boundary marks both) and each written-back descriptor's page. Returns the
 * writes it took.
 */
export class PfDriver {
  inspections = 0;
  writesSeen = 0;

  inspect(vf: VfPort, bitmap: DirtyBitmap): number {
    this.inspections++;
    if (vf.logLost) {
      // The VF's log overflowed: what it wrote is not known page by page, so all of the guest is taken as written.
      bitmap.markAll();
      vf.logLost = false;
      const n = vf.logTail - vf.logHead;
      vf.logHead = vf.logTail;
      this.writesSeen += n;
      return n;
    }
    // From the VF's own record of where it wrote (checked inside the guest's memory as it wrote), never
    // from the queue's registers again: the guest may have changed them since.
    const cap = vf.logAddr.length;
    let n = 0;
    for (let k = vf.logHead; k < vf.logTail; k++, n++) {
      const at = k % cap;
      bitmap.markBytes(vf.logAddr[at], vf.logLen[at]);
      bitmap.markBytes(vf.logDesc[at], DESC_BYTES);
    }
    // The VF writes its head back into the queue's registers (page 0) after each batch that wrote (as a NIC's head write-back).
    if (n > 0) bitmap.markBytes(REG_HEAD, 4);
    vf.logHead = vf.logTail;
    this.writesSeen += n;
    return n;
  }

  /** Starts logging: the VF's completions are inspected into `bitmap` (and what it wrote before is not: a log starts clean). */
  startLog(vf: VfPort, bitmap: DirtyBitmap): void {
    vf.logHead = vf.logTail;
    vf.logLost = false;
    vf.onCompletion = (v) => { this.inspect(v, bitmap); };
  }

  /** Stops logging: the VF signals no one (its writes are not logged for anyone). */
  stopLog(vf: VfPort): void {
    vf.onCompletion = null;
  }
}
