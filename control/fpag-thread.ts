/**
 * The FPAG on another thread (as on a SmartNIC's own cores): the datapath
 * and the FPAG then share nothing but messages.
 *
 *   main thread (datapath)                 worker thread (FPAG)
 *   upcall → request area ─── notify ───▶  decide, install on its shadow of
 *                                          the NIC state, collect the messages
 *   apply messages ◀── reply area ◀─────── (flow-install, mapping-set, …)
 *
 * The exchange goes through a SharedArrayBuffer with Atomics.wait/notify, so
 * an upcall is a synchronous round trip for the datapath (which holds the
 * missed packets meanwhile), and the messages are the same ControlMessage
 * values an in-thread FPAG applies, encoded as JSON. The worker's FPAG keeps
 * a shadow Datapath (no traffic) as its view of flows and mappings; every
 * message it applies there is also sent to the real one.
 */
import { Worker, isMainThread, parentPort, receiveMessageOnPort, workerData, MessageChannel, type MessagePort } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { Datapath, type TxPort } from '../datapath/datapath.js';
import { KEY_WORDS } from '../datapath/classifier/flow-key.js';
import { FpoError } from '../datapath/errors.js';
import type { ControlMessage, Upcall } from '../datapath/upcall.js';
import type { Action } from '../datapath/actions/action-sets.js';
import { Fpag } from './fpag.js';
import type { Topology } from './topology.js';

// The worker runs the compiled module (under a TypeScript test runner this file is the .ts source).
const HERE = fileURLToPath(import.meta.url);
const WORKER_FILE = HERE.endsWith('.ts') ? join(dirname(HERE), '..', 'dist', 'control', 'fpag-thread.js') : HERE;

const IDLE = 0;
const REQUEST = 1;
const REPLY = 2;
const REPLY_BYTES = 4 << 20;
/** Polls of the shared word before a thread sleeps on it (a few tens of µs). */
const SPIN = 20_000;

/** Shared memory layout: ctrl words, the request (inPpid + key), the reply (JSON bytes). */
function views(sab: SharedArrayBuffer) {
  return {
    ctrl: new Int32Array(sab, 0, 4),
    req: new Uint32Array(sab, 16, 1 + KEY_WORDS),
    reply: new Uint8Array(sab, 16 + 4 * (1 + KEY_WORDS) + 12, REPLY_BYTES),
  };
}

function encode(msgs: ControlMessage[]): string {
  return JSON.stringify(msgs, (_k, v) => (v instanceof Uint32Array || v instanceof Uint8Array ? { $t: v instanceof Uint32Array ? 'u32' : 'u8', a: Array.from(v) } : v));
}

/**
 * The common reply — flow installs only — goes as words, not JSON (measured:
 * JSON made most of a 29 µs round trip): [count] then per install key (19),
 * mask (19), action count, and per action (op, a, b); a ct action is (7,
 * zone | commit << 16 | (table + 1) << 17, 0). Returns the word count, or -1
 * when a message is not a flow install or has a ct action with NAT (the
 * caller then sends the messages whole).
 */
export function encodeInstalls(msgs: ControlMessage[], out: Uint32Array): number {
  let o = 1;
  for (const m of msgs) {
    if (m.type !== 'flow-install' || o + 2 * KEY_WORDS + 1 + 3 * m.actions.length > out.length) return -1;
    out.set(m.key, o);
    out.set(m.mask, o + KEY_WORDS);
    o += 2 * KEY_WORDS;
    out[o++] = m.actions.length;
    for (const a of m.actions) {
      switch (a.op) {
        case 'output': out[o] = 1; out[o + 1] = a.vpid; out[o + 2] = 0; break;
        case 'drop': out[o] = 2; out[o + 1] = a.reason; out[o + 2] = 0; break;
        case 'encap': out[o] = 3; out[o + 1] = a.tunnel; out[o + 2] = a.vni; break;
        case 'flag': out[o] = 4; out[o + 1] = 0; out[o + 2] = 0; break;
        case 'push_vlan': out[o] = 5; out[o + 1] = a.vid; out[o + 2] = 0; break;
        case 'pop_vlan': out[o] = 6; out[o + 1] = 0; out[o + 2] = 0; break;
        case 'ct':
          if (a.nat !== undefined) return -1;
          out[o] = 7; out[o + 1] = (a.zone | ((a.commit ? 1 : 0) << 16) | ((a.table + 1) << 17)) >>> 0; out[o + 2] = 0;
          break;
      }
      o += 3;
    }
  }
  out[0] = msgs.length;
  return o;
}

export function decodeInstalls(w: Uint32Array): ControlMessage[] {
  const msgs: ControlMessage[] = [];
  let o = 1;
  for (let n = 0; n < w[0]; n++) {
    const key = w.slice(o, o + KEY_WORDS);
    const mask = w.slice(o + KEY_WORDS, o + 2 * KEY_WORDS);
    o += 2 * KEY_WORDS;
    const k = w[o++];
    const actions: Action[] = [];
    for (let j = 0; j < k; j++, o += 3) {
      const op = w[o];
      if (op === 1) actions.push({ op: 'output', vpid: w[o + 1] });
      else if (op === 2) actions.push({ op: 'drop', reason: w[o + 1] });
      else if (op === 3) actions.push({ op: 'encap', tunnel: w[o + 1], vni: w[o + 2] });
      else if (op === 5) actions.push({ op: 'push_vlan', vid: w[o + 1] });
      else if (op === 6) actions.push({ op: 'pop_vlan' });
      else if (op === 7) actions.push({ op: 'ct', zone: w[o + 1] & 0xffff, commit: ((w[o + 1] >>> 16) & 1) === 1, table: (w[o + 1] >>> 17) - 1 });
      else actions.push({ op: 'flag' });
    }
    msgs.push({ type: 'flow-install', key, mask, actions });
  }
  return msgs;
}

function decode(text: string): ControlMessage[] {
  return JSON.parse(text, (_k, v) => (v && typeof v === 'object' && '$t' in v ? (v.$t === 'u32' ? Uint32Array.from(v.a) : Uint8Array.from(v.a)) : v)) as ControlMessage[];
}

/** A Datapath that also records every message applied to it (the worker's shadow). */
export class ShadowDatapath extends Datapath {
  outbox: ControlMessage[] = [];
  override apply(msg: ControlMessage, now = 0): void {
    super.apply(msg, now);
    this.outbox.push(msg);
  }
}

/** The main thread's handle on an FPAG worker. */
export class FpagThread {
  private readonly worker: Worker;
  private readonly ctrl: Int32Array;
  private readonly req: Uint32Array;
  private readonly reply: Uint8Array;
  private readonly replyWords: Uint32Array;
  private readonly decoder = new TextDecoder();
  upcalls = 0;
  /** Total ns spent waiting for the worker's answers. */
  roundTripNs = 0;

  /** Starts the worker and applies its start-up messages (mappings, tunnels) to `dp`. Blocks until it is ready. */
  constructor(topology: Topology, private readonly dp: Datapath) {
    const sab = new SharedArrayBuffer(16 + 4 * (1 + KEY_WORDS) + 12 + REPLY_BYTES);
    ({ ctrl: this.ctrl, req: this.req, reply: this.reply } = views(sab));
    this.replyWords = new Uint32Array(this.reply.buffer, this.reply.byteOffset, REPLY_BYTES / 4);
    const { port1, port2 } = new MessageChannel();
    this.worker = new Worker(WORKER_FILE, { workerData: { sab, topology, port: port2 }, transferList: [port2] });
    this.worker.unref();
    // Wait (blocking) for the worker's start-up messages.
    const deadline = Date.now() + 15_000;
    let msg: { message: unknown } | undefined;
    while (!(msg = receiveMessageOnPort(port1))) {
      if (Date.now() > deadline) throw new FpoError('FPO_ERR_IO', `fpag thread: no answer from the worker (${WORKER_FILE}) in 15 s`);
      Atomics.wait(this.ctrl, 3, 0, 20);
    }
    const init = msg.message as { error?: string; messages?: string };
    if (init.error) throw new FpoError('FPO_ERR_BAD_TOPOLOGY', init.error);
    for (const m of decode(init.messages!)) dp.apply(m);
    port1.close();
    dp.upcallSink = (u) => this.upcall(u);
  }

  // Slow path: one round trip per miss.
  private upcall(u: Upcall): void {
    const t0 = process.hrtime.bigint();
    this.req[0] = u.inPpid;
    this.req.set(u.key, 1);
    Atomics.store(this.ctrl, 0, REQUEST);
    Atomics.notify(this.ctrl, 0);
    // Spin a little before sleeping: a futex wake-up costs tens of µs on this machine,
    // more than the FPAG's decision (measured: 88 µs a round trip sleeping, see bench/).
    for (let spin = 0; spin < SPIN && Atomics.load(this.ctrl, 0) === REQUEST; spin++);
    while (Atomics.load(this.ctrl, 0) === REQUEST) Atomics.wait(this.ctrl, 0, REQUEST, 1000);
    const len = Atomics.load(this.ctrl, 1);
    // len > 0: JSON bytes; len < 0: -words of flow installs.
    const msgs = len < 0 ? decodeInstalls(this.replyWords) : decode(this.decoder.decode(this.reply.slice(0, len)));
    Atomics.store(this.ctrl, 0, IDLE);
    for (const m of msgs) this.dp.apply(m);
    this.upcalls++;
    this.roundTripNs += Number(process.hrtime.bigint() - t0);
  }

  async stop(): Promise<void> {
    Atomics.store(this.ctrl, 2, 1);
    Atomics.notify(this.ctrl, 0);
    await this.worker.terminate();
  }
}

// The worker side.
if (!isMainThread && workerData?.sab) {
  const { sab, topology, port } = workerData as { sab: SharedArrayBuffer; topology: Topology; port: MessagePort };
  const { ctrl, req, reply } = views(sab);
  const replyWords = new Uint32Array(reply.buffer, reply.byteOffset, REPLY_BYTES / 4);
  const encoder = new TextEncoder();
  try {
    const topo = topology;
    const shadow = new ShadowDatapath({ maxFlows: 1 << 20 });
    const none: TxPort = { writeBatch: () => undefined };
    for (const p of topo.ports) shadow.addPort(p.ppid, none);
    const fpag = new Fpag(topo, shadow);
    fpag.start();
    const sink = shadow.upcallSink!;
    port.postMessage({ messages: encode(shadow.outbox) });
    shadow.outbox = [];
    Atomics.notify(ctrl, 3);
    const upcall: Upcall = { type: 'upcall', inPpid: 0, key: new Uint32Array(KEY_WORDS) };
    for (;;) {
      const st = Atomics.load(ctrl, 0);
      if (Atomics.load(ctrl, 2) === 1) break;
      if (st !== REQUEST) {
        // Spin for the next upcall (they come in bursts), then sleep.
        let spin = 0;
        while (spin < SPIN && Atomics.load(ctrl, 0) === st && Atomics.load(ctrl, 2) === 0) spin++;
        if (spin === SPIN) Atomics.wait(ctrl, 0, st, 1000);
        continue;
      }
      upcall.inPpid = req[0];
      upcall.key.set(req.subarray(1));
      sink(upcall);
      const words = encodeInstalls(shadow.outbox, replyWords);
      if (words >= 0) {
        Atomics.store(ctrl, 1, -words);
      } else {
        const bytes = encoder.encode(encode(shadow.outbox));
        reply.set(bytes.subarray(0, REPLY_BYTES));
        Atomics.store(ctrl, 1, Math.min(bytes.length, REPLY_BYTES));
      }
      shadow.outbox = [];
      Atomics.store(ctrl, 0, REPLY);
      Atomics.notify(ctrl, 0);
    }
  } catch (e) {
    port.postMessage({ error: (e as Error).message });
  }
  void parentPort;
}
