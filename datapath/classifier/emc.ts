/**
 * Emc: the exact-match cache in front of the megaflow table, as in OVS's
 * dpif-netdev. An entry holds a packet's whole key and the flow it matched;
 * a hit costs one short hash, at most two probes and a 16-word compare,
 * however many subtables the megaflow table has.
 *
 *   entry e:  ent[e*STRIDE ..]: hash, flow + 1, gen, shape, key (19 words),
 *             the user's stamp and value (Emc.memo)
 *   ways:     e1 = hash & mask, e2 = (hash >>> 16) & mask
 *
 * An entry is valid while its flow's generation (FlowTable.gen) is the one
 * it saw, so removing or evicting a flow invalidates its cache entries with
 * no sweep. Inserts happen on a megaflow hit: into a free or stale way at
 * once, over a live entry one time in `insertInvProb` (OVS's
 * emc-insert-inv-prob, default 100), so a burst of short flows does not
 * flush the entries of long ones; 0 disables the cache.
 */
import { Bypass } from '../bypass.js';
import { KEY_WORDS } from './flow-key.js';

// same() below compares exactly 19 words.
const _keyWords: 19 = KEY_WORDS;
void _keyWords;
import type { FlowTable } from './flow-table.js';

export const EMC_ENTRIES = 8192;
/** Lookups over which the cache's hit rate is judged, and the rate (1 in this) below which it is bypassed. */
const BYPASS_WINDOW = 16384;
const BYPASS_HIT_INV = 64;
/** A batch that looks while bypassed and finds at least 1 in this many of its lookups ends the bypass at once. */
const BYPASS_BACK_INV = 16;
/** While bypassed, one batch in this many looks in the cache (a power of two). */
const BYPASS_PROBE_EVERY = 64;
/** Entry word 3: a key lookupIpv4 can match (NOT_IPV4_TUN and tunnel words 0), or one only lookupTun can (tunnel words set). */
const IPV4_SHAPE = 1;
const IPV4_TUN_SHAPE = 2;
const STRIDE = 25;
/** The entry layout, for the fast lane's hot loop, which probes the cache in place (fast-lane.ts hotLoop). */
export const EMC_STRIDE: 25 = STRIDE;
export const EMC_IPV4_SHAPE: 1 = IPV4_SHAPE;
export const EMC_IPV4_TUN_SHAPE: 2 = IPV4_TUN_SHAPE;
/** Entry words 23 and 24: a stamp and a value the cache's user keeps with the entry (Emc.memo); an insert clears them. */
export const EMC_MEMO: 23 = 23;

/**
 * The batch hash of a key (like a NIC's RSS hash): in_port, eth_dst, eth_type,
 * the first words of the IP addresses, the ports, the tunnel ID and source,
 * the ct word (a recirculated packet's key hashes apart from its first pass's). Keys that
 * differ elsewhere collide here and are told apart by the full compare.
 */
export function keyHash(k: Uint32Array, o: number): number {
  let h = Math.imul(k[o] ^ k[o + 14] ^ k[o + 16], 0x9e3779b1);
  h = Math.imul(h ^ k[o + 2] ^ k[o + 15] ^ k[o + 18] ^ (h >>> 15), 0x85ebca6b);
  h = Math.imul(h ^ k[o + 6] ^ k[o + 3] ^ (h >>> 13), 0xc2b2ae35);
  h = Math.imul(h ^ k[o + 10] ^ (h >>> 16), 0x27d4eb2f);
  return (h ^ (h >>> 15)) | 0; // (an int32: a uint32 above 2^31 passed to a call is a heap number)
}

/** keyHash of the key lookupIpv4 describes (its other words 0). */
export function ipv4KeyHash(w0: number, w2: number, w3: number, w6: number, w10: number, w14: number): number {
  let h = Math.imul(w0 ^ w14, 0x9e3779b1);
  h = Math.imul(h ^ w2 ^ (h >>> 15), 0x85ebca6b);
  h = Math.imul(h ^ w6 ^ w3 ^ (h >>> 13), 0xc2b2ae35);
  h = Math.imul(h ^ w10 ^ (h >>> 16), 0x27d4eb2f);
  return (h ^ (h >>> 15)) | 0; // (an int32: a uint32 above 2^31 passed to a call is a heap number)
}

// Entry key at e[q..q+19) against the lookupIpv4 key: the named words; that
// the entry's other words are 0 was noted at insert (its IPV4_SHAPE word).
/** keyHash of the key lookupTun describes (its other words 0). */
export function tunKeyHash(w0: number, w2: number, w3: number, w6: number, w10: number, w14: number, w15: number, w16: number): number {
  let h = Math.imul(w0 ^ w14 ^ w16, 0x9e3779b1);
  h = Math.imul(h ^ w2 ^ w15 ^ (h >>> 15), 0x85ebca6b);
  h = Math.imul(h ^ w6 ^ w3 ^ (h >>> 13), 0xc2b2ae35);
  h = Math.imul(h ^ w10 ^ (h >>> 16), 0x27d4eb2f);
  return (h ^ (h >>> 15)) | 0; // (an int32: a uint32 above 2^31 passed to a call is a heap number)
}

function sameIpv4(e: Uint32Array, q: number, w0: number, w2: number, w3: number, w4: number, w5: number, w6: number, w10: number, w14: number): boolean {
  return e[q + 14] === w14 && e[q + 10] === w10 && e[q + 6] === w6 && e[q] === w0 && e[q + 2] === w2 && e[q + 3] === w3 && e[q + 4] === w4 && e[q + 5] === w5;
}

/**
 * Emc.lookupIpv4 over the cache's arrays: the two ways in one loop (half
 * the bytecode of two copies, so V8 inlines it). The fast lane's hot loop
 * writes the same probe out in place (fast-lane.ts hotLoop: V8's inlining
 * budget there goes to the parser and the hash).
 */
function probeIpv4(ent: Uint32Array, mask: number, flowGen: Uint32Array, h: number, w0: number, w2: number, w3: number, w4: number, w5: number, w6: number, w10: number, w14: number): number {
  for (let e = h & mask, way = 0; way < 2; way++, e = (h >>> 16) & mask) {
    const q = e * STRIDE;
    const f = ent[q + 1] - 1;
    if ((ent[q] | 0) === (h | 0) && f >= 0 && ent[q + 3] === IPV4_SHAPE && sameIpv4(ent, q + 4, w0, w2, w3, w4, w5, w6, w10, w14) && ent[q + 2] === flowGen[f]) return f;
  }
  return -1;
}

/** Key words that are 0 in every key lookupTun asks for (lookupIpv4's have 15..17 at 0 too): the ct word among them (only a recirculated key has it). */
const NOT_IPV4_TUN = [1, 7, 8, 9, 11, 12, 13, 18];

export class Emc {
  readonly entries: number;
  /** Insert one megaflow hit in this many (0: the cache is off). */
  insertInvProb: number;
  /** entries - 1 (for probeIpv4). */
  readonly mask: number;
  /**
   * All of an entry in one run of STRIDE words (one or two cache lines, not
   * four arrays): [0] hash, [1] flow + 1 (0: empty), [2] the flow's
   * generation, [3] IPV4_SHAPE when the key's NOT_IPV4_TUN and tunnel words are all 0
   * (lookupIpv4 compares 8 words, not 19), IPV4_TUN_SHAPE when only its
   * tunnel words are not (lookupTun compares 11), [4 .. 4 + KEY_WORDS) the key.
   */
  readonly ent: Uint32Array;
  /** The flow table's generations: an entry is live while its word 2 equals its flow's. */
  readonly flowGen: Uint32Array;
  /** Megaflow hits until the next insert (a countdown: no random draw, no division per packet). */
  private countdown = 1;
  // Bypass (../bypass.ts): while lookups find nothing (the flows in use far outnumber the
  // entries, as with a million flows), each one is two cache misses for
  // nothing. Over every window of BYPASS_WINDOW lookups the hit rate is
  // measured; below 1 in BYPASS_HIT_INV, batches skip the cache but one in
  // BYPASS_PROBE_EVERY, which measures (inserts go on, so the cache is
  // ready when it would hit again): one whose own hit rate is 1 in
  // BYPASS_BACK_INV or more ends the bypass at once. Forwarding is the same either
  // way; only where a packet's flow is found (cache or megaflow table)
  // differs. (Measured, a million new flows: a window of 65 536 and one
  // batch in 16 had left the cache's probes ~29 ns of every packet.)
  private readonly bypass = new Bypass(BYPASS_WINDOW, BYPASS_HIT_INV, BYPASS_PROBE_EVERY, BYPASS_BACK_INV, 64);
  /** True while the cache is bypassed. */
  get bypassed(): boolean {
    return this.bypass.bypassed;
  }

  constructor(flows: FlowTable, entries = EMC_ENTRIES, insertInvProb = 100) {
    if ((entries & (entries - 1)) !== 0) throw new RangeError(`EMC entries ${entries} is not a power of two`);
    this.entries = entries;
    this.insertInvProb = insertInvProb;
    this.mask = entries - 1;
    this.ent = new Uint32Array(entries * STRIDE);
    this.flowGen = flows.gen;
  }

  // Unrolled on purpose: measured here, 16 explicit compares took ~15 ns
  // against ~22 ns for the loop (KEY_WORDS is fixed at 19; flow-key.ts).
  private same(q: number, k: Uint32Array, o: number): boolean {
    const ek = this.ent;
    return ek[q] === k[o] && ek[q + 1] === k[o + 1] && ek[q + 2] === k[o + 2] && ek[q + 3] === k[o + 3] &&
      ek[q + 4] === k[o + 4] && ek[q + 5] === k[o + 5] && ek[q + 6] === k[o + 6] && ek[q + 7] === k[o + 7] &&
      ek[q + 8] === k[o + 8] && ek[q + 9] === k[o + 9] && ek[q + 10] === k[o + 10] && ek[q + 11] === k[o + 11] &&
      ek[q + 12] === k[o + 12] && ek[q + 13] === k[o + 13] && ek[q + 14] === k[o + 14] && ek[q + 15] === k[o + 15] &&
      ek[q + 16] === k[o + 16] && ek[q + 17] === k[o + 17] && ek[q + 18] === k[o + 18];
  }

  /** Fast path: the flow cached for the key at k[o..], or -1. */
  lookup(k: Uint32Array, o: number, h: number): number {
    const ent = this.ent;
    let q = (h & this.mask) * STRIDE;
    let f = ent[q + 1] - 1;
    if ((ent[q] | 0) === (h | 0) && f >= 0 && ent[q + 2] === this.flowGen[f] && this.same(q + 4, k, o)) return f;
    q = ((h >>> 16) & this.mask) * STRIDE;
    f = ent[q + 1] - 1;
    if ((ent[q] | 0) === (h | 0) && f >= 0 && ent[q + 2] === this.flowGen[f] && this.same(q + 4, k, o)) return f;
    return -1;
  }

  /**
   * Fast path: lookup for a key whose words are all 0 but in_port (w0),
   * the Ethernet words (w2..w4), eth_type/proto (w5), the IPv4 addresses
   * (w6, w10) and the ports (w14): an untagged IPv4 packet off no tunnel,
   * as the fast lane holds it in locals rather than in the batch's keys.
   * `h` is keyHash of that key (ipv4KeyHash). Same entries, same answer as
   * lookup() on the full key.
   */
  lookupIpv4(h: number, w0: number, w2: number, w3: number, w4: number, w5: number, w6: number, w10: number, w14: number): number {
    return probeIpv4(this.ent, this.mask, this.flowGen, h, w0, w2, w3, w4, w5, w6, w10, w14);
  }

  /**
   * Fast path: lookupIpv4 for the key of a decapsulated packet: the same
   * words of its inner IPv4 frame, and tun_id (w15), tun_src (w16), tun_dst
   * (w17). `h` is tunKeyHash of that key.
   */
  lookupTun(h: number, w0: number, w2: number, w3: number, w4: number, w5: number, w6: number, w10: number, w14: number, w15: number, w16: number, w17: number): number {
    const ent = this.ent;
    for (let e = h & this.mask, way = 0; way < 2; way++, e = (h >>> 16) & this.mask) {
      const q = e * STRIDE;
      const f = ent[q + 1] - 1;
      if ((ent[q] | 0) === (h | 0) && f >= 0 && (ent[q + 3] === IPV4_TUN_SHAPE || ent[q + 3] === IPV4_SHAPE) && ent[q + 2] === this.flowGen[f] &&
        sameIpv4(ent, q + 4, w0, w2, w3, w4, w5, w6, w10, w14) && ent[q + 19] === w15 && ent[q + 20] === w16 && ent[q + 21] === w17) return f;
    }
    return -1;
  }

  /** Per batch: whether to look in the cache at all (see the bypass above). */
  probeBatch(): boolean {
    if (this.insertInvProb === 0) return false;
    return this.bypass.tries();
  }

  /** After a batch that looked in the cache: lookups made and hits found. */
  countProbes(lookups: number, hits: number): void {
    this.bypass.count(lookups, hits);
  }

  /**
   * Caches key → flow f: at once into a free or stale way (that evicts
   * nothing), else one time in insertInvProb over the way a hash bit
   * chooses (while the cache is bypassed, one time in insertInvProb
   * either way). The probability is there so a burst of short flows does not
   * flush the entries of long ones; a free way needs no such care, and
   * taking it at once spares a new flow ~insertInvProb trips through the
   * megaflow table (1 thousand flows: 110 thousand of them, before).
   */
  insertMaybe(k: Uint32Array, o: number, h: number, f: number): void {
    const p = this.insertInvProb;
    if (p === 0) return;
    const bypassed = this.bypassed;
    if (bypassed) {
      // No lookup probed this key's ways (looking at them would cost two cache
      // misses a megaflow hit: 1 M flows, 2.1 -> 1.6 Mpps): one time in p first.
      if (--this.countdown > 0) return;
      this.countdown = p;
    }
    const e1 = h & this.mask;
    const e2 = (h >>> 16) & this.mask;
    let e: number;
    if (!this.valid(e1)) e = e1;
    else if (!this.valid(e2)) e = e2;
    else {
      if (!bypassed) {
        if (--this.countdown > 0) return;
        this.countdown = p;
      }
      e = h & 0x8000 ? e2 : e1;
    }
    const q = e * STRIDE;
    const ent = this.ent;
    ent[q] = h;
    ent[q + 1] = f + 1;
    ent[q + 2] = this.flowGen[f];
    for (let w = 0; w < KEY_WORDS; w++) ent[q + 4 + w] = k[o + w];
    let other = 0;
    for (let j = 0; j < NOT_IPV4_TUN.length; j++) other |= k[o + NOT_IPV4_TUN[j]];
    const tun = k[o + 15] | k[o + 16] | k[o + 17];
    ent[q + 3] = other !== 0 ? 0 : tun === 0 ? IPV4_SHAPE : IPV4_TUN_SHAPE;
    ent[q + EMC_MEMO] = 0;
    ent[q + EMC_MEMO + 1] = 0;
  }

  /**
   * Keeps (stamp, value) in the live entry of hash h for flow f, if there
   * is one: words the cache never reads, for its user (the fast lane keeps
   * the flow's tx slot there, so its hot loop needs nothing else to send a
   * cache hit). Stamps are the user's own; 0 is what an insert leaves.
   */
  memo(h: number, f: number, stamp: number, value: number): void {
    const ent = this.ent;
    for (let e = h & this.mask, way = 0; way < 2; way++, e = (h >>> 16) & this.mask) {
      const q = e * STRIDE;
      if ((ent[q] | 0) === (h | 0) && ent[q + 1] === f + 1 && ent[q + 2] === this.flowGen[f]) {
        ent[q + EMC_MEMO] = stamp;
        ent[q + EMC_MEMO + 1] = value;
      }
    }
  }

  /**
   * memo for the one live entry of flow f that holds the lookupIpv4 key
   * (w0 … w14: see there), not every entry of hash h and flow f (two keys
   * may share both): for a value that belongs to the exact key (the fast
   * lane keeps a packet's connection there). Returns the entry's number
   * (0 .. entries), or -1 when the key is not cached.
   */
  memoIpv4(h: number, f: number, w0: number, w2: number, w3: number, w4: number, w5: number, w6: number, w10: number, w14: number, stamp: number, value: number): number {
    const ent = this.ent;
    for (let e = h & this.mask, way = 0; way < 2; way++, e = (h >>> 16) & this.mask) {
      const q = e * STRIDE;
      if ((ent[q] | 0) === (h | 0) && ent[q + 1] === f + 1 && ent[q + 2] === this.flowGen[f] && ent[q + 3] === IPV4_SHAPE && sameIpv4(ent, q + 4, w0, w2, w3, w4, w5, w6, w10, w14)) {
        ent[q + EMC_MEMO] = stamp;
        ent[q + EMC_MEMO + 1] = value;
        return e;
      }
    }
    return -1;
  }

  private valid(e: number): boolean {
    const f = this.ent[e * STRIDE + 1] - 1;
    return f >= 0 && this.ent[e * STRIDE + 2] === this.flowGen[f];
  }

  /** Entries that point at a live flow now (for stats; a scan). */
  occupancy(): number {
    let n = 0;
    for (let e = 0; e < this.entries; e++) if (this.valid(e)) n++;
    return n;
  }
}
