/**
 * CaptureWriter: the tx side of a capture-file port. Writes the packets a
 * batch hands it, in the input's format: classic pcap with the input's
 * timestamp resolution, snap length and link type, or pcapng with the
 * input's interfaces (link type, snap length, if_tsresol, if_tsoffset) and
 * each packet's raw timestamp and interface number, so a replayed packet
 * carries the time it was captured with. Output is little-endian.
 *
 * Bytes are copied into one buffer carved from the arena at open (so a copy
 * from a reader in the same arena is an arenaCopy, no allocation) and written
 * to the file when it fills. A record larger than the buffer gets a private
 * one (slow path). A classic pcap writer is also a DirectTx: execute and the
 * fast lane copy raw records into its buffer themselves, and its fill level
 * lives in their array (attachDirect).
 *
 * With `partial` (a replay's outputs), the file is written under a temp name
 * in the same folder, `<path>.partial-<pid>`, and renamed to `path` by
 * close(): a run killed mid-way (SIGKILL, a crash) leaves only names that
 * say they are incomplete, never a capture that looks whole; a port that
 * emitted nothing renames nothing. abandon() closes and removes the temp
 * file instead. Without it (fpo run's ports, written for the service's
 * life) the file is `path` from the first packet on.
 */
import { closeSync, openSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { Arena, arenaCopy } from '../arena.js';
import type { Encap } from '../actions/encap.js';
import type { DirectTx } from '../actions/execute.js';
import { TX_PLAIN, vlanDelta, vlanHeader } from '../actions/vlan.js';
import type { PacketBatch } from '../batch.js';
import { FpoError } from '../errors.js';
import type { CaptureFormat, CaptureInterface } from './capture-reader.js';

const DEFAULT_BUFFER = 256 * 1024;

/**
 * Tx buffer size for each of `ports` capture ports sharing an arena: all of
 * them together about 2 MiB (the power of two nearest 2 MiB / ports), each
 * 16..256 KiB. Packets go
 * to ports in arrival order, so every buffer is being filled at once; while
 * they all stay in the core's caches the copies into them and the writes out
 * of them are cheap. Measured (bench/replay.ts, 64 B frames to 64 ports):
 * 64 × 32 KiB replays 10 M frames in 1.95 s, 64 × 256 KiB in 2.30 s, and
 * 64 × 8 KiB in 2.09 s (more write calls); and later, to 65 ports (files in
 * /dev/shm, best of 5 in alternating processes, medians of 5): 8 KiB 1.40 s,
 * 16 KiB 1.32 s, 32 KiB 1.24–1.27 s, 64 KiB 1.32 s.
 */
export function txBufferBytes(ports: number): number {
  const size = 2 ** Math.round(Math.log2((2 * 1024 * 1024) / Math.max(1, ports)));
  return Math.min(256 * 1024, Math.max(16 * 1024, size));
}

/** What a writer needs to know of its input. */
export interface CaptureLayout {
  format: CaptureFormat;
  /** Classic pcap: nanosecond timestamps. */
  nanos: boolean;
  /** The input's interfaces; pcapng writers copy new entries as they appear. */
  interfaces: readonly CaptureInterface[];
}

/** The temp name a `partial` writer uses for `path` (its suffix is PARTIAL_SUFFIX and the pid). */
export function partialPath(path: string, pid = process.pid): string {
  return `${path}${PARTIAL_SUFFIX}${pid}`;
}

/** What partialPath puts after the final name: `vf1.pcap.partial-4242`. */
export const PARTIAL_SUFFIX = '.partial-';

export interface CaptureWriterOptions {
  /** Write to partialPath(path) and rename to path on close (see the header). */
  partial?: boolean;
  /** Write records only, into a file several writers share (see SharedFile). */
  shared?: SharedFile;
}

/**
 * One output file that several writers (one per replay worker thread) fill
 * at once: its owner opened it and wrote its header (headerBytes), and each
 * writer, when its buffer is full, reserves the next `used` bytes of the file
 * with one atomic add on `end` and writes its records there (pwrite). A
 * writer's flushes land in the order it makes them, so the packets of one
 * worker keep their order in the file; across workers, whole buffers
 * interleave. Worker threads share the process's descriptors, so `fd` is
 * valid in each. The owner closes, renames or removes the file.
 */
export interface SharedFile {
  fd: number;
  /** end[at]: the file's length so far (bytes), shared by the writers. */
  end: BigInt64Array;
  at: number;
}

export class CaptureWriter implements DirectTx {
  /** The final name: where the capture is once closed. */
  readonly path: string;
  /** Where the bytes go while it is open: path, or its temp name with `partial`. */
  readonly writingPath: string;
  /** -1 until the first packet: a port that emits nothing leaves no file. */
  private fd = -1;
  private closed = false;
  /** abandon() threw the file away: nothing was kept. */
  private abandoned = false;
  /** The arena's bytes (or a private buffer after a grow); buf is outer[abase..). */
  private outer: Uint8Array;
  /** The arena's bytes and words (packets from a reader in the same arena copy by words). */
  readonly arenaBytes: Uint8Array;
  readonly arenaWords: Int32Array;
  private abase: number;
  private buf: Uint8Array;
  private dv: DataView;
  /** Bytes of the buffer in use: cells[at] (execute's array once attached, DirectTx). */
  private cells: Int32Array = new Int32Array(1);
  private at = 0;
  /** Classic pcap: execute may copy raw records into the buffer (DirectTx); pcapng: no. */
  readonly direct: DirectTx | undefined;
  readonly directBase: number;
  readonly directCap: number;
  /** While a record larger than the buffer is written: the arena buffer to go back to. */
  private home: { outer: Uint8Array; abase: number; buf: Uint8Array; dv: DataView } | null = null;
  private readonly layout: CaptureLayout;
  /** pcapng: interfaces already described in this file. */
  private described = 0;
  private readonly shared: SharedFile | undefined;

  constructor(path: string, layout: CaptureLayout, arena?: Arena, bufferBytes = DEFAULT_BUFFER, opts: CaptureWriterOptions = {}) {
    this.path = path;
    this.writingPath = opts.partial ? partialPath(path) : path;
    this.layout = layout;
    const a = arena ?? new Arena(bufferBytes);
    this.outer = a.bytes;
    this.arenaBytes = a.bytes;
    this.arenaWords = a.words;
    this.abase = a.take(bufferBytes);
    this.buf = this.outer.subarray(this.abase, this.abase + bufferBytes);
    this.dv = new DataView(this.outer.buffer, this.outer.byteOffset + this.abase, bufferBytes);
    this.shared = opts.shared;
    // A shared file's owner wrote its header and every interface (headerBytes): records only here.
    if (this.shared !== undefined) this.described = Number.MAX_SAFE_INTEGER;
    else if (layout.format === 'pcap') this.writePcapHeader();
    else this.writeShb();
    this.directBase = this.abase;
    this.directCap = layout.format === 'pcap' ? bufferBytes : 0;
    this.direct = layout.format === 'pcap' ? this : undefined;
  }

  get used(): number {
    return this.cells[this.at];
  }

  set used(v: number) {
    this.cells[this.at] = v;
  }

  attachDirect(cells: Int32Array, at: number): void {
    cells[at] = this.used;
    this.cells = cells;
    this.at = at;
  }

  /** Before execute's first direct copy: the file exists from the first packet on. */
  directBegin(): void {
    if (this.fd < 0) this.open();
  }

  private room(n: number): void {
    if (this.used + n > this.buf.length) this.flush();
    if (n > this.buf.length) this.spill(n);
  }

  // Slow path: a record larger than the buffer goes through a buffer of its
  // own, written out at once; then the arena's buffer is back (unspill).
  private spill(n: number): void {
    this.home = { outer: this.outer, abase: this.abase, buf: this.buf, dv: this.dv };
    this.buf = new Uint8Array(n);
    this.outer = this.buf;
    this.abase = 0;
    this.dv = new DataView(this.buf.buffer);
  }

  private unspill(): void {
    const h = this.home;
    if (h === null) return;
    this.flush();
    this.home = null;
    this.outer = h.outer;
    this.abase = h.abase;
    this.buf = h.buf;
    this.dv = h.dv;
  }

  private writePcapHeader(): void {
    const itf = this.layout.interfaces[0];
    const dv = this.dv;
    dv.setUint32(0, this.layout.nanos ? 0xa1b23c4d : 0xa1b2c3d4, true);
    dv.setUint16(4, 2, true);
    dv.setUint16(6, 4, true);
    dv.setUint32(8, 0, true);
    dv.setUint32(12, 0, true);
    dv.setUint32(16, itf.snaplen, true);
    dv.setUint32(20, itf.linktype, true);
    this.used = 24;
  }

  private writeShb(): void {
    const dv = this.dv;
    dv.setUint32(0, 0x0a0d0d0a, true);
    dv.setUint32(4, 28, true);
    dv.setUint32(8, 0x1a2b3c4d, true);
    dv.setUint16(12, 1, true);
    dv.setUint16(14, 0, true);
    dv.setInt32(16, -1, true); // section length unknown
    dv.setInt32(20, -1, true);
    dv.setUint32(24, 28, true);
    this.used = 28;
  }

  // Slow path: runs once per interface per file.
  private describeUpTo(ifIndex: number): void {
    while (this.described <= ifIndex) {
      const itf = this.layout.interfaces[this.described++];
      const hasRes = itf.tsresol !== 6;
      const hasOff = itf.tsoffset !== 0;
      const len = 20 + (hasRes ? 8 : 0) + (hasOff ? 12 : 0) + (hasRes || hasOff ? 4 : 0);
      this.room(len);
      const dv = this.dv;
      let p = this.used;
      dv.setUint32(p, 1, true);
      dv.setUint32(p + 4, len, true);
      dv.setUint16(p + 8, itf.linktype, true);
      dv.setUint16(p + 10, 0, true);
      dv.setUint32(p + 12, itf.snaplen, true);
      p += 16;
      if (hasRes) {
        dv.setUint16(p, 9, true); dv.setUint16(p + 2, 1, true); dv.setUint32(p + 4, 0, true);
        this.buf[p + 4] = itf.tsresol;
        p += 8;
      }
      if (hasOff) {
        dv.setUint16(p, 14, true); dv.setUint16(p + 2, 8, true); dv.setBigInt64(p + 4, BigInt(itf.tsoffset), true);
        p += 12;
      }
      if (hasRes || hasOff) { dv.setUint32(p, 0, true); p += 4; }
      dv.setUint32(p, len, true);
      this.used = p + 4;
    }
  }

  /** True once the file exists (the port emitted a packet), and after close() when it was kept. */
  get opened(): boolean {
    return this.fd >= 0 || (this.closed && !this.abandoned);
  }

  /**
   * The file header a writer of this layout starts with, every interface of
   * the layout described (pcapng): what the owner of a SharedFile writes.
   */
  static headerBytes(layout: CaptureLayout): Uint8Array {
    const w = new CaptureWriter('', layout, undefined, 64 * 1024);
    if (layout.format === 'pcapng' && layout.interfaces.length > 0) w.describeUpTo(layout.interfaces.length - 1);
    return w.buf.slice(0, w.used);
  }

  // Slow path: once per file.
  private open(): void {
    if (this.shared !== undefined) {
      this.fd = this.shared.fd;
      return;
    }
    try {
      this.fd = openSync(this.writingPath, 'w');
    } catch (e) {
      throw new FpoError('FPO_ERR_IO', `${this.writingPath}: cannot create: ${(e as Error).message}`, { path: this.writingPath });
    }
  }

  /**
   * Writes packets idx[from .. from + n) of `batch`; enc[j] (when given) says
   * whether to encapsulate packet idx[j] first (-1: no; >= 0: encapId * 2 +
   * flag) or to push or pop its VLAN tag (<= -2, vlan.ts).
   */
  writeBatch(batch: PacketBatch, idx: Uint16Array, from: number, n: number, enc?: Int32Array, encap?: Encap): void {
    if (this.fd < 0) this.open();
    const src = batch.buf;
    const ng = this.layout.format === 'pcapng';
    let anyEnc = false;
    if (enc !== undefined) for (let j = from; j < from + n; j++) if (enc[j] !== TX_PLAIN) { anyEnc = true; break; }
    if (!ng && batch.rawPcapLE && !anyEnc) {
      this.writeRaw(batch, idx, from, n);
      return;
    }
    for (let j = from; j < from + n; j++) {
      const i = idx[j];
      if (anyEnc && enc![j] >= 0) {
        this.writeEncapsulated(batch, i, enc![j], encap!, ng);
        continue;
      }
      if (anyEnc && enc![j] < TX_PLAIN) {
        this.writeVlan(batch, i, enc![j], ng);
        continue;
      }
      const cl = batch.caplen[i];
      if (ng) {
        const g = batch.ifIndex[i];
        if (g >= this.described) this.describeUpTo(g);
        const pad = (4 - (cl & 3)) & 3;
        const len = 32 + cl + pad;
        this.room(len);
        const dv = this.dv;
        const p = this.used;
        dv.setUint32(p, 6, true);
        dv.setUint32(p + 4, len, true);
        dv.setUint32(p + 8, g, true);
        dv.setUint32(p + 12, batch.tsA[i], true);
        dv.setUint32(p + 16, batch.tsB[i], true);
        dv.setUint32(p + 20, cl, true);
        dv.setUint32(p + 24, batch.wirelen[i], true);
        this.copy(src, batch.off[i], cl, p + 28);
        for (let z = 0; z < pad; z++) this.buf[p + 28 + cl + z] = 0;
        dv.setUint32(p + len - 4, len, true);
        this.used = p + len;
        if (this.home !== null) this.unspill();
      } else {
        this.room(16 + cl);
        const dv = this.dv;
        const p = this.used;
        dv.setUint32(p, batch.tsA[i], true);
        dv.setUint32(p + 4, batch.tsB[i], true);
        dv.setUint32(p + 8, cl, true);
        dv.setUint32(p + 12, batch.wirelen[i], true);
        this.copy(src, batch.off[i], cl, p + 16);
        this.used = p + 16 + cl;
        if (this.home !== null) this.unspill();
      }
    }
  }

  /** Where the record begun by beginRecord starts, and its length (header, data, pad, trailer). */
  private recP = 0;
  private recLen = 0;

  /**
   * Reserves one record for packet i carrying `dataLen` bytes (`wireLen` on
   * the wire) and writes its header (pcapng EPB or classic); returns where
   * its data goes. The caller writes the data, then calls endRecord.
   */
  private beginRecord(batch: PacketBatch, i: number, dataLen: number, wireLen: number, ng: boolean): number {
    const recHdr = ng ? 28 : 16;
    const len = ng ? recHdr + dataLen + ((4 - (dataLen & 3)) & 3) + 4 : recHdr + dataLen;
    if (ng && batch.ifIndex[i] >= this.described) this.describeUpTo(batch.ifIndex[i]);
    this.room(len);
    const dv = this.dv;
    const p = this.used;
    if (ng) {
      dv.setUint32(p, 6, true);
      dv.setUint32(p + 4, len, true);
      dv.setUint32(p + 8, batch.ifIndex[i], true);
      dv.setUint32(p + 12, batch.tsA[i], true);
      dv.setUint32(p + 16, batch.tsB[i], true);
      dv.setUint32(p + 20, dataLen, true);
      dv.setUint32(p + 24, wireLen, true);
    } else {
      dv.setUint32(p, batch.tsA[i], true);
      dv.setUint32(p + 4, batch.tsB[i], true);
      dv.setUint32(p + 8, dataLen, true);
      dv.setUint32(p + 12, wireLen, true);
    }
    this.recP = p;
    this.recLen = len;
    return p + recHdr;
  }

  /** Ends the record begun by beginRecord (`dataEnd`: where its data ends): pcapng's pad and trailing length. */
  private endRecord(dataEnd: number, ng: boolean): void {
    const p = this.recP;
    const len = this.recLen;
    if (ng) {
      for (let z = dataEnd; z < p + len - 4; z++) this.buf[z] = 0;
      this.dv.setUint32(p + len - 4, len, true);
    }
    this.used = p + len;
    if (this.home !== null) this.unspill();
  }

  /** One packet behind the outer headers of encap `e >> 1` (flagged if e & 1). */
  private writeEncapsulated(batch: PacketBatch, i: number, e: number, encap: Encap, ng: boolean): void {
    const id = e >> 1;
    const flagged = (e & 1) === 1;
    const cl = batch.caplen[i];
    const wl = batch.wirelen[i];
    const hl = encap.headerLength(id, flagged);
    const f = this.beginRecord(batch, i, hl + cl, hl + wl, ng);
    // The UDP and IP lengths count the packet as it was on the wire.
    encap.write(this.buf, f, id, flagged, wl, batch.hash[i]);
    this.copy(batch.buf, batch.off[i], cl, f + hl);
    encap.finish(this.buf, f, id, hl, cl);
    this.endRecord(f + hl + cl, ng);
  }

  /** One packet with its VLAN tag pushed or popped (vlan.ts): `e` is its tx code. */
  private writeVlan(batch: PacketBatch, i: number, e: number, ng: boolean): void {
    const src = batch.buf;
    const o = batch.off[i];
    const cl = batch.caplen[i];
    const delta = vlanDelta(src, o, cl, e);
    const ocl = cl + delta;
    const f = this.beginRecord(batch, i, ocl, batch.wirelen[i] + delta, ng);
    if (cl < 14) this.copy(src, o, cl, f);
    else {
      this.copy(src, o, 12, f);
      if (delta < 0) this.copy(src, o + 16, cl - 16, f + 12);
      else this.copy(src, o + 12, cl - 12, f + 12 + delta);
      vlanHeader(this.buf, f, e, delta, cl);
    }
    this.endRecord(f + ocl, ng);
  }

  /**
   * Fast path for a little-endian classic pcap in and out: each packet's
   * record header, as the reader left it in the buffer (batch.rawPcapLE), is
   * exactly what we would write, so header and data go in one copy, and
   * packets whose records lie back to back in the input go in one copy too.
   */
  private writeRaw(batch: PacketBatch, idx: Uint16Array, from: number, n: number): void {
    const src = batch.buf;
    const off = batch.off;
    const caplen = batch.caplen;
    const end = from + n;
    const limit = this.buf.length;
    let bytes = 0;
    for (let j = from; j < end; ) {
      const i = idx[j];
      const start = off[i] - 16;
      let stop = off[i] + caplen[i];
      bytes += caplen[i];
      let k = j + 1;
      for (; k < end; k++) {
        const i2 = idx[k];
        const next = off[i2] + caplen[i2];
        if (off[i2] - 16 !== stop || next - start > limit) break;
        stop = next;
        bytes += caplen[i2];
      }
      const len = stop - start;
      this.room(len);
      this.copy(src, start, len, this.used);
      this.used += len;
      if (this.home !== null) this.unspill();
      j = k;
    }
  }

  private copy(src: Uint8Array, from: number, len: number, to: number): void {
    if (src === this.outer && src === this.arenaBytes) arenaCopy(src, this.arenaWords, from, len, this.abase + to);
    else if (src === this.outer) this.outer.copyWithin(this.abase + to, from, from + len);
    else this.buf.set(src.subarray(from, from + len), to); // Slow path: not in our arena.
  }

  flush(): void {
    if (this.fd < 0) this.open();
    const sh = this.shared;
    if (sh !== undefined) {
      if (this.used === 0) return;
      const at = Number(Atomics.add(sh.end, sh.at, BigInt(this.used)));
      let done = 0;
      while (done < this.used) done += writeSync(this.fd, this.buf, done, this.used - done, at + done);
      this.used = 0;
      return;
    }
    let done = 0;
    while (done < this.used) done += writeSync(this.fd, this.buf, done, this.used - done);
    this.used = 0;
  }

  /** Writes what is buffered and closes; a `partial` writer's file then takes its final name. */
  close(): void {
    if (this.fd < 0 || this.closed) return;
    this.closed = true;
    this.flush();
    if (this.shared !== undefined) {
      this.fd = -1; // the owner's descriptor: the owner closes it
      return;
    }
    closeSync(this.fd);
    this.fd = -1;
    if (this.writingPath !== this.path) {
      try {
        renameSync(this.writingPath, this.path);
      } catch (e) {
        throw new FpoError('FPO_ERR_IO', `${this.path}: cannot rename ${this.writingPath} to it: ${(e as Error).message}`, { path: this.path });
      }
    }
  }

  /** Closes without keeping anything: a `partial` writer's temp file is removed (the final name is left as it was). */
  abandon(): void {
    if (this.fd < 0 || this.closed) return;
    this.closed = true;
    this.abandoned = true;
    if (this.shared !== undefined) {
      this.fd = -1; // the owner removes the file
      return;
    }
    closeSync(this.fd);
    this.fd = -1;
    if (this.writingPath !== this.path) {
      try { unlinkSync(this.writingPath); } catch { /* already gone: nothing to keep */ }
    }
  }
}
