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
 * order, from the head, once every key up to their ticket has been answered:
 * parked packet k is slot k % B of page k / B (B: the batch capacity, so a
 * page goes through the stages as a batch), its bytes in one arena, and
 * release compacts what is left to the front.
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
  /** Per parked packet: its ticket, and its connection's hash (for keyCount). */
  readonly ticket: Float64Array;
  readonly hash: Uint32Array;
  /** Parked packets by connection hash & KEY_MASK: a hit whose count is not 0 waits behind them. */
  readonly keyCount = new Uint16Array(KEY_SLOTS);
  count = 0;
  used = 0;
  /** Packets parked in all, released, and the most at once. */
  parked = 0;
  released = 0;
  maxDepth = 0;

  constructor(readonly capacity: number, readonly bytes: number, readonly pageSize: number) {
    this.arena = new Uint8Array(bytes);
    for (let k = 0; k < capacity; k += pageSize) {
      const p = new PacketBatch(pageSize);
      p.batchSetBuffer(this.arena);
      this.pages.push(p);
    }
    this.ticket = new Float64Array(capacity);
    this.hash = new Uint32Array(capacity);
    // Touched now, not on the first burst of new flows (fresh pages cost ~3 ms a MB here).
    this.arena.fill(0);
    for (const p of this.pages) p.key.fill(0);
  }

  /** Whether n more packets of up to `bytes` bytes each fit. */
  fits(n: number, bytes: number): boolean {
    return this.count + n <= this.capacity && this.used + n * bytes <= this.bytes;
  }

  /** Parks packet i of batch (its bytes and metadata copied) with `ticket`, under its connection's hash (connHash); false when full. */
  park(batch: PacketBatch, i: number, ticket: number, hash: number): boolean {
    const len = batch.caplen[i];
    if (this.count === this.capacity || this.used + len > this.bytes) return false;
    const k = this.count++;
    const B = this.pageSize;
    const page = this.pages[(k / B) | 0];
    const slot = k % B;
    const src = batch.buf;
    const arena = this.arena;
    for (let x = batch.off[i], to = this.used, end = x + len; x < end; x++, to++) arena[to] = src[x];
    page.copyPacket(batch, i, slot);
    page.off[slot] = this.used;
    page.hash[slot] = batch.hash[i]; // (the flow hash: an encapsulated copy's outer UDP source port)
    if (slot >= page.count) page.count = slot + 1;
    this.used += len;
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
    while (k < this.count && this.ticket[k] <= answered) k++;
    return k;
  }

  /** Drops the first k packets (released) and moves the rest to the front, in order, with their bytes. */
  shift(k: number): void {
    const B = this.pageSize;
    for (let x = 0; x < k; x++) this.keyCount[this.hash[x] & KEY_MASK]--;
    let used = 0;
    let w = 0;
    for (let x = k; x < this.count; x++, w++) {
      const from = this.pages[(x / B) | 0];
      const fs = x % B;
      const len = from.caplen[fs];
      this.arena.copyWithin(used, from.off[fs], from.off[fs] + len);
      const to = this.pages[(w / B) | 0];
      const ts = w % B;
      to.copyPacket(from, fs, ts);
      to.off[ts] = used;
      to.hash[ts] = from.hash[fs];
      this.ticket[w] = this.ticket[x];
      this.hash[w] = this.hash[x];
      used += len;
    }
    for (let pg = 0; pg < this.pages.length; pg++) this.pages[pg].count = Math.max(0, Math.min(B, w - pg * B));
    this.count = w;
    this.used = used;
    this.released += k;
  }
}

const KEY_SLOTS = 1 << 16;
const KEY_MASK = KEY_SLOTS - 1;
