/**
 * `fpo replay --workers N`: N datapaths, one a core, each with its own
 * exact-match cache, megaflow table and tx buffers (as Open vSwitch's PMD
 * threads), and ONE FPAG deciding flows for all of them.
 *
 *   main thread: worker 0 + the FPAG            threads: workers 1 .. N-1
 *          ┌── claim, read, walk, hash: whoever is free (datapath/chunk-ring.ts) ──┐
 *          ▼                                                                      ▼
 *   shared chunk ring (classic pcap): slot = 1 MiB of whole records + per worker a list of its records
 *   datapath 0 ◀── batches into the slot                  batches into the slot ──▶ datapath k
 *   datapath 0 ─ miss ───▶ FPAG (shadow) ◀─ slot (upcall) ── datapath k ─ miss
 *   tx ──▶ OUT/<port>.pcap.partial-PID ◀──────────── tx (pwrite at reserved offsets)
 *
 * Spreading (classic pcap: the shared chunk ring). The capture is read and
 * indexed ONCE: chunk c (1 MiB of whole records) is claimed by whichever
 * worker is free, read into slot c % 8 of a SharedArrayBuffer, walked
 * (every record's offset; a chunk's end that cuts a record starts the
 * next chunk there) and split by flow hash (datapath/spread.ts flowHash)
 * into one list per worker, positions in input order; each worker then
 * fills its batches from its own list, pointing into the slot (no packet
 * byte copied; lazy fills as one worker's reader makes them), and the last
 * owner done frees the slot. Once every thread has joined, each worker
 * indexes up to two chunks ahead of the one it switches, so that another
 * seldom waits for it; a worker with nothing to index and its next chunk
 * not ready spins on the doorbell, then sleeps on it. The slots and each
 * worker's tx buffers are one shared block, each worker's Arena a region
 * of it (arena.ts), so that a packet in a slot is in every worker's arena
 * (arenaCopy, the fast lane's direct tx). A fault in the capture ends the
 * walk at that chunk: its packets before the fault are switched, and the
 * report's error is the reader's (code, offset, message).
 * pcapng keeps the first design: every worker reads the whole capture, in
 * chunks, and keeps the packets whose flow hash is its own
 * (datapath/spread.ts Spread); the ring walks classic pcap only.
 * Events land at the packet they name: every chunk carries the input
 * index of its first record and each list holds positions, so each worker
 * knows every own packet's index; an event by time is placed by the walk
 * (the first packet at or after its time, as one worker finds it: a shared
 * table, filled before the next chunk may be walked).
 *
 * Measured: see "Measured" at the end of this comment.
 *
 * Joining. A thread starts (Node's worker, then fpo's modules) in ~90 ms
 * here; `fpo replay` spawns the threads as soon as it has read --workers,
 * before it loads its own modules (replay-threads.ts), and the replay sends
 * each its setup before the first packet, so that it builds its datapath
 * and writers meanwhile. The main thread does not wait: it switches every
 * packet itself (the ring's chunks not split, and short: 2048 records)
 * until a thread says it is built; then, when it claims its own next chunk
 * (everything before switched, every event before applied), it writes out
 * all its tx buffers (so whatever it switched of a flow is in the files
 * before anything the thread writes of it: per-flow order), marks the
 * thread joined (the chunk and every later one give the thread its share),
 * and hands it the chunk and input index to start at, the mapping changes
 * of the events applied so far, and every flow decided so far (installed
 * before its first packet, so it does not upcall for them). A thread not
 * built by the end is told so and does nothing: a small replay pays only
 * the thread's spawn. `workersJoin: 'start'` (tests) waits for every
 * thread at the first packet instead; a packet index there ends a chunk at
 * that index (the threads join at the next). Without the ring (pcapng) a
 * thread joins between two of the main thread's batches, as before.
 *
 * Flows. A worker's miss is an upcall to the one FPAG, which runs in the
 * main thread against a shadow Datapath holding every flow it has decided
 * (fpag-thread.ts's ShadowDatapath). If a flow in the shadow already covers
 * the key (another worker had the miss first), the answer is that flow,
 * with no new decision; else the FPAG decides and installs as it does for
 * one datapath. So each flow is decided once, and installed into each
 * worker whose packets need it. VPIDs and mappings stay the FPAG's alone.
 * A thread's upcall is a synchronous round trip through its slot in a
 * SharedArrayBuffer (state word, key; the answer as words in the slot: a
 * message on its port arrived up to ~1 ms after the slot's word); the main
 * thread answers between its batches and after each of its own misses.
 *
 * Events (--events) are barriers: each worker, at the packet index where an
 * event falls (the same index in every worker: see Spreading),
 * stops and asks; when all that have joined have arrived, the main thread
 * applies the event to the FPAG once and sends every worker the messages it
 * produced (mapping changes, flow deletes and rewrites), which each applies
 * before its next packet (a rewrite of a flow it does not hold is skipped).
 * Packets before the index were switched under the old state by every
 * worker, packets after it under the new one: as with one worker.
 *
 * Outputs. One file a port, as with one worker: the main thread creates
 * OUT/<port>.<ext>.partial-PID and writes its header (pcapng: every
 * interface of the input, found by reading it once first); each worker's
 * writer reserves room with one atomic add when its buffer is full and
 * writes there (capture-writer.ts SharedFile). A flow's packets are all in
 * one worker and that worker's buffers land in order, so per-flow order
 * holds; across flows, whole buffers of different workers interleave. At
 * the end a file with no records is removed (as a port that emitted nothing
 * leaves none) and the others are renamed; a failed run removes them all.
 * Writing records in input order instead (identical to one worker's output)
 * was not built: it needs a merge pass that copies every output byte once
 * more, on one core, after the switching, and the writes alone are ~18–34 %
 * of a one-worker replay of small frames (measured); with two workers not
 * faster than one here, that would only add to the loss.
 *
 * What differs from one worker, by design: the interleaving of flows in an
 * output; the per-datapath counters (cache hits, misses, worker upcalls,
 * expiry, eviction: each worker has its own tables, and its own capture
 * clock, the time of its batches; `workers.each` in the report); and
 * sender-side flagging of a flow's first packets (tunnel.policy
 * .firstPackets), which counts per flow entry in each worker. The report's
 * packet counts, per-port counts, drops by reason and tunnel counts are sums
 * over workers and equal one worker's; its `flows.installed`, `upcalls`
 * and `active` are the FPAG's (decisions; the shadow never expires a flow),
 * and equal one worker's when no flow expires or is evicted in the run.
 * A worker's batch is 256 of its own packets, so with the ring it spans
 * more of the input than one worker's: its capture clock steps less often.
 *
 * Measured (2026-12-04 16:54–17:25 UTC, bench/control/replay-workers.ts,
 * 5 M 64-byte frames, 1 K flows, /dev/shm; five runs of five or seven
 * alternating rounds, main's build (the first design) in the same rounds;
 * best against best): two workers through the ring are 0.75–0.93x one
 * worker's speed as a whole process and 0.86–0.92x in process; the first
 * design 0.77–0.92x and 0.77–0.86x. The ring is faster than the first
 * design in process (1.01–1.12x), about equal as a whole process; two
 * workers are still slower than one: issue 18's 1.7x is not met. What limits it, measured:
 * - This machine: two one-worker replays in two processes, each of half
 *   the capture, at once took 0.50–0.67 s each in process against
 *   0.68–0.84 s for one of the whole capture: even with nothing shared,
 *   two cores give at most ~1.3x here; two threads that each copy 16 MiB
 *   ran 2–4x slower than one alone (4 MiB: 1.0–1.5x). The 2 vCPUs do not
 *   double memory- and kernel-heavy work (bench/README.md has the figures).
 * - CPU: two workers spend 1.41–1.46 s user + 0.40–0.50 s system where
 *   one spends 0.62–0.76 + 0.33–0.40 (/usr/bin/time, alternating): the
 *   split (flow hash and lists: 27 ns a record, once), the switching (fast
 *   lane 470 ms of CPU on two cores against 356 on one: a core switches
 *   records the other read into the slot, and neighbours share cache
 *   lines), the writes (398 against 344 ms: the outputs' pages, two
 *   writers at once), and a second isolate's start and compilation.
 * - Start: a thread is up ~90 ms after its spawn (Node's worker ~55 ms,
 *   fpo's modules ~30 ms) and builds its datapath in ~17 ms; the main
 *   thread's first chunk (2048 packets with the run's 1000 upcalls, code
 *   cold) takes 65–80 ms, so a thread joins at ~70 ms, and the main thread
 *   then waits for it when it is the ring's depth ahead (1–165 ms a run).
 */
import { closeSync, mkdirSync, openSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { isMainThread, receiveMessageOnPort, workerData, type MessagePort } from 'node:worker_threads';
import { Arena } from '../datapath/arena.js';
import { PacketBatch } from '../datapath/batch.js';
import { KEY_WORDS, macNumber } from '../datapath/classifier/flow-key.js';
import { STAT_WORDS, ST_BYTES, ST_PACKETS, ST_USED } from '../datapath/classifier/flow-table.js';
import { Datapath, type DatapathStats, type TxPort } from '../datapath/datapath.js';
import { DROP_NAMES, type DropReason } from '../datapath/drops.js';
import { FpoError } from '../datapath/errors.js';
import { CaptureReader, LINKTYPE_ETHERNET, MAX_RECORD, type CaptureInterface } from '../datapath/ports/capture-reader.js';
import { CaptureWriter, partialPath, txBufferBytes, type CaptureLayout } from '../datapath/ports/capture-writer.js';
import { ChunkRing, FAULT_HEADER_CUT, FAULT_RECORD_CUT, FAULT_TOO_LONG, chunkRingShared, type ChunkRingShared } from '../datapath/chunk-ring.js';
import { Spread } from '../datapath/spread.js';
import type { ControlMessage, Upcall } from '../datapath/upcall.js';
import { applyEvent, type AppliedEvent, type ControlEvent } from './events.js';
import { Fpag } from './fpag.js';
import { ShadowDatapath, decodeInstalls, encodeInstalls } from './fpag-thread.js';
import { CHUNK, assignInputPorts, atOrAfter, captureSize, firstDue, ownFiles, packetClock, refuseOutputsThatAreInputs, type PortReport, type ReplayOptions, type ReplayReport, type ReplayResult } from './replay.js';
import { loadTopology, pathNameProblem, type Topology } from './topology.js';
import { ANSWER_WORDS, SLOT_HEAD, dropReplayThreads, spawnReplayThreads, type SpawnedThread } from './replay-threads.js';

/** Most workers (a thread each, and a core each to be of use). */
export const MAX_WORKERS = 64;

// A slot's words past the request: prepared (its worker is built from the setup), ready (the thread is up),
// join (SETUP, then JOINED or NOT_NEEDED), beat (batches done).
const W_PREPARED = 4;
const W_READY = 5;
const W_JOIN = 6;
const W_BEAT = 7;
const JOINED = 1;
const NOT_NEEDED = 2;
const SETUP = 3;
// A slot's state word.
const IDLE = 0;
const REQUEST = 1;
const REPLY = 2;
// What a request asks.
const ASK_UPCALL = 1;
const ASK_EVENT = 2;
// The shared control words (replay-threads.ts CTRL_WORDS): doorbell (bumped on every request, and by the ring), stop.
const DOOR = 0;
const STOP = 1;
/**
 * Chunks a ring worker indexes ahead of the one it switches. 4 for the main
 * worker and 1 for the threads (so that the main one, which waits for the
 * thread at the end, indexes more) measured no better (2026-12-04 17:17 UTC).
 */
const LOOK_AHEAD = 2;
/**
 * Records in a chunk while a thread has yet to join (it joins at a chunk's
 * start). 256 measured no better: the thread joined sooner, with fewer
 * flows decided, and the main thread waited longer for it (41–72 ms a run
 * against 9–34; 2026-12-04 17:17 UTC).
 */
const JOIN_CHUNK_RECORDS = 2048;
/** Polls of a slot before a worker sleeps on it (tens of µs; a futex wake costs as much). */
const SPIN = 20_000;

/** What a worker is given (a thread: in its join message, a structured clone). */
interface WorkerSetup {
  me: number;
  workers: number;
  capture: string;
  inputPpid: number;
  portOfMac: [number, number][] | null;
  ports: { ppid: number; fd: number }[];
  /** The outputs' lengths so far, shared (capture-writer.ts SharedFile). */
  ends: BigInt64Array;
  batchSize: number;
  maxFlows?: number;
  fastLane: boolean;
  txBuffer: number;
  /** The FPAG's start-up messages (mappings, port roles, tunnels). */
  start: ControlMessage[];
  /** atPacket / atTime of each event (the main thread applies them). */
  events: ControlEvent[];
  /** A classic pcap: the shared chunk ring every worker reads from (else each reads the whole capture). */
  ring?: ChunkRingShared;
  /** With the ring: the input's layout, its size, and where each event falls (Float64, -1 until placed). */
  layout?: CaptureLayout;
  fileSize?: number;
  eventAt?: SharedArrayBuffer;
  /** For tests: throw (or with `stall`, spin for ever) when the packet with this index is reached. */
  failAt?: number;
  stall?: boolean;
}

/** What a worker reports at its end. */
interface WorkerDone {
  type: 'done';
  stats: DatapathStats;
  records: number;
  now: number;
  error?: { code: string; message: string; offset?: number };
  /** Flow counters by (key, mask), for the merged flow table. */
  flows: { key: Uint32Array; mask: Uint32Array; packets: number; bytes: number; used: number }[];
  interrupted: boolean;
  /** Epoch ms when the worker began switching and when it ended (for the bench's timeline). */
  began: number;
  ended: number;
  /** Ms spent waiting for the FPAG's answers (a thread worker). */
  waitedMs?: number;
  /** Ms spent waiting for the ring (a chunk not indexed yet, or its slot not free). */
  ringWaitMs?: number;
}

interface WorkerFailed {
  type: 'failed';
  message: string;
  code?: string;
}

/**
 * One worker's replay: its reader, spread, datapath and writers. The same
 * class runs as worker 0 in the main thread and in each thread; how it
 * upcalls and how it waits at an event are given to it.
 */
class ReplayWorker implements RunWorker {
  readonly reader: CaptureReader;
  readonly dp: Datapath;
  readonly writers: CaptureWriter[] = [];
  private readonly raw: PacketBatch;
  private readonly mine: PacketBatch;
  private readonly spread: Spread;
  private readonly clock: (b: PacketBatch) => number;
  private readonly portOfMac: Map<number, number> | null;
  /** Events not reached yet, by index in the events list. */
  private pending: number[] = [];
  private pendingEvents: ControlEvent[] = [];
  soFar = 0;
  began = 0;
  /** Input packets before this index are not this worker's to switch (it joined the run there). */
  joinedAt = 0;
  /** The main worker, before any other joined: every packet is its own, with no hashing. */
  ownsAll: boolean;

  constructor(private readonly s: WorkerSetup, private readonly atEvent: (k: number) => ControlMessage[]) {
    const size = captureSize(s.capture);
    const chunk = Math.min(CHUNK, size);
    const arena = new Arena(chunk + s.ports.length * (s.txBuffer + 64) + 4096);
    this.reader = new CaptureReader(s.capture, arena, chunk);
    try {
      this.dp = new Datapath({ batchCapacity: s.batchSize, maxFlows: s.maxFlows });
      this.dp.fastLane.enabled = s.fastLane;
      for (const p of s.ports) {
        const w = new CaptureWriter('', this.reader, arena, s.txBuffer, { shared: { fd: p.fd, end: s.ends, at: this.writers.length } });
        this.writers.push(w);
        this.dp.addPort(p.ppid, w);
      }
      for (const m of s.start) this.dp.apply(m);
    } catch (e) {
      this.reader.close();
      throw e;
    }
    this.raw = new PacketBatch(s.batchSize);
    this.mine = new PacketBatch(s.batchSize);
    this.spread = new Spread(s.me, s.workers);
    this.ownsAll = s.me === 0;
    if (this.ownsAll) this.spread.owned.fill(1); // until the others join
    this.clock = packetClock(this.reader);
    this.portOfMac = s.portOfMac ? new Map(s.portOfMac) : null;
  }

  begin(join: { at: number; applied: number[] }): void {
    const applied = new Set(join.applied);
    this.pending = this.s.events.map((_, k) => k).filter((k) => !applied.has(k));
    this.pendingEvents = this.pending.map((k) => this.s.events[k]);
    this.joinedAt = join.at;
    this.began = performance.timeOrigin + performance.now();
  }

  /** Slow path: worker k joined; its packets are no longer this (main) worker's. */
  leave(k: number): void {
    this.spread.owned[k] = 0;
    this.ownsAll = false;
  }

  progress(): [number, number] {
    return [this.reader.bytesRead, this.reader.fileSize];
  }

  release(): void {
    this.reader.close();
  }

  /** Writes out what every writer holds (before another worker takes over some flows: their order). */
  flushAll(): void {
    for (const w of this.writers) w.flush();
  }

  /** One rx batch of the input, switched (this worker's share). 0 at the end of the capture, else 1. */
  step(): number {
    const raw = this.raw;
    const reader = this.reader;
    const lazyOk = this.portOfMac === null;
    if (reader.fill(raw, this.s.inputPpid, lazyOk && this.pending.length === 0) === 0) return 0;
    if (this.soFar < this.joinedAt) {
      // Before the join: another worker switched these; skip them.
      const left = this.joinedAt - this.soFar;
      if (raw.count <= left) {
        this.soFar += raw.count;
        return 1;
      }
      raw.batchShift(left);
      this.soFar += left;
    }
    if (this.portOfMac !== null) assignInputPorts(raw, this.portOfMac);
    // Slow path: events that fall inside this batch split it where they fall (as replay.ts).
    while (this.pending.length > 0) {
      const at = firstDue(this.pendingEvents, raw, this.soFar, reader);
      if (at === null) break;
      if (at.index > 0) {
        this.switch(at.index);
        raw.batchShift(at.index);
        this.soFar += at.index;
      }
      const j = this.pendingEvents.indexOf(at.event);
      const k = this.pending[j];
      this.pendingEvents.splice(j, 1);
      this.pending.splice(j, 1);
      this.applyMessages(this.atEvent(k));
    }
    const fail = this.s.failAt;
    if (fail !== undefined && fail >= this.soFar && fail < this.soFar + raw.count) {
      if (this.s.stall) for (;;); // a stalled worker (for tests: ended by terminate)
      throw new Error(`fault injected for a test at packet ${fail}`);
    }
    this.switch(raw.count);
    this.soFar += raw.count;
    return 1;
  }

  /** Events past the end of the capture, after the last packet (not after an interrupted run's). */
  finishEvents(): void {
    while (this.pending.length > 0) {
      const k = this.pending.shift()!;
      this.pendingEvents.shift();
      this.applyMessages(this.atEvent(k));
    }
  }

  // Fast path: this worker's share of raw[0, n), through its datapath.
  private switch(n: number): void {
    if (this.ownsAll) {
      const raw = this.raw;
      const count = raw.count;
      raw.count = n;
      this.dp.process(raw, this.dp.captureClock.advance(this.clock(raw)));
      raw.count = count;
      return;
    }
    const mine = this.mine;
    if (this.spread.take(this.raw, 0, n, mine) === 0) return;
    this.dp.process(mine, this.dp.captureClock.advance(this.clock(mine)));
  }

  // Slow path: an event's messages. A rewrite of a flow this worker does not hold is not an install here.
  applyMessages(msgs: ControlMessage[]): void {
    for (const m of msgs) {
      if (m.type === 'flow-install' && this.dp.flows.findExact(m.key, m.mask) < 0) continue;
      this.dp.apply(m);
    }
  }

  /** Flushes the writers (the files stay open: the main thread owns them). */
  close(): void {
    for (const w of this.writers) w.close();
  }

  done(interrupted: boolean): WorkerDone {
    const dp = this.dp;
    const fl = dp.flows;
    const flows: WorkerDone['flows'] = [];
    for (let f = 0; f < fl.indices; f++) {
      if (!fl.live[f]) continue;
      const s = fl.sub[f];
      flows.push({ key: fl.key.slice(f * KEY_WORDS, (f + 1) * KEY_WORDS), mask: fl.mask.slice(s * KEY_WORDS, (s + 1) * KEY_WORDS), packets: fl.packetsOf(f), bytes: fl.bytesOf(f), used: fl.usedOf(f) });
    }
    const e = this.reader.error;
    return { type: 'done', stats: dp.stats(), records: this.reader.records, now: dp.now, error: e ? { code: e.code, message: e.message, offset: e.offset } : undefined, flows, interrupted, began: this.began, ended: performance.timeOrigin + performance.now() };
  }
}

/** What both kinds of worker offer the run (the ring's, and the one that reads the whole capture). */
interface RunWorker {
  readonly dp: Datapath;
  soFar: number;
  /** Where it starts: the input packet (and, with the ring, chunk) it joined at, and the events applied before. */
  begin(join: { at: number; chunk: number; applied: number[] }): void;
  /** 1: did some work (a batch, or indexing a chunk); 0: the capture is done; -1: waits for another worker (ring only). */
  step(): number;
  finishEvents(): void;
  applyMessages(msgs: ControlMessage[]): void;
  flushAll(): void;
  leave(k: number): void;
  close(): void;
  done(interrupted: boolean): WorkerDone;
  /** Bytes of the capture read so far, and its size. */
  progress(): [number, number];
  /** Releases the capture's descriptor. */
  release(): void;
}

/**
 * One worker of a classic pcap replay through the shared chunk ring
 * (datapath/chunk-ring.ts): it switches its share of every chunk from the
 * one it joined at, and indexes the next chunk whenever it would otherwise
 * wait. Events are placed by packet index (by time: the walk resolves them,
 * see resolveTimes), so every worker stops at the same one.
 */
class RingWorker implements RunWorker {
  readonly dp: Datapath;
  readonly writers: CaptureWriter[] = [];
  readonly ring: ChunkRing;
  private readonly batch: PacketBatch;
  private readonly clock: (b: PacketBatch) => number;
  private readonly portOfMac: Map<number, number> | null;
  /** Events not reached yet, by index in the events list. */
  private pending: number[] = [];
  /** Where each event falls (input packet index; Infinity: after the end), from the ring's shared table. */
  readonly eventAt: Float64Array;
  soFar = 0;
  began = 0;
  /** The chunk being (or next to be) switched, and where in this worker's share of it. */
  c = 0;
  private inChunk = false;
  private j = 0;
  private own = 0;
  private first = 0;
  private n = 0;
  private records = 0;
  /**
   * Chunks past its own that this worker indexes before switching (0: only
   * its own next one). The main worker keeps 0 while a thread has yet to
   * join: threads join only when it claims its own next chunk.
   */
  lookAhead = LOOK_AHEAD;

  constructor(private readonly s: WorkerSetup, private readonly atEvent: (k: number) => ControlMessage[]) {
    const r = s.ring!;
    const from = r.slots * r.slotBytes + s.me * r.ownBytes;
    const arena = new Arena(0, { buffer: r.mem, from, to: from + r.ownBytes });
    this.ring = new ChunkRing(r, s.me, arena.bytes);
    try {
      this.dp = new Datapath({ batchCapacity: s.batchSize, maxFlows: s.maxFlows });
      this.dp.fastLane.enabled = s.fastLane;
      for (const p of s.ports) {
        const w = new CaptureWriter('', s.layout!, arena, s.txBuffer, { shared: { fd: p.fd, end: s.ends, at: this.writers.length } });
        this.writers.push(w);
        this.dp.addPort(p.ppid, w);
      }
      for (const m of s.start) this.dp.apply(m);
    } catch (e) {
      this.ring.close();
      throw e;
    }
    this.batch = new PacketBatch(s.batchSize);
    this.clock = packetClock(s.layout!);
    this.portOfMac = s.portOfMac ? new Map(s.portOfMac) : null;
    this.eventAt = new Float64Array(s.eventAt!);
  }

  begin(join: { at: number; chunk: number; applied: number[] }): void {
    const applied = new Set(join.applied);
    this.pending = this.s.events.map((_, k) => k).filter((k) => !applied.has(k));
    this.c = join.chunk;
    this.soFar = join.at;
    this.records = join.at;
    this.began = performance.timeOrigin + performance.now();
  }

  leave(): void {
    // The ring splits chunks by who has joined when each is claimed (ChunkRing.onClaim): nothing to do here.
  }

  flushAll(): void {
    for (const w of this.writers) w.flush();
  }

  progress(): [number, number] {
    return [this.ring.bytesWalked, this.s.fileSize!];
  }

  /** Where event k falls: its packet index (Infinity when after the last packet, or not placed by the walk yet). */
  private placeOf(k: number): number {
    const e = this.s.events[k];
    if (e.atPacket !== undefined) return Math.max(0, e.atPacket);
    const at = this.eventAt[k];
    return at < 0 ? Infinity : at;
  }

  /** The earliest pending event inside the current chunk (ties: the list's order), as an index into pending, or -1. */
  private dueEvent(): number {
    let best = -1;
    let bestAt = Infinity;
    const end = this.first + this.n;
    for (let i = 0; i < this.pending.length; i++) {
      const at = this.placeOf(this.pending[i]);
      if (at < end && at < bestAt) {
        best = i;
        bestAt = at;
      }
    }
    return best;
  }

  step(): number {
    const ring = this.ring;
    if (!this.inChunk) {
      const c = this.c;
      // Index ahead of the switching, so that a worker seldom finds its next chunk still being indexed by another.
      if (this.lookAhead > 0 && ring.tryIndex(c + this.lookAhead)) return 1;
      if (!ring.ready(c)) {
        if (ring.ended(c)) return 0;
        if (ring.tryIndex(c + this.lookAhead)) return 1;
        return ring.ready(c) ? 1 : -1;
      }
      this.inChunk = true;
      this.j = 0;
      this.own = ring.ownCount(c);
      this.first = ring.first(c);
      this.n = ring.records(c);
      const fail = this.s.failAt;
      if (fail !== undefined && fail >= this.first && fail < this.first + this.n) {
        if (this.s.stall) for (;;); // a stalled worker (for tests: ended by terminate)
        throw new Error(`fault injected for a test at packet ${fail}`);
      }
    }
    const c = this.c;
    let to = Math.min(this.own, this.j + this.s.batchSize);
    if (this.pending.length > 0) {
      // Slow path: an event in this chunk ends the batch before the first of this worker's packets at or after it.
      const e = this.dueEvent();
      if (e >= 0) {
        const k = this.pending[e];
        const pos = this.placeOf(k) - this.first;
        let stop = this.j;
        while (stop < to && ring.posOf(c, stop) < pos) stop++;
        if (stop === this.j) {
          this.soFar = this.first + pos;
          this.pending.splice(e, 1);
          this.applyMessages(this.atEvent(k));
          return 1;
        }
        to = stop;
      }
    }
    if (this.j < to) {
      const b = this.batch;
      ring.fill(b, c, this.j, to, !this.s.ring!.le || this.portOfMac !== null || this.pending.length > 0, this.s.inputPpid);
      if (this.portOfMac !== null) assignInputPorts(b, this.portOfMac);
      this.dp.process(b, this.dp.captureClock.advance(this.clock(b)));
      this.j = to;
      this.soFar = this.first + ring.posOf(c, to - 1) + 1;
      return 1;
    }
    // This worker's share of the chunk is switched (and every event in it reached).
    ring.finish(c);
    this.soFar = this.records = this.first + this.n;
    this.inChunk = false;
    this.c = c + 1;
    return 1;
  }

  finishEvents(): void {
    while (this.pending.length > 0) {
      // Past the end: in the list's order (as one worker), whatever their places.
      const k = this.pending.shift()!;
      this.applyMessages(this.atEvent(k));
    }
  }

  applyMessages(msgs: ControlMessage[]): void {
    for (const m of msgs) {
      if (m.type === 'flow-install' && this.dp.flows.findExact(m.key, m.mask) < 0) continue;
      this.dp.apply(m);
    }
  }

  close(): void {
    for (const w of this.writers) w.close();
  }

  release(): void {
    this.ring.close();
  }

  done(interrupted: boolean): WorkerDone {
    const dp = this.dp;
    const fl = dp.flows;
    const flows: WorkerDone['flows'] = [];
    for (let f = 0; f < fl.indices; f++) {
      if (!fl.live[f]) continue;
      const s = fl.sub[f];
      flows.push({ key: fl.key.slice(f * KEY_WORDS, (f + 1) * KEY_WORDS), mask: fl.mask.slice(s * KEY_WORDS, (s + 1) * KEY_WORDS), packets: fl.packetsOf(f), bytes: fl.bytesOf(f), used: fl.usedOf(f) });
    }
    const e = this.s.me === 0 ? ringFault(this.ring, this.s.capture) : null;
    return { type: 'done', stats: dp.stats(), records: this.records, now: dp.now, error: e ? { code: e.code, message: e.message, offset: e.offset } : undefined, flows, interrupted, began: this.began, ended: performance.timeOrigin + performance.now() };
  }
}

/**
 * Sets a ring worker's hooks: its bell, and, when events are placed by
 * time, the walk's placing of them (slow path: once a chunk, while some
 * are not placed): event k falls at the first packet whose capture time is
 * at or after its time (replay.ts atOrAfter), as one worker finds it.
 */
function ringHooks(w: RingWorker, events: ControlEvent[], layout: CaptureLayout, bell: () => void): void {
  const ring = w.ring;
  ring.bell = bell;
  const timed = events.map((e, k) => (e.atTime !== undefined ? k : -1)).filter((k) => k >= 0);
  if (timed.length === 0) return;
  const one = new PacketBatch(1);
  one.count = 1;
  const dv = new DataView(ring.bytes.buffer, ring.bytes.byteOffset, ring.bytes.byteLength);
  const le = ring.sh.le;
  const eventAt = w.eventAt;
  ring.onWalk = (slot, first, n) => {
    for (const k of timed) {
      if (eventAt[k] >= 0) continue;
      for (let i = 0; i < n; i++) {
        const p = ring.recordAt(slot, i) - 16;
        one.tsA[0] = dv.getUint32(p, le);
        one.tsB[0] = dv.getUint32(p + 4, le);
        if (atOrAfter(layout, one, 0, events[k].atTime!)) {
          eventAt[k] = first + i;
          break;
        }
      }
    }
  };
}

/** The ring's fault as CaptureReader would have reported it (its messages), or null. */
function ringFault(ring: ChunkRing, path: string): FpoError | null {
  const f = ring.fault();
  const at = (code: 'FPO_ERR_BAD_CAPTURE' | 'FPO_ERR_TRUNCATED_CAPTURE' | 'FPO_ERR_IO', what: string) => new FpoError(code, `${path}: offset ${f.offset}: ${what}`, { path, offset: f.offset });
  switch (f.kind) {
    case 0: return null;
    case FAULT_HEADER_CUT: return at('FPO_ERR_TRUNCATED_CAPTURE', `record header cut short: ${f.a} of 16 bytes`);
    case FAULT_TOO_LONG: return at('FPO_ERR_BAD_CAPTURE', `record claims ${f.a} captured bytes, more than the limit ${f.b}`);
    case FAULT_RECORD_CUT: return at('FPO_ERR_TRUNCATED_CAPTURE', `record cut short: ${f.a} of ${f.b} captured bytes`);
    default: return at('FPO_ERR_IO', 'cannot read');
  }
}

/** A slot's answer area as words. */
function answerOf(slot: Int32Array): Uint32Array {
  return new Uint32Array(slot.buffer, SLOT_HEAD * 4, ANSWER_WORDS);
}

/** The main thread's handle on one thread worker. */
interface Thread extends SpawnedThread {
  /** The slot's answer area, as words. */
  answer: Uint32Array;
  /** Input index where it took over its flows, or -1 before. */
  joinedAt: number;
  done: WorkerDone | null;
  /** Its beat word when last seen to change, and when (the stall watch). */
  beat: number;
  beatAt: number;
  /** The event index it waits at, or -1. */
  atEvent: number;
}

/** What a thread gets when it joins (a message on its port). */
interface Join {
  type: 'join';
  at: number;
  /** Events already applied (their indices), and their messages other than flow rewrites. */
  applied: number[];
  messages: ControlMessage[];
  /** The flows the FPAG has decided so far, installed before the first packet. */
  flows: ControlMessage[];
  /** With the ring: the chunk it starts at (its first packet is `at`). */
  chunk: number;
}

/** replay() with opts.workers > 1 (see the header). */
export function* replayWorkersSteps(opts: ReplayOptions): Generator<void, ReplayResult> {
  const n = opts.workers ?? 1;
  if (!(Number.isInteger(n) && n >= 2 && n <= MAX_WORKERS)) throw new FpoError('FPO_ERR_USAGE', `workers: expected an integer in 1..${MAX_WORKERS}, got ${n}`);
  if (opts.fpag === 'thread' || opts.fpag === 'async') throw new FpoError('FPO_ERR_USAGE', `--fpag ${opts.fpag}: not with --workers (the FPAG serves the workers from the main thread)`);
  if (opts.beforeBatch) throw new FpoError('FPO_ERR_USAGE', 'beforeBatch: not with workers (each worker has its own datapath)');
  if ((opts.events ?? []).some((e) => e.do === 'firewall-upgrade')) throw new FpoError('FPO_ERR_USAGE', 'events: a firewall-upgrade is not with --workers (each worker has its own firewall state; replay it with one)');
  // The threads first: their start (a new isolate, fpo's modules) is the longest wait, and runs meanwhile
  // (or they were spawned before this run's modules were loaded: the command line's, replay-threads.ts).
  const given = opts.threads !== undefined && !opts.threads.taken && opts.threads.list.length === n - 1 ? opts.threads : undefined;
  if (given === undefined) dropReplayThreads(opts.threads);
  const spawned = given ?? spawnReplayThreads(n);
  spawned.taken = true;
  const ctrl = spawned.ctrl;
  const threads: Thread[] = spawned.list.map((s) => Object.assign(s, { answer: answerOf(s.slot), joinedAt: -1, done: null, beat: 0, beatAt: 0, atEvent: -1 }));
  let files: { ppid: number; path: string; temp: string; fd: number }[] = [];
  let main: RunWorker | null = null;
  let kept = false;
  try {
    const topo = typeof opts.topology === 'string' ? loadTopology(opts.topology) : opts.topology;
    for (const p of topo.ports) {
      const problem = pathNameProblem(p.name);
      if (problem !== null) throw new FpoError('FPO_ERR_BAD_TOPOLOGY', `${topo.path}: port ${JSON.stringify(p.name)}: name: ${problem}`, { path: topo.path });
    }
    const bySourceMac = topo.inputPort === 'by-source-mac';
    const inputName = (bySourceMac ? undefined : topo.inputPort) ?? topo.ports.find((p) => p.role === 'uplink')?.name ?? topo.ports[0].name;
    const input = topo.ports.find((p) => p.name === inputName)!;
    let portOfMac: [number, number][] | null = null;
    if (bySourceMac) {
      portOfMac = [];
      for (const itf of topo.interfaces) if (itf.port !== undefined) portOfMac.push([macNumber(itf.macBytes, 0), topo.ports.find((p) => p.name === itf.port)!.ppid]);
    }
    const batchSize = opts.batchSize ?? 256;
    const size = captureSize(opts.capture);
    const txBuffer = Math.min(txBufferBytes(topo.ports.length), Math.max(16 * 1024, size));

    // The input's layout: pcapng interfaces are all described at the head of each output, so read them all first.
    const layoutReader = new CaptureReader(opts.capture, undefined, 64 * 1024);
    let interfaces: CaptureInterface[];
    try {
      if (layoutReader.format === 'pcap' && layoutReader.interfaces[0].linktype !== LINKTYPE_ETHERNET) {
        throw new FpoError('FPO_ERR_LINKTYPE', `${opts.capture}: offset 20: link type ${layoutReader.interfaces[0].linktype} is not supported; fpo switches Ethernet (link type 1)`, { path: opts.capture, offset: 20 });
      }
      if (layoutReader.format === 'pcapng') {
        const b = new PacketBatch(256);
        while (layoutReader.fill(b, 0) > 0);
      }
      interfaces = layoutReader.interfaces.map((i) => ({ ...i }));
    } finally {
      layoutReader.close();
    }
    const layout = { format: layoutReader.format, nanos: layoutReader.nanos, interfaces };

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

    // The one FPAG, on a shadow datapath that holds every flow it decided.
    const maxFlows = opts.maxFlows ?? 65536;
    const shadow = new ShadowDatapath({ maxFlows: Math.max(maxFlows, 1 << 16) });
    const none: TxPort = { writeBatch: () => undefined };
    for (const p of topo.ports) shadow.addPort(p.ppid, none);
    const fpag = new Fpag(topo, shadow);
    fpag.start();
    const decide = shadow.upcallSink!;
    const start = shadow.outbox;
    shadow.outbox = [];
    let sharedAnswers = 0;
    /** The shadow's flow f as an install message. */
    const installOf = (f: number): ControlMessage => {
      const fl = shadow.flows;
      const s = fl.sub[f];
      return { type: 'flow-install', key: fl.key.slice(f * KEY_WORDS, (f + 1) * KEY_WORDS), mask: fl.mask.slice(s * KEY_WORDS, (s + 1) * KEY_WORDS), actions: shadow.actionSets.describe(fl.act[f]) };
    };
    /** Slow path: one upcall from any worker: the flow that covers it, decided now or before. */
    const serve = (u: Upcall): ControlMessage[] => {
      const f = shadow.flows.lookup(u.key, 0);
      if (f >= 0) {
        sharedAnswers++;
        return [installOf(f)];
      }
      decide(u);
      // The FPAG reuses its message's arrays: copy them before the next decision.
      const out = shadow.outbox.map((m) => (m.type === 'flow-install' ? { ...m, key: m.key.slice(), mask: m.mask.slice() } : m));
      shadow.outbox = [];
      return out;
    };

    // Outputs: one file a port, its header written, shared by the workers' writers.
    const header = CaptureWriter.headerBytes(layout);
    files = topo.ports.map((p) => ({ ppid: p.ppid, path: join(opts.outDir, `${p.name}.${layout.format}`), temp: partialPath(join(opts.outDir, `${p.name}.${layout.format}`)), fd: -1 }));
    const ends = new BigInt64Array(new SharedArrayBuffer(8 * files.length));
    for (let i = 0; i < files.length; i++) {
      const f = files[i];
      try {
        f.fd = openSync(f.temp, 'w');
        let done = 0;
        while (done < header.length) done += writeSync(f.fd, header, done, header.length - done, done);
      } catch (e) {
        throw new FpoError('FPO_ERR_IO', `${f.temp}: cannot create: ${(e as Error).message}`, { path: f.temp });
      }
      ends[i] = BigInt(header.length);
    }
    // A classic pcap goes through the shared chunk ring (read and indexed once); pcapng is read by each worker.
    const ringMode = layout.format === 'pcap';
    const ringShared = ringMode
      ? chunkRingShared(opts.capture, layoutReader.fileSize, !layoutReader.bigEndian, Math.max(262144, Math.min(interfaces[0].snaplen, MAX_RECORD)), n, topo.ports.length * (txBuffer + 64) + 4096)
      : undefined;
    const eventAt = new SharedArrayBuffer(8 * Math.max(1, (opts.events ?? []).length));
    new Float64Array(eventAt).fill(-1);
    const common = {
      ring: ringShared, layout, fileSize: layoutReader.fileSize, eventAt,
      workers: n, capture: opts.capture, inputPpid: input.ppid, portOfMac,
      ports: files.map((f) => ({ ppid: f.ppid, fd: f.fd })), ends, batchSize, maxFlows: opts.maxFlows,
      fastLane: opts.fastLane ?? true, txBuffer, start, events: opts.events ?? [],
    };

    // Each thread builds its worker (datapath, writers) from this while the main thread starts switching: it joins once built.
    for (let k = 0; k < threads.length; k++) {
      const setup: WorkerSetup = { ...common, me: k + 1, failAt: opts.failWorker?.worker === k + 1 ? opts.failWorker.atPacket : undefined, stall: opts.failWorker?.stall };
      threads[k].port.postMessage({ type: 'setup', setup });
      Atomics.store(threads[k].slot, W_JOIN, SETUP);
      Atomics.notify(threads[k].slot, W_JOIN);
    }

    const applied: AppliedEvent[] = [];
    /** Messages of the events applied so far that a joining worker needs (mappings; not flow rewrites: it gets the flows as they are now). */
    const eventMessages: ControlMessage[] = [];
    const events = opts.events ?? [];

    /** Hands worker k (ready) the input from packet `at` on (with the ring: chunk `chunk`, which starts there), and the flows decided so far. */
    const joinThread = (t: Thread, k: number, at: number, chunk = 0): void => {
      // Everything the main worker switched before `at` is in the files before anything k writes: per-flow order.
      main!.flushAll();
      main!.leave(k);
      if (ringMode) (main as RingWorker).ring.join(k);
      const flows: ControlMessage[] = [];
      const fl = shadow.flows;
      if (fl.count <= maxFlows / 2) for (let f = 0; f < fl.capacity; f++) if (fl.live[f]) flows.push(installOf(f));
      const msg: Join = {
        type: 'join', at, applied: applied.map((a) => events.indexOf(a.event)), messages: eventMessages, flows, chunk,
      };
      t.port.postMessage(msg);
      t.joinedAt = at;
      Atomics.store(t.slot, W_JOIN, JOINED);
      Atomics.notify(t.slot, W_JOIN);
    };

    /** Answers every waiting upcall, reads workers' reports; throws when one failed. With `joining`, ready threads join at the main worker's position. */
    /**
     * Slow path (the main thread waits for the threads): a thread that has
     * joined, has not reported and is not waiting for an answer, but has not
     * finished a batch for stallMs, is stalled; so is one not up by then
     * when the main thread waits for it.
     */
    const stallMs = opts.workerStallMs ?? 30_000;
    const watch = (t: Thread): void => {
      const now = performance.now();
      if (t.joinedAt < 0) {
        if (waitingForThreads && now - waitSince > stallMs && Atomics.load(t.slot, W_PREPARED) === 0) t.failed ??= `not up after ${stallMs} ms`;
        return;
      }
      const beat = Atomics.load(t.slot, W_BEAT);
      if (t.done !== null || beat !== t.beat || Atomics.load(t.slot, 0) === REQUEST || t.beatAt === 0) {
        t.beat = beat;
        t.beatAt = now;
      } else if (now - t.beatAt > stallMs) t.failed ??= `made no progress for ${stallMs} ms (stalled)`;
    };
    let waitingForThreads = false;
    let waitSince = 0;
    let heard = -1;
    let polls = 0;
    /** With `idle` (the main thread waits anyway), the ports are read every time. */
    const poll = (joining: boolean, idle = false): void => {
      // Between batches, the ports only when a thread rang (a report comes with a ring) or every 64th time
      // (a message can lag behind its ring): reading them every batch was ~5 % of the main thread.
      const rang = Atomics.load(ctrl, DOOR);
      const listen = idle || rang !== heard || (++polls & 63) === 0;
      heard = rang;
      for (let k = 0; k < threads.length; k++) {
        const t = threads[k];
        let m: { message: unknown } | undefined;
        while ((listen || t.exited !== null) && (m = receiveMessageOnPort(t.port))) {
          const msg = m.message as WorkerDone | WorkerFailed;
          if (msg.type === 'done') t.done = msg;
          else t.failed ??= msg.message;
        }
        // Gone with no report (its port read out just now): a crash outside the thread's own catch.
        if (t.exited !== null && t.done === null && t.joinedAt >= 0) t.failed ??= `exited with code ${t.exited} before it finished`;
        if (idle) watch(t);
        if (t.failed !== null) throw new FpoError('FPO_ERR_WORKER', `replay worker ${k + 1} (a thread) of ${n} failed: ${t.failed}`);
        const s = t.slot;
        if (t.joinedAt < 0) {
          // With the ring, threads join when the main worker claims its next chunk (ringJoins).
          if (joining && !ringMode && Atomics.load(s, W_PREPARED) === 1) joinThread(t, k + 1, main!.soFar);
          continue;
        }
        if (Atomics.load(s, 0) !== REQUEST) continue;
        const ask = s[1];
        if (ask === ASK_UPCALL) {
          answerUpcall(t);
        } else if (ask === ASK_EVENT && t.atEvent !== s[2]) {
          t.atEvent = s[2];
        }
      }
    };
    const upcallMsg: Upcall = { type: 'upcall', inPpid: 0, key: new Uint32Array(KEY_WORDS) };
    /** Slow path: thread t's upcall (waiting in its slot), answered in the slot. */
    function answerUpcall(t: Thread): void {
      const s = t.slot;
      upcallMsg.inPpid = s[8];
      for (let w = 0; w < KEY_WORDS; w++) upcallMsg.key[w] = s[9 + w];
      const msgs = serve(upcallMsg);
      const words = encodeInstalls(msgs, t.answer);
      if (words < 0) t.port.postMessage(msgs);
      s[3] = words < 0 ? -1 : words;
      Atomics.store(s, 0, REPLY);
      Atomics.notify(s, 0);
    }
    /** The ring's bell: a chunk is ready or a slot free. */
    const ringDoor = (): void => {
      Atomics.add(ctrl, DOOR, 1);
      Atomics.notify(ctrl, DOOR);
    };
    let door = 0;
    /** Sleeps until a worker rings (or 2 ms pass). */
    const nap = (): void => {
      Atomics.wait(ctrl, DOOR, door, 2);
      door = Atomics.load(ctrl, DOOR);
    };

    // Worker 0 here: its upcalls go straight to the FPAG; at an event it waits for the workers that joined.
    const mainAtEvent = (k: number): ControlMessage[] => {
      for (;;) {
        poll(false, true);
        if (threads.every((t) => t.joinedAt < 0 || t.atEvent === k)) break;
        nap();
      }
      const result = applyEvent(fpag, events[k]);
      const msgs = shadow.outbox.map((m) => (m.type === 'flow-install' ? { ...m, key: m.key.slice(), mask: m.mask.slice() } : m));
      shadow.outbox = [];
      applied.push({ event: events[k], atPacket: main!.soFar, result });
      for (const m of msgs) if (m.type !== 'flow-install' && m.type !== 'flow-delete') eventMessages.push(m);
      for (const t of threads) {
        if (t.joinedAt < 0) continue;
        t.atEvent = -1;
        t.port.postMessage(msgs);
        t.slot[3] = -1;
        Atomics.store(t.slot, 0, REPLY);
        Atomics.notify(t.slot, 0);
      }
      return msgs;
    };
    // 'start' or a packet index: the main worker waits there for every thread (for tests; 'ready' does not wait).
    let waitAt = opts.workersJoin === 'start' ? 0 : typeof opts.workersJoin === 'number' ? opts.workersJoin : Infinity;
    if (ringMode) {
      const rw = new RingWorker({ ...common, me: 0 }, mainAtEvent);
      rw.begin({ at: 0, chunk: 0, applied: [] });
      rw.lookAhead = 0; // until every thread has joined
      // Until then, short chunks: a thread joins when the main worker claims its next one (the first chunk, with
      // every upcall of the run's start and the code not yet compiled, took ~100 ms of 1 MiB).
      if (threads.length > 0) rw.ring.maxRecords(JOIN_CHUNK_RECORDS);
      main = rw;
      ringHooks(rw, events, layout, ringDoor);
      if (waitAt > 0 && waitAt !== Infinity) rw.ring.cutAt(waitAt); // a chunk ends there: the threads join at the next
      /**
       * Slow path: the main worker claimed chunk c, starting at packet `first`. When it is
       * its own next chunk (everything before is switched, every event before applied), ready threads join here.
       */
      rw.ring.onClaim = (c, first) => {
        if (c !== rw.c || waitAt !== Infinity) return;
        for (let k = 0; k < threads.length; k++) {
          const t = threads[k];
          if (t.joinedAt < 0 && t.failed === null && Atomics.load(t.slot, W_PREPARED) === 1) joinThread(t, k + 1, first, c);
        }
        if (threads.every((t) => t.joinedAt >= 0)) {
          rw.lookAhead = LOOK_AHEAD;
          rw.ring.maxRecords(0);
        }
      };
    } else {
      main = new ReplayWorker({ ...common, me: 0 }, mainAtEvent);
      main.begin({ at: 0, chunk: 0, applied: [] });
    }
    const dp0 = main.dp;
    dp0.upcallSink = (u) => {
      for (const m of serve(u)) dp0.apply(m);
      // Misses come in bursts, in every worker at once: answer the others' too, not only between batches.
      for (const t of threads) if (t.joinedAt >= 0 && Atomics.load(t.slot, 0) === REQUEST && t.slot[1] === ASK_UPCALL) answerUpcall(t);
    };

    const started = performance.now();
    let mainRingWait = 0;
    let lastProgress = started;
    let interrupted: string | undefined;
    for (;;) {
      if (main.soFar >= waitAt) {
        waitAt = Infinity;
        waitingForThreads = true;
        waitSince = performance.now();
        // With the ring, up is enough: they join at the main worker's next claim (onClaim).
        const waiting = (t: Thread) => (ringMode ? Atomics.load(t.slot, W_PREPARED) !== 1 : t.joinedAt < 0);
        while (threads.some(waiting)) {
          poll(!ringMode, true);
          if (!threads.some(waiting)) break;
          nap();
          yield;
        }
        waitingForThreads = false;
      }
      // Until then, a thread joins when it is up (or not at all).
      const rang = Atomics.load(ctrl, DOOR);
      const r = main.step();
      if (r === 0) break;
      if (r < 0) {
        // The ring: the next chunk is another worker's to index, or its slot still in use. It is
        // mostly a matter of µs: spin on the doorbell first (a sleeping core here takes long to wake).
        const t0 = performance.now();
        for (let spin = 0; spin < SPIN && Atomics.load(ctrl, DOOR) === rang; spin++);
        if (Atomics.load(ctrl, DOOR) === rang) {
          poll(false, true);
          nap();
        }
        mainRingWait += performance.now() - t0;
      }
      poll(waitAt === Infinity);
      if (opts.onProgress) {
        const t = performance.now();
        if (t - lastProgress > 100) {
          lastProgress = t;
          opts.onProgress(...main.progress());
        }
      }
      yield;
      if (opts.interrupt?.signal !== undefined) {
        interrupted = opts.interrupt.signal;
        Atomics.store(ctrl, STOP, 1);
        for (const t of threads) Atomics.notify(t.slot, 0);
        break;
      }
    }
    if (interrupted === undefined) main.finishEvents();
    main.close();
    // Threads not started by now have nothing to do: they are told so (and terminated below).
    for (const t of threads) {
      if (t.joinedAt >= 0) continue;
      Atomics.store(t.slot, W_JOIN, NOT_NEEDED);
      Atomics.notify(t.slot, W_JOIN);
    }
    // The others: serve their upcalls and events until each has reported.
    for (;;) {
      poll(false, true);
      if (threads.every((t) => t.joinedAt < 0 || t.done !== null)) break;
      nap();
      yield;
      if (interrupted === undefined && opts.interrupt?.signal !== undefined) {
        interrupted = opts.interrupt.signal;
        Atomics.store(ctrl, STOP, 1);
      }
    }
    const seconds = (performance.now() - started) / 1000;
    const done0 = main.done(interrupted !== undefined);
    if (ringMode) done0.ringWaitMs = mainRingWait;
    const dones = [done0, ...threads.filter((t) => t.joinedAt >= 0).map((t) => t.done!)];
    if (dones.some((d) => d.interrupted)) interrupted ??= opts.interrupt?.signal ?? 'SIGINT';

    // Outputs: renamed when they hold records, else removed.
    const emitted = new Set<number>();
    for (let i = 0; i < files.length; i++) {
      const f = files[i];
      closeSync(f.fd);
      f.fd = -1;
      if (ends[i] > BigInt(header.length)) {
        try {
          renameSync(f.temp, f.path);
        } catch (e) {
          throw new FpoError('FPO_ERR_IO', `${f.path}: cannot rename ${f.temp} to it: ${(e as Error).message}`, { path: f.path });
        }
        emitted.add(f.ppid);
      } else unlinkSync(f.temp);
    }
    kept = true;
    opts.onProgress?.(main.progress()[1], main.progress()[1]);

    const report = mergeReport(opts, topo, layout.format, dones, fpag, shadow, emitted, files, seconds, n, sharedAnswers, [0, ...threads.map((t) => t.joinedAt)]);
    if (opts.events) report.events = applied;
    if (interrupted !== undefined) report.interrupted = interrupted;
    if (cleaned !== undefined) report.cleaned = cleaned;
    report.stale = ownFiles(opts.outDir, topo.ports, new Set(files.filter((f) => emitted.has(f.ppid)).map((f) => f.path)));
    // The shadow's flows carry the workers' counters, so flowReport (--dump-flows) reads them.
    mergeFlowCounters(shadow, dones);
    return { report, datapath: shadow, fpag };
  } finally {
    if (!kept) Atomics.store(ctrl, STOP, 1);
    const exits = threads.map((t) => {
      Atomics.notify(t.slot, 0);
      Atomics.notify(t.slot, W_JOIN);
      return t.worker.terminate();
    });
    if (!kept) {
      // A run that failed keeps nothing: its temp files go now, their descriptors once no thread can write to them
      // (closed at once, a descriptor's number could be reused by a file opened meanwhile, and written into).
      for (const f of files) try { unlinkSync(f.temp); } catch { /* not made */ }
      const close = () => { for (const f of files) if (f.fd >= 0) try { closeSync(f.fd); } catch { /* closed */ } };
      if (threads.every((t) => t.exited !== null)) close();
      else void Promise.allSettled(exits).then(close);
    }
    main?.release();
  }
}

/** The report: sums over the workers, the FPAG's flow decisions. */
function mergeReport(opts: ReplayOptions, topo: Topology, format: 'pcap' | 'pcapng', dones: WorkerDone[], fpag: Fpag, shadow: Datapath, emitted: Set<number>, files: { ppid: number; path: string }[], seconds: number, workers: number, sharedAnswers: number, joinedAt: number[]): ReplayReport {
  const sum = (f: (s: DatapathStats) => number) => dones.reduce((a, d) => a + f(d.stats), 0);
  for (const [w, d] of dones.entries()) {
    const s = d.stats;
    if (s.packetsIn !== s.delivered + s.dropped) throw new Error(`accounting broken in worker ${w}: in ${s.packetsIn}, delivered ${s.delivered}, dropped ${s.dropped}`);
  }
  const packetsIn = sum((s) => s.packetsIn);
  const interrupted = dones.some((d) => d.interrupted);
  if (!interrupted && dones.some((d) => d.records !== packetsIn)) {
    throw new Error(`accounting broken: read ${dones.map((d) => d.records).join('/')} records, switched ${packetsIn}`);
  }
  const drops: Partial<Record<DropReason, number>> = {};
  for (const d of dones) for (const [k, v] of Object.entries(d.stats.drops) as [DropReason, number][]) drops[k] = (drops[k] ?? 0) + v;
  // Drop reasons in the declared order, as one datapath's stats list them.
  const ordered: Partial<Record<DropReason, number>> = {};
  for (const name of DROP_NAMES) if (name in drops) ordered[name as DropReason] = drops[name as DropReason];
  const ports: PortReport[] = topo.ports.map((p) => {
    const rows = dones.map((d) => d.stats.ports.find((x) => x.ppid === p.ppid)!);
    const vpid = shadow.mapping.toVpid[p.ppid];
    return {
      name: p.name, ppid: p.ppid, role: p.role, vpid, attached: vpid >= 0 ? fpag.vpidName(vpid) : undefined,
      rx: { packets: rows.reduce((a, r) => a + r.rxPackets, 0), bytes: rows.reduce((a, r) => a + r.rxBytes, 0) },
      tx: { packets: rows.reduce((a, r) => a + r.txPackets, 0), bytes: rows.reduce((a, r) => a + r.txBytes, 0) },
      file: emitted.has(p.ppid) ? files.find((f) => f.ppid === p.ppid)!.path : undefined,
    };
  });
  const first = dones[0];
  const report: ReplayReport = {
    capture: opts.capture,
    format,
    topology: topo.path,
    packets: { in: packetsIn, out: sum((s) => s.delivered), dropped: sum((s) => s.dropped), copies: sum((s) => s.copies) },
    tunnel: { flagged: sum((s) => s.special), unflagged: sum((s) => s.decapsulated), specialTo: topo.tunnel?.specialPort ?? 'fpag', sent: sum((s) => s.encapsulated), flaggedSent: sum((s) => s.flaggedSent) },
    drops: ordered,
    ports,
    flows: {
      installed: shadow.flowsInstalled, active: shadow.flows.count, evicted: sum((s) => s.flowsEvicted), expired: sum((s) => s.flowsExpired),
      upcalls: fpag.upcallsHandled, emcHits: sum((s) => s.emcHits), megaflowHits: sum((s) => s.megaflowHits), smcHits: sum((s) => s.smcHits), misses: sum((s) => s.lookupsMissed), fastLane: sum((s) => s.fastLane),
    },
    clock: { jumps: Math.max(...dones.map((d) => d.stats.clockJumps)), backs: Math.max(...dones.map((d) => d.stats.clockBacks)) },
    fpag: { placement: 'inline', upcalls: fpag.upcallsHandled, batches: fpag.upcallsHandled, roundTripUs: null },
    workers: {
      count: workers,
      answeredFromTable: sharedAnswers,
      joinedAt,
    each: dones.map((d) => ({ beganMs: Number((d.began - dones[0].began).toFixed(1)), endedMs: Number((d.ended - dones[0].began).toFixed(1)), waitedMs: Number((d.waitedMs ?? 0).toFixed(1)), ringWaitMs: Number((d.ringWaitMs ?? 0).toFixed(1)), packets: d.stats.packetsIn, upcalls: d.stats.upcalls, flows: d.stats.flowsNow, emcHits: d.stats.emcHits, megaflowHits: d.stats.megaflowHits, expired: d.stats.flowsExpired })),
    },
    stale: [],
    seconds,
  };
  if (first.error) report.error = first.error;
  return report;
}

/** Sums the workers' per-flow counters into the shadow's flows (dump-flows reads them there). */
function mergeFlowCounters(shadow: Datapath, dones: WorkerDone[]): void {
  const fl = shadow.flows;
  let now = 0;
  for (const d of dones) {
    now = Math.max(now, d.now);
    for (const x of d.flows) {
      const f = fl.findExact(x.key, x.mask);
      if (f < 0) continue;
      const o = f * STAT_WORDS;
      fl.stats[o + ST_PACKETS] += x.packets;
      fl.stats[o + ST_BYTES] += x.bytes;
      fl.stats[o + ST_USED] = Math.max(fl.stats[o + ST_USED], x.used);
    }
  }
  shadow.now = now;
}

// The thread side: ready as soon as its modules are loaded; then it waits to be joined (or told it is not needed).
if (!isMainThread && workerData?.fpoReplayWorker) {
  const { port, slot, ctrl } = workerData.fpoReplayWorker as { port: MessagePort; slot: Int32Array; ctrl: Int32Array };
  const answer = answerOf(slot);
  let w: RunWorker | null = null;
  const stopped = (): boolean => Atomics.load(ctrl, STOP) === 1;
  /** The next message on the port: it may lag a moment behind the slot's word. */
  const receive = (): unknown => {
    let m = receiveMessageOnPort(port);
    for (let tries = 0; m === undefined && tries < 10_000; tries++) {
      Atomics.wait(slot, W_JOIN, Atomics.load(slot, W_JOIN), 1); // 1 ms
      m = receiveMessageOnPort(port);
    }
    if (m === undefined) throw new Error('no message on the port after the slot said one was sent');
    return m.message;
  };
  let waited = 0;
  let ringWaited = 0;
  /** A round trip through the slot. Null when the run is stopping. */
  const ask = (what: number, arg: number): ControlMessage[] | null => {
    const t0 = performance.now();
    slot[1] = what;
    slot[2] = arg;
    Atomics.store(slot, 0, REQUEST);
    Atomics.add(ctrl, DOOR, 1);
    Atomics.notify(ctrl, DOOR);
    try {
      for (let spin = 0; spin < SPIN && Atomics.load(slot, 0) === REQUEST; spin++);
      while (Atomics.load(slot, 0) === REQUEST) {
        if (stopped()) return null;
        Atomics.wait(slot, 0, REQUEST, 50);
      }
      // An upcall's answer is in the slot; an event's comes on the port.
      const msgs = slot[3] >= 0 ? decodeInstalls(answer) : (receive() as ControlMessage[]);
      Atomics.store(slot, 0, IDLE);
      return msgs;
    } finally {
      waited += performance.now() - t0;
    }
  };
  class Stop extends Error {}
  /** Tells the main thread to look (its doorbell). */
  const ring = (): void => {
    Atomics.add(ctrl, DOOR, 1);
    Atomics.notify(ctrl, DOOR);
  };
  try {
    Atomics.store(slot, W_READY, 1);
    ring();
    while (Atomics.load(slot, W_JOIN) === 0 && !stopped()) Atomics.wait(slot, W_JOIN, 0, 50);
    if (Atomics.load(slot, W_JOIN) !== NOT_NEEDED && !stopped()) {
      // Built before it joins, so that it switches from the moment it has joined.
      const { setup } = receive() as { type: 'setup'; setup: WorkerSetup };
      const atEvent = (k: number): ControlMessage[] => {
        const msgs = ask(ASK_EVENT, k);
        if (msgs === null) throw new Stop();
        return msgs;
      };
      if (setup.ring !== undefined) {
        const rw = new RingWorker(setup, atEvent);
        ringHooks(rw, setup.events, setup.layout!, ring);
        w = rw;
      } else w = new ReplayWorker(setup, atEvent);
      Atomics.store(slot, W_PREPARED, 1);
      ring();
      while (Atomics.load(slot, W_JOIN) === SETUP && !stopped()) Atomics.wait(slot, W_JOIN, SETUP, 50);
    }
    if (w !== null && Atomics.load(slot, W_JOIN) === JOINED) {
      const join = receive() as Join;
      w.begin(join);
      const dp = w.dp;
      w.applyMessages(join.messages);
      for (const f of join.flows) dp.apply(f);
      dp.upcallSink = (u) => {
        slot[8] = u.inPpid;
        for (let i = 0; i < KEY_WORDS; i++) slot[9 + i] = u.key[i];
        const msgs = ask(ASK_UPCALL, 0);
        if (msgs === null) return; // stopping: the packet is dropped as upcallFailed, and the run reports interrupted
        for (const m of msgs) dp.apply(m);
      };
      let interrupted = false;
      try {
        for (;;) {
          const door = Atomics.load(ctrl, DOOR);
          const r = w.step();
          if (r === 0) break;
          Atomics.add(slot, W_BEAT, 1); // alive (the main thread's stall watch)
          if (stopped()) { interrupted = true; break; }
          if (r < 0) {
            // The ring: a chunk another worker indexes, or a slot another still reads. Spin a little, then sleep on the doorbell.
            const t0 = performance.now();
            for (let spin = 0; spin < SPIN && Atomics.load(ctrl, DOOR) === door; spin++);
            if (Atomics.load(ctrl, DOOR) === door) Atomics.wait(ctrl, DOOR, door, 1);
            ringWaited += performance.now() - t0;
          }
        }
        if (!interrupted) w.finishEvents();
      } catch (e) {
        if (!(e instanceof Stop)) throw e;
        interrupted = true;
      }
      w.close();
      const d = w.done(interrupted);
      d.waitedMs = waited;
      d.ringWaitMs = ringWaited;
      // Closed before the report: the main thread may end this thread as soon as it has it.
      w.release();
      port.postMessage(d);
      ring();
    } else w?.release(); // built, not needed
  } catch (e) {
    w?.release();
    port.postMessage({ type: 'failed', message: (e as Error).message ?? String(e), code: (e as { code?: string }).code } satisfies WorkerFailed);
    ring();
  }
}
