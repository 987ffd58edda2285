/**
 * PacketBatch: up to `capacity` packets that travel the pipeline together.
 *
 * Struct of arrays: packet i's bytes are `buf[off[i] .. off[i] + caplen[i])`,
 * and every other per-packet fact is element i of a typed array. The batch
 * owns no packet memory: `buf` is the rx port's buffer (for a capture file,
 * the reader's chunk), valid until that port fills the next batch. So every
 * stage must be done with a batch before rx runs again; a port that keeps a
 * packet (tx) copies its bytes.
 *
 * A stage that drops packet i writes the reason into `drop[i]` (a code from
 * drops.ts) and leaves it in place; later stages skip packets whose drop is
 * non-zero, and accounting reads `drop` once at the end. So a packet is never
 * lost between stages: it is either dropped with a reason or delivered.
 *
 * All arrays are allocated once, by the constructor; nothing here grows.
 */
import { KEY_WORDS } from './classifier/flow-key.js';

export const MAX_BURST = 32;
export const MAX_BURST_LIMIT = 256;

/** Offsets use 0xffff... as "absent". */
export const ABSENT = 0xffffffff;

export class PacketBatch {
  /** How many packets this batch can hold (1..MAX_BURST_LIMIT). */
  readonly capacity: number;
  /** Number of packets in the batch now. */
  count = 0;
  /** Bytes the packets live in (owned by the rx port). Set with batchSetBuffer. */
  buf: Uint8Array = new Uint8Array(0);
  /**
   * True when every packet's 16 bytes before off[i] are its little-endian
   * classic pcap record header (ts, caplen, wirelen as in this batch): a pcap
   * writer may then copy header and data at once. Set by the rx port.
   */
  rawPcapLE = false;
  /**
   * A lazy fill (CaptureReader.fill, lazy): rx wrote only `off` for every
   * packet and tsA/tsB for packet 0; each packet's other rx facts are in its
   * record header (rawPcapLE) and in `unfilledIn` (all arrived on that PPID,
   * none dropped by rx). completeRecords fills the arrays from a packet on;
   * the fast lane reads the headers instead (it calls completeRecords where
   * it stops, and the datapath before any stage runs).
   */
  unfilled = false;
  /**
   * True when the 10 bytes before each packet are its virtio-net header
   * (offload.ts): set by a ring port with offloads, false from every other rx.
   */
  vnet = false;
  /** PPID all packets of a lazy fill arrived on. */
  unfilledIn = 0;
  /** A DataView over `buf`, for the parser's big-endian reads. */
  dv: DataView = new DataView(this.buf.buffer);

  /** Offset of packet i's first byte in `buf`. */
  readonly off: Uint32Array;
  /** Captured length of packet i (bytes present in `buf`). */
  readonly caplen: Uint32Array;
  /** Length of packet i on the wire (>= caplen when the capture was cut). */
  readonly wirelen: Uint32Array;
  /** Timestamp, first word as the capture format stores it (pcap: seconds; pcapng: high 32 bits). */
  readonly tsA: Uint32Array;
  /** Timestamp, second word (pcap: µs or ns; pcapng: low 32 bits). */
  readonly tsB: Uint32Array;
  /** Capture interface index (pcapng: global interface number; pcap: 0). */
  readonly ifIndex: Uint16Array;
  /** PPID of the port the packet arrived on. */
  readonly inPpid: Uint16Array;
  /** Drop reason code (drops.ts), 0 while the packet lives. */
  readonly drop: Uint8Array;

  /** Parsed flow key, KEY_WORDS words per packet (flow-key.ts). */
  readonly key: Uint32Array;
  /** Offset of the L3 header from the packet start, or ABSENT. */
  readonly l3Off: Uint32Array;
  /** Offset of the L4 header from the packet start, or ABSENT. */
  readonly l4Off: Uint32Array;
  /** Offset of the inner Ethernet frame of a VXLAN/Geneve packet, or ABSENT. */
  readonly innerOff: Uint32Array;
  /** Offset of the VXLAN/Geneve header of a tunnel packet, or ABSENT with innerOff. */
  readonly tunHdr: Uint32Array;
  /** VNI | TUN_PRESENT of a VXLAN/Geneve packet (outer parse), else 0. */
  readonly vni: Uint32Array;
  /** Flow that matched packet i, or -1 (miss, or not looked up). */
  readonly flow: Int32Array;
  /** Which packet of its flow packet i is (1 = the flow's first), set by the classifier. */
  readonly ordinal: Float64Array;
  /** Hash of packet i's key, once the classifier computed it. */
  readonly hash: Uint32Array;
  /** ct_state of packet i after a ct action (conntrack.ts: CS_* bits), 0 when not tracked. */
  readonly ctState: Uint8Array;

  constructor(capacity = MAX_BURST) {
    if (!(capacity >= 1 && capacity <= MAX_BURST_LIMIT)) throw new RangeError(`batch capacity ${capacity} not in 1..${MAX_BURST_LIMIT}`);
    this.capacity = capacity;
    this.off = new Uint32Array(capacity);
    this.caplen = new Uint32Array(capacity);
    this.wirelen = new Uint32Array(capacity);
    this.tsA = new Uint32Array(capacity);
    this.tsB = new Uint32Array(capacity);
    this.ifIndex = new Uint16Array(capacity);
    this.inPpid = new Uint16Array(capacity);
    this.drop = new Uint8Array(capacity);
    this.key = new Uint32Array(capacity * KEY_WORDS);
    this.l3Off = new Uint32Array(capacity);
    this.l4Off = new Uint32Array(capacity);
    this.innerOff = new Uint32Array(capacity);
    this.tunHdr = new Uint32Array(capacity);
    this.vni = new Uint32Array(capacity);
    this.flow = new Int32Array(capacity);
    this.hash = new Uint32Array(capacity);
    this.ordinal = new Float64Array(capacity);
    this.ctState = new Uint8Array(capacity);
  }

  /** Points the batch at the rx port's bytes (a new DataView only when they change). */
  batchSetBuffer(buf: Uint8Array): void {
    if (buf === this.buf) return;
    this.buf = buf;
    this.dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  /**
   * Fills caplen, wirelen, tsA, tsB, ifIndex, inPpid and drop of packets
   * [from, count) of a lazy fill from their record headers (as the reader's
   * full fill would, including its fix of a wire length below the captured
   * one), and ends the lazy state. Once a batch, where the fast lane stops.
   */
  completeRecords(from: number): void {
    const d = this.dv;
    const n = this.count;
    const ppid = this.unfilledIn;
    for (let i = from; i < n; i++) {
      const p = this.off[i] - 16;
      const incl = d.getUint32(p + 8, true);
      let orig = d.getUint32(p + 12, true);
      if (orig < incl) {
        d.setUint32(p + 12, incl, true);
        orig = incl;
      }
      this.caplen[i] = incl;
      this.wirelen[i] = orig;
      this.tsA[i] = d.getUint32(p, true);
      this.tsB[i] = d.getUint32(p + 4, true);
    }
    this.ifIndex.fill(0, from, n);
    this.inPpid.fill(ppid, from, n);
    this.drop.fill(0, from, n);
    this.unfilled = false;
  }

  /**
   * Slow path (control events land between two packets): drops the first k
   * packets from the batch, moving the rest to the front as rx left them.
   */
  batchShift(k: number): void {
    if (this.unfilled) this.completeRecords(0);
    const n = this.count;
    for (let i = k; i < n; i++) {
      const j = i - k;
      this.off[j] = this.off[i];
      this.caplen[j] = this.caplen[i];
      this.wirelen[j] = this.wirelen[i];
      this.tsA[j] = this.tsA[i];
      this.tsB[j] = this.tsB[i];
      this.ifIndex[j] = this.ifIndex[i];
      this.inPpid[j] = this.inPpid[i];
      this.drop[j] = this.drop[i]; // stages only touched packets below count: this is still rx's
    }
    this.count = n - k;
  }

  /**
   * Packet i of `from` (its rx facts, parse offsets, key, ordinal and
   * ct_state) as this batch's packet j, live (drop 0): the datapath's next
   * pass after a ct (Datapath.recirculate). No bytes move: this batch must
   * point at from's buffer.
   */
  copyPacket(from: PacketBatch, i: number, j: number): void {
    const fk = from.key;
    const tk = this.key;
    const ki = i * KEY_WORDS;
    const kj = j * KEY_WORDS;
    for (let w = 0; w < KEY_WORDS; w++) tk[kj + w] = fk[ki + w];
    this.off[j] = from.off[i];
    this.caplen[j] = from.caplen[i];
    this.wirelen[j] = from.wirelen[i];
    this.tsA[j] = from.tsA[i];
    this.tsB[j] = from.tsB[i];
    this.ifIndex[j] = from.ifIndex[i];
    this.inPpid[j] = from.inPpid[i];
    this.drop[j] = 0;
    this.l3Off[j] = from.l3Off[i];
    this.l4Off[j] = from.l4Off[i];
    this.innerOff[j] = from.innerOff[i];
    this.tunHdr[j] = from.tunHdr[i];
    this.vni[j] = from.vni[i];
    this.ordinal[j] = from.ordinal[i];
    this.ctState[j] = from.ctState[i];
  }

  /** Empties the batch for the next rx (arrays are overwritten, not cleared). */
  batchReset(): void {
    this.count = 0;
  }
}
