/**
 * One datapath per core for `fpo run --workers N`, as Open vSwitch's PMD
 * threads: N worker threads, each with its own Datapath (its own exact-match
 * cache and megaflow table) and its own sockets on every live port, and ONE
 * FPAG, on the main thread, deciding for all of them.
 *
 *   main thread: control socket, FPAG on a shadow Datapath (no traffic)
 *     │  every message the shadow applies (flow installs, mappings, tunnels)
 *     │  goes, numbered, to every worker, in order: the control log
 *     ▼
 *   worker i: Datapath + live ports  ── a miss ──▶ upcall area (SAB) ──▶ main
 *     applies the log between batches;   ◀── the answer: the log's number
 *     on an upcall, up to the answer        holding the FPAG's install
 *
 * So every worker's flow table is the shadow's: a flow the FPAG decided on
 * one worker's miss is installed in all ("one FPAG installing into all"),
 * and a mapping change (a migration) is applied by each worker at a batch
 * boundary; the request that made it is answered once every worker has
 * applied it. Frames are spread by flow: an AF_PACKET ring port joins one
 * fanout group per port (PACKET_FANOUT_HASH), a TAP is opened as a
 * multi-queue TAP, one queue a worker — so a flow's frames go through one
 * worker, in order. Counters are summed over the workers (stats), so
 * `in = delivered + dropped` holds over all of them.
 *
 * Workers do not expire idle flows on their own (their tables would drift
 * apart from the shadow's): flows stay until the control plane removes them.
 * A worker that dies is reported (stats: workers[i].alive false, its error)
 * and its sockets close, so the kernel spreads its share over the others; a
 * worker whose loop has not turned for STALL_MS is reported stalled.
 */
import { Worker, isMainThread, parentPort, receiveMessageOnPort, workerData, MessageChannel, type MessagePort } from 'node:worker_threads';
import { randomInt } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { PacketBatch } from '../datapath/batch.js';
import { KEY_WORDS } from '../datapath/classifier/flow-key.js';
import { monotonicMs } from '../datapath/clock.js';
import { Datapath, type DatapathStats } from '../datapath/datapath.js';
import { FpoError } from '../datapath/errors.js';
import { MAP_ANONYMOUS, MAP_NORESERVE, MAP_PRIVATE, POLLIN, libc } from '../datapath/ports/libc.js';
import { openLivePort, type LivePort } from '../datapath/ports/live-port.js';
import type { ControlMessage, Upcall } from '../datapath/upcall.js';
import type { Topology } from './topology.js';

// The worker runs the compiled module (under a TypeScript test runner this file is the .ts source).
const HERE = fileURLToPath(import.meta.url);
const WORKER_FILE = HERE.endsWith('.ts') ? join(dirname(HERE), '..', 'dist', 'control', 'workers.js') : HERE;

/** ctrl words of a worker's shared area. */
const C_UPCALL = 0; // IDLE / REQUEST / REPLY
const C_ANSWER = 1; // the log number that holds the answer
const C_APPLIED = 2; // the last log number the worker applied
const C_TURNS = 3; // the worker's loop turns (its heartbeat)
const C_STOP = 4;
const C_WAKE = 5; // never written: a word to sleep on
const IDLE = 0;
const REQUEST = 1;
const REPLY = 2;
const CTRL_WORDS = 8;
/** A worker whose loop has not turned for this long is reported stalled. */
export const STALL_MS = 1000;

/**
 * A Datapath that keeps every message applied to it for the workers (the
 * main thread's shadow). Its table never evicts on its own: an install into
 * a full table first deletes the oldest-installed 1/16 by messages the
 * workers get too (a table that evicted by itself would drop other flows
 * than the workers' tables, which see the traffic, and a flow left in a
 * worker would never be revalidated). Workers get twice the shadow's
 * capacity, so they never evict by themselves either.
 */
export class RecordingDatapath extends Datapath {
  outbox: ControlMessage[] = [];
  override apply(msg: ControlMessage, now = 0): void {
    if (msg.type === 'flow-install' && this.flows.count >= this.flows.capacity - 1) this.evictByMessages(now);
    super.apply(msg, now);
    this.outbox.push(msg);
  }

  // Slow path: the table is full.
  private evictByMessages(now: number): void {
    const flows = this.dumpFlows().sort((a, b) => a.used - b.used || a.id - b.id);
    const n = Math.max(1, this.flows.capacity >>> 4);
    for (const f of flows.slice(0, n)) this.apply({ type: 'flow-delete', key: f.key, mask: f.mask }, now);
  }
}

/** What a worker says of itself when asked (summed by the main thread). */
export interface WorkerStats {
  dp: DatapathStats;
  /** Packets and bytes per flow id (ids are the shadow's: the same install order everywhere). */
  flows: [number, number, number][];
  live: { ppid: number; mode: string; rxMissed: number; txSent: number; txRingFull: number; txErrors: number }[];
}

interface Handle {
  index: number;
  worker: Worker;
  port: MessagePort;
  ctrl: Int32Array;
  req: Uint32Array;
  alive: boolean;
  error?: string;
  lastTurns: number;
  lastTurnAt: number;
  /** The worker's sockets and TAP queues, and its rings' mappings: undone here when it dies, so the kernel stops giving it frames. */
  fds: { fd: number; addr?: string; len?: number }[];
  pending: Map<number, (s: WorkerStats) => void>;
}

/** The main thread's side: starts the workers, feeds them the control log, answers their upcalls. */
export class DatapathWorkers {
  private readonly handles: Handle[] = [];
  private seq = 0;
  private asks = 0;
  upcalls = 0;

  /**
   * Starts `n` workers on `topo`'s live ports; `shadow` is the FPAG's
   * datapath (its outbox so far is the log's start). Resolves once every
   * worker has opened its ports and applied the log, or rejects with the
   * first worker's error.
   */
  constructor(private readonly topo: Topology, n: number, private readonly shadow: RecordingDatapath, private readonly log: { error: (o: object, m: string) => void }) {
    const start = shadow.outbox;
    shadow.outbox = [];
    this.seq = 1;
    // One fanout group a port; group ids are per network namespace: a random base, so that two services
    // (or a service and a test) do not pick the same ones (pid-based ones met whenever pids were 1024 apart).
    const fanoutBase = randomInt(0, 0x10000);
    for (let i = 0; i < n; i++) {
      const sab = new SharedArrayBuffer(4 * CTRL_WORDS + 4 * (1 + KEY_WORDS));
      const ctrl = new Int32Array(sab, 0, CTRL_WORDS);
      const req = new Uint32Array(sab, 4 * CTRL_WORDS, 1 + KEY_WORDS);
      const { port1, port2 } = new MessageChannel();
      const worker = new Worker(WORKER_FILE, { workerData: { fpoWorker: true, index: i, sab, topology: topo, fanoutBase, log: { seq: 1, msgs: start }, port: port2, maxFlows: shadow.flows.capacity }, transferList: [port2] });
      const h: Handle = { index: i, worker, port: port1, ctrl, req, alive: true, lastTurns: 0, lastTurnAt: Date.now(), pending: new Map(), fds: [] };
      worker.on('message', (m: { type: string; id?: number; stats?: WorkerStats; error?: string; fds?: Handle['fds'] }) => {
        if (m.type === 'upcall') this.answerUpcall(h);
        else if (m.type === 'fds') h.fds = m.fds!;
        else if (m.type === 'stats' && m.id !== undefined) h.pending.get(m.id)?.(m.stats!);
      });
      worker.on('error', (e) => {
        h.alive = false;
        h.error = e.message;
        this.release(h);
        this.log.error({ worker: i, err: e.message }, 'datapath worker died');
        for (const done of h.pending.values()) done(emptyStats());
        h.pending.clear();
      });
      worker.on('exit', (code) => {
        if (h.alive && Atomics.load(ctrl, C_STOP) === 0) {
          h.alive = false;
          h.error ??= `exited with code ${code}`;
          this.log.error({ worker: i, code }, 'datapath worker exited');
        }
        this.release(h);
        for (const done of h.pending.values()) done(emptyStats());
        h.pending.clear();
      });
      this.handles.push(h);
    }
  }

  /**
   * A dead worker's sockets are closed (a thread's file descriptors are the
   * process's: they outlive it): a ring socket leaves its fanout group, so
   * the kernel spreads the flows it took over the others; a TAP queue goes.
   */
  private release(h: Handle): void {
    // A socket stays while a mapping of it does (its rings): unmapped first (the range stays reserved), then closed.
    for (const { fd, addr, len } of h.fds) {
      if (addr !== undefined && len !== undefined) libc().mapFixed(BigInt(addr), len, 0, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1);
      libc().close(fd);
    }
    h.fds = [];
  }

  /** Waits until every worker has applied the start of the log (its ports open), or one failed. */
  async ready(timeoutMs = 15_000): Promise<void> {
    await this.settled(this.seq, timeoutMs, true);
  }

  // Slow path: a worker's miss. The FPAG decides on the shadow; what it applied goes out as the log's next entry.
  private answerUpcall(h: Handle): void {
    if (Atomics.load(h.ctrl, C_UPCALL) !== REQUEST) return;
    const u: Upcall = { type: 'upcall', inPpid: h.req[0], key: h.req.slice(1) };
    try {
      this.shadow.upcallSink?.(u);
    } catch (e) {
      this.log.error({ worker: h.index, err: (e as Error).message }, 'upcall failed');
    }
    const n = this.flush();
    Atomics.store(h.ctrl, C_ANSWER, n);
    Atomics.store(h.ctrl, C_UPCALL, REPLY);
    Atomics.notify(h.ctrl, C_UPCALL);
    this.upcalls++;
  }

  /** Sends what the shadow applied since the last flush as the log's next entry; returns the log's number now. */
  flush(): number {
    if (this.shadow.outbox.length === 0) return this.seq;
    const msgs = this.shadow.outbox;
    this.shadow.outbox = [];
    this.seq++;
    for (const h of this.handles) if (h.alive) h.port.postMessage({ type: 'log', seq: this.seq, msgs });
    return this.seq;
  }

  /**
   * Flushes the log and resolves when every live worker has applied it: a
   * change asked for over the control socket is answered only then.
   */
  async sync(timeoutMs = 5_000): Promise<void> {
    await this.settled(this.flush(), timeoutMs, false);
  }

  private async settled(seq: number, timeoutMs: number, failOnDeath: boolean): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const dead = this.handles.find((h) => !h.alive);
      if (dead && failOnDeath) throw new FpoError('FPO_ERR_IO', `datapath worker ${dead.index}: ${dead.error ?? 'died'}`);
      if (this.handles.every((h) => !h.alive || Atomics.load(h.ctrl, C_APPLIED) >= seq)) return;
      if (Date.now() > deadline) {
        const late = this.handles.filter((h) => h.alive && Atomics.load(h.ctrl, C_APPLIED) < seq).map((h) => h.index);
        throw new FpoError('FPO_ERR_IO', `datapath workers ${late.join(', ')}: the control change (log ${seq}) not applied within ${timeoutMs} ms`);
      }
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  /** Each worker's counters (a dead worker's are zeros: what it counted died with it). */
  async stats(): Promise<WorkerStats[]> {
    return Promise.all(this.handles.map((h) => new Promise<WorkerStats>((resolve) => {
      if (!h.alive) return resolve(emptyStats());
      const id = ++this.asks;
      const t = setTimeout(() => { h.pending.delete(id); resolve(emptyStats()); }, 2_000);
      h.pending.set(id, (s) => { clearTimeout(t); h.pending.delete(id); resolve(s); });
      h.port.postMessage({ type: 'stats', id });
    })));
  }

  /** Alive, stalled (no loop turn for STALL_MS) or dead, per worker. */
  health(): { index: number; alive: boolean; stalled: boolean; error?: string; applied: number }[] {
    const now = Date.now();
    return this.handles.map((h) => {
      const turns = Atomics.load(h.ctrl, C_TURNS);
      if (turns !== h.lastTurns) {
        h.lastTurns = turns;
        h.lastTurnAt = now;
      }
      return { index: h.index, alive: h.alive, stalled: h.alive && now - h.lastTurnAt > STALL_MS, error: h.error, applied: Atomics.load(h.ctrl, C_APPLIED) };
    });
  }

  /** For tests: the worker thread itself. */
  workerOf(i: number): Worker {
    return this.handles[i].worker;
  }

  async stop(): Promise<void> {
    for (const h of this.handles) {
      Atomics.store(h.ctrl, C_STOP, 1);
      Atomics.notify(h.ctrl, C_WAKE);
    }
    await Promise.all(this.handles.map((h) => (h.alive ? new Promise<void>((r) => {
      const t = setTimeout(() => { void h.worker.terminate().then(() => r()); }, 3_000);
      h.worker.once('exit', () => { clearTimeout(t); r(); });
    }) : Promise.resolve())));
    for (const h of this.handles) h.port.close();
  }
}

let zero: DatapathStats | null = null;
function emptyStats(): WorkerStats {
  zero ??= new Datapath({ maxFlows: 16, maxVpid: 16, maxPpid: 16, batchCapacity: 1 }).stats();
  return { dp: zero, flows: [], live: [] };
}

// The worker side.
if (!isMainThread && (workerData as { fpoWorker?: boolean } | null)?.fpoWorker) {
  const { index, sab, topology, fanoutBase, log, port, maxFlows } = workerData as { index: number; sab: SharedArrayBuffer; topology: Topology; fanoutBase: number; log: { seq: number; msgs: ControlMessage[] }; port: MessagePort; maxFlows: number };
  const ctrl = new Int32Array(sab, 0, CTRL_WORDS);
  const req = new Uint32Array(sab, 4 * CTRL_WORDS, 1 + KEY_WORDS);
  const dp = new Datapath({ batchCapacity: 256, idleTimeoutMs: 0, maxFlows: 2 * maxFlows });
  const ports: { port: LivePort; ppid: number }[] = [];
  let applied = 0;
  const applyLog = (seq: number, msgs: ControlMessage[]) => {
    const now = monotonicMs();
    for (const m of msgs) dp.apply(m, now);
    applied = seq;
    Atomics.store(ctrl, C_APPLIED, seq);
  };
  const answer = (m: { type: string; id?: number; seq?: number; msgs?: ControlMessage[] }) => {
    if (m.type === 'log') applyLog(m.seq!, m.msgs!);
    else if (m.type === 'stats') {
      const st = dp.stats();
      const flows: [number, number, number][] = dp.dumpFlows().map((f) => [f.id, f.packets, f.bytes]);
      const live = ports.map(({ port: p, ppid }) => ({ ppid, mode: p.mode, rxMissed: p.rxMissed, txSent: p.txPackets, txRingFull: p.txRingFull, txErrors: p.txErrors }));
      parentPort!.postMessage({ type: 'stats', id: m.id, stats: { dp: st, flows, live } satisfies WorkerStats });
    }
  };
  /** Applies the control log (and answers asks) as far as it has come; waits for entry `min` if given. */
  const drain = (min = 0) => {
    for (;;) {
      const m = receiveMessageOnPort(port);
      if (m) { answer(m.message); continue; }
      if (applied >= min) return;
      Atomics.wait(ctrl, C_WAKE, 0, 1);
    }
  };
  // Every port live (DatapathWorkers refuses the others); frames that come before the log's start is
  // applied wait in the ports' rings.
  for (const p of topology.ports) {
    if (p.kind !== 'tap' && p.kind !== 'afpacket') continue;
    const lp = openLivePort(p.device, p.kind, p.io, 256, p.offload, p.tpacket, (fanoutBase + p.ppid) & 0xffff);
    ports.push({ port: lp, ppid: p.ppid });
    dp.addPort(p.ppid, lp);
  }
  parentPort!.postMessage({ type: 'fds', fds: ports.map((p) => {
    const m = p.port.mapping?.();
    return { fd: p.port.fd, addr: m?.addr.toString(), len: m?.len };
  }) });
  applyLog(log.seq, log.msgs);
  dp.upcallSink = (u) => {
    req[0] = u.inPpid;
    req.set(u.key, 1);
    Atomics.store(ctrl, C_UPCALL, REQUEST);
    parentPort!.postMessage({ type: 'upcall' });
    while (Atomics.load(ctrl, C_UPCALL) === REQUEST) {
      if (Atomics.load(ctrl, C_STOP) === 1) return;
      Atomics.wait(ctrl, C_UPCALL, REQUEST, 50);
    }
    const want = Atomics.load(ctrl, C_ANSWER);
    Atomics.store(ctrl, C_UPCALL, IDLE);
    drain(want);
  };
  // The live loop, as control/live.ts's, with the control log read between turns.
  const batch = new PacketBatch(256);
  const pollfds = Buffer.alloc(8 * Math.max(1, ports.length));
  ports.forEach((p, i) => {
    pollfds.writeInt32LE(p.port.fd, i * 8);
    pollfds.writeInt16LE(POLLIN, i * 8 + 4);
  });
  const c = libc();
  while (Atomics.load(ctrl, C_STOP) === 0) {
    drain();
    Atomics.add(ctrl, C_TURNS, 1);
    let got = 0;
    const nowUs = Date.now() * 1000;
    const now = monotonicMs();
    for (const { port: p, ppid } of ports) {
      for (let b = 0; b < 8; b++) {
        const n = p.fill(batch, ppid, nowUs);
        if (n === 0) break;
        got += n;
        dp.process(batch, now);
      }
    }
    if (got === 0) c.poll(pollfds, ports.length, 2);
  }
  // Stopped: the main thread closes nothing of ours now.
  parentPort!.postMessage({ type: 'fds', fds: [] });
  for (const { port: p } of ports) p.close();
  void index;
}
