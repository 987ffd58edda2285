/**
 * UpcallQueue: packets waiting for the FPAG's answer while it is given in
 * another thread (asynchronous upcalls, Datapath.upcallAsync), as OVS's
 * upcall queue holds a handler thread's packets.
 *
 * A packet that missed is parked here with its ticket (the number of keys
 * handed to the FPAG up to and including its own); so is a packet that hit a
 * flow while a packet of its connection waits here — both directions: the
 * connection hash (connHash) is the same for a SYN and its SYN-ACK, so a
 * reply never reaches conntrack before the packet it answers. Packets leave in arrival
 * order, from the head, once every key up to their ticket has been answered.
 * A ring: the packet in slot k is slot k % B of page k / B (B: the batch
 * capacity, so a page's run goes through the stages as a batch), the head's
 * slot moves on as packets leave, and their bytes are a ring in one arena
 * (a packet that would cross its end starts again at 0). Release had moved
 * every packet left to the front, bytes and metadata: with thousands waiting,
 * ~0.5 µs a packet of a million set-ups (bench/control/upcall, async).
 *
 * Bounded in packets and bytes, sized and touched at start; the datapath
 * waits for answers between batches when it is half full (park() refuses a
 * packet only when one batch would not fit).
 *
 * A frame's bytes only: not a virtio-net header before it. Asynchronous
 * upcalls are replay's (--fpag async), whose batches carry none; the live
 * ports that give one (rings with offloads) run with the FPAG inline.
 */
import { PacketBatch } from './batch.js';
import { fmix } from './classifier/flow-table.js';

/**
 * A hash of key[ko..]'s connection, the same both ways: addresses and ports
 * XORed with their reverse (IPv4 in words 6 and 10, IPv6 in 6..9 and
 * 10..13, ports in 14), and the protocol. Packets of no IP connection hash
 * by their protocol field alone (they wait behind each other: more waiting,
 * never a reply first).
 */
export function connHash(key: Uint32Array, ko: number): number {
  let h = (key[ko + 5] >>> 8) & 0xffff; // eth_type and ip_proto
  for (let w = 0; w < 4; w++) h = Math.imul(h ^ (key[ko + 6 + w] ^ key[ko + 10 + w]), 0x9e3779b1);
  const tp = key[ko + 14];
  return fmix(h ^ ((tp >>> 16) ^ (tp & 0xffff)));
}

export class UpcallQueue {
  readonly pages: PacketBatch[] = [];
  readonly arena: Uint8Array;
  private readonly dv: DataView;
  /** Per slot: its packet's ticket, and its connection's hash (for keyCount). */
  readonly ticket: Float64Array;
  readonly hash: Uint32Array;
  /** Per slot: where its packet's bytes end, as a byte count since the start (the arena's offset is this % bytes). */
  private readonly bytesEnd: Float64Array;
  /** Parked packets by connection hash & KEY_MASK: a hit whose count is not 0 waits behind them. */
  readonly keyCount = new Uint16Array(KEY_SLOTS);
  /** Slots in the ring: the pages' (at least the capacity). */
  readonly slots: number;
  /** Packets parked now, and the slot of the first (the head). */
  count = 0;
  head = 0;
  /** Bytes since the start to the head's packet (its bytes' start, or a skipped arena end's) and to the tail's end. */
  private bytesHead = 0;
  private bytesTail = 0;
  /** Packets parked in all, released, and the most at once. */
  parked = 0;
  released = 0;
  maxDepth = 0;

  constructor(readonly capacity: number, readonly bytes: number, readonly pageSize: number) {
    this.arena = new Uint8Array(bytes);
    this.dv = new DataView(this.arena.buffer);
    for (let k = 0; k < capacity; k += pageSize) {
      const p = new PacketBatch(pageSize);
      p.batchSetBuffer(this.arena);
      this.pages.push(p);
    }
    this.slots = this.pages.length * pageSize;
    this.ticket = new Float64Array(this.slots);
    this.hash = new Uint32Array(this.slots);
    this.bytesEnd = new Float64Array(this.slots);
    // Touched now, not on the first burst of new flows (fresh pages cost ~3 ms a MB here).
    this.arena.fill(0);
    for (const p of this.pages) p.key.fill(0);
  }

  /** Bytes taken (the packets' and an arena end skipped before one of them). */
  get used(): number {
    return this.bytesTail - this.bytesHead;
  }

  /** The slot of the x-th packet from the head. */
  slotOf(x: number): number {
    const k = this.head + x;
    return k >= this.slots ? k - this.slots : k;
  }

  /** The ticket of the packet parked last (0 when none is). */
  lastTicket(): number {
    return this.count > 0 ? this.ticket[this.slotOf(this.count - 1)] : 0;
  }

  /** Parks packet i of batch (its bytes and metadata copied) with `ticket`, under its connection's hash (connHash); false when full. */
  park(batch: PacketBatch, i: number, ticket: number, hash: number): boolean {
    const len = batch.caplen[i];
    if (this.count === this.capacity) return false;
    let start = this.bytesTail;
    const at0 = start % this.bytes;
    if (at0 + len > this.bytes) start += this.bytes - at0; // (not across the arena's end: from its start)
    if (start + len - this.bytesHead > this.bytes) return false;
    const at = start % this.bytes;
    const k = this.slotOf(this.count++);
    const B = this.pageSize;
    const page = this.pages[(k / B) | 0];
    const slot = k % B;
    // Four bytes at a time through the two DataViews (unaligned reads and writes), then the rest:
    // byte by byte, a 64-byte frame had cost ~60 ns of a parked packet's ~300.
    const sd = batch.dv;
    const ad = this.dv;
    let x = batch.off[i];
    let to = at;
    const end4 = x + (len & ~3);
    for (; x < end4; x += 4, to += 4) ad.setUint32(to, sd.getUint32(x));
    const src = batch.buf;
    const arena = this.arena;
    for (const end = batch.off[i] + len; x < end; x++, to++) arena[to] = src[x];
    page.copyPacket(batch, i, slot);
    page.off[slot] = at;
    page.hash[slot] = batch.hash[i]; // (the flow hash: an encapsulated copy's outer UDP source port)
    this.bytesTail = start + len;
    this.bytesEnd[k] = start + len;
    this.ticket[k] = ticket;
    this.hash[k] = hash;
    this.keyCount[hash & KEY_MASK]++;
    this.parked++;
    if (this.count > this.maxDepth) this.maxDepth = this.count;
    return true;
  }

  /** Whether a packet with this connection hash is parked (a hit of it must wait behind). */
  waiting(hash: number): boolean {
    return this.keyCount[hash & KEY_MASK] !== 0;
  }

  /** How many packets from the head may leave: those whose ticket is at most `answered`. */
  releasable(answered: number): number {
    let k = 0;
    while (k < this.count && this.ticket[this.slotOf(k)] <= answered) k++;
    return k;
  }

  /** Drops the first k packets (released): the head moves past them, their bytes free. */
  shift(k: number): void {
    if (k === 0) return;
    for (let x = 0; x < k; x++) this.keyCount[this.hash[this.slotOf(x)] & KEY_MASK]--;
    this.bytesHead = k === this.count ? this.bytesTail : this.bytesEnd[this.slotOf(k - 1)];
    this.head = this.slotOf(k);
    this.count -= k;
    this.released += k;
  }
}

const KEY_SLOTS = 1 << 16;
const KEY_MASK = KEY_SLOTS - 1;
