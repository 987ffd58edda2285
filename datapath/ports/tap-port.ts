/**
 * Live ports on a file descriptor, one frame per read and per write:
 *   - a TAP device that fpo creates and owns through /dev/net/tun (the
 *     kernel side is the VM's NIC; it can be moved into a namespace);
 *   - an AF_PACKET socket bound to an existing interface (one end of a veth,
 *     an uplink): every frame the interface receives, none it sends.
 *
 * rx: `fill` drains up to a batch of frames per call with non-blocking reads
 * into preallocated slots (one 2 KiB slot a packet in port memory, views
 * made once at start, so a read allocates nothing); it stops at EAGAIN. tx:
 * one write a frame (a TAP takes one frame per write). For AF_PACKET, the
 * ring port (ring-port.ts) is the fast way; this one is `io: read`. The live loop (control/live.ts)
 * calls fill on every port and sleeps in poll() when all are idle.
 */
import { PacketBatch } from '../batch.js';
import { FpoError } from '../errors.js';
import { D } from '../drops.js';
import type { Encap } from '../actions/encap.js';
import { TX_PLAIN } from '../actions/vlan.js';
import { ENCAP_MAX, writeBytes, writeFrame } from './frame-out.js';
import { SoftOffload, VNET_HDR_LEN, needsSoftware, vnetValid, writeVnetHeader } from './offload.js';
import { PortMemory } from './port-memory.js';
import { EAGAIN, O_NONBLOCK, O_RDWR, libc } from './libc.js';

const TUNSETIFF = 0x400454ca;
const TUNSETOFFLOAD = 0x400454d0;
const IFF_TAP = 0x0002;
const IFF_NO_PI = 0x1000;
const IFF_VNET_HDR = 0x4000;
const IFF_MULTI_QUEUE = 0x0100;
/** What fpo takes from the TAP: partial checksums, TCP segments over IPv4 and IPv6, with ECN. */
const TUN_F_CSUM_TSO = 0x01 | 0x02 | 0x04 | 0x08;
export const SLOT = 2048;
/** A slot of a TAP with offloads: its virtio-net header and a whole GSO packet (68 KiB). */
export const SLOT_GSO = 17 * 4096;

const AF_PACKET = 17;
const SOCK_RAW = 3;
const SOCK_NONBLOCK = 0x800;
const ETH_P_ALL_BE = 0x0300; // htons(ETH_P_ALL)
const SOL_PACKET = 263;
const PACKET_IGNORE_OUTGOING = 23;

export class TapPort {
  readonly name: string;
  readonly fd: number;
  /** 'tap' or 'afpacket'. */
  readonly kind: 'tap' | 'afpacket';
  readonly mode: string;
  /** A TAP with offloads (IFF_VNET_HDR): frames come and go with their virtio-net header (offload.ts). */
  readonly offload: boolean;
  /** Bytes a slot, and the header's before each frame in it (0 or 10). */
  private readonly slotBytes: number;
  private readonly hdr: number;
  /** A TAP and a plain AF_PACKET socket do not count the frames they could not queue for fpo. */
  readonly rxMissed = 0;
  readonly txRingFull = 0;
  /** Frames read / written / failed writes (the kernel side down or its queue full). */
  rxPackets = 0;
  txPackets = 0;
  txErrors = 0;
  private readonly mem: PortMemory;
  /** Where the rx slots start in port memory, and the tx buffer. */
  private readonly rxAt: number;
  private readonly rxSlots: Buffer[];
  private readonly txAt: number;
  private readonly txView: Buffer;
  private readonly memLen: number;

  /**
   * multiQueue: the TAP is opened as one queue of a multi-queue TAP
   * (IFF_MULTI_QUEUE): each datapath worker opens its own, and the kernel
   * spreads the VM's frames over the queues by flow (workers.ts).
   */
  constructor(name: string, batchCapacity: number, kind: 'tap' | 'afpacket' = 'tap', offload = false, multiQueue = false) {
    if (!/^[A-Za-z0-9._-]{1,15}$/.test(name)) throw new FpoError('FPO_ERR_USAGE', `${kind} device "${name}": 1 to 15 letters, digits, ".", "_", "-"`);
    if (offload && kind !== 'tap') throw new FpoError('FPO_ERR_USAGE', `afpacket ${name}: offloads need a ring port (io: ring)`);
    this.kind = kind;
    this.offload = offload;
    this.mode = offload ? 'read-write+vnet' : 'read-write';
    this.slotBytes = offload ? SLOT_GSO : SLOT;
    this.hdr = offload ? VNET_HDR_LEN : 0;
    const fd = kind === 'tap' ? TapPort.openTap(name, offload, multiQueue) : TapPort.openPacket(name);
    this.name = name;
    this.fd = fd;
    // rx slots and the tx buffer in port memory (port-memory.ts): a frame from a ring port's block is
    // copied into the tx buffer with copyWithin, and a frame from another TAP written straight from its slot.
    this.mem = PortMemory.get();
    const sb = this.slotBytes;
    this.memLen = (batchCapacity + 1) * sb + ENCAP_MAX;
    try {
      this.rxAt = this.mem.anon(this.memLen, `${kind} ${name}`);
    } catch (e) {
      libc().close(fd);
      throw e;
    }
    const b = this.mem.bytes;
    this.rxSlots = Array.from({ length: batchCapacity }, (_, i) => Buffer.from(b.buffer, b.byteOffset + this.rxAt + i * sb, sb));
    // Keyed by where the frame starts; a slot with a header is another TAP with offloads' to write from.
    const views = offload ? this.mem.vnetSlots : this.mem.slots;
    this.rxSlots.forEach((v, i) => views.set(this.rxAt + i * sb + this.hdr, v));
    this.txAt = this.rxAt + batchCapacity * sb;
    this.txView = Buffer.from(b.buffer, b.byteOffset + this.txAt, sb + ENCAP_MAX);
  }

  // Slow path: AF_PACKET socket bound to an existing interface, non-blocking, not seeing its own sends.
  private static openPacket(name: string): number {
    const c = libc();
    const ifindex = c.ifNameToIndex(name);
    if (ifindex === 0) throw new FpoError('FPO_ERR_IO', `afpacket ${name}: no such interface`);
    // Protocol 0: the socket takes no frame until bind names the interface and ETH_P_ALL. A socket opened
    // with ETH_P_ALL takes every interface's frames until it is bound: other links' traffic in the ring.
    const fd = c.socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK, 0);
    if (fd < 0) throw new FpoError('FPO_ERR_IO', `afpacket ${name}: socket failed (errno ${c.errno()}); fpo needs root for AF_PACKET ports`);
    const one = Buffer.alloc(4);
    one.writeInt32LE(1, 0);
    c.setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, one, 4);
    const sll = Buffer.alloc(20);
    sll.writeUInt16LE(AF_PACKET, 0);
    sll.writeUInt16LE(ETH_P_ALL_BE, 2);
    sll.writeInt32LE(ifindex, 4);
    if (c.bind(fd, sll, 20) < 0) {
      const e = c.errno();
      c.close(fd);
      throw new FpoError('FPO_ERR_IO', `afpacket ${name}: bind failed (errno ${e})`);
    }
    return fd;
  }

  // Slow path: a new TAP device.
  private static openTap(name: string, offload: boolean, multiQueue: boolean): number {
    const c = libc();
    const fd = c.open('/dev/net/tun', O_RDWR | O_NONBLOCK);
    if (fd < 0) throw new FpoError('FPO_ERR_IO', `/dev/net/tun: cannot open (errno ${c.errno()}); fpo needs root for TAP ports`);
    const ifr = Buffer.alloc(40);
    ifr.write(name, 0);
    ifr.writeUInt16LE(IFF_TAP | IFF_NO_PI | (offload ? IFF_VNET_HDR : 0) | (multiQueue ? IFF_MULTI_QUEUE : 0), 16);
    if (c.ioctl(fd, TUNSETIFF, ifr) < 0) {
      const e = c.errno();
      c.close(fd);
      throw new FpoError('FPO_ERR_IO', `tap ${name}: TUNSETIFF failed (errno ${e})`);
    }
    // With offloads the TAP's kernel side may hand fpo partial checksums and TCP segments: it then offers
    // TSO and checksum offload to the VM's stack.
    if (offload && c.ioctlValue(fd, TUNSETOFFLOAD, TUN_F_CSUM_TSO) < 0) {
      const e = c.errno();
      c.close(fd);
      throw new FpoError('FPO_ERR_IO', `tap ${name}: TUNSETOFFLOAD failed (errno ${e})`);
    }
    return fd;
  }

  /** Fast path: reads up to a batch of frames; returns how many. */
  fill(batch: PacketBatch, ppid: number, nowUs: number): number {
    const c = libc();
    batch.batchSetBuffer(this.mem.bytes);
    batch.vnet = this.offload;
    batch.rawPcapLE = false;
    const cap = batch.capacity;
    const sb = this.slotBytes;
    const hdr = this.hdr;
    let n = 0;
    while (n < cap) {
      const r = c.read(this.fd, this.rxSlots[n], sb);
      if (r <= hdr) break; // EAGAIN: drained (or the device went away)
      batch.off[n] = this.rxAt + n * sb + hdr;
      batch.caplen[n] = r - hdr;
      batch.wirelen[n] = r - hdr;
      batch.tsA[n] = Math.floor(nowUs / 1e6);
      batch.tsB[n] = nowUs % 1e6;
      batch.ifIndex[n] = 0;
      batch.inPpid[n] = ppid;
      // A read that fills the slot may have cut a longer frame (TAP and AF_PACKET truncate to the buffer and
      // return what fit): dropped with its reason, never forwarded cut. Frames up to SLOT - 1 bytes pass.
      batch.drop[n] = r >= sb ? D.frameTooBig : hdr > 0 && !vnetValid(this.mem.bytes, batch.off[n], r - hdr) ? D.offloadBad : 0;
      n++;
    }
    batch.count = n;
    this.rxPackets += n;
    return n;
  }

  /** Writes packets idx[from .. from + n); encapsulated copies get their outer headers first. */
  writeBatch(batch: PacketBatch, idx: Uint16Array, from: number, n: number, enc?: Int32Array, encap?: Encap): void {
    const c = libc();
    const u8 = this.mem.bytes;
    const hdr = this.hdr;
    // Straight from another TAP's slot: a plain copy, the slot's layout (header or not) this port's.
    const slots = this.offload === batch.vnet && batch.buf === u8 ? (this.offload ? this.mem.vnetSlots : this.mem.slots) : undefined;
    for (let j = from; j < from + n; j++) {
      const i = idx[j];
      const e = enc !== undefined ? enc[j] : TX_PLAIN;
      if (batch.vnet && (!this.offload || e >= 0) && needsSoftware(batch, i)) {
        // A segment or a partial checksum this TAP (or the tunnel copy) cannot take as is: cut and finished
        // in software (offload.ts).
        this.curE = e;
        this.curEncap = encap;
        this.curHash = batch.hash[i];
        if (SoftOffload.get().cut(batch, i, this) === 0) this.txErrors++;
        continue;
      }
      const slot = e === TX_PLAIN && slots !== undefined ? slots.get(batch.off[i]) : undefined;
      let r: number;
      if (slot !== undefined) {
        // Fast path: straight from the rx slot of the TAP it came in on (with its header, if both have them).
        r = c.write(this.fd, slot, batch.caplen[i] + hdr);
      } else {
        // A frame from a ring port's block, with encapsulation or a VLAN tag pushed or popped,
        // or from a capture (inject): one copy into the tx buffer (frame-out.ts), behind its header.
        const at = this.txAt + hdr;
        const len = writeFrame(u8, at, this.slotBytes + ENCAP_MAX - hdr, batch, i, e, encap);
        if (len < 0) { this.txErrors++; continue; }
        if (hdr > 0) writeVnetHeader(u8, this.txAt, batch, i, e, len);
        r = c.write(this.fd, this.txView, len + hdr);
      }
      if (r < 0) this.txErrors++;
      else this.txPackets++;
    }
  }

  // The frame in progress of a packet cut in software: its tx code, encap and hash.
  private curE = TX_PLAIN;
  private curEncap: Encap | undefined;
  private curHash = 0;

  /** SegmentSink: one frame of a packet cut in software (offload.ts), written as its packet's copy would be. */
  segment(src: Uint8Array, off: number, len: number): boolean {
    const hdr = this.hdr;
    const n = writeBytes(this.mem.bytes, this.txAt + hdr, this.slotBytes + ENCAP_MAX - hdr, src, off, len, len, this.curHash, this.curE, this.curEncap);
    if (hdr > 0) this.mem.bytes.fill(0, this.txAt, this.txAt + hdr); // finished and cut: nothing left to do
    if (n < 0 || libc().write(this.fd, this.txView, n + hdr) < 0) this.txErrors++;
    else this.txPackets++;
    return true; // a TAP write fails a frame at a time: each counted, the next tried
  }

  /** SegmentSink: never called (a TAP never says it has no room). */
  segmentsLost(n: number): void {
    this.txErrors += n;
  }

  close(): void {
    libc().close(this.fd);
    const views = this.offload ? this.mem.vnetSlots : this.mem.slots;
    for (let i = 0; i < this.rxSlots.length; i++) views.delete(this.rxAt + i * this.slotBytes + this.hdr);
    this.mem.release(this.rxAt, this.memLen);
  }
}

export { EAGAIN };
