/**
 * CaptureReader: the rx side of a capture-file port. Reads classic pcap
 * (both byte orders, µs and ns timestamps) and pcapng (SHB, IDB, EPB, SPB and
 * the obsolete PB; several interfaces and sections; other blocks skipped).
 *
 * Zero copy: the file is read in chunks into one buffer allocated (and
 * touched) at open, and a batch's packets point into that buffer. When a
 * record does not fit in what is left of the chunk, the reader ends the batch
 * early; on the next fill the unread tail moves to the front and the chunk is
 * refilled. So a batch stays valid until the next `fill`.
 *
 * Faults in the file (a cut record, an absurd length, a block whose trailing
 * length disagrees) stop reading: `fill` returns the packets before the fault
 * and sets `error` to an FpoError naming the file and byte offset. Packets on
 * an interface whose link type is not Ethernet are delivered with
 * drop[i] = linkType, so the pipeline counts them.
 *
 * Where the bytes come from is a CaptureSource: a file (the usual case), or
 * bytes handed in as they arrive (fpo run's inject, whose client sends the
 * capture over the control socket). A source that has nothing yet but has not
 * ended makes `fill` return 0 with `finished` false: the caller waits for
 * more and fills again. The reader closes its source on every path that ends
 * it: a fault at open, `close`, and nothing is left open when the
 * constructor throws.
 */
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';
import { Arena } from '../arena.js';
import { PacketBatch } from '../batch.js';
import { D } from '../drops.js';
import { FpoError } from '../errors.js';

export const LINKTYPE_ETHERNET = 1;

/** Largest record the reader accepts, whatever the file's snap length says. */
export const MAX_RECORD = 16 * 1024 * 1024;
const DEFAULT_CHUNK = 1 << 20;

const PCAP_MAGIC_US = 0xa1b2c3d4;
const PCAP_MAGIC_NS = 0xa1b23c4d;
const NG_SHB = 0x0a0d0d0a;
const NG_IDB = 1;
const NG_PB = 2;
const NG_SPB = 3;
const NG_EPB = 6;
const NG_BOM = 0x1a2b3c4d;

/** One capture interface (classic pcap has exactly one). */
export interface CaptureInterface {
  /** LINKTYPE_* value (1 = Ethernet). */
  linktype: number;
  /** Snap length the capture declared (0 = unlimited in pcapng). */
  snaplen: number;
  /** pcapng if_tsresol byte as found (6 = µs when absent). */
  tsresol: number;
  /** pcapng if_tsoffset in seconds (0 when absent). */
  tsoffset: number;
}

export type CaptureFormat = 'pcap' | 'pcapng';

/** Where a reader's bytes come from. Reads are sequential: `pos` is always where the last read ended. */
export interface CaptureSource {
  /** Names the capture in messages (a path, or what a client called it). */
  readonly name: string;
  /** Total bytes when known, else -1. */
  readonly size: number;
  /** Copies up to `len` bytes to buf[off…]; returns how many, 0 at the end, or -1 when none have arrived yet. May throw (an I/O error). */
  read(buf: Uint8Array, off: number, len: number, pos: number): number;
  /** Releases what the source holds (a descriptor); called once, by the reader. */
  close(): void;
}

/** A capture file, read by descriptor. */
class FileSource implements CaptureSource {
  readonly name: string;
  readonly size: number;
  private fd: number;

  constructor(path: string) {
    this.name = path;
    let fd = -1;
    try {
      // Non-blocking, so that opening a FIFO does not wait for a writer; a regular file ignores the flag.
      fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
      const st = fstatSync(fd);
      // A directory opens, then fails its first read; a FIFO or device would block or never end.
      if (!st.isFile()) throw new Error(st.isDirectory() ? 'is a directory' : 'not a regular file');
      this.size = st.size;
    } catch (e) {
      if (fd >= 0) closeSync(fd);
      throw new FpoError('FPO_ERR_IO', `${path}: cannot open: ${(e as Error).message}`, { path });
    }
    this.fd = fd;
  }

  read(buf: Uint8Array, off: number, len: number, pos: number): number {
    return readSync(this.fd, buf, off, len, pos);
  }

  close(): void {
    if (this.fd >= 0) {
      closeSync(this.fd);
      this.fd = -1;
    }
  }
}

/** Writes packet n's rx facts into the batch (a packet's wire length is never below what was captured). */
function putPacket(b: PacketBatch, n: number, off: number, incl: number, orig: number, tsA: number, tsB: number, ifIndex: number, inPpid: number, drop: number): void {
  b.off[n] = off;
  b.caplen[n] = incl;
  b.wirelen[n] = orig > incl ? orig : incl;
  b.tsA[n] = tsA;
  b.tsB[n] = tsB;
  b.ifIndex[n] = ifIndex;
  b.inPpid[n] = inPpid;
  b.drop[n] = drop;
}

export class CaptureReader {
  readonly path: string;
  readonly format: CaptureFormat;
  /** Classic pcap: timestamps' second word counts nanoseconds. */
  readonly nanos: boolean;
  /** Classic pcap: the file's byte order is big-endian. */
  readonly bigEndian: boolean;
  /** Interfaces seen so far (global numbering across pcapng sections). */
  readonly interfaces: CaptureInterface[] = [];
  /** Records delivered so far. */
  records = 0;
  /** Size of the file in bytes (-1 when the source does not know it). */
  readonly fileSize: number;
  /** Set when reading stopped at a fault; packets before it were delivered. */
  error: FpoError | null = null;

  private src: CaptureSource | null;
  /** The array batches point into: the arena's bytes, or a private buffer after a grow. */
  private outer: Uint8Array;
  /** Offset of this reader's chunk in `outer`. */
  private abase: number;
  /** The chunk: outer[abase .. abase + buf.length). */
  private buf: Uint8Array;
  private dv: DataView;
  /** File offset of buf[0]. */
  private base = 0;
  /** Next unparsed byte in buf. */
  private pos = 0;
  /** End of valid bytes in buf. */
  private end = 0;
  private eof = false;
  private done = false;
  /** pcapng: little-endian byte order of the current section. */
  private le = true;
  /** pcapng: global index of the current section's interface 0. */
  private sectionBase = 0;

  /**
   * Opens `from`: a path (a regular file), or a source. With an arena, the
   * chunk is carved from it (so writers in the same arena copy packets
   * without allocating); without one the reader makes its own. A source
   * that has not ended must already hold the capture's header (24 bytes).
   */
  constructor(from: string | CaptureSource, arena?: Arena, chunkBytes = DEFAULT_CHUNK) {
    const src = typeof from === 'string' ? new FileSource(from) : from;
    this.src = src;
    this.path = src.name;
    this.fileSize = src.size;
    // Every way out of the constructor closes what it opened.
    try {
      const size = Math.max(4096, chunkBytes);
      const a = arena ?? new Arena(size);
      this.outer = a.bytes;
      this.abase = a.take(size);
      this.buf = this.outer.subarray(this.abase, this.abase + size);
      this.dv = new DataView(this.outer.buffer, this.outer.byteOffset + this.abase, size);
      this.refill();
      if (this.error) throw this.error;
      const have = this.end - this.pos;
      if (have < 4) throw this.openError(0, `file is ${have} bytes, too short for a pcap or pcapng header`);
      const m = this.dv.getUint32(0, true);
      const mb = this.dv.getUint32(0, false);
      if (m === NG_SHB) {
        this.format = 'pcapng';
        this.nanos = false;
        this.bigEndian = false;
      } else if (m === PCAP_MAGIC_US || m === PCAP_MAGIC_NS || mb === PCAP_MAGIC_US || mb === PCAP_MAGIC_NS) {
        this.format = 'pcap';
        this.bigEndian = mb === PCAP_MAGIC_US || mb === PCAP_MAGIC_NS;
        this.le = !this.bigEndian;
        this.nanos = (this.bigEndian ? mb : m) === PCAP_MAGIC_NS;
        if (have < 24) throw this.openError(0, `pcap global header is 24 bytes, file has ${have}`);
        const major = this.dv.getUint16(4, this.le);
        if (major !== 2) throw this.openError(4, `pcap version ${major}, expected 2`);
        const snaplen = this.dv.getUint32(16, this.le);
        const linktype = this.dv.getUint32(20, this.le) & 0x0fffffff;
        this.interfaces.push({ linktype, snaplen, tsresol: this.nanos ? 9 : 6, tsoffset: 0 });
        this.pos = 24;
      } else {
        // The file's own bytes are not echoed: a message can travel to someone who may not read the file.
        throw this.openError(0, 'not a pcap or pcapng file (expected the magic a1b2c3d4, a1b23c4d or 0a0d0d0a)');
      }
    } catch (e) {
      this.close();
      throw e instanceof FpoError ? e : new FpoError('FPO_ERR_IO', `${this.path}: cannot read: ${(e as Error).message}`, { path: this.path });
    }
  }

  /** Bytes of the file consumed so far (for progress). */
  get bytesRead(): number {
    return this.base + this.pos;
  }

  // Slow path: a fault at open is thrown; later ones stop the reader and are kept in `error`.
  private openError(offset: number, what: string): FpoError {
    return new FpoError('FPO_ERR_BAD_CAPTURE', `${this.path}: offset ${offset}: ${what}`, { path: this.path, offset });
  }

  private fail(code: 'FPO_ERR_BAD_CAPTURE' | 'FPO_ERR_TRUNCATED_CAPTURE', offset: number, what: string): void {
    // The first fault is the one reported (a read error is followed by a "cut short").
    this.error ??= new FpoError(code, `${this.path}: offset ${offset}: ${what}`, { path: this.path, offset });
    this.done = true;
  }

  /** True once the reader has delivered everything it will (the end, or a fault): `fill` returns 0 from then on. */
  get finished(): boolean {
    return this.done;
  }

  /**
   * Moves the unread tail to the front and reads until the buffer is full,
   * the source ends, or (a stream) has nothing more yet. A read error ends
   * the capture as a fault.
   */
  private refill(): void {
    if (this.pos > 0) {
      this.buf.copyWithin(0, this.pos, this.end);
      this.base += this.pos;
      this.end -= this.pos;
      this.pos = 0;
    }
    const src = this.src;
    while (!this.eof && this.end < this.buf.length && src !== null) {
      let n: number;
      try {
        n = src.read(this.buf, this.end, this.buf.length - this.end, this.base + this.end);
      } catch (e) {
        this.error ??= new FpoError('FPO_ERR_IO', `${this.path}: offset ${this.base + this.end}: cannot read: ${(e as Error).message}`, { path: this.path, offset: this.base + this.end });
        this.eof = true;
        break;
      }
      if (n < 0) break; // a stream with nothing more yet
      if (n === 0) this.eof = true;
      this.end += n;
    }
  }

  /** A stream ran dry before `need` bytes: the batch ends here, and the caller fills again when more has come. */
  private starved(): boolean {
    return !this.eof;
  }

  // Slow path: a record larger than the chunk buffer.
  private grow(need: number): void {
    let size = this.buf.length;
    while (size < need) size *= 2;
    const nb = new Uint8Array(size);
    nb.set(this.buf.subarray(this.pos, this.end));
    this.base += this.pos;
    this.end -= this.pos;
    this.pos = 0;
    this.buf = nb;
    this.outer = nb;
    this.abase = 0;
    this.dv = new DataView(nb.buffer);
  }

  /**
   * Makes `need` bytes available at `pos`. Returns false when they are not
   * in the buffer and the batch already holds packets (the caller returns the
   * batch; the next fill compacts), or when the file ends first.
   */
  private avail(need: number, batchCount: number): boolean {
    if (this.end - this.pos >= need) return true;
    if (batchCount > 0) return false;
    if (need > this.buf.length) this.grow(need);
    this.refill();
    return this.end - this.pos >= need;
  }

  /**
   * Fills `batch` with the next records, all arriving on port `inPpid`.
   * Returns the number of packets (0 at the end of the file or after a fault).
   *
   * `lazy`: where the capture is little-endian pcap of Ethernet, write only
   * each packet's offset (and packet 0's timestamp) and leave the rest in
   * the record headers (batch.unfilled): the fast lane reads them there, and
   * the batch fills its arrays from where the lane stops. For a caller that
   * reads nothing of the batch but the clock before the datapath does.
   */
  fill(batch: PacketBatch, inPpid: number, lazy = false): number {
    batch.count = 0;
    batch.unfilled = false;
    batch.vnet = false;
    if (this.done) return 0;
    batch.rawPcapLE = this.format === 'pcap' && !this.bigEndian;
    if (this.format === 'pcap') this.fillPcap(batch, inPpid, lazy && batch.rawPcapLE && this.interfaces[0].linktype === LINKTYPE_ETHERNET);
    else this.fillPcapng(batch, inPpid);
    // Offsets were taken relative to the chunk; make them relative to `outer`
    // (set after filling: a grow, which only happens with count 0, replaces it).
    batch.batchSetBuffer(this.outer);
    const ab = this.abase;
    if (ab !== 0) for (let i = 0; i < batch.count; i++) batch.off[i] += ab;
    this.records += batch.count;
    return batch.count;
  }

  private fillPcap(batch: PacketBatch, inPpid: number, lazy: boolean): void {
    const le = this.le;
    const cap = batch.capacity;
    const drop = this.interfaces[0].linktype === LINKTYPE_ETHERNET ? 0 : D.linkType;
    const limit = Math.max(262144, Math.min(this.interfaces[0].snaplen, MAX_RECORD));
    let n = lazy ? this.fillPcapLazy(batch, limit) : this.fillPcapInChunk(batch, inPpid, drop, limit);
    if (lazy && n > 0) {
      // The clock reads packet 0's time; the rest waits in the headers.
      const p = batch.off[0] - 16;
      batch.tsA[0] = this.dv.getUint32(p, true);
      batch.tsB[0] = this.dv.getUint32(p + 4, true);
      batch.unfilled = true;
      batch.unfilledIn = inPpid;
    }
    while (n < cap) {
      if (!this.avail(16, n)) {
        if (n > 0 || this.starved()) break;
        const left = this.end - this.pos;
        if (left > 0) this.fail('FPO_ERR_TRUNCATED_CAPTURE', this.base + this.pos, `record header cut short: ${left} of 16 bytes`);
        this.done = true;
        break;
      }
      const dv = this.dv;
      const p = this.pos;
      const incl = dv.getUint32(p + 8, le);
      if (incl > limit) {
        this.fail('FPO_ERR_BAD_CAPTURE', this.base + p, `record claims ${incl} captured bytes, more than the limit ${limit}`);
        break;
      }
      if (!this.avail(16 + incl, n)) {
        if (n > 0 || this.starved()) break;
        this.fail('FPO_ERR_TRUNCATED_CAPTURE', this.base + this.pos, `record cut short: ${this.end - this.pos - 16} of ${incl} captured bytes`);
        break;
      }
      const q = this.pos; // avail may have moved the record to the front
      const d = this.dv;
      const orig = d.getUint32(q + 12, le);
      // A record whose wire length is below its captured length gets the captured length,
      // in the batch and in the buffer, so the header stays a true copy (rawPcapLE).
      if (orig < incl) d.setUint32(q + 12, incl, le);
      putPacket(batch, n, q + 16, incl, orig, d.getUint32(q, le), d.getUint32(q + 4, le), 0, inPpid, drop);
      this.pos = q + 16 + incl;
      n++;
    }
    batch.count = n;
  }

  // The common case of fillPcap: records that lie whole in the chunk, with
  // the batch's arrays in locals. Stops at the first record that does not
  // (or that needs a look: too large), which fillPcap then takes.
  private fillPcapInChunk(batch: PacketBatch, inPpid: number, drop: number, limit: number): number {
    const cap = batch.capacity;
    const d = this.dv;
    const le = this.le;
    const end = this.end;
    const offA = batch.off;
    const caplenA = batch.caplen;
    const wirelenA = batch.wirelen;
    const tsAA = batch.tsA;
    const tsBA = batch.tsB;
    const ifA = batch.ifIndex;
    const inA = batch.inPpid;
    const dropA = batch.drop;
    let p = this.pos;
    let n = 0;
    for (; n < cap && p + 16 <= end; n++) {
      const incl = d.getUint32(p + 8, le);
      if (incl > limit || p + 16 + incl > end) break;
      let orig = d.getUint32(p + 12, le);
      if (orig < incl) {
        d.setUint32(p + 12, incl, le); // as fillPcap: the header stays a true copy
        orig = incl;
      }
      offA[n] = p + 16;
      caplenA[n] = incl;
      wirelenA[n] = orig;
      tsAA[n] = d.getUint32(p, le);
      tsBA[n] = d.getUint32(p + 4, le);
      p += 16 + incl;
    }
    // The same for every record: one fill each, not a store a record (rx alone: 18.7 -> 16.7 ns a record).
    ifA.fill(0, 0, n);
    inA.fill(inPpid, 0, n);
    dropA.fill(drop, 0, n);
    this.pos = p;
    return n;
  }

  // fillPcapInChunk of a lazy fill: the records' offsets only (their
  // headers keep the rest; a wire length below the captured one is fixed
  // when the batch fills its arrays, which it does before anything reads it).
  private fillPcapLazy(batch: PacketBatch, limit: number): number {
    const cap = batch.capacity;
    const d = this.dv;
    const end = this.end;
    const offA = batch.off;
    let p = this.pos;
    let n = 0;
    for (; n < cap && p + 16 <= end; n++) {
      const incl = d.getUint32(p + 8, true);
      if (incl > limit || p + 16 + incl > end) break;
      offA[n] = p + 16;
      p += 16 + incl;
    }
    this.pos = p;
    return n;
  }

  private fillPcapng(batch: PacketBatch, inPpid: number): void {
    const cap = batch.capacity;
    let n = 0;
    while (n < cap) {
      if (!this.avail(12, n)) {
        if (n > 0 || this.starved()) break;
        const left = this.end - this.pos;
        if (left > 0) this.fail('FPO_ERR_TRUNCATED_CAPTURE', this.base + this.pos, `block header cut short: ${left} of 12 bytes`);
        this.done = true;
        break;
      }
      let p = this.pos;
      const type = this.dv.getUint32(p, this.le);
      if (type === NG_SHB) {
        const bom = this.dv.getUint32(p + 8, true);
        if (bom === NG_BOM) this.le = true;
        else if (bom === 0x4d3c2b1a) this.le = false;
        else {
          this.fail('FPO_ERR_BAD_CAPTURE', this.base + p + 8, `section header byte-order magic 0x${bom.toString(16)}, expected 1a2b3c4d`);
          break;
        }
      }
      const le = this.le;
      const len = this.dv.getUint32(p + 4, le);
      if (len < 12 || len % 4 !== 0 || len > MAX_RECORD) {
        this.fail('FPO_ERR_BAD_CAPTURE', this.base + p + 4, `block type 0x${type.toString(16)} has total length ${len}; expected a multiple of 4 in 12..${MAX_RECORD}`);
        break;
      }
      if (!this.avail(len, n)) {
        if (n > 0 || this.starved()) break;
        this.fail('FPO_ERR_TRUNCATED_CAPTURE', this.base + this.pos, `block type 0x${type.toString(16)} cut short: ${this.end - this.pos} of ${len} bytes`);
        break;
      }
      p = this.pos;
      const dv = this.dv;
      const tail = dv.getUint32(p + len - 4, le);
      if (tail !== len) {
        this.fail('FPO_ERR_BAD_CAPTURE', this.base + p + len - 4, `block trailing length ${tail} differs from leading length ${len}`);
        break;
      }
      const at = this.base + p;
      if (type === NG_EPB || type === NG_PB) {
        if (len < 32) { this.fail('FPO_ERR_BAD_CAPTURE', at, `packet block of ${len} bytes, expected at least 32`); break; }
        const ifId = type === NG_EPB ? dv.getUint32(p + 8, le) : dv.getUint16(p + 8, le);
        const incl = dv.getUint32(p + 20, le);
        const orig = dv.getUint32(p + 24, le);
        if (28 + incl + 4 > len) { this.fail('FPO_ERR_BAD_CAPTURE', at + 20, `captured length ${incl} runs past the block (${len} bytes)`); break; }
        const g = this.sectionBase + ifId;
        if (g >= this.interfaces.length) { this.fail('FPO_ERR_BAD_CAPTURE', at + 8, `packet names interface ${ifId}; the section has ${this.interfaces.length - this.sectionBase}`); break; }
        putPacket(batch, n++, p + 28, incl, orig, dv.getUint32(p + 12, le), dv.getUint32(p + 16, le), g, inPpid, this.interfaces[g].linktype === LINKTYPE_ETHERNET ? 0 : D.linkType);
      } else if (type === NG_SPB) {
        if (len < 16) { this.fail('FPO_ERR_BAD_CAPTURE', at, `simple packet block of ${len} bytes, expected at least 16`); break; }
        if (this.sectionBase >= this.interfaces.length) { this.fail('FPO_ERR_BAD_CAPTURE', at, 'simple packet block before any interface description'); break; }
        const orig = dv.getUint32(p + 8, le);
        const snap = this.interfaces[this.sectionBase].snaplen;
        let incl = Math.min(orig, len - 16);
        if (snap > 0 && snap < incl) incl = snap;
        const g = this.sectionBase;
        putPacket(batch, n++, p + 12, incl, orig, 0, 0, g, inPpid, this.interfaces[g].linktype === LINKTYPE_ETHERNET ? 0 : D.linkType);
      } else if (type === NG_SHB) {
        if (len < 28) { this.fail('FPO_ERR_BAD_CAPTURE', at, `section header of ${len} bytes, expected at least 28`); break; }
        const major = dv.getUint16(p + 12, le);
        if (major !== 1) { this.fail('FPO_ERR_BAD_CAPTURE', at + 12, `pcapng major version ${major}, expected 1`); break; }
        this.sectionBase = this.interfaces.length;
      } else if (type === NG_IDB) {
        if (len < 20) { this.fail('FPO_ERR_BAD_CAPTURE', at, `interface description of ${len} bytes, expected at least 20`); break; }
        const itf: CaptureInterface = { linktype: dv.getUint16(p + 8, le), snaplen: dv.getUint32(p + 12, le), tsresol: 6, tsoffset: 0 };
        // Options: code(2) length(2) value padded to 4; opt_endofopt (0) ends them.
        let o = p + 16;
        const stop = p + len - 4;
        while (o + 4 <= stop) {
          const code = dv.getUint16(o, le);
          const olen = dv.getUint16(o + 2, le);
          if (code === 0 || o + 4 + olen > stop) break;
          if (code === 9 && olen >= 1) itf.tsresol = this.buf[o + 4];
          if (code === 14 && olen >= 8) itf.tsoffset = Number(dv.getBigInt64(o + 4, le));
          o += 4 + ((olen + 3) & ~3);
        }
        if (this.interfaces.length >= 0xffff) { this.fail('FPO_ERR_BAD_CAPTURE', at, 'more than 65535 interfaces'); break; }
        this.interfaces.push(itf);
      }
      this.pos = p + len;
    }
    batch.count = n;
  }

  /** Closes the source; safe to call more than once. */
  close(): void {
    const src = this.src;
    this.src = null;
    src?.close();
  }
}
