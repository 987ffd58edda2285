/**
 * BatchFlows: the megaflows the FPAG decided for one batch of upcalls
 * (datapath/upcall.ts UpcallBatch), kept as the FlowInstalls message that
 * answers the batch, and indexed so that a later key of the same batch that
 * one of them covers takes it instead of a decision of its own: a burst of
 * new connections that share a megaflow costs one decision, as the issue's
 * "the FPAG's decision for packets of the same megaflow is made once".
 *
 * The index is a small tuple space: the batch's distinct masks (at most
 * MAX_MASKS; a megaflow of another is installed but not indexed, so a key it
 * covers is decided again — to the same flow, which the datapath's install
 * then finds: more work, never another answer), and one open-addressing
 * table of (mask, hash of the key under it) → flow. Its arrays grow (by
 * doubling) to the most flows a batch has had; nothing is allocated per key.
 */
import type { Action } from '../datapath/actions/action-sets.js';
import { KEY_WORDS, copyKey, sameKey } from '../datapath/classifier/flow-key.js';
import { Bypass } from '../datapath/bypass.js';
import { fmix } from '../datapath/classifier/flow-table.js';
import type { FlowInstalls } from '../datapath/upcall.js';

const MAX_MASKS = 16;
/**
 * Covering's bypass (as the exact-match cache's, datapath/classifier/emc.ts):
 * over each window of COVER_WINDOW keys looked for, a key covered less than
 * one time in COVER_HIT_INV (every key its own megaflow: a megaflow per
 * connection) makes batches skip the index — no hash, no probe, nothing
 * indexed — but one in 16, which keeps measuring. A key a flow of its batch
 * would have covered is then decided again: to the same flow (the
 * datapath's install finds it), so only the work differs, never an answer.
 * Measured: ~6 % of a set-up (1 M new connections, inline FPAG).
 */
const COVER_WINDOW = 4096;
const COVER_HIT_INV = 64;
/** While bypassed, one batch in this many looks (and measures). */
const COVER_PROBE_EVERY = 16;

export class BatchFlows {
  /**
   * The answer: flow j is its key at keys[j * KEY_WORDS..] under the mask
   * at masks[maskAt[j] * KEY_WORDS..] → actions[j]. The batch's masks go
   * once each (the first MAX_MASKS; a flow of another has a copy of its own).
   * Keys in place (begin(keys): a whole batch, its keys staying put till
   * the answer is taken): flow j's key is the batch's key keyOf[j]
   * (keys is the batch's, keyAt is keyOf), not a copy (a copy of 19 words
   * a set-up saved).
   */
  readonly message: FlowInstalls & { maskAt: Int32Array; keyOf: Int32Array } = { type: 'flow-installs', count: 0, keys: new Uint32Array(0), masks: new Uint32Array(0), actions: [], maskAt: new Int32Array(0), keyOf: new Int32Array(0) };
  /** Masks in message.masks. */
  maskCount = 0;
  /** Keys a flow of this batch covered (no decision made for them). */
  covered = 0;
  private readonly maskWords = new Uint32Array(MAX_MASKS * KEY_WORDS);
  /** Per indexed mask: the words that are not 0 (nz), how many (nzCount). */
  private readonly nz = new Uint8Array(MAX_MASKS * KEY_WORDS);
  private readonly nzCount = new Uint8Array(MAX_MASKS);
  private masks = 0;
  /** The key covering last looked for (a reference: the caller's array), the masks it tried, its hash under each. */
  private lastKey: Uint32Array | null = null;
  private lastMasks = 0;
  private readonly lastHash = new Int32Array(MAX_MASKS);
  /** Slots: flow + 1, 0 empty; twice the flows the arrays hold (a power of two). */
  private slots = new Int32Array(0);
  private slotHash = new Int32Array(0);
  /** Per flow: its indexed mask, or -1. */
  private flowMask = new Int8Array(0);

  /** Covering's bypass (see COVER_WINDOW; datapath/bypass.ts). */
  private readonly bypass = new Bypass(COVER_WINDOW, COVER_HIT_INV, COVER_PROBE_EVERY, COVER_HIT_INV, 32);
  /** Whether covering is bypassed; `skipping`: this batch skips it. */
  get bypassed(): boolean {
    return this.bypass.bypassed;
  }
  skipping = false;
  /** This batch's keys looked for, and those covered (the bypass's tries and hits). */
  private batchKeys = 0;
  private batchCovered = 0;

  /** The batch's own keys, where begin() was given them (message.keys is that array, message.keyAt keyOf); else null. */
  inPlace: Uint32Array | null = null;
  /** message.keys while the keys are copied (kept across batches: begin(keys) points message.keys elsewhere). */
  private ownKeys = new Uint32Array(0);

  /**
   * Starts a batch (its keys may come in several calls: covers and add go on
   * until the next begin). `keys`: the whole batch's keys, staying put till
   * its answer is taken — flows name them instead of copying them (add's
   * keyIndex is the key's index there).
   */
  begin(keys: Uint32Array | null = null): void {
    this.inPlace = keys;
    const msg = this.message;
    if (keys !== null) {
      msg.keys = keys;
      msg.keyAt = msg.keyOf;
    } else {
      msg.keys = this.ownKeys;
      msg.keyAt = undefined;
    }
    // The last batch, if it looked, is counted (a batch that measures while bypassed may end it at once).
    if (!this.skipping) this.bypass.count(this.batchKeys, this.batchCovered);
    this.batchKeys = 0;
    this.batchCovered = 0;
    this.skipping = !this.bypass.tries();
    const m = this.message;
    m.count = 0;
    // (actions keeps its length: flows are written over, so its room is not given back and taken again a batch.)
    this.masks = 0;
    this.maskCount = 0;
    this.lastKey = null;
    this.slots.fill(0);
  }

  /** The flows added since the batch's from-th, as a message of their own (views of this one's arrays). */
  since(from: number): FlowInstalls {
    const m = this.message;
    const keyOf = m.keyOf.subarray(from);
    // (Keys in place: the batch's keys whole, each flow's named by keyAt; else the copies from the from-th on.)
    const inPlace = this.inPlace !== null;
    return { type: 'flow-installs', count: m.count - from, keys: inPlace ? m.keys : m.keys.subarray(from * KEY_WORDS), ...(inPlace ? { keyAt: keyOf } : {}), masks: m.masks, actions: m.actions.slice(from, m.count), first: from, maskAt: m.maskAt.subarray(from), keyOf };
  }

  // Slow path: room for twice the flows (the index rebuilt for the new slot count).
  private grow(): void {
    const m = this.message;
    const cap = Math.max(64, 2 * this.flowMask.length);
    const keys = new Uint32Array(cap * KEY_WORDS);
    keys.set(this.ownKeys);
    this.ownKeys = keys;
    if (this.inPlace === null) m.keys = keys;
    // (A flow adds a mask at most: its own when the batch has MAX_MASKS others.)
    const masks = new Uint32Array((cap + MAX_MASKS) * KEY_WORDS);
    masks.set(m.masks);
    m.masks = masks;
    const fm = new Int8Array(cap);
    fm.set(this.flowMask);
    this.flowMask = fm;
    const at = new Int32Array(cap);
    at.set(m.maskAt);
    m.maskAt = at;
    const ko = new Int32Array(cap);
    ko.set(m.keyOf);
    m.keyOf = ko;
    if (this.inPlace !== null) m.keyAt = ko;
    this.slots = new Int32Array(2 * cap);
    this.slotHash = new Int32Array(2 * cap);
    for (let f = 0; f < m.count; f++) if (fm[f] >= 0) this.index(f, this.hash(m.keys.subarray(this.keyOffset(f)), fm[f]));
  }

  // Slow path: flow f (its key hashing to h under its indexed mask) into the slots.
  private index(f: number, h: number): void {
    const slots = this.slots;
    const sm = slots.length - 1;
    let p = h & sm;
    while (slots[p] !== 0) p = (p + 1) & sm;
    slots[p] = f + 1;
    this.slotHash[p] = h;
  }

  /** Whether a flow of this batch already covers key[0..KEY_WORDS). */
  covers(key: Uint32Array): boolean {
    return this.covering(key) >= 0;
  }

  /** The index (in the message) of a flow of this batch that covers key[0..KEY_WORDS), or -1; counted in `covered`. */
  covering(key: Uint32Array): number {
    if (this.skipping) return -1;
    this.batchKeys++;
    const keys = this.message.keys;
    const slots = this.slots;
    const sm = slots.length - 1;
    this.lastKey = key;
    this.lastMasks = this.masks;
    for (let m = 0; m < this.masks; m++) {
      const h = this.hash(key, m);
      this.lastHash[m] = h;
      const mo = m * KEY_WORDS;
      const nw = this.nzCount[m];
      for (let p = h & sm; slots[p] !== 0; p = (p + 1) & sm) {
        const f = slots[p] - 1;
        if (this.slotHash[p] !== h || this.flowMask[f] !== m) continue;
        const fo = this.keyOffset(f);
        let j = 0;
        for (; j < nw; j++) {
          const w = this.nz[mo + j];
          if (((key[w] ^ keys[fo + w]) & this.maskWords[mo + w]) !== 0) break;
        }
        if (j === nw) {
          this.covered++;
          this.batchCovered++;
          this.lastMasks = m + 1; // (masks past m: no hash of this key computed)
          return f;
        }
      }
    }
    return -1;
  }

  /**
   * Adds the megaflow key & mask → actions (the key copied, the mask unless
   * the batch has it); returns its index in the message. keyIndex: the key's
   * index in its UpcallBatch (FlowInstalls.keyOf).
   */
  add(key: Uint32Array, mask: Uint32Array, actions: Action[], keyIndex = -1): number {
    const msg = this.message;
    if (msg.count === this.flowMask.length) this.grow();
    const f = msg.count++;
    if (this.inPlace === null) copyKey(msg.keys, f * KEY_WORDS, key, 0);
    else if (keyIndex < 0) throw new RangeError('BatchFlows.add: keys in place need the key\'s index');
    if (f < msg.actions.length) msg.actions[f] = actions;
    else msg.actions.push(actions);
    msg.keyOf[f] = keyIndex;
    const at = this.maskAt(mask);
    msg.maskAt[f] = at;
    const m = at < MAX_MASKS ? at : -1;
    this.flowMask[f] = m;
    // (The key's hash under m, when covering just computed it: the same key, a mask it tried.)
    if (m >= 0 && !this.skipping) this.index(f, key === this.lastKey && m < this.lastMasks ? this.lastHash[m] : this.hash(key, m));
    return f;
  }

  // Where flow f's key is in message.keys.
  private keyOffset(f: number): number {
    return (this.inPlace === null ? f : this.message.keyOf[f]) * KEY_WORDS;
  }

  // Where `mask` is in the message's masks: among the indexed ones (the first MAX_MASKS), else added
  // (and indexed while there is room).
  private maskAt(mask: Uint32Array): number {
    const mw = this.maskWords;
    for (let m = 0; m < this.masks; m++) {
      const mo = m * KEY_WORDS;
      if (sameKey(mw, mo, mask, 0)) return m;
    }
    const at = this.maskCount++;
    const to = this.message.masks;
    for (let w = 0; w < KEY_WORDS; w++) to[at * KEY_WORDS + w] = mask[w];
    if (this.masks === MAX_MASKS) return at;
    const m = this.masks++; // (= at: every mask before it is an indexed one)
    const mo = m * KEY_WORDS;
    let n = 0;
    for (let w = 0; w < KEY_WORDS; w++) {
      mw[mo + w] = mask[w];
      if (mask[w] !== 0) this.nz[mo + n++] = w;
    }
    this.nzCount[m] = n;
    return m;
  }

  // The hash of key under indexed mask m.
  private hash(key: Uint32Array, m: number): number {
    const mo = m * KEY_WORDS;
    const nw = this.nzCount[m];
    let h = m;
    for (let j = 0; j < nw; j++) {
      const w = this.nz[mo + j];
      h = Math.imul(h ^ (key[w] & this.maskWords[mo + w]), 0x9e3779b1) + w;
    }
    // (An int32: a uint32 above 2^31 passed between functions is a heap number, allocated: ~2 a key.)
    return fmix(h ^ nw) | 0;
  }
}
