/**
 * ConnTrack: connection tracking for the datapath, in tables sized at start
 * (issue 19's first slice). For each packet of a batch that a flow sends
 * through `ct(zone=N[,commit])`, `process` finds its connection by the
 * packet's tuple in either direction, checks and advances the connection's
 * state, and writes the packet's ct_state (batch.ctState): trk always, then
 * new / est / rel / rpl / inv, as nftables' `ct state` and Open vSwitch's
 * `ct_state` name them. With commit, a packet that starts a connection
 * creates it.
 *
 *   TCP: the window tracking of pf, which Open vSwitch's userspace
 *        conntrack (conntrack-tcp.c) also uses: each direction's seqlo (the
 *        highest sequence number sent), seqhi (the highest the peer's window
 *        allows), max window and window scale; a segment outside them, a
 *        reset without an exact sequence number, or flags no TCP sends
 *        (SYN+FIN, no ACK with data) is `inv`, and changes nothing. A SYN
 *        after both sides closed reopens (the old connection goes). A
 *        connection met mid-stream (no SYN: the switch restarted, or the
 *        guest handed it over, issue 19) is picked up from a plain ACK
 *        segment with the window scale unknown, as Linux does (not from a
 *        FIN or a reset), and tightens as it goes.
 *   UDP and others: pseudo-connections, first / multiple / both ways.
 *   ICMP/ICMPv6: echo (timestamp, information, address mask) requests and
 *        their replies as connections keyed by the identifier; an error
 *        (unreachable, time exceeded, parameter problem, too big…) is `rel`
 *        when the packet it quotes belongs to a connection, else `inv`.
 *
 * ct_state `est` is Linux's: a packet in the reply direction, or one in the
 * original direction once a reply has been seen; `new` before that.
 * Timeouts are Open vSwitch's defaults (TCP established 24 h, closing 15
 * min, fin-wait 45 s, opening/first/closed 30 s; UDP first and multiple 60
 * s, both ways 30 s; ICMP first 60 s, reply 30 s).
 *
 * Memory: struct of arrays over connection ids, both directions' tuples in
 * one Uint32Array, an open-addressing index (linear probing, deletion by
 * backward shift: no tombstones) of 4 slots a connection, so at most half
 * full, each slot the entry and its hash. 1 M connections take ~187 MiB
 * (test: ConnTrack.bytesFor). Nothing is allocated per packet.
 *
 * Expiry: a connection past its time is treated as gone when a packet looks
 * it up (and freed there), and `expire(now, budget)` walks `budget` ids per
 * call, like a clock hand, freeing the expired ones: bounded work a batch,
 * never a sweep of the whole table behind one packet.
 */
import type { PacketBatch } from '../batch.js';
import { ABSENT } from '../batch.js';
import { KEY_WORDS, W_ETH_TYPE, W_IP_DST, W_IP_SRC, W_TP, FRAG_LATER } from '../classifier/flow-key.js';
import { fmix } from '../classifier/flow-table.js';
import { FpoError } from '../errors.js';
import { NAT_DST, NAT_SRC, type NatRange, rd32, rewrite, rewriteIcmpError, rewriteIpv4 } from './nat.js';

/** ct_state bits, Open vSwitch's values. */
export const CS_NEW = 0x01;
export const CS_EST = 0x02;
export const CS_REL = 0x04;
export const CS_RPL = 0x08;
export const CS_INV = 0x10;
export const CS_TRK = 0x20;
export const CS_SRC_NAT = 0x40;
export const CS_DST_NAT = 0x80;

/** TCP peer states (pf's, as Open vSwitch's ct_dpif_tcp_state). */
export const TCPS_CLOSED = 0;
export const TCPS_LISTEN = 1;
export const TCPS_SYN_SENT = 2;
export const TCPS_SYN_RECEIVED = 3;
export const TCPS_ESTABLISHED = 4;
export const TCPS_CLOSE_WAIT = 5;
export const TCPS_FIN_WAIT_1 = 6;
export const TCPS_CLOSING = 7;
export const TCPS_LAST_ACK = 8;
export const TCPS_FIN_WAIT_2 = 9;
export const TCPS_TIME_WAIT = 10;
export const TCP_STATE_NAMES = ['CLOSED', 'LISTEN', 'SYN_SENT', 'SYN_RECEIVED', 'ESTABLISHED', 'CLOSE_WAIT', 'FIN_WAIT_1', 'CLOSING', 'LAST_ACK', 'FIN_WAIT_2', 'TIME_WAIT'];

/** Other protocols' and ICMP's states. */
const OTHER_FIRST = 0;
const OTHER_MULTIPLE = 1;
const OTHER_BIDIR = 2;
/** UDP/other seen both ways STREAM_PACKETS times each: a stream, with its own longer timeout (ConnTrackOptions.streams; Linux's "assured" UDP). */
const OTHER_STREAM = 3;
const STREAM_PACKETS = 2;
/** The names of OTHER_* (list, the firewall's state). */
export const OTHER_STATE_NAMES = ['FIRST', 'MULTIPLE', 'BIDIR', 'STREAM'];

/** Timeouts in ms (Open vSwitch's defaults). */
export interface Timeouts {
  tcpFirstPacket: number;
  tcpOpening: number;
  tcpEstablished: number;
  tcpClosing: number;
  tcpFinWait: number;
  tcpClosed: number;
  otherFirst: number;
  otherMultiple: number;
  otherBidir: number;
  icmpFirst: number;
  icmpReply: number;
  /** A UDP/other stream (with ConnTrackOptions.streams): Linux's nf_conntrack_udp_timeout_stream. */
  otherStream: number;
}
export const DEFAULT_TIMEOUTS: Timeouts = {
  tcpFirstPacket: 30_000, tcpOpening: 30_000, tcpEstablished: 24 * 3600_000, tcpClosing: 15 * 60_000, tcpFinWait: 45_000, tcpClosed: 30_000,
  otherFirst: 60_000, otherMultiple: 60_000, otherBidir: 30_000, icmpFirst: 60_000, icmpReply: 30_000, otherStream: 120_000,
};

const TH_FIN = 0x01;
const TH_SYN = 0x02;
const TH_RST = 0x04;
const TH_PSH = 0x08;
const TH_ACK = 0x10;
const TH_URG = 0x20;
const WSCALE_FLAG = 0x40;
const WSCALE_UNKNOWN = 0x80;
const WSCALE_MASK = 0x0f;
const TCP_MAX_WSCALE = 14;
/** A reset or a retransmission may be this far behind what was acked (pf's MAXACKWINDOW: 64 KiB and a fudge). */
const MAXACKWINDOW = 0xffff + 1500;

/** Words of a tuple: zone|proto|family, source (4), destination (4), ports (or ICMP id|type). */
const TW = 10;
export const TUPLE_WORDS = TW;

const seqGeq = (a: number, b: number) => ((a - b) | 0) >= 0;
const seqGt = (a: number, b: number) => ((a - b) | 0) > 0;

/** ICMP query types and their replies (v4: echo, timestamp, information, address mask; v6: echo). */
const ICMP4_REPLY = new Int16Array(256).fill(-1);
const ICMP4_REQUEST = new Int16Array(256).fill(-1);
for (const [q, r] of [[8, 0], [13, 14], [15, 16], [17, 18]]) { ICMP4_REPLY[q] = r; ICMP4_REQUEST[r] = q; }
const ICMP6_REPLY = new Int16Array(256).fill(-1);
const ICMP6_REQUEST = new Int16Array(256).fill(-1);
ICMP6_REPLY[128] = 129; ICMP6_REQUEST[129] = 128;
/** ICMP errors that quote the packet they are about. */
const ICMP4_ERROR = new Uint8Array(256);
for (const t of [3, 4, 5, 11, 12]) ICMP4_ERROR[t] = 1;
const ICMP6_ERROR = new Uint8Array(256);
for (const t of [1, 2, 3, 4]) ICMP6_ERROR[t] = 1;

export interface ConnTrackOptions {
  /** Connections the table holds (fixed at start). */
  capacity: number;
  timeouts?: Partial<Timeouts>;
  /**
   * true (default): a TCP connection may start with a segment met mid-stream
   * (ACK without SYN), as Linux's nf_conntrack_tcp_loose=1; false: only with
   * a SYN — a stateful firewall's way (pf's "flags S/SA"): a stream whose
   * state was lost is invalid, not new.
   */
  looseTcp?: boolean;
  /** UDP/other connections seen both ways become streams with timeouts.otherStream (default false). */
  streams?: boolean;
}

/**
 * Connections as columns, record r of each (r < n): the firewall's saved
 * state (services/firewall), ConnTrack.exportZone's output and
 * importColumns' input. Times are ms left, not clock readings.
 */
export interface ConnColumns {
  n: number;
  /** Both tuples, 2 * TUPLE_WORDS words a record: original, reply. */
  tup: Uint32Array;
  proto: Uint8Array;
  /** OTHER_STATE_NAMES' index (not TCP). */
  pstate: Uint8Array;
  natKind: Uint8Array;
  replied: Uint8Array;
  /** TCP, per direction (2 a record): state (TCP_STATE_NAMES), sequence window, window scale flags. */
  tcpState: Uint8Array;
  seqlo: Uint32Array;
  seqhi: Uint32Array;
  maxwin: Uint32Array;
  wscale: Uint8Array;
  expiresIn: Float64Array;
  /** Per direction (2 a record). */
  packets: Float64Array;
  bytes: Float64Array;
  /** The connection's mark (firewall v2: its rule generation). */
  mark: Uint32Array;
}

/** Columns for up to `capacity` records (n = 0). */
export function allocColumns(capacity: number): ConnColumns {
  return {
    n: 0, tup: new Uint32Array(capacity * 2 * TW), proto: new Uint8Array(capacity), pstate: new Uint8Array(capacity),
    natKind: new Uint8Array(capacity), replied: new Uint8Array(capacity), tcpState: new Uint8Array(capacity * 2),
    seqlo: new Uint32Array(capacity * 2), seqhi: new Uint32Array(capacity * 2), maxwin: new Uint32Array(capacity * 2),
    wscale: new Uint8Array(capacity * 2), expiresIn: new Float64Array(capacity), packets: new Float64Array(capacity * 2), bytes: new Float64Array(capacity * 2),
    mark: new Uint32Array(capacity),
  };
}

/** How many records `c` has room for. */
export function columnsCapacity(c: ConnColumns): number {
  return c.proto.length;
}

/** What `list` shows of a connection (slow path: one object each). */
export interface ConnInfo {
  id: number;
  zone: number;
  proto: number;
  orig: { src: string; dst: string; sport: number; dport: number };
  reply: { src: string; dst: string; sport: number; dport: number };
  state: string;
  packets: [number, number];
  bytes: [number, number];
  expiresInMs: number;
  /** `vnic`: adopted from a guest's offer (the hand-over); `guest`: made by a ct action on the guest's traffic. */
  owner: 'guest' | 'vnic';
  /** The translation the reply tuple says: src, dst, both, or none. */
  nat: 'src' | 'dst' | 'both' | 'none';
}

export class ConnTrack {
  readonly capacity: number;
  readonly timeouts: Timeouts;
  readonly looseTcp: boolean;
  /** UDP/other streams on (ConnTrackOptions.streams); the firewall's versions set it as they take a table. */
  streams: boolean;
  /** Counters: lookups that found a connection, connections made, packets inv, commits refused for a full table, connections expired. */
  readonly stats = { found: 0, created: 0, invalid: 0, full: 0, expired: 0, reopened: 0, natExhausted: 0, natCut: 0, adopted: 0, adoptRefused: 0, clash: 0, relatedNat: 0, endedLost: 0 };

  private readonly tup: Uint32Array;
  private readonly index: Int32Array;
  private readonly indexMask: number;
  private readonly used: Uint8Array;
  private readonly proto: Uint8Array;
  /** UDP/ICMP/other: OTHER_*; TCP: unused (per direction below). */
  private readonly pstate: Uint8Array;
  /** NAT_SRC, NAT_DST, both, or 0: the reply tuple is the translated one, every packet is rewritten. */
  private readonly natKind: Uint8Array;
  /** A reply has been seen (or the connection was adopted established): the original direction is est. */
  private readonly replied: Uint8Array;
  /** 1 for a connection adopted from a guest's offer (counted against its zone's quota until it goes). */
  private readonly adoptedBy: Uint8Array;
  /** Per connection, a word its user keeps with it (Linux's ct mark): firewall v2's rule generation. 0 when made. */
  readonly mark: Uint32Array;
  /** Adopted connections by zone (slow path: adopt and free of adopted ones only). */
  private readonly adoptedInZone = new Map<number, number>();
  private readonly tcpState: Uint8Array;
  private readonly seqlo: Uint32Array;
  private readonly seqhi: Uint32Array;
  private readonly maxwin: Uint32Array;
  private readonly wscale: Uint8Array;
  private readonly expires: Float64Array;
  private readonly packets: Float64Array;
  private readonly bytes: Float64Array;
  /** Per id: bumped when the connection is freed, so an (entry, generation) a caller memoized stays its connection's only while it lives (hit). */
  private readonly gen: Uint32Array;
  private readonly freeIds: Int32Array;
  private nFree: number;
  private hand = 0;
  private live = 0;
  /** The packet's tuple, built here for each lookup. */
  private readonly t = new Uint32Array(TW);
  /**
   * Adopted connections freed (expired, flushed, released), for the hand-over's
   * stage (offload.ts) to learn that one it served has ended:
   *
   *   ended[head & mask] … ended[(tail - 1) & mask]   ids, oldest first
   *
   * Power-of-two sized above capacity: an id enters once per adoption, and
   * adopt is the only way one becomes adopted again, so it never fills
   * (a push into a full ring is counted in stats.endedLost all the same).
   */
  private readonly ended: Int32Array;
  private readonly endedMask: number;
  private endedHead = 0;
  private endedTail = 0;
  private readonly r = new Uint32Array(TW);
  private readonly rv = new Uint32Array(TW);

  /** Bytes the tables of `capacity` connections take (what the constructor allocates). */
  static bytesFor(capacity: number): number {
    const slots = indexSlots(capacity);
    let ring = 2;
    while (ring <= capacity) ring *= 2;
    return ring * 4 + capacity * 2 * TW * 4 + slots * 8 + capacity * (1 + 1 + 1 + 1 + 1 + 1 + 8 + 4 + 4) + capacity * 2 * (1 + 4 + 4 + 4 + 1 + 8 + 8) + capacity * 4;
  }

  constructor(opts: ConnTrackOptions) {
    const c = opts.capacity;
    if (!Number.isInteger(c) || c < 1 || c > 1 << 24) throw new FpoError('FPO_ERR_USAGE', `conntrack: capacity must be an integer in 1..${1 << 24}, not ${c}`);
    this.capacity = c;
    this.timeouts = { ...DEFAULT_TIMEOUTS, ...opts.timeouts };
    this.looseTcp = opts.looseTcp ?? true;
    this.streams = opts.streams ?? false;
    this.tup = new Uint32Array(c * 2 * TW);
    const slots = indexSlots(c);
    this.index = new Int32Array(slots * 2).fill(-1);
    this.indexMask = slots - 1;
    this.used = new Uint8Array(c);
    this.proto = new Uint8Array(c);
    this.pstate = new Uint8Array(c);
    this.natKind = new Uint8Array(c);
    this.replied = new Uint8Array(c);
    this.adoptedBy = new Uint8Array(c);
    this.mark = new Uint32Array(c);
    this.tcpState = new Uint8Array(c * 2);
    this.seqlo = new Uint32Array(c * 2);
    this.seqhi = new Uint32Array(c * 2);
    this.maxwin = new Uint32Array(c * 2);
    this.wscale = new Uint8Array(c * 2);
    this.expires = new Float64Array(c);
    this.packets = new Float64Array(c * 2);
    this.bytes = new Float64Array(c * 2);
    let ring = 2;
    while (ring <= c) ring *= 2;
    this.ended = new Int32Array(ring);
    this.endedMask = ring - 1;
    this.gen = new Uint32Array(c);
    this.freeIds = new Int32Array(c);
    for (let k = 0; k < c; k++) this.freeIds[k] = c - 1 - k;
    this.nFree = c;
  }

  /** Connections in the table (expired ones not yet freed included). */
  get count(): number {
    return this.live;
  }

  /**
   * Fast path: ct(zone, commit[, nat]) for packets sel[0..n) of the batch, at
   * `nowMs` (monotonic). Writes batch.ctState for each. With `nat`, a
   * connection this commits is translated as it says (nat.ts); a packet of
   * a translated connection is rewritten whether or not this call has nat
   * (as Open vSwitch's ct(nat) does for established connections).
   */
  process(batch: PacketBatch, sel: Uint16Array, n: number, zone: number, commit: boolean, nowMs: number, nat: NatRange | null = null): void {
    for (let j = 0; j < n; j++) {
      const i = sel[j];
      if (batch.drop[i] !== 0) continue;
      const st = this.one(batch, i, zone, commit, nowMs, nat);
      batch.ctState[i] = st;
      const id = this.lastId;
      if (id >= 0 && this.natKind[id] !== 0 && (st & CS_INV) === 0) this.translatePacket(batch, i, id, st);
    }
  }

  /**
   * Fast path: packet i again of the connection whose index entry (id * 2 +
   * direction) and generation a caller kept from lastEntry/genOf after an
   * earlier packet of the same exact key (the fast lane keeps them with its
   * cache entry): the connection's state, counters and NAT as process would
   * apply them, with no tuple built and no lookup. Returns the packet's
   * ct_state (batch.ctState[i] too), or 0 with nothing changed when the
   * memo is stale (the connection freed, or expired: process decides) or
   * the packet is one process must see (not TCP or UDP, a SYN that may
   * reopen a closed connection). The batch's off, caplen, l3Off and l4Off
   * for i must be set; the key need not be.
   */
  hit(batch: PacketBatch, i: number, e: number, g: number, now: number): number {
    const id = e >> 1;
    if (this.gen[id] !== g || this.used[id] === 0 || this.expires[id] <= now) return 0;
    const proto = this.proto[id];
    if (proto === 6) {
      const p = this.tcpAt(batch, i);
      if (p < 0 || (batch.buf[p + 13] & TH_SYN) !== 0) return 0;
    } else if (proto !== 17) return 0;
    const family = this.tup[id * 2 * TW] & 0xff;
    const reply = (e & 1) === 1;
    this.lastId = id;
    this.lastReply = reply;
    const st = this.found(batch, i, id, reply, proto, false, this.ipLength(batch, i, family), now, false, null);
    batch.ctState[i] = st;
    if (this.lastId >= 0 && this.natKind[id] !== 0 && (st & CS_INV) === 0) this.translatePacket(batch, i, id, st);
    return batch.ctState[i];
  }

  /** The index entry (id * 2 + direction) of the connection the last packet found or made, or -1. */
  lastEntry(): number {
    return this.lastId < 0 ? -1 : this.lastId * 2 + (this.lastReply ? 1 : 0);
  }

  /** The generation of entry e's connection now (for hit). */
  genOf(e: number): number {
    return this.gen[e >> 1];
  }

  // Packet i of translated connection id (the last found, in lastReply's direction): rewritten
  // to the reverse of the other direction's tuple (orig packets take the translated addresses,
  // replies the original ones).
  private translatePacket(batch: PacketBatch, i: number, id: number, st: number): void {
    const other = id * 2 * TW + (this.lastReply ? 0 : TW);
    const tup = this.tup;
    const pr = (tup[other] >>> 8) & 0xff;
    let done: boolean;
    if ((tup[other] & 0xff) === 4 && (pr === 6 || pr === 17)) {
      // IPv4 TCP/UDP: the words straight from the tuple (addresses swapped, ports swapped).
      done = rewriteIpv4(batch, i, pr, tup[other + 5], tup[other + 1], ((tup[other + 9] << 16) | (tup[other + 9] >>> 16)) >>> 0);
    } else {
      const r = this.r;
      r[0] = tup[other];
      for (let w = 0; w < 4; w++) { r[1 + w] = tup[other + 5 + w]; r[5 + w] = tup[other + 1 + w]; }
      // ICMP: the identifier (kept by the translation); TCP/UDP: the other direction's ports swapped.
      r[9] = pr === 1 || pr === 58 ? tup[other + 9] : ((tup[other + 9] << 16) | (tup[other + 9] >>> 16)) >>> 0;
      done = rewrite(batch, i, r, 0);
    }
    const kind = this.natKind[id];
    if (done) batch.ctState[i] = st | ((kind & NAT_SRC) !== 0 ? CS_SRC_NAT : 0) | ((kind & NAT_DST) !== 0 ? CS_DST_NAT : 0);
    else {
      // Headers to rewrite not all in the capture: never sent on untranslated.
      this.stats.natCut++;
      batch.ctState[i] = CS_TRK | CS_INV;
    }
  }

  /** The connection the last packet found or made (-1: none), and whether in the reply direction. */
  private lastId = -1;
  private lastReply = false;

  /** Fast path: one packet's ct_state. */
  private one(batch: PacketBatch, i: number, zone: number, commit: boolean, now: number, nat: NatRange | null): number {
    this.lastId = -1;
    const k = i * KEY_WORDS;
    const key = batch.key;
    const ethType = key[k + W_ETH_TYPE] >>> 16;
    const family = ethType === 0x0800 ? 4 : ethType === 0x86dd ? 6 : 0;
    if (family === 0) return CS_TRK | CS_INV; // not IP: nothing to track
    if ((key[k + W_ETH_TYPE] & FRAG_LATER) !== 0) return CS_TRK | CS_INV; // a later fragment: no ports (fpo does not reassemble)
    const proto = (key[k + W_ETH_TYPE] >>> 8) & 0xff;
    const l4 = batch.l4Off[i];
    const t = this.t;
    t[0] = ((zone & 0xffff) << 16) | (proto << 8) | family;
    for (let w = 0; w < 4; w++) { t[1 + w] = key[k + W_IP_SRC + w]; t[5 + w] = key[k + W_IP_DST + w]; }
    let tp = key[k + W_TP];
    const icmp = (proto === 1 && family === 4) || (proto === 58 && family === 6);
    if (icmp) {
      if (l4 === ABSENT || batch.caplen[i] < l4 + 8) return CS_TRK | CS_INV;
      const b = batch.buf;
      const p = batch.off[i] + l4;
      const type = b[p];
      if ((family === 4 ? ICMP4_ERROR : ICMP6_ERROR)[type] === 1) return this.related(batch, i, zone, family, p, now);
      const isReply = (family === 4 ? ICMP4_REQUEST : ICMP6_REQUEST)[type] >= 0;
      const isQuery = (family === 4 ? ICMP4_REPLY : ICMP6_REPLY)[type] >= 0;
      if (!isReply && !isQuery) return CS_TRK | CS_INV;
      tp = (((b[p + 4] << 8) | b[p + 5]) << 16) | (type << 8);
    }
    // A protocol with ports whose header the capture cut: no tuple to track (not a port-0 connection).
    if (!icmp && (proto === 6 || proto === 17 || proto === 132 || proto === 136 || proto === 33) && l4 === ABSENT) return CS_TRK | CS_INV;
    t[9] = tp >>> 0;
    const h = hashTuple(t, 0);
    let e = this.find(t, 0, h);
    if (e >= 0 && this.expires[e >> 1] <= now) {
      this.free(e >> 1);
      this.stats.expired++;
      e = -1;
    }
    const ipLen = this.ipLength(batch, i, family);
    if (e < 0) {
      if (icmp && (family === 4 ? ICMP4_REQUEST : ICMP6_REQUEST)[(tp >>> 8) & 0xff] >= 0) return CS_TRK | CS_INV; // a reply to no request
      if (proto === 6 && !this.tcpValidNew(batch, i)) return CS_TRK | CS_INV;
      if (commit) {
        const id = this.create(h, proto, icmp, now, nat);
        if (id >= 0) {
          if (proto === 6) this.tcpNew(batch, i, id, now);
          this.packets[id * 2] = 1;
          this.bytes[id * 2] = ipLen;
          this.lastId = id;
          this.lastReply = false;
        }
      }
      return CS_TRK | CS_NEW;
    }
    const id = e >> 1;
    const reply = (e & 1) === 1;
    this.lastId = id;
    this.lastReply = reply;
    return this.found(batch, i, id, reply, proto, icmp, ipLen, now, commit, nat);
  }

  // A packet of connection id (found; in the reply direction or not): state, timeout, counters;
  // its ct_state. lastId is -1 after it when the packet is invalid or its connection went.
  private found(batch: PacketBatch, i: number, id: number, reply: boolean, proto: number, icmp: boolean, ipLen: number, now: number, commit: boolean, nat: NatRange | null): number {
    this.stats.found++;
    const d = reply ? 1 : 0;
    if (proto === 6) {
      const res = this.tcpUpdate(batch, i, id, reply, now);
      if (res === UPDATE_INVALID) { this.stats.invalid++; this.lastId = -1; return CS_TRK | CS_INV; }
      if (res === UPDATE_NEW) {
        // A SYN on a connection both sides closed: the old one goes, a new one starts (with commit).
        this.free(id);
        this.stats.reopened++;
        this.lastId = -1;
        if (!commit) return CS_TRK | CS_NEW;
        const nid = this.create(hashTuple(this.t, 0), proto, false, now, nat);
        if (nid < 0) return CS_TRK | CS_NEW;
        this.lastId = nid;
        this.lastReply = false;
        this.tcpNew(batch, i, nid, now);
        this.packets[nid * 2] = 1;
        this.bytes[nid * 2] = ipLen;
        return CS_TRK | CS_NEW;
      }
    } else {
      const st = this.pstate[id];
      if (reply) { if (st !== OTHER_STREAM) this.pstate[id] = OTHER_BIDIR; }
      else if (st === OTHER_FIRST) this.pstate[id] = OTHER_MULTIPLE;
      // A stream: seen both ways STREAM_PACKETS times each (with streams on; not ICMP).
      if (this.streams && !icmp && this.pstate[id] === OTHER_BIDIR && this.packets[id * 2] >= STREAM_PACKETS && this.packets[id * 2 + 1] >= STREAM_PACKETS) this.pstate[id] = OTHER_STREAM;
      const to = this.timeouts;
      const ps = this.pstate[id];
      this.expires[id] = now + (icmp ? (ps === OTHER_BIDIR ? to.icmpReply : to.icmpFirst) : ps === OTHER_STREAM ? to.otherStream : ps === OTHER_BIDIR ? to.otherBidir : ps === OTHER_MULTIPLE ? to.otherMultiple : to.otherFirst);
    }
    this.packets[id * 2 + d]++;
    this.bytes[id * 2 + d] += ipLen;
    if (reply) { this.replied[id] = 1; return CS_TRK | CS_EST | CS_RPL; }
    return this.seenReply(id) ? CS_TRK | CS_EST : CS_TRK | CS_NEW;
  }

  /** Whether the connection has seen a packet in the reply direction. */
  private seenReply(id: number): boolean {
    return this.replied[id] === 1;
  }

  /** An ICMP error at `p`: rel (with rpl when it goes against the quoted packet's direction) if what it quotes is tracked, else inv. */
  private related(batch: PacketBatch, i: number, zone: number, family: number, p: number, now: number): number {
    const b = batch.buf;
    const end = batch.off[i] + batch.caplen[i];
    const q = p + 8; // the quoted packet's IP header
    const t = this.r;
    let proto: number;
    let l4: number;
    if (family === 4) {
      if (q + 20 > end || b[q] >> 4 !== 4) return CS_TRK | CS_INV;
      const ihl = (b[q] & 15) * 4;
      proto = b[q + 9];
      l4 = q + ihl;
      t[1] = rd32(b, q + 12); t[2] = 0; t[3] = 0; t[4] = 0;
      t[5] = rd32(b, q + 16); t[6] = 0; t[7] = 0; t[8] = 0;
    } else {
      if (q + 40 > end || b[q] >> 4 !== 6) return CS_TRK | CS_INV;
      proto = b[q + 6];
      l4 = q + 40;
      for (let w = 0; w < 4; w++) { t[1 + w] = rd32(b, q + 8 + 4 * w); t[5 + w] = rd32(b, q + 24 + 4 * w); }
    }
    if (l4 + 8 > end) return CS_TRK | CS_INV;
    t[0] = ((zone & 0xffff) << 16) | (proto << 8) | family;
    if (proto === 6 || proto === 17 || proto === 132 || proto === 136) t[9] = rd32(b, l4);
    else if ((proto === 1 && family === 4) || (proto === 58 && family === 6)) t[9] = (((b[l4 + 4] << 8) | b[l4 + 5]) << 16 | (b[l4] << 8)) >>> 0;
    else t[9] = 0;
    let e = this.find(t, 0, hashTuple(t, 0));
    // The quoted packet went one way; the error comes back the other.
    let replyDir = (e & 1) === 0;
    let translatedQuote = false;
    if (e < 0) {
      // Quoted as it was on the wire after a translation: its reverse is one of the connection's
      // tuples (a translated original's reverse is the reply tuple) — Linux's NAT finds it the same way.
      const icmpQ = (proto === 1 && family === 4) || (proto === 58 && family === 6);
      const rv = this.rv;
      rv[0] = t[0];
      for (let w = 0; w < 4; w++) { rv[1 + w] = t[5 + w]; rv[5 + w] = t[1 + w]; }
      if (icmpQ) {
        const type = (t[9] >>> 8) & 0xff;
        const rt = family === 4 ? ICMP4_REPLY[type] : ICMP6_REPLY[type];
        if (rt < 0) return CS_TRK | CS_INV;
        rv[9] = ((t[9] & 0xffff0000) | (rt << 8)) >>> 0;
      } else rv[9] = ((t[9] << 16) | (t[9] >>> 16)) >>> 0;
      e = this.find(rv, 0, hashTuple(rv, 0));
      replyDir = (e & 1) === 1;
      translatedQuote = e >= 0;
    }
    if (e < 0 || this.expires[e >> 1] <= now) return CS_TRK | CS_INV;
    const id = e >> 1;
    const st = replyDir ? CS_TRK | CS_REL | CS_RPL : CS_TRK | CS_REL;
    const kind = this.natKind[id];
    if (kind === 0) return st;
    // A translated connection: the error is translated back, quote and all (the quote is the
    // packet of direction qd as it was on the wire after translation: made as its sender sent it).
    if (!translatedQuote) return st; // quoted untranslated: it never crossed a translation (sent by this side's own peer)
    this.stats.relatedNat++;
    const qd = replyDir ? 0 : 1;
    const o = id * 2 * TW;
    if (!rewriteIcmpError(batch, i, this.tup, o + qd * TW, o + (1 - qd) * TW, q, family)) { this.stats.natCut++; return CS_TRK | CS_INV; }
    return st | ((kind & NAT_SRC) !== 0 ? CS_SRC_NAT : 0) | ((kind & NAT_DST) !== 0 ? CS_DST_NAT : 0);
  }

  /** The packet's IP length (header and payload), from its header: what the connection's byte counters add. */
  private ipLength(batch: PacketBatch, i: number, family: number): number {
    const l3 = batch.l3Off[i];
    if (l3 === ABSENT) return batch.wirelen[i];
    const b = batch.buf;
    const p = batch.off[i] + l3;
    return family === 4 ? (b[p + 2] << 8) | b[p + 3] : 40 + ((b[p + 4] << 8) | b[p + 5]);
  }

  // --- the index ---

  /**
   * The index entry (id * 2 + direction) whose tuple equals src[at .. at + TW), or -1.
   * A slot holds the entry and its tuple's hash side by side: a probe compares hashes in the
   * slot's own cache line and reads a tuple only when they agree.
   */
  private find(src: Uint32Array, at: number, h: number): number {
    const idx = this.index;
    const mask = this.indexMask;
    const tup = this.tup;
    const hh = h | 0;
    for (let s = h & mask; ; s = (s + 1) & mask) {
      const e = idx[s * 2];
      if (e < 0) return -1;
      if (idx[s * 2 + 1] !== hh) continue;
      const o = e * TW;
      let w = 0;
      while (w < TW && tup[o + w] === src[at + w]) w++;
      if (w === TW) return e;
    }
  }

  private insert(e: number, h: number): void {
    const idx = this.index;
    const mask = this.indexMask;
    let s = h & mask;
    while (idx[s * 2] >= 0) s = (s + 1) & mask;
    idx[s * 2] = e;
    idx[s * 2 + 1] = h | 0;
  }

  /** Removes entry e (backward-shift deletion: later entries of the run move up, so no tombstone). */
  private remove(e: number): void {
    const idx = this.index;
    const mask = this.indexMask;
    let s = hashTuple(this.tup, e * TW) & mask;
    while (idx[s * 2] !== e) s = (s + 1) & mask;
    let hole = s;
    for (let n = (hole + 1) & mask; idx[n * 2] >= 0; n = (n + 1) & mask) {
      const home = idx[n * 2 + 1] & mask;
      // Entry at n may move into the hole if its home is not cyclically in (hole, n].
      if (((n - home) & mask) >= ((n - hole) & mask)) {
        idx[hole * 2] = idx[n * 2];
        idx[hole * 2 + 1] = idx[n * 2 + 1];
        hole = n;
      }
    }
    idx[hole * 2] = -1;
  }

  /**
   * A new connection for the tuple in this.t (hash h): its reply tuple (translated as `nat`
   * says), index entries, state. Returns its id, or -1 (counted) when the table is full or no
   * translation is free.
   */
  private create(h: number, proto: number, icmp: boolean, now: number, nat: NatRange | null): number {
    if (this.nFree === 0) {
      this.expire(now, this.capacity < 64 ? this.capacity : 64);
      if (this.nFree === 0) { this.stats.full++; return -1; }
    }
    if (nat !== null && nat.family !== (this.t[0] & 0xff)) nat = null; // a rule for the other family: no translation
    if (nat !== null) {
      // The reply tuple translate() finds free: the reply comes to (SNAT) or from (DNAT) the new address and port.
      if (!this.translate(nat, icmp, h)) { this.stats.natExhausted++; return -1; }
    } else {
      // The reply: addresses and ports swapped (ICMP: the same identifier, the reply's type). If another
      // connection holds it already (a translated one's reply: a packet from the NAT address itself), the
      // two would share a tuple: refused, as Linux's confirm refuses a clash.
      this.plainReply(icmp);
      if (this.find(this.r, 0, hashTuple(this.r, 0)) >= 0) { this.stats.clash++; return -1; }
    }
    const id = this.freeIds[--this.nFree];
    const t = this.t;
    const tup = this.tup;
    const o = id * 2 * TW;
    for (let w = 0; w < TW; w++) tup[o + w] = t[w];
    const r = this.r;
    for (let w = 0; w < TW; w++) tup[o + TW + w] = r[w];
    this.natKind[id] = nat !== null ? nat.kind : 0;
    this.mark[id] = 0;
    this.replied[id] = 0;
    this.adoptedBy[id] = 0;
    this.insert(id * 2, h);
    this.insert(id * 2 + 1, hashTuple(tup, o + TW));
    this.used[id] = 1;
    this.proto[id] = proto;
    this.pstate[id] = OTHER_FIRST;
    this.packets[id * 2] = 0; this.packets[id * 2 + 1] = 0;
    this.bytes[id * 2] = 0; this.bytes[id * 2 + 1] = 0;
    this.expires[id] = now + (icmp ? this.timeouts.icmpFirst : this.timeouts.otherFirst);
    this.live++;
    this.stats.created++;
    return id;
  }

  /** this.r = the plain reply of the tuple in this.t: addresses and ports swapped; ICMP: the same identifier, the reply's type. */
  private plainReply(icmp: boolean): void {
    const t = this.t;
    const r = this.r;
    r[0] = t[0];
    for (let w = 0; w < 4; w++) { r[1 + w] = t[5 + w]; r[5 + w] = t[1 + w]; }
    if (icmp) {
      const type = (t[9] >>> 8) & 0xff;
      const rtype = (t[0] & 0xff) === 4 ? ICMP4_REPLY[type] : ICMP6_REPLY[type];
      r[9] = ((t[9] & 0xffff0000) | (rtype << 8)) >>> 0;
    } else r[9] = ((t[9] << 16) | (t[9] >>> 16)) >>> 0;
  }

  /**
   * Finds a free translated reply tuple for the tuple in this.t, into this.r: addresses of
   * the range from one the tuple's hash picks, and for each, the packet's own port if the
   * range has it, then ports on from one the hash picks; the first whose reply tuple no
   * connection holds. Bounded: 16 addresses × 1024 ports at most. false: none free.
   */
  private translate(nat: NatRange, icmp: boolean, h: number): boolean {
    const t = this.t;
    const r = this.r;
    // The plain reply tuple first.
    r[0] = t[0];
    for (let w = 0; w < 4; w++) { r[1 + w] = t[5 + w]; r[5 + w] = t[1 + w]; }
    const plainPorts = icmp ? t[9] : ((t[9] << 16) | (t[9] >>> 16)) >>> 0;
    const src = nat.kind === NAT_SRC;
    // SNAT changes the reply's destination (word 5 on, its dport); DNAT its source (word 1 on, its sport).
    const at = src ? 5 : 1;
    const own = icmp ? -1 : src ? t[9] >>> 16 : t[9] & 0xffff;
    const ranged = nat.portMax !== 0 && !icmp;
    const span = ranged ? nat.portMax - nat.portMin + 1 : 1;
    // The packet's own port first when the range has it; then from a port the hash picks, so that
    // connections that share a port spread over the range instead of queueing behind each other.
    const keep = ranged && own >= nat.portMin && own <= nat.portMax;
    const first = ranged ? (h >>> 8) % span : 0;
    const addrs = nat.addrCount < 16 ? nat.addrCount : 16;
    const tries = span < 1024 ? span : 1024;
    for (let a = 0; a < addrs; a++) {
      nat.addressInto(r, at, (h + a) % nat.addrCount);
      for (let p = 0; p < tries; p++) {
        let ports = plainPorts;
        if (ranged) {
          const port = keep && p === 0 ? own : nat.portMin + ((first + p) % span);
          ports = src ? ((plainPorts & 0xffff0000) | port) >>> 0 : ((port << 16) | (plainPorts & 0xffff)) >>> 0;
        }
        if (icmp) {
          const type = (t[9] >>> 8) & 0xff;
          const rtype = (t[0] & 0xff) === 4 ? ICMP4_REPLY[type] : ICMP6_REPLY[type];
          ports = ((t[9] & 0xffff0000) | (rtype << 8)) >>> 0;
        }
        r[9] = ports;
        if (this.find(r, 0, hashTuple(r, 0)) < 0) return true;
        if (!ranged) break;
      }
    }
    return false;
  }

  private free(id: number): void {
    if (this.adoptedBy[id] === 1) {
      this.adoptedBy[id] = 0;
      if (this.endedTail - this.endedHead > this.endedMask) this.stats.endedLost++;
      else this.ended[this.endedTail++ & this.endedMask] = id;
      const z = this.tup[id * 2 * TW] >>> 16;
      this.adoptedInZone.set(z, (this.adoptedInZone.get(z) ?? 1) - 1);
    }
    this.remove(id * 2);
    this.remove(id * 2 + 1);
    this.used[id] = 0;
    this.gen[id]++;
    this.freeIds[this.nFree++] = id;
    this.live--;
  }

  /** Frees expired connections among the next `budget` ids (a clock hand). Returns how many it freed. */
  expire(now: number, budget: number): number {
    let freed = 0;
    const c = this.capacity;
    for (let k = 0; k < budget; k++) {
      const id = this.hand;
      this.hand = id + 1 === c ? 0 : id + 1;
      if (this.used[id] === 1 && this.expires[id] <= now) {
        this.free(id);
        freed++;
      }
    }
    this.stats.expired += freed;
    return freed;
  }

  /**
   * Slow path: takes over a connection another tracker established (a guest's, handed over:
   * control/ct-offer.ts checked it). `orig` and `reply` are its tuples as words (the reply
   * translated when the guest translated it); the connection is established both ways, its
   * TCP windows unknown until the next segment each way sets them (as for a stream met
   * mid-stream), and it lives `timeoutMs` unless its packets say otherwise. Returns its id;
   * -1 when the table is full or a connection already holds either tuple (nothing changed).
   */
  adopt(orig: Uint32Array, reply: Uint32Array, now: number, timeoutMs: number, quota = this.capacity): number {
    const ho = hashTuple(orig, 0);
    const hr = hashTuple(reply, 0);
    let same = true;
    for (let w = 0; w < TW; w++) if (orig[w] !== reply[w]) same = false;
    const zone = orig[0] >>> 16;
    if (same || this.find(orig, 0, ho) >= 0 || this.find(reply, 0, hr) >= 0) { this.stats.adoptRefused++; return -1; }
    // At the zone's quota or a full table: a slice of expiry first (expired connections still count until freed).
    if (this.nFree === 0 || (this.adoptedInZone.get(zone) ?? 0) >= quota) this.expire(now, this.capacity < 64 ? this.capacity : 64);
    if ((this.adoptedInZone.get(zone) ?? 0) >= quota) { this.stats.adoptRefused++; return -1; }
    if (this.nFree === 0) { this.stats.full++; return -1; }
    const id = this.freeIds[--this.nFree];
    this.adoptedBy[id] = 1;
    this.adoptedInZone.set(zone, (this.adoptedInZone.get(zone) ?? 0) + 1);
    const o = id * 2 * TW;
    this.tup.set(orig.subarray(0, TW), o);
    this.tup.set(reply.subarray(0, TW), o + TW);
    this.insert(id * 2, ho);
    this.insert(id * 2 + 1, hr);
    const proto = (orig[0] >>> 8) & 0xff;
    this.used[id] = 1;
    this.proto[id] = proto;
    this.pstate[id] = OTHER_BIDIR;
    this.replied[id] = 1;
    let kind = 0;
    let sameSrc = true;
    let sameDst = true;
    for (let w = 0; w < 4; w++) { if (reply[5 + w] !== orig[1 + w]) sameSrc = false; if (reply[1 + w] !== orig[5 + w]) sameDst = false; }
    const icmp = proto === 1 || proto === 58;
    if (!sameSrc || (icmp ? reply[9] >>> 16 !== orig[9] >>> 16 : (reply[9] & 0xffff) !== orig[9] >>> 16)) kind |= NAT_SRC;
    if (!sameDst || (!icmp && reply[9] >>> 16 !== (orig[9] & 0xffff))) kind |= NAT_DST;
    this.natKind[id] = kind;
    for (const s of [id * 2, id * 2 + 1]) {
      this.tcpState[s] = TCPS_CLOSED; // the first segment from each end sets its side's windows
      this.seqlo[s] = 0;
      this.seqhi[s] = 1;
      this.maxwin[s] = 1;
      this.wscale[s] = WSCALE_UNKNOWN;
      this.packets[s] = 0;
      this.bytes[s] = 0;
    }
    // No longer than fpo's own timeout for such a connection: a guest cannot make one outlive it.
    const to = this.timeouts;
    this.expires[id] = now + Math.min(timeoutMs, proto === 6 ? to.tcpEstablished : icmp ? to.icmpReply : to.otherBidir);
    this.live++;
    this.stats.adopted++;
    return id;
  }

  // --- the hand-over's stage (offload.ts) ---

  /**
   * Fast path: the index entry (id * 2 + 1 for the reply direction) of the
   * live connection packet i of the batch belongs to in `zone`, or -1 — a
   * look, no change (no state, no counters, nothing freed). TCP, UDP (their
   * ports from the key) and ICMP/ICMPv6 queries and replies; not ICMP
   * errors, fragments after the first, or anything whose L4 header the
   * capture cut.
   */
  peek(batch: PacketBatch, i: number, zone: number, now: number): number {
    const k = i * KEY_WORDS;
    const key = batch.key;
    const ethType = key[k + W_ETH_TYPE] >>> 16;
    const family = ethType === 0x0800 ? 4 : ethType === 0x86dd ? 6 : 0;
    if (family === 0 || (key[k + W_ETH_TYPE] & FRAG_LATER) !== 0) return -1;
    const proto = (key[k + W_ETH_TYPE] >>> 8) & 0xff;
    const l4 = batch.l4Off[i];
    if (l4 === ABSENT) return -1;
    const t = this.t;
    let tp: number;
    if (proto === 6 || proto === 17) tp = key[k + W_TP];
    else if ((proto === 1 && family === 4) || (proto === 58 && family === 6)) {
      if (batch.caplen[i] < l4 + 8) return -1;
      const b = batch.buf;
      const p = batch.off[i] + l4;
      const type = b[p];
      if ((family === 4 ? ICMP4_REPLY : ICMP6_REPLY)[type] < 0 && (family === 4 ? ICMP4_REQUEST : ICMP6_REQUEST)[type] < 0) return -1;
      tp = (((b[p + 4] << 8) | b[p + 5]) << 16) | (type << 8);
    } else return -1;
    t[0] = ((zone & 0xffff) << 16) | (proto << 8) | family;
    for (let w = 0; w < 4; w++) { t[1 + w] = key[k + W_IP_SRC + w]; t[5 + w] = key[k + W_IP_DST + w]; }
    t[9] = tp >>> 0;
    const e = this.find(t, 0, hashTuple(t, 0));
    return e >= 0 && this.expires[e >> 1] > now ? e : -1;
  }

  /** Whether connection id was adopted (a guest's, handed over) and is in the table. */
  isAdopted(id: number): boolean {
    return this.used[id] === 1 && this.adoptedBy[id] === 1;
  }

  /** Whether either end of TCP connection id has sent a FIN or a reset (it is closing: the guest takes it back). */
  isClosing(id: number): boolean {
    return this.proto[id] === 6 && (this.tcpState[id * 2] >= TCPS_CLOSING || this.tcpState[id * 2 + 1] >= TCPS_CLOSING);
  }

  /** The zone of connection id. */
  zoneOf(id: number): number {
    return this.tup[id * 2 * TW] >>> 16;
  }

  /** Removes connection id now (the hand-over's stage gives it back); false when it is not in the table. */
  release(id: number): boolean {
    if (!(id >= 0 && id < this.capacity) || this.used[id] === 0) return false;
    this.free(id);
    return true;
  }

  /** The next adopted connection freed since the last call (oldest first), or -1: the ring of ended ones. */
  takeEnded(): number {
    if (this.endedHead === this.endedTail) return -1;
    return this.ended[this.endedHead++ & this.endedMask];
  }

  /** Drops every connection (of one zone). Returns how many. */
  flush(zone?: number): number {
    let n = 0;
    for (let id = 0; id < this.capacity; id++) {
      if (this.used[id] === 1 && (zone === undefined || this.tup[id * 2 * TW] >>> 16 === zone)) { this.free(id); n++; }
    }
    return n;
  }

  // --- TCP (pf's window tracking, as Open vSwitch's conntrack-tcp.c) ---

  /** Flags no TCP sends: SYN with RST or FIN; neither ACK nor RST (and not SYN); FIN, PSH or URG without ACK. */
  private static badFlags(f: number): boolean {
    if ((f & TH_SYN) !== 0) { if ((f & (TH_RST | TH_FIN)) !== 0) return true; }
    else if ((f & (TH_ACK | TH_RST)) === 0) return true;
    if ((f & TH_ACK) === 0 && (f & (TH_FIN | TH_PSH | TH_URG)) !== 0) return true;
    return false;
  }

  /** The TCP header of packet i is whole in the capture: its offset in buf, else -1. */
  private tcpAt(batch: PacketBatch, i: number): number {
    const l4 = batch.l4Off[i];
    if (l4 === ABSENT) return -1;
    const p = batch.off[i] + l4;
    const end = batch.off[i] + batch.caplen[i];
    if (p + 20 > end) return -1;
    const doff = (batch.buf[p + 12] >> 4) * 4;
    if (doff < 20 || p + doff > end) return -1;
    return p;
  }

  /**
   * A packet that may start a connection, as Linux decides (nf_conntrack_tcp_loose=1, its
   * default): a SYN without ACK, or a segment with ACK and neither SYN, FIN nor RST (a stream
   * met mid-way). Not a SYN+ACK (a half-open connection), not a FIN or a reset: those end a
   * connection, they do not start one (pf and Open vSwitch take them too; Linux, whose
   * guest conntrack hands connections over, does not — the comparison test showed it).
   */
  private tcpValidNew(batch: PacketBatch, i: number): boolean {
    const p = this.tcpAt(batch, i);
    if (p < 0) return false;
    const f = batch.buf[p + 13];
    if (ConnTrack.badFlags(f)) return false;
    if ((f & TH_SYN) !== 0) return (f & TH_ACK) === 0;
    return this.looseTcp && (f & (TH_FIN | TH_RST)) === 0 && (f & TH_ACK) !== 0;
  }

  /** TCP payload length of packet i whose header is at p. */
  private tcpPayload(batch: PacketBatch, i: number, p: number): number {
    const b = batch.buf;
    const l3 = batch.off[i] + batch.l3Off[i];
    const family = b[l3] >> 4;
    const ipEnd = family === 4 ? l3 + ((b[l3 + 2] << 8) | b[l3 + 3]) : l3 + 40 + ((b[l3 + 4] << 8) | b[l3 + 5]);
    const n = ipEnd - p - (b[p + 12] >> 4) * 4;
    return n > 0 ? n : 0;
  }

  /** The window scale option of the TCP header at p: shift | WSCALE_FLAG, or 0. */
  private static wscaleOpt(b: Uint8Array, p: number): number {
    const end = p + (b[p + 12] >> 4) * 4;
    let o = p + 20;
    while (o < end) {
      const kind = b[o];
      if (kind === 0) break;
      if (kind === 1) { o++; continue; }
      if (o + 1 >= end) break;
      const len = b[o + 1];
      if (len < 2 || o + len > end) break;
      if (kind === 3 && len === 3) return (b[o + 2] > TCP_MAX_WSCALE ? TCP_MAX_WSCALE : b[o + 2]) | WSCALE_FLAG;
      o += len;
    }
    return 0;
  }

  private tcpNew(batch: PacketBatch, i: number, id: number, now: number): void {
    const b = batch.buf;
    const p = this.tcpAt(batch, i);
    const f = b[p + 13];
    const s = id * 2;
    const dst = s + 1;
    const seq = rd32(b, p + 4);
    this.seqlo[s] = seq;
    let hi = seq + this.tcpPayload(batch, i, p) + 1;
    if ((f & TH_SYN) !== 0) {
      hi++;
      this.wscale[s] = ConnTrack.wscaleOpt(b, p);
      this.wscale[dst] = 0;
    } else {
      this.wscale[s] = WSCALE_UNKNOWN;
      this.wscale[dst] = WSCALE_UNKNOWN;
    }
    let win = (b[p + 14] << 8) | b[p + 15];
    if (win === 0) win = 1;
    const sws = this.wscale[s] & WSCALE_MASK;
    if (sws !== 0 && (this.wscale[s] & WSCALE_FLAG) !== 0) win = Math.ceil(win / (1 << sws));
    this.maxwin[s] = win;
    if ((f & TH_FIN) !== 0) hi++;
    this.seqhi[s] = hi >>> 0;
    this.seqhi[dst] = 1;
    this.maxwin[dst] = 1;
    this.seqlo[dst] = 0;
    this.tcpState[s] = TCPS_SYN_SENT;
    this.tcpState[dst] = TCPS_CLOSED;
    this.expires[id] = now + this.timeouts.tcpFirstPacket;
  }

  /** Checks and applies one segment in direction `reply`. */
  private tcpUpdate(batch: PacketBatch, i: number, id: number, reply: boolean, now: number): number {
    const b = batch.buf;
    const p = this.tcpAt(batch, i);
    if (p < 0) return UPDATE_INVALID;
    const f = b[p + 13];
    if (ConnTrack.badFlags(f)) return UPDATE_INVALID;
    const s = id * 2 + (reply ? 1 : 0);
    const d = id * 2 + (reply ? 0 : 1);
    const st = this.tcpState;
    if ((f & TH_SYN) !== 0 && st[d] >= TCPS_FIN_WAIT_2 && st[s] >= TCPS_FIN_WAIT_2) return UPDATE_NEW;
    const ws = this.wscale;
    let sws: number;
    let dws: number;
    if ((ws[s] & WSCALE_FLAG) !== 0 && (ws[d] & WSCALE_FLAG) !== 0 && (f & TH_SYN) === 0) {
      sws = ws[s] & WSCALE_MASK;
      dws = ws[d] & WSCALE_MASK;
    } else if ((ws[s] & WSCALE_UNKNOWN) !== 0 && (ws[d] & WSCALE_UNKNOWN) !== 0 && (f & TH_SYN) === 0) {
      sws = TCP_MAX_WSCALE;
      dws = TCP_MAX_WSCALE;
    } else {
      sws = 0;
      dws = 0;
    }
    let win = (b[p + 14] << 8) | b[p + 15];
    const origSeq = rd32(b, p + 4);
    let seq = origSeq;
    let ack: number;
    let end: number;
    const payload = this.tcpPayload(batch, i, p);
    const seqlo = this.seqlo;
    const seqhi = this.seqhi;
    const maxwin = this.maxwin;
    if (st[s] < TCPS_SYN_SENT && (f & TH_RST) !== 0) {
      // A reset as this end's first segment: only the answer to the other end's SYN or data, acking
      // exactly what it sent (a port refusing a connection). Anything else could be anyone's: an
      // off-path reset would otherwise set this end's window itself and pass the exact-sequence check.
      // (A SYN's sender holds its ISN as seqlo: the answer acks ISN + 1.)
      const acked = (rd32(b, p + 8) - seqlo[d]) >>> 0;
      if ((f & TH_ACK) === 0 || st[d] < TCPS_SYN_SENT || acked > 1) return UPDATE_INVALID;
    }
    if (st[s] < TCPS_SYN_SENT) {
      // The first segment from this end.
      ack = rd32(b, p + 8);
      end = (seq + payload) >>> 0;
      if ((f & TH_SYN) !== 0) {
        end = (end + 1) >>> 0;
        if ((ws[d] & WSCALE_FLAG) !== 0) {
          ws[s] = ConnTrack.wscaleOpt(b, p);
          if ((ws[s] & WSCALE_FLAG) !== 0) {
            sws = ws[s] & WSCALE_MASK;
            win = Math.ceil(win / (1 << sws));
            dws = ws[d] & WSCALE_MASK;
          } else ws[d] = 0; // the other end's scale does not count: this end does not scale
        }
      }
      if ((f & TH_FIN) !== 0) end = (end + 1) >>> 0;
      seqlo[s] = seq;
      st[s] = TCPS_SYN_SENT;
      const room = Math.max(1, maxwin[d] * 2 ** dws);
      if (seqhi[s] === 1 || seqGeq((end + room) >>> 0, seqhi[s])) seqhi[s] = (end + room) >>> 0;
      if (win > maxwin[s]) maxwin[s] = win;
    } else {
      ack = rd32(b, p + 8);
      end = (seq + payload) >>> 0;
      if ((f & TH_SYN) !== 0) end = (end + 1) >>> 0;
      if ((f & TH_FIN) !== 0) end = (end + 1) >>> 0;
    }
    if ((f & TH_ACK) === 0) ack = seqlo[d]; // no ACK: it passes the ack-skew check
    else if (ack === 0 && (f & (TH_ACK | TH_RST)) === (TH_ACK | TH_RST)) ack = seqlo[d]; // stacks that reset with ack 0
    if (seq === end) {
      // No data: the sequence rules are eased.
      seq = seqlo[s];
      end = seq;
    }
    const ackskew = (seqlo[d] - ack) | 0;
    const wins = win * 2 ** sws;
    if (seqGeq(seqhi[s], end)
      && seqGeq(seq, (seqlo[s] - maxwin[d] * 2 ** dws) >>> 0)
      && ackskew >= -MAXACKWINDOW
      && ackskew <= MAXACKWINDOW * 2 ** sws
      && ((f & TH_RST) === 0 || origSeq === seqlo[s] || origSeq === ((seqlo[s] + 1) >>> 0) || ((origSeq + 1) >>> 0) === seqlo[s])) {
      if (maxwin[s] < win) maxwin[s] = win;
      if (seqGt(end, seqlo[s])) seqlo[s] = end;
      if (seqGeq((ack + wins) >>> 0, seqhi[d])) seqhi[d] = (ack + Math.max(wins, 1)) >>> 0;
      if ((f & TH_SYN) !== 0 && st[s] < TCPS_SYN_SENT) st[s] = TCPS_SYN_SENT;
      if ((f & TH_FIN) !== 0 && st[s] < TCPS_CLOSING) st[s] = TCPS_CLOSING;
      if ((f & TH_ACK) !== 0) {
        if (st[d] === TCPS_SYN_SENT) st[d] = TCPS_ESTABLISHED;
        else if (st[d] === TCPS_CLOSING) st[d] = TCPS_FIN_WAIT_2;
      }
      if ((f & TH_RST) !== 0) { st[s] = TCPS_TIME_WAIT; st[d] = TCPS_TIME_WAIT; }
      const to = this.timeouts;
      this.expires[id] = now + (st[s] >= TCPS_FIN_WAIT_2 && st[d] >= TCPS_FIN_WAIT_2 ? to.tcpClosed
        : st[s] >= TCPS_CLOSING && st[d] >= TCPS_CLOSING ? to.tcpFinWait
          : st[s] < TCPS_ESTABLISHED || st[d] < TCPS_ESTABLISHED ? to.tcpOpening
            : st[s] >= TCPS_CLOSING || st[d] >= TCPS_CLOSING ? to.tcpClosing : to.tcpEstablished);
      return UPDATE_VALID;
    }
    if ((st[d] < TCPS_SYN_SENT || st[d] >= TCPS_FIN_WAIT_2 || st[s] >= TCPS_FIN_WAIT_2)
      && seqGeq((seqhi[s] + MAXACKWINDOW) >>> 0, end)
      && seqGeq(seq, (seqlo[s] - MAXACKWINDOW) >>> 0)) {
      // pf's loose case: SYNs shot before the peer answered, a stream met after it began, stray
      // segments just after a close. State moves, the timeout does not (a flood here buys nothing).
      if (maxwin[s] < win) maxwin[s] = win;
      if (seqGt(end, seqlo[s])) seqlo[s] = end;
      if (seqGeq((ack + wins) >>> 0, seqhi[d])) seqhi[d] = (ack + Math.max(wins, 1)) >>> 0;
      if ((f & TH_FIN) !== 0 && st[s] < TCPS_CLOSING) st[s] = TCPS_CLOSING;
      if ((f & TH_RST) !== 0) { st[s] = TCPS_TIME_WAIT; st[d] = TCPS_TIME_WAIT; }
      return UPDATE_VALID;
    }
    return UPDATE_INVALID;
  }

  // --- slow path: for fpo ctl ---

  /** The connections (of one zone), as objects: for listing, not the fast path. */
  // --- saved state (the per-port firewall's upgrade: services/firewall) ---

  /**
   * Slow path: the table's own arrays, for a transform in place (the
   * firewall's versions, when a port's table moves from one to the other:
   * services/firewall/v2/transform.ts). ids with used[id] = 1 are live;
   * expires are clock readings.
   */
  view(): { capacity: number; used: Uint8Array; proto: Uint8Array; pstate: Uint8Array; packets: Float64Array; expires: Float64Array; mark: Uint32Array } {
    return { capacity: this.capacity, used: this.used, proto: this.proto, pstate: this.pstate, packets: this.packets, expires: this.expires, mark: this.mark };
  }

  /** Slow path: live connections of `zone` (a scan). */
  countZone(zone: number, now: number): number {
    let n = 0;
    for (let id = 0; id < this.capacity; id++) if (this.used[id] === 1 && this.tup[id * 2 * TW] >>> 16 === zone && this.expires[id] > now) n++;
    return n;
  }

  /**
   * Slow path: the live connections of `zone` into `into` (from record 0;
   * into.n set), in id order, with the ms each has left at `now`; ids[r] is
   * record r's id when given. Expired ones are left out. Throws when `into`
   * is too small (nothing is lost: the table is not changed).
   */
  exportZone(zone: number, now: number, into: ConnColumns, ids?: Int32Array): ConnColumns {
    const tup = this.tup;
    const room = columnsCapacity(into);
    let n = 0;
    for (let id = 0; id < this.capacity; id++) {
      if (this.used[id] === 0 || tup[id * 2 * TW] >>> 16 !== zone || this.expires[id] <= now) continue;
      if (n === room) throw new FpoError('FPO_ERR_FW_STATE', `conntrack: zone ${zone} has more than ${room} connections, the room the saved state has`);
      into.tup.set(tup.subarray(id * 2 * TW, (id + 1) * 2 * TW), n * 2 * TW);
      into.proto[n] = this.proto[id];
      into.pstate[n] = this.pstate[id];
      into.natKind[n] = this.natKind[id];
      into.replied[n] = this.replied[id];
      for (let d = 0; d < 2; d++) {
        into.tcpState[n * 2 + d] = this.tcpState[id * 2 + d];
        into.seqlo[n * 2 + d] = this.seqlo[id * 2 + d];
        into.seqhi[n * 2 + d] = this.seqhi[id * 2 + d];
        into.maxwin[n * 2 + d] = this.maxwin[id * 2 + d];
        into.wscale[n * 2 + d] = this.wscale[id * 2 + d];
        into.packets[n * 2 + d] = this.packets[id * 2 + d];
        into.bytes[n * 2 + d] = this.bytes[id * 2 + d];
      }
      into.expiresIn[n] = this.expires[id] - now;
      into.mark[n] = this.mark[id];
      if (ids !== undefined) ids[n] = id;
      n++;
    }
    into.n = n;
    return into;
  }

  /**
   * Slow path: takes every record of `c` as a live connection (the state a
   * firewall saved), all or none: refused with nothing changed when the
   * table has no room for them all, a record is malformed (checkColumns), or
   * a tuple is held already (by the table or by another record). ids[r]
   * gets record r's id when given. Returns how many were taken.
   */
  importColumns(c: ConnColumns, now: number, ids?: Int32Array): number {
    const bad = checkColumns(c);
    if (bad !== null) throw new FpoError('FPO_ERR_FW_STATE', `conntrack: saved state ${bad}`);
    if (c.n > this.nFree) {
      // Room counting the expired ones (not freed yet: a refused import changes nothing).
      let expired = 0;
      for (let id = 0; id < this.capacity; id++) if (this.used[id] === 1 && this.expires[id] <= now) expired++;
      if (c.n > this.nFree + expired) throw new FpoError('FPO_ERR_FW_STATE', `conntrack: ${c.n} connections to restore, room for ${this.nFree + expired}`);
    }
    const tup = c.tup;
    for (let r = 0; r < c.n; r++) {
      for (let d = 0; d < 2; d++) {
        const at = r * 2 * TW + d * TW;
        if (this.find(tup, at, hashTuple(tup, at)) >= 0) throw new FpoError('FPO_ERR_FW_STATE', `conntrack: saved connection ${r} (${d === 0 ? 'original' : 'reply'} tuple) is held by a connection in the table already`);
      }
    }
    // Two records with one tuple (the checks above saw only the table): refused before anything is taken.
    const seen = new Set<string>();
    for (let r = 0; r < c.n; r++) {
      for (let d = 0; d < 2; d++) {
        const at = r * 2 * TW + d * TW;
        const k = Array.prototype.join.call(tup.subarray(at, at + TW), ',');
        if (seen.has(k)) throw new FpoError('FPO_ERR_FW_STATE', `conntrack: saved connection ${r} has a tuple of an earlier one`);
        seen.add(k);
      }
    }
    if (c.n > this.nFree) this.expire(now, this.capacity);
    // Every refusal was above: from here nothing fails, so nothing is taken half.
    for (let r = 0; r < c.n; r++) {
      const at = r * 2 * TW;
      const id = this.freeIds[--this.nFree];
      const o = id * 2 * TW;
      this.tup.set(tup.subarray(at, at + 2 * TW), o);
      this.proto[id] = c.proto[r];
      this.pstate[id] = c.pstate[r];
      this.natKind[id] = c.natKind[r];
      this.replied[id] = c.replied[r];
      this.adoptedBy[id] = 0;
      for (let d = 0; d < 2; d++) {
        this.tcpState[id * 2 + d] = c.tcpState[r * 2 + d];
        this.seqlo[id * 2 + d] = c.seqlo[r * 2 + d];
        this.seqhi[id * 2 + d] = c.seqhi[r * 2 + d];
        this.maxwin[id * 2 + d] = c.maxwin[r * 2 + d];
        this.wscale[id * 2 + d] = c.wscale[r * 2 + d];
        this.packets[id * 2 + d] = c.packets[r * 2 + d];
        this.bytes[id * 2 + d] = c.bytes[r * 2 + d];
      }
      this.expires[id] = now + c.expiresIn[r];
      this.mark[id] = c.mark[r];
      this.insert(id * 2, hashTuple(this.tup, o));
      this.insert(id * 2 + 1, hashTuple(this.tup, o + TW));
      this.used[id] = 1;
      this.live++;
      if (ids !== undefined) ids[r] = id;
    }
    return c.n;
  }

  list(now: number, zone?: number): ConnInfo[] {
    const out: ConnInfo[] = [];
    const tup = this.tup;
    for (let id = 0; id < this.capacity; id++) {
      if (this.used[id] === 0) continue;
      const o = id * 2 * TW;
      const z = tup[o] >>> 16;
      if (zone !== undefined && z !== zone) continue;
      const family = tup[o] & 0xff;
      const side = (at: number) => ({ src: addr(tup, at + 1, family), dst: addr(tup, at + 5, family), sport: tup[at + 9] >>> 16, dport: tup[at + 9] & 0xffff });
      const proto = this.proto[id];
      out.push({
        id, zone: z, proto, orig: side(o), reply: side(o + TW),
        state: proto === 6 ? `${TCP_STATE_NAMES[this.tcpState[id * 2]]}:${TCP_STATE_NAMES[this.tcpState[id * 2 + 1]]}` : OTHER_STATE_NAMES[this.pstate[id]],
        packets: [this.packets[id * 2], this.packets[id * 2 + 1]], bytes: [this.bytes[id * 2], this.bytes[id * 2 + 1]],
        expiresInMs: Math.max(0, this.expires[id] - now),
        owner: this.adoptedBy[id] === 1 ? 'vnic' : 'guest',
        nat: (['none', 'src', 'dst', 'both'] as const)[this.natKind[id] & 3],
      });
    }
    return out;
  }
}

/**
 * What is wrong with saved columns, or null: lengths against n, protocols,
 * states, tuples (family 4 or 6, the record's protocol in both, one zone),
 * times. A restore refuses anything this does not pass.
 */
export function checkColumns(c: ConnColumns): string | null {
  const n = c.n;
  if (!Number.isInteger(n) || n < 0) return `count ${n} is not a count`;
  if (c.tup.length < n * 2 * TW || c.proto.length < n || c.pstate.length < n || c.natKind.length < n || c.replied.length < n || c.expiresIn.length < n || c.mark.length < n) return `columns shorter than its ${n} records`;
  for (const a of [c.tcpState, c.seqlo, c.seqhi, c.maxwin, c.wscale, c.packets, c.bytes]) if (a.length < n * 2) return `columns shorter than its ${n} records`;
  for (let r = 0; r < n; r++) {
    const at = r * 2 * TW;
    const w0 = c.tup[at];
    const family = w0 & 0xff;
    const proto = (w0 >>> 8) & 0xff;
    if (family !== 4 && family !== 6) return `record ${r}: family ${family} (expected 4 or 6)`;
    if (proto !== c.proto[r]) return `record ${r}: tuple protocol ${proto}, record protocol ${c.proto[r]}`;
    if (c.tup[at + TW] !== w0) return `record ${r}: its two tuples differ in zone, protocol or family`;
    if (r > 0 && w0 >>> 16 !== c.tup[0] >>> 16) return `record ${r}: zone ${w0 >>> 16}, record 0's is ${c.tup[0] >>> 16} (a state is one zone's)`;
    let same = true;
    for (let w = 1; w < TW && same; w++) if (c.tup[at + w] !== c.tup[at + TW + w]) same = false;
    if (same) return `record ${r}: its reply tuple is its original tuple`;
    if (c.pstate[r] > OTHER_STREAM) return `record ${r}: state ${c.pstate[r]} (expected 0..${OTHER_STREAM})`;
    if (c.natKind[r] > 3 || c.replied[r] > 1) return `record ${r}: NAT ${c.natKind[r]} / replied ${c.replied[r]} out of range`;
    for (let d = 0; d < 2; d++) {
      if (c.tcpState[r * 2 + d] > TCPS_TIME_WAIT) return `record ${r}: TCP state ${c.tcpState[r * 2 + d]} (expected 0..${TCPS_TIME_WAIT})`;
      if (!(c.packets[r * 2 + d] >= 0) || !(c.bytes[r * 2 + d] >= 0)) return `record ${r}: counters must be ≥ 0`;
    }
    if (!(c.expiresIn[r] > 0 && c.expiresIn[r] <= 31 * 24 * 3600_000)) return `record ${r}: ${c.expiresIn[r]} ms left (expected more than 0, at most 31 days)`;
  }
  return null;
}

const UPDATE_INVALID = 0;
const UPDATE_VALID = 1;
const UPDATE_NEW = 2;

/** Index slots for `capacity` connections: a power of two ≥ 4 a connection (2 entries each: at most half full). */
function indexSlots(capacity: number): number {
  let s = 16;
  while (s < capacity * 4) s *= 2;
  return s;
}

/** murmur3's word step over the tuple, then its finalizer (flow-table's fmix). */
function hashTuple(t: Uint32Array, at: number): number {
  let h = 0x9e3779b9;
  for (let w = 0; w < TW; w++) {
    let k = Math.imul(t[at + w], 0xcc9e2d51);
    k = Math.imul((k << 15) | (k >>> 17), 0x1b873593);
    h ^= k;
    h = (Math.imul((h << 13) | (h >>> 19), 5) + 0xe6546b64) | 0;
  }
  return fmix((h ^ (TW * 4)) >>> 0);
}


function addr(t: Uint32Array, at: number, family: number): string {
  if (family === 4) return [t[at] >>> 24, (t[at] >>> 16) & 255, (t[at] >>> 8) & 255, t[at] & 255].join('.');
  const parts: string[] = [];
  for (let w = 0; w < 4; w++) parts.push((t[at + w] >>> 16).toString(16), (t[at + w] & 0xffff).toString(16));
  return parts.join(':');
}
