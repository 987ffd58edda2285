/**
 * FlagCheck: the receiving NIC's first look at a tunnel packet, before any
 * inner parsing or lookup (sender-side assisted classification).
 *
 * For each VXLAN/Geneve packet addressed to this host's tunnel endpoint
 * (outer IPv4 destination = `vtep`, or IPv6 destination = `vtep6`):
 *   - flagged by the sender (a Geneve option of class/type `geneveClass`/
 *     `geneveType`, or the configured reserved bit of the VXLAN header):
 *     drop[i] = SPECIAL — the packet leaves the fast path untouched, for the
 *     special-processing path (a service port, or the FPAG);
 *   - not flagged: decapsulated in place (the packet becomes its inner frame),
 *     the inner frame parsed, and tun_id/tun_src/tun_dst written into its key
 *     so that flows can match the tunnel it came in on.
 * Packets to other addresses are transit traffic: left alone. A tunnel
 * packet for us whose header the capture cut is dropped as tunnelTruncated;
 * an inner frame that is malformed is dropped with the parser's reason.
 */
import { ABSENT, type PacketBatch } from '../batch.js';
import { D, SPECIAL } from '../drops.js';
import { parsePacket, UDP_PORT_VXLAN } from '../parse/parse.js';
import { KEY_WORDS, W_ETH_TYPE, W_IP_DST, W_IP_SRC, W_TP, W_TUN, W_TUN_DST, W_TUN_SRC } from './flow-key.js';

/** How the special-processing flag is written; the same on both sides. */
export interface FlagFormat {
  /** Geneve option class (default 0xfff0, in the experimental range 0xfff0–0xffff of RFC 8926). */
  geneveClass: number;
  /** Geneve option type (default 0x01; no critical bit, so a receiver that does not know it ignores it). */
  geneveType: number;
  /** VXLAN: which byte of the 8-byte header holds the flag bit (a reserved byte: 1, 2, 3 or 7; default 1). */
  vxlanByte: number;
  /** VXLAN: the bit in that byte (default 0x80). */
  vxlanMask: number;
}

export const DEFAULT_FLAG: FlagFormat = { geneveClass: 0xfff0, geneveType: 0x01, vxlanByte: 1, vxlanMask: 0x80 };

export class FlagCheck {
  static readonly stageName = 'flag-check';
  static readonly next = ['special', 'classify', 'drop'] as const;

  /** This host's tunnel endpoint (outer IPv4 as a u32); 0: none over IPv4. */
  vtep = 0;
  /** This host's IPv6 tunnel endpoint (4 words); all 0: none over IPv6. */
  readonly vtep6 = new Uint32Array(4);
  private has6 = false;
  flag: FlagFormat = { ...DEFAULT_FLAG };
  /** Tunnel packets for us: flagged (sent to the special path) / decapsulated onto the fast path. */
  flagged = 0;
  decapsulated = 0;

  /**
   * @param vmPort 1 per PPID of a VM (access) port (MappingTable.vmPort):
   *   tunnel packets arriving there are not terminated. A VM is not a
   *   tunnel endpoint: decapsulated, its inner frame would skip the access
   *   port's VLAN check (an inner tag 20 went out of the uplink into red).
   *   They stay what they are, UDP from that VM, for the FPAG to judge.
   */
  constructor(private readonly inPortKey: Uint32Array, readonly vmPort: Uint8Array = new Uint8Array(65536)) {}

  /**
   * Reads the sender's flag of a tunnel packet whose tunnel header is at
   * b[h] and whose inner frame starts at b[end]: the VXLAN reserved bit, or
   * a Geneve option of the configured class and type.
   */
  isFlagged(b: Uint8Array, h: number, end: number, isVxlan: boolean): boolean {
    if (isVxlan) return (b[h + this.flag.vxlanByte] & this.flag.vxlanMask) !== 0;
    // Geneve options: class(2) type(1) length(low 5 bits, in 4-byte words) data.
    const cls = this.flag.geneveClass;
    const type = this.flag.geneveType;
    for (let o = h + 8; o + 4 <= end; o += 4 + (b[o + 3] & 0x1f) * 4) {
      if (((b[o] << 8) | b[o + 1]) === cls && b[o + 2] === type) return true;
    }
    return false;
  }

  /** Per PPID, bytes received (the datapath's): the outer headers stripped here are counted in it. */
  rxBytes: Float64Array | null = null;

  /** Sets the IPv6 endpoint (16 bytes), or none (null). */
  setVtep6(addr: Uint8Array | null): void {
    this.vtep6.fill(0);
    this.has6 = addr !== null;
    if (addr) for (let w = 0; w < 4; w++) this.vtep6[w] = ((addr[w * 4] << 24) | (addr[w * 4 + 1] << 16) | (addr[w * 4 + 2] << 8) | addr[w * 4 + 3]) >>> 0;
  }

  /** True when the outer destination in key[k..] is one of our endpoints. */
  ours(key: Uint32Array, k: number): boolean {
    const et = key[k + W_ETH_TYPE] >>> 16;
    if (et === 0x0800) return this.vtep !== 0 && key[k + W_IP_DST] === this.vtep;
    if (et === 0x86dd && this.has6) {
      const v = this.vtep6;
      return key[k + W_IP_DST] === v[0] && key[k + W_IP_DST + 1] === v[1] && key[k + W_IP_DST + 2] === v[2] && key[k + W_IP_DST + 3] === v[3];
    }
    return false;
  }

  /** Returns the number of packets flagged in this batch. */
  process(batch: PacketBatch): number {
    const vtep = this.vtep;
    if (vtep === 0 && !this.has6) return 0;
    const n = batch.count;
    const drop = batch.drop;
    const inner = batch.innerOff;
    const key = batch.key;
    const b = batch.buf;
    let flagged = 0;
    let decap = 0;
    for (let i = 0; i < n; i++) {
      if (drop[i] !== 0 || inner[i] === ABSENT) continue;
      const k = i * KEY_WORDS;
      if (!this.ours(key, k) || this.vmPort[batch.inPpid[i]] !== 0) continue;
      const base = batch.off[i];
      const h = base + batch.tunHdr[i];
      const io = inner[i];
      if (io + 14 > batch.caplen[i]) {
        drop[i] = D.tunnelTruncated;
        continue;
      }
      const isFlagged = this.isFlagged(b, h, base + io, (key[k + W_TP] & 0xffff) === UDP_PORT_VXLAN);
      if (isFlagged) {
        drop[i] = SPECIAL;
        flagged++;
        continue;
      }
      // tun_src/tun_dst carry IPv4 underlay addresses; over IPv6 they stay 0 (tun_id still says the tunnel).
      const v4 = key[k + W_ETH_TYPE] >>> 16 === 0x0800;
      const src = v4 ? key[k + W_IP_SRC] : 0;
      const vni = batch.vni[i];
      batch.off[i] = base + io;
      batch.caplen[i] -= io;
      batch.wirelen[i] -= io;
      // From a port with offloads, the 10 bytes before a packet are its virtio-net header: before the inner
      // frame they are the outer UDP checksum and tunnel header, dead now, and read as "nothing to do".
      if (batch.vnet) batch.buf.fill(0, base + io - 10, base + io);
      // rx counts the frame as it arrived; accounting, at the end, sees the inner one.
      if (this.rxBytes !== null) this.rxBytes[batch.inPpid[i]] += io;
      const r = parsePacket(batch, i, this.inPortKey);
      if (r > 0) drop[i] = r;
      key[k + W_TUN] = vni;
      key[k + W_TUN_SRC] = src;
      key[k + W_TUN_DST] = v4 ? vtep : 0;
      decap++;
    }
    // A decapsulated packet's record header no longer sits before its bytes.
    if (decap > 0) batch.rawPcapLE = false;
    this.flagged += flagged;
    this.decapsulated += decap;
    return flagged;
  }
}
