/**
 * Encap: the tunnels this host sends into, and the writing of their outer
 * headers in front of a packet on tx (VXLAN, RFC 7348; Geneve, RFC 8926).
 *
 * A tunnel is (outer Ethernet src/dst, outer IPv4 or IPv6 src/dst, VXLAN or
 * Geneve); an encap is (tunnel, VNI) and has a small integer id that the
 * OP_ENCAP action carries. The header is written straight into the tx
 * buffer before the packet's bytes are copied after it, so encapsulation
 * costs no copy of its own. Per RFC: the UDP source port is taken from the
 * inner flow's hash (49152 + 14 bits), the destination port is 4789 or 6081;
 * over IPv4 the UDP checksum is 0 (RFC 7348 §5, RFC 8926 §3.3) and the IPv4
 * header checksum is computed; over IPv6 the UDP checksum is computed over
 * the whole datagram (RFC 8200 §8.1). A flagged packet carries the
 * special-processing flag (flag-check.ts): a Geneve option with no data, or
 * the VXLAN reserved bit; an unflagged one carries no trace of it.
 */
import { DEFAULT_FLAG, type FlagFormat } from '../classifier/flag-check.js';
import { FpoError } from '../errors.js';

export interface TunnelDef {
  kind: 'vxlan' | 'geneve';
  srcMac: Uint8Array;
  dstMac: Uint8Array;
  /** 4 bytes (IPv4) or 16 (IPv6); src and dst of one family. */
  srcIp: Uint8Array;
  dstIp: Uint8Array;
}

const ETH = 14;

export class Encap {
  readonly tunnels: TunnelDef[] = [];
  /** Per encap id: its tunnel and VNI. */
  private encTunnel: number[] = [];
  private encVni: number[] = [];
  private readonly byPair = new Map<string, number>();
  flag: FlagFormat = { ...DEFAULT_FLAG };
  /** Packets encapsulated, and how many of them flagged. */
  encapsulated = 0;
  flaggedSent = 0;
  /**
   * Per encapId * 2 + flag: the longest inner frame (wire length) whose outer
   * length field still holds its size: IPv4 total length = 20 + 8 + tunnel
   * header + inner, IPv6 payload length = 8 + tunnel header + inner, each at
   * most 65,535. A longer one would wrap the field (a 70 KB inner frame went
   * out saying 4,518): execute drops such a copy (encapTooLong) instead. Grown
   * only by encapId, on the slow path.
   */
  maxInner = new Int32Array(64);
  /** Copies not sent because the inner frame was longer than maxInner says. */
  tooLong = 0;

  // Slow path: control messages.
  addTunnel(t: TunnelDef): number {
    checkTunnel(t);
    this.tunnels.push(t);
    return this.tunnels.length - 1;
  }

  /** Gives tunnel `id` new ends (checked as addTunnel does); the longest inner frame of its encap ids follows. */
  setTunnel(id: number, t: TunnelDef): void {
    if (!(id >= 0 && id < this.tunnels.length)) throw new FpoError('FPO_ERR_USAGE', `no tunnel ${id}`);
    checkTunnel(t);
    this.tunnels[id] = t;
    for (let e = 0; e < this.encTunnel.length; e++) {
      if (this.encTunnel[e] !== id) continue;
      for (const flagged of [false, true]) {
        const outer = this.headerLength(e, flagged) - ETH;
        this.maxInner[2 * e + (flagged ? 1 : 0)] = 0xffff - (t.srcIp.length === 4 ? outer : outer - 40);
      }
    }
  }

  /** The id of (tunnel, VNI), made on first use. */
  encapId(tunnel: number, vni: number): number {
    if (!(tunnel >= 0 && tunnel < this.tunnels.length)) throw new FpoError('FPO_ERR_USAGE', `no tunnel ${tunnel}`);
    if (!(vni >= 0 && vni <= 0xffffff)) throw new FpoError('FPO_ERR_USAGE', `VNI ${vni} out of range 0..16777215`);
    const key = `${tunnel}/${vni}`;
    let id = this.byPair.get(key);
    if (id === undefined) {
      id = this.encTunnel.length;
      this.encTunnel.push(tunnel);
      this.encVni.push(vni);
      this.byPair.set(key, id);
      if (2 * id + 2 > this.maxInner.length) {
        const m = new Int32Array(this.maxInner.length * 2);
        m.set(this.maxInner);
        this.maxInner = m;
      }
      for (const flagged of [false, true]) {
        const outer = this.headerLength(id, flagged) - ETH; // IP header + UDP + tunnel header
        this.maxInner[2 * id + (flagged ? 1 : 0)] = 0xffff - (this.tunnels[tunnel].srcIp.length === 4 ? outer : outer - 40);
      }
    }
    return id;
  }

  /** The (tunnel, VNI) of encap id. */
  describe(id: number): { tunnel: number; vni: number } {
    return { tunnel: this.encTunnel[id], vni: this.encVni[id] };
  }

  /** Bytes of outer headers encap `id` puts in front of a packet. */
  headerLength(id: number, flagged: boolean): number {
    const t = this.tunnels[this.encTunnel[id]];
    const ip = t.srcIp.length === 4 ? 20 : 40;
    return ETH + ip + 8 + 8 + (t.kind === 'geneve' && flagged ? 4 : 0);
  }

  /**
   * Fast path: writes encap `id`'s outer headers at out[at..] for an inner
   * frame of `innerLen` bytes (its bytes must follow at out[at + header]
   * before `finish` computes an IPv6 UDP checksum). Returns the header length.
   */
  write(out: Uint8Array, at: number, id: number, flagged: boolean, innerLen: number, hash: number): number {
    const t = this.tunnels[this.encTunnel[id]];
    const vni = this.encVni[id];
    const v4 = t.srcIp.length === 4;
    const tunLen = 8 + (t.kind === 'geneve' && flagged ? 4 : 0);
    const udpLen = 8 + tunLen + innerLen;
    out.set(t.dstMac, at);
    out.set(t.srcMac, at + 6);
    let p = at + 12;
    if (v4) {
      out[p] = 0x08; out[p + 1] = 0x00;
      p += 2;
      const tot = 20 + udpLen;
      out[p] = 0x45; out[p + 1] = 0;
      out[p + 2] = tot >> 8; out[p + 3] = tot & 255;
      out[p + 4] = 0; out[p + 5] = 0;
      out[p + 6] = 0x40; out[p + 7] = 0; // DF
      out[p + 8] = 64; out[p + 9] = 17;
      out[p + 10] = 0; out[p + 11] = 0;
      out.set(t.srcIp, p + 12);
      out.set(t.dstIp, p + 16);
      let s = 0;
      for (let j = 0; j < 20; j += 2) s += (out[p + j] << 8) | out[p + j + 1];
      while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
      s = ~s & 0xffff;
      out[p + 10] = s >> 8; out[p + 11] = s & 255;
      p += 20;
    } else {
      out[p] = 0x86; out[p + 1] = 0xdd;
      p += 2;
      out[p] = 0x60; out[p + 1] = 0; out[p + 2] = 0; out[p + 3] = 0;
      out[p + 4] = udpLen >> 8; out[p + 5] = udpLen & 255;
      out[p + 6] = 17; out[p + 7] = 64;
      out.set(t.srcIp, p + 8);
      out.set(t.dstIp, p + 24);
      p += 40;
    }
    const sport = 49152 | (hash & 0x3fff);
    const dport = t.kind === 'vxlan' ? 4789 : 6081;
    out[p] = sport >> 8; out[p + 1] = sport & 255;
    out[p + 2] = dport >> 8; out[p + 3] = dport & 255;
    out[p + 4] = udpLen >> 8; out[p + 5] = udpLen & 255;
    out[p + 6] = 0; out[p + 7] = 0;
    p += 8;
    if (t.kind === 'vxlan') {
      out[p] = 0x08; out[p + 1] = 0; out[p + 2] = 0; out[p + 3] = 0;
      out[p + 4] = vni >> 16; out[p + 5] = (vni >> 8) & 255; out[p + 6] = vni & 255; out[p + 7] = 0;
      if (flagged) out[p + this.flag.vxlanByte] |= this.flag.vxlanMask;
    } else {
      out[p] = flagged ? 1 : 0; out[p + 1] = 0; out[p + 2] = 0x65; out[p + 3] = 0x58;
      out[p + 4] = vni >> 16; out[p + 5] = (vni >> 8) & 255; out[p + 6] = vni & 255; out[p + 7] = 0;
      if (flagged) {
        const c = this.flag.geneveClass;
        out[p + 8] = c >> 8; out[p + 9] = c & 255; out[p + 10] = this.flag.geneveType; out[p + 11] = 0;
      }
    }
    this.encapsulated++;
    if (flagged) this.flaggedSent++;
    return p + tunLen - at;
  }

  /**
   * After the inner frame is in place behind the header at out[at..]: the
   * IPv6 UDP checksum (pseudo-header + UDP header + payload). IPv4: nothing.
   */
  finish(out: Uint8Array, at: number, id: number, headerLen: number, innerLen: number): void {
    const t = this.tunnels[this.encTunnel[id]];
    if (t.srcIp.length === 4) return;
    const udp = at + ETH + 40;
    const len = headerLen - ETH - 40 + innerLen;
    let s = 17 + len;
    for (let j = 0; j < 16; j += 2) s += ((t.srcIp[j] << 8) | t.srcIp[j + 1]) + ((t.dstIp[j] << 8) | t.dstIp[j + 1]);
    const end = udp + len;
    let q = udp;
    for (; q + 1 < end; q += 2) s += (out[q] << 8) | out[q + 1];
    if (q < end) s += out[q] << 8;
    while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
    let c = ~s & 0xffff;
    if (c === 0) c = 0xffff; // RFC 768: a computed 0 is sent as all ones
    out[udp + 6] = c >> 8;
    out[udp + 7] = c & 255;
  }
}

/** A tunnel's ends as addTunnel and setTunnel take them: 6-byte MACs, both addresses IPv4 or both IPv6. */
function checkTunnel(t: TunnelDef): void {
  if (t.srcMac.length !== 6 || t.dstMac.length !== 6) throw new FpoError('FPO_ERR_USAGE', 'tunnel MACs must be 6 bytes');
  if (t.srcIp.length !== t.dstIp.length || (t.srcIp.length !== 4 && t.srcIp.length !== 16)) throw new FpoError('FPO_ERR_USAGE', 'tunnel addresses must both be IPv4 or both IPv6');
}
