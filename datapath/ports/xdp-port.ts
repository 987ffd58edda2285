/**
 * XdpPort: an AF_XDP socket on an existing interface (`"io": "xdp"`), as
 * the kernel's af_xdp.rst describes and Open vSwitch's netdev-afxdp and
 * DPDK's af_xdp PMD use. fpo loads its own XDP program (six instructions,
 * assembled here: no compiler, no libbpf) that redirects every frame of the
 * interface's queue 0 to the socket through an XSKMAP, and attaches it with
 * a BPF link (the link is the socket's: it goes when fpo closes it or dies,
 * so no program is left behind on the interface).
 *
 *   UMEM: one region of port memory (port-memory.ts) cut in chunks of 2 KiB
 *       (4 KiB when the MTU needs it): the first half the kernel's to fill
 *       with received frames, the second half fpo's to send from.
 *   rx: the kernel takes chunks from the fill ring, puts a frame in one and
 *       its (address, length) on the rx ring. `fill` walks the rx ring in
 *       place — batch.buf is port memory and off[i] the frame's place in its
 *       chunk, so rx copies nothing — and gives the chunks back on the fill
 *       ring at the next fill, when their batch has been processed.
 *   tx: writeBatch copies each frame once into a free tx chunk (copyWithin
 *       inside port memory, with its encap or VLAN change: frame-out.ts),
 *       puts it on the tx ring and wakes the kernel with one sendto() per
 *       batch (more only when the kernel sends fewer per call); chunks come
 *       back on the completion ring. No free chunk: the frame is dropped and
 *       counted (txRingFull).
 *   overload: no chunk on the fill ring or no room on the rx ring, the
 *       kernel drops the frame and counts it (XDP_STATISTICS): rxMissed.
 *
 * Modes, reported as the port's mode: the program runs in the driver
 * ('native', which veth has) or, where the driver has no XDP, on the
 * kernel's generic path ('generic'); frames are copied between the driver
 * and the UMEM ('copy': veth has no zero-copy). What the kernel does not
 * allow is refused at open with its errno (no AF_XDP, no BPF, not root).
 *
 * Not carried: a VLAN tag the kernel keeps beside the frame (tx VLAN
 * offload of an 802.1Q device over the far end: an XDP program does not see
 * it; not testable here, this kernel has no 802.1Q devices) — `txvlan off`
 * on the far end keeps it in the frame; and GSO segments (AF_XDP takes
 * frames of one chunk): such a packet for this port is cut in software
 * (offload.ts).
 */
import { readFileSync } from 'node:fs';
import type { PacketBatch } from '../batch.js';
import { D } from '../drops.js';
import { FpoError } from '../errors.js';
import type { Encap } from '../actions/encap.js';
import { TX_PLAIN } from '../actions/vlan.js';
import { writeBytes, writeFrame } from './frame-out.js';
import { SoftOffload, needsSoftware } from './offload.js';
import { EAGAIN, MSG_DONTWAIT, libc } from './libc.js';
import { PortMemory } from './port-memory.js';

const AF_XDP = 44;
const SOCK_RAW = 3;
const SOL_XDP = 283;
const XDP_MMAP_OFFSETS = 1;
const XDP_RX_RING = 2;
const XDP_TX_RING = 3;
const XDP_UMEM_REG = 4;
const XDP_UMEM_FILL_RING = 5;
const XDP_UMEM_COMPLETION_RING = 6;
const XDP_STATISTICS = 7;
const XDP_COPY = 1 << 1;
const XDP_USE_NEED_WAKEUP = 1 << 3;
const XDP_RING_NEED_WAKEUP = 1;
const PGOFF_RX = 0;
const PGOFF_TX = 0x80000000;
const PGOFF_FILL = 0x100000000;
const PGOFF_COMPLETION = 0x180000000;
/** For a short wait at open (Atomics.wait on a word nobody changes). */
const PAUSE = new Int32Array(new SharedArrayBuffer(4));
/** The kernel puts a received frame this far into its chunk (XDP_PACKET_HEADROOM). */
const XDP_HEADROOM = 256;

const BPF_MAP_CREATE = 0;
const BPF_MAP_UPDATE_ELEM = 2;
const BPF_PROG_LOAD = 5;
const BPF_LINK_CREATE = 28;
const BPF_MAP_TYPE_XSKMAP = 17;
const BPF_PROG_TYPE_XDP = 6;
const BPF_XDP = 37;
const XDP_FLAGS_SKB_MODE = 1 << 1;
const XDP_FLAGS_DRV_MODE = 1 << 2;

/**
 * The XDP program, as bytes: redirect the frame to the socket at its rx
 * queue's index in the XSKMAP, or let it through (XDP_PASS) when none is
 * there.
 *   r2 = ctx->rx_queue_index; r1 = map; r3 = XDP_PASS; call bpf_redirect_map; exit
 */
function program(mapFd: number): Buffer {
  const insn = (code: number, dst: number, src: number, off: number, imm: number): Buffer => {
    const b = Buffer.alloc(8);
    b[0] = code;
    b[1] = (src << 4) | dst;
    b.writeInt16LE(off, 2);
    b.writeInt32LE(imm, 4);
    return b;
  };
  return Buffer.concat([
    insn(0x61, 2, 1, 16, 0), // BPF_LDX|BPF_W|BPF_MEM: r2 = *(u32 *)(r1 + offsetof(xdp_md, rx_queue_index))
    insn(0x18, 1, 1, 0, mapFd), // BPF_LD|BPF_DW|BPF_IMM, src BPF_PSEUDO_MAP_FD: r1 = the map
    insn(0, 0, 0, 0, 0),
    insn(0xb7, 3, 0, 0, 2), // BPF_ALU64|BPF_MOV|BPF_K: r3 = XDP_PASS (the action when the slot is empty)
    insn(0x85, 0, 0, 0, 51), // BPF_JMP|BPF_CALL: bpf_redirect_map
    insn(0x95, 0, 0, 0, 0), // BPF_JMP|BPF_EXIT
  ]);
}

/** One of the socket's four rings, mapped in port memory: its producer and consumer words, flags, descriptors. */
interface Ring {
  at: number;
  len: number;
  prod: number;
  cons: number;
  flags: number;
  desc: number;
  mask: number;
}

export interface XdpOptions {
  /** Chunks for rx (the fill ring's) and for tx; powers of two. */
  rxFrames?: number;
  txFrames?: number;
  /** 'native' (in the driver; refused where it has none), 'generic', or undefined: native, else generic. */
  attach?: 'native' | 'generic';
  /** The interface's queue the socket takes (the program redirects that queue's frames). */
  queue?: number;
}

export class XdpPort {
  readonly name: string;
  readonly fd: number;
  readonly kind = 'afpacket' as const;
  /** 'af-xdp-copy-native' or 'af-xdp-copy-generic'. */
  readonly mode: string;
  readonly offload = false;
  rxPackets = 0;
  txPackets = 0;
  txErrors = 0;
  /** Frames dropped because no tx chunk was free (all still the kernel's). */
  txRingFull = 0;
  /** sendto() calls that failed with other than EAGAIN. */
  txSendErrors = 0;
  readonly maxFrame: number;

  private readonly mem: PortMemory;
  private readonly bytes: Uint8Array;
  private readonly dv: DataView;
  private readonly umemAt: number;
  private readonly umemLen: number;
  private readonly chunk: number;
  private readonly rx: Ring;
  private readonly tx: Ring;
  private readonly fr: Ring;
  private readonly cr: Ring;
  /** The rx chunks of the last batch (offsets in the UMEM), given back at the next fill. */
  private readonly pending: Uint32Array;
  private pendingN = 0;
  /** Free tx chunks (UMEM offsets), a stack. */
  private readonly txFree: Uint32Array;
  private txFreeN = 0;
  private readonly statsBuf = Buffer.alloc(48);
  private readonly fds: number[] = [];
  private readonly pieces: [number, number][] = [];

  constructor(name: string, batchCapacity: number, opts: XdpOptions = {}) {
    if (!/^[A-Za-z0-9._-]{1,15}$/.test(name)) throw new FpoError('FPO_ERR_USAGE', `afpacket device "${name}": 1 to 15 letters, digits, ".", "_", "-"`);
    this.name = name;
    const c = libc();
    const ifindex = c.ifNameToIndex(name);
    if (ifindex === 0) throw new FpoError('FPO_ERR_IO', `afpacket ${name} (io xdp): no such interface`);
    let mtu = 1500;
    try {
      mtu = Number(readFileSync(`/sys/class/net/${name}/mtu`, 'utf8').trim()) || 1500;
    } catch {
      // Not in sysfs: the Ethernet default.
    }
    this.maxFrame = mtu + 18;
    this.chunk = this.maxFrame + XDP_HEADROOM <= 2048 ? 2048 : 4096;
    if (this.maxFrame + XDP_HEADROOM > this.chunk) throw new FpoError('FPO_ERR_USAGE', `afpacket ${name} (io xdp): MTU ${mtu} needs frames longer than a page (${this.chunk - XDP_HEADROOM} bytes after the kernel's headroom); use io ring`);
    const pow2 = (v: number, what: string) => {
      if (!Number.isInteger(v) || v < 64 || v > 1 << 16 || (v & (v - 1)) !== 0) throw new FpoError('FPO_ERR_USAGE', `afpacket ${name} (io xdp): ${what} must be a power of two from 64 to 65536, not ${v}`);
      return v;
    };
    const rxFrames = pow2(opts.rxFrames ?? 2048, 'rxFrames');
    const txFrames = pow2(opts.txFrames ?? 2048, 'txFrames');
    if (batchCapacity > rxFrames) throw new FpoError('FPO_ERR_USAGE', `afpacket ${name} (io xdp): a batch of ${batchCapacity} needs at least as many rx chunks (${rxFrames})`);
    const queue = opts.queue ?? 0;
    this.mem = PortMemory.get();
    this.bytes = this.mem.bytes;
    this.dv = new DataView(this.bytes.buffer, this.bytes.byteOffset, this.bytes.byteLength);
    this.pending = new Uint32Array(batchCapacity);
    this.txFree = new Uint32Array(txFrames);

    const fail = (what: string, errno = c.errno()): never => {
      throw new FpoError('FPO_ERR_IO', `afpacket ${name} (io xdp): ${what} failed (errno ${errno}${errno === 1 ? ': fpo needs root (CAP_NET_ADMIN, CAP_BPF) for AF_XDP' : ''})`);
    };
    const keep = (fd: number, what: string): number => {
      if (fd < 0) fail(what);
      this.fds.push(fd);
      return fd;
    };
    try {
      const fd = keep(c.socket(AF_XDP, SOCK_RAW, 0), 'socket(AF_XDP)');
      this.fd = fd;
      const u32 = (v: number) => { const b = Buffer.alloc(4); b.writeUInt32LE(v, 0); return b; };
      const opt = (what: string, key: number, val: Buffer) => {
        if (c.setsockopt(fd, SOL_XDP, key, val, val.length) < 0) fail(what);
      };
      // The UMEM: rx chunks then tx chunks, touched now.
      this.umemLen = (rxFrames + txFrames) * this.chunk;
      this.umemAt = this.mem.anon(this.umemLen, `afpacket ${name} (io xdp) UMEM`);
      this.pieces.push([this.umemAt, this.umemLen]);
      const reg = Buffer.alloc(32); // struct xdp_umem_reg: addr, len, chunk_size, headroom, flags, tx_metadata_len
      reg.writeBigUInt64LE(this.mem.addressOf(this.umemAt), 0);
      reg.writeBigUInt64LE(BigInt(this.umemLen), 8);
      reg.writeUInt32LE(this.chunk, 16);
      opt('XDP_UMEM_REG', XDP_UMEM_REG, reg);
      opt('XDP_UMEM_FILL_RING', XDP_UMEM_FILL_RING, u32(rxFrames));
      opt('XDP_UMEM_COMPLETION_RING', XDP_UMEM_COMPLETION_RING, u32(txFrames));
      opt('XDP_RX_RING', XDP_RX_RING, u32(rxFrames));
      opt('XDP_TX_RING', XDP_TX_RING, u32(txFrames));
      const offs = Buffer.alloc(128); // struct xdp_mmap_offsets: rx, tx, fr, cr; each producer, consumer, desc, flags
      if (c.getsockopt(fd, SOL_XDP, XDP_MMAP_OFFSETS, offs) !== 128) fail('XDP_MMAP_OFFSETS');
      const ring = (i: number, entries: number, descBytes: number, pgoff: number, what: string): Ring => {
        const o = (k: number) => Number(offs.readBigUInt64LE(i * 32 + k * 8));
        const len = o(2) + entries * descBytes;
        const at = this.mem.mapSocket(fd, len, `afpacket ${name} (io xdp) ${what} ring`, pgoff);
        this.pieces.push([at, len]);
        return { at, len, prod: at + o(0), cons: at + o(1), desc: at + o(2), flags: at + o(3), mask: entries - 1 };
      };
      this.rx = ring(0, rxFrames, 16, PGOFF_RX, 'rx');
      this.tx = ring(1, txFrames, 16, PGOFF_TX, 'tx');
      this.fr = ring(2, rxFrames, 8, PGOFF_FILL, 'fill');
      this.cr = ring(3, txFrames, 8, PGOFF_COMPLETION, 'completion');
      // Every rx chunk on the fill ring; every tx chunk free.
      for (let k = 0; k < rxFrames; k++) this.putFill(k * this.chunk);
      this.publishFill();
      for (let k = 0; k < txFrames; k++) this.txFree[this.txFreeN++] = (rxFrames + k) * this.chunk;
      const sxdp = Buffer.alloc(16); // struct sockaddr_xdp: family, flags, ifindex, queue_id, shared_umem_fd
      sxdp.writeUInt16LE(AF_XDP, 0);
      sxdp.writeUInt16LE(XDP_COPY | XDP_USE_NEED_WAKEUP, 2);
      sxdp.writeUInt32LE(ifindex, 4);
      sxdp.writeUInt32LE(queue, 8);
      // A socket just closed on this queue lets its UMEM go a little later (the kernel defers it): EBUSY
      // until then. Tried again for up to half a second before it counts as taken.
      for (let tries = 0; c.bind(fd, sxdp, 16) < 0; tries++) {
        const errno = c.errno();
        if (errno !== 16 || tries === 100) fail(`bind to queue ${queue}${errno === 16 ? ' (another AF_XDP socket has it)' : ''}`, errno);
        Atomics.wait(PAUSE, 0, 0, 5);
      }

      // The map, the program, the socket in the map's slot for the queue, then the program on the interface.
      const attr = (len: number) => Buffer.alloc(len);
      const mapAttr = attr(64);
      mapAttr.writeUInt32LE(BPF_MAP_TYPE_XSKMAP, 0);
      mapAttr.writeUInt32LE(4, 4);
      mapAttr.writeUInt32LE(4, 8);
      mapAttr.writeUInt32LE(queue + 1, 12);
      const mapFd = keep(c.bpf(BPF_MAP_CREATE, mapAttr), 'bpf(BPF_MAP_CREATE XSKMAP)');
      const code = program(mapFd);
      const mem = c.cMemory(code.length + 16 + 8 + 4096);
      let progFd: number;
      try {
        mem.bytes.set(code, 0);
        const lic = code.length;
        mem.bytes.set(Buffer.from('GPL\0'), lic);
        const keyAt = lic + 16;
        const logAt = keyAt + 8;
        const load = attr(144);
        load.writeUInt32LE(BPF_PROG_TYPE_XDP, 0);
        load.writeUInt32LE(code.length / 8, 4);
        load.writeBigUInt64LE(mem.addr, 8);
        load.writeBigUInt64LE(mem.addr + BigInt(lic), 16);
        load.writeUInt32LE(1, 24);
        load.writeUInt32LE(4096, 28);
        load.writeBigUInt64LE(mem.addr + BigInt(logAt), 32);
        load.write('fpo_xsk', 48, 'latin1');
        load.writeUInt32LE(BPF_XDP, 68);
        progFd = c.bpf(BPF_PROG_LOAD, load);
        if (progFd < 0) {
          const errno = c.errno();
          const log = Buffer.from(mem.bytes.subarray(logAt, logAt + 4096)).toString('latin1').replace(/\0.*$/s, '').trim();
          fail(`bpf(BPF_PROG_LOAD)${log ? ` (verifier: ${log.split('\n').slice(-2).join(' ')})` : ''}`, errno);
        }
        this.fds.push(progFd);
        const put = attr(32);
        mem.bytes.set([queue & 0xff, (queue >> 8) & 0xff, 0, 0, fd & 0xff, (fd >> 8) & 0xff, (fd >> 16) & 0xff, fd >>> 24], keyAt);
        put.writeUInt32LE(mapFd, 0);
        put.writeBigUInt64LE(mem.addr + BigInt(keyAt), 8);
        put.writeBigUInt64LE(mem.addr + BigInt(keyAt + 4), 16);
        if (c.bpf(BPF_MAP_UPDATE_ELEM, put) < 0) fail('bpf(BPF_MAP_UPDATE_ELEM) of the socket into the XSKMAP');
      } finally {
        mem.free();
      }
      const link = (flags: number): number => {
        const a = attr(64);
        a.writeUInt32LE(progFd, 0);
        a.writeUInt32LE(ifindex, 4);
        a.writeUInt32LE(BPF_XDP, 8);
        a.writeUInt32LE(flags, 12);
        return c.bpf(BPF_LINK_CREATE, a);
      };
      let where = opts.attach ?? 'native';
      let linkFd = where === 'native' ? link(XDP_FLAGS_DRV_MODE) : link(XDP_FLAGS_SKB_MODE);
      if (linkFd < 0 && opts.attach === undefined) {
        // The driver has no XDP of its own: the kernel's generic path.
        where = 'generic';
        linkFd = link(XDP_FLAGS_SKB_MODE);
      }
      keep(linkFd, `attaching the XDP program (${where}${c.errno() === 16 ? ': another XDP program is on the interface' : ''})`);
      this.mode = `af-xdp-copy-${where}`;
    } catch (e) {
      this.close();
      throw e;
    }
  }

  private fillProd = 0;

  /** Queues chunk `addr` (a UMEM offset) on the fill ring; publishFill makes it the kernel's. */
  private putFill(addr: number): void {
    const fr = this.fr;
    const slot = fr.desc + (this.fillProd & fr.mask) * 8;
    this.dv.setUint32(slot, addr, true);
    this.dv.setUint32(slot + 4, 0, true);
    this.fillProd = (this.fillProd + 1) >>> 0;
  }

  private publishFill(): void {
    this.dv.setUint32(this.fr.prod, this.fillProd, true);
  }

  /** Fast path: up to a batch of frames from the rx ring, in place; the last batch's chunks go back first. */
  fill(batch: PacketBatch, ppid: number, nowUs: number): number {
    if (this.closed) return 0;
    const dv = this.dv;
    if (this.pendingN > 0) {
      for (let k = 0; k < this.pendingN; k++) this.putFill(this.pending[k]);
      this.pendingN = 0;
      this.publishFill();
    }
    const rx = this.rx;
    const cons = dv.getUint32(rx.cons, true);
    const ready = (dv.getUint32(rx.prod, true) - cons) >>> 0;
    // No more than the batch holds, nor than the chunks the port keeps track of per batch (its size at open).
    const cap = batch.capacity < this.pending.length ? batch.capacity : this.pending.length;
    const n = ready < cap ? ready : cap;
    batch.batchSetBuffer(this.bytes);
    batch.rawPcapLE = false;
    batch.vnet = false;
    const sec = Math.floor(nowUs / 1e6);
    const usec = nowUs - sec * 1e6;
    const base = this.umemAt;
    const chunkMask = ~(this.chunk - 1);
    const max = this.maxFrame;
    for (let i = 0; i < n; i++) {
      const d = rx.desc + ((cons + i) & rx.mask) * 16;
      const addr = dv.getUint32(d, true); // the UMEM is < 4 GiB: the address's high word is 0
      const len = dv.getUint32(d + 8, true);
      this.pending[i] = addr & chunkMask;
      batch.off[i] = base + addr;
      batch.caplen[i] = len;
      batch.wirelen[i] = len;
      batch.tsA[i] = sec;
      batch.tsB[i] = usec;
      batch.ifIndex[i] = 0;
      batch.inPpid[i] = ppid;
      batch.drop[i] = len > max ? D.frameTooBig : 0;
    }
    this.pendingN = n;
    if (n > 0) dv.setUint32(rx.cons, (cons + n) >>> 0, true);
    batch.count = n;
    this.rxPackets += n;
    return n;
  }

  /** Chunks the kernel has sent back on the completion ring: free again. */
  private reclaim(): void {
    const dv = this.dv;
    const cr = this.cr;
    const cons = dv.getUint32(cr.cons, true);
    const done = (dv.getUint32(cr.prod, true) - cons) >>> 0;
    for (let k = 0; k < done; k++) this.txFree[this.txFreeN++] = dv.getUint32(cr.desc + ((cons + k) & cr.mask) * 8, true);
    if (done > 0) dv.setUint32(cr.cons, (cons + done) >>> 0, true);
  }

  private txProd = 0;
  private queued = 0;
  // The frame in progress of a packet cut in software: its tx code, encap and hash.
  private curE = TX_PLAIN;
  private curEncap: Encap | undefined;
  private curHash = 0;

  /** Fast path: packets idx[from .. from + n) into tx chunks and on the tx ring, then the kernel woken. */
  writeBatch(batch: PacketBatch, idx: Uint16Array, from: number, n: number, enc?: Int32Array, encap?: Encap): void {
    if (this.closed) { this.txErrors += n; return; }
    this.reclaim();
    this.txProd = this.dv.getUint32(this.tx.prod, true);
    this.queued = 0;
    for (let j = from; j < from + n; j++) {
      const i = idx[j];
      const e = enc !== undefined ? enc[j] : TX_PLAIN;
      if (batch.vnet && needsSoftware(batch, i)) {
        this.curE = e;
        this.curEncap = encap;
        this.curHash = batch.hash[i];
        if (SoftOffload.get().cut(batch, i, this) === 0) this.txErrors++;
        continue;
      }
      const addr = this.takeChunk();
      if (addr < 0) continue;
      const len = writeFrame(this.bytes, this.umemAt + addr, this.chunk, batch, i, e, encap);
      if (len < 0 || len > this.maxFrame) { this.txErrors++; this.txFree[this.txFreeN++] = addr; continue; }
      this.queue(addr, len);
    }
    if (this.queued > 0) this.kick();
  }

  /** SegmentSink: one frame of a packet cut in software. */
  segment(src: Uint8Array, from: number, len: number): boolean {
    const addr = this.takeChunk();
    if (addr < 0) return false;
    const n = writeBytes(this.bytes, this.umemAt + addr, this.chunk, src, from, len, len, this.curHash, this.curE, this.curEncap);
    if (n < 0 || n > this.maxFrame) { this.txErrors++; this.txFree[this.txFreeN++] = addr; return true; }
    this.queue(addr, n);
    return true;
  }

  /** SegmentSink: frames of a cut packet left unsent once no chunk was free. */
  segmentsLost(n: number): void {
    this.txRingFull += n;
  }

  /** A free tx chunk, or -1 (counted) when every one is still the kernel's after a wake-up. */
  private takeChunk(): number {
    if (this.txFreeN === 0) {
      // Every chunk is on the tx ring, in the kernel's hands or not yet sent (the link was down): a wake-up.
      this.kick();
      this.reclaim();
      if (this.txFreeN === 0) { this.txRingFull++; return -1; }
    }
    return this.txFree[--this.txFreeN];
  }

  private queue(addr: number, len: number): void {
    const dv = this.dv;
    const d = this.tx.desc + (this.txProd & this.tx.mask) * 16;
    dv.setUint32(d, addr, true);
    dv.setUint32(d + 4, 0, true);
    dv.setUint32(d + 8, len, true);
    dv.setUint32(d + 12, 0, true);
    this.txProd = (this.txProd + 1) >>> 0;
    this.queued++;
    this.txPackets++;
  }

  /**
   * Publishes the queued descriptors and wakes the kernel. In copy mode a
   * sendto() sends a bounded number of frames and says EAGAIN when more
   * wait: it is called again until the ring is taken (bounded).
   */
  private kick(): void {
    const dv = this.dv;
    dv.setUint32(this.tx.prod, this.txProd, true);
    this.queued = 0;
    const c = libc();
    for (let tries = 0; tries < 64; tries++) {
      if ((dv.getUint32(this.tx.flags, true) & XDP_RING_NEED_WAKEUP) === 0 && tries > 0) return;
      if (c.sendRing(this.fd, MSG_DONTWAIT) < 0) {
        const errno = c.errno();
        if (errno !== EAGAIN && errno !== 105 /* ENOBUFS */ && errno !== 16 /* EBUSY */) { this.txSendErrors++; return; }
      }
      if (dv.getUint32(this.tx.cons, true) === this.txProd) return;
    }
  }

  /** Frames the kernel dropped for want of a fill chunk or of room on the rx ring (XDP_STATISTICS, counted since open). */
  get rxMissed(): number {
    if (this.closed) return this.missedAtClose;
    const b = this.statsBuf;
    if (libc().getsockopt(this.fd, SOL_XDP, XDP_STATISTICS, b) < 48) return 0;
    // rx_dropped (no fill chunk: also counted in rx_fill_ring_empty_descs), rx_invalid_descs, tx_invalid_descs, rx_ring_full, …
    return Number(b.readBigUInt64LE(0) + b.readBigUInt64LE(24));
  }

  /** Closed: its memory unmapped, so fill and writeBatch must not touch it (a late call is a counted no-op, not a fault). */
  private closed = false;
  private missedAtClose = 0;

  close(): void {
    if (this.closed) return;
    if (this.fds.length > 0 && this.pieces.length > 0) this.missedAtClose = this.rxMissed; // the kernel's last count, while the socket is there
    this.closed = true;
    // The mappings hold the socket: they go first; then the link (the program leaves the interface), program, map, socket.
    for (const [at, len] of this.pieces) this.mem.release(at, len);
    this.pieces.length = 0;
    for (const fd of this.fds.reverse()) libc().close(fd);
    this.fds.length = 0;
  }
}
