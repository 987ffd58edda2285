/**
 * ChunkRing: a classic pcap read ONCE by N datapath workers (threads) and
 * shared, each worker switching only its share of every chunk.
 *
 * The capture is cut into chunks of whole records; chunk c lives in slot
 * c % K of one SharedArrayBuffer that every worker views. Whoever needs a
 * chunk that is not there yet indexes the next one (the reader role goes to
 * whichever worker is free, so the read, the record walk and the hashing are
 * split between the workers as the switching is):
 *
 *   claim c   (CAS next-claim c → c+1; only once chunk c-1 is walked, so its
 *              start is known, and slot c % K is free: every owner of c-K is done)
 *   read      pread [start, start + slot) into the slot
 *   walk      the whole records: their data offsets into recOff[0 .. n);
 *              publish where chunk c+1 starts ("walked"): another worker may
 *              now claim c+1 while this one hashes
 *   split     per record, flowHash → its worker (spread.ts); the positions,
 *              grouped by worker and in input order, into list[]
 *   ready     publish; each owner fills batches from its part of list[]
 *              (the batches point into the slot: no packet byte is copied)
 *   done      the last owner to finish frees the slot for chunk c+K
 *
 *     slot 0        slot 1        slot 2        slot 3      (K slots, the shared block's head)
 *   ┌────────────┬────────────┬────────────┬────────────┐
 *   │ c=4 ready  │ c=5 split  │ c=2 in use │ c=3 ready  │
 *   └────────────┴────────────┴────────────┴────────────┘
 *     recOff[]: every record's data offset; list[]: positions, worker 0's, then 1's…
 *
 * Owners: the workers joined when the chunk was indexed (read from the
 * shared `joined` flags before "walked" is published, so the set only grows
 * from chunk to chunk). Records of a worker not joined yet go to worker 0.
 * While worker 0 is alone a chunk is not hashed at all (`all`).
 *
 * Faults (a cut or absurd record) end the capture at that chunk: its
 * records before the fault are switched, and the fault is kept in the
 * shared words (kind, file offset, the numbers its message names) for the
 * caller to report as CaptureReader would.
 *
 * Fast path: fill, finish, ready. Slow path: tryIndex (once a chunk). No
 * allocation after the constructor.
 */
import { closeSync, constants, openSync, readSync } from 'node:fs';
import type { PacketBatch } from './batch.js';
import { flowHash, workerOf } from './spread.js';

// Global words (Int32).
const G_NEXT_CLAIM = 0;
const G_WALKED = 1; // chunks walked: chunk G_WALKED may be claimed
const G_END = 2; // chunks in the capture once known, else -1
const G_FAULT = 3; // FAULT_* or 0
const G_MAX_RECS = 4; // most records a chunk may hold (0: as many as fit)
const G_JOINED = 8; // + worker: 1 once it takes its own share
// Per-slot words (Int32), at slotWord(s).
const S_FREE_FOR = 0; // the chunk that may claim this slot next
const S_READY = 1; // the chunk indexed here, or -1
const S_DONE = 2; // owners done with it
const S_OWNERS = 3;
const S_RECS = 4;
const S_ALL = 5; // 1: not split, every record worker 0's
const S_LIST = 8; // + 2w: start of worker w's part of list[], + 2w + 1: its length
// Float64 words: globals, then per slot.
const F_NEXT_START = 0;
const F_NEXT_FIRST = 1;
const F_FAULT_OFF = 2;
const F_FAULT_A = 3;
const F_FAULT_B = 4;
const F_CUT = 5; // a record index where a chunk must end (a join point), or -1
const F_SLOT = 8; // + 2s: first record index of slot s's chunk, + 2s + 1: its file offset

/** Kinds of fault (the messages are CaptureReader's). */
export const FAULT_HEADER_CUT = 1;
export const FAULT_TOO_LONG = 2;
export const FAULT_RECORD_CUT = 3;
export const FAULT_IO = 4;

/**
 * A chunk's size (bytes), unless a record may be larger (then one record of
 * the largest size): one worker's reader's chunk (replay.ts CHUNK), so that
 * a capture one worker reads in one chunk is one chunk here too (its
 * batches, and so the capture clock's steps and the flows' expiry, as alike
 * as they can be). 256 KiB x 8 slots against 1 MiB x 8 in replays
 * (2026-12-04): equal within the noise.
 */
export const RING_CHUNK = 1 << 20;
/** Slots in the ring (4 when a slot must be larger than 4 MiB). */
export const RING_SLOTS = 8;

/** What every worker of one ring is handed (a structured clone shares the buffers). */
export interface ChunkRingShared {
  /** The slots (slots × slotBytes), then each worker's own region (ownBytes each: its tx buffers). */
  mem: SharedArrayBuffer;
  ctl: SharedArrayBuffer;
  f64: SharedArrayBuffer;
  /** Per slot: recOff (maxRecs words), then list (maxRecs words). */
  index: SharedArrayBuffer;
  slots: number;
  slotBytes: number;
  maxRecs: number;
  workers: number;
  ownBytes: number;
  capture: string;
  /** The file is little-endian (its record headers are what a pcap writer writes: batch.rawPcapLE). */
  le: boolean;
  /** Largest captured length a record may claim (CaptureReader's limit for this file). */
  limit: number;
}

/**
 * The shared block for a classic pcap of `fileSize` bytes (its header 24),
 * `workers` workers, each with `ownBytes` of its own after the slots.
 */
export function chunkRingShared(capture: string, fileSize: number, le: boolean, limit: number, workers: number, ownBytes: number): ChunkRingShared {
  const whole = Math.ceil(Math.max(fileSize, 64) / 64) * 64;
  // A slot holds at least one record of the largest size allowed, and never more than the whole file.
  const slotBytes = Math.min(whole, Math.max(RING_CHUNK, Math.ceil((limit + 16) / 64) * 64));
  const slots = slotBytes > 4 * RING_CHUNK + 64 ? 4 : RING_SLOTS;
  const maxRecs = (slotBytes >> 4) + 1;
  ownBytes = Math.ceil(ownBytes / 64) * 64;
  const sh: ChunkRingShared = {
    mem: new SharedArrayBuffer(slots * slotBytes + workers * ownBytes),
    ctl: new SharedArrayBuffer(4 * (G_JOINED + workers + slots * slotWords(workers))),
    f64: new SharedArrayBuffer(8 * (F_SLOT + 2 * slots)),
    index: new SharedArrayBuffer(4 * slots * 2 * maxRecs),
    slots, slotBytes, maxRecs, workers, ownBytes, capture, le, limit,
  };
  const ctl = new Int32Array(sh.ctl);
  ctl[G_END] = -1;
  for (let s = 0; s < slots; s++) {
    ctl[G_JOINED + workers + s * slotWords(workers) + S_FREE_FOR] = s;
    ctl[G_JOINED + workers + s * slotWords(workers) + S_READY] = -1;
  }
  ctl[G_JOINED] = 1; // worker 0 from the start
  const f = new Float64Array(sh.f64);
  f[F_NEXT_START] = 24;
  f[F_CUT] = -1;
  return sh;
}

function slotWords(workers: number): number {
  return S_LIST + 2 * workers;
}

export class ChunkRing {
  static readonly stageName = 'chunk-ring';
  /** The whole shared block as bytes (the arena's: batches point into it). */
  readonly bytes: Uint8Array;
  private readonly dv: DataView;
  private readonly ctl: Int32Array;
  private readonly f: Float64Array;
  private readonly idx: Uint32Array;
  private readonly owner: Uint8Array;
  private readonly counts: Int32Array;
  /** Who had joined when the chunk being indexed was claimed. */
  private readonly joined: Uint8Array;
  private readonly K: number;
  private readonly S: number;
  private readonly R: number;
  private readonly N: number;
  private readonly sw: number;
  private readonly le: boolean;
  private readonly limit: number;
  private fd: number;
  /** Called (slow path) when this worker has claimed chunk c, before it reads who has joined: worker 0 joins workers here. */
  onClaim: ((c: number, first: number) => void) | null = null;
  /** Called after a chunk's walk (its recOff is set), before the next chunk may be claimed: events by time are placed here. */
  onWalk: ((slot: number, first: number, n: number) => void) | null = null;
  /** Rung when a chunk becomes ready or a slot free (the caller's doorbell). */
  bell: () => void = () => undefined;

  /** `bytes`: the caller's view of sh.mem (an arena's, so that packets in a slot are in its arena). */
  constructor(readonly sh: ChunkRingShared, readonly me: number, bytes: Uint8Array) {
    this.bytes = bytes;
    this.dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.ctl = new Int32Array(sh.ctl);
    this.f = new Float64Array(sh.f64);
    this.idx = new Uint32Array(sh.index);
    this.owner = new Uint8Array(sh.maxRecs);
    this.counts = new Int32Array(sh.workers);
    this.joined = new Uint8Array(sh.workers);
    this.K = sh.slots;
    this.S = sh.slotBytes;
    this.R = sh.maxRecs;
    this.N = sh.workers;
    this.sw = slotWords(sh.workers);
    this.le = sh.le;
    this.limit = sh.limit;
    try {
      this.fd = openSync(sh.capture, constants.O_RDONLY);
    } catch (e) {
      throw new Error(`${sh.capture}: cannot open: ${(e as Error).message}`);
    }
  }

  private sword(c: number, w: number): number {
    return G_JOINED + this.N + (c % this.K) * this.sw + w;
  }

  /** Marks worker k joined: chunks claimed from now on give it its share. */
  join(k: number): void {
    Atomics.store(this.ctl, G_JOINED + k, 1);
  }

  /** A chunk index at which the walk must end a chunk (a join point), or -1. */
  cutAt(record: number): void {
    this.f[F_CUT] = record;
  }

  /** Most records a chunk claimed from now on may hold (0: as many as fit): small while a worker is to join at the next claim. */
  maxRecords(n: number): void {
    Atomics.store(this.ctl, G_MAX_RECS, n);
  }

  /** Chunk c is indexed and its records may be switched. */
  ready(c: number): boolean {
    return Atomics.load(this.ctl, this.sword(c, S_READY)) === c;
  }

  /** Chunk c is past the capture's end (known once the last chunk is walked). */
  ended(c: number): boolean {
    const end = Atomics.load(this.ctl, G_END);
    return end >= 0 && c >= end;
  }

  /** Records before chunk c (c ready). */
  first(c: number): number {
    return this.f[F_SLOT + 2 * (c % this.K)];
  }

  /** Records in chunk c (c ready). */
  records(c: number): number {
    return this.ctl[this.sword(c, S_RECS)];
  }

  /** This worker's records in chunk c (c ready). */
  ownCount(c: number): number {
    if (this.ctl[this.sword(c, S_ALL)] === 1) return this.me === 0 ? this.ctl[this.sword(c, S_RECS)] : 0;
    return this.ctl[this.sword(c, S_LIST + 2 * this.me + 1)];
  }

  /** Position in chunk c of this worker's j-th record. */
  posOf(c: number, j: number): number {
    if (this.ctl[this.sword(c, S_ALL)] === 1) return j;
    const s = c % this.K;
    return this.idx[s * 2 * this.R + this.R + this.ctl[this.sword(c, S_LIST + 2 * this.me)] + j];
  }

  /** Bytes of the file walked so far (for progress). */
  get bytesWalked(): number {
    return this.f[F_NEXT_START];
  }

  /** Records walked so far. */
  get recordsWalked(): number {
    return this.f[F_NEXT_FIRST];
  }

  /** The fault that ended the capture: kind (0 none), file offset, and the two numbers its message names. */
  fault(): { kind: number; offset: number; a: number; b: number } {
    return { kind: Atomics.load(this.ctl, G_FAULT), offset: this.f[F_FAULT_OFF], a: this.f[F_FAULT_A], b: this.f[F_FAULT_B] };
  }

  /**
   * Fast path: this worker's records [from, to) of chunk c into `b` (its
   * arrays overwritten). `full`: every rx fact in the arrays; else a lazy
   * fill (batch.unfilled: offsets and packet 0's time; little-endian only).
   */
  fill(b: PacketBatch, c: number, from: number, to: number, full: boolean, inPpid: number): number {
    const s = c % this.K;
    const idx = this.idx;
    const recBase = s * 2 * this.R;
    const off = b.off;
    const n = to - from;
    b.batchSetBuffer(this.bytes);
    b.rawPcapLE = this.le;
    b.vnet = false;
    if (this.ctl[this.sword(c, S_ALL)] === 1) {
      for (let i = 0; i < n; i++) off[i] = idx[recBase + from + i];
    } else {
      const list = recBase + this.R + this.ctl[this.sword(c, S_LIST + 2 * this.me)] + from;
      for (let i = 0; i < n; i++) off[i] = idx[recBase + idx[list + i]];
    }
    b.count = n;
    const dv = this.dv;
    const le = this.le;
    if (!full && le) {
      if (n > 0) {
        const p = off[0] - 16;
        b.tsA[0] = dv.getUint32(p, true);
        b.tsB[0] = dv.getUint32(p + 4, true);
      }
      b.unfilled = true;
      b.unfilledIn = inPpid;
      return n;
    }
    b.unfilled = false;
    for (let i = 0; i < n; i++) {
      const p = off[i] - 16;
      const incl = dv.getUint32(p + 8, le);
      const orig = dv.getUint32(p + 12, le); // the walk made it >= incl
      b.caplen[i] = incl;
      b.wirelen[i] = orig;
      b.tsA[i] = dv.getUint32(p, le);
      b.tsB[i] = dv.getUint32(p + 4, le);
    }
    b.ifIndex.fill(0, 0, n);
    b.inPpid.fill(inPpid, 0, n);
    b.drop.fill(0, 0, n);
    return n;
  }

  /** This worker is done with chunk c; the last owner frees its slot. */
  finish(c: number): void {
    if (Atomics.add(this.ctl, this.sword(c, S_DONE), 1) + 1 === this.ctl[this.sword(c, S_OWNERS)]) {
      Atomics.store(this.ctl, this.sword(c, S_FREE_FOR), c + this.K);
      this.bell();
    }
  }

  /**
   * Slow path: claims and indexes the next chunk when it may be (its start
   * known, its slot free, no one else took it) and it is not past `upTo`.
   * False when there is none to take now.
   */
  tryIndex(upTo: number): boolean {
    const ctl = this.ctl;
    const d = Atomics.load(ctl, G_NEXT_CLAIM);
    if (d > upTo || Atomics.load(ctl, G_WALKED) < d) return false;
    const end = Atomics.load(ctl, G_END);
    if (end >= 0 && d >= end) return false;
    if (Atomics.load(ctl, this.sword(d, S_FREE_FOR)) !== d) return false;
    if (Atomics.compareExchange(ctl, G_NEXT_CLAIM, d, d + 1) !== d) return false;
    this.onClaim?.(d, this.f[F_NEXT_FIRST]);
    this.index(d);
    return true;
  }

  private index(d: number): void {
    const ctl = this.ctl;
    const f = this.f;
    const s = d % this.K;
    const base = s * this.S;
    const S = this.S;
    const start = f[F_NEXT_START];
    const first = f[F_NEXT_FIRST];
    const bytes = this.bytes;
    const dv = this.dv;
    const le = this.le;
    const limit = this.limit;
    // Read.
    let got = 0;
    let eof = false;
    let fault = 0;
    while (got < S) {
      let n: number;
      try {
        n = readSync(this.fd, bytes, base + got, S - got, start + got);
      } catch {
        fault = FAULT_IO;
        this.setFault(FAULT_IO, start + got, 0, 0);
        break;
      }
      if (n === 0) {
        eof = true;
        break;
      }
      got += n;
    }
    // Walk.
    const idx = this.idx;
    const recBase = s * 2 * this.R;
    const cut = f[F_CUT];
    const cap = Atomics.load(ctl, G_MAX_RECS);
    const most = Math.min(cut > first ? cut - first : Infinity, cap > 0 ? cap : Infinity);
    let p = 0;
    let n = 0;
    while (fault === 0 && n < most) {
      if (p + 16 > got) {
        if (eof && p < got) fault = this.setFault(FAULT_HEADER_CUT, start + p, got - p, 0);
        break;
      }
      const h = base + p;
      const incl = dv.getUint32(h + 8, le);
      if (incl > limit) {
        fault = this.setFault(FAULT_TOO_LONG, start + p, incl, limit);
        break;
      }
      if (p + 16 + incl > got) {
        if (eof) fault = this.setFault(FAULT_RECORD_CUT, start + p, got - p - 16, incl);
        break;
      }
      // As the reader: a wire length below the captured one becomes the captured one, in the header too.
      if (dv.getUint32(h + 12, le) < incl) dv.setUint32(h + 12, incl, le);
      idx[recBase + n++] = h + 16;
      p += 16 + incl;
    }
    // Not one whole record in a slot that holds the largest allowed: cannot happen; ends the capture rather than loop.
    if (n === 0 && fault === 0 && !eof) fault = this.setFault(FAULT_TOO_LONG, start, dv.getUint32(base + 8, le), limit);
    const last = fault !== 0 || (eof && p >= got);
    f[F_NEXT_START] = start + p;
    f[F_NEXT_FIRST] = first + n;
    f[F_SLOT + 2 * s] = first;
    f[F_SLOT + 2 * s + 1] = start;
    ctl[this.sword(d, S_RECS)] = n;
    this.onWalk?.(s, first, n);
    // Who owns this chunk: read before the next chunk may be claimed (so the set only grows).
    const N = this.N;
    const joined = this.joined;
    let owners = 0;
    for (let w = 0; w < N; w++) owners += joined[w] = Atomics.load(ctl, G_JOINED + w);
    if (last) Atomics.store(ctl, G_END, d + 1);
    Atomics.store(ctl, G_WALKED, d + 1);
    this.bell();
    // Split (not while worker 0 is alone).
    ctl[this.sword(d, S_ALL)] = owners === 1 ? 1 : 0;
    if (owners > 1) {
      const owner = this.owner;
      const counts = this.counts;
      counts.fill(0);
      for (let i = 0; i < n; i++) {
        const o = idx[recBase + i];
        let w = workerOf(flowHash(bytes, dv, o, dv.getUint32(o - 8, le)), N);
        if (joined[w] === 0) w = 0; // not joined yet: worker 0's
        owner[i] = w;
        counts[w]++;
      }
      // Each worker's part of list[]: starts by prefix sums, then the positions in input order.
      let at = 0;
      for (let w = 0; w < N; w++) {
        const c = counts[w];
        ctl[this.sword(d, S_LIST + 2 * w)] = at;
        ctl[this.sword(d, S_LIST + 2 * w + 1)] = c;
        counts[w] = at;
        at += c;
      }
      const list = recBase + this.R;
      for (let i = 0; i < n; i++) idx[list + counts[owner[i]]++] = i;
    }
    ctl[this.sword(d, S_OWNERS)] = owners;
    ctl[this.sword(d, S_DONE)] = 0;
    Atomics.store(ctl, this.sword(d, S_READY), d);
    this.bell();
  }

  private setFault(kind: number, offset: number, a: number, b: number): number {
    if (Atomics.compareExchange(this.ctl, G_FAULT, 0, kind) === 0) {
      this.f[F_FAULT_OFF] = offset;
      this.f[F_FAULT_A] = a;
      this.f[F_FAULT_B] = b;
    }
    return kind;
  }

  /** The data offset (in `bytes`) of record i of the chunk in slot s (for onWalk). */
  recordAt(s: number, i: number): number {
    return this.idx[s * 2 * this.R + i];
  }

  close(): void {
    if (this.fd >= 0) {
      closeSync(this.fd);
      this.fd = -1;
    }
  }
}
