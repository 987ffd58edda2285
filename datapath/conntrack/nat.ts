/**
 * NAT for tracked connections (conntrack.ts): what a rule asks for (a
 * NatRange: source or destination, an address range, an optional port
 * range) and the rewrite of a packet's addresses and ports to a given
 * tuple, with every checksum it touches updated incrementally (RFC 1624:
 * HC' = ~(~HC + ~m + m')), so the payload is never summed again.
 *
 * The translation itself is chosen by ConnTrack when the connection is
 * committed: its reply tuple is the translated one (a reply to a source-NATed
 * packet comes to the translated address and port), so every later packet,
 * either way, is found by the table and rewritten to the reverse of the
 * other direction's tuple. Two connections never share a translated tuple:
 * the choice skips every reply tuple the table already holds.
 */
import type { PacketBatch } from '../batch.js';
import { ABSENT } from '../batch.js';
import { KEY_WORDS, W_IP_DST, W_IP_SRC, W_TP } from '../classifier/flow-key.js';
import { FpoError } from '../errors.js';
import { parseIpText } from '../ip-text.js';

export const NAT_SRC = 1;
export const NAT_DST = 2;

/** What a ct(nat(...)) rule asks: source or destination NAT to an address range and, optionally, a port range. */
export class NatRange {
  /** NAT_SRC or NAT_DST. */
  readonly kind: number;
  /** 4 or 6. */
  readonly family: number;
  /** The first address, as 4 words (IPv4: the first word, the rest 0). */
  readonly addr: Uint32Array;
  /** Addresses in the range (the last word counts up). */
  readonly addrCount: number;
  /** Ports to choose from, or 0..0: keep the packet's port. */
  readonly portMin: number;
  readonly portMax: number;
  private readonly text: { kind: 'src' | 'dst'; addrMin: string; addrMax: string; portMin: number; portMax: number };

  /** The range as it was written (slow path: dumps, traces). */
  describe(): { kind: 'src' | 'dst'; addrMin: string; addrMax: string; portMin: number; portMax: number } {
    return { ...this.text };
  }

  constructor(kind: 'src' | 'dst', addrMin: string, addrMax: string = addrMin, portMin = 0, portMax = portMin) {
    this.kind = kind === 'src' ? NAT_SRC : NAT_DST;
    const lo = addrWords(addrMin);
    const hi = addrWords(addrMax);
    if (lo === null || hi === null || lo.family !== hi.family) throw new FpoError('FPO_ERR_USAGE', `nat: "${addrMin}"–"${addrMax}" is not a range of IPv4 or IPv6 addresses`);
    if (lo.family === 6) for (let w = 0; w < 3; w++) if (lo.words[w] !== hi.words[w]) throw new FpoError('FPO_ERR_USAGE', `nat: an IPv6 range may differ in its last 32 bits only ("${addrMin}"–"${addrMax}")`);
    // The word that counts: IPv4's only one, IPv6's last.
    const last = lo.family === 4 ? 0 : 3;
    const count = hi.words[last] - lo.words[last] + 1;
    if (count < 1) throw new FpoError('FPO_ERR_USAGE', `nat: the range "${addrMin}"–"${addrMax}" is empty`);
    if (!Number.isInteger(portMin) || !Number.isInteger(portMax) || portMin < 0 || portMax > 65535 || portMin > portMax || (portMin === 0 && portMax !== 0)) throw new FpoError('FPO_ERR_USAGE', `nat: ports ${portMin}–${portMax}: expected 1 ≤ min ≤ max ≤ 65535 (or none)`);
    this.text = { kind, addrMin, addrMax, portMin, portMax };
    this.family = lo.family;
    this.addr = lo.words;
    this.addrCount = count;
    this.portMin = portMin;
    this.portMax = portMax;
  }

  /** Writes address number k of the range into t[at .. at + 4). */
  addressInto(t: Uint32Array, at: number, k: number): void {
    if (this.family === 4) {
      t[at] = (this.addr[0] + k) >>> 0;
      t[at + 1] = 0; t[at + 2] = 0; t[at + 3] = 0;
    } else {
      t[at] = this.addr[0]; t[at + 1] = this.addr[1]; t[at + 2] = this.addr[2];
      t[at + 3] = (this.addr[3] + k) >>> 0;
    }
  }
}

/**
 * An address's text as the 4 words a tuple holds (IPv4 in the first) and its family, or null.
 * One way to write each: no leading zeros in IPv4's parts, at most 39 characters.
 */
export function addrWords(s: string): { family: 4 | 6; words: Uint32Array } | null {
  if (s.length > 39 || /(^|\.)0\d/.test(s)) return null;
  const b = parseIpText(s);
  if (b === null) return null;
  const words = new Uint32Array(4);
  for (let w = 0; w < b.length / 4; w++) words[w] = ((b[4 * w] << 24) | (b[4 * w + 1] << 16) | (b[4 * w + 2] << 8) | b[4 * w + 3]) >>> 0;
  return { family: b.length === 4 ? 4 : 6, words };
}

/**
 * Fast path: the address of `words` words at b[p] becomes t[at ..], keeping the checksums at
 * ipSum and l4Sum right (-1: none) and the flow key's words from key[kAt] in step.
 */
function setAddr(b: Uint8Array, p: number, t: Uint32Array, at: number, words: number, ipSum: number, l4Sum: number, key: Uint32Array | null, kAt: number): void {
  for (let w = 0; w < words; w++) {
    const old = rd32(b, p + 4 * w);
    const nu = t[at + w];
    if (old === nu) continue;
    wr32(b, p + 4 * w, nu);
    if (ipSum >= 0) csum32(b, ipSum, old, nu);
    if (l4Sum >= 0) csum32(b, l4Sum, old, nu);
    if (key !== null) key[kAt + w] = nu;
  }
}

/** Replaces 16-bit word `oldW` by `newW` in the one's complement checksum at b[at..at+2) (RFC 1624, eqn. 3). */
export function csum16(b: Uint8Array, at: number, oldW: number, newW: number): void {
  let sum = (~((b[at] << 8) | b[at + 1]) & 0xffff) + (~oldW & 0xffff) + newW;
  sum = (sum & 0xffff) + (sum >>> 16);
  sum = (sum & 0xffff) + (sum >>> 16);
  const r = ~sum & 0xffff;
  b[at] = r >> 8;
  b[at + 1] = r & 0xff;
}

/** The same for a 32-bit word (two 16-bit halves). */
function csum32(b: Uint8Array, at: number, oldW: number, newW: number): void {
  csum16(b, at, oldW >>> 16, newW >>> 16);
  csum16(b, at, oldW & 0xffff, newW & 0xffff);
}

/** The big-endian 32-bit word at b[p]. */
export const rd32 = (b: Uint8Array, p: number) => ((b[p] << 24) | (b[p + 1] << 16) | (b[p + 2] << 8) | b[p + 3]) >>> 0;
const wr32 = (b: Uint8Array, p: number, v: number) => { b[p] = v >>> 24; b[p + 1] = (v >>> 16) & 255; b[p + 2] = (v >>> 8) & 255; b[p + 3] = v & 255; };

/**
 * Fast path: rewrites packet i's source and destination addresses and ports
 * (ICMP: the query identifier) to tuple t[at ..] (words: zone|proto|family,
 * src ×4, dst ×4, sport<<16|dport), updating the IPv4 header checksum, the
 * TCP/UDP/ICMPv6 checksum (pseudo-header) and ICMP's, and the packet's flow
 * key. Returns false (nothing changed) when the headers it must change are
 * not all in the capture.
 */
export function rewrite(batch: PacketBatch, i: number, t: Uint32Array, at: number): boolean {
  const l3o = batch.l3Off[i];
  const l4o = batch.l4Off[i];
  if (l3o === ABSENT || l4o === ABSENT) return false;
  const b = batch.buf;
  const base = batch.off[i];
  const l3 = base + l3o;
  const l4 = base + l4o;
  const end = base + batch.caplen[i];
  const family = t[at] & 0xff;
  const proto = (t[at] >>> 8) & 0xff;
  // Where the L4 checksum is (-1: none to update), and whether the pseudo-header is in it.
  const icmp = proto === 1 || proto === 58;
  const csumAt = proto === 6 ? l4 + 16 : proto === 17 ? l4 + 6 : icmp ? l4 + 2 : -1;
  const need = proto === 6 ? 18 : 8;
  if (l4 + need > end || (family === 4 ? l3 + 20 : l3 + 40) > end) return false;
  const pseudo = proto === 6 || proto === 17 || proto === 58;
  // IPv4 UDP with checksum 0: none sent, none to keep right.
  const l4sum = csumAt >= 0 && !(proto === 17 && family === 4 && b[csumAt] === 0 && b[csumAt + 1] === 0);
  const key = batch.key;
  const k = i * KEY_WORDS;
  // A checksum the sender left for the NIC to finish (virtio-net NEEDS_CSUM, a port with
  // offloads: offload.ts) holds the pseudo-header's sum, uncomplemented, and the NIC sums the
  // L4 header and data itself: the addresses go into it uncomplemented (complemented around
  // the update), the ports not at all.
  const partial = l4sum && (proto === 6 || proto === 17) && batch.vnet && base >= 10 && (b[base - 10] & VNET_NEEDS_CSUM) !== 0;
  if (family === 4 && (proto === 6 || proto === 17) && !partial) {
    rewrite4(batch.dv, l3, l4, proto, l4sum ? csumAt : -1, t[at + 1], t[at + 5], t[at + 9], key, k);
    return true;
  }
  if (partial) flip16(b, csumAt);
  // Source then destination: IPv4 at 12 and 16 (and its header checksum), IPv6 at 8 and 24.
  const words = family === 4 ? 1 : 4;
  const ipSum = family === 4 ? l3 + 10 : -1;
  const l4At = l4sum && pseudo ? csumAt : -1;
  setAddr(b, l3 + (family === 4 ? 12 : 8), t, at + 1, words, ipSum, l4At, key, k + W_IP_SRC);
  setAddr(b, l3 + (family === 4 ? 16 : 24), t, at + 5, words, ipSum, l4At, key, k + W_IP_DST);
  if (partial) {
    flip16(b, csumAt);
    const ports = t[at + 9];
    if (rd32(b, l4) !== ports) { wr32(b, l4, ports); key[k + W_TP] = ports; }
    return true;
  }
  const ports = t[at + 9];
  if (proto === 6 || proto === 17) {
    const old = rd32(b, l4);
    if (old !== ports) {
      wr32(b, l4, ports);
      if (l4sum) csum32(b, csumAt, old, ports);
      key[k + W_TP] = ports;
    }
  } else if (icmp) {
    // The query identifier (the tuple's high half); type and code stay.
    const oldId = (b[l4 + 4] << 8) | b[l4 + 5];
    const id = ports >>> 16;
    if (oldId !== id) {
      b[l4 + 4] = id >> 8;
      b[l4 + 5] = id & 0xff;
      csum16(b, csumAt, oldId, id);
    }
  }
  // A UDP checksum that came out 0 is sent as 0xffff (0 means "none", RFC 768).
  if (proto === 17 && l4sum && b[csumAt] === 0 && b[csumAt + 1] === 0) { b[csumAt] = 0xff; b[csumAt + 1] = 0xff; }
  return true;
}

/**
 * Fast path: rewrite for an IPv4 TCP (proto 6) or UDP (17) packet, to
 * source address ns, destination nd and ports np (sport << 16 | dport) as
 * words, with no tuple to build: what a translated connection's packets
 * take (ConnTrack). false, nothing changed, as rewrite.
 */
export function rewriteIpv4(batch: PacketBatch, i: number, proto: number, ns: number, nd: number, np: number): boolean {
  const l3o = batch.l3Off[i];
  const l4o = batch.l4Off[i];
  if (l3o === ABSENT || l4o === ABSENT) return false;
  const b = batch.buf;
  const base = batch.off[i];
  const l3 = base + l3o;
  const l4 = base + l4o;
  const end = base + batch.caplen[i];
  if (l4 + (proto === 6 ? 18 : 8) > end || l3 + 20 > end) return false;
  const csumAt = proto === 6 ? l4 + 16 : l4 + 6;
  const l4sum = !(proto === 17 && b[csumAt] === 0 && b[csumAt + 1] === 0);
  if (l4sum && batch.vnet && base >= 10 && (b[base - 10] & VNET_NEEDS_CSUM) !== 0) {
    // A partial checksum (see rewrite): rewrite's own way.
    const t = scratch;
    t.fill(0);
    t[0] = (proto << 8) | 4;
    t[1] = ns;
    t[5] = nd;
    t[9] = np;
    return rewrite(batch, i, t, 0);
  }
  rewrite4(batch.dv, l3, l4, proto, l4sum ? csumAt : -1, ns, nd, np, batch.key, i * KEY_WORDS);
  return true;
}

const scratch = new Uint32Array(10);

/**
 * rewrite's common case, IPv4 TCP or UDP with a full checksum (or a UDP one
 * of 0, csumAt -1): the three words that change (source, destination, ports)
 * in one pass, and each checksum by one update over all the 16-bit words
 * that changed (RFC 1624 eqn. 3, the same sum as one update per word): a
 * NAT'd packet of an established connection costs a few dozen operations.
 */
function rewrite4(d: DataView, l3: number, l4: number, proto: number, csumAt: number, ns: number, nd: number, np: number, key: Uint32Array, k: number): void {
  const os = d.getUint32(l3 + 12);
  const od = d.getUint32(l3 + 16);
  const op = d.getUint32(l4);
  if (os === ns && od === nd && op === np) return;
  // The sum of ~old + new over the address halves (each term at most 0xffff: no overflow).
  const dIp = ((~os >>> 16) & 0xffff) + (~os & 0xffff) + ((~od >>> 16) & 0xffff) + (~od & 0xffff) + (ns >>> 16) + (ns & 0xffff) + (nd >>> 16) + (nd & 0xffff);
  if (os !== ns) { d.setUint32(l3 + 12, ns); key[k + W_IP_SRC] = ns; }
  if (od !== nd) { d.setUint32(l3 + 16, nd); key[k + W_IP_DST] = nd; }
  if (op !== np) { d.setUint32(l4, np); key[k + W_TP] = np; }
  addSum(d, l3 + 10, dIp);
  if (csumAt < 0) return;
  // TCP and UDP sum the addresses (pseudo-header) and the ports.
  addSum(d, csumAt, dIp + ((~op >>> 16) & 0xffff) + (~op & 0xffff) + (np >>> 16) + (np & 0xffff));
  // A UDP checksum that came out 0 is sent as 0xffff (0 means "none", RFC 768).
  if (proto === 17 && d.getUint16(csumAt) === 0) d.setUint16(csumAt, 0xffff);
}

/** Adds `delta` (a sum of 16-bit terms, under 2^24) to the one's complement checksum at byte `at`. */
function addSum(d: DataView, at: number, delta: number): void {
  let sum = (~d.getUint16(at) & 0xffff) + delta;
  sum = (sum & 0xffff) + (sum >>> 16);
  sum = (sum & 0xffff) + (sum >>> 16);
  d.setUint16(at, ~sum & 0xffff);
}

/** virtio_net_hdr flags: the checksum at csum_offset is partial (offload.ts). */
const VNET_NEEDS_CSUM = 1;

/** Complements the 16-bit field at b[at]. */
function flip16(b: Uint8Array, at: number): void {
  b[at] = ~b[at] & 0xff;
  b[at + 1] = ~b[at + 1] & 0xff;
}

/** Whether the address of `words` words at b[p] is t[at ..]. */
function sameAddr(b: Uint8Array, p: number, t: Uint32Array, at: number, words: number): boolean {
  for (let w = 0; w < words; w++) if (rd32(b, p + 4 * w) !== t[at + w]) return false;
  return true;
}

/** A checksum field at `at` updated for old → nu, and the ICMP checksum over it updated for its change. */
function csumInQuote(b: Uint8Array, at: number, old: number, nu: number, icmpCsum: number, wide: boolean): void {
  const c0 = (b[at] << 8) | b[at + 1];
  if (wide) csum32(b, at, old, nu);
  else csum16(b, at, old, nu);
  csum16(b, icmpCsum, c0, (b[at] << 8) | b[at + 1]);
}

/** An address inside an ICMP error's quote becomes t[at ..]: the quote's IP and L4 checksums (-1: none) and the ICMP checksum follow. */
function setQuotedAddr(b: Uint8Array, p: number, t: Uint32Array, at: number, words: number, ipSum: number, l4Sum: number, icmpCsum: number): void {
  for (let w = 0; w < words; w++) {
    const old = rd32(b, p + 4 * w);
    const nu = t[at + w];
    if (old === nu) continue;
    if (ipSum >= 0) csumInQuote(b, ipSum, old, nu, icmpCsum, true);
    if (l4Sum >= 0) csumInQuote(b, l4Sum, old, nu, icmpCsum, true);
    put16(b, p + 4 * w, nu >>> 16, icmpCsum);
    put16(b, p + 4 * w + 2, nu & 0xffff, icmpCsum);
  }
}

/** A port inside an ICMP error's quote becomes v: the quote's L4 checksum (-1: none) and the ICMP checksum follow. */
function setQuoted16(b: Uint8Array, p: number, v: number, l4Sum: number, icmpCsum: number): void {
  const old = (b[p] << 8) | b[p + 1];
  if (old === v) return;
  if (l4Sum >= 0) csumInQuote(b, l4Sum, old, v, icmpCsum, false);
  put16(b, p, v, icmpCsum);
}

/** Sets the 16-bit word at b[p] to v, keeping the checksum at b[csumAt] right (csumAt < 0: none). */
function put16(b: Uint8Array, p: number, v: number, csumAt: number): void {
  const old = (b[p] << 8) | b[p + 1];
  if (old === v) return;
  b[p] = v >> 8;
  b[p + 1] = v & 0xff;
  if (csumAt >= 0) csum16(b, csumAt, old, v);
}

/**
 * Fast path: an ICMP or ICMPv6 error of a translated connection, as Linux's
 * nf_nat_icmp_reply_translation does it. The packet it quotes (at q, its IP
 * header; ports or query identifier after it) is made the form its sender
 * sent: tuple t[inner ..] (its direction's tuple, untranslated). The error's
 * own addresses: a destination that is the quoted sender's translated
 * address (t[other ..]'s destination) becomes its real one, a source that
 * is the translated peer becomes the peer as its sender knows it. Every
 * checksum it touches follows: the quoted header's, the quoted UDP/TCP's
 * when the capture holds it, the ICMP checksum over all of it (ICMPv6's with
 * its pseudo-header), the outer IPv4 header's. Returns false (nothing
 * changed) when the headers are not all in the capture.
 */
export function rewriteIcmpError(batch: PacketBatch, i: number, t: Uint32Array, inner: number, other: number, q: number, family: number): boolean {
  const b = batch.buf;
  const base = batch.off[i];
  const end = base + batch.caplen[i];
  const l3 = base + batch.l3Off[i];
  const icmpCsum = base + batch.l4Off[i] + 2;
  const proto = (t[inner] >>> 8) & 0xff;
  const ihl = family === 4 ? (b[q] & 15) * 4 : 40;
  const ql4 = q + ihl;
  if (ql4 + 8 > end || icmpCsum + 2 > end) return false;
  // The quoted addresses.
  const qSrc = family === 4 ? q + 12 : q + 8;
  const qDst = family === 4 ? q + 16 : q + 24;
  const words = family === 4 ? 1 : 4;
  const l4sumAt = proto === 17 ? ql4 + 6 : proto === 6 && ql4 + 18 <= end ? ql4 + 16 : -1;
  const l4sum = l4sumAt >= 0 && !(proto === 17 && family === 4 && b[l4sumAt] === 0 && b[l4sumAt + 1] === 0);
  const pseudo = proto === 6 || proto === 17 || proto === 58;
  const qIpSum = family === 4 ? q + 10 : -1;
  const qL4Sum = l4sum && pseudo ? l4sumAt : -1;
  setQuotedAddr(b, qSrc, t, inner + 1, words, qIpSum, qL4Sum, icmpCsum);
  setQuotedAddr(b, qDst, t, inner + 5, words, qIpSum, qL4Sum, icmpCsum);
  if (proto === 6 || proto === 17) {
    setQuoted16(b, ql4, t[inner + 9] >>> 16, l4sum ? l4sumAt : -1, icmpCsum);
    setQuoted16(b, ql4 + 2, t[inner + 9] & 0xffff, l4sum ? l4sumAt : -1, icmpCsum);
  } else if (proto === 1 || proto === 58) {
    // A quoted query: its identifier (and its own checksum, inside the quote).
    const id = t[inner + 9] >>> 16;
    const old = (b[ql4 + 4] << 8) | b[ql4 + 5];
    if (old !== id) {
      csumInQuote(b, ql4 + 2, old, id, icmpCsum, false);
      put16(b, ql4 + 4, id, icmpCsum);
    }
  }
  // The error's own addresses: toward the quoted packet's sender, from its peer as that sender knows it.
  const oSrc = family === 4 ? l3 + 12 : l3 + 8;
  const oDst = family === 4 ? l3 + 16 : l3 + 24;
  const toSender = sameAddr(b, oDst, t, other + 5, words);
  const fromPeer = sameAddr(b, oSrc, t, other + 1, words);
  // IPv4: the header checksum; ICMPv6: its checksum's pseudo-header.
  const oIpSum = family === 4 ? l3 + 10 : -1;
  const oL4Sum = family === 4 ? -1 : icmpCsum;
  if (toSender) setAddr(b, oDst, t, inner + 1, words, oIpSum, oL4Sum, null, 0);
  if (fromPeer) setAddr(b, oSrc, t, inner + 5, words, oIpSum, oL4Sum, null, 0);
  const key = batch.key;
  const k = i * KEY_WORDS;
  for (let w = 0; w < words; w++) { key[k + W_IP_SRC + w] = rd32(b, oSrc + 4 * w); key[k + W_IP_DST + w] = rd32(b, oDst + 4 * w); }
  return true;
}
