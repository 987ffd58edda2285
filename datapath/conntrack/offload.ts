/**
 * Offload: the hand-over's stage (issue 19). A service VM — a firewall and
 * NAT between two segments — decides each connection's first packets
 * itself, then hands the established connection to its vNIC (control/
 * ct-offer.ts checks the offer; `adopt` here takes it with each direction's
 * route). From then on a packet of that connection addressed to the VM (its
 * dst MAC is one of the VM's offload-enabled interfaces) is served here as
 * the VM's own forwarding would serve it:
 *
 *   NAT          ConnTrack.process (the connection's translation, state,
 *                counters), as for any tracked packet
 *   TTL          IPv4 TTL / IPv6 hop limit one less (IPv4 header checksum
 *                updated incrementally, RFC 1624)
 *   MACs         src = the out interface's MAC, dst = the next hop's
 *   in_port      the out interface's VPID, and the key's Ethernet words:
 *                classify then sees the frame the VM would have sent, and
 *                the switch's own flows carry it to the server's or the
 *                client's port
 *
 * It is its own stage, run only while a connection is offloaded (`active`
 * > 0: a datapath that never offloads pays one branch a batch), in two
 * places: `front`, before the fast lane, takes each frame whose
 * destination MAC is an offload interface's, parses it alone and serves it,
 * and moves it to the out interface's port, so the lane (which keeps the
 * rest of the batch) and the stages forward it like any frame from there;
 * `process`, after parse and the flag check, serves decapsulated frames
 * (front sees outer frames only) by rewriting their key. Decapsulated
 * frames the lane's tunnel loop takes go to the VM unserved (it still
 * forwards them: it keeps its entry).
 *
 * What goes to the service VM unchanged (the normal path, counted in
 * `stats`): packets of connections not offloaded, TTL ≤ 1 (the VM answers
 * time-exceeded), IPv4 options or IPv6 extension headers, fragments, ICMP
 * errors, packets ConnTrack finds out of window (inv), and a TCP FIN or
 * reset — which also hands the connection back: it leaves the offloaded set
 * and the table, and its id goes into the hand-back ring that the control
 * plane drains (takeHandBack) to tell the agent. An adopted connection that
 * expires or is flushed is handed back the same way (ConnTrack's ring of
 * ended adopted ids, drained here once a batch).
 *
 * Nothing here drops a packet: each one goes on to classify, rewritten or
 * not, and is counted once there (in = delivered + dropped). Per connection
 * id each direction's route (out VPID, src MAC, next-hop MAC) lives in typed
 * arrays sized with the connection table; nothing is allocated per packet.
 *
 * Checksums a VM left for the NIC to finish (a virtio-net header with
 * NEEDS_CSUM, batch.vnet) hold the pseudo-header's sum, not its complement:
 * NAT (nat.ts rewrite) updates them for the addresses only, uncomplemented;
 * the NIC sums the ports with the rest of the segment.
 */
import type { PacketBatch } from '../batch.js';
import { ABSENT } from '../batch.js';
import { FRAG_ANY, KEY_WORDS, TUN_PRESENT, W_TUN, W_ETH_DST_HI, W_ETH_MID, W_ETH_SRC_LO, W_ETH_TYPE, W_IN_PORT } from '../classifier/flow-key.js';
import { FpoError } from '../errors.js';
import { parsePacket } from '../parse/parse.js';
import { CS_EST, CS_INV, type ConnTrack } from './conntrack.js';
import { csum16 } from './nat.js';

/** Why a connection was handed back (the hand-back ring's reason codes). */
export const HANDBACK = ['fin', 'rst', 'ended', 'withdrawn'] as const;
export type HandBackReason = (typeof HANDBACK)[number];
const HB_FIN = 0;
const HB_RST = 1;
const HB_ENDED = 2;
const HB_WITHDRAWN = 3;

/** The most offload-enabled interfaces (a few service VMs, two or three interfaces each). */
export const MAX_OFFLOAD_INTERFACES = 64;

/** One direction's route, as the service VM's forwarding chose it. */
export interface OffloadRoute {
  /** The VPID of the VM interface the packet leaves by. */
  outVpid: number;
  /** That interface's MAC (the frame's new source). */
  srcMac: Uint8Array;
  /** The next hop's MAC (the frame's new destination). */
  nextHopMac: Uint8Array;
}

const TH_FIN = 0x01;
const TH_RST = 0x04;

export class Offload {
  static readonly stageName = 'offload';
  /** Where a packet goes from here: on to classify rewritten (served), or on unchanged (to the service VM). */
  static readonly next = ['classify:served', 'classify:to-service-vm'] as const;

  /** Connections offloaded now: Datapath.process runs this stage only while it is > 0. */
  active = 0;
  /** Counters: packets served; packets of offloaded connections sent to the VM, by why; hand-backs by reason; hand-backs the ring had no room for. */
  readonly stats = { served: 0, toGuestTtl: 0, toGuestHeader: 0, toGuestInvalid: 0, toGuestWrongSide: 0, handedBack: 0, fin: 0, rst: 0, ended: 0, withdrawn: 0, ringLost: 0 };

  // Offload-enabled interfaces: MAC (bytes 0..3, bytes 4..5), zone, VPID.
  private readonly ifMacA = new Uint32Array(MAX_OFFLOAD_INTERFACES);
  private readonly ifMacB = new Uint32Array(MAX_OFFLOAD_INTERFACES);
  private readonly ifZone = new Int32Array(MAX_OFFLOAD_INTERFACES);
  private readonly ifVpid = new Int32Array(MAX_OFFLOAD_INTERFACES);
  /** Per VPID (the in_port key of a VM port): its interface's segment number, 0 none (setSegments). */
  private segOf: Uint16Array = new Uint16Array(0);
  private nIfs = 0;

  // Per connection id: offloaded or not; per id * 2 + direction: the route.
  private readonly offloaded: Uint8Array;
  private readonly outVpid: Int32Array;
  private readonly srcA: Uint32Array;
  private readonly srcB: Uint32Array;
  private readonly nhA: Uint32Array;
  private readonly nhB: Uint32Array;

  /**
   * Hand-backs for the control plane, a ring:
   *
   *   back[head & mask] … back[(tail - 1) & mask]     id * 4 + reason
   *
   * Power-of-two sized above the table's capacity; an id enters once per
   * adoption and the control plane drains it before it adopts, so it never
   * fills (ringLost counts it if it did).
   */
  private readonly back: Int32Array;
  private readonly backMask: number;
  private backHead = 0;
  private backTail = 0;
  private readonly one = new Uint16Array(1);

  constructor(private readonly ct: ConnTrack) {
    const c = ct.capacity;
    this.offloaded = new Uint8Array(c);
    this.outVpid = new Int32Array(c * 2);
    this.srcA = new Uint32Array(c * 2);
    this.srcB = new Uint32Array(c * 2);
    this.nhA = new Uint32Array(c * 2);
    this.nhB = new Uint32Array(c * 2);
    let ring = 2;
    while (ring <= c) ring *= 2;
    this.back = new Int32Array(ring);
    this.backMask = ring - 1;
  }

  // Slow path: the control plane's API.

  /** Serves packets addressed to this MAC (a service VM's interface, VPID vpid) for connections adopted in `zone`. */
  /**
   * Slow path: the segment number of each VPID's interface (0: none, or an
   * uplink's several), as the control plane knows it (the array is kept, and
   * read at each frame: the control plane refills it). A frame is served only when the port it came in
   * on is a VM interface of the segment of the interface it is addressed to
   * — what L2 would have delivered to the VM (a frame from another segment
   * addressed to this MAC never reaches it).
   */
  setSegments(segOfVpid: Uint16Array): void {
    this.segOf = segOfVpid;
  }

  enable(vpid: number, mac: Uint8Array, zone: number): void {
    if (!(zone >= 0 && zone <= 65535 && Number.isInteger(zone))) throw new FpoError('FPO_ERR_USAGE', `offload: zone ${zone} out of range 0..65535`);
    if (mac.length !== 6) throw new FpoError('FPO_ERR_USAGE', 'offload: a MAC is 6 bytes');
    let j = 0;
    while (j < this.nIfs && this.ifVpid[j] !== vpid) j++;
    if (j === this.nIfs) {
      if (this.nIfs === MAX_OFFLOAD_INTERFACES) throw new FpoError('FPO_ERR_CAPACITY', `offload: at most ${MAX_OFFLOAD_INTERFACES} offload-enabled interfaces`);
      this.nIfs++;
    }
    this.ifVpid[j] = vpid;
    this.ifMacA[j] = macA(mac, 0);
    this.ifMacB[j] = macB(mac, 0);
    this.ifZone[j] = zone;
  }

  /** The offload-enabled interface whose MAC this is: its zone and VPID, or null. */
  interfaceOf(mac: Uint8Array): { zone: number; vpid: number } | null {
    const a = macA(mac, 0);
    const bb = macB(mac, 0);
    for (let j = 0; j < this.nIfs; j++) if (this.ifMacA[j] === a && this.ifMacB[j] === bb) return { zone: this.ifZone[j], vpid: this.ifVpid[j] };
    return null;
  }

  /**
   * Adopts a connection (ConnTrack.adopt: tuples as words, checked) and
   * offloads it with each direction's route. Returns its id, or -1 when the
   * table refused it (nothing changed). Hand-backs not yet taken stay in the
   * ring (an id may be given again here once its old connection ended).
   */
  adopt(orig: Uint32Array, reply: Uint32Array, now: number, timeoutMs: number, routes: { orig: OffloadRoute; reply: OffloadRoute }, quota?: number): number {
    this.drainEnded();
    const id = this.ct.adopt(orig, reply, now, timeoutMs, quota);
    if (id < 0) return -1;
    for (const [d, r] of [[0, routes.orig], [1, routes.reply]] as const) {
      const s = id * 2 + d;
      this.outVpid[s] = r.outVpid;
      this.srcA[s] = macA(r.srcMac, 0);
      this.srcB[s] = macB(r.srcMac, 0);
      this.nhA[s] = macA(r.nextHopMac, 0);
      this.nhB[s] = macB(r.nextHopMac, 0);
    }
    this.offloaded[id] = 1;
    this.active++;
    return id;
  }

  /** Whether connection id is offloaded now. */
  isOffloaded(id: number): boolean {
    return id >= 0 && id < this.offloaded.length && this.offloaded[id] === 1;
  }

  /** Hands connection id back now (the guest withdrew it, or a flush): false when it was not offloaded. */
  withdraw(id: number): boolean {
    if (!this.isOffloaded(id)) return false;
    this.handBack(id, HB_WITHDRAWN);
    return true;
  }

  /** The next hand-back (oldest first), or null: the connection id and why. */
  takeHandBack(): { id: number; why: HandBackReason } | null {
    this.drainEnded();
    if (this.backHead === this.backTail) return null;
    const v = this.back[this.backHead++ & this.backMask];
    return { id: v >> 2, why: HANDBACK[v & 3] };
  }

  /** Slow path: the clock moved with no batch: expired connections are handed back all the same. */
  tick(now: number): void {
    this.ct.expire(now, this.ct.capacity < 1024 ? this.ct.capacity : 1024);
    this.drainEnded();
  }

  /** Where each direction of connection id goes (for ctl): out VPID per direction. */
  routeOf(id: number): [number, number] | null {
    return this.isOffloaded(id) ? [this.outVpid[id * 2], this.outVpid[id * 2 + 1]] : null;
  }

  // Fast path.

  /**
   * Fast path, before the fast lane (Datapath.process, while a connection is
   * offloaded): each packet whose destination MAC is an offload-enabled
   * interface's is parsed alone and served here when it is a packet of an
   * offloaded connection — then it continues as a packet received on the
   * out interface's port (batch.inPpid moved, and its rx counted on the port
   * it came in on: rxPackets/rxBytes are moved back), so the lane and the
   * stages forward it with everything else, and the rest of the batch keeps
   * the lane. `toPpid` (the mapping) must give the out interface a port, else
   * the packet goes to the VM.
   */
  front(batch: PacketBatch, now: number, inPortKey: Uint32Array, vmPort: Uint8Array, toPpid: Int32Array, rxPackets: Float64Array, rxBytes: Float64Array): void {
    this.drainEnded();
    if (this.active === 0) return;
    if (batch.unfilled) batch.completeRecords(0); // inPpid is written below
    const n = batch.count;
    const drop = batch.drop;
    const off = batch.off;
    const b = batch.buf;
    const nIfs = this.nIfs;
    for (let i = 0; i < n; i++) {
      if (drop[i] !== 0 || batch.caplen[i] < 14) continue;
      const o = off[i];
      const dA = ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
      const dB = (b[o + 4] << 8) | b[o + 5];
      let j = 0;
      while (j < nIfs && (this.ifMacA[j] !== dA || this.ifMacB[j] !== dB)) j++;
      if (j === nIfs) continue;
      if (parsePacket(batch, i, inPortKey, vmPort) !== 0) continue; // malformed: the stages drop it with its reason
      const from = batch.inPpid[i];
      const to = this.serve(batch, i, j, now, toPpid);
      if (to < 0) continue;
      const wl = batch.wirelen[i];
      batch.inPpid[i] = to;
      // Received on the port it came in on: the lane or accounting counts it on `to`.
      rxPackets[from]++;
      rxBytes[from] += wl;
      rxPackets[to]--;
      rxBytes[to] -= wl;
    }
  }

  /**
   * Fast path, after parse and the flag check: decapsulated frames (front
   * saw only outer frames) of offloaded connections are served and their key
   * made the out interface's (in_port, Ethernet words).
   */
  process(batch: PacketBatch, now: number): void {
    this.drainEnded();
    if (this.active === 0) return;
    const n = batch.count;
    const key = batch.key;
    const drop = batch.drop;
    const nIfs = this.nIfs;
    for (let i = 0; i < n; i++) {
      if (drop[i] !== 0) continue;
      const k = i * KEY_WORDS;
      if ((key[k + W_TUN] & TUN_PRESENT) === 0) continue; // front saw it (its outer frame is its frame)
      // To one of the service VMs' interfaces?
      const dA = key[k + W_ETH_DST_HI];
      const dB = key[k + W_ETH_MID] >>> 16;
      let j = 0;
      while (j < nIfs && (this.ifMacA[j] !== dA || this.ifMacB[j] !== dB)) j++;
      if (j === nIfs) continue;
      this.serve(batch, i, j, now, null);
    }
  }

  /**
   * Packet i (parsed), addressed to offload interface j: served when it is a
   * packet of an offloaded connection (NAT, TTL, MACs, the key as from the
   * out interface). Returns the out interface's PPID (with toPpid; -1 there:
   * not served, it has no port), or 0 (served, without toPpid), or -1 (not
   * served: it goes to the VM as it came).
   */
  private serve(batch: PacketBatch, i: number, j: number, now: number, toPpid: Int32Array | null): number {
    const k = i * KEY_WORDS;
    const key = batch.key;
    const b = batch.buf;
    const ct = this.ct;
    const et = key[k + W_ETH_TYPE] >>> 16;
    if (et !== 0x0800 && et !== 0x86dd) return -1;
    const e = ct.peek(batch, i, this.ifZone[j], now);
    if (e < 0) return -1;
    const id = e >> 1;
    if (this.offloaded[id] === 0) return -1;
    if (toPpid !== null && toPpid[this.outVpid[e]] < 0) return -1; // before the lane, it must have a port to come in on
    // From the interface's own segment only, and the direction that arrives by it (its peer's way out is this interface).
    const inPort = key[k + W_IN_PORT];
    const segOf = this.segOf;
    const vj = this.ifVpid[j];
    const seg = vj < segOf.length ? segOf[vj] : 0;
    if (seg === 0 || inPort >= segOf.length || segOf[inPort] !== seg || this.outVpid[e ^ 1] !== this.ifVpid[j]) { this.stats.toGuestWrongSide++; return -1; }
    // A packet of an offloaded connection: served here, unless it is one the VM must see.
    const l3o = batch.l3Off[i];
    const l4o = batch.l4Off[i];
    if ((key[k + W_ETH_TYPE] & FRAG_ANY) !== 0 || l3o === ABSENT || l4o === ABSENT) { this.stats.toGuestHeader++; return -1; }
    const l3 = batch.off[i] + l3o;
    const v4 = et === 0x0800;
    if (v4 ? l4o - l3o !== 20 : l4o - l3o !== 40) { this.stats.toGuestHeader++; return -1; } // IPv4 options, IPv6 extension headers
    if (b[v4 ? l3 + 8 : l3 + 7] <= 1) { this.stats.toGuestTtl++; return -1; }
    const proto = (key[k + W_ETH_TYPE] >>> 8) & 0xff;
    const l4 = batch.off[i] + l4o;
    if (proto === 6) {
      if (batch.caplen[i] < l4o + 14) { this.stats.toGuestHeader++; return -1; }
      const f = b[l4 + 13];
      if ((f & (TH_FIN | TH_RST)) !== 0) {
        // The end of the connection: the guest takes it back and sees this packet as it was sent.
        this.handBack(id, (f & TH_RST) !== 0 ? HB_RST : HB_FIN);
        return -1;
      }
    }
    // NAT (a checksum left for the NIC, NEEDS_CSUM, is nat.ts's to keep right).
    this.one[0] = i;
    ct.process(batch, this.one, 1, this.ifZone[j], false, now);
    const st = batch.ctState[i];
    batch.ctState[i] = 0; // it arrives on the out interface untracked, as the VM's frame would
    if ((st & CS_INV) !== 0 || (st & CS_EST) === 0) { this.stats.toGuestInvalid++; return -1; }
    // TTL / hop limit, as the VM's forwarding: IPv4's header checksum follows (the word TTL|protocol).
    if (v4) {
      const ttl = b[l3 + 8];
      const old = (ttl << 8) | b[l3 + 9];
      b[l3 + 8] = ttl - 1;
      csum16(b, l3 + 10, old, old - 0x100);
    } else b[l3 + 7]--;
    // MACs: from the out interface, to the next hop; the key as classify must see the frame.
    const s = e; // id * 2 + direction
    const o = batch.off[i];
    const nA = this.nhA[s];
    const nB = this.nhB[s];
    const sA = this.srcA[s];
    const sB = this.srcB[s];
    b[o] = nA >>> 24; b[o + 1] = (nA >>> 16) & 255; b[o + 2] = (nA >>> 8) & 255; b[o + 3] = nA & 255;
    b[o + 4] = nB >>> 8; b[o + 5] = nB & 255;
    b[o + 6] = sA >>> 24; b[o + 7] = (sA >>> 16) & 255; b[o + 8] = (sA >>> 8) & 255; b[o + 9] = sA & 255;
    b[o + 10] = sB >>> 8; b[o + 11] = sB & 255;
    key[k + W_IN_PORT] = this.outVpid[s];
    key[k + W_ETH_DST_HI] = nA;
    key[k + W_ETH_MID] = ((nB << 16) | (sA >>> 16)) >>> 0;
    key[k + W_ETH_SRC_LO] = (((sA & 0xffff) << 16) | sB) >>> 0;
    this.stats.served++;
    return toPpid === null ? 0 : toPpid[this.outVpid[s]];
  }

  // The connection leaves the offloaded set and the table; the control plane learns it from the ring.
  private handBack(id: number, why: number): void {
    this.offloaded[id] = 0;
    this.active--;
    this.stats.handedBack++;
    if (why === HB_FIN) this.stats.fin++;
    else if (why === HB_RST) this.stats.rst++;
    else if (why === HB_ENDED) this.stats.ended++;
    else this.stats.withdrawn++;
    if (this.backTail - this.backHead > this.backMask) this.stats.ringLost++;
    else this.back[this.backTail++ & this.backMask] = id * 4 + why;
    this.ct.release(id); // into ConnTrack's ended ring: drained below, no longer offloaded, so not twice
  }

  // Adopted connections ConnTrack freed (expired, flushed, released): those still offloaded are handed back.
  private drainEnded(): void {
    for (let id = this.ct.takeEnded(); id >= 0; id = this.ct.takeEnded()) {
      if (this.offloaded[id] === 1) this.handBack(id, HB_ENDED);
    }
  }
}

/** A MAC's bytes 0..3 as one word, and bytes 4..5 as another (the key's layout, flow-key.ts). */
function macA(m: Uint8Array, at: number): number {
  return ((m[at] << 24) | (m[at + 1] << 16) | (m[at + 2] << 8) | m[at + 3]) >>> 0;
}
function macB(m: Uint8Array, at: number): number {
  return (m[at + 4] << 8) | m[at + 5];
}

