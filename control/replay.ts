/**
 * Replay: a capture file in, one capture file per emitting port out, and a
 * report of where every packet went. The loop is the architecture:
 *
 *   rx (reader.fill) → datapath.process (parse, classify/upcall, execute, tx)
 *
 * with the FPAG answering upcalls in the same thread.
 *
 * Outputs: OUT/<port>.<pcap|pcapng>, each written under a temp name and
 * renamed when the run ends (capture-writer.ts `partial`); an output that
 * is an input is refused before anything is written; files of an earlier
 * run that this one did not write are listed (`stale`) or, with `clean`,
 * removed first. The loop is a generator that yields between batches, so
 * replayAsync can let signal handlers run and stop it after a batch.
 */
import { mkdirSync, readdirSync, statSync, unlinkSync } from 'node:fs';
import { fileId, processRunning } from './files.js';
import { join } from 'node:path';
import { Arena } from '../datapath/arena.js';
import { PacketBatch } from '../datapath/batch.js';
import { formatMatch, macNumber } from '../datapath/classifier/flow-key.js';
import { Datapath } from '../datapath/datapath.js';
import { DROP, type DropReason } from '../datapath/drops.js';
import { FpoError } from '../datapath/errors.js';
import { CaptureReader, LINKTYPE_ETHERNET } from '../datapath/ports/capture-reader.js';
import type { SpawnedThreads } from './replay-threads.js';
import { CaptureWriter, PARTIAL_SUFFIX, txBufferBytes, type CaptureLayout } from '../datapath/ports/capture-writer.js';
import { Fpag } from './fpag.js';
import { formatCtAction } from './flow-syntax.js';
import { FpagThread } from './fpag-thread.js';
import { loadTopology, pathNameProblem, type Topology } from './topology.js';
import { applyEvent, type AppliedEvent, type ControlEvent } from './events.js';
import { replayWorkersSteps } from './replay-workers.js';

export const CHUNK = 1 << 20;

export interface ReplayOptions {
  capture: string;
  topology: string | Topology;
  outDir: string;
  /** Packets per batch (default 256). */
  batchSize?: number;
  /** Most flows at once (default 65536). */
  maxFlows?: number;
  /** The lookup caches in front of the megaflow table (default both on; off for comparison: forwarding is the same). */
  caches?: { emc: boolean; smc: boolean; bloom?: boolean };
  /** Called now and then with (bytes read, file size). */
  onProgress?: (done: number, total: number) => void;
  /**
   * Called once, before the first batch, with the datapath, the FPAG and its thread (null inline): a bench's or
   * test's hook that, unlike beforeBatch, leaves the batches filled as a plain replay fills them (lazily).
   */
  onStart?: (dp: Datapath, fpag: Fpag, thread: FpagThread | null) => void;
  /** Called before each batch is processed with the number of packets read so far (and the FPAG's thread, when it has one). */
  beforeBatch?: (packetsSoFar: number, dp: Datapath, fpag: Fpag, thread: FpagThread | null) => void;
  /** Timed control events, applied between the packets where they fall (events.ts). */
  events?: ControlEvent[];
  /** Where the FPAG runs: in this thread (default) or its own worker thread, speaking only by messages. */
  fpag?: 'inline' | 'thread' | 'async';
  /** false: every packet through the stages, none through the datapath's fast lane (for comparison; default true). */
  fastLane?: boolean;
  /** Other files the run reads (topology, events): no output may be one of them (the capture and a topology file are checked always). */
  inputs?: string[];
  /** Remove fpo's own files in outDir first: <port>.pcap / .pcapng of the topology's ports, and their temp files (<name>.partial-PID). */
  clean?: boolean;
  /** Set `signal` (e.g. from a signal handler) to stop after the batch being switched: outputs are closed and renamed, the report says `interrupted`. */
  interrupt?: { signal?: string };
  /** Datapath workers, one a core (default 1: this thread alone). More: replay-workers.ts. */
  workers?: number;
  /**
   * With workers: 'ready' (default): the main thread switches alone until a
   * worker thread is up, which then takes its flows from the next batch on;
   * 'start': every worker from the first packet (the main thread waits);
   * a number N: the main thread switches alone up to the first batch
   * boundary at or past input packet N, then waits for the threads there
   * (for tests of a join mid-stream).
   */
  workersJoin?: 'ready' | 'start' | number;
  /** Threads spawned ahead for workers > 1 (replay-threads.ts; the command line's): taken if there are workers - 1 of them, else ended. */
  threads?: SpawnedThreads;
  /** For tests: worker `worker` (1.. workers-1, a thread) throws (or with `stall`, spins for ever) when it reaches input packet `atPacket`. */
  failWorker?: { worker: number; atPacket: number; stall?: boolean };
  /** With workers: a thread that finishes no batch for this long while the main thread waits for it fails the run (default 30000 ms). */
  workerStallMs?: number;
}

export interface PortReport {
  name: string;
  ppid: number;
  role: 'vm' | 'uplink';
  /** VPID mapped to the port at the end (interface or uplink), or -1. */
  vpid: number;
  /** Interface or uplink behind the port. */
  attached?: string;
  rx: { packets: number; bytes: number };
  tx: { packets: number; bytes: number };
  /** Output file, when the port emitted packets. */
  file?: string;
}

export interface FlowReport {
  match: string;
  actions: string;
  packets: number;
  bytes: number;
  /** Seconds (of datapath clock) since the flow last matched, at the end of the run. */
  usedSecondsAgo: number;
}

export interface ReplayReport {
  capture: string;
  format: 'pcap' | 'pcapng';
  topology: string;
  packets: { in: number; out: number; dropped: number; copies: number };
  /** Tunnel packets for this host: flagged (to the special-processing path) and unflagged (decapsulated, fast path). */
  tunnel: { flagged: number; unflagged: number; specialTo: string; sent: number; flaggedSent: number };
  drops: Partial<Record<DropReason, number>>;
  ports: PortReport[];
  flows: { installed: number; active: number; evicted: number; expired: number; upcalls: number; emcHits: number; megaflowHits: number; smcHits: number; misses: number; fastLane: number };
  flowTable?: FlowReport[];
  /** The capture clock (datapath/clock.ts): steps forward longer than its bound (cut to it), steps back (taken as 0). */
  clock: { jumps: number; backs: number };
  /**
   * Where the FPAG ran; the keys it decided (upcalls), in how many batches
   * (one a datapath batch with misses); for a thread, the round trips (a
   * batch's misses go in parts: fpag-thread.ts PART_KEYS) and their mean.
   */
  fpag: { placement: 'inline' | 'thread' | 'async'; upcalls: number; batches: number; roundTrips?: number; roundTripUs: number | null; early?: number; partial?: number; queue?: { parked: number; maxDepth: number; waits: number } };
  /** Control events applied, with where they landed and what they did. */
  events?: AppliedEvent[];
  /** The capture's fault, when reading stopped early; packets before it were processed. */
  error?: { code: string; message: string; offset?: number };
  /** The signal that stopped the run early (ReplayOptions.interrupt): the outputs hold the packets switched before it, and are complete captures of those. */
  interrupted?: string;
  /**
   * Files in the output folder that this run did not write but an earlier
   * one may have: <port>.pcap/.pcapng of this topology's ports that emitted
   * nothing now (or in the other format), and temp files of a run that was
   * killed. Listed, not removed (`clean` removes them).
   */
  stale: string[];
  /** With `clean`: the files removed before the run. */
  cleaned?: string[];
  /**
   * With workers > 1 (replay-workers.ts): how many, the upcalls the FPAG
   * answered with a flow it had decided for another worker, and each
   * worker's own datapath counters.
   */
  workers?: {
    count: number;
    /** The input packet where each worker took over its flows (-1: it never did: the main worker switched all). */
    joinedAt: number[];
    answeredFromTable: number;
    each: { beganMs: number; endedMs: number; waitedMs: number; ringWaitMs?: number; packets: number; upcalls: number; flows: number; emcHits: number; megaflowHits: number; expired: number }[];
  };
  seconds: number;
}

export type ReplayResult = { report: ReplayReport; datapath: Datapath; fpag: Fpag };

/** Replays a capture, start to end, in one synchronous call. */
export function replay(opts: ReplayOptions): ReplayResult {
  return drive(replaySteps(opts));
}

/**
 * replay(), giving the event loop a turn every `sliceMs` of switching so
 * that signal handlers run (and can set opts.interrupt.signal).
 */
export function replayAsync(opts: ReplayOptions, sliceMs = 20): Promise<ReplayResult> {
  return driveAsync(replaySteps(opts), sliceMs);
}

/** Runs a step generator to its end. */
function drive<T>(g: Generator<void, T>): T {
  for (;;) {
    const r = g.next();
    if (r.done) return r.value;
  }
}

/** drive(), with a turn of the event loop every `sliceMs`. */
async function driveAsync<T>(g: Generator<void, T>, sliceMs: number): Promise<T> {
  let since = performance.now();
  for (;;) {
    const r = g.next();
    if (r.done) return r.value;
    const now = performance.now();
    if (now - since >= sliceMs) {
      await new Promise((resolve) => setImmediate(resolve));
      since = performance.now();
    }
  }
}

/** Output file names a port may have: either format. */
const FORMATS = ['pcap', 'pcapng'] as const;

/**
 * Refuses an output that is one of the run's inputs — the same file by
 * device and inode (so through a symlink or a hard link too), not only the
 * same path string — before anything is written: replaying OUT/vf2.pcap
 * into OUT overwrote its own input.
 */
export function refuseOutputsThatAreInputs(outDir: string, ports: readonly { name: string }[], inputs: readonly string[]): void {
  const ids = new Map<string, string>();
  for (const p of inputs) {
    const id = fileId(p); // an input that cannot be stat'ed is reported by whoever opens it
    if (id !== undefined) ids.set(id, p);
  }
  for (const p of ports) {
    for (const ext of FORMATS) {
      const f = join(outDir, `${p.name}.${ext}`);
      const id = fileId(f);
      if (id === undefined) continue; // not there: nothing to overwrite
      const input = ids.get(id);
      if (input !== undefined) throw new FpoError('FPO_ERR_USAGE', `${f}: port ${p.name}'s output is ${input}, an input of this run (the same file); writing it would replace the input: choose another --out`, { path: f });
    }
  }
}


/** fpo's own files in outDir for these ports (outputs of either format, temp files of killed runs), but `except` (this run's outputs). */
export function ownFiles(outDir: string, ports: readonly { name: string }[], except: ReadonlySet<string>): string[] {
  let names: string[];
  try {
    names = readdirSync(outDir);
  } catch {
    return [];
  }
  const finals = new Set<string>();
  for (const p of ports) for (const ext of FORMATS) finals.add(`${p.name}.${ext}`);
  const out: string[] = [];
  for (const n of names.sort()) {
    const cut = n.lastIndexOf(PARTIAL_SUFFIX);
    const pid = cut > 0 ? n.slice(cut + PARTIAL_SUFFIX.length) : '';
    // A temp file of a run still going (another replay into this folder) is that run's, not stale.
    const own = finals.has(n) || (cut > 0 && finals.has(n.slice(0, cut)) && /^\d+$/.test(pid) && !processRunning(Number(pid)));
    const f = join(outDir, n);
    if (own && !except.has(f)) out.push(f);
  }
  return out;
}

/** The replay, one batch a step (the loop is the architecture; see the header). */
function* replaySteps(opts: ReplayOptions): Generator<void, ReplayResult> {
  if (opts.workers !== undefined && opts.workers !== 1) return yield* replayWorkersSteps(opts);
  const topo = typeof opts.topology === 'string' ? loadTopology(opts.topology) : opts.topology;
  for (const p of topo.ports) {
    const problem = pathNameProblem(p.name);
    if (problem !== null) throw new FpoError('FPO_ERR_BAD_TOPOLOGY', `${topo.path}: port ${JSON.stringify(p.name)}: name: ${problem}`, { path: topo.path });
  }
  const bySourceMac = topo.inputPort === 'by-source-mac';
  const inputName = (bySourceMac ? undefined : topo.inputPort) ?? topo.ports.find((p) => p.role === 'uplink')?.name ?? topo.ports[0].name;
  const input = topo.ports.find((p) => p.name === inputName)!;
  // by-source-mac: the port of the interface whose MAC a packet comes from (else the default input).
  const portOfMac = new Map<number, number>();
  if (bySourceMac) {
    for (const itf of topo.interfaces) {
      if (itf.port === undefined) continue;
      const b = itf.macBytes;
      portOfMac.set(macNumber(b, 0), topo.ports.find((p) => p.name === itf.port)!.ppid);
    }
  }
  const batchSize = opts.batchSize ?? 256;
  // No buffer larger than the capture: the arena is touched whole at start (arena.ts),
  // and for a small capture the 1 MiB chunk and 16-256 KiB a port were most of the
  // memory a replay touched (3.6 MB for the 671-packet demo's 10 ports, ~1 ms a MB here).
  const size = captureSize(opts.capture);
  const chunk = Math.min(CHUNK, size);
  const txBuffer = Math.min(txBufferBytes(topo.ports.length), Math.max(16 * 1024, size));
  const arena = new Arena(chunk + topo.ports.length * (txBuffer + 64) + 4096);
  const reader = new CaptureReader(opts.capture, arena, chunk);
  try {
    if (reader.format === 'pcap' && reader.interfaces[0].linktype !== LINKTYPE_ETHERNET) {
      throw new FpoError('FPO_ERR_LINKTYPE', `${opts.capture}: offset 20: link type ${reader.interfaces[0].linktype} is not supported; fpo switches Ethernet (link type 1)`, { path: opts.capture, offset: 20 });
    }
    refuseOutputsThatAreInputs(opts.outDir, topo.ports, [opts.capture, topo.path, ...(opts.inputs ?? [])]);
    try {
      mkdirSync(opts.outDir, { recursive: true });
    } catch (e) {
      throw new FpoError('FPO_ERR_IO', `${opts.outDir}: cannot create: ${(e as Error).message}`, { path: opts.outDir });
    }
    let cleaned: string[] | undefined;
    if (opts.clean) {
      cleaned = ownFiles(opts.outDir, topo.ports, new Set());
      for (const f of cleaned) {
        try {
          unlinkSync(f);
        } catch (e) {
          throw new FpoError('FPO_ERR_IO', `${f}: cannot remove (--clean): ${(e as Error).message}`, { path: f });
        }
      }
    }
    const dp = new Datapath({
      batchCapacity: batchSize, maxFlows: opts.maxFlows, ...(opts.caches !== undefined ? { emcInsertInvProb: opts.caches.emc ? 100 : 0, smc: opts.caches.smc, bloom: opts.caches.bloom ?? true } : {}),
      ...(opts.fpag === 'async' ? { upcallQueuePackets: 8192 } : {}),
    });
    dp.fastLane.enabled = opts.fastLane ?? true;
    const writers = new Map<number, CaptureWriter>();
    for (const p of topo.ports) {
      // Each output is written under a temp name and renamed when complete (capture-writer.ts).
      const w = new CaptureWriter(join(opts.outDir, `${p.name}.${reader.format}`), reader, arena, txBuffer, { partial: true });
      writers.set(p.ppid, w);
      dp.addPort(p.ppid, w);
    }
    let kept = false;
    let thread: FpagThread | null = null;
    try {
      const fpag = new Fpag(topo, dp);
      if (opts.fpag === 'thread' || opts.fpag === 'async') {
        if (opts.events?.length) throw new FpoError('FPO_ERR_USAGE', '--events: not with --fpag thread (events change the FPAG\'s state, which lives in the worker)');
        // The local Fpag only names VPIDs in the report; the worker's decides.
        thread = new FpagThread(topo, dp, opts.fpag === 'async');
      } else {
        fpag.start();
      }

      const batch = new PacketBatch(batchSize);
      opts.onStart?.(dp, fpag, thread);
      const started = performance.now();
      let lastProgress = started;
      const clock = packetClock(reader);
      let soFar = 0;
      const pending = [...(opts.events ?? [])];
      const applied: AppliedEvent[] = [];
      // A lazy fill when nothing but the datapath reads the batch (no events to place, no ports by MAC, no hook).
      const lazyOk = !bySourceMac && opts.beforeBatch === undefined;
      let interrupted: string | undefined;
      while (reader.fill(batch, input.ppid, lazyOk && pending.length === 0) > 0) {
        if (bySourceMac) assignInputPorts(batch, portOfMac);
        opts.beforeBatch?.(soFar, dp, fpag, thread);
        // Slow path: events that fall inside this batch split it where they fall.
        while (pending.length > 0) {
          const at = firstDue(pending, batch, soFar, reader);
          if (at === null) break;
          const { index, event } = at;
          if (index > 0) {
            const n = batch.count;
            batch.count = index;
            dp.process(batch, dp.captureClock.advance(clock(batch)));
            batch.count = n;
            batch.batchShift(index);
            soFar += index;
          }
          pending.splice(pending.indexOf(event), 1);
          applied.push({ event, atPacket: soFar, result: applyEvent(fpag, event) });
        }
        soFar += batch.count;
        dp.process(batch, dp.captureClock.advance(clock(batch)));
        if (opts.onProgress) {
          const t = performance.now();
          if (t - lastProgress > 100) {
            lastProgress = t;
            opts.onProgress(reader.bytesRead, reader.fileSize);
          }
        }
        // Between batches: a driver may give the event loop a turn here (replayAsync), and a signal stop the run.
        yield;
        if (opts.interrupt?.signal !== undefined) {
          interrupted = opts.interrupt.signal;
          break;
        }
      }
      // An FPAG answering later (async): the packets still waiting for it are switched now.
      dp.drainUpcalls(dp.now);
      // Events past the end of the capture still happen, after the last packet (and before the report, which shows the state at the end);
      // not after an interrupted run's last packet, which is not the capture's.
      if (interrupted === undefined) for (const event of pending) applied.push({ event, atPacket: soFar, result: applyEvent(fpag, event) });
      for (const w of writers.values()) w.close();
      kept = true;
      const seconds = (performance.now() - started) / 1000;
      opts.onProgress?.(reader.fileSize, reader.fileSize);

      const st = dp.stats();
      if (st.packetsIn !== reader.records || st.packetsIn !== st.delivered + st.dropped) {
        throw new Error(`accounting broken: read ${reader.records}, in ${st.packetsIn}, delivered ${st.delivered}, dropped ${st.dropped}`);
      }
      const ports: PortReport[] = topo.ports.map((p) => {
        const s = st.ports.find((x) => x.ppid === p.ppid)!;
        const w = writers.get(p.ppid)!;
        const vpid = dp.mapping.toVpid[p.ppid];
        return {
          name: p.name, ppid: p.ppid, role: p.role, vpid, attached: vpid >= 0 ? fpag.vpidName(vpid) : undefined,
          rx: { packets: s.rxPackets, bytes: s.rxBytes }, tx: { packets: s.txPackets, bytes: s.txBytes },
          file: w.opened ? w.path : undefined,
        };
      });
      const report: ReplayReport = {
        capture: opts.capture,
        format: reader.format,
        topology: topo.path,
        packets: { in: st.packetsIn, out: st.delivered, dropped: st.dropped, copies: st.copies },
        tunnel: { flagged: st.special, unflagged: st.decapsulated, specialTo: topo.tunnel?.specialPort ?? 'fpag', sent: st.encapsulated, flaggedSent: st.flaggedSent },
        drops: st.drops,
        ports,
        flows: { installed: st.flowsInstalled, active: st.flowsNow, evicted: st.flowsEvicted, expired: st.flowsExpired, upcalls: st.upcalls, emcHits: st.emcHits, megaflowHits: st.megaflowHits, smcHits: st.smcHits, misses: st.lookupsMissed, fastLane: st.fastLane },
        clock: { jumps: st.clockJumps, backs: st.clockBacks },
        stale: ownFiles(opts.outDir, topo.ports, new Set([...writers.values()].filter((w) => w.opened).map((w) => w.path))),
        seconds,
        fpag: thread
          ? { placement: thread.async ? 'async' : 'thread', upcalls: thread.upcalls, batches: dp.upcallBatches, roundTrips: thread.roundTrips, roundTripUs: thread.roundTrips ? thread.roundTripNs / thread.roundTrips / 1000 : 0, ...(thread.async ? { queue: dp.upcallQueueStats() } : { early: thread.earlyRequests, partial: thread.partialAnswers }) }
          : { placement: 'inline', upcalls: st.upcalls, batches: dp.upcallBatches, roundTripUs: null },
      };
      if (opts.events) report.events = applied;
      if (reader.error) report.error = { code: reader.error.code, message: reader.error.message, offset: reader.error.offset };
      if (interrupted !== undefined) report.interrupted = interrupted;
      if (cleaned !== undefined) report.cleaned = cleaned;
      return { report, datapath: dp, fpag };
    } finally {
      // A run that failed keeps nothing: its temp files go (a run that completed renamed them); its FPAG thread stops too.
      if (!kept) for (const w of writers.values()) w.abandon();
      if (thread !== null) void (thread as FpagThread).stop();
    }
  } finally {
    reader.close();
  }
}

/** A regular file's size rounded up to 4 KiB, or CHUNK when it cannot be known (the reader reports what is wrong). */
export function captureSize(path: string): number {
  try {
    const st = statSync(path);
    if (st.isFile() && st.size > 0) return Math.ceil(st.size / 4096) * 4096;
  } catch {
    // The reader's open says why.
  }
  return CHUNK;
}

/** The earliest pending event that falls inside the batch, and the index of the packet it comes before. */
export function firstDue(pending: ControlEvent[], batch: PacketBatch, soFar: number, reader: CaptureLayout): { index: number; event: ControlEvent } | null {
  let best: { index: number; event: ControlEvent } | null = null;
  for (const e of pending) {
    let index = -1;
    if (e.atPacket !== undefined) {
      if (e.atPacket - soFar < batch.count) index = Math.max(0, e.atPacket - soFar);
    } else {
      for (let i = 0; i < batch.count; i++) if (atOrAfter(reader, batch, i, e.atTime!)) { index = i; break; }
    }
    if (index >= 0 && (best === null || index < best.index)) best = { index, event: e };
  }
  return best;
}

/**
 * Whether packet i's capture time is at or after `t` (epoch seconds, a double
 * parsed from the decimal in the events file). Near t the packet's time is
 * compared as the double nearest its exact decimal time, so an event given a
 * packet's own timestamp (as tshark prints it) lands before that packet:
 * computed in floating-point ms, one µs timestamp in eight came out below the
 * same time written in seconds, and the event one packet late.
 */
export function atOrAfter(reader: CaptureLayout, b: PacketBatch, i: number, t: number): boolean {
  // Far from t (floating-point error is far below 1 ms), the ms time decides.
  const ms = packetMs(reader, b, i);
  if (ms < t * 1000 - 1) return false;
  if (ms > t * 1000 + 1) return true;
  let sec: number;
  let frac: string;
  if (reader.format === 'pcap') {
    sec = b.tsA[i];
    frac = String(b.tsB[i]).padStart(reader.nanos ? 9 : 6, '0');
  } else {
    const itf = reader.interfaces[b.ifIndex[i]];
    const r = itf.tsresol;
    if (r & 0x80) return ms >= t * 1000; // binary fractions of a second: no short decimal to round
    // 64-bit units (ns since 1970 pass 2^53): exact in BigInt.
    const units = (BigInt(b.tsA[i]) << 32n) | BigInt(b.tsB[i]);
    const perSec = 10n ** BigInt(r);
    sec = Number(units / perSec) + itf.tsoffset;
    frac = String(units % perSec).padStart(r, '0');
  }
  const whole = Math.floor(t);
  if (sec !== whole) return sec > whole;
  return Number(frac.length ? `${sec}.${frac}` : `${sec}`) >= t;
}

/** Capture time of packet i in ms. */
function packetMs(reader: CaptureLayout, b: PacketBatch, i: number): number {
  if (reader.format === 'pcap') return b.tsA[i] * 1000 + b.tsB[i] / (reader.nanos ? 1e6 : 1e3);
  const itf = reader.interfaces[b.ifIndex[i]];
  const r = itf.tsresol;
  const perSec = r & 0x80 ? 2 ** (r & 0x7f) : 10 ** r;
  return ((b.tsA[i] * 4294967296 + b.tsB[i]) / perSec + itf.tsoffset) * 1000;
}

/** Sets each packet's in PPID from its source MAC (the rx side of a lab of VM ports). */
export function assignInputPorts(batch: PacketBatch, portOfMac: Map<number, number>): void {
  const b = batch.buf;
  for (let i = 0; i < batch.count; i++) {
    if (batch.caplen[i] < 12) continue;
    const o = batch.off[i] + 6;
    const ppid = portOfMac.get(macNumber(b, o));
    if (ppid !== undefined) batch.inPpid[i] = ppid;
  }
}

export interface HostsReport {
  hosts: (ReplayReport & { host: string })[];
  /** The signal that stopped the run: the hosts after the one it stopped are not replayed. */
  interrupted?: string;
}

/**
 * Replays a capture through several hosts joined by tunnels: the capture
 * arrives at the first host; what each host sends out of the uplink that
 * reaches the next host (written as that uplink's capture) is the next
 * host's input, on its replay.inputPort (default: its first uplink).
 * Each host writes to DIR/<host>/.
 */
export function replayHosts(opts: HostsOptions): HostsReport {
  return drive(replayHostsSteps(opts));
}

/** replayHosts(), giving the event loop a turn every `sliceMs` (see replayAsync). */
export function replayHostsAsync(opts: HostsOptions, sliceMs = 20): Promise<HostsReport> {
  return driveAsync(replayHostsSteps(opts), sliceMs);
}

export type HostsOptions = Omit<ReplayOptions, 'topology'> & { hosts: Topology[] };

function* replayHostsSteps(opts: HostsOptions): Generator<void, HostsReport> {
  const reports: HostsReport['hosts'] = [];
  let capture = opts.capture;
  // Each host's name becomes a folder: loading checked it (topology.ts pathNameProblem); a topology made in code is checked here, before anything is written.
  opts.hosts.forEach((t, i) => {
    const problem = pathNameProblem(t.name);
    if (problem !== null) throw new FpoError('FPO_ERR_BAD_TOPOLOGY', `${t.path}: hosts[${i}]: name: ${problem}`, { path: t.path });
  });
  // No host's output may be an input of the run: checked for all hosts before the first writes.
  for (const t of opts.hosts) refuseOutputsThatAreInputs(join(opts.outDir, t.name), t.ports, [opts.capture, t.path, ...(opts.inputs ?? [])]);
  for (let h = 0; h < opts.hosts.length; h++) {
    const topo = opts.hosts[h];
    const outDir = join(opts.outDir, topo.name);
    const { report } = yield* replaySteps({ ...opts, capture, topology: topo, outDir });
    reports.push({ host: topo.name, ...report });
    if (report.interrupted !== undefined) return { hosts: reports, interrupted: report.interrupted };
    const next = opts.hosts[h + 1];
    if (!next) break;
    const remote = topo.tunnel?.remotes.find((r) => r.name === next.name);
    const uplink = remote?.uplink ?? topo.ports.find((p) => p.role === 'uplink')?.name;
    const file = report.ports.find((p) => p.name === uplink)?.file;
    if (!file) {
      throw new FpoError('FPO_ERR_USAGE', `host ${topo.name} sent nothing out of ${uplink ?? 'an uplink'} toward ${next.name}; nothing to replay there`);
    }
    capture = file;
  }
  return { hosts: reports };
}

/** Flow table as dump-flows lines' data, VPIDs named. */
export function flowReport(dp: Datapath, fpag: Fpag): FlowReport[] {
  return dp.dumpFlows().map((f) => ({
    match: formatMatch(f.key, f.mask),
    actions: f.actions.map((a) => {
      switch (a.op) {
        case 'output': return `output:vpid${a.vpid}${fpag.vpidName(a.vpid) ? `(${fpag.vpidName(a.vpid)})` : ''}`;
        case 'drop': return `drop(${Object.keys(DROP)[a.reason]})`;
        case 'encap': return `encap(tunnel:${a.tunnel}${fpag.tunnelName(a.tunnel) ? `(${fpag.tunnelName(a.tunnel)})` : ''},vni:${a.vni})`;
        case 'flag': return 'flag';
        case 'push_vlan': return `push_vlan:${a.vid}`;
        case 'pop_vlan': return 'pop_vlan';
        case 'ct': return formatCtAction(a);
      }
    }).join(',') || 'drop',
    packets: f.packets,
    bytes: f.bytes,
    usedSecondsAgo: Math.max(0, (dp.now - f.used) / 1000),
  }));
}

/**
 * The datapath clock in ms, from the capture's timestamps (a replay runs on
 * capture time, so idle timeouts mean what they meant on the wire).
 */
export function packetClock(reader: CaptureLayout): (b: PacketBatch) => number {
  if (reader.format === 'pcap') {
    const div = reader.nanos ? 1e6 : 1e3;
    return (b) => (b.count ? b.tsA[0] * 1000 + b.tsB[0] / div : 0);
  }
  return (b) => {
    if (!b.count) return 0;
    const itf = reader.interfaces[b.ifIndex[0]];
    const units = b.tsA[0] * 4294967296 + b.tsB[0];
    const r = itf.tsresol;
    const perSec = r & 0x80 ? 2 ** (r & 0x7f) : 10 ** r;
    return (units / perSec + itf.tsoffset) * 1000;
  };
}
