/**
 * Spread: the rx-side stage that gives each of N datapath workers its share
 * of a batch, by a hash of each packet's flow, so that every packet of a flow
 * meets the same worker (its caches, its tx buffers) and leaves in the order
 * it came (as a NIC's RSS, or PACKET_FANOUT_HASH, spreads a port's packets
 * over queues).
 *
 * The hash (flowHash) reads the frame as it lies in the rx buffer, before
 * the parser, so it costs a few loads a packet and no parse:
 *
 *   IPv4 / IPv6 with TCP, UDP or SCTP   src, dst, proto, src port, dst port
 *   IPv4 fragment (MF or an offset)     src, dst, proto (no ports: every
 *                                       piece of a datagram has the same hash)
 *   other IPv4 / IPv6 (ICMP, IPv6 with  src, dst, proto (next header)
 *     an extension header, …)
 *   anything else (ARP, LLDP, cut)      dst MAC, src MAC, ethertype
 *
 * after up to two VLAN tags (0x8100, 0x88a8). A tunnel packet is hashed by
 * its outer header, as a NIC does; a sending VTEP puts the inner flow's hash
 * in the outer UDP source port (RFC 7348 §5), so an inner flow stays on one
 * worker. Symmetric: addresses and ports go in as unordered pairs (their
 * xor and sum), so both directions of a connection meet the same worker and
 * its connection table (conntrack). Not across NAT: a translated reply
 * carries other addresses, and may meet another worker (so fpo run refuses
 * NAT rules with --workers, control/service.ts).
 *
 * `take` copies the rx facts of the packets that are this worker's from one
 * batch into another (no packet bytes move: both batches point into the same
 * rx buffer). For a lazy fill (batch.ts `unfilled`) only the offsets exist;
 * the record headers in the buffer hold the rest, and packet 0's timestamp
 * is read from its header as the reader would have.
 */
import type { PacketBatch } from './batch.js';
import { fmix } from './classifier/flow-table.js';

/** A multiply-xor step, then murmur3's finalizer (flow-table.ts's fmix); enough for spreading. */
function mix(h: number, w: number): number {
  return Math.imul(h ^ w, 0x9e3779b1);
}

/**
 * The flow hash of the frame at b[o .. o + len) (see the header for what it
 * covers); `dv` views the same bytes as `b` (big-endian word reads: one
 * load each where byte loads took four).
 */
export function flowHash(b: Uint8Array, dv: DataView, o: number, len: number): number {
  const end = o + len;
  let p = o + 12;
  if (p + 2 > end) return fmix(mix(0x1234567, len));
  let et = dv.getUint16(p);
  for (let t = 0; t < 2 && (et === 0x8100 || et === 0x88a8) && p + 6 <= end; t++) {
    p += 4;
    et = dv.getUint16(p);
  }
  p += 2;
  if (et === 0x0800 && p + 20 <= end) {
    const ihl = (b[p] & 15) * 4;
    const proto = b[p + 9];
    let h = mix(0x800, proto);
    const s = dv.getInt32(p + 12);
    const d = dv.getInt32(p + 16);
    h = mix(h, s ^ d);
    h = mix(h, (s + d) | 0);
    const frag = dv.getUint16(p + 6) & 0x3fff; // MF and the offset
    const l4 = p + ihl;
    if (frag === 0 && ihl >= 20 && (proto === 6 || proto === 17 || proto === 132) && l4 + 4 <= end) h = mix(h, symPorts(dv.getUint32(l4)));
    return fmix(h);
  }
  if (et === 0x86dd && p + 40 <= end) {
    const nh = b[p + 6];
    let h = mix(0x86dd, nh);
    for (let q = p + 8; q < p + 24; q += 4) {
      const s = dv.getInt32(q);
      const d = dv.getInt32(q + 16);
      h = mix(mix(h, s ^ d), (s + d) | 0);
    }
    const l4 = p + 40;
    if ((nh === 6 || nh === 17 || nh === 132) && l4 + 4 <= end) h = mix(h, symPorts(dv.getUint32(l4)));
    return fmix(h);
  }
  // Not IP (or cut short): the Ethernet addresses and type.
  let h = mix(0xe7, et);
  if (o + 12 <= end) {
    h = mix(h, dv.getInt32(o));
    h = mix(h, dv.getInt32(o + 4));
    h = mix(h, dv.getInt32(o + 8));
  }
  return fmix(h);
}

/** A source and destination port (w: src << 16 | dst) as one word the same both ways. */
function symPorts(w: number): number {
  const a = w >>> 16;
  const b = w & 0xffff;
  return (a ^ b) | (((a + b) & 0xffff) << 16);
}

/** Which of `workers` workers a packet with this hash goes to. */
export function workerOf(hash: number, workers: number): number {
  // The high bits (a multiply-shift), not hash % n: as even, and no division.
  return Math.floor(((hash >>> 16) * workers) / 65536);
}

export class Spread {
  static readonly stageName = 'spread';
  /** owned[k] = 1: packets that hash to worker k are this worker's (a worker takes its own, and the main one also those of workers not started yet). */
  readonly owned: Uint8Array;

  /** This worker's number, and how many there are. */
  constructor(readonly me: number, readonly workers: number) {
    this.owned = new Uint8Array(workers);
    this.owned[me] = 1;
  }

  /**
   * Fast path: packets [from, to) of `raw` that are this worker's go, in
   * order, into `mine` (emptied first); returns how many. `mine` then points
   * into raw's buffer, as raw does: valid until the next rx fill.
   */
  take(raw: PacketBatch, from: number, to: number, mine: PacketBatch): number {
    const buf = raw.buf;
    const owned = this.owned;
    const n = this.workers;
    const off = raw.off;
    const lazy = raw.unfilled;
    mine.batchSetBuffer(buf);
    mine.rawPcapLE = raw.rawPcapLE;
    mine.unfilled = lazy;
    mine.unfilledIn = raw.unfilledIn;
    const moff = mine.off;
    let k = 0;
    if (lazy) {
      const dv = raw.dv;
      for (let i = from; i < to; i++) {
        const o = off[i];
        const len = dv.getUint32(o - 8, true); // the record header's captured length
        if (owned[workerOf(flowHash(buf, dv, o, len), n)] === 1) moff[k++] = o;
      }
      if (k > 0) {
        // The clock reads packet 0's time (as the reader's lazy fill sets it).
        const p = moff[0] - 16;
        mine.tsA[0] = dv.getUint32(p, true);
        mine.tsB[0] = dv.getUint32(p + 4, true);
      }
    } else {
      const caplen = raw.caplen;
      const dv = raw.dv;
      for (let i = from; i < to; i++) {
        if (owned[workerOf(flowHash(buf, dv, off[i], caplen[i]), n)] !== 1) continue;
        moff[k] = off[i];
        mine.caplen[k] = caplen[i];
        mine.wirelen[k] = raw.wirelen[i];
        mine.tsA[k] = raw.tsA[i];
        mine.tsB[k] = raw.tsB[i];
        mine.ifIndex[k] = raw.ifIndex[i];
        mine.inPpid[k] = raw.inPpid[i];
        mine.drop[k] = raw.drop[i];
        k++;
      }
    }
    mine.count = k;
    return k;
  }
}
