/**
 * The FPAG on another thread (as on a SmartNIC's own cores): the datapath
 * and the FPAG then share nothing but messages.
 *
 *   main thread (datapath)                   worker thread (FPAG)
 *   a batch's misses, in parts → request     decide each part in turn, on its
 *   slots (a ring: up to SLOTS in flight) ─▶ shadow of the NIC state
 *   install each answer, switch its     ◀─── answers in reply slots: the flows
 *   packets while the next is decided        (naming the keys sent), or JSON
 *
 * The exchange goes through a SharedArrayBuffer with Atomics.wait/notify on
 * two counters (requests sent, requests answered); both sides poll before
 * they sleep. For the datapath a batch is a synchronous exchange (its missed
 * packets wait, in order; async: parked in datapath/upcall-queue.ts),
 * and the messages are the ControlMessage values an in-thread FPAG applies:
 * flow installs in words (encodeAnswer), anything else as JSON. The
 * worker's FPAG keeps a shadow Datapath (no traffic) as its view of ports,
 * mappings and tunnels.
 */
import { Worker, isMainThread, parentPort, receiveMessageOnPort, workerData, MessageChannel, type MessagePort } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { Datapath, type AsyncUpcalls, type TxPort } from '../datapath/datapath.js';
import { KEY_WORDS } from '../datapath/classifier/flow-key.js';
import { FpoError } from '../datapath/errors.js';
import { newUpcallBatch, type ControlMessage, type FlowInstalls, type UpcallBatch } from '../datapath/upcall.js';
import type { Action } from '../datapath/actions/action-sets.js';
import { Fpag } from './fpag.js';
import type { Topology } from './topology.js';

// The worker runs the compiled module (under a TypeScript test runner this file is the .ts source).
const HERE = fileURLToPath(import.meta.url);
const WORKER_FILE = HERE.endsWith('.ts') ? join(dirname(HERE), '..', 'dist', 'control', 'fpag-thread.js') : HERE;

/** Bytes of a reply slot's answer (words or JSON). */
const REPLY_BYTES = 2 << 20;
/** Keys a request carries at most. */
const REQ_KEYS = 1024;
/**
 * A batch's misses go in parts of this many keys, up to SLOTS requests in
 * flight: while the worker decides the parts after k, this thread installs
 * part k's flows and switches its packets. (One part a batch left the two
 * threads waiting for each other in turn.)
 */
export const PART_KEYS = 64;
/**
 * Requests in flight at most (a ring of request slots and reply slots, the
 * answer to request r in reply slot r % SLOTS): the datapath hands a batch's
 * parts over as it finds them and the worker decides them back to back. One
 * at a time, the worker had waited for the datapath to take each answer and
 * send the next part (measured, a million set-ups: idle 35-50 µs a request
 * against 22 µs of decisions). Async sends one request at a time (all that
 * pends: see `part`).
 */
const SLOTS = 4;
/**
 * Words of a request slot: the key count, whether it continues the last
 * request's batch, then REQ_KEYS in PPIDs, then the keys (KEY_WORDS words
 * each, from REQ_KEYS_AT: one copy in, and the worker decides on them where
 * they are).
 */
const REQ_HEAD = 2;
const REQ_KEYS_AT = REQ_HEAD + REQ_KEYS;
const REQ_WORDS = REQ_HEAD + REQ_KEYS * (1 + KEY_WORDS);
/** A reply slot: [length: -words or +JSON bytes][covered: of the request's keys, those a flow decided for an earlier one covered], then the answer. */
const REPLY_HEAD_BYTES = 8;
/** How long the datapath polls for an answer before it sleeps on it. */
const BUSY_SPIN_MS = 1;
/** How long the idle worker polls for the next request before it sleeps. */
const IDLE_SPIN_MS = 2;

/** Shared memory layout: ctrl words, the worker's failure, SLOTS request slots, SLOTS reply slots. */
const CTRL_BYTES = 32;
const FAIL_BYTES = 4096;
const REQ_AT = CTRL_BYTES + FAIL_BYTES;
const REPLY_AT = REQ_AT + SLOTS * 4 * REQ_WORDS;
const SAB_BYTES = REPLY_AT + SLOTS * (REPLY_HEAD_BYTES + REPLY_BYTES);
/** ctrl[0]: requests sent (request r in slot r % SLOTS); ctrl[1]: requests answered (the worker's count). */
const C_SENT = 0;
const C_DONE = 1;
/** ctrl[2]: 1 asks the worker to stop; ctrl[3]: the worker's start-up (waited on). */
const C_STOP = 2;
const C_START = 3;
/** ctrl[4]: the failure message's length (bytes in the fail area); ctrl[5]: 1 when the worker failed (it answers nothing more). */
const C_FAIL_LEN = 4;
const C_FAILED = 5;
/** How long the datapath waits for an answer before it takes the worker for dead (a batch's decisions take milliseconds). */
const ANSWER_MS = 30_000;
function views(sab: SharedArrayBuffer) {
  const reqs: Uint32Array[] = [];
  const replies: Uint8Array[] = [];
  for (let s = 0; s < SLOTS; s++) {
    reqs.push(new Uint32Array(sab, REQ_AT + s * 4 * REQ_WORDS, REQ_WORDS));
    replies.push(new Uint8Array(sab, REPLY_AT + s * (REPLY_HEAD_BYTES + REPLY_BYTES), REPLY_HEAD_BYTES + REPLY_BYTES));
  }
  return { ctrl: new Int32Array(sab, 0, CTRL_BYTES / 4), fail: new Uint8Array(sab, CTRL_BYTES, FAIL_BYTES), reqs, replies };
}
/** A reply slot's views: its header (length, covered), its words and its bytes after the header. */
function replyViews(r: Uint8Array) {
  return {
    head: new Int32Array(r.buffer, r.byteOffset, 2),
    words: new Uint32Array(r.buffer, r.byteOffset + REPLY_HEAD_BYTES, REPLY_BYTES / 4),
    bytes: r.subarray(REPLY_HEAD_BYTES),
  };
}

function encode(msgs: ControlMessage[]): string {
  return JSON.stringify(msgs, (_k, v) => (v instanceof Uint32Array || v instanceof Uint8Array || v instanceof Int32Array ? { $t: v instanceof Uint32Array ? 'u32' : v instanceof Int32Array ? 'i32' : 'u8', a: Array.from(v) } : v));
}

/**
 * The common reply — flow installs only — goes as words, not JSON (measured:
 * JSON made most of a 29 µs round trip): [count n], the n keys (19 words
 * each), the n masks, then per install its action count and per action (op,
 * a, b); a ct action is (7, zone | commit << 16 | (table + 1) << 17 | fw << 26, 0).
 * Keys and masks in blocks go across in one copy each way (word by word, a
 * key and mask had cost ~55 ns an install to write and ~75 to read back).
 * With `entry`, then the request's `keys` entries (the index, in the batch's
 * answer, of the flow that covers each key, -1 none: UpcallBatch.entry).
 * Returns the word count, or -1 when a message is not a flow install, has a
 * ct action with NAT, or does not fit (the caller then sends the messages whole).
 */
export function encodeInstalls(msgs: ControlMessage[], out: Uint32Array, entry: Int32Array | null = null, keys = 0): number {
  let n = 0;
  for (const m of msgs) {
    if (m.type === 'flow-install') n++;
    else if (m.type === 'flow-installs') n += m.count;
    else return -1;
  }
  const masksAt = 1 + n * KEY_WORDS;
  let o = 1 + 2 * n * KEY_WORDS;
  if (o > out.length) return -1;
  let at = 0;
  for (const m of msgs) {
    if (m.type === 'flow-install') {
      out.set(m.key.subarray(0, KEY_WORDS), 1 + at * KEY_WORDS);
      out.set(m.mask.subarray(0, KEY_WORDS), masksAt + at * KEY_WORDS);
      o = encodeActions(m.actions, out, o);
      at++;
    } else if (m.type === 'flow-installs') {
      for (let j = 0; j < m.count; j++) {
        const ko = (m.keyAt === undefined ? j : m.keyAt[j]) * KEY_WORDS;
        const mo = (m.maskAt === undefined ? j : m.maskAt[j]) * KEY_WORDS;
        // (The key as installed: masked. A message may name any key its flow covers.)
        for (let w = 0; w < KEY_WORDS; w++) {
          out[1 + (at + j) * KEY_WORDS + w] = m.keys[ko + w] & m.masks[mo + w];
          out[masksAt + (at + j) * KEY_WORDS + w] = m.masks[mo + w];
        }
      }
      for (let j = 0; j < m.count && o >= 0; j++) o = encodeActions(m.actions[j], out, o);
      at += m.count;
    }
    if (o < 0) return -1;
  }
  out[0] = n;
  // Then, for a request's keys, which of its batch's flows covers each (UpcallBatch.entry): [count, entries…].
  if (entry !== null) {
    if (o + 1 + keys > out.length) return -1;
    out[o++] = keys;
    for (let j = 0; j < keys; j++) out[o++] = entry[j];
  }
  return o;
}

// One install's actions at out[o..] (see encodeInstalls): the next offset, or -1 when they do not fit or cannot be said in words.
function encodeActions(actions: Action[], out: Uint32Array, o: number): number {
  if (o + 1 + 3 * actions.length > out.length) return -1;
  out[o++] = actions.length;
  for (const a of actions) {
    switch (a.op) {
      case 'output': out[o] = 1; out[o + 1] = a.vpid; out[o + 2] = 0; break;
      case 'drop': out[o] = 2; out[o + 1] = a.reason; out[o + 2] = 0; break;
      case 'encap': out[o] = 3; out[o + 1] = a.tunnel; out[o + 2] = a.vni; break;
      case 'flag': out[o] = 4; out[o + 1] = 0; out[o + 2] = 0; break;
      case 'push_vlan': out[o] = 5; out[o + 1] = a.vid; out[o + 2] = 0; break;
      case 'pop_vlan': out[o] = 6; out[o + 1] = 0; out[o + 2] = 0; break;
      case 'ct':
        if (a.nat !== undefined) return -1;
        // (fw: the per-port firewall's ct, bit 26; it had been lost: a firewall's flows became plain conntrack's.)
        out[o] = 7; out[o + 1] = (a.zone | ((a.commit ? 1 : 0) << 16) | ((a.table + 1) << 17) | ((a.fw ? 1 : 0) << 26)) >>> 0; out[o + 2] = 0;
        break;
    }
    o += 3;
  }
  return o;
}

export function decodeInstalls(w: Uint32Array): ControlMessage[] {
  const msgs: ControlMessage[] = [];
  const n = w[0];
  let o = 1 + 2 * n * KEY_WORDS;
  for (let j = 0; j < n; j++) {
    const key = w.slice(1 + j * KEY_WORDS, 1 + (j + 1) * KEY_WORDS);
    const mask = w.slice(1 + (n + j) * KEY_WORDS, 1 + (n + j + 1) * KEY_WORDS);
    const k = w[o++];
    msgs.push({ type: 'flow-install', key, mask, actions: decodeActions(w, o, k) });
    o += 3 * k;
  }
  return msgs;
}

/**
 * The action arrays decoded so far, by their words: an install whose actions
 * were seen before gets the same array, which the datapath's action sets
 * know by identity (ActionSets.intern) — a new array per install had each
 * interned by value, its words joined into a text key (0.5 µs an install).
 */
export class ActionCache {
  private readonly byHash = new Map<number, { w: Uint32Array; a: Action[] }[]>();
  private size = 0;

  /** The actions at w[o..o + 3k) (decodeActions's), decoded once. */
  get(w: Uint32Array, o: number, k: number): Action[] {
    let h = k;
    for (let x = 0; x < 3 * k; x++) h = Math.imul(h ^ w[o + x], 0x9e3779b1) >>> 0;
    const list = this.byHash.get(h);
    if (list !== undefined) {
      for (const e of list) {
        if (e.w.length !== 3 * k) continue;
        let x = 0;
        while (x < 3 * k && e.w[x] === w[o + x]) x++;
        if (x === 3 * k) return e.a;
      }
    }
    const a = decodeActions(w, o, k);
    // Bounded: a FPAG with ever new action sets (a VM per flow) starts it again.
    if (this.size === 4096) { this.byHash.clear(); this.size = 0; }
    const e = { w: w.slice(o, o + 3 * k), a };
    if (list !== undefined && this.byHash.has(h)) list.push(e);
    else this.byHash.set(h, [e]);
    this.size++;
    return a;
  }
}

/**
 * A request's answer as the thread sends it, when the worker's FPAG gave one
 * FlowInstalls naming its keys (keyOf and maskAt: control/batch-flows.ts)
 * or nothing: [n flows][m masks][the m masks, KEY_WORDS words each][per
 * flow, the index in the request of the key it was decided for][per flow,
 * its mask among the m][per flow, its actions as encodeInstalls says them],
 * then with `entry` the request's `keys` entries as there. The keys do not
 * cross back (the datapath sent them), and a batch's mask crosses once:
 * the keyed answer's 152 bytes a flow, written by one core and read by the
 * other, had cost the worker ~120 ns a flow (a million set-ups, measured
 * in the worker) and the datapath ~40. Returns the word count, or -1 when
 * the message cannot be said so (a flow without keyOf, a ct with NAT, too big).
 */
export function encodeAnswer(msg: FlowInstalls | null, out: Uint32Array, entry: Int32Array | null = null, keys = 0): number {
  const n = msg === null ? 0 : msg.count;
  let lo = 0;
  let hi = -1;
  if (msg !== null && n > 0) {
    const keyOf = msg.keyOf;
    const maskAt = msg.maskAt;
    if (keyOf === undefined || maskAt === undefined) return -1;
    lo = hi = maskAt[0];
    for (let j = 0; j < n; j++) {
      if (keyOf[j] < 0) return -1;
      if (maskAt[j] < lo) lo = maskAt[j];
      if (maskAt[j] > hi) hi = maskAt[j];
    }
  }
  const nm = hi - lo + 1;
  const ko = 2 + nm * KEY_WORDS;
  let o = ko + 2 * n;
  if (o > out.length) return -1;
  out[0] = n;
  out[1] = nm;
  if (msg !== null && n > 0) {
    out.set(msg.masks.subarray(lo * KEY_WORDS, (hi + 1) * KEY_WORDS), 2);
    const keyOf = msg.keyOf as Int32Array;
    const maskAt = msg.maskAt as Int32Array;
    for (let j = 0; j < n; j++) {
      out[ko + j] = keyOf[j];
      out[ko + n + j] = maskAt[j] - lo;
    }
    for (let j = 0; j < n && o >= 0; j++) o = encodeActions(msg.actions[j], out, o);
    if (o < 0) return -1;
  }
  if (entry !== null) {
    if (o + 1 + keys > out.length) return -1;
    out[o++] = keys;
    for (let j = 0; j < keys; j++) out[o++] = entry[j];
  }
  return o;
}

/** A FlowInstalls decoded from answers (decodeAnswerInto): its keys are the caller's to point at (the keys it sent). */
export interface Answer extends FlowInstalls {
  keyAt: Int32Array;
  maskAt: Int32Array;
  /** Masks in `masks`. */
  maskCount: number;
}

export function newAnswer(): Answer {
  return { type: 'flow-installs', count: 0, keys: new Uint32Array(0), masks: new Uint32Array(0), actions: [], keyAt: new Int32Array(0), maskAt: new Int32Array(0), maskCount: 0 };
}

/**
 * encodeAnswer's words into `into` (its arrays reused, grown to the count),
 * the action arrays from `cache`; `append`: after the flows it holds (an
 * answer staged behind earlier ones). A flow's key is named keyBase + its
 * index in the request (into.keyAt): the caller points into.keys at the
 * keys it sent. Returns the offset past the installs (where entries follow,
 * when the answer has them).
 */
export function decodeAnswerInto(w: Uint32Array, into: Answer, cache: ActionCache, append: boolean, keyBase: number): number {
  const at = append ? into.count : 0;
  const mAt = append ? into.maskCount : 0;
  const c = w[0];
  const nm = w[1];
  const n = at + c;
  if (into.keyAt.length < n) {
    // Slow path: room for twice as many.
    const cap = Math.max(n, 2 * into.keyAt.length, 64);
    const k = new Int32Array(cap);
    k.set(into.keyAt.subarray(0, at));
    into.keyAt = k;
    const m = new Int32Array(cap);
    m.set(into.maskAt.subarray(0, at));
    into.maskAt = m;
  }
  if (into.masks.length < (mAt + nm) * KEY_WORDS) {
    const m = new Uint32Array(Math.max(mAt + nm, (2 * into.masks.length) / KEY_WORDS, 16) * KEY_WORDS);
    m.set(into.masks.subarray(0, mAt * KEY_WORDS));
    into.masks = m;
  }
  into.masks.set(w.subarray(2, 2 + nm * KEY_WORDS), mAt * KEY_WORDS);
  const ko = 2 + nm * KEY_WORDS;
  const keyAt = into.keyAt;
  const maskAt = into.maskAt;
  for (let j = 0; j < c; j++) {
    keyAt[at + j] = keyBase + w[ko + j];
    maskAt[at + j] = mAt + w[ko + c + j];
  }
  into.actions.length = n;
  let o = ko + 2 * c;
  for (let j = at; j < n; j++) {
    const k = w[o++];
    into.actions[j] = cache.get(w, o, k);
    o += 3 * k;
  }
  into.count = n;
  into.maskCount = mAt + nm;
  return o;
}

// Slow path: room for n entries (what the array held kept).
function growEntries(a: Int32Array, n: number): Int32Array {
  const b = new Int32Array(Math.max(n, 2 * a.length, 1024));
  b.set(a);
  return b;
}

function decodeActions(w: Uint32Array, o: number, k: number): Action[] {
  const actions: Action[] = [];
  for (let j = 0; j < k; j++, o += 3) {
    const op = w[o];
    if (op === 1) actions.push({ op: 'output', vpid: w[o + 1] });
    else if (op === 2) actions.push({ op: 'drop', reason: w[o + 1] });
    else if (op === 3) actions.push({ op: 'encap', tunnel: w[o + 1], vni: w[o + 2] });
    else if (op === 5) actions.push({ op: 'push_vlan', vid: w[o + 1] });
    else if (op === 6) actions.push({ op: 'pop_vlan' });
    else if (op === 7) {
      const x = w[o + 1];
      const ct: Action = { op: 'ct', zone: x & 0xffff, commit: ((x >>> 16) & 1) === 1, table: ((x >>> 17) & 0x1ff) - 1 };
      if ((x >>> 26) & 1) ct.fw = true;
      actions.push(ct);
    }
    else actions.push({ op: 'flag' });
  }
  return actions;
}

function decode(text: string): ControlMessage[] {
  return JSON.parse(text, (_k, v) => (v && typeof v === 'object' && '$t' in v ? (v.$t === 'u32' ? Uint32Array.from(v.a) : v.$t === 'i32' ? Int32Array.from(v.a) : Uint8Array.from(v.a)) : v)) as ControlMessage[];
}

/**
 * A Datapath that also records every message applied to it (the worker's
 * shadow). With `defer`, a message is only recorded: applyDeferred applies
 * the outbox later (the FPAG thread answers first, then updates its shadow
 * while the datapath installs).
 */
export class ShadowDatapath extends Datapath {
  outbox: ControlMessage[] = [];
  defer = false;
  /** false: flow installs are recorded, not applied (a shadow no one asks for flows). */
  keepFlows = true;
  override apply(msg: ControlMessage, now = this.now): void {
    if (!this.defer && this.applies(msg)) super.apply(msg, now);
    this.outbox.push(msg);
  }

  /** Applies the outbox's messages (recorded under `defer`) and empties it. */
  applyDeferred(): void {
    for (const m of this.outbox) if (this.applies(m)) super.apply(m);
    this.outbox = [];
  }

  private applies(m: ControlMessage): boolean {
    return this.keepFlows || (m.type !== 'flow-install' && m.type !== 'flow-installs');
  }
}

/** The main thread's handle on an FPAG worker. */
export class FpagThread implements AsyncUpcalls {
  private readonly worker: Worker;
  private readonly ctrl: Int32Array;
  private readonly fail: Uint8Array;
  private readonly reqs: Uint32Array[];
  /** Per reply slot: its header, words and bytes (replyViews). */
  private readonly replies: ReturnType<typeof replyViews>[];
  private readonly decoder = new TextDecoder();
  private readonly actionCache = new ActionCache();
  /** The worker's answer, decoded into reused arrays (decodeAnswerInto). */
  private readonly installs = newAnswer();
  /** Per request slot, its keys (an async answer names the keys of its request, there till the next is sent). */
  private readonly reqKeys: Uint32Array[];
  /** Keys the worker decided (those sent, less those a flow decided for an earlier key of their batch covered). */
  upcalls = 0;
  /**
   * Keys a request takes (tests and benches may set it; held to 1..REQ_KEYS): PART_KEYS waited
   * for; not waited for (async), all that pend, up to REQ_KEYS — the worker
   * is asked once between two datapath batches, and parts of 64 had left it
   * 64 keys of a batch's 256 new ones to decide, the upcall queue full and
   * the datapath waiting (measured, a million set-ups: 11 000 waits, 0.47 M
   * set-ups a second; all pending: 30 waits, 0.76 M/s).
   */
  get part(): number { return this.partKeys; }
  set part(n: number) { this.partKeys = Math.max(1, Math.min(REQ_KEYS, Math.floor(n) || 1)); }
  private partKeys: number;
  /** Requests in flight at most: SLOTS waited for, 1 async (tests may set it; held to 1..SLOTS). */
  get inFlightMax(): number { return this.maxInFlight; }
  set inFlightMax(n: number) { this.maxInFlight = Math.max(1, Math.min(SLOTS, Math.floor(n) || 1)); }
  private maxInFlight: number;
  /** Round trips (a batch's misses go in parts of `part` keys). */
  roundTrips = 0;
  /** Total ns from each request's sending to its answer's taking (the parts of a batch queue behind each other). */
  roundTripNs = 0;
  /** Requests sent while the fast lane still gathered their batch's misses (Datapath.upcallEarlySink). */
  earlyRequests = 0;
  /** Batches left with keys still being decided (partial: the datapath switched the packets answered meanwhile). */
  partialAnswers = 0;

  /**
   * Starts the worker and applies its start-up messages (mappings, tunnels)
   * to `dp`. Blocks until it is ready. `async`: the datapath does not wait
   * for answers (Datapath.upcallAsync: this is its AsyncUpcalls); else each
   * batch's misses are answered before the batch goes on (upcallBatchSink).
   */
  constructor(topology: Topology, private readonly dp: Datapath, readonly async = false) {
    this.partKeys = async ? REQ_KEYS : PART_KEYS;
    this.maxInFlight = async ? 1 : SLOTS;
    const sab = new SharedArrayBuffer(SAB_BYTES);
    const v = views(sab);
    this.ctrl = v.ctrl;
    this.fail = v.fail;
    this.reqs = v.reqs;
    this.replies = v.replies.map(replyViews);
    this.reqKeys = this.reqs.map((r) => r.subarray(REQ_KEYS_AT));
    const { port1, port2 } = new MessageChannel();
    this.worker = new Worker(WORKER_FILE, { workerData: { sab, topology, port: port2 }, transferList: [port2] });
    this.worker.unref();
    // Wait (blocking) for the worker's start-up messages.
    const deadline = Date.now() + 15_000;
    let msg: { message: unknown } | undefined;
    while (!(msg = receiveMessageOnPort(port1))) {
      if (Date.now() > deadline) throw new FpoError('FPO_ERR_IO', `fpag thread: no answer from the worker (${WORKER_FILE}) in 15 s`);
      Atomics.wait(this.ctrl, C_START, 0, 20);
    }
    const init = msg.message as { error?: string; messages?: string };
    if (init.error) throw new FpoError('FPO_ERR_BAD_TOPOLOGY', init.error);
    for (const m of decode(init.messages!)) dp.apply(m);
    port1.close();
    if (async) dp.upcallAsync = this;
    else {
      dp.upcallBatchSink = (u) => this.upcallBatch(u);
      dp.upcallEarlySink = (u) => this.upcallEarly(u);
      dp.upcallMoreSink = (u, all) => this.upcallMore(u, all);
    }
  }

  // --- the ring: request r goes in slot r % SLOTS, its answer comes in reply slot r % SLOTS ---

  /** Requests sent and answers taken (the ones between are in flight). */
  private sent = 0;
  private taken = 0;
  /** Per slot, of its request: how many keys, where they are in pendKeys (a synchronous batch's answers name them there), when it went. */
  private readonly slotKeys = new Int32Array(SLOTS);
  private readonly slotFrom = new Int32Array(SLOTS);
  private readonly slotSent = new Float64Array(SLOTS);
  /** The slot of the answer taken last (async: its keys are its request's). */
  private lastSlot = 0;

  private get inFlight(): number {
    return this.sent - this.taken;
  }

  // Whether the next answer has come.
  private answerReady(): boolean {
    return Atomics.load(this.ctrl, C_DONE) !== this.taken || Atomics.load(this.ctrl, C_FAILED) === 1;
  }

  // --- asynchronous (AsyncUpcalls): keys handed over wait here for the request in flight to be answered ---

  private pendPpid = new Uint16Array(0);
  private pendKeys = new Uint32Array(0);
  private pendCount = 0;
  /** Keys handed over and answered. */
  private submitted = 0;
  private answered = 0;

  submit(u: UpcallBatch): number {
    this.failedEarlier();
    this.pend(u, 0, u.count);
    this.submitted += u.count;
    this.sendAsync();
    return this.submitted;
  }

  // Keys [from, from + n) of u to the pending ones (grown: slow path).
  private pend(u: UpcallBatch, from: number, n: number): void {
    const need = this.pendCount + n;
    if (this.pendHead + need > this.pendPpid.length) {
      // Slow path. Async: to the front (sendPending takes keys from pendHead on). A synchronous
      // batch's keys stay where they are (its answers name them by their place: receive).
      if (this.async) {
        this.pendPpid.copyWithin(0, this.pendHead, this.pendHead + this.pendCount);
        this.pendKeys.copyWithin(0, this.pendHead * KEY_WORDS, (this.pendHead + this.pendCount) * KEY_WORDS);
        this.pendHead = 0;
      }
      const keep = this.pendHead + this.pendCount;
      if (this.pendPpid.length < keep + n) {
        // Room for twice as many.
        const cap = Math.max(keep + n, 2 * this.pendPpid.length, 1024);
        const p = new Uint16Array(cap);
        p.set(this.pendPpid.subarray(0, keep));
        this.pendPpid = p;
        const k = new Uint32Array(cap * KEY_WORDS);
        k.set(this.pendKeys.subarray(0, keep * KEY_WORDS));
        this.pendKeys = k;
      }
    }
    const at = this.pendHead + this.pendCount;
    this.pendPpid.set(u.inPpid.subarray(from, from + n), at);
    this.pendKeys.set(u.keys.subarray(from * KEY_WORDS, (from + n) * KEY_WORDS), at * KEY_WORDS);
    this.pendCount = need;
  }

  /** The first pending key's index in pendPpid/pendKeys. */
  private pendHead = 0;

  poll(): number {
    while (this.inFlight > 0 && this.answerReady()) this.takeAnswer();
    this.sendAsync();
    return this.answered;
  }

  waitOne(): number {
    if (this.inFlight === 0) {
      if (this.pendCount === 0) return this.answered;
      this.sendAsync();
    }
    this.wait_();
    this.takeAnswer();
    this.sendAsync();
    return this.answered;
  }

  // Async: what pends, as requests of up to `part` keys while there is room in the ring.
  private sendAsync(): void {
    while (this.pendCount > 0 && this.inFlight < this.maxInFlight) this.sendPending(false);
  }

  // Up to `part` pending keys to the worker, as one request in the next slot (continues: of the
  // last request's batch; async: a request is a batch of its own). The caller checked there is room.
  private sendPending(continues: boolean): void {
    const n = Math.min(this.pendCount, this.partKeys);
    const s = this.sent % SLOTS;
    const req = this.reqs[s];
    req[0] = n;
    req[1] = continues ? 1 : 0;
    const h = this.pendHead;
    for (let j = 0; j < n; j++) req[REQ_HEAD + j] = this.pendPpid[h + j];
    req.set(this.pendKeys.subarray(h * KEY_WORDS, (h + n) * KEY_WORDS), REQ_KEYS_AT);
    this.pendCount -= n;
    // (A synchronous batch's keys stay in place till its end: beginBatch starts them again.)
    this.pendHead = this.pendCount === 0 && this.async ? 0 : h + n;
    this.slotKeys[s] = n;
    this.slotFrom[s] = h;
    this.slotSent[s] = performance.now();
    this.sent++;
    Atomics.store(this.ctrl, C_SENT, this.sent);
    Atomics.notify(this.ctrl, C_SENT);
  }

  // The answer to the oldest request in flight (it has come): applied to the datapath (async).
  private takeAnswer(): void {
    const msgs = this.receive(this.installs);
    this.dp.upcalls -= this.lastCovered; // the datapath counted every key it handed over
    this.applyAnswer(msgs, this.installs);
  }

  /**
   * The answer to the oldest request in flight (it has come), taken out of
   * the shared memory: flow installs decoded into `into` (appended when it
   * is `staged`), else the messages returned. Counts it.
   */
  private receive(into: Answer): ControlMessage[] | null {
    this.failedEarlier();
    const s = this.taken % SLOTS;
    const r = this.replies[s];
    const len = r.head[0];
    const cov = r.head[1];
    let msgs: ControlMessage[] | null = null;
    const n = this.slotKeys[s];
    const flowsBefore = this.batchFlows;
    if (len < 0) {
      const w = r.words;
      const staged = into === this.staged;
      const had = staged ? into.count : 0;
      // Its keys: async, the request's (in its slot till the next request is sent: the answer is
      // applied first); a synchronous batch's, where pend put them (applyAnswer points at them).
      const o = decodeAnswerInto(w, into, this.actionCache, staged, this.async ? 0 : this.slotFrom[s]);
      if (!this.async) {
        // A synchronous batch's keys are answered in order: each one's entry (the flow that covers
        // it, counted over the batch's answers), and where this answer's flows start among them.
        if (!staged) into.first = flowsBefore;
        this.batchFlows += into.count - had;
        const e = this.batchEntry.length >= this.batchKeys + n ? this.batchEntry : (this.batchEntry = growEntries(this.batchEntry, this.batchKeys + n));
        const k = o < -len ? w[o] : 0;
        for (let j = 0; j < n; j++) e[this.batchKeys + j] = j < k ? (w[o + 1 + j] | 0) : -1;
        this.batchKeys += n;
      }
    } else {
      msgs = decode(this.decoder.decode(r.bytes.slice(0, len)));
      this.entriesKnown = false; // (messages whole: which flows they installed is not said)
      if (!this.async) this.batchKeys += n; // (answered all the same: the datapath looks them up)
    }
    this.lastSlot = s;
    this.taken++;
    this.answered += n;
    this.upcalls += n - cov;
    this.lastCovered = cov;
    this.batchCovered += cov;
    this.roundTrips++;
    this.roundTripNs += (performance.now() - this.slotSent[s]) * 1e6;
    return msgs;
  }

  private applyAnswer(msgs: ControlMessage[] | null, installs: Answer): void {
    installs.keys = this.async ? this.reqKeys[this.lastSlot] : this.pendKeys;
    if (msgs === null) this.dp.apply(installs);
    else for (const m of msgs) this.dp.apply(m);
  }

  private lastCovered = 0;

  // --- synchronous: a batch's misses, some handed over while the lane still gathers them ---

  /** Keys of the datapath batch being gathered that were handed over early (Datapath.upcallEarlySink). */
  private earlyKeys = 0;
  /** Requests sent for the datapath batch (the first does not continue an earlier one). */
  private batchRequests = 0;
  /** Keys of the batch's answers that a flow decided for an earlier key covered. */
  private batchCovered = 0;
  /** Answers taken while the lane still gathered (flows installed when the batch's call comes). */
  private readonly staged = newAnswer();

  /** Of the synchronous batch being answered: its flows installed so far, its keys answered, their entries (UpcallBatch.entry). */
  private batchFlows = 0;
  private batchKeys = 0;
  private batchEntry: Int32Array = new Int32Array(0);
  /** Whether every answer of the batch said its entries (one sent as JSON does not: then the datapath looks each key up). */
  private entriesKnown = true;

  private beginBatch(): void {
    // (Left by a batch whose call never came — its sink was replaced — : answered and dropped.)
    while (this.inFlight > 0) {
      this.wait_();
      this.receive(this.installs);
    }
    this.pendCount = 0;
    this.pendHead = 0;
    this.batchFlows = 0;
    this.batchKeys = 0;
    this.entriesKnown = true;
    this.earlyKeys = 0;
    this.batchRequests = 0;
    this.batchCovered = 0;
    this.staged.count = 0;
    this.staged.maskCount = 0;
    this.staged.actions.length = 0;
  }

  // Sends the batch's pending keys, a part a request, while there is room in the ring.
  private sendParts(): void {
    while (this.pendCount > 0 && this.inFlight < this.maxInFlight) {
      this.sendPending(this.batchRequests > 0);
      this.batchRequests++;
    }
  }

  // Slow path: misses the lane found while it still gathers: sent while there is room in the ring
  // (answers that have come are taken, staged, first); the worker decides them meanwhile.
  private upcallEarly(u: UpcallBatch): void {
    this.failedEarlier();
    if (!u.continues) this.beginBatch();
    this.pend(u, 0, u.count);
    this.earlyKeys += u.count;
    // (Answers in words only: one in JSON waits for the batch's call, where it is applied in its order.)
    while (this.inFlight > 0 && this.answerReady() && this.replies[this.taken % SLOTS].head[0] < 0) this.receive(this.staged);
    const before = this.batchRequests;
    this.sendParts();
    this.earlyRequests += this.batchRequests - before;
  }

  // Slow path: a batch's misses (the first earlyKeys handed over already), in parts of `part`
  // keys: parts after k are sent before part k's flows are installed. A partial batch (the fast
  // lane's) is left once its first key is answered: upcallMore takes the next answers.
  private upcallBatch(u: UpcallBatch): void {
    this.failedEarlier();
    if (this.earlyKeys === 0) this.beginBatch();
    const early = Math.min(this.earlyKeys, u.count);
    this.pend(u, early, u.count - early);
    this.earlyKeys = 0;
    if (this.staged.count > 0) this.applyAnswer(null, this.staged);
    this.answer(u, u.partial ? 1 : u.count, 0);
  }

  // Slow path: more of the partial batch upcallBatch left (Datapath.upcallMoreSink).
  private upcallMore(u: UpcallBatch, all: boolean): void {
    this.failedEarlier();
    this.answer(u, all ? u.count : u.answered + 1, u.answered);
  }

  // Takes the batch's answers (installing each, the parts pending sent first) until `need` of its
  // keys are answered; says so in u from key `from` on (answered, entries, covered). The batch ends with its last key.
  private answer(u: UpcallBatch, need: number, from: number): void {
    for (;;) {
      this.sendParts();
      if (this.batchKeys >= need || this.inFlight === 0) break;
      this.wait_();
      const msgs = this.receive(this.installs);
      this.sendParts();
      this.applyAnswer(msgs, this.installs);
    }
    const to = Math.min(this.batchKeys, u.count);
    u.covered = this.batchCovered;
    if (from === 0 && to < u.count) this.partialAnswers++;
    u.answered = to;
    if (this.entriesKnown && !this.async) {
      if (to > from) u.entry.set(this.batchEntry.subarray(from, to), from);
      u.entries = true;
    } else u.entries = false;
    if (to === u.count) this.beginBatch();
  }

  // Throws FPO_ERR_WORKER with the worker's message when it failed.
  private failedEarlier(): void {
    if (Atomics.load(this.ctrl, C_FAILED) === 1) {
      const len = Math.max(0, Math.min(Atomics.load(this.ctrl, C_FAIL_LEN), FAIL_BYTES));
      throw new FpoError('FPO_ERR_WORKER', `fpag thread: ${this.decoder.decode(this.fail.slice(0, len))}`);
    }
  }

  // Until the oldest request in flight is answered; throws FPO_ERR_WORKER when the worker failed or gave no answer in ANSWER_MS.
  private wait_(): void {
    // Poll before sleeping: a futex wake-up costs tens of µs on this machine, more than the
    // FPAG's decisions for a part (measured: 88 µs a round trip sleeping, see bench/; 20 000
    // polls, ~20 µs, had left a third of a million set-ups' time in wake-ups).
    const ctrl = this.ctrl;
    const taken = this.taken;
    const until = performance.now() + BUSY_SPIN_MS;
    for (let spin = 1; Atomics.load(ctrl, C_DONE) === taken && Atomics.load(ctrl, C_FAILED) === 0; spin++) if ((spin & 1023) === 0 && performance.now() > until) break;
    const deadline = Date.now() + ANSWER_MS;
    while (Atomics.load(ctrl, C_DONE) === taken && Atomics.load(ctrl, C_FAILED) === 0) {
      if (Date.now() > deadline) throw new FpoError('FPO_ERR_WORKER', `fpag thread: no answer in ${ANSWER_MS / 1000} s`);
      Atomics.wait(ctrl, C_DONE, taken, 1000);
    }
    this.failedEarlier();
  }

  async stop(): Promise<void> {
    Atomics.store(this.ctrl, C_STOP, 1);
    Atomics.notify(this.ctrl, C_SENT);
    await this.worker.terminate();
  }
}

// The worker side.
if (!isMainThread && workerData?.sab) {
  const { sab, topology, port } = workerData as { sab: SharedArrayBuffer; topology: Topology; port: MessagePort };
  const { ctrl, fail: failArea, reqs, replies: replyAreas } = views(sab);
  const replies = replyAreas.map(replyViews);
  const encoder = new TextEncoder();
  try {
    const topo = topology;
    // The shadow keeps the mappings, ports and tunnels the FPAG decides by, not the flows: nothing
    // here reads them back (a revalidation would, and nothing asks for one: no rule or mapping
    // changes reach this thread — replay refuses events with it). It had installed every flow too,
    // after answering, but the next request then waited for that.
    const shadow = new ShadowDatapath({ maxFlows: 1024 });
    shadow.keepFlows = false;
    const none: TxPort = { writeBatch: () => undefined };
    for (const p of topo.ports) shadow.addPort(p.ppid, none);
    const fpag = new Fpag(topo, shadow);
    fpag.start();
    const sink = shadow.upcallBatchSink!;
    port.postMessage({ messages: encode(shadow.outbox) });
    shadow.outbox = [];
    Atomics.notify(ctrl, C_START);
    // Each slot's request keys where they are (the FPAG reads an UpcallBatch's keys, never writes them).
    const batches = reqs.map((req) => newUpcallBatch(REQ_KEYS, req.subarray(REQ_KEYS_AT, REQ_KEYS_AT + REQ_KEYS * KEY_WORDS)));
    // Decisions go out before the shadow applies them: the datapath installs while the shadow does.
    shadow.defer = true;
    let done = 0;
    for (;;) {
      if (Atomics.load(ctrl, C_STOP) === 1) break;
      const sent = Atomics.load(ctrl, C_SENT);
      if (sent === done) {
        // Spin for the next upcall (they come in bursts), then sleep.
        // The worker polls for IDLE_SPIN_MS before it sleeps: between two batches the datapath
        // forwards a batch (~0.2 ms of new flows), and a sleeping worker's wake-up cost tens of µs
        // a batch (measured: a third of the datapath's waits in a million set-ups).
        const until = performance.now() + IDLE_SPIN_MS;
        let spin = 0;
        let awake = true;
        while (Atomics.load(ctrl, C_SENT) === sent && Atomics.load(ctrl, C_STOP) === 0) {
          if ((++spin & 1023) === 0 && performance.now() > until) { awake = false; break; }
        }
        if (!awake) Atomics.wait(ctrl, C_SENT, sent, 1000);
        continue;
      }
      const s = done % SLOTS;
      const req = reqs[s];
      const r = replies[s];
      const batch = batches[s];
      const n = Math.min(req[0], REQ_KEYS);
      batch.continues = req[1] === 1;
      for (let j = 0; j < n; j++) batch.inPpid[j] = req[REQ_HEAD + j];
      batch.count = n;
      batch.covered = 0;
      batch.entries = false;
      try {
        sink(batch);
        // One FlowInstalls naming its keys, or none: in words; else (rare: another message, a NAT) JSON.
        const out = shadow.outbox;
        const one = out.length === 0 ? null : out.length === 1 && out[0].type === 'flow-installs' ? out[0] : undefined;
        const words = one === undefined ? -1 : encodeAnswer(one, r.words, batch.entries ? batch.entry : null, n);
        if (words >= 0) {
          r.head[0] = -words;
        } else {
          const bytes = encoder.encode(encode(shadow.outbox));
          if (bytes.length > REPLY_BYTES) throw new FpoError('FPO_ERR_CAPACITY', `an answer of ${bytes.length} bytes (${n} keys) does not fit the reply area (${REPLY_BYTES} bytes a request)`);
          r.bytes.set(bytes);
          r.head[0] = bytes.length;
        }
        r.head[1] = batch.covered;
      } catch (e) {
        // Said to the datapath, which fails the run with it (a packet is never dropped for the FPAG's own fault unsaid).
        fail(e);
        break;
      }
      done++;
      Atomics.store(ctrl, C_DONE, done);
      Atomics.notify(ctrl, C_DONE);
      shadow.applyDeferred();
    }
  } catch (e) {
    // Before start-up ends, the port says it; after, the shared memory does.
    try { port.postMessage({ error: (e as Error).message }); } catch { /* closed */ }
    fail(e);
  }
  void parentPort;

  // The worker's failure, for the datapath waiting on it (FpagThread.wait_).
  function fail(e: unknown): void {
    const bytes = encoder.encode(`${(e as Error).message ?? String(e)}`.slice(0, 1024));
    failArea.set(bytes.subarray(0, FAIL_BYTES));
    Atomics.store(ctrl, C_FAIL_LEN, Math.min(bytes.length, FAIL_BYTES));
    Atomics.store(ctrl, C_FAILED, 1);
    Atomics.notify(ctrl, C_DONE);
  }
}
