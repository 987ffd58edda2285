/**
 * The BFD endpoints on a thread of their own (as FRR runs bfdd as its own
 * process): sockets, the timer heap and every session live in a worker, and
 * the main thread (the datapath, the FPAG, the control socket) talks to them
 * by messages only — control one way, state changes the other.
 *
 *   main thread                               worker thread (BFD)
 *   listen / add / admin / intervals ───────▶ BfdEndpoint per local address:
 *   describe / lateness      (requests)       timers, raw-socket reads, sends
 *   onChange ◀──────────────── change events ◀ Session.setState
 *
 * Why: a BFD session at 3 × 50 ms declares its peer dead after 150 ms
 * without a packet, and sends every 37.5–50 ms. On the main thread every
 * timer and every read waited for whatever the event loop was doing — a
 * batch of injected traffic, a revalidation, a major GC of the datapath's
 * heap — so a busy switch could be declared a dead tunnel. A worker has its
 * own event loop and its own heap (its GC pauses only itself), so nothing
 * the switch does delays a BFD timer; only the OS scheduler can. So the
 * thread also asks for SCHED_RR (DEFAULT_RT_PRIORITY): on this 2-core
 * machine beside a full-speed replay and other engineers' work, 1000
 * sessions at 3 × 50 ms, 20 s holds alternating, measured: SCHED_RR 0 and 0
 * false Downs (timer lateness p99 3.8 and 5.0 ms), the default policy 0 and
 * 3,522 (p99 12.5 and 32 ms). Plain nice -20 was worse than nothing (7,826
 * and 12,466 false Downs against 0 and 0 at nice 0, p99 31–104 ms): not
 * explained; likely it crowds out the softirq work that carries the BFD
 * packets themselves, which SCHED_RR's short bursts do not.
 *
 * A session's state as the main thread sees it is a copy, updated by the
 * worker's change events (and at once by adminDown/adminUp, which the
 * worker applies in the same order): what the main thread needs of it is
 * "Up or not" for the VM's liveness channel, never a timer.
 */
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { FpoError } from '../../datapath/errors.js';
import { libc } from '../../datapath/ports/libc.js';
import { BfdEndpoint, BFD_PORT } from './endpoint.js';
import { STATE } from './packet.js';
import type { Session, SessionConfig } from './session.js';

// The worker runs the compiled module (under a TypeScript test runner this file is the .ts source).
const HERE = fileURLToPath(import.meta.url);
const WORKER_FILE = HERE.endsWith('.ts') ? join(dirname(HERE), '..', '..', 'dist', 'control', 'bfd', 'thread.js') : HERE;

const SCHED_RR = 2;
/**
 * The BFD thread runs under SCHED_RR at this priority when it may (root or
 * CAP_SYS_NICE): it then runs the moment a timer or a packet wakes it, ahead
 * of any busy process of the default policy. Low among real-time priorities
 * (the kernel's own threads sit at 50 and above), and bounded by the
 * kernel's real-time throttling (95 % of a core), so a runaway BFD thread
 * cannot take the machine.
 */
export const DEFAULT_RT_PRIORITY = 10;

/** Requests from the main thread; each is answered by a Reply with the same rid. */
type Request =
  | { op: 'listen'; local: string; port: number }
  | { op: 'add'; id: number; local: string; peer: string; config: SessionConfig; peerPort: number; key: string }
  | { op: 'admin'; id: number; up: boolean; diag: number }
  | { op: 'intervals'; id: number; txUs: number; rxUs: number }
  | { op: 'describe' }
  | { op: 'lateness'; record: boolean }
  | { op: 'close' };

type Reply = { rid: number; ok: true; result: unknown } | { rid: number; ok: false; message: string };

/** A state change, worker → main. */
interface ChangeEvent { ev: 'change'; id: number; peer: string; from: string; to: string; why: string; diag: number }

/** What describe() answers: each session's describe() by id, and each endpoint's counters. */
export interface BfdSnapshot {
  /** The thread's scheduling policy, or why it kept the default. */
  scheduling: string;
  sessions: Record<number, Record<string, unknown>>;
  endpoints: { local: string; discards: Record<string, number>; sendErrors: number; ttlUnchecked: number; rawForeign: number }[];
}

/** The main thread's handle of a session in the BFD thread. */
export class RemoteSession {
  /** The session's state (STATE), as of the last change event or local admin request. */
  state: number = STATE.Down;

  constructor(readonly id: number, readonly peer: string, private readonly thread: BfdThread) {}

  /** Takes the session down on purpose (AdminDown with `diag`), telling the peer why. */
  adminDown(diag: number): void {
    this.state = STATE.AdminDown;
    this.thread.post({ op: 'admin', id: this.id, up: false, diag });
  }

  /** Back from AdminDown (to Down; the peer brings it Up). */
  adminUp(): void {
    if (this.state === STATE.AdminDown) this.state = STATE.Down;
    this.thread.post({ op: 'admin', id: this.id, up: true, diag: 0 });
  }

  /** Changes the intervals (a Poll sequence, in the thread). */
  setIntervals(txUs: number, rxUs: number): void {
    this.thread.post({ op: 'intervals', id: this.id, txUs, rxUs });
  }
}

export class BfdThread {
  private readonly worker: Worker;
  private rid = 0;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private readonly sessions = new Map<number, RemoteSession>();
  private failed: Error | null = null;
  /** Called on every state change, after the handle's state is updated (for logs and the tunnel monitor). */
  onChange: (s: RemoteSession, from: string, to: string, why: string, diag: number) => void = () => undefined;

  /** rtPriority: the thread's SCHED_RR priority (1–99; 0 keeps the default policy); $FPO_BFD_RT overrides it. */
  constructor(opts: { rtPriority?: number } = {}) {
    const env = process.env.FPO_BFD_RT;
    const rtPriority = env !== undefined && env !== '' ? Number(env) : opts.rtPriority ?? DEFAULT_RT_PRIORITY;
    this.worker = new Worker(WORKER_FILE, { workerData: { fpoBfd: true, rtPriority } });
    this.worker.on('message', (m: Reply | ChangeEvent) => {
      if ('ev' in m) {
        const s = this.sessions.get(m.id);
        if (!s) return;
        s.state = STATE[m.to as keyof typeof STATE];
        this.onChange(s, m.from, m.to, m.why, m.diag);
        return;
      }
      const p = this.pending.get(m.rid);
      if (!p) return;
      this.pending.delete(m.rid);
      if (m.ok) p.resolve(m.result);
      else p.reject(new FpoError('FPO_ERR_IO', `bfd thread: ${m.message}`));
    });
    // A thread that dies takes its sessions with it: every request after that fails, saying why.
    this.worker.on('error', (e) => this.fail(e));
    this.worker.on('exit', (code) => this.fail(new Error(`exited with code ${code}`)));
  }

  private fail(e: Error): void {
    this.failed ??= e;
    for (const p of this.pending.values()) p.reject(new FpoError('FPO_ERR_IO', `bfd thread: ${e.message}`));
    this.pending.clear();
  }

  /** Sends a request without waiting for its answer (admin and interval changes: they cannot fail for a known session). */
  post(req: Request): void {
    if (!this.failed) this.worker.postMessage({ rid: 0, ...req });
  }

  private request(req: Request): Promise<unknown> {
    if (this.failed) return Promise.reject(new FpoError('FPO_ERR_IO', `bfd thread: ${this.failed.message}`));
    const rid = ++this.rid;
    return new Promise((resolve, reject) => {
      this.pending.set(rid, { resolve, reject });
      this.worker.postMessage({ rid, ...req });
    });
  }

  /** Opens an endpoint on `local` (receiving on `port`, 3784 by default). */
  async listen(local: string, port = BFD_PORT): Promise<void> {
    await this.request({ op: 'listen', local, port });
  }

  /** Adds (and starts) a session from `local` (an endpoint already listening) to `peer`. */
  async add(local: string, peer: string, config: SessionConfig, peerPort = BFD_PORT, key = peer): Promise<RemoteSession> {
    const id = this.nextId++;
    const s = new RemoteSession(id, peer, this);
    this.sessions.set(id, s);
    await this.request({ op: 'add', id, local, peer, config, peerPort, key });
    return s;
  }

  /** Every session's describe(), by id, and the endpoints' counters. */
  describe(): Promise<BfdSnapshot> {
    return this.request({ op: 'describe' }) as Promise<BfdSnapshot>;
  }

  /** Starts recording timer lateness (record true), or stops and returns its summary, ms (the worst endpoint's, by p99). */
  lateness(record: boolean): Promise<{ p50: number; p99: number; max: number; samples: number }> {
    return this.request({ op: 'lateness', record }) as Promise<{ p50: number; p99: number; max: number; samples: number }>;
  }

  /** Closes every endpoint and ends the thread. */
  async close(): Promise<void> {
    if (!this.failed) await this.request({ op: 'close' }).catch(() => undefined);
    this.failed ??= new Error('closed');
    await this.worker.terminate();
  }
}

/** The worker's side: endpoints by local address, sessions by the main thread's id. */
function serve(): void {
  const port = parentPort!;
  const { rtPriority } = workerData as { rtPriority: number };
  let scheduling = 'SCHED_OTHER (default)';
  if (rtPriority > 0) {
    try {
      scheduling = libc().setScheduler(SCHED_RR, rtPriority) === 0 ? `SCHED_RR ${rtPriority}` : `SCHED_OTHER (SCHED_RR refused: errno ${libc().errno()})`;
    } catch (e) {
      scheduling = `SCHED_OTHER (${(e as Error).message})`;
    }
  }
  const endpoints = new Map<string, BfdEndpoint>();
  const sessions = new Map<number, Session>();
  const ids = new Map<Session, number>();
  const onChange = (peer: string, s: Session, from: string, to: string, why: string): void => {
    const id = ids.get(s);
    if (id !== undefined) port.postMessage({ ev: 'change', id, peer, from, to, why, diag: s.diag } satisfies ChangeEvent);
  };
  const handle = async (req: Request): Promise<unknown> => {
    switch (req.op) {
      case 'listen': {
        if (endpoints.has(req.local)) return null;
        const ep = new BfdEndpoint(req.local, req.port);
        await ep.listen();
        ep.onChange = onChange;
        endpoints.set(req.local, ep);
        return null;
      }
      case 'add': {
        const ep = endpoints.get(req.local);
        if (!ep) throw new Error(`local: no endpoint listens on ${req.local}`);
        const s = await ep.add(req.peer, req.config, req.peerPort, req.key);
        ids.set(s, req.id);
        sessions.set(req.id, s);
        return { localDisc: s.localDisc };
      }
      case 'admin': {
        const s = sessions.get(req.id);
        if (req.up) s?.adminUp();
        else s?.adminDown(req.diag);
        return null;
      }
      case 'intervals':
        sessions.get(req.id)?.setIntervals(req.txUs, req.rxUs);
        return null;
      case 'describe': {
        const out: BfdSnapshot = { scheduling, sessions: {}, endpoints: [] };
        for (const [id, s] of sessions) out.sessions[id] = s.describe();
        for (const ep of endpoints.values()) out.endpoints.push({ local: ep.localAddress, discards: { ...ep.discards } as Record<string, number>, sendErrors: ep.sendErrors, ttlUnchecked: ep.ttlUnchecked, rawForeign: ep.rawForeign });
        return out;
      }
      case 'lateness': {
        let worst = { p50: 0, p99: 0, max: 0, samples: 0 };
        for (const ep of endpoints.values()) {
          ep.timers.recordLateness = req.record;
          if (req.record) ep.timers.lateness.reset();
          else if (ep.timers.lateness.percentile(99) >= worst.p99) worst = ep.timers.lateness.summary();
        }
        return worst;
      }
      case 'close':
        for (const ep of endpoints.values()) await ep.close();
        endpoints.clear();
        return null;
    }
  };
  port.on('message', (m: Request & { rid: number }) => {
    handle(m).then(
      (result) => { if (m.rid) port.postMessage({ rid: m.rid, ok: true, result } satisfies Reply); },
      (e: Error) => { if (m.rid) port.postMessage({ rid: m.rid, ok: false, message: e.message } satisfies Reply); },
    );
  });
}

if (!isMainThread && (workerData as { fpoBfd?: boolean } | null)?.fpoBfd) serve();
