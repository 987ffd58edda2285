/**
 * FlowTable: the datapath's megaflow classifier — tuple-space search over
 * masked keys, in typed arrays sized at start.
 *
 * A flow is (mask, masked key) → action set. Flows with the same mask form a
 * subtable; a lookup tries the subtables in order of hits, computing the
 * packet's key under each mask and probing one shared open-addressing hash
 * table (linear probing, power-of-two slots, at most half full) for a flow of
 * that subtable with that masked key. The FPAG only installs flows whose
 * masks cover every field its decision looked at, so two flows that match
 * the same packet agree, and the first hit is the answer (as in OVS's dpcls).
 *
 *   slots:  [ ~f,tag | 0,0 | ~f,tag | ... ]  ~(flow index), or 0 (~EMPTY) when
 *           empty, and a tag,
 *           2^k entries of two words: the tag is the flow's hash with its
 *           subtable in the low byte, so a probe rejects a wrong slot
 *           without touching the flow's arrays (one cache line, not four:
 *           measured here at 1 million flows, 175 ns a lookup before)
 *   flows:  key[f*KW..], sub[f], act[f], hash[f], packets[f], bytes[f], used[f]
 *   subs:   mask[s*KW..], words[s] (mask words that are not 0), flows[s], hits[s]
 *
 * Nothing is written at construction: a slot holds ~f, so the zeroed memory
 * of a new array reads as EMPTY, and flow indices never used yet come from a
 * counter, not a prefilled free list. Filling both had touched 1.25 MB (slots
 * 1 MiB, free list 256 KiB at 65536 flows) and run 330 K iterations in the
 * interpreter before the first packet: ~4 ms of a 671-packet replay's start-up
 * here (--cpu-prof), whose table holds 24 flows.
 *
 * Signature-match cache (SMC, as OVS's dpif-netdev between its EMC and
 * dpcls): for flows past what the exact-match cache holds, a lookup with the
 * packet's key hash (lookupHashed) first tries 4-way buckets of (hash, flow)
 * pairs: one bucket, then the flow's own key compared under its subtable's
 * mask — one probe where the subtables would take one each. The compare
 * makes a hit exact: a removed flow (live 0) is never served, and a slot
 * reused by another flow serves it only if the packet matches that flow,
 * which then is the packet's flow (installed flows never disagree). A
 * megaflow hit inserts its (hash, flow). 8 bytes an entry; entries: the
 * table's capacity rounded up, at most SMC_MAX_ENTRIES.
 *
 * Full table: installing into a full table first evicts a flow (counted in
 * `evicted`), so a replay with more flows than capacity keeps going. The
 * victim is chosen by a CLOCK (second chance, as page replacement does): a
 * hand goes round the flow indices; a flow hit since the hand last passed
 * it (its packet count above the one the hand noted then) is passed over
 * and noted, one not hit is evicted. A new flow starts noted at one packet
 * (the one that set it up: the datapath counts it after the install), so
 * it stays for being hit again; its index is one the hand has just freed,
 * so it has a lap's time for that. Had a new flow counted as hit, the first
 * lap of a table filled at once would note every flow in one call and the
 * next take the first, however busy. Busy flows stay; a flood of new flows
 * costs about one flow looked at an eviction. (An exact least-recently-used eviction —
 * a scan of every flow's time and a selection, 1/16 of the table at once —
 * cost ~190 ns a new flow at 65 536 flows, most of a set-up's flow-table
 * time: measured with bench/control/upcall's steady regime's table alone.)
 *
 * Quarantine: while a batch is being switched (the datapath calls
 * quarantine(true) before and false after), nothing is evicted, and the
 * index of a flow removed (expired, deleted) is not given to another flow:
 * a packet of the batch matched to a flow runs its actions, never another
 * flow's, and a flow installed for the batch is there when its packets are
 * looked up again. A full table then takes up to `spare` flows more (the
 * indices past the capacity), evicted back to the capacity when the batch
 * ends; past those, install returns FULL and the miss is dropped
 * (flowTableFull).
 */
import { KEY_WORDS, sameKey } from './flow-key.js';
import { adviseHugePages } from '../huge-pages.js';

const EMPTY = -1;

export const STAT_WORDS = 4;
export const ST_PACKETS = 0;
export const ST_BYTES = 1;
export const ST_USED = 2;
/** The packet count the eviction's hand saw when it last passed the flow (1 at install: see the top). */
export const ST_SEEN = 3;
export const MAX_SUBTABLES = 256;
/** With at most this many subtables, each one's hash and compare are functions of their own (FlowTable.specialize). */
const SPECIALIZED_MAX = 4;

/** install/installAt: no index is free (a quarantine holds the evicted ones, and the spare ones are taken). */
export const FULL = -2;
/** Most flows a table holds (its slots, twice that, are found by 24 bits of the hash). */
export const MAX_CAPACITY = 1 << 23;
/** Slots a table starts with (it grows from there; flow-table.ts slotMask). */
const MIN_SLOTS = 1024;
/** The signature-match cache's most entries (OVS's: 2^20, 4 a bucket). */
export const SMC_MAX_ENTRIES = 1 << 20;
/**
 * Lookups with no change of mask or order before the generated lookup over
 * every subtable is made (FlowTable.lookupAll): V8 needs some 11 000 (two
 * subtables) to 76 000 (28) calls before it optimizes that function, ~1.3-4.8
 * µs each till then, so one made at every change of often-changing masks
 * had run 12-33× slower than the loops (a review's repro: a mask changed
 * every 4 096 lookups).
 */
const REGEN_LOOKUPS = 65536;
/** A generated lookup whose order is out of date (the masks the same) is made again only after this many more lookups. */
const REORDER_LOOKUPS = 1 << 20;
/**
 * The longest source of a generated lookup (FlowTable.buildLookupAll):
 * past ~56 000 characters V8 no longer optimizes it (measured: 7-word
 * masks, 60 subtables 4.9 M lookups/s, 62 subtables 0.18, the loops 0.84;
 * 19-word masks, 28 and 30 subtables alike), and the loops are used.
 */
const MAX_LOOKUP_SOURCE = 40_000;
/**
 * Slots in use (less one) from which lookupBatch reads a batch's home slots
 * and flows ahead of its lookups: 2^18 slots of 8 bytes, twice this core's
 * 1 MiB L2 — below, they are near anyway and the passes are only work.
 */
const TOUCH_SLOTS = (1 << 18) - 1;
/** The Bloom filter's bits a flow index (FlowTable.bloom). */
const BLOOM_BITS_PER_INDEX = 8;

/** A masked hash's two bits in its Bloom word (bits 0-4 and 27-31: the word index takes bits 5 up). */
function bloomBits(h: number): number {
  return (1 << (h & 31)) | (1 << (h >>> 27));
}

/** fmix's steps as generated code writes them (specialize's hashOf, buildLookupAll). */
const FINISH = 'h ^= h >>> 16; h = Math.imul(h, 0x85ebca6b); h ^= h >>> 13; h = Math.imul(h, 0xc2b2ae35); h ^= h >>> 16;';

function nextPow2(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

/**
 * The hash of a masked key: one multiply per word, then a finalizer. Cheaper
 * than murmur3's per-word step (measured: a 20-subtable lookup went from
 * 1.9 to 3.0 million per second) and as good for a table whose collisions are
 * resolved by comparing the key.
 */
export function fmix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

export class FlowTable {
  /** Most flows the table holds. */
  readonly capacity: number;
  /** Flow indices: capacity + spare (the quarantine's room). Arrays are this long. */
  readonly indices: number;
  /** Flows installed now. */
  count = 0;
  /** Flows removed to make room. */
  evicted = 0;
  /** Flows removed for being idle. */
  expired = 0;
  /** Indices of flows removed during a quarantine, given back when it ends. */
  private readonly held: Int32Array;
  private heldTop = 0;
  private quarantined = false;

  // Flows.
  readonly key: Uint32Array;
  /**
   * Per flow index: the mask (its serial, maskSerialOf) its stored key was
   * written under, 0 while the key is all zeros (never written). An install
   * under the same mask writes the mask's words alone (the others are 0
   * already): a new flow's 19-word masked copy had cost ~30 ns of a set-up's
   * ~90 in the table.
   */
  private readonly keyMask: Int32Array;
  readonly sub: Int16Array;
  readonly act: Int32Array;
  readonly fhash: Uint32Array;
  /**
   * Per-flow counters, STAT_WORDS a flow in one array so that a hit touches
   * one cache line, not three: [f*4] packets, [f*4+1] bytes, [f*4+2] last
   * used (ms, datapath clock), [f*4+3] the packets the eviction's hand saw.
   */
  readonly stats: Float64Array;
  readonly live: Uint8Array;
  /** Bumped each time flow slot f is removed or given new actions, so caches that hold f can tell (emc.ts). */
  readonly gen: Uint32Array;
  /** Bumped with every bump of a flow's gen: whoever saw it unchanged knows no flow's gen changed. */
  genChanges = 0;
  /** Freed flow indices (a stack); indices never used yet are fresh..indices-1. */
  private readonly freeList: Int32Array;
  /** The eviction's hand: the flow index it looks at next (evict). */
  private hand = 0;
  private freeTop = 0;
  /** The lowest flow index never used yet. */
  private fresh = 0;

  // Subtables.
  readonly mask: Uint32Array;
  private readonly words: Uint8Array;
  private readonly nwords: Uint8Array;
  readonly subFlows: Int32Array;
  readonly subHits: Float64Array;
  /** Subtable indices in lookup order. */
  private readonly order: Int16Array;
  subCount = 0;

  /** The signature-match cache: buckets of 4 (hash, flow + 1) pairs, 8 words each. */
  private readonly smc: Int32Array;
  private readonly smcBucketMask: number;
  /** Whether lookupHashed uses the signature-match cache (off: for comparison; forwarding is the same). */
  smcOn = true;
  /** Lookups the signature-match cache answered. */
  smcHits = 0;

  /**
   * A Bloom filter over the flows of every subtable, by their masked hash
   * (the subtable is in it: mixed into the hash's finish): a lookup that
   * finds either bit of a subtable's hash clear skips that subtable's probe
   * of the slots, a random cache line (at a million flows in 20 subtables, a
   * DRAM miss for each subtable a key is not in). Two bits of one word a
   * flow (one read), BLOOM_BITS_PER_INDEX bits an index: ~5 % of absent keys
   * pass with every index live, ~15 % with as many stale bits again. A
   * removal leaves its bits (stale: they let keys through, never keep a flow
   * out); once the removals since the last rebuild pass the live flows and
   * a quarter of the indices, the bits are made again from the live flows
   * (O(flow indices), so O(1) a removal). Measured (classifier/lookup, 20
   * subtables, the subtables alone): hits x1.3-1.4, misses x1.6-1.9; 8 bits
   * an index did better than 16 and 32 at 100 K and 1 M flows (a smaller
   * filter stays in cache).
   */
  private readonly bloom: Int32Array;
  private readonly bloomMask: number;
  private bloomStale = 0;
  /** Whether installs and removals keep the filter: from the second subtable on (one subtable's probe answers alone; made then from the live flows). */
  private bloomKept = false;
  /** lookupBatch's candidates that were not the key's flow (a removed flow's, another key's at a reused index or way). */
  smcStale = 0;
  /** Whether lookups consult the Bloom filter (off: for comparison; forwarding is the same). Installs and removals keep it either way. */
  bloomOn = true;
  /** Subtable probes the Bloom filter spared (a lookup that skips 3 subtables counts 3). */
  bloomSkips = 0;
  /** Times the filter was made again from the live flows (removals). */
  bloomRebuilds = 0;

  /** Two words a slot: [2p] ~(flow index), ~EMPTY (0) when empty, [2p+1] tag (hash & ~0xff | subtable); a flow's home slot is (hash >>> 8) & slotMask, so the tag says it. */
  private readonly slots: Int32Array;
  /**
   * The slots in use, less one: a power of two at least twice the flows,
   * grown (doubled, rehashed: slow path, on install) as flows come, up to
   * the array's size. A table of few flows probes a few cache lines, not a
   * random line of an array sized for the most flows (64 flows in slots for
   * 2 million had cost a DRAM miss a lookup).
   */
  private slotMask: number;
  private readonly slotMax: number;

  /** capacity: most flows at once; spare: indices past it for installs during a quarantine (see above). */
  constructor(capacity: number, spare = 0) {
    // A slot's position is the hash's bits 8 and up (its tag holds them): 2^24 slots at most.
    if (!(capacity >= 1 && capacity <= MAX_CAPACITY)) throw new RangeError(`flow table capacity ${capacity}: 1..${MAX_CAPACITY}`);
    this.capacity = capacity;
    const n = (this.indices = capacity + spare);
    this.key = new Uint32Array(n * KEY_WORDS);
    this.keyMask = new Int32Array(n);
    this.sub = new Int16Array(n);
    this.act = new Int32Array(n);
    this.fhash = new Uint32Array(n);
    this.stats = new Float64Array(n * STAT_WORDS);
    this.live = new Uint8Array(n);
    this.gen = new Uint32Array(n);
    this.freeList = new Int32Array(n);
    this.held = new Int32Array(n);
    this.mask = new Uint32Array(MAX_SUBTABLES * KEY_WORDS);
    this.words = new Uint8Array(MAX_SUBTABLES * KEY_WORDS);
    this.nwords = new Uint8Array(MAX_SUBTABLES);
    this.subFlows = new Int32Array(MAX_SUBTABLES);
    this.subHits = new Float64Array(MAX_SUBTABLES);
    this.order = new Int16Array(MAX_SUBTABLES);
    // At most half full at the capacity; the spare indices (held a batch's time) may fill a little
    // more (never past 4/5). Sized by all indices, 65 536 flows and their spare took 2 MiB of slots,
    // not 1: measured (the table alone, a million new flows through 65 536), a new flow's missed
    // lookup took 120 ns, not 57, and its eviction 85, not 51.
    const nslots = nextPow2(Math.max(2 * capacity, n + (n >>> 2) + 1));
    this.slots = new Int32Array(nslots * 2);
    this.slotMax = nslots;
    this.slotMask = Math.min(nslots, MIN_SLOTS) - 1;
    const buckets = Math.max(1, Math.min(SMC_MAX_ENTRIES, nextPow2(capacity)) >>> 2);
    this.smc = new Int32Array(buckets * 8);
    this.smcBucketMask = buckets - 1;
    const bloomWords = nextPow2(Math.max(32, n * BLOOM_BITS_PER_INDEX)) >>> 5;
    this.bloom = new Int32Array(bloomWords);
    this.bloomMask = bloomWords - 1;
    // A big table's memory in huge pages (huge-pages.ts: a flow's first touch had cost ~0.4 µs of faults).
    for (const a of [this.key, this.stats, this.slots, this.smc, this.bloom]) adviseHugePages(a);
  }

  /** Hash of `key[ko..]` under subtable s's mask (with few subtables, its own function: specialize). */
  private maskedHash(key: Uint32Array, ko: number, s: number): number {
    return this.specialized ? this.hashOf[s](key, ko) : this.maskedHashLoop(key, ko, s);
  }

  private maskedHashLoop(key: Uint32Array, ko: number, s: number): number {
    const m = this.mask;
    const mo = s * KEY_WORDS;
    const words = this.words;
    const nw = this.nwords[s];
    // (The chain starts from 0, the subtable is mixed in at the end: subtables whose masks begin
    // alike share the chain's first steps, lookupAll.)
    let h = 0;
    for (let j = 0; j < nw; j++) {
      const w = words[mo + j];
      h = Math.imul(h ^ (key[ko + w] & m[mo + w]), 0x9e3779b1) + w;
    }
    return fmix(h ^ nw ^ (s << 8)) | 0; // (an int32: a uint32 above 2^31 returned from a call is a heap number, ~16 B a set-up)
  }

  /** Finds the flow of subtable s whose masked key equals key[ko..] under s's mask, or -1. */
  private find(key: Uint32Array, ko: number, s: number, h: number): number {
    return this.specialized ? this.findSpecialized(key, ko, s, h) : this.findLoop(key, ko, s, h);
  }

  private findSpecialized(key: Uint32Array, ko: number, s: number, h: number): number {
    const slots = this.slots;
    const sm = this.slotMask;
    const fk = this.key;
    const eq = this.eqOf[s];
    const tag = (h & ~0xff) | s;
    for (let pos = (h >>> 8) & sm; ; pos = (pos + 1) & sm) {
      const f = ~slots[2 * pos];
      if (f === EMPTY) return -1;
      if (slots[2 * pos + 1] !== tag) continue;
      if (eq(key, ko, fk, f * KEY_WORDS)) return f;
    }
  }

  private findLoop(key: Uint32Array, ko: number, s: number, h: number): number {
    const slots = this.slots;
    const sm = this.slotMask;
    const fk = this.key;
    const m = this.mask;
    const mo = s * KEY_WORDS;
    const words = this.words;
    const nw = this.nwords[s];
    const tag = (h & ~0xff) | s;
    for (let pos = (h >>> 8) & sm; ; pos = (pos + 1) & sm) {
      const f = ~slots[2 * pos];
      if (f === EMPTY) return -1;
      if (slots[2 * pos + 1] !== tag) continue;
      const fo = f * KEY_WORDS;
      let j = 0;
      for (; j < nw; j++) {
        const w = words[mo + j];
        // fk is stored masked; XOR-then-mask compares without sign trouble.
        if (((key[ko + w] ^ fk[fo + w]) & m[mo + w]) !== 0) break;
      }
      if (j === nw) return f;
    }
  }

  /**
   * Per subtable, its mask's hash and compare as functions of their own, the
   * mask's words and values written out as constants (specialize): a loop
   * over the mask's word list had cost a megaflow lookup ~60 ns with 7 words
   * (1 M flows × 5 packets, every packet a megaflow hit). Used while the
   * table has at most SPECIALIZED_MAX subtables: a call site that meets
   * more functions than V8's inline cache keeps is slower than the loop
   * (measured, 20 subtables: lookups 3.0 -> 2.7 M/s, the SMC's hits 10.6
   * -> 8.0 M/s at 1 M flows).
   */
  private readonly hashOf: ((key: Uint32Array, ko: number) => number)[] = [];
  /** Whether lookups use hashOf/eqOf: at most SPECIALIZED_MAX subtables, and code from strings allowed (codegen). */
  private specialized = true;
  private codegen = true;
  private readonly eqOf: ((key: Uint32Array, ko: number, fk: Uint32Array, fo: number) => boolean)[] = [];
  /** Per subtable: its mask's words copied, masked, from key[ko..] to fk[fo..] (the install of a key whose index held one of this mask). */
  private readonly copyOf: ((fk: Uint32Array, fo: number, key: Uint32Array, ko: number) => void)[] = [];
  /** Per subtable: the serial of its mask (a subtable given another mask gets a new one; keyMask). */
  private readonly maskSerialOf = new Int32Array(MAX_SUBTABLES);
  private maskSerial = 0;

  // Slow path (a subtable's mask set): subtable s's hash and compare.
  private specialize(s: number): void {
    const mo = s * KEY_WORDS;
    const nw = this.nwords[s];
    const ws: number[] = [];
    const ms: number[] = [];
    for (let j = 0; j < nw; j++) {
      ws.push(this.words[mo + j]);
      ms.push(this.mask[mo + this.words[mo + j]]);
    }
    let hash = 'let h = 0;\n';
    let eq = 'return true';
    let copy = '';
    for (let j = 0; j < nw; j++) {
      // (As the loop below: the same hash, word for word.)
      hash += `h = Math.imul(h ^ (key[ko + ${ws[j]}] & ${ms[j]}), 0x9e3779b1) + ${ws[j]};\n`;
      eq += ` && ((key[ko + ${ws[j]}] ^ fk[fo + ${ws[j]}]) & ${ms[j]}) === 0`;
      copy += `fk[fo + ${ws[j]}] = key[ko + ${ws[j]}] & ${ms[j]};\n`;
    }
    hash += `h ^= ${nw ^ (s << 8)}; ${FINISH} return h | 0;`;
    try {
      this.hashOf[s] = new Function('key', 'ko', hash) as (key: Uint32Array, ko: number) => number;
      this.eqOf[s] = new Function('key', 'ko', 'fk', 'fo', eq + ';') as (key: Uint32Array, ko: number, fk: Uint32Array, fo: number) => boolean;
      this.copyOf[s] = new Function('fk', 'fo', 'key', 'ko', copy) as (fk: Uint32Array, fo: number, key: Uint32Array, ko: number) => void;
    } catch {
      // Code from strings not allowed (node --disallow-code-generation-from-strings): the loops, always.
      this.codegen = false;
    }
    this.specialized = this.codegen && this.subCount <= SPECIALIZED_MAX;
  }

  /**
   * Fast path: the flow matching the key at key[ko..], trying subtables in
   * hit order, or -1. Counts the hit on the subtable.
   */
  lookup(key: Uint32Array, ko = 0): number {
    // One subtable: its own hash and probe (as fast alone, and in a process of many tables a call
    // site that meets each table's lookupAll cost the million set-ups ~5 %: in-process A/B).
    if (this.subCount === 1 && this.specialized) return this.lookupSpecialized(key, ko);
    const all = this.lookupAll;
    const n = ++this.lookups;
    if (n >= this.buildAt) return this.buildLookupAll()(key, ko);
    if (all !== null) return all(key, ko);
    return this.specialized ? this.lookupSpecialized(key, ko) : this.lookupLoop(key, ko);
  }

  // lookup, while no lookupAll is made: with few subtables, each one's generated hash and compare.
  private lookupSpecialized(key: Uint32Array, ko: number): number {
    const order = this.order;
    const nsub = this.subCount;
    const bloom = this.bloomOn && nsub > 1 ? this.bloom : null; // (one subtable: its probe answers alone)
    for (let t = 0; t < nsub; t++) {
      const s = order[t];
      const h = this.hashOf[s](key, ko);
      if (bloom !== null) {
        const bits = bloomBits(h);
        if ((bloom[(h >>> 5) & this.bloomMask] & bits) !== bits) { this.bloomSkips++; continue; }
      }
      const f = this.findSpecialized(key, ko, s, h);
      if (f >= 0) {
        this.subHits[s]++;
        return f;
      }
    }
    return -1;
  }

  /**
   * The lookup over every subtable, in lookup order, as one generated
   * function (buildLookupAll), from two subtables on. Null while none is
   * made, or since a mask changed (its code would be wrong): each
   * subtable's functions or the loops then, till regenEvery lookups pass
   * with no change of mask or order, when it is made (masks that come and go
   * cost no compile, and no unoptimized run of a new function, a batch).
   * Kept when only the order changed (still right, slower to a hit): made
   * again once the order has been still for regenEvery lookups and
   * REORDER_LOOKUPS have passed since it was made. Measured against one call
   * of each subtable's hash and probe, the table alone at 1 K flows: hits 25
   * -> 35 M/s with two subtables, 18 -> 31 with four, 4 -> 17 with 20 (with
   * the Bloom filter).
   */
  private lookupAll: ((key: Uint32Array, ko: number) => number) | null = null;
  /** Lookups with two subtables or more (or without specialized functions), since the table was made. */
  private lookups = 0;
  /** The lookup count at which lookupAll is (re)made (Infinity: not due). */
  private buildAt = REGEN_LOOKUPS;
  private builtAt = 0;
  /** Lookups with no change before lookupAll is made (REGEN_LOOKUPS; a test sets 0: at every change, or Infinity: never). */
  regenEvery = REGEN_LOOKUPS;
  /** Times lookupAll was generated; times its source was written (too long ones too). */
  lookupGens = 0;
  lookupSources = 0;

  /**
   * Slow path: the lookup over all subtables as one function. Each
   * subtable's hash is the chain over its mask's words (word, mask value),
   * then its own finish; subtables are taken in lookup order, and a step of
   * the chain that an earlier subtable's mask shares (the same words and
   * values from the first) is not computed again: a staged lookup's sharing,
   * by the hash. Then the Bloom filter, the probe and the compare, the mask's
   * words and values written out.
   */
  private buildLookupAll(): (key: Uint32Array, ko: number) => number {
    const steps = new Map<string, number>(); // path of (word, mask) steps -> its variable
    let body = 'const slots = t.slots, sm = t.slotMask, fk = t.key, subHits = t.subHits;\n' +
      `const bloom = t.bloomOn && ${this.subCount > 1} ? t.bloom : null, bm = t.bloomMask;\n` +
      'let skips = 0, h = 0, bits = 0, f = 0, fo = 0;\n';
    for (let t = 0; t < this.subCount; t++) {
      const s = this.order[t];
      const mo = s * KEY_WORDS;
      const nw = this.nwords[s];
      let path = '';
      let v = '0';
      let eq = 'true';
      for (let j = 0; j < nw; j++) {
        const w = this.words[mo + j];
        const m = this.mask[mo + w];
        path += `${w}:${m},`;
        let step = steps.get(path);
        if (step === undefined) {
          step = steps.size;
          steps.set(path, step);
          body += `const c${step} = Math.imul(${v} ^ (key[ko + ${w}] & ${m}), 0x9e3779b1) + ${w};\n`;
        }
        v = `c${step}`;
        eq += ` && ((key[ko + ${w}] ^ fk[fo + ${w}]) & ${m}) === 0`;
      }
      body += `h = ${v} ^ ${nw ^ (s << 8)}; ${FINISH}\n` +
        'bits = (1 << (h & 31)) | (1 << (h >>> 27));\n' +
        `if (bloom === null || (bloom[(h >>> 5) & bm] & bits) === bits) {\n` +
        `  for (let pos = (h >>> 8) & sm; ; pos = (pos + 1) & sm) {\n` +
        `    f = ~slots[2 * pos];\n    if (f === ${EMPTY}) break;\n` +
        `    if (slots[2 * pos + 1] !== ((h & ~0xff) | ${s})) continue;\n` +
        `    fo = f * ${KEY_WORDS};\n` +
        `    if (${eq}) { subHits[${s}]++; if (skips > 0) t.bloomSkips += skips; return f; }\n  }\n` +
        '} else skips++;\n';
    }
    body += 'if (skips > 0) t.bloomSkips += skips;\nreturn -1;';
    this.lookupSources++;
    this.buildAt = Infinity; // (till the next change)
    const none = (key: Uint32Array, ko: number) => (this.specialized ? this.lookupSpecialized(key, ko) : this.lookupLoop(key, ko));
    if (body.length > MAX_LOOKUP_SOURCE) {
      this.lookupAll = null; // (too long to be optimized: the loops, till a mask changes)
      return none;
    }
    let fn: (key: Uint32Array, ko: number) => number;
    try {
      fn = (new Function('t', `return function lookupAll(key, ko) {\n${body}\n};`) as (t: FlowTable) => (key: Uint32Array, ko: number) => number)(this);
    } catch {
      this.codegen = false; // (code from strings refused: the loops)
      this.lookupAll = null;
      return none;
    }
    this.lookupAll = fn;
    this.builtAt = this.lookups;
    this.lookupGens++;
    return fn;
  }

  /**
   * A mask changed (`mask`: the generated lookup is wrong now, dropped) or
   * the order did (it stays): see lookupAll for when it is made again.
   */
  private lookupChanged(mask: boolean): void {
    if (!this.codegen) {
      this.buildAt = Infinity;
      return;
    }
    if (mask) this.lookupAll = null;
    const quiet = this.lookups + this.regenEvery;
    this.buildAt = this.lookupAll === null ? quiet : Math.max(quiet, this.builtAt + this.regenEvery * (REORDER_LOOKUPS / REGEN_LOOKUPS));
  }

  // lookup with many subtables, where no code is generated: the loops over the masks' word lists.
  private lookupLoop(key: Uint32Array, ko: number): number {
    const order = this.order;
    const nsub = this.subCount;
    const bloom = this.bloomOn && nsub > 1 ? this.bloom : null; // (one subtable: its probe answers alone)
    for (let t = 0; t < nsub; t++) {
      const s = order[t];
      const h = this.maskedHashLoop(key, ko, s);
      if (bloom !== null) {
        const bits = bloomBits(h);
        if ((bloom[(h >>> 5) & this.bloomMask] & bits) !== bits) { this.bloomSkips++; continue; }
      }
      const f = this.findLoop(key, ko, s, h);
      if (f >= 0) {
        this.subHits[s]++;
        return f;
      }
    }
    return -1;
  }

  /**
   * lookup, with the key's hash (keyHash: the exact-match cache's) for the
   * signature-match cache first; a megaflow hit is cached there.
   */
  lookupHashed(key: Uint32Array, ko: number, h: number): number {
    // One subtable: its own probe costs what the cache's would (measured: with 64 flows of one mask
    // and a million exact keys, the cache made every lookup a DRAM miss the subtable did not).
    if (!this.smcOn || this.subCount < 2) return this.lookup(key, ko);
    const smc = this.smc;
    const b = (h & this.smcBucketMask) << 3;
    const sig = h | 0;
    for (let w = 0; w < 8; w += 2) {
      if (smc[b + w] !== sig) continue;
      const f = smc[b + w + 1] - 1;
      // (A removed flow's subtable is -1: one array read tells both its liveness and its mask.)
      if (f >= 0 && this.matches(key, ko, f)) {
        this.smcHits++;
        return f;
      }
    }
    const f = this.lookup(key, ko);
    if (f >= 0) {
      // Into the way with this hash, else a free or dead one, else one chosen by the hash's top bits.
      let at = -1;
      for (let w = 0; w < 8; w += 2) {
        if (smc[b + w] === sig) { at = w; break; }
        if (at < 0) { const g = smc[b + w + 1] - 1; if (g < 0 || this.live[g] === 0) at = w; }
      }
      if (at < 0) at = (h >>> 29) & 6;
      smc[b + at] = sig;
      smc[b + at + 1] = f + 1;
    }
    return f;
  }

  /**
   * lookupHashed for m keys of a batch (idx[j]: the key's place, at
   * key[idx[j] * KEY_WORDS..], hash[idx[j]] its key hash), their flows (or
   * -1) into out[0..m). With the signature-match cache in use, its buckets
   * are read in one pass first, each load independent of the others, so
   * their cache misses overlap (one a lookup had stalled it: a lookup's
   * one DRAM miss at a million flows); the first way holding a key's hash
   * is its candidate, checked against the key (matches) before it is
   * taken, else the key is looked up as lookupHashed does. fromSmc[j], when
   * given: whether key j's flow came from the signature-match cache.
   */
  lookupBatch(key: Uint32Array, hash: Uint32Array, idx: Uint16Array, m: number, out: Int32Array, fromSmc: Uint8Array | null = null): void {
    if (!this.smcOn || this.subCount < 2 || m < 2) {
      if (fromSmc !== null) fromSmc.fill(0, 0, m);
      if (m >= 2 && this.subCount > 0 && this.slotMask >= this.touchSlots) this.lookupBatchTouched(key, idx, m, out);
      else {
        for (let j = 0; j < m; j++) {
          const before = this.smcHits;
          out[j] = this.lookupHashed(key, idx[j] * KEY_WORDS, hash[idx[j]]);
          if (fromSmc !== null && this.smcHits !== before) fromSmc[j] = 1;
        }
      }
      return;
    }
    const smc = this.smc;
    const bm = this.smcBucketMask;
    for (let j = 0; j < m; j++) {
      const h = hash[idx[j]] | 0;
      const b = (h & bm) << 3;
      out[j] = smc[b] === h ? smc[b + 1] - 1 : smc[b + 2] === h ? smc[b + 3] - 1 : smc[b + 4] === h ? smc[b + 5] - 1 : smc[b + 6] === h ? smc[b + 7] - 1 : -1;
    }
    let hits = 0;
    for (let j = 0; j < m; j++) {
      const i = idx[j];
      const ko = i * KEY_WORDS;
      const c = out[j];
      if (c >= 0 && this.matches(key, ko, c)) {
        hits++;
        if (fromSmc !== null) fromSmc[j] = 1;
      } else {
        if (c >= 0) this.smcStale++;
        const before = this.smcHits;
        out[j] = this.lookupHashed(key, ko, hash[i]);
        if (fromSmc !== null) fromSmc[j] = this.smcHits !== before ? 1 : 0;
      }
    }
    this.smcHits += hits;
  }

  /**
   * matches(), for a flow the FPAG's answer names (the datapath checks it
   * before taking it for the packet): with few subtables, the subtable's
   * own compare (specialize), ~2× the loop's speed for 8 mask words.
   */
  matchesAnswer(key: Uint32Array, ko: number, f: number): boolean {
    const s = this.sub[f];
    if (s < 0) return false;
    return this.specialized ? this.eqOf[s](key, ko, this.key, f * KEY_WORDS) : this.matches(key, ko, f);
  }

  /**
   * lookupBatch without the signature-match cache, in a table whose slots
   * are past this core's caches (TOUCH_SLOTS): the keys' hashes under the
   * first subtable's mask (the most hits), then in tight loops of their
   * own each key's home slot read, then the key and counters of the flow
   * found there — loads independent of each other, so their misses overlap
   * (in a lookup they come one after another, each waiting on the last:
   * the slot's, then the flow's) — then each key looked up as it would be,
   * its lines now near.
   */
  private lookupBatchTouched(key: Uint32Array, idx: Uint16Array, m: number, out: Int32Array): void {
    this.touchedBatches++;
    const s0 = this.order[0];
    const home = this.home.length >= m ? this.home : (this.home = new Int32Array(Math.max(m, 256)));
    for (let j = 0; j < m; j++) home[j] = this.maskedHash(key, idx[j] * KEY_WORDS, s0);
    const slots = this.slots;
    const sm = this.slotMask;
    let acc = 0;
    for (let j = 0; j < m; j++) acc ^= slots[2 * ((home[j] >>> 8) & sm)];
    const fk = this.key;
    const st = this.stats;
    const mo = s0 * KEY_WORDS;
    const w0 = this.words[mo];
    const w1 = this.words[mo + this.nwords[s0] - 1];
    for (let j = 0; j < m; j++) {
      const f = ~slots[2 * ((home[j] >>> 8) & sm)];
      if (f >= 0) acc ^= fk[f * KEY_WORDS + w0] ^ fk[f * KEY_WORDS + w1] ^ st[f * STAT_WORDS];
    }
    this.touched = acc;
    if (this.subCount > 1) {
      for (let j = 0; j < m; j++) out[j] = this.lookup(key, idx[j] * KEY_WORDS);
      return;
    }
    // One subtable: its probe with the hash made above (lookupSpecialized's, without the hash again).
    for (let j = 0; j < m; j++) {
      const f = this.find(key, idx[j] * KEY_WORDS, s0, home[j]);
      if (f >= 0) this.subHits[s0]++;
      out[j] = f;
    }
  }

  /** Slots in use (less one) from which lookupBatch reads ahead (TOUCH_SLOTS; a knob for tests). */
  touchSlots = TOUCH_SLOTS;
  /** Batches looked up by lookupBatchTouched. */
  touchedBatches = 0;
  /** lookupBatchTouched's hashes (grown to a batch's size once). */
  private home = new Int32Array(0);
  /** What lookupBatchTouched's reads summed to (kept: reads whose value is not used could be dropped). */
  touched = 0;

  /** Whether key[ko..] matches flow f (its key under its subtable's mask); false for a removed flow. */
  matches(key: Uint32Array, ko: number, f: number): boolean {
    const s = this.sub[f];
    if (s < 0) return false;
    // (The mask's word list, a loop: the signature-match cache's hits come from any subtable, see hashOf.)
    const m = this.mask;
    const mo = s * KEY_WORDS;
    const words = this.words;
    const nw = this.nwords[s];
    const fk = this.key;
    const fo = f * KEY_WORDS;
    for (let j = 0; j < nw; j++) {
      const w = words[mo + j];
      if (((key[ko + w] ^ fk[fo + w]) & m[mo + w]) !== 0) return false;
    }
    return true;
  }

  // Slow path: everything below runs per installed flow, not per packet.

  /** The subtable whose mask is mask[mo..] (made if none is), or -1 when all are taken. */
  private subtableFor(mask: Uint32Array, mo = 0): number {
    // Installs come in runs of one mask: the last one's subtable first.
    const last = this.lastSub;
    if (last < this.subCount && this.sameMask(last, mask, mo)) return last;
    for (let s = 0; s < this.subCount; s++) {
      if (this.sameMask(s, mask, mo)) return (this.lastSub = s);
    }
    // Reuse an empty subtable's slot before taking a new one.
    for (let s = 0; s < this.subCount; s++) {
      if (this.subFlows[s] === 0) { this.setMask(s, mask, mo); return (this.lastSub = s); }
    }
    if (this.subCount === MAX_SUBTABLES) return -1;
    const s = this.subCount++;
    this.order[s] = s;
    this.setMask(s, mask, mo);
    if (this.subCount === 2) {
      this.bloomKept = true;
      this.rebuildBloom();
    }
    return (this.lastSub = s);
  }

  private lastSub = 0;

  private sameMask(s: number, mask: Uint32Array, mo: number): boolean {
    return sameKey(this.mask, s * KEY_WORDS, mask, mo);
  }

  private setMask(s: number, mask: Uint32Array, mo = 0): void {
    let nw = 0;
    for (let j = 0; j < KEY_WORDS; j++) {
      this.mask[s * KEY_WORDS + j] = mask[mo + j];
      if (mask[mo + j] !== 0) this.words[s * KEY_WORDS + nw++] = j;
    }
    this.nwords[s] = nw;
    this.subHits[s] = 0;
    this.maskSerialOf[s] = ++this.maskSerial;
    this.specialize(s);
    this.lookupChanged(true);
  }

  /**
   * Installs (or replaces the actions of) the flow `key/mask → act`. Returns
   * the flow index, -1 when no subtable is free, or FULL (quarantined, no index left).
   */
  install(key: Uint32Array, mask: Uint32Array, act: number, now: number): number {
    return this.installAt(key, 0, mask, 0, act, now);
  }

  /**
   * Slow path: on (before a batch is switched), removed flows' indices are
   * held back; off (after it: as many offs as ons), they are free again.
   */
  quarantine(on: boolean): void {
    this.quarantineDepth += on ? 1 : -1;
    this.quarantined = this.quarantineDepth > 0;
    if (this.quarantined) return;
    while (this.heldTop > 0) this.freeList[this.freeTop++] = this.held[--this.heldTop];
    // Back to the capacity.
    if (this.count > this.capacity) this.evict(this.count - this.capacity);
  }

  private quarantineDepth = 0;

  /**
   * install, of the key at key[ko..] (any key the flow covers: it is
   * masked here) and the mask at mask[mo..]; sub: the subtable of that mask
   * when the caller knows it (the last install's, of the same mask), else -1.
   */
  installAt(key: Uint32Array, ko: number, mask: Uint32Array, mo: number, act: number, now: number, sub = -1): number {
    const s = sub >= 0 ? sub : this.subtableFor(mask, mo);
    if (s < 0) return -1;
    const h = this.maskedHash(key, ko, s);
    const old = this.find(key, ko, s, h);
    if (old >= 0) {
      // New actions: to the exact-match cache (and what its users keep with its entries), a new flow.
      if (this.act[old] !== act) {
        this.gen[old]++;
        this.genChanges++;
      }
      this.act[old] = act;
      return old;
    }
    // Quarantined (a batch being switched), the table may hold up to `spare` flows more till the batch ends.
    if (this.count >= this.capacity && !this.quarantined) this.evict(this.count - this.capacity + 1);
    if (this.freeTop === 0 && this.fresh === this.indices) return FULL; // (quarantined: every spare index taken)
    // Before the new flow is live: growSlots puts every live flow back, and this one would then go in twice.
    if (2 * (this.count + 1) > this.slotMask + 1 && this.slotMask + 1 < this.slotMax) this.growSlots();
    const f = this.freeTop > 0 ? this.freeList[--this.freeTop] : this.fresh++;
    const fo = f * KEY_WORDS;
    const fk = this.key;
    // (Masked by the subtable's own mask: the same as mask[mo..].) The index held a key of this mask, or none:
    // the mask's words alone; else every word (the old key's others cleared).
    const serial = this.maskSerialOf[s];
    const had = this.keyMask[f];
    if (had === serial || had === 0) {
      if (this.specialized) this.copyOf[s](fk, fo, key, ko);
      else this.copyWords(fk, fo, key, ko, s);
    } else {
      const m = this.mask;
      const so = s * KEY_WORDS;
      for (let j = 0; j < KEY_WORDS; j++) fk[fo + j] = key[ko + j] & m[so + j];
    }
    this.keyMask[f] = serial;
    this.sub[f] = s;
    this.act[f] = act;
    this.fhash[f] = h;
    this.stats[f * STAT_WORDS + ST_PACKETS] = 0;
    this.stats[f * STAT_WORDS + ST_BYTES] = 0;
    this.stats[f * STAT_WORDS + ST_USED] = now;
    this.stats[f * STAT_WORDS + ST_SEEN] = 1;
    this.live[f] = 1;
    if (this.bloomKept) this.bloom[(h >>> 5) & this.bloomMask] |= bloomBits(h);
    let pos = (h >>> 8) & this.slotMask;
    while (this.slots[2 * pos] !== ~EMPTY) pos = (pos + 1) & this.slotMask;
    this.slots[2 * pos] = ~f;
    this.slots[2 * pos + 1] = (h & ~0xff) | s;
    this.subFlows[s]++;
    this.count++;
    return f;
  }

  // installAt's copy with many subtables (see hashOf): the mask's words, a loop over its word list.
  private copyWords(fk: Uint32Array, fo: number, key: Uint32Array, ko: number, s: number): void {
    const m = this.mask;
    const mo = s * KEY_WORDS;
    const words = this.words;
    const nw = this.nwords[s];
    for (let j = 0; j < nw; j++) {
      const w = words[mo + j];
      fk[fo + w] = key[ko + w] & m[mo + w];
    }
  }

  /** Doubles the slots in use and puts every live flow back (slow path: once per doubling of the flows). */
  private growSlots(): void {
    const n = (this.slotMask + 1) * 2;
    this.slots.fill(0, 0, 2 * n);
    this.slotMask = n - 1;
    for (let f = 0; f < this.fresh; f++) {
      if (!this.live[f]) continue;
      const h = this.fhash[f];
      let pos = (h >>> 8) & this.slotMask;
      while (this.slots[2 * pos] !== ~EMPTY) pos = (pos + 1) & this.slotMask;
      this.slots[2 * pos] = ~f;
      this.slots[2 * pos + 1] = (h & ~0xff) | this.sub[f];
    }
  }

  /** The flow with exactly this mask and (masked) key, or -1. */
  findExact(key: Uint32Array, mask: Uint32Array): number {
    for (let s = 0; s < this.subCount; s++) {
      if (this.sameMask(s, mask, 0)) return this.find(key, 0, s, this.maskedHash(key, 0, s));
    }
    return -1;
  }

  /** Removes the flows not used since `before` (idle timeout); returns how many. */
  expire(before: number): number {
    let n = 0;
    for (let f = 0; f < this.fresh; f++) {
      if (this.live[f] && this.stats[f * STAT_WORDS + ST_USED] < before) {
        this.remove(f);
        n++;
      }
    }
    this.expired += n;
    return n;
  }

  /** Removes flow f (backward-shift deletion keeps probe chains whole). */
  remove(f: number): void {
    if (!this.live[f]) return;
    const sm = this.slotMask;
    const slots = this.slots;
    const nf = ~f;
    let pos = (this.fhash[f] >>> 8) & sm;
    while (slots[2 * pos] !== nf) pos = (pos + 1) & sm;
    let hole = pos;
    for (let next = (hole + 1) & sm; ; next = (next + 1) & sm) {
      const e = slots[2 * next];
      if (e === ~EMPTY) break;
      // The entry's home from its tag (the hash's bits 8 and up): no read of the flow's own arrays.
      const tag = slots[2 * next + 1];
      // Move the entry back if its home is not in (hole, next].
      if (((next - ((tag >>> 8) & sm)) & sm) >= ((next - hole) & sm)) {
        slots[2 * hole] = e;
        slots[2 * hole + 1] = tag;
        hole = next;
      }
    }
    slots[2 * hole] = ~EMPTY;
    this.live[f] = 0;
    this.gen[f]++;
    this.genChanges++;
    this.subFlows[this.sub[f]]--;
    this.sub[f] = -1; // (the signature-match cache reads liveness here)
    if (this.quarantined) this.held[this.heldTop++] = f;
    else this.freeList[this.freeTop++] = f;
    this.count--;
    if (this.bloomKept && ++this.bloomStale > this.count + (this.indices >>> 2)) this.rebuildBloom();
  }

  /** The Bloom filter made again from the live flows' hashes (slow path: see bloom). */
  private rebuildBloom(): void {
    const bloom = this.bloom;
    const bm = this.bloomMask;
    const live = this.live;
    const fhash = this.fhash;
    bloom.fill(0);
    for (let f = 0; f < this.fresh; f++) {
      if (live[f] === 0) continue;
      const h = fhash[f] | 0;
      bloom[(h >>> 5) & bm] |= bloomBits(h);
    }
    this.bloomStale = 0;
    this.bloomRebuilds++;
  }

  /**
   * Removes n flows (all when fewer), chosen by the CLOCK (see the top): the
   * hand passes over a flow hit since its last visit, noting its count, and
   * removes the first not hit. Two laps at most: after one, every flow's
   * count is noted.
   */
  evict(n: number): void {
    const live = this.live;
    const stats = this.stats;
    const end = this.fresh;
    let hand = this.hand;
    let removed = 0;
    for (let visits = 0; removed < n && visits < 2 * end + 1; visits++) {
      if (hand >= end) hand = 0;
      const f = hand++;
      if (live[f] === 0) continue;
      const o = f * STAT_WORDS;
      const p = stats[o + ST_PACKETS];
      if (p > stats[o + ST_SEEN]) {
        stats[o + ST_SEEN] = p; // hit since the last visit: a second chance
        continue;
      }
      this.remove(f);
      removed++;
    }
    this.hand = hand;
    this.evicted += removed;
  }

  packetsOf(f: number): number { return this.stats[f * STAT_WORDS + ST_PACKETS]; }
  bytesOf(f: number): number { return this.stats[f * STAT_WORDS + ST_BYTES]; }
  usedOf(f: number): number { return this.stats[f * STAT_WORDS + ST_USED]; }

  /** Counts one packet of `len` bytes on flow f at time now; returns which packet of the flow it is. */
  hit(f: number, len: number, now: number): number {
    const st = this.stats;
    const o = f * STAT_WORDS;
    st[o + ST_BYTES] += len;
    st[o + ST_USED] = now;
    return ++st[o + ST_PACKETS];
  }

  /** Removes every flow. */
  clear(): void {
    for (let f = 0; f < this.fresh; f++) if (this.live[f]) this.remove(f);
  }

  /** Re-sorts subtables by hits, most first (call now and then, not per packet). */
  sortSubtables(): void {
    const o = Array.from(this.order.subarray(0, this.subCount));
    o.sort((a, b) => this.subHits[b] - this.subHits[a]);
    for (let t = 0; t < o.length; t++) {
      if (this.order[t] !== o[t]) this.lookupChanged(false);
      this.order[t] = o[t];
    }
  }
}
