/**
 * Datapath: the emulated NIC's fast path and the small API that control/
 * calls. One batch goes rx → fast lane (fast-lane.ts: its leading
 * common-case packets, start to finish in one pass) → for the rest: parse →
 * flag check → classify (→ upcall on a miss) → execute (actions,
 * VPID→PPID) → tx; and is then accounted:
 *
 *   in = delivered + dropped          (each packet once, by drop[i])
 *   copies >= delivered               (a flood sends one packet many times)
 *
 * The datapath owns its tables (flows, action sets, mapping); the control
 * plane changes them only by messages (upcall.ts) through `apply`, and reads
 * them through `stats` and `dumpFlows`.
 */
import { ActionSets, type Action } from './actions/action-sets.js';
import { Encap } from './actions/encap.js';
import { Execute, type DirectTx } from './actions/execute.js';
import { vlanDelta } from './actions/vlan.js';
import { PacketBatch } from './batch.js';
import { KEY_WORDS, W_CT, copyKey } from './classifier/flow-key.js';
import { FULL, FlowTable, ST_BYTES, ST_PACKETS, STAT_WORDS } from './classifier/flow-table.js';
import { Classify } from './classifier/classify.js';
import { Emc } from './classifier/emc.js';
import { CaptureClock } from './clock.js';
import { ConnTrack } from './conntrack/conntrack.js';
import { Offload } from './conntrack/offload.js';
import { FIREWALL_VERSIONS, type FirewallModule, type FirewallVersion } from './services/firewall/module.js';
import { FirewallV1 } from './services/firewall/v1/firewall.js';
import { FirewallV2 } from './services/firewall/v2/firewall.js';
import { D, DROP_COUNT, DROP_NAMES, FORWARDED, RECIRC, SPECIAL, type DropReason } from './drops.js';
import { FastLane } from './fast-lane.js';
import { FlagCheck } from './classifier/flag-check.js';
import { FpoError } from './errors.js';
import { MappingTable, NO_PPID } from './mapping/mapping-table.js';
import { Parse } from './parse/parse.js';
import { parseIpText } from './ip-text.js';
import { UPCALL_PENDING, newUpcallBatch, type ControlMessage, type SpecialPacket, type Upcall, type UpcallBatch } from './upcall.js';
import { UpcallQueue, connHash } from './upcall-queue.js';

export const MAX_PPID = 4095;

/** How many times one packet may be sent through ct(table=…): a deeper one is a loop in the rules, dropped as recircLoop. */
export const MAX_RECIRC = 4;

/** Conntrack ids the clock hand looks at per batch (ConnTrack.expire): bounded work, never a sweep behind one batch. */
const CT_EXPIRE_BUDGET = 64;

export { parseIpText } from './ip-text.js';

/** The tx side of a port: where execute's per-port lists go. */
export interface TxPort {
  /**
   * Sends packets idx[from .. from + n) of the batch, in that order. enc[j]
   * beside idx[j] is -1 for a plain copy, encapId * 2 + flag: put that
   * encap's outer headers in front (encap.write), or -2 and below: push or
   * pop the frame's VLAN tag as it is written (vlan.ts).
   */
  writeBatch(batch: PacketBatch, idx: Uint16Array, from: number, n: number, enc: Int32Array, encap: Encap): void;
  /** A buffer execute may copy raw pcap records into (execute.ts); absent for most ports. */
  readonly direct?: DirectTx;
}

export interface DatapathOptions {
  /** Most flows installed at once (default 65536). */
  maxFlows?: number;
  /** Largest VPID (default 65535). */
  maxVpid?: number;
  /** Largest PPID (default MAX_PPID). */
  maxPpid?: number;
  /** Batch capacity the datapath's lists are sized for (default 256). */
  batchCapacity?: number;
  /** Exact-match cache: insert one megaflow hit in this many (default 100; 0 = no cache). */
  emcInsertInvProb?: number;
  /** The signature-match cache in front of the megaflow subtables (default true). */
  smc?: boolean;
  /** The Bloom filter that spares a lookup the subtables a key is not in (default true; FlowTable.bloom). */
  bloom?: boolean;
  /** A flow not used for this long (ms of datapath clock) is removed (default 10000, as OVS's max-idle; 0 = never). */
  idleTimeoutMs?: number;
  /** Connections the conntrack table holds (default 65536; allocated on first use: ConnTrack.bytesFor says how much). */
  conntrackCapacity?: number;
  /** Connections the per-port firewall holds for each firewalled port (its table; default 16384). */
  firewallCapacity?: number;
  /** The firewall upgrade's hold queue: packets (default 16384: 16 ms at 1 Mpps) and bytes (default 16 MiB) it takes before it drops (fwHoldOverflow). */
  firewallHoldPackets?: number;
  firewallHoldBytes?: number;
  /**
   * For an asynchronous FPAG (upcallAsync): packets (at most 32768) and bytes
   * (default 4 MiB) its upcall queue holds. Set it when the datapath may get
   * one: the flow table keeps that many spare indices (without it, 8192
   * packets and no spare: a release may find the table full).
   */
  upcallQueuePackets?: number;
  upcallQueueBytes?: number;
}

/** An FPAG that answers in another thread, later (Datapath.upcallAsync; control/fpag-thread.ts). */
export interface AsyncUpcalls {
  /** Hands u's keys over (copied) and returns at once: the number of keys handed over so far (the ticket of u's last). */
  submit(u: UpcallBatch): number;
  /** Applies (Datapath.apply) the next answer if it has come, without waiting; returns how many keys are answered so far. */
  poll(): number;
  /** Waits for the next answer and applies it; returns how many keys are answered so far (the same when none is awaited). */
  waitOne(): number;
}

/** One installed flow, as the control plane reads it. */
export interface FlowInfo {
  id: number;
  key: Uint32Array;
  mask: Uint32Array;
  actions: Action[];
  packets: number;
  bytes: number;
  used: number;
}

/** Buckets of parkMisses's keys handed over (a key stays until another of its bucket comes). */
const PEND_BUCKETS = 4096;
/** releaseParked's table of the connections in a run (by connection hash; a collision only cuts a run early). */
const RUN_SEEN = 4096;

export interface DatapathStats {
  packetsIn: number;
  /** Delivered: to a port, or (special) to the special-processing path. */
  delivered: number;
  special: number;
  decapsulated: number;
  dropped: number;
  copies: number;
  encapsulated: number;
  flaggedSent: number;
  /** Encapsulated copies not sent: the inner frame was too long for the outer length field (encapTooLong). */
  encapTooLong: number;
  upcalls: number;
  flowsInstalled: number;
  flowsNow: number;
  flowsEvicted: number;
  flowsExpired: number;
  emcHits: number;
  /** Megaflow-table lookups the signature-match cache answered (of megaflowHits, and of the fast lane's). */
  smcHits: number;
  megaflowHits: number;
  lookupsMissed: number;
  /** Packets the fast lane forwarded (the rest took the stages). */
  fastLane: number;
  /** Packets sent through conntrack by a ct action (each time: a packet recirculated twice counts twice). */
  ctPackets: number;
  /** A replay's capture clock: steps forward cut to its bound, steps back taken as 0 (clock.ts). */
  clockJumps: number;
  clockBacks: number;
  drops: Partial<Record<DropReason, number>>;
  ports: { ppid: number; vpid: number; rxPackets: number; rxBytes: number; txPackets: number; txBytes: number }[];
}

export class Datapath {
  readonly mapping: MappingTable;
  readonly flows: FlowTable;
  readonly emc: Emc;
  readonly classify: Classify;
  readonly encap = new Encap();
  readonly actionSets = new ActionSets(this.encap);
  readonly parse: Parse;
  readonly execute: Execute;
  readonly flagCheck: FlagCheck;
  readonly fastLane: FastLane;
  /** Receives misses one at a time (when no upcallBatchSink is set). Set by the control plane before traffic flows. */
  upcallSink: ((u: Upcall) => void) | null = null;
  private batchSink: ((u: UpcallBatch) => void) | null = null;
  /**
   * Receives the misses of a batch together (upcallMany), and is used
   * instead of upcallSink when set: the stages hand over every miss of the
   * batch at once, the fast lane the misses it finds from its first one on
   * (FastLane.gather).
   */
  get upcallBatchSink(): ((u: UpcallBatch) => void) | null { return this.batchSink; }
  set upcallBatchSink(s: ((u: UpcallBatch) => void) | null) {
    this.batchSink = s;
    this.fastLane.gatherMisses = s !== null;
  }

  /**
   * With upcallBatchSink, a sink that takes a batch's misses as they are
   * found (control/fpag-thread.ts: the FPAG's thread decides them while the
   * fast lane gathers the rest), or null. It gets misses in parts (an
   * UpcallBatch, `continues` false for a datapath batch's first); the
   * batch sink then gets all the batch's misses, those handed early first,
   * in the same order, and answers them all before it returns.
   */
  get upcallEarlySink(): ((u: UpcallBatch) => void) | null { return this.earlySink; }
  set upcallEarlySink(s: ((u: UpcallBatch) => void) | null) {
    this.earlySink = s;
    this.fastLane.missEarly = s === null ? null : (b, idx, from, to) => this.upcallEarly(b, idx, from, to);
  }

  private earlySink: ((u: UpcallBatch) => void) | null = null;

  /**
   * With upcallBatchSink, a sink that answers a batch in parts (control/
   * fpag-thread.ts), or null (batches are answered whole). The fast lane's
   * batches are then handed over `partial`: the batch sink returns once
   * the first part is answered and installed, and this one is asked for
   * more (at least one more part; all with `all`) when the lane reaches a
   * packet not yet answered, so the lane switches a part's packets while
   * the FPAG decides the next.
   */
  upcallMoreSink: ((u: UpcallBatch, all: boolean) => void) | null = null;
  /**
   * A partial batch (upcallMany's): its packets and where their flows go; null when none. idx and
   * got are the caller's arrays (the fast lane's gather), kept till the batch is answered: the
   * lane answers a partial batch's rest before it writes them again (FastLane.awaitRest).
   */
  private partialBatch: PacketBatch | null = null;
  private partialIdx: Uint16Array = new Uint16Array(0);
  private partialGot: Int32Array = new Int32Array(0);
  /** The early hand-over's message (reused; its own: the batch's UpcallBatch is built after). */
  private earlyBatch: UpcallBatch = newUpcallBatch(0);

  // Slow path (a burst of new flows): misses idx[from, to) of the batch to the early sink.
  private upcallEarly(batch: PacketBatch, idx: Uint16Array, from: number, to: number): void {
    if (from === 0) this.finishPartial();
    const n = to - from;
    let u = this.earlyBatch;
    if (u.inPpid.length < n) {
      u = this.earlyBatch = newUpcallBatch(Math.max(n, this.batchCapacity));
    }
    fillUpcalls(u, batch, idx, from, n);
    u.continues = from > 0;
    u.whole = false;
    this.earlySink!(u);
  }
  /**
   * Installs refused because no flow index was free: a batch made more new
   * flows than the table's spare indices while the flows it evicted were
   * quarantined (flow-table.ts); their packets are dropped as flowTableFull.
   */
  installsRefused = 0;
  /**
   * An FPAG that answers later, in another thread (control/fpag-thread.ts
   * async): used instead of the sinks when set. A batch's misses are handed
   * over (submit) and their packets parked in the upcall queue
   * (upcall-queue.ts) with the hits of their exact keys behind them; the
   * datapath goes on switching. Answers are applied between batches (poll),
   * and the parked packets whose keys are answered are switched before the
   * next batch, in the order they came. The fast lane leaves the stages a
   * batch's first miss and the batches while packets wait.
   */
  get upcallAsync(): AsyncUpcalls | null { return this.asyncSink; }
  set upcallAsync(s: AsyncUpcalls | null) {
    this.asyncSink = s;
    this.fastLane.stopAtMiss = s !== null;
    if (s !== null && this.uq === null) this.uq = new UpcallQueue(this.upcallQueuePackets, this.upcallQueueBytes, this.batchCapacity);
  }
  private asyncSink: AsyncUpcalls | null = null;
  private uq: UpcallQueue | null = null;
  private readonly upcallQueuePackets: number;
  private readonly upcallQueueBytes: number;
  /** Keys handed to the asynchronous FPAG so far (the ticket of the last), and answered so far. */
  private lastTicket = 0;
  private answeredKeys = 0;
  /** Times the datapath waited for answers between batches (its upcall queue half full), and at the end. */
  upcallQueueWaits = 0;

  /** The upcall queue's packets parked in all, the most at once, and the datapath's waits (asynchronous FPAG). */
  upcallQueueStats(): { parked: number; maxDepth: number; waits: number } {
    return { parked: this.uq?.parked ?? 0, maxDepth: this.uq?.maxDepth ?? 0, waits: this.upcallQueueWaits };
  }
  /** Batches of misses handed to upcallBatchSink (upcalls counts their keys less those the sink found covered). */
  upcallBatches = 0;
  /** Receives flagged packets when no special port is set. */
  specialSink: ((p: SpecialPacket) => void) | null = null;
  /** PPID that flagged packets are written to untouched, or -1 (the FPAG). */
  private specialPpid = -1;
  /** Packets handed to the special-processing path. */
  special = 0;

  private readonly ports: (TxPort | undefined)[];
  readonly rxPackets: Float64Array;
  readonly rxBytes: Float64Array;
  readonly txPackets: Float64Array;
  readonly txBytes: Float64Array;
  readonly drops = new Float64Array(DROP_COUNT);
  packetsIn = 0;
  delivered = 0;
  upcalls = 0;
  flowsInstalled = 0;
  private batchesSinceSort = 0;
  private readonly upcallMsg: Upcall = { type: 'upcall', inPpid: 0, key: new Uint32Array(KEY_WORDS) };
  /** upcallMany's message and the packets it lists, reused (sized to the largest batch seen). */
  private upcallBatch: UpcallBatch = newUpcallBatch(0);
  /**
   * The flow each flow of a batch's answer became (apply of its FlowInstalls: [first + j], or -1),
   * entries up to installedEnd valid (reset before each hand-over): upcallMany takes a packet's
   * flow from here when the sink said which flow covers it (UpcallBatch.entry).
   */
  private installed = new Int32Array(0);
  private installedEnd = 0;
  private missIdx = new Uint16Array(0);
  private missFlow = new Int32Array(0);
  /** The datapath clock (ms) of the last batch. */
  now = 0;
  /**
   * A replay's clock (clock.ts): capture time in bounded steps, so a wild
   * timestamp cannot freeze expiry. The live service uses monotonicMs instead.
   */
  readonly captureClock = new CaptureClock();
  private readonly idleTimeoutMs: number;
  private nextExpiry = 0;
  private readonly conntrackCapacity: number;
  private ct: ConnTrack | null = null;

  /** The connection table (ct actions, handed-over connections): made at its first use, its size fixed then. */
  get conntrack(): ConnTrack {
    if (this.ct === null) this.ct = new ConnTrack({ capacity: this.conntrackCapacity });
    return this.ct;
  }

  private off: Offload | null = null;

  /** The hand-over's stage (conntrack/offload.ts) over the connection table: made at its first use. */
  get offload(): Offload {
    if (this.off === null) this.off = new Offload(this.conntrack);
    return this.off;
  }

  /** Whether the offload stage has been made. */
  get hasOffload(): boolean {
    return this.off !== null;
  }

  /** Packets a ct action sent through conntrack (but those of the fast lane's ct hot loop: stats() adds its ctHot). */
  ctPackets = 0;
  // Recirculation (made at the first ct): per depth, the packets taken from a pass, their ct
  // specs, the next pass's batch and its per-packet action sets (-1: classify it).
  private readonly batchCapacity: number;
  private rIdx: Uint16Array[] = [];
  private rSpec: Int32Array[] = [];
  private rBatch: PacketBatch[] = [];
  private rActs: Int32Array[] = [];
  private ctSel = new Uint16Array(0);
  private ctDone = new Uint8Array(0);

  /** Whether the connection table has been made (a datapath that never tracks pays nothing). */
  get hasConntrack(): boolean {
    return this.ct !== null;
  }

  // --- the per-port firewall's versions (services/firewall) ---

  private readonly firewallCapacity: number;
  /** The versions loaded, by index in FIREWALL_VERSIONS (null: not loaded). */
  private readonly fwModules: (FirewallModule | null)[] = FIREWALL_VERSIONS.map(() => null);
  /** Per zone (a firewalled interface's VPID): the index of the firewall version serving the port (0: v1). Read per group of packets. */
  readonly firewallVersion = new Uint8Array(65536);
  /** Per zone: the generation of the port's rules (v2 keeps it with each connection; the FPAG bumps it when the rules change). */
  readonly firewallRuleGen = new Uint32Array(65536).fill(1);

  /** The firewall version `v`, loaded (made, its tables allocated) at its first use. */
  firewall(v: FirewallVersion): FirewallModule {
    const k = FIREWALL_VERSIONS.indexOf(v);
    if (k < 0) throw new FpoError('FPO_ERR_USAGE', `firewall version ${v}: this build has ${FIREWALL_VERSIONS.join(', ')}`);
    let m = this.fwModules[k];
    if (m === null) {
      m = v === 'v1' ? new FirewallV1(this.firewallCapacity) : new FirewallV2(this.firewallCapacity, this.firewallRuleGen);
      this.fwModules[k] = m;
    }
    return m;
  }

  /** Whether version v is loaded. */
  firewallLoaded(v: FirewallVersion): boolean {
    return this.fwModules[FIREWALL_VERSIONS.indexOf(v)] !== null;
  }

  /** The version serving zone's port. */
  firewallVersionOf(zone: number): FirewallVersion {
    return FIREWALL_VERSIONS[this.firewallVersion[zone]];
  }

  /** Slow path: zone's port is served by version v from the next packet on (its state must be there: control/firewall-upgrade.ts). */
  setFirewallVersion(zone: number, v: FirewallVersion): void {
    this.firewall(v);
    this.firewallVersion[zone] = FIREWALL_VERSIONS.indexOf(v);
  }

  /**
   * Per zone: 1 while its port's firewall is being moved between versions
   * (control/firewall-upgrade.ts): its packets wait, at their firewall
   * step, in the hold queue, in order, until releaseFirewallHold.
   */
  readonly firewallHold = new Uint8Array(65536);
  private readonly holdPackets: number;
  private readonly holdBytes: number;
  /**
   * The hold queue (made by prepareFirewallHold or at the first hold): held
   * packet k is slot k % B of page k / B (B = the batch capacity: a page is
   * a PacketBatch, so a release runs pages through ctPass as batches), its
   * bytes in one arena; per packet its ct spec, zone and virtio-net header
   * length.
   */
  private hq: { pages: PacketBatch[]; count: number; arena: Uint8Array; spec: Int32Array; zone: Uint16Array; vnet: Uint8Array; used: number } | null = null;
  /** Packets held now, held in all, refused for a full queue (D.fwHoldOverflow), and released. */
  holdStats = { now: 0, held: 0, overflow: 0, released: 0 };

  // A packet of a held port: into the hold queue (marked RECIRC: accounted when released), or
  // dropped with fwHoldOverflow when the queue is full.
  private holdPacket(batch: PacketBatch, i: number, spec: number): void {
    const q = this.hq ??= this.makeHold();
    const vnet = batch.vnet ? 12 : 0; // a virtio-net header before the frame goes with it
    const len = batch.caplen[i] + vnet;
    if (q.count === this.holdPackets || q.used + len > this.holdBytes || batch.off[i] < vnet) {
      batch.drop[i] = D.fwHoldOverflow;
      this.holdStats.overflow++;
      return;
    }
    const k = q.count++;
    const B = this.batchCapacity;
    const page = q.pages[(k / B) | 0];
    const slot = k % B;
    // Copied byte by byte: no view made per packet (a rare path: only while a port's firewall moves).
    const src = batch.buf;
    const arena = q.arena;
    for (let k = batch.off[i] - vnet, to = q.used, end = batch.off[i] + batch.caplen[i]; k < end; k++, to++) arena[to] = src[k];
    page.copyPacket(batch, i, slot);
    page.off[slot] = q.used + vnet;
    if (slot >= page.count) page.count = slot + 1;
    q.used += len;
    q.spec[k] = spec;
    q.zone[k] = this.actionSets.ctZone[spec];
    q.vnet[k] = vnet;
    batch.drop[i] = RECIRC;
    this.holdStats.now++;
    this.holdStats.held++;
  }

  private makeHold(): NonNullable<Datapath['hq']> {
    const B = this.batchCapacity;
    const arena = new Uint8Array(this.holdBytes);
    const pages: PacketBatch[] = [];
    for (let k = 0; k < this.holdPackets; k += B) {
      const p = new PacketBatch(B);
      p.batchSetBuffer(arena);
      pages.push(p);
    }
    return { pages, count: 0, arena, spec: new Int32Array(this.holdPackets), zone: new Uint16Array(this.holdPackets), vnet: new Uint8Array(this.holdPackets), used: 0 };
  }

  /** Slow path: the hold queue made and its memory touched (before a pause, not in it). */
  prepareFirewallHold(): void {
    if (this.hq !== null) return;
    const q = (this.hq = this.makeHold());
    q.arena.fill(0);
    for (const p of q.pages) p.key.fill(0);
  }

  /** Slow path: from now on zone's packets wait in the hold queue at their firewall step. */
  holdFirewall(zone: number): void {
    this.firewallHold[zone] = 1;
  }

  /**
   * Slow path: ends zone's hold: its held packets, in the order they came,
   * go on from their firewall step through the version now serving the port
   * (conntrack, then their next pass), a page (a batch) at a time, and are
   * accounted where they end. Returns how many.
   */
  releaseFirewallHold(zone: number, now: number): number {
    this.firewallHold[zone] = 0;
    const q = this.hq;
    if (q === null || q.count === 0) return 0;
    // Its pages are switched as batches are: a flow evicted meanwhile keeps its index till the end (process).
    this.flows.quarantine(true);
    try {
      return this.releaseHeld(q, zone, now);
    } finally {
      this.flows.quarantine(false);
    }
  }

  private releaseHeld(q: NonNullable<Datapath['hq']>, zone: number, now: number): number {
    if (this.rBatch.length === 0) this.makeRecirc();
    const B = this.batchCapacity;
    let released = 0;
    for (let pg = 0; pg * B < q.count; pg++) {
      const page = q.pages[pg];
      const end = Math.min(B, q.count - pg * B);
      // Packets with a virtio-net header and without go as two groups (a batch has one `vnet`); the order within each is kept.
      for (const vnet of [false, true]) {
        const idx = this.rIdx[0];
        const spec = this.rSpec[0];
        let m = 0;
        for (let slot = 0; slot < end; slot++) {
          const k = pg * B + slot;
          if (q.zone[k] !== zone || (q.vnet[k] !== 0) !== vnet || page.drop[slot] === RECIRC) continue;
          idx[m] = slot;
          spec[m] = q.spec[k];
          page.drop[slot] = 0;
          m++;
        }
        if (m === 0) continue;
        page.vnet = vnet;
        this.ctPass(page, m, now, 0);
        // Accounted: those that went on to the next pass were (there); the rest here.
        for (let j = 0; j < m; j++) {
          const slot = idx[j];
          const d = page.drop[slot];
          if (d !== RECIRC) this.drops[d]++;
          page.drop[slot] = RECIRC; // done: compacted away below
        }
        released += m;
      }
    }
    // Compact what is left (other zones' packets), in order, with their bytes.
    let w = 0;
    let used = 0;
    for (let k = 0; k < q.count; k++) {
      const from = q.pages[(k / B) | 0];
      const fs = k % B;
      if (from.drop[fs] === RECIRC) continue;
      const vn = q.vnet[k];
      const len = from.caplen[fs] + vn;
      q.arena.copyWithin(used, from.off[fs] - vn, from.off[fs] - vn + len);
      const to = q.pages[(w / B) | 0];
      const ts = w % B;
      if (w !== k) {
        to.copyPacket(from, fs, ts);
        q.spec[w] = q.spec[k];
        q.zone[w] = q.zone[k];
        q.vnet[w] = vn;
      }
      to.off[ts] = used + vn;
      used += len;
      w++;
    }
    for (let pg = 0; pg < q.pages.length; pg++) q.pages[pg].count = Math.max(0, Math.min(B, w - pg * B));
    q.count = w;
    q.used = used;
    this.holdStats.now -= released;
    this.holdStats.released += released;
    return released;
  }

  /** The module serving zone's port (fast path: an array read and, at the port's first packet, a load). */
  private firewallFor(zone: number): FirewallModule {
    return this.fwModules[this.firewallVersion[zone]] ?? this.firewall(FIREWALL_VERSIONS[this.firewallVersion[zone]]);
  }

  constructor(opts: DatapathOptions = {}) {
    const maxPpid = opts.maxPpid ?? MAX_PPID;
    this.mapping = new MappingTable(opts.maxVpid ?? 65535, maxPpid);
    // Spare indices for a batch's installs while its evicted flows are quarantined (flow-table.ts):
    // a batch's worth for each pass its packets may take (the first and MAX_RECIRC recirculations:
    // two batches' worth had dropped a batch of new connections through three ct passes each making
    // a flow, test/datapath/conntrack/recirc-spare.test.ts); with an upcall queue (asynchronous
    // upcalls), for every key that may wait in it too: a release installs what it waits for within
    // one quarantine.
    this.flows = new FlowTable(opts.maxFlows ?? 65536, (1 + MAX_RECIRC) * (opts.batchCapacity ?? 256) + (opts.upcallQueuePackets ?? 0));
    this.flows.smcOn = opts.smc ?? true;
    this.flows.bloomOn = opts.bloom ?? true;
    this.emc = new Emc(this.flows, undefined, opts.emcInsertInvProb ?? 100);
    this.classify = new Classify(this.flows, this.emc, opts.batchCapacity ?? 256);
    this.parse = new Parse(this.mapping.inPortKey, this.mapping.vmPort);
    this.flagCheck = new FlagCheck(this.mapping.inPortKey, this.mapping.vmPort);
    this.ports = new Array(maxPpid + 1).fill(undefined);
    this.rxPackets = new Float64Array(maxPpid + 1);
    this.rxBytes = new Float64Array(maxPpid + 1);
    this.txPackets = new Float64Array(maxPpid + 1);
    this.txBytes = new Float64Array(maxPpid + 1);
    this.execute = new Execute(this.flows, this.actionSets, this.mapping, opts.batchCapacity ?? 256, this.txPackets, this.txBytes);
    this.idleTimeoutMs = opts.idleTimeoutMs ?? 10_000;
    this.conntrackCapacity = opts.conntrackCapacity ?? 65536;
    this.firewallCapacity = opts.firewallCapacity ?? 16384;
    this.holdPackets = opts.firewallHoldPackets ?? 16384;
    this.holdBytes = opts.firewallHoldBytes ?? 16 << 20;
    this.batchCapacity = opts.batchCapacity ?? 256;
    this.upcallQueuePackets = Math.max(2 * this.batchCapacity, Math.min(opts.upcallQueuePackets ?? 8192, 32768));
    this.upcallQueueBytes = Math.max(2 * this.batchCapacity * 2048, opts.upcallQueueBytes ?? 4 << 20);
    this.flagCheck.rxBytes = this.rxBytes;
    this.fastLane = new FastLane(this.mapping.inPortKey, this.emc, this.flows, this.classify, this.execute, this.actionSets, (b, i) => this.upcallOne(b, i), this.flagCheck, this.mapping.vmPort, {
      one: (b, i, spec, now) => this.ctOne(b, i, spec, now),
      tracker: () => this.conntrack,
    });
    this.fastLane.missMany = (b, idx, n, got) => this.upcallMany(b, idx, n, got, true);
    this.fastLane.missMore = (all) => (this.partialBatch === null ? -1 : this.upcallMore(all));
  }

  // Slow path: the API of control/.

  /** Attaches the tx side of port `ppid`. */
  addPort(ppid: number, tx: TxPort): void {
    if (!(ppid >= 0 && ppid <= this.mapping.maxPpid)) throw new FpoError('FPO_ERR_BAD_TOPOLOGY', `PPID ${ppid} out of range 0..${this.mapping.maxPpid}`);
    this.ports[ppid] = tx;
    this.execute.enablePort(ppid, tx.direct);
  }

  /**
   * Called with every batch before it is switched while set (a live
   * capture's rx tap, control/capture.ts): the frames as their port
   * received them. null (the default): one branch per batch, nothing else.
   */
  rxTap: ((batch: PacketBatch) => void) | null = null;

  /**
   * Slow path: puts `tap` in front of port ppid's tx side (it must pass
   * every frame on to `port`), or takes it away (null). While a tap is
   * there the port takes no direct copies (Execute.suspendDirect), so every
   * frame the port sends goes through it; without one the port is as before.
   */
  tapTx(ppid: number, tap: ((port: TxPort) => TxPort) | null): void {
    const own = this.untapped[ppid];
    if (tap === null) {
      if (own === undefined) return;
      this.ports[ppid] = own;
      this.untapped[ppid] = undefined;
      this.execute.suspendDirect(ppid, false);
      return;
    }
    const port = own ?? this.ports[ppid];
    if (port === undefined) throw new FpoError('FPO_ERR_USAGE', `ppid ${ppid} is not a port of this NIC`);
    this.untapped[ppid] = port;
    this.ports[ppid] = tap(port);
    this.execute.suspendDirect(ppid, true);
  }

  /** Ports whose tx side a tap is in front of: the port itself. */
  private readonly untapped: (TxPort | undefined)[] = [];

  hasPort(ppid: number): boolean {
    return this.ports[ppid] !== undefined;
  }

  /** Applies one control message (a flow installed counts as used at `now`: the datapath clock of the last batch). Throws FpoError on a message that cannot apply; the datapath is then unchanged. */
  apply(msg: ControlMessage, now = this.now): void {
    switch (msg.type) {
      case 'flow-install': {
        const act = this.actionSets.intern(msg.actions);
        const f = this.flows.install(msg.key, msg.mask, act, now);
        if (f === FULL) { this.installsRefused++; return; }
        if (f < 0) throw new FpoError('FPO_ERR_CAPACITY', `no free subtable for the flow's mask`);
        this.flowsInstalled++;
        return;
      }
      case 'flow-installs': {
        const n = msg.count;
        const flows = this.flows;
        const keys = msg.keys;
        const masks = msg.masks;
        const first = msg.first ?? 0;
        if (this.installed.length < first + n) this.installed = new Int32Array(Math.max(first + n, 2 * this.installed.length, this.batchCapacity)); // (slow path)
        const installed = this.installed;
        // (Entries this message does not reach read -1, whatever an earlier batch left there.)
        for (let e = this.installedEnd; e < first; e++) installed[e] = -1;
        this.installedEnd = Math.max(this.installedEnd, first + n);
        const keyAt = msg.keyAt;
        const maskAt = msg.maskAt;
        let sub = -1;
        for (let j = 0; j < n; j++) {
          const act = this.actionSets.intern(msg.actions[j]);
          // The same mask as the flow before (the message says so): its subtable, no masks compared.
          const same = maskAt !== undefined && j > 0 && maskAt[j] === maskAt[j - 1];
          const ko = (keyAt === undefined ? j : keyAt[j]) * KEY_WORDS;
          const mo = (maskAt === undefined ? j : maskAt[j]) * KEY_WORDS;
          const f = flows.installAt(keys, ko, masks, mo, act, now, same ? sub : -1);
          sub = f >= 0 ? flows.sub[f] : -1;
          if (f === FULL) { this.installsRefused += n - j; installed.fill(-1, first + j, first + n); return; }
          if (f < 0) { installed.fill(-1, first + j, first + n); throw new FpoError('FPO_ERR_CAPACITY', `no free subtable for the mask of flow ${j} of ${n}`); }
          installed[first + j] = f;
          this.flowsInstalled++;
        }
        return;
      }
      case 'mapping-set': {
        if (!(msg.vpid >= 0 && msg.vpid <= this.mapping.maxVpid)) throw new FpoError('FPO_ERR_USAGE', `vpid ${msg.vpid} out of range 0..${this.mapping.maxVpid}`);
        if (msg.ppid === NO_PPID) { this.mapping.clear(msg.vpid); return; }
        if (!this.hasPort(msg.ppid)) throw new FpoError('FPO_ERR_USAGE', `ppid ${msg.ppid} is not a port of this NIC`);
        this.mapping.set(msg.vpid, msg.ppid);
        return;
      }
      case 'flow-delete': {
        const f = this.flows.findExact(msg.key, msg.mask);
        if (f >= 0) this.flows.remove(f);
        return;
      }
      case 'flow-flush':
        this.flows.clear();
        return;
      case 'tunnel-config': {
        let vtep = 0;
        let vtep6: Uint8Array | null = null;
        for (const a of [msg.vtep, msg.vtep6 ?? null]) {
          if (a === null) continue;
          const b = parseIpText(a);
          if (b === null) throw new FpoError('FPO_ERR_USAGE', `vtep "${a}" is not an IPv4 or IPv6 address`);
          if (b.length === 4) vtep = ((b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]) >>> 0;
          else vtep6 = b;
        }
        this.flagCheck.setVtep6(vtep6);
        if (msg.specialPpid !== -1 && !this.hasPort(msg.specialPpid)) throw new FpoError('FPO_ERR_USAGE', `special port ppid ${msg.specialPpid} is not a port of this NIC`);
        this.flagCheck.vtep = vtep;
        this.flagCheck.flag = { ...this.flagCheck.flag, ...msg.flag };
        this.encap.flag = this.flagCheck.flag;
        this.execute.flagFirstPackets = msg.flagFirstPackets ?? 0;
        this.specialPpid = msg.specialPpid;
        return;
      }
      case 'tunnel-add':
        this.encap.addTunnel(msg.tunnel);
        return;
      case 'tunnel-set':
        this.encap.setTunnel(msg.id, msg.tunnel);
        return;
      case 'port-role':
        if (!(msg.ppid >= 0 && msg.ppid <= this.mapping.maxPpid)) throw new FpoError('FPO_ERR_USAGE', `ppid ${msg.ppid} out of range 0..${this.mapping.maxPpid}`);
        this.mapping.vmPort[msg.ppid] = msg.vm ? 1 : 0;
        return;
      default: {
        const never: never = msg;
        throw new FpoError('FPO_ERR_USAGE', `unknown message ${JSON.stringify(never)}`);
      }
    }
  }

  // Fast path: one batch, rx already done by the caller's port.

  process(batch: PacketBatch, now: number): void {
    // A flow evicted while the batch is switched keeps its index (and actions) until the batch is
    // done: a packet of the batch matched to it before runs its actions, not another flow's.
    // Answers of an FPAG on its thread first, each with the packets waiting for it (answerOne).
    if (this.asyncSink !== null) this.answerUpcalls(now);
    this.flows.quarantine(true);
    try {
      this.switchBatch(batch, now);
    } finally {
      this.flows.quarantine(false);
    }
  }

  // Slow path, between batches: the asynchronous FPAG's answers that have come; then, with the upcall
  // queue half full, the next ones waited for until it is not (the datapath's back-pressure: a
  // batch's misses always fit).
  private answerUpcalls(now: number): void {
    const q = this.uq!;
    while (this.answerOne(false, now));
    while (q.count > 0 && (q.count > q.capacity / 2 || q.used > q.bytes / 2)) {
      this.upcallQueueWaits++;
      if (!this.answerOne(true, now)) break;
    }
  }

  /**
   * Slow path: one answer of the asynchronous FPAG (waited for, or only if
   * it has come), then the parked packets it lets go, within one quarantine:
   * the flows it installed are there when those packets are looked up (a
   * table smaller than the keys waiting had evicted them first). Returns
   * whether an answer came or packets left.
   */
  private answerOne(block: boolean, now: number): boolean {
    this.flows.quarantine(true);
    try {
      const a = block ? this.asyncSink!.waitOne() : this.asyncSink!.poll();
      const answered = a !== this.answeredKeys;
      this.answeredKeys = a;
      // (Packets may be free to go with no new answer: a released packet's pass waited for later ones.)
      const q = this.uq!;
      const parked = q.count;
      this.releaseParked(now);
      return answered || q.count < parked;
    } finally {
      this.flows.quarantine(false);
    }
  }

  /**
   * Slow path: with an asynchronous FPAG, every key handed over answered
   * and every parked packet switched (the end of a replay: each packet read
   * ends delivered or dropped), those parked again on the way included (a ct
   * pass's miss). Nothing to do without one.
   */
  drainUpcalls(now: number): void {
    const q = this.uq;
    if (this.asyncSink === null || q === null) return;
    while (q.count > 0) {
      this.upcallQueueWaits++;
      if (this.answerOne(true, now)) continue;
      // Nothing more to wait for, and packets still wait (not expected): they end dropped, counted.
      this.answeredKeys = Infinity;
      this.flows.quarantine(true);
      try {
        this.releaseParked(now);
      } finally {
        this.flows.quarantine(false);
      }
      this.answeredKeys = this.lastTicket;
    }
  }

  /**
   * Slow path: the parked packets whose keys are answered, from the head,
   * in runs of a page (a batch) at most and never two packets of one
   * connection in a run (a SYN-ACK in its SYN's batch would meet conntrack
   * first, the batch's ct passes going zone by zone; in the queue they came
   * in batches of their own): looked up, their actions run, sent, accounted
   * (rx was, when they came).
   */
  private releaseParked(now: number): void {
    const q = this.uq!;
    const k = q.releasable(this.answeredKeys);
    if (k === 0) return;
    const B = this.batchCapacity;
    const seen = this.runSeen;
    let x = 0;
    while (x < k) {
      // Packets x.. from the head: a run within one page (its slots s..e), at most the k.
      const at = q.slotOf(x);
      const pg = (at / B) | 0;
      const s = at - pg * B;
      const end = Math.min(B, s + (k - x));
      const stamp = ++this.runStamp;
      let e = s;
      while (e < end) {
        const c = q.hash[pg * B + e] & (RUN_SEEN - 1);
        if (seen[c] === stamp) break;
        seen[c] = stamp;
        e++;
      }
      this.releasing = true;
      try {
        this.switchParked(q.pages[pg], s, e, now);
      } finally {
        this.releasing = false;
      }
      x += e - s;
    }
    q.shift(k);
  }

  private readonly runSeen = new Uint32Array(RUN_SEEN);
  /** Whether releaseParked is switching parked packets (their passes' misses are waited for: upcallWaited). */
  private releasing = false;

  // Slow path: the misses of a released packet's next pass, handed over and waited for (see handleMisses).
  private upcallWaited(batch: PacketBatch, now: number): void {
    const c = this.missesOf(batch);
    if (c === 0) return;
    const idx = this.missIdx;
    this.upcalls += c;
    const sink = this.asyncSink!;
    const ticket = (this.lastTicket = sink.submit(this.upcallsOf(batch, idx, c)));
    while (this.answeredKeys < ticket) {
      const a = sink.waitOne();
      if (a === this.answeredKeys) break;
      this.answeredKeys = a;
    }
    const flows = this.flows;
    for (let j = 0; j < c; j++) {
      const i = idx[j];
      const f = flows.lookup(batch.key, i * KEY_WORDS);
      if (f < 0) { batch.drop[i] = flows.count >= flows.capacity ? D.flowTableFull : D.upcallFailed; continue; }
      batch.flow[i] = f;
      batch.ordinal[i] = flows.hit(f, batch.wirelen[i], now);
    }
  }
  private runStamp = 0;

  // Parked packets [s, e) of a queue page, as a batch (those before s were switched: left out). Runs with `releasing` set.
  private switchParked(page: PacketBatch, s: number, e: number, now: number): void {
    const flows = this.flows;
    page.count = e;
    for (let j = 0; j < s; j++) page.drop[j] = RECIRC;
    let missed = 0;
    for (let j = s; j < e; j++) {
      page.drop[j] = 0;
      const f = flows.lookup(page.key, j * KEY_WORDS);
      page.flow[j] = f;
      if (f >= 0) page.ordinal[j] = flows.hit(f, page.wirelen[j], now);
      else missed++;
    }
    // No flow now (a hit parked behind its connection whose flow was evicted meanwhile, or a key its
    // answer did not cover): asked again, waited for.
    if (missed > 0) this.upcallWaited(page, now);
    this.execute.process(page);
    this.transmit(page);
    if (this.execute.ctCount > 0) this.recirculate(page, now, 0);
    let delivered = 0;
    for (let j = s; j < e; j++) {
      const d = page.drop[j];
      if (d === 0 || d === FORWARDED) delivered++;
      else if (d !== RECIRC) this.drops[d]++;
    }
    this.delivered += delivered;
  }

  /**
   * Slow path, with an asynchronous FPAG: the batch's misses handed over in
   * one UpcallBatch and parked; so are the hits of connections with a packet
   * parked, either way (their count on the flow undone: they are switched
   * when they leave the queue). In batch order, so a connection's packets
   * stay in order.
   */
  private parkMisses(batch: PacketBatch): void {
    const q = this.uq!;
    const n = batch.count;
    const m = this.missesOf(batch);
    // A miss whose exact key was handed over and is not answered yet is not handed over again: it waits
    // for that key's answer (pending: one remembered key a hash bucket, its key words and ticket).
    const idx = this.missIdx;
    const own = this.missFlow; // per listed miss: its key's ticket offset (own key), or -ticket (a pending key's)
    let c = 0;
    const base = this.lastTicket;
    for (let j = 0; j < m; j++) {
      const i = idx[j];
      const p = this.pendingKey(batch.key, i * KEY_WORDS, batch.hash[i]);
      if (p > this.answeredKeys) { own[j] = -p; continue; }
      idx[c] = i;
      own[j] = ++c;
      this.rememberKey(batch.key, i * KEY_WORDS, batch.hash[i], base + c);
    }
    if (c > 0) {
      this.upcalls += c; // (less those the FPAG finds covered, as they are answered: fpag-thread.ts)
      this.lastTicket = this.asyncSink!.submit(this.upcallsOf(batch, idx, c));
    } else if (q.count === 0 && m === 0) return;
    // A miss's ticket is its own key's (it may go once that key's request is answered: its flow is
    // then in, not maybe evicted again while the rest of its batch's keys are decided), or the pending
    // key's; never below the packet parked before it, so tickets rise along the queue. A hit waits for
    // the packet parked last.
    const stats = this.flows.stats;
    let j = 0;
    for (let i = 0; i < n; i++) {
      if (batch.drop[i] !== 0) continue;
      const f = batch.flow[i];
      const conn = connHash(batch.key, i * KEY_WORDS);
      const last = q.lastTicket();
      let ticket: number;
      if (f >= 0) {
        if (q.count === 0 || !q.waiting(conn)) continue;
        const o = f * STAT_WORDS;
        stats[o + ST_PACKETS]--;
        stats[o + ST_BYTES] -= batch.wirelen[i];
        ticket = last;
      } else {
        const t = own[j++];
        ticket = Math.max(last, t > 0 ? base + t : -t);
      }
      if (q.park(batch, i, ticket, conn)) {
        batch.drop[i] = RECIRC; // accounted when it leaves the queue
        batch.flow[i] = -1;
      } else batch.drop[i] = D.upcallQueueFull;
    }
  }

  /** Keys handed to the asynchronous FPAG, one a bucket by exact key hash: their words and tickets (pendingKey). */
  private pendKeys = new Uint32Array(0);
  private pendTickets = new Float64Array(0);

  // The ticket of the key at key[ko..] (exact hash h) if it was handed over (answered or not), else 0.
  private pendingKey(key: Uint32Array, ko: number, h: number): number {
    if (this.pendTickets.length === 0) {
      this.pendKeys = new Uint32Array(PEND_BUCKETS * KEY_WORDS);
      this.pendTickets = new Float64Array(PEND_BUCKETS);
    }
    const b = h & (PEND_BUCKETS - 1);
    const t = this.pendTickets[b];
    if (t === 0) return 0;
    const o = b * KEY_WORDS;
    for (let w = 0; w < KEY_WORDS; w++) if (this.pendKeys[o + w] !== key[ko + w]) return 0;
    return t;
  }

  private rememberKey(key: Uint32Array, ko: number, h: number, ticket: number): void {
    const b = h & (PEND_BUCKETS - 1);
    const o = b * KEY_WORDS;
    for (let w = 0; w < KEY_WORDS; w++) this.pendKeys[o + w] = key[ko + w];
    this.pendTickets[b] = ticket;
  }

  private switchBatch(batch: PacketBatch, now: number): void {
    if (this.rxTap !== null) this.rxTap(batch); // a live capture: one branch a batch when there is none
    // While a connection is offloaded (a service VM handed it over), its packets are served
    // first (offload.ts front: by destination MAC), and go on as received on the out interface.
    const off = this.off;
    const offloading = off !== null && off.active > 0;
    if (offloading) (off as Offload).front(batch, now, this.mapping.inPortKey, this.mapping.vmPort, this.mapping.toPpid, this.rxPackets, this.rxBytes);
    // The common case first, in one pass; the stages take the rest of the batch.
    // While packets wait for the FPAG (asynchronous upcalls), the stages take the batch: a hit may have to wait behind them.
    const lane = this.uq === null || this.uq.count === 0;
    const laned = lane ? this.fastLane.process(batch, now, this.rxPackets, this.rxBytes) : 0;
    this.finishPartial(); // (the lane's last upcall, answered whole: the stages look its flows up)
    const laneSpecial = lane ? this.fastLane.special : 0;
    if (batch.unfilled) batch.completeRecords(laned); // a lazy fill the lane left before its end
    if (laned < batch.count) {
      this.parse.process(batch);
      const flagged = this.flagCheck.process(batch);
      if (offloading) (off as Offload).process(batch, now); // what front could not take (decapsulated frames)
      if (this.classify.process(batch, now) > 0 || (this.uq !== null && this.uq.count > 0)) this.handleMisses(batch, now);
      this.execute.process(batch);
      if (flagged + laneSpecial > 0) this.deliverSpecial(batch);
      this.transmit(batch);
      if (this.execute.ctCount > 0) this.recirculate(batch, now, 0);
    } else if (laneSpecial > 0) {
      this.execute.touchedCount = 0; // no execute this batch: the special port's list is the only one
      this.deliverSpecial(batch);
      this.transmit(batch);
    }
    this.account(batch, laned);
    this.special += laneSpecial; // delivered (counted in the lane's run), to the special path
    this.now = now;
    if (++this.batchesSinceSort === 1024) {
      this.batchesSinceSort = 0;
      this.flows.sortSubtables();
    }
    if (now >= this.nextExpiry) this.expireIdle(now);
    if (this.ct !== null) this.ct.expire(now, CT_EXPIRE_BUDGET);
    const fw = this.fwModules;
    for (let k = 0; k < fw.length; k++) {
      const m = fw[k];
      if (m !== null) for (const [, t] of m.tables()) t.expire(now, CT_EXPIRE_BUDGET);
    }
  }

  /**
   * The packets execute took for ct in this pass (marked RECIRC, their
   * outputs before the ct already sent): conntrack for each (one call per
   * ct spec among them), then a next pass over them in a batch of their own
   * on the same bytes (its key as NAT left it: nat.ts rewrites the key with
   * the frame) — classified again with ct_state, ct_zone and the
   * table in their key (ct with a table), or straight to the ct's
   * continuation actions (without) — sent, and accounted there: each packet
   * once, in the pass it ends in. A packet recirculated more than MAX_RECIRC
   * times is dropped (recircLoop). Nothing is allocated per packet.
   */
  private recirculate(batch: PacketBatch, now: number, depth: number): void {
    const ex = this.execute;
    const n = ex.ctCount;
    ex.ctCount = 0;
    if (depth === MAX_RECIRC) {
      for (let j = 0; j < n; j++) batch.drop[ex.ctIdx[j]] = D.recircLoop;
      return;
    }
    if (this.rBatch.length === 0) this.makeRecirc();
    const idx = this.rIdx[depth];
    const spec = this.rSpec[depth];
    const drop = batch.drop;
    for (let j = 0; j < n; j++) {
      idx[j] = ex.ctIdx[j];
      spec[j] = ex.ctSpec[j];
      drop[idx[j]] = 0; // live again for conntrack
    }
    this.ctPackets += n;
    this.ctPass(batch, n, now, depth);
  }

  /**
   * recirculate's work on the packets rIdx[depth][0..n) of the batch, with
   * their ct specs in rSpec[depth]: conntrack, then the next pass (the
   * firewall upgrade's release runs held packets through it too). A packet
   * of a firewalled port whose firewall is being moved
   * (firewallHold) is held instead (holdPacket): marked RECIRC here,
   * accounted where it ends after its release.
   */
  private ctPass(batch: PacketBatch, n: number, now: number, depth: number): void {
    const ex = this.execute;
    const idx = this.rIdx[depth];
    const spec = this.rSpec[depth];
    const drop = batch.drop;
    let ct: ConnTrack | null = null;
    const sets = this.actionSets;
    const sel = this.ctSel;
    const done = this.ctDone;
    // One ConnTrack call per conntrack part (zone, commit, NAT) among them: specs that differ
    // only in their continuation (L2's outputs, one a VM) share it.
    const core = sets.ctCore;
    done.fill(0, 0, n);
    for (let j = 0; j < n; j++) {
      if (done[j] === 1) continue;
      const s = spec[j];
      const c = core[s];
      let m = 0;
      for (let x = j; x < n; x++) if (done[x] === 0 && core[spec[x]] === c) { sel[m++] = idx[x]; done[x] = 1; }
      const zone = sets.ctZone[s];
      if (sets.ctFw[s] === 1) {
        if (this.firewallHold[zone] === 1) for (let x = 0; x < m; x++) this.holdPacket(batch, sel[x], s);
        else this.firewallFor(zone).process(batch, sel, m, zone, sets.ctCommit[s] === 1, now);
      }
      else (ct ??= this.conntrack).process(batch, sel, m, zone, sets.ctCommit[s] === 1, now, sets.ctNat[s]);
    }
    // The next pass: the recirculated packets first (they are classified), then the continued ones.
    const rb = this.rBatch[depth];
    const acts = this.rActs[depth];
    rb.batchSetBuffer(batch.buf);
    rb.rawPcapLE = batch.rawPcapLE;
    rb.vnet = batch.vnet;
    let m = 0;
    let nt = 0;
    for (let pass = 0; pass < 2; pass++) {
      for (let j = 0; j < n; j++) {
        const s = spec[j];
        const table = sets.ctTable[s];
        if ((table > 0) !== (pass === 0)) continue;
        const i = idx[j];
        if (drop[i] !== 0) continue; // conntrack dropped it: accounted in this pass
        drop[i] = RECIRC;
        rb.copyPacket(batch, i, m);
        const st = batch.ctState[i];
        rb.key[m * KEY_WORDS + W_CT] = ((st << 24) | ((table > 0 ? table : 0) << 16) | sets.ctZone[s]) >>> 0;
        acts[m] = table > 0 ? -1 : sets.ctCont[s];
        m++;
      }
      if (pass === 0) nt = m;
    }
    if (m === 0) return;
    rb.count = nt;
    // (With packets parked, a hit may have to wait behind one of its connection: handleMisses sees to it.)
    if (nt > 0 && (this.classify.process(rb, now) > 0 || (this.uq !== null && this.uq.count > 0))) this.handleMisses(rb, now);
    rb.count = m;
    for (let j = nt; j < m; j++) rb.flow[j] = -1;
    ex.process(rb, acts);
    this.transmit(rb);
    if (ex.ctCount > 0) this.recirculate(rb, now, depth + 1);
    // Accounted here, each once: delivered, or dropped with its reason (not rx, not in: the first pass did).
    let delivered = 0;
    for (let j = 0; j < m; j++) {
      const d = rb.drop[j];
      if (d === 0) delivered++;
      else if (d !== RECIRC) this.drops[d]++;
    }
    this.delivered += delivered;
  }

  private readonly ctOneSel = new Uint16Array(1);

  /** The fast lane's conntrack for packet i (parsed) by ct spec `spec` (fast-lane.ts `one`). */
  private ctOne(batch: PacketBatch, i: number, spec: number, now: number): number {
    const sets = this.actionSets;
    this.ctOneSel[0] = i;
    batch.ctState[i] = 0;
    const ct = this.conntrack;
    ct.process(batch, this.ctOneSel, 1, sets.ctZone[spec], sets.ctCommit[spec] === 1, now, sets.ctNat[spec]);
    this.ctPackets++;
    return ct.lastEntry();
  }


  // Slow path, once: the recirculation batches and lists, a set per depth.
  private makeRecirc(): void {
    const cap = this.batchCapacity;
    for (let d = 0; d < MAX_RECIRC; d++) {
      this.rIdx.push(new Uint16Array(cap));
      this.rSpec.push(new Int32Array(cap));
      this.rBatch.push(new PacketBatch(cap));
      this.rActs.push(new Int32Array(cap));
    }
    this.ctSel = new Uint16Array(cap);
    this.ctDone = new Uint8Array(cap);
  }

  /**
   * Slow path: the clock moved with no batch (a live switch with no traffic):
   * idle flows expire all the same (at most a sweep a second, as in process).
   */
  tick(now: number): void {
    if (now >= this.nextExpiry) this.expireIdle(now);
  }

  // Slow path: at most once a second of datapath clock, a sweep for idle flows.
  private expireIdle(now: number): void {
    if (this.off !== null && this.off.active > 0) this.off.tick(now); // offloaded connections expire with no packets of theirs too
    const idle = this.idleTimeoutMs;
    if (idle > 0 && this.nextExpiry !== 0) this.flows.expire(now - idle);
    this.nextExpiry = now + Math.min(1000, idle > 0 ? idle : 1000);
  }

  // Slow path: packets that missed. Each may have been covered by a flow an
  // earlier miss of the same batch installed, so look again before upcalling.
  private handleMisses(batch: PacketBatch, now: number): void {
    const n = batch.count;
    if (this.asyncSink !== null) {
      // A released packet's next pass (ct) that misses waits for its answer here: parked again it would
      // fall behind packets of its connection released after it.
      if (this.releasing) this.upcallWaited(batch, now);
      else this.parkMisses(batch);
      return;
    }
    if (this.batchSink !== null) {
      // Every miss of the batch to the FPAG at once (it decides each megaflow once).
      const c = this.missesOf(batch);
      const idx = this.missIdx;
      const got = this.missFlow;
      this.upcallMany(batch, idx, c, got);
      for (let j = 0; j < c; j++) {
        const f = got[j];
        if (f < 0) continue;
        const i = idx[j];
        batch.flow[i] = f;
        batch.ordinal[i] = this.flows.hit(f, batch.wirelen[i], now);
      }
      return;
    }
    for (let i = 0; i < n; i++) {
      if (batch.flow[i] >= 0 || batch.drop[i] !== 0) continue;
      const f = this.missOne(batch, i);
      if (f < 0) continue;
      batch.flow[i] = f;
      batch.ordinal[i] = this.flows.hit(f, batch.wirelen[i], now);
    }
  }

  /**
   * Slow path: packet i (key in the batch) matched nothing in classify's
   * batch lookup. Looks again (an upcall for an earlier packet of the batch
   * may have installed its flow), else upcalls (upcallOne). Returns the
   * flow, or -1 with drop[i] set.
   */
  missOne(batch: PacketBatch, i: number): number {
    const f = this.flows.lookup(batch.key, i * KEY_WORDS);
    return f >= 0 ? f : this.upcallOne(batch, i);
  }

  /**
   * Slow path: packet i (key in the batch) is in no flow, as a lookup just
   * found: upcalls, then looks once more. Returns the flow, or -1 with
   * drop[i] set. The fast lane calls it after its own lookup, so an upcall
   * does not end its run (it had called missOne, whose lookup repeated the
   * lane's: a third of a million-flow replay's lookups, and each a few
   * cache misses).
   */
  upcallOne(batch: PacketBatch, i: number): number {
    const flows = this.flows;
    const ko = i * KEY_WORDS;
    let f = -1;
    if (this.batchSink !== null) {
      const idx = this.missIndices(1); // (upcallMany answers a partial batch's rest first)
      idx[0] = i;
      this.upcallMany(batch, idx, 1, this.missFlow);
      return this.missFlow[0];
    }
    if (this.upcallSink !== null) {
      this.upcalls++;
      // One message object and key array, reused: a sink that keeps them must copy (the
      // in-thread FPAG does not; a FPAG elsewhere gets a structured clone anyway).
      const u = this.upcallMsg;
      u.inPpid = batch.inPpid[i];
      for (let w = 0; w < KEY_WORDS; w++) u.key[w] = batch.key[ko + w];
      this.upcallSink(u);
      f = flows.lookup(batch.key, ko);
    }
    if (f < 0) batch.drop[i] = flows.count >= flows.capacity ? D.flowTableFull : D.upcallFailed;
    return f;
  }

  /**
   * Slow path: the packets of the batch no flow took (and no drop) into
   * missIndices, in order; returns how many.
   */
  private missesOf(batch: PacketBatch): number {
    const n = batch.count;
    const idx = this.missIndices(n);
    let c = 0;
    for (let i = 0; i < n; i++) if (batch.flow[i] < 0 && batch.drop[i] === 0) idx[c++] = i;
    return c;
  }

  /** Slow path: packets idx[0..n) of the batch as the UpcallBatch handed to the FPAG (reused; counted in upcallBatches). */
  private upcallsOf(batch: PacketBatch, idx: Uint16Array, n: number): UpcallBatch {
    this.missIndices(n);
    const u = this.upcallBatch;
    fillUpcalls(u, batch, idx, 0, n);
    u.continues = false;
    u.whole = true;
    u.entries = false;
    this.installedEnd = 0;
    this.upcallBatches++;
    return u;
  }

  /** Slow path: upcallMany's index list, at least n long (grown with the batch sizes seen). */
  missIndices(n: number): Uint16Array {
    if (this.missIdx.length < n) {
      const cap = Math.max(n, this.batchCapacity);
      this.missIdx = new Uint16Array(cap);
      this.missFlow = new Int32Array(cap);
      this.upcallBatch = newUpcallBatch(cap);
    }
    return this.missIdx;
  }

  /**
   * Slow path: packets idx[0..n) of the batch (keys in the batch), which
   * matched no flow, to the FPAG in one UpcallBatch; then each one's flow
   * into got[j], or -1 with drop[idx[j]] set (none installed: the table
   * is full, or the FPAG gave none). idx must be missIndices(n)'s or as long.
   * `partial` (the fast lane's, with an upcallMoreSink): the FPAG may answer
   * the first keys only; the others' got[j] are UPCALL_PENDING, for
   * upcallMore (idx and got are kept till then: the caller's own).
   * Returns how many keys are answered.
   */
  upcallMany(batch: PacketBatch, idx: Uint16Array, n: number, got: Int32Array, partial = false): number {
    if (n === 0) return 0;
    this.finishPartial();
    const sink = this.batchSink;
    let answered = n;
    if (sink !== null) {
      const u = this.upcallsOf(batch, idx, n);
      u.partial = partial && this.upcallMoreSink !== null;
      u.whole = !u.partial;
      u.answered = n;
      const refused = this.installsRefused;
      sink(u);
      if (u.partial && u.answered < n) {
        answered = Math.max(1, u.answered);
        this.partialBatch = batch;
        this.partialIdx = idx;
        this.partialGot = got;
        for (let j = answered; j < n; j++) got[j] = UPCALL_PENDING;
      } else this.upcalls += n - Math.min(n, Math.max(0, u.covered));
      this.flowsOf(batch, idx, 0, answered, got, refused);
    } else this.flowsOf(batch, idx, 0, n, got, this.installsRefused);
    return answered;
  }

  /**
   * Slow path: more of the partial batch upcallMany left (`all`: all of
   * it), their flows into its got; returns how many of its keys are
   * answered (all of them when none is left).
   */
  upcallMore(all: boolean): number {
    const batch = this.partialBatch;
    const u = this.upcallBatch;
    if (batch === null) return u.count;
    const from = u.answered;
    const refused = this.installsRefused;
    (this.upcallMoreSink as (u: UpcallBatch, all: boolean) => void)(u, all);
    const n = u.count;
    const to = all ? n : Math.min(n, Math.max(from + 1, u.answered));
    this.flowsOf(batch, this.partialIdx, from, to, this.partialGot, refused);
    u.answered = to;
    if (to === n) {
      this.partialBatch = null;
      this.upcalls += n - Math.min(n, Math.max(0, u.covered));
    }
    return to;
  }

  /** Slow path: a partial batch's rest, answered before anything else reaches the sinks. */
  private finishPartial(): void {
    if (this.partialBatch !== null) this.upcallMore(true);
  }

  // Slow path: keys [from, to) of upcallMany's batch, answered: each one's flow into got[j], or -1 with drop set.
  private flowsOf(batch: PacketBatch, idx: Uint16Array, from: number, to: number, got: Int32Array, refused: number): void {
    const sink = this.batchSink;
    const flows = this.flows;
    const full = this.installsRefused > refused || flows.count >= flows.capacity;
    const u = this.upcallBatch;
    const entries = sink !== null && u.entries;
    const installed = this.installed;
    const end = this.installedEnd;
    for (let j = from; j < to; j++) {
      const i = idx[j];
      let f = -1;
      if (sink !== null) {
        // The flow the answer's entry became, if it is there and matches (a second lookup cost ~60 ns a set-up); else a lookup.
        const e = entries ? u.entry[j] : -1;
        if (e >= 0 && e < end) f = installed[e];
        if (f < 0 || !flows.matchesAnswer(batch.key, i * KEY_WORDS, f)) f = flows.lookup(batch.key, i * KEY_WORDS);
      }
      got[j] = f;
      if (f < 0) batch.drop[i] = full ? D.flowTableFull : D.upcallFailed;
    }
  }

  // Slow path (flagged packets are the few): to the special port's tx list, or to the FPAG.
  private deliverSpecial(batch: PacketBatch): void {
    const ex = this.execute;
    const slot = this.specialPpid >= 0 ? ex.slotOf[this.specialPpid] : -1;
    for (let i = 0; i < batch.count; i++) {
      if (batch.drop[i] !== SPECIAL) continue;
      if (slot >= 0) {
        const c = ex.txCount[slot];
        if (c === 0) ex.touched[ex.touchedCount++] = slot;
        if (c === ex.listCap) continue;
        ex.txIdx[slot * ex.listCap + c] = i;
        ex.txEnc[slot * ex.listCap + c] = -1;
        ex.txCount[slot] = c + 1;
        ex.copies++;
      } else if (this.specialSink !== null) {
        const o = batch.off[i];
        this.specialSink({ type: 'special', inPpid: batch.inPpid[i], bytes: batch.buf.slice(o, o + batch.caplen[i]) });
      }
    }
  }

  private transmit(batch: PacketBatch): void {
    const ex = this.execute;
    const cap = ex.listCap;
    const wirelen = batch.wirelen;
    for (let t = 0; t < ex.touchedCount; t++) {
      const slot = ex.touched[t];
      const ppid = ex.ppidOf(slot);
      const c = ex.txCount[slot];
      const at = slot * cap;
      (this.ports[ppid] as TxPort).writeBatch(batch, ex.txIdx, at, c, ex.txEnc, this.encap);
      this.txPackets[ppid] += c;
      let bytes = 0;
      // An encapsulated copy goes out with its outer headers; a VLAN op adds or takes out a tag.
      for (let j = 0; j < c; j++) {
        const i = ex.txIdx[at + j];
        bytes += wirelen[i];
        const e = ex.txEnc[at + j];
        if (e >= 0) bytes += this.encap.headerLength(e >> 1, (e & 1) === 1);
        else if (e < -1) bytes += vlanDelta(batch.buf, batch.off[i], batch.caplen[i], e);
      }
      this.txBytes[ppid] += bytes;
      ex.txCount[slot] = 0;
    }
  }

  // Each packet once: where it went, and the port it came in on (rx counters).
  // The first `laned` packets are the fast lane's: delivered, rx counted there.
  private account(batch: PacketBatch, laned: number): void {
    const n = batch.count;
    const drop = batch.drop;
    const inPpid = batch.inPpid;
    const wirelen = batch.wirelen;
    const rxPk = this.rxPackets;
    const rxBy = this.rxBytes;
    let delivered = laned;
    let special = 0;
    for (let i = laned; i < n; i++) {
      const p = inPpid[i];
      rxPk[p]++;
      rxBy[p] += wirelen[i];
      const d = drop[i];
      if (d === 0 || d === FORWARDED) delivered++;
      else if (d === SPECIAL) special++;
      else if (d !== RECIRC) this.drops[d]++; // RECIRC: accounted in the pass it ended in (recirculate)
    }
    this.packetsIn += n;
    this.delivered += delivered + special;
    this.special += special;
  }

  // Slow path: reading.

  get dropped(): number {
    let s = 0;
    for (let d = 1; d < DROP_COUNT; d++) s += this.drops[d];
    return s;
  }

  stats(): DatapathStats {
    const drops: Partial<Record<DropReason, number>> = {};
    for (let d = 1; d < DROP_COUNT; d++) if (this.drops[d] > 0) drops[DROP_NAMES[d]] = this.drops[d];
    const ports: DatapathStats['ports'] = [];
    for (let p = 0; p < this.ports.length; p++) {
      if (this.ports[p] === undefined) continue;
      ports.push({ ppid: p, vpid: this.mapping.toVpid[p], rxPackets: this.rxPackets[p], rxBytes: this.rxBytes[p], txPackets: this.txPackets[p], txBytes: this.txBytes[p] });
    }
    return {
      packetsIn: this.packetsIn,
      delivered: this.delivered,
      special: this.special,
      decapsulated: this.flagCheck.decapsulated,
      dropped: this.dropped,
      copies: this.execute.copies,
      encapsulated: this.encap.encapsulated,
      flaggedSent: this.encap.flaggedSent,
      encapTooLong: this.encap.tooLong,
      upcalls: this.upcalls,
      flowsInstalled: this.flowsInstalled,
      flowsNow: this.flows.count,
      flowsEvicted: this.flows.evicted,
      flowsExpired: this.flows.expired,
      emcHits: this.classify.emcHits,
      megaflowHits: this.classify.megaflowHits,
      smcHits: this.flows.smcHits,
      lookupsMissed: this.classify.misses,
      fastLane: this.fastLane.forwarded,
      ctPackets: this.ctPackets + this.fastLane.ctHot,
      clockJumps: this.captureClock.jumps,
      clockBacks: this.captureClock.backs,
      drops,
      ports,
    };
  }

  dumpFlows(): FlowInfo[] {
    const fl = this.flows;
    const out: FlowInfo[] = [];
    for (let f = 0; f < fl.indices; f++) {
      if (!fl.live[f]) continue;
      const s = fl.sub[f];
      out.push({
        id: f,
        key: fl.key.slice(f * KEY_WORDS, (f + 1) * KEY_WORDS),
        mask: fl.mask.slice(s * KEY_WORDS, (s + 1) * KEY_WORDS),
        actions: this.actionSets.describe(fl.act[f]),
        packets: fl.packetsOf(f),
        bytes: fl.bytesOf(f),
        used: fl.usedOf(f),
      });
    }
    return out;
  }
}

/** Slow path: packets idx[from, from + n) of the batch (their in PPIDs and keys) as u's keys 0..n. */
function fillUpcalls(u: UpcallBatch, batch: PacketBatch, idx: Uint16Array, from: number, n: number): void {
  const keys = u.keys;
  const src = batch.key;
  for (let j = 0; j < n; j++) {
    const i = idx[from + j];
    u.inPpid[j] = batch.inPpid[i];
    copyKey(keys, j * KEY_WORDS, src, i * KEY_WORDS);
  }
  u.count = n;
  u.covered = 0;
}
