/**
 * Parse: finds each packet's headers once and writes its flow key and header
 * offsets into the batch's arrays. No objects are made.
 *
 * Layers: Ethernet; 802.1Q/802.1ad tags (the outer one is kept in the key,
 * up to 4 are skipped); ARP (Ethernet/IPv4); IPv4 (options, fragments); IPv6
 * (hop-by-hop, routing, fragment, destination options and AH extension
 * headers); TCP, UDP, ICMP, ICMPv6; VXLAN (UDP 4789) and Geneve (UDP 6081)
 * with options: their header's offset goes into `tunHdr`, the VNI into
 * `vni` and the inner frame's offset into `innerOff` (the key keeps the
 * outer headers; the tunnel stage decides whether the packet is ours to
 * decapsulate, and then parses the inner frame with parsePacket).
 *
 * Outcomes for each packet:
 *   - parsed: key words filled for every layer present, the rest 0;
 *     l3Off/l4Off/innerOff = ABSENT for a layer the packet does not have;
 *   - cut by the capture's snap length (caplen < wirelen) inside a header:
 *     parsing stops there, the fields found so far stay, the packet lives
 *     (a NIC forwards the frame it has; OVS's miniflow_extract does the same);
 *   - malformed (a header that does not fit in the frame on the wire, or a
 *     field that contradicts the frame): drop[i] = the reason from drops.ts;
 *   - from a VM (access) port with a VLAN tag other than one priority tag
 *     (VID 0, nothing behind it): drop[i] = vlanFromVm. The common case is
 *     untagged, so commonIpv4 and commonTunnel never see a tag.
 * A packet that arrives with drop[i] already set (rx marked it) is skipped.
 */
import { ABSENT, type PacketBatch } from '../batch.js';
import { D } from '../drops.js';
import { ARP_SHA_NOT_SRC, FRAG_ANY, FRAG_LATER, KEY_WORDS, TUN_PRESENT, W_ETH_DST_HI, W_ETH_MID, W_ETH_SRC_LO, W_ETH_TYPE, W_IN_PORT, W_IP_DST, W_IP_SRC, W_TP, W_VLAN } from '../classifier/flow-key.js';

export const ETH_P_IPV4 = 0x0800;
export const ETH_P_ARP = 0x0806;
export const ETH_P_IPV6 = 0x86dd;
export const ETH_P_8021Q = 0x8100;
export const ETH_P_8021AD = 0x88a8;
export const ETH_P_QINQ_OLD = 0x9100;
export const IPPROTO_ICMP = 1;
export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;
export const IPPROTO_ICMPV6 = 58;
export const UDP_PORT_VXLAN = 4789;
export const UDP_PORT_GENEVE = 6081;
const MAX_VLAN_TAGS = 4;
/** No port is a VM port: for parsers of frames that did not come from a port (inner frames, tests). */
const NO_VM_PORTS = new Uint8Array(65536);
const MAX_IPV6_EXT = 8;

export class Parse {
  static readonly stageName = 'parse';
  static readonly next = ['classify', 'drop'] as const;

  /** in_port key value for each PPID (VPID of the port, or PORT_PPID_BIT|PPID). Written by the datapath. */
  readonly inPortKey: Uint32Array;

  /** 1 for each PPID that is a VM (access) port (MappingTable.vmPort). */
  readonly vmPort: Uint8Array;

  constructor(inPortKey: Uint32Array, vmPort: Uint8Array = NO_VM_PORTS) {
    this.inPortKey = inPortKey;
    this.vmPort = vmPort;
  }

  process(batch: PacketBatch): void {
    const n = batch.count;
    const drop = batch.drop;
    const inPortKey = this.inPortKey;
    const d = batch.dv;
    const b = batch.buf;
    const key = batch.key;
    const off = batch.off;
    const caplen = batch.caplen;
    const wirelen = batch.wirelen;
    const inPpid = batch.inPpid;
    const l3Off = batch.l3Off;
    const l4Off = batch.l4Off;
    const innerOff = batch.innerOff;
    const vni = batch.vni;
    const vmPort = this.vmPort;
    for (let i = 0; i < n; i++) {
      if (drop[i] !== 0) continue;
      // The common case in one straight run, with the arrays in locals (see
      // commonIpv4); anything else goes to parseOne, which starts over.
      const base = off[i];
      const l4 = commonIpv4(b, d, base, caplen[i], wirelen[i]);
      if (l4 !== 0) {
        const proto = b[base + 23];
        const tp = transportWord(b, d, base, proto, l4);
        const k = i * KEY_WORDS;
        key[k + W_IN_PORT] = inPortKey[inPpid[i]];
        key[k + W_VLAN] = 0;
        key[k + W_ETH_DST_HI] = d.getUint32(base);
        key[k + W_ETH_MID] = d.getUint32(base + 4); // dst[4..5] and src[0..1]
        key[k + W_ETH_SRC_LO] = d.getUint32(base + 8);
        key[k + W_ETH_TYPE] = ((ETH_P_IPV4 << 16) | (proto << 8)) >>> 0;
        key[k + W_IP_SRC] = d.getUint32(base + 26);
        key[k + 7] = 0; key[k + 8] = 0; key[k + 9] = 0;
        key[k + W_IP_DST] = d.getUint32(base + 30);
        key[k + 11] = 0; key[k + 12] = 0; key[k + 13] = 0;
        key[k + W_TP] = tp;
        key[k + 15] = 0; key[k + 16] = 0; key[k + 17] = 0; key[k + 18] = 0;
        l3Off[i] = 14;
        l4Off[i] = proto === IPPROTO_TCP || proto === IPPROTO_UDP || proto === IPPROTO_ICMP || proto === IPPROTO_ICMPV6 ? l4 : ABSENT;
        innerOff[i] = ABSENT;
        vni[i] = 0;
        continue;
      }
      const r = parseOne(batch, i, inPortKey, vmPort);
      if (r > 0) drop[i] = r;
    }
  }
}

// commonIpv4, commonTunnel and transportWord write the protocol numbers as
// literals: V8 (Node 20) reads a module's constants through their binding
// at every use, with a check that they are initialized (about 6
// instructions each, ~7 a packet in the fast lane's hot loop). These fail to
// compile if one of them changes.
const _literals: [0x0800, 1, 6, 17, 58, 4789, 6081] = [ETH_P_IPV4, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6, UDP_PORT_VXLAN, UDP_PORT_GENEVE];
void _literals;

/**
 * The common case, checked in one straight run: an untagged, whole (not
 * cut: caplen = wirelen), unfragmented IPv4 packet whose headers are all
 * well formed, carrying TCP, UDP to a port other than VXLAN's and Geneve's,
 * ICMP (or ICMPv6, which parseOne reads in IPv4 too), or another protocol. Returns the offset of its L4 header (34 or
 * more), or 0 when the packet is anything else or in any doubt: then
 * parseOne decides. Parse's fast path and the fast lane both ask this, so
 * they agree with parseOne by construction (the property test in
 * test/datapath/parse checks it); transportWord gives the key's L4 word.
 * Small on purpose: V8 inlines functions under 460 bytes of bytecode.
 */
export function commonIpv4(b: Uint8Array, d: DataView, base: number, cl: number, wl: number): number {
  if (cl !== wl || cl < 34 || d.getUint16(base + 12) !== 0x0800) return 0; // ETH_P_IPV4
  const vihl = b[base + 14];
  const l4 = 14 + (vihl & 15) * 4;
  const l4end = 14 + d.getUint16(base + 16);
  if (vihl >> 4 !== 4 || l4 < 34 || l4end < l4 || l4end > cl || (d.getUint16(base + 20) & 0x3fff) !== 0) return 0;
  const proto = b[base + 23];
  if (proto === 6) { // IPPROTO_TCP
    if (l4 + 20 > l4end) return 0;
    const doff = (b[base + l4 + 12] >> 4) * 4;
    return doff >= 20 && l4 + doff <= l4end ? l4 : 0;
  }
  if (proto === 17) { // IPPROTO_UDP
    if (l4 + 8 > l4end) return 0;
    const ulen = d.getUint16(base + l4 + 4);
    const dport = d.getUint16(base + l4 + 2);
    return ulen >= 8 && l4 + ulen <= l4end && dport !== 4789 && dport !== 6081 ? l4 : 0; // not VXLAN's or Geneve's port
  }
  if (proto === 1 || proto === 58) return l4 + 4 <= l4end ? l4 : 0; // ICMP, ICMPv6 (parseOne reads it in IPv4 too)
  return l4;
}

/**
 * The common tunnel packet, in one straight run: commonIpv4's outer checks,
 * a UDP datagram to VXLAN's port with the I flag, or to Geneve's with
 * version 0 and protocol 0x6558, whose inner Ethernet frame (14 bytes at
 * least) lies in the datagram — parseOne's conditions for the same packet
 * (parseVxlan, parseGeneve). Returns the inner frame's offset, or 0 when
 * the packet is anything else: then parseOne decides. The tunnel header is
 * at the UDP header + 8; UDP's source port sits at 34 only with no IP
 * options, so callers take offsets from here, not constants.
 */
export function commonTunnel(b: Uint8Array, d: DataView, base: number, cl: number, wl: number): number {
  if (cl !== wl || cl < 42 || d.getUint16(base + 12) !== 0x0800) return 0;
  const vihl = b[base + 14];
  const l4 = 14 + (vihl & 15) * 4;
  const l4end = 14 + d.getUint16(base + 16);
  if (vihl >> 4 !== 4 || l4 < 34 || l4 + 8 > l4end || l4end > cl || (d.getUint16(base + 20) & 0x3fff) !== 0 || b[base + 23] !== 17) return 0;
  const ulen = d.getUint16(base + l4 + 4);
  if (ulen < 8 || l4 + ulen > l4end) return 0;
  const dport = d.getUint16(base + l4 + 2);
  const h = l4 + 8;
  if (dport === 4789) return h + 8 + 14 <= l4end && (b[base + h] & 0x08) !== 0 ? h + 8 : 0;
  if (dport !== 6081 || h + 8 > l4end) return 0;
  const v = b[base + h];
  const inner = h + 8 + (v & 0x3f) * 4;
  return v >> 6 === 0 && d.getUint16(base + h + 2) === 0x6558 && inner + 14 <= l4end ? inner : 0;
}

/** The key's transport word of a commonIpv4 packet with protocol `proto` and L4 header at `l4`. */
export function transportWord(b: Uint8Array, d: DataView, base: number, proto: number, l4: number): number {
  if (proto === 6 || proto === 17) return d.getUint32(base + l4);
  return proto === 1 || proto === 58 ? ((b[base + l4] << 16) | b[base + l4 + 1]) >>> 0 : 0;
}

/** Parses packet i alone (the tunnel stage's inner frames); returns 0 or a drop code. */
export function parsePacket(batch: PacketBatch, i: number, inPortKey: Uint32Array, vmPort: Uint8Array = NO_VM_PORTS): number {
  return parseOne(batch, i, inPortKey, vmPort);
}

// Big-endian reads through the batch's DataView: measured faster than
// composing bytes (V8 inlines DataView reads into one load and a byte swap).
function u16(d: DataView, p: number): number {
  return d.getUint16(p);
}

function u32(d: DataView, p: number): number {
  return d.getUint32(p);
}

/** Returns 0 (parsed, or stopped at the snap length) or a drop code. */
function parseOne(batch: PacketBatch, i: number, inPortKey: Uint32Array, vmPort: Uint8Array): number {
  const b = batch.buf;
  const d = batch.dv;
  const base = batch.off[i];
  const cl = batch.caplen[i];
  const wl = batch.wirelen[i];
  const cut = cl < wl;
  const key = batch.key;
  const k = i * KEY_WORDS;
  // Words 0 and 2..5 are always written below; the rest start at 0. Unrolled
  // on purpose: measured here, a 16-word zeroing loop cost 21 ns a packet,
  // these stores 5 ns.
  key[k + 1] = 0;
  key[k + 6] = 0; key[k + 7] = 0; key[k + 8] = 0; key[k + 9] = 0;
  key[k + 10] = 0; key[k + 11] = 0; key[k + 12] = 0; key[k + 13] = 0;
  key[k + 14] = 0; key[k + 15] = 0; key[k + 16] = 0; key[k + 17] = 0; key[k + 18] = 0;
  batch.l3Off[i] = ABSENT;
  batch.l4Off[i] = ABSENT;
  batch.innerOff[i] = ABSENT;
  batch.vni[i] = 0;
  key[k + W_IN_PORT] = inPortKey[batch.inPpid[i]];

  if (cl < 14) {
    key[k + 2] = 0; key[k + 3] = 0; key[k + 4] = 0; key[k + 5] = 0;
    return cut && wl >= 14 ? 0 : D.runt;
  }
  key[k + W_ETH_DST_HI] = u32(d, base);
  key[k + W_ETH_MID] = ((u16(d, base + 4) << 16) | u16(d, base + 6)) >>> 0;
  key[k + W_ETH_SRC_LO] = u32(d, base + 8);
  key[k + W_ETH_TYPE] = 0;
  let p = 12;
  let et = u16(d, base + p);
  for (let tags = 0; (et === ETH_P_8021Q || et === ETH_P_8021AD || et === ETH_P_QINQ_OLD) && tags < MAX_VLAN_TAGS; tags++) {
    if (p + 6 > cl) return cut ? 0 : D.vlanTruncated;
    const tci = u16(d, base + p + 2);
    if (tags === 0) key[k + W_VLAN] = ((et << 16) | tci) >>> 0;
    // An access port (OVS: a port with a VLAN tag of its own drops tagged
    // frames) takes one priority tag, VID 0, and nothing behind it: any other
    // tag would carry the frame into another segment's VLAN on an uplink.
    if ((tags !== 0 || (tci & 0xfff) !== 0) && vmPort[batch.inPpid[i]] !== 0) return D.vlanFromVm;
    p += 4;
    et = u16(d, base + p);
  }
  const l3 = p + 2;
  let etw = et << 16;
  key[k + W_ETH_TYPE] = etw >>> 0;

  if (et === ETH_P_ARP) {
    if (l3 + 8 > cl) return cut ? 0 : D.arpTruncated;
    batch.l3Off[i] = l3;
    const op = u16(d, base + l3 + 6);
    key[k + W_ETH_TYPE] = (etw | ((op & 0xff) << 8)) >>> 0;
    // Ethernet/IPv4 ARP carries the addresses the FPAG may match on.
    if (u16(d, base + l3) === 1 && u16(d, base + l3 + 2) === ETH_P_IPV4 && b[base + l3 + 4] === 6 && b[base + l3 + 5] === 4) {
      if (l3 + 28 > cl) return cut ? 0 : D.arpTruncated;
      key[k + W_IP_SRC] = u32(d, base + l3 + 14);
      key[k + W_IP_DST] = u32(d, base + l3 + 24);
      // The sender hardware address against the frame's source: port security (the FPAG) drops a mismatch
      // on a VM port (an ARP that names another VM's MAC from a frame of one's own).
      const sha = base + l3 + 8;
      const src = base + 6;
      if (b[sha] !== b[src] || b[sha + 1] !== b[src + 1] || b[sha + 2] !== b[src + 2] || b[sha + 3] !== b[src + 3] || b[sha + 4] !== b[src + 4] || b[sha + 5] !== b[src + 5]) {
        key[k + W_ETH_TYPE] = (key[k + W_ETH_TYPE] | ARP_SHA_NOT_SRC) >>> 0;
      }
    }
    return 0;
  }

  let proto: number;
  let frag = 0;
  let l4: number;
  let l4end: number; // end of the L4 segment on the wire
  if (et === ETH_P_IPV4) {
    if (l3 + 20 > cl) return cut ? 0 : D.ipv4Truncated;
    const vihl = b[base + l3];
    if (vihl >> 4 !== 4) return D.ipv4BadVersion;
    const hl = (vihl & 15) * 4;
    if (hl < 20) return D.ipv4BadHeaderLength;
    // Total length 0 is a TSO/BIG TCP super-packet as the sending host captured it
    // (tcpdump reads it the same way): the frame's end is the datagram's end.
    const tot = u16(d, base + l3 + 2) || wl - l3;
    if (tot < hl || l3 + tot > wl) return D.ipv4BadTotalLength;
    if (l3 + hl > cl) return cut ? 0 : D.ipv4BadHeaderLength;
    batch.l3Off[i] = l3;
    proto = b[base + l3 + 9];
    const fo = u16(d, base + l3 + 6);
    if ((fo & 0x3fff) !== 0) frag = (fo & 0x1fff) !== 0 ? FRAG_ANY | FRAG_LATER : FRAG_ANY;
    key[k + W_IP_SRC] = u32(d, base + l3 + 12);
    key[k + W_IP_DST] = u32(d, base + l3 + 16);
    l4 = l3 + hl;
    l4end = l3 + tot;
  } else if (et === ETH_P_IPV6) {
    if (l3 + 40 > cl) return cut ? 0 : D.ipv6Truncated;
    if (b[base + l3] >> 4 !== 6) return D.ipv6BadVersion;
    const plen = u16(d, base + l3 + 4);
    // Payload length 0 is a jumbogram (RFC 2675) or a BIG TCP/TSO super-packet as captured on
    // the sending host, with or without the hop-by-hop jumbo option: the frame's end is the end.
    const jumbo = plen === 0;
    if (l3 + 40 + plen > wl) return D.ipv6BadPayloadLength;
    batch.l3Off[i] = l3;
    for (let w = 0; w < 4; w++) {
      key[k + W_IP_SRC + w] = u32(d, base + l3 + 8 + w * 4);
      key[k + W_IP_DST + w] = u32(d, base + l3 + 24 + w * 4);
    }
    l4end = jumbo ? wl : l3 + 40 + plen;
    proto = b[base + l3 + 6];
    l4 = l3 + 40;
    for (let x = 0; x < MAX_IPV6_EXT; x++) {
      if (proto !== 0 && proto !== 43 && proto !== 60 && proto !== 44 && proto !== 51) break;
      if (l4 + 8 > l4end) return D.ipv6BadExtHeader;
      if (l4 + 8 > cl) { key[k + W_ETH_TYPE] = (etw | (proto << 8) | frag) >>> 0; return 0; } // cut: proto is the header we stopped at
      const nh = b[base + l4];
      let len: number;
      if (proto === 44) {
        len = 8;
        const off = u16(d, base + l4 + 2);
        frag = (off & 0xfff8) !== 0 ? FRAG_ANY | FRAG_LATER : off & 1 ? FRAG_ANY : frag;
      } else if (proto === 51) len = (b[base + l4 + 1] + 2) * 4;
      else len = (b[base + l4 + 1] + 1) * 8;
      if (l4 + len > l4end) return D.ipv6BadExtHeader;
      l4 += len;
      proto = nh;
    }
  } else {
    return 0; // another ethertype: L2 fields only
  }

  etw = etw | (proto << 8) | frag;
  key[k + W_ETH_TYPE] = etw >>> 0;
  if (frag & FRAG_LATER) return 0;

  if (proto === IPPROTO_TCP) {
    if (l4 + 20 > l4end) return D.tcpTruncated;
    if (l4 + 20 > cl) return cut ? 0 : D.tcpTruncated;
    const doff = (b[base + l4 + 12] >> 4) * 4;
    if (doff < 20 || l4 + doff > l4end) return D.tcpBadDataOffset;
    batch.l4Off[i] = l4;
    key[k + W_TP] = u32(d, base + l4);
    return 0;
  }
  if (proto === IPPROTO_UDP) {
    if (l4 + 8 > l4end) return D.udpTruncated;
    if (l4 + 8 > cl) return cut ? 0 : D.udpTruncated;
    const ulen = u16(d, base + l4 + 4);
    // UDP length 0 means "too long to say" in a datagram of more than 65535 bytes (an IPv6
    // jumbogram, RFC 2675, or a BIG TCP/GSO super-packet). Otherwise it must fit, except in a
    // first fragment, whose UDP length counts the whole datagram.
    if ((ulen < 8 && !(ulen === 0 && l4end - l4 > 0xffff)) || (l4 + ulen > l4end && frag === 0)) return D.udpBadLength;
    batch.l4Off[i] = l4;
    const ports = u32(d, base + l4);
    key[k + W_TP] = ports;
    const dport = ports & 0xffff;
    if (dport === UDP_PORT_VXLAN) return parseVxlan(batch, i, b, base, l4 + 8, l4end, cl, cut, key, k);
    if (dport === UDP_PORT_GENEVE) return parseGeneve(batch, i, b, d, base, l4 + 8, l4end, cl, cut, key, k);
    return 0;
  }
  if (proto === IPPROTO_ICMP || proto === IPPROTO_ICMPV6) {
    if (l4 + 4 > l4end) return D.icmpTruncated;
    if (l4 + 4 > cl) return cut ? 0 : D.icmpTruncated;
    batch.l4Off[i] = l4;
    key[k + W_TP] = ((b[base + l4] << 16) | b[base + l4 + 1]) >>> 0;
    return 0;
  }
  return 0;
}

/** VXLAN (RFC 7348): 8 bytes, I flag (0x08) set, VNI in bytes 4..6, then an Ethernet frame. */
function parseVxlan(batch: PacketBatch, i: number, b: Uint8Array, base: number, h: number, end: number, cl: number, cut: boolean, key: Uint32Array, k: number): number {
  if (h + 8 + 14 > end) return D.vxlanBad;
  if (h + 8 > cl) return cut ? 0 : D.vxlanBad;
  if ((b[base + h] & 0x08) === 0) return D.vxlanBad;
  batch.vni[i] = (TUN_PRESENT | (b[base + h + 4] << 16) | (b[base + h + 5] << 8) | b[base + h + 6]) >>> 0;
  batch.tunHdr[i] = h;
  batch.innerOff[i] = h + 8;
  return 0;
}

/**
 * Geneve (RFC 8926): version 0, option length in 4-byte words, protocol
 * type, VNI in bytes 4..6, options, then the payload (an Ethernet frame when
 * the protocol type is 0x6558).
 */
function parseGeneve(batch: PacketBatch, i: number, b: Uint8Array, d: DataView, base: number, h: number, end: number, cl: number, cut: boolean, key: Uint32Array, k: number): number {
  if (h + 8 > end) return D.geneveBad;
  if (h + 8 > cl) return cut ? 0 : D.geneveBad;
  const v = b[base + h];
  if (v >> 6 !== 0) return D.geneveBad;
  const optLen = (v & 0x3f) * 4;
  if (h + 8 + optLen > end) return D.geneveBad;
  batch.vni[i] = (TUN_PRESENT | (b[base + h + 4] << 16) | (b[base + h + 5] << 8) | b[base + h + 6]) >>> 0;
  batch.tunHdr[i] = h;
  if (u16(d, base + h + 2) === 0x6558 && h + 8 + optLen + 14 <= end) batch.innerOff[i] = h + 8 + optLen;
  return 0;
}
