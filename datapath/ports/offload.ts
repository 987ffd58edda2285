/**
 * Offloads at live ports: the virtio-net header (include/uapi/linux/
 * virtio_net.h) that a port with offloads — a ring port with
 * PACKET_VNET_HDR — reads before each frame and writes before each frame it
 * sends. With it a TCP segment of up to 64 KiB that the VM's kernel handed
 * over whole (GSO/TSO) crosses fpo as one packet, and a checksum the VM left
 * for the NIC to finish (CHECKSUM_PARTIAL) stays to be finished by the
 * kernel at the other end — the way the kernel's own bridge carries them.
 *
 *   byte 0  flags       NEEDS_CSUM (1): the checksum at csum_start +
 *                       csum_offset holds only the pseudo-header's sum
 *   byte 1  gso_type    NONE 0, TCPV4 1, UDP 3 (UFO), TCPV6 4, UDP_L4 5;
 *                       | ECN 0x80
 *   2..3    hdr_len     headers' length (a hint)
 *   4..5    gso_size    payload bytes per segment (the MSS)
 *   6..7    csum_start  where the checksum's sum starts, from the frame's start
 *   8..9    csum_offset where the checksum field is, from csum_start
 *   (little-endian: the host's, as AF_PACKET uses it on x86)
 *
 * A port without offloads (a TAP, a ring port with offload off, a tunnel
 * copy) cannot take such a packet: `SoftOffload.cut` does in software what
 * the NIC would — finishes the checksum, or cuts the segment into frames of
 * gso_size payload bytes (IPv4 total length, ID and header checksum, IPv6
 * payload length, TCP sequence numbers, FIN/PSH on the last only, CWR on the
 * first only, each checksum in full) — and hands each frame to the port.
 * Only this slow path copies: into one scratch area in port memory, made
 * once.
 */
import type { PacketBatch } from '../batch.js';
import { PortMemory } from './port-memory.js';

export const VNET_HDR_LEN = 10;
export const VNET_NEEDS_CSUM = 1;
export const GSO_NONE = 0;
export const GSO_TCPV4 = 1;
export const GSO_UDP = 3;
export const GSO_TCPV6 = 4;
export const GSO_UDP_L4 = 5;
export const GSO_ECN = 0x80;

/** Smallest gso_size cut, and most frames one packet becomes: past these the packet is refused (counted). */
export const MIN_GSO_SIZE = 64;
export const MAX_SEGMENTS = 1100;

/** The largest packet a GSO header may stand for: IPv4's 64 KiB and its Ethernet and tags. */
export const GSO_MAX_FRAME = 65536 + 64;

/** What takes the frames cut (a port's tx). */
export interface SegmentSink {
  /** One frame to send: src[off .. off + len), whole and with its checksums right. false: no room (a full ring): stop. */
  segment(src: Uint8Array, off: number, len: number): boolean;
  /** The frames not cut after a segment found no room (counted as the sink counts a full ring). */
  segmentsLost(n: number): void;
}

/**
 * Whether the virtio-net header before the frame at b[off..off + len) agrees
 * with the frame: a checksum to finish starts at the frame's own TCP or UDP
 * header (after any tags, IPv4 options, IPv6 extension headers) with the
 * field at that protocol's place (16 for TCP, 6 for UDP), and a segment type
 * is the frame's IP version and protocol. Checked as the frame comes in:
 * the kernel lets a sender point csum_start anywhere past byte 20, so an
 * unchecked header would have fpo (or the kernel at the far end) write a
 * sum of the VM's choosing over, say, the IPv4 source that port security
 * had passed.
 */
export function vnetValid(b: Uint8Array, off: number, len: number): boolean {
  const v = off - VNET_HDR_LEN;
  const flags = b[v];
  const gso = b[v + 1] & ~GSO_ECN;
  if ((flags & VNET_NEEDS_CSUM) === 0 && gso === GSO_NONE) return true; // nothing asked of anyone
  let p = 12;
  while (p + 4 <= len && ((b[off + p] === 0x81 && b[off + p + 1] === 0x00) || (b[off + p] === 0x88 && b[off + p + 1] === 0xa8))) p += 4;
  if (p + 2 > len) return false;
  const et = (b[off + p] << 8) | b[off + p + 1];
  const l3 = p + 2;
  let l4: number;
  let proto: number;
  if (et === 0x0800) {
    if (l3 + 20 > len) return false;
    const ihl = (b[off + l3] & 0x0f) << 2;
    if (ihl < 20 || (((b[off + l3 + 6] & 0x3f) | b[off + l3 + 7]) !== 0)) return false; // a fragment has no L4 checksum to finish
    proto = b[off + l3 + 9];
    l4 = l3 + ihl;
  } else if (et === 0x86dd) {
    if (l3 + 40 > len) return false;
    proto = b[off + l3 + 6];
    l4 = l3 + 40;
    // Hop-by-hop, routing and destination options: skipped; a fragment header: refused.
    while ((proto === 0 || proto === 43 || proto === 60) && l4 + 8 <= len) {
      proto = b[off + l4];
      l4 += (b[off + l4 + 1] + 1) << 3;
    }
  } else return false;
  const cs = b[v + 6] | (b[v + 7] << 8);
  const co = b[v + 8] | (b[v + 9] << 8);
  if ((flags & VNET_NEEDS_CSUM) !== 0) {
    if (cs !== l4 || !((proto === 6 && co === 16) || (proto === 17 && co === 6)) || l4 + co + 2 > len) return false;
  }
  if (gso === GSO_NONE) return true;
  if ((flags & VNET_NEEDS_CSUM) === 0) return false;
  if (gso === GSO_TCPV4) return et === 0x0800 && proto === 6;
  if (gso === GSO_TCPV6) return et === 0x86dd && proto === 6;
  if (gso === GSO_UDP_L4) return proto === 17;
  return false; // UFO, or a type fpo does not know
}

/** Whether packet i (of a batch with virtio-net headers) needs work before a port without offloads takes it. */
export function needsSoftware(batch: PacketBatch, i: number): boolean {
  const v = batch.off[i] - VNET_HDR_LEN;
  return (batch.buf[v] & VNET_NEEDS_CSUM) !== 0 || (batch.buf[v + 1] & ~GSO_ECN) !== GSO_NONE;
}

/**
 * Writes at dst[v..v + 10) the virtio-net header of packet i's copy that
 * was written `len` bytes long with tx code e: the packet's own header (its
 * offsets moved by a tag pushed or popped) when it came with one and the
 * copy is not encapsulated, else zeros (nothing to finish, not a segment).
 */
export function writeVnetHeader(dst: Uint8Array, v: number, batch: PacketBatch, i: number, e: number, len: number): void {
  if (!batch.vnet || e >= 0 || batch.buf !== dst) {
    dst.fill(0, v, v + VNET_HDR_LEN);
    return;
  }
  const src = batch.off[i] - VNET_HDR_LEN;
  dst.copyWithin(v, src, src + VNET_HDR_LEN);
  const d = len - batch.caplen[i];
  if (d === 0) return;
  if ((dst[v] & VNET_NEEDS_CSUM) !== 0) {
    const cs = (dst[v + 6] | (dst[v + 7] << 8)) + d;
    dst[v + 6] = cs & 0xff;
    dst[v + 7] = cs >> 8;
  }
  const hl = dst[v + 2] | (dst[v + 3] << 8);
  if (hl !== 0) {
    dst[v + 2] = (hl + d) & 0xff;
    dst[v + 3] = (hl + d) >> 8;
  }
}

/** Ones' complement sum of b[from .. to), big-endian words, added to `sum` (not folded). */
function sum16(b: Uint8Array, from: number, to: number, sum: number): number {
  let i = from;
  for (; i + 1 < to; i += 2) sum += (b[i] << 8) | b[i + 1];
  if (i < to) sum += b[i] << 8;
  return sum;
}

function fold(sum: number): number {
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return sum;
}

export class SoftOffload {
  private static instance: SoftOffload | null = null;
  private readonly mem: PortMemory;
  private readonly at: number;
  /** Frames cut, checksums finished, packets that could not be (a GSO type fpo does not cut). */
  segments = 0;
  checksums = 0;
  refused = 0;

  /** The thread's one scratch area. */
  static get(): SoftOffload {
    SoftOffload.instance ??= new SoftOffload();
    return SoftOffload.instance;
  }

  private constructor() {
    this.mem = PortMemory.get();
    this.at = this.mem.anon(2 * GSO_MAX_FRAME, 'software offload scratch');
  }

  /**
   * Packet i as a port without offloads must send it: each frame to
   * `sink`. Returns the number of frames, or 0 when it is not cut (UFO, a
   * header that does not parse as the virtio-net header says): the caller
   * counts it as a tx error.
   */
  cut(batch: PacketBatch, i: number, sink: SegmentSink): number {
    const b = batch.buf;
    const off = batch.off[i];
    const len = batch.caplen[i];
    const v = off - VNET_HDR_LEN;
    const flags = b[v];
    const gso = b[v + 1] & ~GSO_ECN;
    const cs = b[v + 6] | (b[v + 7] << 8);
    const co = b[v + 8] | (b[v + 9] << 8);
    const s = this.mem.bytes;
    const at = this.at;
    if (b !== s) { this.refused++; return 0; } // headers come only with frames in port memory (a ring's block)
    if (gso === GSO_NONE) {
      s.copyWithin(at, off, off + len);
      if ((flags & VNET_NEEDS_CSUM) !== 0) {
        if (cs + co + 2 > len) { this.refused++; return 0; }
        let c = (~fold(sum16(s, at + cs, at + len, 0))) & 0xffff;
        // A UDP checksum of 0 means "none": the computed 0 goes as 0xffff (RFC 768).
        if (c === 0 && co === 6) c = 0xffff;
        s[at + cs + co] = c >> 8;
        s[at + cs + co + 1] = c & 0xff;
        this.checksums++;
      }
      sink.segment(s, at, len);
      return 1;
    }
    if ((gso !== GSO_TCPV4 && gso !== GSO_TCPV6 && gso !== GSO_UDP_L4) || (flags & VNET_NEEDS_CSUM) === 0) { this.refused++; return 0; }
    const mss = b[v + 4] | (b[v + 5] << 8);
    // L3 after the MACs and any tags; L4 where the checksum starts.
    let l3 = 12;
    while (l3 + 4 <= len && ((b[off + l3] === 0x81 && b[off + l3 + 1] === 0x00) || (b[off + l3] === 0x88 && b[off + l3 + 1] === 0xa8))) l3 += 4;
    l3 += 2;
    const l4 = cs;
    const tcp = gso !== GSO_UDP_L4;
    if (l4 + (tcp ? 20 : 8) > len || l4 < l3 + 20 || mss === 0) { this.refused++; return 0; }
    const hlen = tcp ? l4 + ((b[off + l4 + 12] >> 4) << 2) : l4 + 8;
    const v4 = (b[off + l3] >> 4) === 4;
    if (hlen > len || (v4 ? false : l4 < l3 + 40)) { this.refused++; return 0; }
    const payload = len - hlen;
    const n = Math.max(1, Math.ceil(payload / mss));
    // A segment size no stack uses (the kernel's TCP never goes below 64 bytes of MSS here) would make one
    // packet thousands of frames: a VM could spend fpo's time that way. Refused and counted.
    if (mss < MIN_GSO_SIZE || n > MAX_SEGMENTS) { this.refused++; return 0; }
    const seq0 = tcp ? ((b[off + l4 + 4] << 24) | (b[off + l4 + 5] << 16) | (b[off + l4 + 6] << 8) | b[off + l4 + 7]) >>> 0 : 0;
    const tcpFlags = tcp ? b[off + l4 + 13] : 0;
    const id0 = v4 ? (b[off + l3 + 4] << 8) | b[off + l3 + 5] : 0;
    // The pseudo-header's addresses and protocol: the same for every segment.
    let pseudo = v4 ? sum16(b, off + l3 + 12, off + l3 + 20, 0) : sum16(b, off + l3 + 8, off + l3 + 40, 0);
    pseudo += tcp ? 6 : 17;
    for (let k = 0; k < n; k++) {
      const from = hlen + k * mss;
      const pl = Math.min(mss, payload - k * mss);
      const slen = hlen + Math.max(0, pl);
      s.copyWithin(at, off, off + hlen);
      if (pl > 0) s.copyWithin(at + hlen, off + from, off + from + pl);
      if (v4) {
        const total = slen - l3;
        s[at + l3 + 2] = total >> 8;
        s[at + l3 + 3] = total & 0xff;
        const id = (id0 + k) & 0xffff;
        s[at + l3 + 4] = id >> 8;
        s[at + l3 + 5] = id & 0xff;
        s[at + l3 + 10] = 0;
        s[at + l3 + 11] = 0;
        const ihl = (s[at + l3] & 0x0f) << 2;
        const hc = (~fold(sum16(s, at + l3, at + l3 + ihl, 0))) & 0xffff;
        s[at + l3 + 10] = hc >> 8;
        s[at + l3 + 11] = hc & 0xff;
      } else {
        const plen = slen - l3 - 40;
        s[at + l3 + 4] = plen >> 8;
        s[at + l3 + 5] = plen & 0xff;
      }
      const l4len = slen - l4;
      if (tcp) {
        const seq = (seq0 + k * mss) >>> 0;
        s[at + l4 + 4] = seq >>> 24;
        s[at + l4 + 5] = (seq >>> 16) & 0xff;
        s[at + l4 + 6] = (seq >>> 8) & 0xff;
        s[at + l4 + 7] = seq & 0xff;
        let f = tcpFlags;
        if (k < n - 1) f &= ~0x09; // FIN and PSH: the last segment's
        if (k > 0) f &= ~0x80; // CWR: the first's
        s[at + l4 + 13] = f;
        s[at + l4 + 16] = 0;
        s[at + l4 + 17] = 0;
        const c = (~fold(sum16(s, at + l4, at + slen, pseudo + l4len))) & 0xffff;
        s[at + l4 + 16] = c >> 8;
        s[at + l4 + 17] = c & 0xff;
      } else {
        s[at + l4 + 4] = l4len >> 8;
        s[at + l4 + 5] = l4len & 0xff;
        s[at + l4 + 6] = 0;
        s[at + l4 + 7] = 0;
        let c = (~fold(sum16(s, at + l4, at + slen, pseudo + l4len))) & 0xffff;
        if (c === 0) c = 0xffff;
        s[at + l4 + 6] = c >> 8;
        s[at + l4 + 7] = c & 0xff;
      }
      if (!sink.segment(s, at, slen)) {
        // No room at the port: the rest are not cut (their copying and sums would be spent for nothing).
        sink.segmentsLost(n - k - 1);
        this.segments += k + 1;
        return n;
      }
    }
    this.segments += n;
    return n;
  }
}
