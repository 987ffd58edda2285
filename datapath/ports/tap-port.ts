/**
 * Live ports on a file descriptor, one frame per read and per write:
 *   - a TAP device that fpo creates and owns through /dev/net/tun (the
 *     kernel side is the VM's NIC; it can be moved into a namespace);
 *   - an AF_PACKET socket bound to an existing interface (one end of a veth,
 *     an uplink): every frame the interface receives, none it sends.
 *
 * rx: `fill` drains up to a batch of frames per call with non-blocking reads
 * into preallocated slots (one 2 KiB slot a packet, views made once at
 * start, so a read allocates nothing); it stops at EAGAIN. tx: one write a
 * frame (a TAP takes one frame per write). The live loop (control/live.ts)
 * calls fill on every port and sleeps in poll() when all are idle.
 */
import { PacketBatch } from '../batch.js';
import { FpoError } from '../errors.js';
import { D } from '../drops.js';
import type { Encap } from '../actions/encap.js';
import { TX_PLAIN, vlanDelta, vlanHeader } from '../actions/vlan.js';
import { EAGAIN, O_NONBLOCK, O_RDWR, libc } from './libc.js';

const TUNSETIFF = 0x400454ca;
const IFF_TAP = 0x0002;
const IFF_NO_PI = 0x1000;
export const SLOT = 2048;

/**
 * Per rx buffer of a TAP port, its slot views (made once): a frame read by
 * one TAP is written to another straight from its slot, with no copy and no
 * view made per packet.
 */
const SLOT_VIEWS = new WeakMap<Uint8Array, Buffer[]>();

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
  /** Frames read / written / failed writes (the kernel side down or its queue full). */
  rxPackets = 0;
  txPackets = 0;
  txErrors = 0;
  private readonly rx: Buffer;
  private readonly rxSlots: Buffer[];
  private readonly txBuf = Buffer.alloc(SLOT + 128);

  constructor(name: string, batchCapacity: number, kind: 'tap' | 'afpacket' = 'tap') {
    if (!/^[A-Za-z0-9._-]{1,15}$/.test(name)) throw new FpoError('FPO_ERR_USAGE', `${kind} device "${name}": 1 to 15 letters, digits, ".", "_", "-"`);
    this.kind = kind;
    const fd = kind === 'tap' ? TapPort.openTap(name) : TapPort.openPacket(name);
    this.name = name;
    this.fd = fd;
    this.rx = Buffer.alloc(batchCapacity * SLOT);
    this.rx.fill(0);
    this.rxSlots = Array.from({ length: batchCapacity }, (_, i) => this.rx.subarray(i * SLOT, (i + 1) * SLOT));
    SLOT_VIEWS.set(this.rx, this.rxSlots);
  }

  // Slow path: AF_PACKET socket bound to an existing interface, non-blocking, not seeing its own sends.
  private static openPacket(name: string): number {
    const c = libc();
    const ifindex = c.ifNameToIndex(name);
    if (ifindex === 0) throw new FpoError('FPO_ERR_IO', `afpacket ${name}: no such interface`);
    const fd = c.socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK, ETH_P_ALL_BE);
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
  private static openTap(name: string): number {
    const c = libc();
    const fd = c.open('/dev/net/tun', O_RDWR | O_NONBLOCK);
    if (fd < 0) throw new FpoError('FPO_ERR_IO', `/dev/net/tun: cannot open (errno ${c.errno()}); fpo needs root for TAP ports`);
    const ifr = Buffer.alloc(40);
    ifr.write(name, 0);
    ifr.writeUInt16LE(IFF_TAP | IFF_NO_PI, 16);
    if (c.ioctl(fd, TUNSETIFF, ifr) < 0) {
      const e = c.errno();
      c.close(fd);
      throw new FpoError('FPO_ERR_IO', `tap ${name}: TUNSETIFF failed (errno ${e})`);
    }
    return fd;
  }

  /** Fast path: reads up to a batch of frames; returns how many. */
  fill(batch: PacketBatch, ppid: number, nowUs: number): number {
    const c = libc();
    batch.batchSetBuffer(this.rx);
    batch.rawPcapLE = false;
    const cap = batch.capacity;
    let n = 0;
    while (n < cap) {
      const r = c.read(this.fd, this.rxSlots[n], SLOT);
      if (r <= 0) break; // EAGAIN: drained (or the device went away)
      batch.off[n] = n * SLOT;
      batch.caplen[n] = r;
      batch.wirelen[n] = r;
      batch.tsA[n] = Math.floor(nowUs / 1e6);
      batch.tsB[n] = nowUs % 1e6;
      batch.ifIndex[n] = 0;
      batch.inPpid[n] = ppid;
      // A read that fills the slot may have cut a longer frame (TAP and AF_PACKET truncate to the buffer and
      // return what fit): dropped with its reason, never forwarded cut. Frames up to SLOT - 1 bytes pass.
      batch.drop[n] = r >= SLOT ? D.frameTooBig : 0;
      n++;
    }
    batch.count = n;
    this.rxPackets += n;
    return n;
  }

  /** Writes packets idx[from .. from + n); encapsulated copies get their outer headers first. */
  writeBatch(batch: PacketBatch, idx: Uint16Array, from: number, n: number, enc?: Int32Array, encap?: Encap): void {
    const c = libc();
    const src = batch.buf;
    const slots = SLOT_VIEWS.get(src);
    for (let j = from; j < from + n; j++) {
      const i = idx[j];
      const off = batch.off[i];
      const len = batch.caplen[i];
      const e = enc !== undefined ? enc[j] : -1;
      let r: number;
      if (e === TX_PLAIN && slots !== undefined && off % SLOT === 0) {
        // Fast path: straight from the rx slot of the TAP it came in on.
        r = c.write(this.fd, slots[off / SLOT], len);
      } else {
        // Slow path: encapsulation, a VLAN tag pushed or popped (vlan.ts), or a packet
        // from a capture (inject) — through the tx buffer.
        const out = this.txBuf;
        let hl = 0;
        if (e >= 0 && encap !== undefined) hl = encap.write(out, 0, e >> 1, (e & 1) === 1, batch.wirelen[i], batch.hash[i]);
        const delta = e < TX_PLAIN ? vlanDelta(src, off, len, e) : 0;
        if (hl + len + delta > out.length) { this.txErrors++; continue; }
        out.set(src.subarray(off, off + len), hl);
        if (e < TX_PLAIN) {
          // The tag in or out by moving the bytes after the MACs within the tx buffer.
          if (delta > 0) out.copyWithin(16, 12, len);
          else if (delta < 0) out.copyWithin(12, 16, len);
          vlanHeader(out, 0, e, delta, len);
        }
        if (e >= 0 && encap !== undefined) encap.finish(out, 0, e >> 1, hl, len);
        r = c.write(this.fd, out, hl + len + delta);
      }
      if (r < 0) this.txErrors++;
      else this.txPackets++;
    }
  }

  close(): void {
    libc().close(this.fd);
  }
}

export { EAGAIN };
