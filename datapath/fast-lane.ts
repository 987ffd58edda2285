/**
 * FastLane: the steady state of a capture replay in one pass over the
 * batch, as dpif-netdev's dfc_processing fuses miniflow_extract with the
 * exact-match cache. For each packet, in order, while the packet is the
 * common case:
 *
 *   parse (untagged, whole, unfragmented, well-formed IPv4 carrying TCP,
 *   UDP to a non-tunnel port, ICMP or another protocol: Parse's own fast
 *   conditions) into locals → hash → exact-match cache, else megaflow
 *   table, else the datapath's upcall (as handleMisses makes it) →
 *   per-flow counters → the flow's action set is one plain output to a
 *   port taking direct copies → the record is copied into that port's
 *   buffer (Execute's direct copies).
 *
 * A VXLAN/Geneve packet for this host's IPv4 endpoint takes the flag
 * check's way here too: flagged, it is marked SPECIAL for the datapath to
 * deliver after the lane; not flagged, it is decapsulated (tun_id, tun_src,
 * tun_dst in its key) and its inner frame forwarded as above, behind a
 * record header of its own (tunnelFast for an inner IPv4 frame of the
 * common case, tunnelOne through parseOne for the others).
 *
 * Three loops share the work: a hot loop (hotLoop, compiled for each
 * datapath) takes the packets that need only the cache and the tx slot
 * kept with the cache entry; a tunnel hot loop (tunnelLoop, the same for
 * tunnelFast's packets) takes the decapsulated ones after a tunnel packet;
 * `one` takes each packet the hot loops stop at, through all of the
 * above, then a hot loop goes on.
 *
 * The key lives in locals, not in the batch: on a cache hit nothing is
 * written but the counters and the copy. The first packet that is none of
 * these (another layout, transit tunnel traffic, an action set that is not
 * a single direct output, a malformed packet) ends the lane for the batch:
 * it and the packets after it go through the stages (parse, flag check,
 * classify, execute),
 * which skip the packets the lane marked FORWARDED. The lane forwards
 * exactly what the stages would: same key, same flow, same counters, same
 * bytes out in the same order (test/datapath/fast-lane.test.ts replays
 * captures both ways and compares). Only the cache's own statistics may
 * differ (a packet the lane looked up and then left to the stages is
 * looked up twice).
 *
 * A flow whose actions are a ct without a table and, after it, one plain
 * output to a direct port (`ct(commit,nat(…)),output:…`, or ct then L2 to
 * one port) is the lane's too, in `one` (not the hot loop): the key and
 * offsets are written for conntrack (Datapath.ctOne: state, NAT rewriting
 * the frame in place), then the record is copied as for any other flow —
 * what the stages' two passes (execute collects it, conntrack, the
 * continuation) would send.

 * Packets the lane forwarded have no key, offsets, hash or flow in the
 * batch (a ct packet's key and offsets are there).
 */
import { OP_CT, type ActionSets } from './actions/action-sets.js';
import type { Execute } from './actions/execute.js';
import type { ConnTrack } from './conntrack/conntrack.js';
import { FLOAT64_COPY_EXACT, SMALL_COPY, arenaCopy } from './arena.js';
import { ABSENT, type PacketBatch } from './batch.js';
import { EMC_IPV4_SHAPE, EMC_IPV4_TUN_SHAPE, EMC_MEMO, EMC_STRIDE, type Emc, ipv4KeyHash, keyHash, tunKeyHash } from './classifier/emc.js';
import type { FlagCheck } from './classifier/flag-check.js';
import { KEY_WORDS, TUN_PRESENT, W_ETH_TYPE, W_IP_SRC, W_TP, W_TUN, W_TUN_DST, W_TUN_SRC } from './classifier/flow-key.js';
import { ST_BYTES, ST_PACKETS, ST_USED, STAT_WORDS, type FlowTable } from './classifier/flow-table.js';
import type { Classify } from './classifier/classify.js';
import { FORWARDED, SPECIAL } from './drops.js';
import { ETH_P_IPV4, UDP_PORT_GENEVE, UDP_PORT_VXLAN, commonIpv4, commonTunnel, parsePacket, transportWord } from './parse/parse.js';
import { UPCALL_PENDING } from './upcall.js';

/** What `one` says of the packet it took (see there). */
const ONE_STOP = 0;
const ONE_HOT = 1;
const ONE_NEXT = 2;
const ONE_TUN = 3;
/** `one` took a ct packet and kept its connection with its cache entry: the next ones are likely the ct hot loop's. */
const ONE_CT = 4;
/** The hot loops' modes: plain packets, tunnel packets, packets of ct flows. */
const MODE_PLAIN = 0;
const MODE_TUN = 1;
const MODE_CT = 2;
/** A cache entry's memo stamp is seq for the plain loop's entries, seq | CT_STAMP for the ct loop's (seq < 2^31). */
const CT_STAMP = 0x80000000;
/**
 * gather: the scan for more misses stops this many packets past the last
 * one it found (a batch with one new flow among hits scans that far, not to
 * its end).
 */
const GATHER_GAP = 32;
/** Batches a lookahead that found under half its packets' flows is not made for (then one is: is it worth it again?). */
const LOOKAHEAD_BACKOFF = 64;

/** The key lookupIpv4 describes, written at key[k..] (its other words 0) for the megaflow table and the FPAG. */
function putIpv4Key(key: Uint32Array, k: number, w0: number, w2: number, w3: number, w4: number, w5: number, w6: number, w10: number, tp: number): void {
  key[k] = w0; key[k + 1] = 0; key[k + 2] = w2; key[k + 3] = w3; key[k + 4] = w4; key[k + 5] = w5;
  key[k + 6] = w6; key[k + 7] = 0; key[k + 8] = 0; key[k + 9] = 0; key[k + 10] = w10; key[k + 11] = 0;
  key[k + 12] = 0; key[k + 13] = 0; key[k + 14] = tp; key[k + 15] = 0; key[k + 16] = 0; key[k + 17] = 0; key[k + 18] = 0;
}

/**
 * What the lane asks of conntrack (the datapath's, Datapath.laneCt):
 *   one   packet i (parsed: key, offsets) by ct spec `spec`, as the stages'
 *         ct would (state, NAT); the index entry of its connection
 *         (ConnTrack.lastEntry), or -1;
 *   tracker  the conntrack itself, for the ct hot loop (ConnTrack.genOf
 *         after `one`, ConnTrack.hit for the next packets: the loop counts
 *         those in ctHot, which the datapath's ctPackets includes).
 */
export interface LaneCt {
  one(batch: PacketBatch, i: number, spec: number, now: number): number;
  tracker(): ConnTrack;
}

export class FastLane {
  static readonly stageName = 'fast-lane';
  static readonly next = ['parse'] as const;

  /** Off: every packet takes the stages (for comparison, and for tests). */
  enabled = true;
  /** Packets forwarded by the lane. */
  forwarded = 0;
  /** Flagged tunnel packets the lane marked SPECIAL in the batch it last ran on (the datapath delivers them). */
  special = 0;
  /**
   * Per action set: the direct tx slot it resolved to (valid when setStamp =
   * seq), for `one`; the hot loop finds the same slot kept with the flow's
   * cache entry (Emc.memo) under the same stamp. Kept across batches and
   * upcalls while Execute's directEpoch (mapping changes, ports) stays the
   * same (action sets never change once interned) and no flow's generation
   * changes (FlowTable.genChanges: a flow removed, evicted, expired or given
   * new actions), so a memo under the current stamp is a live entry of a
   * live flow, and the hot loop need not read the flow's generation.
   */
  private setSlot = new Int32Array(1024);
  private setStamp = new Uint32Array(1024);
  /** Per action set: its ct spec when the set is one ct with no table, else -1 (valid when ctStamp = seq). */
  private ctSpec = new Int32Array(1024);
  private ctStamp = new Uint32Array(1024);
  /**
   * Per cache entry (Emc entry number), for the ct hot loop: the connection
   * (index entry, ConnTrack.lastEntry) and its generation `one` found for
   * the entry's exact key, valid while the entry's memo stamp is seq | CT_STAMP
   * (written with it by Emc.memoIpv4; an insert over the entry clears the
   * stamp) and the connection's generation is the same (ConnTrack.hit).
   */
  private readonly ctConn: Int32Array;
  private readonly ctGen: Uint32Array;
  private seq = 0;
  private epoch = -1;
  private gens = -1;
  /** Per batch the lane has run on: its hot loop, and what the loop was built over. */
  private loops = new WeakMap<PacketBatch, { loop: HotLoop; tun: TunLoop; ct: HotLoop | null; slots: number }>();
  /** Decapsulated packets the tunnel hot loop forwarded (a part of `forwarded`). */
  tunnelHot = 0;
  /** Packets of ct flows the ct hot loop forwarded, conntrack and NAT applied (a part of `forwarded`). */
  ctHot = 0;
  /** The bytes of the packets the hot loop took in its last run (it counts them; `process` adds them to rx). */
  private readonly hotBytes = new Float64Array(1);
  /** This batch: whether the cache is probed (not bypassed), and the lane's lookups by where they found their flow. */
  private useEmc = true;
  /**
   * Misses go to the datapath's batched upcall (missMany) with the misses
   * gather finds after them, not one by one (Datapath.upcallBatchSink sets it).
   */
  gatherMisses = false;
  /** A miss ends the lane (the stages take it and the rest of the batch): the FPAG answers later (Datapath.upcallAsync). */
  stopAtMiss = false;
  /** The datapath's batched upcall (Datapath.upcallMany): packets idx[0..n) to the FPAG, their flows (or -1, drop set) into got. */
  missMany: (batch: PacketBatch, idx: Uint16Array, n: number, got: Int32Array) => number = () => 0;
  /**
   * More answers of the last missMany, when it answered its first keys only
   * (Datapath.upcallMore: their flows into its got); returns how many of its
   * keys are answered, or -1 when all are.
   */
  missMore: (all: boolean) => number = () => -1;
  /**
   * While gather still looks for misses: every `earlyKeys` of them found,
   * misses idx[from, to) to the datapath's early hand-over (an FPAG on
   * another thread decides them while this thread gathers the rest), or
   * null. missMany then gets them all, as without.
   */
  missEarly: ((batch: PacketBatch, idx: Uint16Array, from: number, to: number) => void) | null = null;
  earlyKeys = 64;
  /** gather's list and answers; per packet, the flow a gather found for it (pre), valid when preSeq is gatherSeq and no flow changed (preGens). */
  private gIdx = new Uint16Array(0);
  private gGot = new Int32Array(0);
  private pre = new Int32Array(0);
  private preSeq = new Uint32Array(0);
  /** Bumped every batch and every gather: a pre entry holds for the gather that wrote it, in its batch. */
  private gatherSeq = 1;
  private preGens = -1;
  /**
   * The lookahead (see lookahead): packet i's flow found before `one` reached
   * it, or -1; valid in this batch while flows.genChanges is laGens.
   */
  private la = new Int32Array(0);
  private laOn = false;
  private laGens = -1;
  private laSkip = 0;
  private laIdx = new Uint16Array(0);
  private laGot = new Int32Array(0);
  /** Whether the lookahead's flow came from the signature-match cache: by place among those looked up, by packet. */
  private laSmcOf = new Uint8Array(0);
  private laSmc = new Uint8Array(0);
  /** Batches looked ahead, and the packets whose flow the lookahead found. */
  lookaheads = 0;
  lookaheadHits = 0;
  /**
   * Tables of at least this many flows are looked ahead in (with the cache
   * not in use): below, their slots and keys are in this core's caches and
   * a lookahead is only a second parse of each packet. (A knob for tests.)
   */
  lookaheadMinFlows = 1 << 17;
  private emcHits = 0;
  private megaflowHits = 0;
  private missed = 0;

  constructor(
    private readonly inPortKey: Uint32Array,
    private readonly emc: Emc,
    private readonly flows: FlowTable,
    private readonly classify: Classify,
    private readonly execute: Execute,
    private readonly sets: ActionSets,
    /** The datapath's upcall for a key the lane has just looked up in vain (Datapath.upcallOne): a flow, or -1 with drop[i] set. */
    private readonly miss: (batch: PacketBatch, i: number) => number,
    private readonly flagCheck: FlagCheck,
    /** Per PPID, 1 for a VM (access) port: parse drops its tagged frames (mapping-table.ts). */
    private readonly vmPort: Uint8Array = new Uint8Array(65536),
    /** Conntrack (LaneCt), or null: the lane leaves ct flows to the stages. */
    private readonly ct: LaneCt | null = null,
  ) {
    this.ctConn = new Int32Array(emc.entries);
    this.ctGen = new Uint32Array(emc.entries);
  }

  /**
   * Forwards the batch's leading common-case packets; returns how many. It
   * counts them received in rxPackets/rxBytes (by PPID) too, as accounting
   * would.
   *
   * Two loops: `run` takes the packets that need nothing but the cache and
   * a memoized slot (the steady state); the first one it cannot take, `one`
   * takes alone (megaflow table, upcall, a slot resolved afresh, a tunnel
   * packet), then `run` goes on. Kept apart so the hot loop's code is
   * compiled from its own feedback: in one loop, the misses of a replay's
   * first batches made V8 inline the upcall path and leave the parser, the
   * cache compare or the copy as calls (which, varied from run to run).
   */
  process(batch: PacketBatch, now: number, rxPackets: Float64Array, rxBytes: Float64Array): number {
    const ex = this.execute;
    const emc = this.emc;
    this.special = 0;
    if (!this.enabled || !batch.rawPcapLE || batch.buf !== ex.dBytes || batch.count === 0) return 0;
    this.useEmc = emc.probeBatch();
    this.restamp();
    this.gatherSeq++;
    if (this.pre.length < batch.count) this.growGather(batch.count);
    this.laOn = false;
    if (!this.useEmc && this.flows.count >= this.lookaheadMinFlows) {
      if (this.laSkip > 0) this.laSkip--;
      else this.lookahead(batch);
    }
    this.gCount = this.gAnswered = 0; // (the last batch's gathers: done with, the datapath answered their rest)
    this.emcHits = 0;
    this.megaflowHits = 0;
    this.missed = 0;
    const n = batch.count;
    let i = 0;
    let hot = this.useEmc;
    let mode = MODE_PLAIN; // which hot loop
    while (i < n) {
      if (hot) {
        // The hot loops take packets of one in port and no rx drop; a lazy fill's are all such.
        const end = batch.unfilled ? n : sameRx(batch, i, n);
        const ppid = batch.unfilled ? batch.unfilledIn : batch.inPpid[i];
        // The tunnel hot loop terminates tunnel packets: never those of a VM port (flag-check.ts).
        if (end > i && !(mode === MODE_TUN && this.vmPort[ppid] !== 0)) {
          const from = i;
          i = this.run(batch, i, end, this.inPortKey[ppid], now, mode);
          this.emcHits += i - from;
          if (mode === MODE_CT) this.ctHot += i - from;
          if (mode === MODE_TUN) {
            this.flagCheck.decapsulated += i - from;
            this.tunnelHot += i - from;
          }
          rxPackets[ppid] += i - from;
          rxBytes[ppid] += this.hotBytes[0];
          if (i === n) break;
        }
      }
      if (batch.unfilled) batch.completeRecords(i); // `one` and the stages read the arrays
      const next = this.one(batch, i, now);
      if (next === ONE_STOP) break;
      rxPackets[batch.inPpid[i]]++; // `one` left the arrays as rx did
      rxBytes[batch.inPpid[i]] += batch.wirelen[i];
      i++;
      hot = (next === ONE_HOT || next === ONE_TUN || next === ONE_CT) && this.useEmc;
      mode = next === ONE_TUN ? MODE_TUN : next === ONE_CT ? MODE_CT : MODE_PLAIN;
    }
    ex.copies += i - this.special;
    this.forwarded += i - this.special;
    this.classify.emcHits += this.emcHits;
    this.classify.megaflowHits += this.megaflowHits;
    this.classify.misses += this.missed;
    if (this.useEmc) emc.countProbes(this.emcHits + this.megaflowHits + this.missed, this.emcHits);
    return i;
  }

  /**
   * The hot loop over this batch from packet `from` (see hotLoop): returns
   * the first packet it does not take. Its loop is built for this batch and
   * this datapath's arrays, and built again when the arrays it holds may
   * have changed (a port added).
   */
  private run(batch: PacketBatch, from: number, end: number, inKey: number, now: number, mode: number): number {
    let built = this.loops.get(batch);
    if (built === undefined || built.slots !== this.execute.slotCount) {
      const s = this.hotState(batch);
      // The ct loop is the plain loop's code with a ct step: compiled apart, so the plain one has none.
      built = { loop: specialized(hotLoop)({ ...s, ctHit: null }), tun: specialized(tunnelLoop)(s), ct: s.ctHit === null ? null : specialized(hotLoop)(s), slots: this.execute.slotCount };
      this.loops.set(batch, built);
    }
    if (mode === MODE_CT) return built.ct === null ? from : built.ct(from, end, inKey, (this.seq | CT_STAMP) >>> 0, now);
    if (mode === MODE_PLAIN) return built.loop(from, end, inKey, this.seq, now);
    const fc = this.flagCheck;
    if (fc.vtep === 0) return from;
    const fl = fc.flag;
    return built.tun(from, end, inKey, this.seq, now, fc.vtep, ((fl.geneveClass & 0xffff) << 8) | (fl.geneveType & 0xff), fl.vxlanByte, fl.vxlanMask);
  }

  // Slow path: what the hot loops hold of this batch and the datapath's arrays as they are now.
  private hotState(batch: PacketBatch): HotState {
    const ex = this.execute;
    const b = ex.dBytes as Uint8Array; // process() checked batch.buf === ex.dBytes
    const state: HotState = {
      drop: batch.drop, off: batch.off, bytesOut: this.hotBytes,
      b, d: new DataView(b.buffer, b.byteOffset, b.byteLength), words: ex.dWords,
      doubles: new Float64Array(b.buffer, b.byteOffset & ~7, b.byteOffset % 8 === 0 ? b.byteLength >> 3 : 0),
      exact8: FLOAT64_COPY_EXACT && b.byteOffset % 8 === 0,
      stats: this.flows.stats,
      ent: this.emc.ent, emcMask: this.emc.mask,
      dBase: ex.dBase, dCap: ex.dCap, dUsed: ex.dUsed, dBegun: ex.dBegun, slotPpid: ex.slotPpid, txPackets: ex.txPackets, txBytes: ex.txBytes,
      commonIpv4, transportWord, ipv4KeyHash, commonTunnel, tunKeyHash,
      ctHit: null,
    };
    if (this.ct !== null) {
      // The connection table is made at the first ct hit, not here: a run with no ct flow never
      // allocates it (65 536 connections: ~10 MB and ~10-20 ms of the first batch, measured).
      const lane = this.ct;
      let ct: ConnTrack | null = null;
      const ctConn = this.ctConn;
      const ctGen = this.ctGen;
      const { caplen, wirelen, l3Off, l4Off } = batch;
      // The hot loop read the lengths from the record header (a lazy fill left the arrays unset):
      // conntrack and NAT read them from the arrays.
      state.ctHit = (i: number, x: number, l4: number, cl: number, now: number): boolean => {
        caplen[i] = cl;
        wirelen[i] = cl;
        l3Off[i] = 14;
        l4Off[i] = l4;
        return (ct ??= lane.tracker()).hit(batch, i, ctConn[x], ctGen[x], now) !== 0;
      };
    }
    return state;
  }

  /**
   * Packet i alone, when `run` did not take it: the common case through the
   * cache, else the megaflow table, else the datapath's upcall, then its
   * action set's slot (resolved afresh when not memoized); or a tunnel
   * packet for this host (tunnelFast, tunnelOne). Returns ONE_HOT (the
   * packet is the lane's, and the hot loop may take the next ones),
   * ONE_TUN (the lane's too, a tunnel packet tunnelFast took or flagged:
   * the next one is likely another, for the tunnel hot loop), ONE_NEXT
   * (the lane's too, a tunnel packet off tunnelFast's case: the next one is
   * likely another, which the hot loops would stop at at once, so `one`
   * takes it), or ONE_STOP to leave it and the rest of the batch to the stages (a
   * miss whose upcall failed is dropped with drop[i] set, as the stages
   * would).
   */
  private one(batch: PacketBatch, i: number, now: number): number {
    if (batch.drop[i] !== 0) return ONE_STOP;
    if (this.preSeq[i] === this.gatherSeq && !this.useEmc) {
      const r = this.onePre(batch, i, now);
      if (r >= 0) return r;
    }
    const b = batch.buf;
    const d = batch.dv;
    const base = batch.off[i];
    const cl = batch.caplen[i];
    const l4 = commonIpv4(b, d, base, cl, batch.wirelen[i]);
    if (l4 === 0) {
      // A tunnel packet for this host: flagged, or decapsulated and sent here too. Not from a VM
      // port (flag-check.ts): the stages take it as the plain UDP it is.
      if (this.vmPort[batch.inPpid[i]] !== 0) return ONE_STOP;
      const t = this.tunnelFast(batch, i, now);
      return t === 1 ? ONE_TUN : t < 0 && this.tunnelOne(batch, i, now) ? ONE_NEXT : ONE_STOP;
    }
    const proto = b[base + 23];
    const tp = transportWord(b, d, base, proto, l4);
    const w0 = this.inPortKey[batch.inPpid[i]];
    const w2 = d.getUint32(base);
    const w3 = d.getUint32(base + 4);
    const w4 = d.getUint32(base + 8);
    const w5 = ((ETH_P_IPV4 << 16) | (proto << 8)) >>> 0;
    const w6 = d.getUint32(base + 26);
    const w10 = d.getUint32(base + 30);
    const h = ipv4KeyHash(w0, w2, w3, w6, w10, tp);
    let f = -1;
    let via = 0; // 0: the cache, 1: the megaflow table, 2: an upcall
    // A miss an earlier gather of this batch upcalled: its flow, while no flow changed since.
    if (this.preSeq[i] === this.gatherSeq) {
      if (this.pre[i] === UPCALL_PENDING) {
        // Its answer is still being decided (the FPAG answers a gather in parts): wait for it.
        this.awaitPre(i);
        if (batch.drop[i] !== 0) return ONE_STOP; // its upcall failed (counted by awaitPre)
      }
      if (this.preGens === this.flows.genChanges && this.pre[i] !== UPCALL_PENDING) {
        f = this.pre[i];
        via = 2;
      }
    }
    if (via === 0 && this.useEmc) f = this.emc.lookupIpv4(h, w0, w2, w3, w4, w5, w6, w10, tp);
    if (f < 0 && this.laOn && this.la[i] >= 0 && this.laGens === this.flows.genChanges) {
      f = this.la[i]; // (the lookahead wrote the key into the batch, as the lookup below does)
      via = 1;
      if (this.laSmc[i] !== 0) this.flows.smcHits++;
    }
    if (f < 0) {
      // The megaflow table takes the key from the batch: write it there.
      const key = batch.key;
      const k = i * KEY_WORDS;
      putIpv4Key(key, k, w0, w2, w3, w4, w5, w6, w10, tp);
      f = this.flows.lookupHashed(key, k, h);
      via = 1;
      if (f < 0) {
        if (this.stopAtMiss) return ONE_STOP;
        // An upcall, as the stages would make it (restamp: what it may have changed); with
        // batched upcalls, together with the batch's next misses.
        f = this.gatherMisses ? this.gather(batch, i) : this.miss(batch, i);
        if (f < 0) {
          this.missed++; // dropped (drop[i] says why); the stages skip it, accounting counts it
          return ONE_STOP;
        }
        via = 2;
        this.restamp();
      }
    }
    const a = this.flows.act[f];
    let slot = this.slotFor(a);
    let ct = -1;
    if (slot < 0 && this.ct !== null) {
      // ct without a table whose continuation is one plain direct output (ct(commit,nat(…)),output,
      // or ct then L2 to one port): conntrack here, then the copy, as the stages' two passes would.
      ct = this.ctSpecFor(a);
      if (ct < 0) return ONE_STOP;
      slot = this.slotFor(this.sets.ctCont[ct]);
      if (slot < 0) return ONE_STOP;
    }
    if (slot < 0 || cl + 16 > this.execute.dCap[slot]) return ONE_STOP;
    // Decided: from here on the packet is the lane's.
    this.countFound(via, batch.key, i * KEY_WORDS, h, f);
    if (ct >= 0) {
      // Conntrack reads the key and the offsets from the batch (a cache hit left them unwritten).
      if (via === 0) putIpv4Key(batch.key, i * KEY_WORDS, w0, w2, w3, w4, w5, w6, w10, tp);
      batch.l3Off[i] = 14;
      batch.l4Off[i] = l4;
      const lane = this.ct as LaneCt;
      const e = lane.one(batch, i, ct, now); // may rewrite the frame (NAT) before the copy below
      this.commit(batch, i, f, slot, base, cl, cl, now);
      if (e >= 0 && this.useEmc) {
        // The connection with the key's cache entry: the ct hot loop takes its next packets.
        const x = this.emc.memoIpv4(h, f, w0, w2, w3, w4, w5, w6, w10, tp, (this.seq | CT_STAMP) >>> 0, slot);
        if (x >= 0) {
          this.ctConn[x] = e;
          this.ctGen[x] = lane.tracker().genOf(e);
          return ONE_CT;
        }
      }
      return ONE_NEXT;
    }
    if (this.useEmc) this.emc.memo(h, f, this.seq, slot); // for the hot loop, when the key is cached
    this.commit(batch, i, f, slot, base, cl, cl, now); // commonIpv4: cl = wirelen
    return ONE_HOT;
  }

  /**
   * `one` for a packet an earlier gather of this batch upcalled, while the
   * cache is not in use: its flow from the answer, without parsing the
   * packet again (gather did, and wrote its key; a set-up's packet had been
   * parsed and hashed twice). -1 where `one`'s whole way is needed: the
   * answer no longer valid (a flow changed since), or a ct flow (conntrack
   * reads what the parse gives).
   */
  private onePre(batch: PacketBatch, i: number, now: number): number {
    if (this.pre[i] === UPCALL_PENDING) {
      // Its answer is still being decided (the FPAG answers a gather in parts): wait for it.
      this.awaitPre(i);
      if (batch.drop[i] !== 0) return ONE_STOP; // its upcall failed (counted by awaitPre)
    }
    if (this.preGens !== this.flows.genChanges || this.pre[i] === UPCALL_PENDING) return -1;
    const f = this.pre[i];
    const slot = this.slotFor(this.flows.act[f]);
    if (slot < 0) return -1; // (not a direct output: maybe a ct flow, which `one` takes)
    const cl = batch.caplen[i]; // (gather's commonIpv4 passed: caplen = wirelen)
    if (cl + 16 > this.execute.dCap[slot]) return ONE_STOP;
    this.missed++; // (countFound's for an upcalled packet)
    this.commit(batch, i, f, slot, batch.off[i], cl, cl, now);
    return ONE_HOT;
  }

  // The ct spec of action set a when the set is that ct alone, with no table (its continuation
  // runs on), else -1 (memoized per set under the stamp, as slotFor).
  private ctSpecFor(a: number): number {
    const seq = this.seq;
    if (this.ctStamp[a] !== seq) {
      this.ctStamp[a] = seq;
      const sets = this.sets;
      const w = sets.pool[sets.start[a]];
      const spec = w & 0xffffff;
      // Not the firewall's ct (tracked by the version serving its port: the stages' way).
      this.ctSpec[a] = sets.len[a] === 1 && w >>> 24 === OP_CT && sets.ctTable[spec] < 0 && sets.ctFw[spec] === 0 ? spec : -1;
    }
    return this.ctSpec[a];
  }

  /**
   * tunnelOne's common case with no parseOne and the key in locals: a
   * commonTunnel packet to this host whose inner frame is commonIpv4.
   * Returns 1 (forwarded, or marked SPECIAL), 0 (left to the stages as rx
   * left it), or -1 (not this case: tunnelOne decides).
   */
  private tunnelFast(batch: PacketBatch, i: number, now: number): number {
    const fc = this.flagCheck;
    const b = batch.buf;
    const d = batch.dv;
    const base = batch.off[i];
    const cl = batch.caplen[i];
    const wl = batch.wirelen[i];
    const io = fc.vtep === 0 ? 0 : commonTunnel(b, d, base, cl, wl);
    if (io === 0 || d.getUint32(base + 30) !== fc.vtep) return -1;
    const l4 = 14 + (b[base + 14] & 15) * 4;
    const h = l4 + 8;
    if (fc.isFlagged(b, base + h, base + io, d.getUint16(base + l4 + 2) === UDP_PORT_VXLAN)) {
      batch.drop[i] = SPECIAL;
      fc.flagged++;
      this.special++;
      return 1;
    }
    const ib = base + io;
    const icl = cl - io;
    const il4 = commonIpv4(b, d, ib, icl, icl);
    if (il4 === 0) return -1;
    const proto = b[ib + 23];
    const w0 = this.inPortKey[batch.inPpid[i]];
    const w2 = d.getUint32(ib);
    const w3 = d.getUint32(ib + 4);
    const w4 = d.getUint32(ib + 8);
    const w5 = ((ETH_P_IPV4 << 16) | (proto << 8)) >>> 0;
    const w6 = d.getUint32(ib + 26);
    const w10 = d.getUint32(ib + 30);
    const tp = transportWord(b, d, ib, proto, il4);
    const w15 = (TUN_PRESENT | (b[base + h + 4] << 16) | (b[base + h + 5] << 8) | b[base + h + 6]) >>> 0;
    const w16 = d.getUint32(base + 26);
    const w17 = fc.vtep;
    const emc = this.emc;
    const hash = tunKeyHash(w0, w2, w3, w6, w10, tp, w15, w16);
    let f = emc.bypassed ? -1 : emc.lookupTun(hash, w0, w2, w3, w4, w5, w6, w10, tp, w15, w16, w17);
    let via = 0; // 0: the cache, 1: the megaflow table, 2: an upcall
    if (f < 0) {
      const key = batch.key;
      const k = i * KEY_WORDS;
      key[k] = w0; key[k + 1] = 0; key[k + 2] = w2; key[k + 3] = w3; key[k + 4] = w4; key[k + 5] = w5;
      key[k + 6] = w6; key[k + 7] = 0; key[k + 8] = 0; key[k + 9] = 0; key[k + 10] = w10; key[k + 11] = 0;
      key[k + 12] = 0; key[k + 13] = 0; key[k + 14] = tp; key[k + 15] = w15; key[k + 16] = w16; key[k + 17] = w17; key[k + 18] = 0;
      f = this.flows.lookupHashed(key, k, hash);
      via = 1;
      if (f < 0) {
        if (this.stopAtMiss) return 0;
        // The upcall sees the packet as the stages would give it: the inner frame in place.
        batch.off[i] = ib;
        batch.caplen[i] = icl;
        batch.wirelen[i] = icl;
        f = this.miss(batch, i);
        batch.off[i] = base;
        batch.caplen[i] = cl;
        batch.wirelen[i] = wl;
        if (f < 0) {
          fc.decapsulated++; // dropped (drop[i] says why), counted as the stages count it
          this.missed++;
          return 0;
        }
        via = 2;
        this.restamp();
      }
    }
    const slot = this.slotFor(this.flows.act[f]);
    if (slot < 0 || icl + 16 > this.execute.dCap[slot]) return 0;
    this.countFound(via, batch.key, i * KEY_WORDS, hash, f);
    if (!emc.bypassed) emc.memo(hash, f, this.seq, slot); // for the tunnel hot loop, when the key is cached
    this.flagCheck.decapsulated++;
    this.commit(batch, i, f, slot, ib, icl, icl, now);
    return 1;
  }

  // A packet the lane forwards outside `run`: counters, then the frame at
  // ib (a decapsulated packet's inner one, or the packet) behind a record
  // header of its own in the port's buffer.
  private commit(batch: PacketBatch, i: number, f: number, slot: number, ib: number, icl: number, iwl: number, now: number): void {
    const o = f * STAT_WORDS;
    const stats = this.flows.stats;
    stats[o + ST_PACKETS]++;
    stats[o + ST_BYTES] += iwl;
    stats[o + ST_USED] = now;
    const ex = this.execute;
    const len = icl + 16;
    if (ex.dBegun[slot] === 0) ex.directBegin(slot);
    let u = ex.dUsed[slot];
    if (u + len > ex.dCap[slot]) u = ex.directFlush(slot);
    const at = ex.dBase[slot] + u;
    const d = batch.dv;
    d.setUint32(at, batch.tsA[i], true);
    d.setUint32(at + 4, batch.tsB[i], true);
    d.setUint32(at + 8, icl, true);
    d.setUint32(at + 12, iwl, true);
    arenaCopy(batch.buf, ex.dWords, ib, icl, at + 16);
    ex.dUsed[slot] = u + len;
    const ppid = ex.slotPpid[slot];
    ex.txPackets[ppid]++;
    ex.txBytes[ppid] += iwl;
    batch.drop[i] = FORWARDED;
  }

  /**
   * Packet i when it is not the common case: if it is a VXLAN/Geneve packet
   * for this host that the sender flagged, marks it SPECIAL (as the flag
   * check would) and returns true; if not flagged, and its inner frame
   * parses and its flow is one plain output to a direct port, decapsulates
   * it as the flag check would (tun_id, tun_src, tun_dst in the key),
   * forwards its inner frame behind a record header of its own, and returns
   * true.
   * Anything else returns false with the packet as rx left it (its key in
   * the batch may be written: parse writes it again), for the stages.
   */
  private tunnelOne(batch: PacketBatch, i: number, now: number): boolean {
    const fc = this.flagCheck;
    if (fc.vtep === 0) return false; // the lane's tunnel packets are IPv4-underlay ones
    if (parsePacket(batch, i, this.inPortKey, this.vmPort) !== 0) return false;
    const io = batch.innerOff[i];
    if (io === ABSENT) return false;
    const key = batch.key;
    const k = i * KEY_WORDS;
    if (key[k + W_ETH_TYPE] >>> 16 !== ETH_P_IPV4 || !fc.ours(key, k)) return false;
    const base = batch.off[i];
    const cl = batch.caplen[i];
    const wl = batch.wirelen[i];
    if (io + 14 > cl) return false;
    const b = batch.buf;
    if (fc.isFlagged(b, base + batch.tunHdr[i], base + io, (key[k + W_TP] & 0xffff) === UDP_PORT_VXLAN)) {
      // For the special-processing path, untouched: the datapath delivers it after the lane.
      batch.drop[i] = SPECIAL;
      fc.flagged++;
      this.special++;
      return true;
    }
    const src = key[k + W_IP_SRC];
    const vni = batch.vni[i];
    // The inner frame, in place of the outer one, while we look (the outer one is
    // put back: rx counts the packet as it arrived).
    batch.off[i] = base + io;
    batch.caplen[i] = cl - io;
    batch.wirelen[i] = wl - io;
    const f = this.tunnelFlow(batch, i, k, vni, src);
    batch.off[i] = base;
    batch.caplen[i] = cl;
    batch.wirelen[i] = wl;
    if (f < 0) {
      if (f === -2) {
        // Its upcall failed: dropped (drop[i] says why) as the stages would, counted as they count it.
        fc.decapsulated++;
        this.missed++;
      }
      return false;
    }
    // Decided: the packet is the lane's.
    this.flagCheck.decapsulated++;
    this.commit(batch, i, f, this.setSlot[this.flows.act[f]], base + io, cl - io, wl - io, now);
    return true;
  }

  // The decapsulated packet i's flow (inner frame in place), when its action
  // set is one plain output to a direct port that takes the record; else -1,
  // or -2 when its upcall failed (drop[i] set).
  private tunnelFlow(batch: PacketBatch, i: number, k: number, vni: number, src: number): number {
    if (parsePacket(batch, i, this.inPortKey) !== 0) return -1;
    const key = batch.key;
    key[k + W_TUN] = vni;
    key[k + W_TUN_SRC] = src;
    key[k + W_TUN_DST] = this.flagCheck.vtep;
    const emc = this.emc;
    const h = keyHash(key, k);
    let f = emc.bypassed ? -1 : emc.lookup(key, k, h);
    let via = 0; // 0: the cache, 1: the megaflow table, 2: an upcall
    if (f < 0) {
      f = this.flows.lookupHashed(key, k, h);
      via = 1;
      if (f < 0) {
        if (this.stopAtMiss) return -1;
        f = this.miss(batch, i);
        if (f < 0) return -2;
        via = 2;
        this.restamp();
      }
    }
    const slot = this.slotFor(this.flows.act[f]);
    if (slot < 0 || batch.caplen[i] + 16 > this.execute.dCap[slot]) return -1;
    this.countFound(via, key, k, h, f);
    return f;
  }

  /**
   * Slow path: packet i (its key in the batch) missed every table; so,
   * likely, do packets after it (a burst of new flows). Looks for the
   * batch's next misses of the common case as `one` would (the cache, then
   * the megaflow table) while they come at most GATHER_GAP packets apart,
   * hands them and i to the FPAG in one upcall (missMany), and keeps each
   * one's flow for when `one` reaches it (pre). Returns i's flow, or -1 with
   * drop[i] set. The misses' keys are left in the batch, as `one` leaves
   * them; nothing else of a packet is written.
   */
  private gather(batch: PacketBatch, i: number): number {
    const n = batch.count;
    const idx = this.gIdx;
    const got = this.gGot;
    const b = batch.buf;
    const d = batch.dv;
    const key = batch.key;
    const emc = this.emc;
    const flows = this.flows;
    const drop = batch.drop;
    // (A gather's arrays are the datapath's while its batch is answered in part: the last one's
    // rest first. Cannot be pending here — its packets come before this one, each awaited — but
    // written over, they would give its flows to other packets.)
    if (this.gAnswered < this.gCount) this.awaitRest();
    idx[0] = i;
    let c = 1;
    let last = i;
    const early = this.missEarly;
    let handed = 0;
    for (let j = i + 1; j < n && j - last <= GATHER_GAP; j++) {
      if (drop[j] !== 0) continue;
      const base = batch.off[j];
      const l4 = commonIpv4(b, d, base, batch.caplen[j], batch.wirelen[j]);
      if (l4 === 0) continue;
      const proto = b[base + 23];
      const tp = transportWord(b, d, base, proto, l4);
      const w0 = this.inPortKey[batch.inPpid[j]];
      const w2 = d.getUint32(base);
      const w3 = d.getUint32(base + 4);
      const w4 = d.getUint32(base + 8);
      const w5 = ((ETH_P_IPV4 << 16) | (proto << 8)) >>> 0;
      const w6 = d.getUint32(base + 26);
      const w10 = d.getUint32(base + 30);
      const h = ipv4KeyHash(w0, w2, w3, w6, w10, tp);
      if (this.useEmc && emc.lookupIpv4(h, w0, w2, w3, w4, w5, w6, w10, tp) >= 0) continue;
      if (this.laOn && this.la[j] >= 0 && this.laGens === flows.genChanges) continue; // (found by the lookahead)
      const k = j * KEY_WORDS;
      putIpv4Key(key, k, w0, w2, w3, w4, w5, w6, w10, tp);
      if (flows.lookupHashed(key, k, h) >= 0) continue;
      idx[c++] = j;
      last = j;
      if (early !== null && c - handed >= this.earlyKeys) {
        early(batch, idx, handed, c);
        handed = c;
      }
    }
    const answered = this.missMany(batch, idx, c, got);
    const seq = ++this.gatherSeq;
    for (let x = 1; x < c; x++) {
      const j = idx[x];
      // A miss whose upcall failed has drop set (`one` leaves it to the stages, which skip it): counted here, as `one` counts its own.
      if (got[x] === -1) this.missed++;
      this.pre[j] = got[x]; // (UPCALL_PENDING past the answered ones: awaitPre)
      this.preSeq[j] = seq;
    }
    this.gCount = c;
    this.gAnswered = answered;
    this.preGens = flows.genChanges;
    return got[0];
  }

  /** Of the last gather's misses (gIdx, gGot): how many, and how many of them answered. */
  private gCount = 0;
  private gAnswered = 0;

  /**
   * Slow path: packet i, gathered, is not answered yet: takes the FPAG's
   * answers (installed by the datapath) until it is, each answered miss's
   * flow into pre as gather puts them.
   */
  private awaitPre(i: number): void {
    const pre = this.pre;
    // (Installs of new flows change no flow a gathered packet was given: pre stays valid.)
    const valid = this.preGens === this.flows.genChanges;
    while (pre[i] === UPCALL_PENDING) {
      const before = this.gAnswered;
      this.takeAnswered(this.missMore(false));
      if (this.gAnswered === before) break; // (no answer more: cannot be; `one` looks the packet up)
    }
    if (valid) this.preGens = this.flows.genChanges;
    this.restamp();
  }

  // Slow path: the last gather's answers not taken yet, all of them.
  private awaitRest(): void {
    this.takeAnswered(this.missMore(true));
    this.restamp();
  }

  // The last gather's misses answered up to `more` (missMore's: -1 all) into pre, as gather puts them.
  private takeAnswered(more: number): void {
    const idx = this.gIdx;
    const got = this.gGot;
    const pre = this.pre;
    const to = more < 0 ? this.gCount : more;
    for (let x = this.gAnswered; x < to; x++) {
      if (got[x] === -1) this.missed++;
      pre[idx[x]] = got[x];
    }
    if (to > this.gAnswered) this.gAnswered = to;
  }

  // Slow path: gather's arrays, for batches of n packets.
  private growGather(n: number): void {
    this.gIdx = new Uint16Array(n);
    this.gGot = new Int32Array(n);
    this.pre = new Int32Array(n);
    this.preSeq = new Uint32Array(n);
    this.la = new Int32Array(n);
    this.laIdx = new Uint16Array(n);
    this.laGot = new Int32Array(n);
    this.laSmcOf = new Uint8Array(n);
    this.laSmc = new Uint8Array(n);
  }

  /**
   * With the cache not in use and a table of many flows (lookaheadMinFlows),
   * the batch's plain IPv4 packets (those `one` parses as such) are parsed
   * and their flows looked up together before `one` takes the first: FlowTable.lookupBatch reads the signature-match cache's buckets,
   * or the slots and the flows found there, for all of them in passes of
   * their own, so the cache misses of a big table (its slot, its flow's key,
   * its counters: DRAM at a million flows) overlap, where one packet's, in
   * `one` between its parse, actions and copy, had stalled the next (~230
   * ns a packet). `one` takes the flow found (while no flow changed since:
   * genChanges) and looks up again the packets not found (an upcall earlier
   * in the batch may have installed their flow). The key is written into the
   * batch, as `one` writes it before a lookup. A batch where under half the
   * packets were found (new flows) makes the next LOOKAHEAD_BACKOFF go
   * without.
   */
  private lookahead(batch: PacketBatch): void {
    if (batch.unfilled) batch.completeRecords(0); // (`one` takes every packet: the cache is not in use)
    const n = batch.count;
    const b = batch.buf;
    const d = batch.dv;
    const key = batch.key;
    const hash = batch.hash;
    const drop = batch.drop;
    const la = this.la;
    const idx = this.laIdx;
    let m = 0;
    for (let i = 0; i < n; i++) {
      la[i] = -1;
      if (drop[i] !== 0) continue;
      const base = batch.off[i];
      const l4 = commonIpv4(b, d, base, batch.caplen[i], batch.wirelen[i]);
      if (l4 === 0) continue;
      const proto = b[base + 23];
      const tp = transportWord(b, d, base, proto, l4);
      const w0 = this.inPortKey[batch.inPpid[i]];
      const w2 = d.getUint32(base);
      const w3 = d.getUint32(base + 4);
      const w4 = d.getUint32(base + 8);
      const w5 = ((ETH_P_IPV4 << 16) | (proto << 8)) >>> 0;
      const w6 = d.getUint32(base + 26);
      const w10 = d.getUint32(base + 30);
      putIpv4Key(key, i * KEY_WORDS, w0, w2, w3, w4, w5, w6, w10, tp);
      hash[i] = ipv4KeyHash(w0, w2, w3, w6, w10, tp);
      idx[m++] = i;
    }
    // The table's lines for all of them at once (FlowTable.lookupBatch), then their flows into la.
    const got = this.laGot;
    const viaSmc = this.laSmcOf;
    // (A packet's signature-match cache hit is counted when `one` takes it: the stages count their own
    // lookups of the packets the lane leaves them.)
    const smcHits = this.flows.smcHits;
    this.flows.lookupBatch(key, hash, idx, m, got, viaSmc);
    this.flows.smcHits = smcHits;
    let found = 0;
    for (let j = 0; j < m; j++) {
      const f = got[j];
      const i = idx[j];
      la[i] = f;
      this.laSmc[i] = viaSmc[j];
      if (f >= 0) found++;
    }
    this.laGens = this.flows.genChanges;
    this.laOn = true;
    this.lookaheads++;
    this.lookaheadHits += found;
    if (2 * found < m) this.laSkip = LOOKAHEAD_BACKOFF;
  }

  // Slow path, after an upcall: the FPAG may have interned new action sets
  // (new ids: the memo grows for them) or moved a VM (the epoch changes:
  // every memoized slot is resolved afresh, here and in the cache's entries).
  private restamp(): void {
    if (this.setStamp.length < this.sets.count) this.growSets();
    const epoch = this.execute.directEpoch();
    const gens = this.flows.genChanges;
    if (epoch !== this.epoch || gens !== this.gens) {
      this.epoch = epoch;
      this.gens = gens;
      this.seq = this.seq === 0x7fffffff ? 1 : this.seq + 1; // below CT_STAMP; never 0 (an insert's stamp)
    }
  }

  // The direct tx slot of action set a (memoized under the stamp `seq`), or -1.
  private slotFor(a: number): number {
    const seq = this.seq;
    if (this.setStamp[a] !== seq) {
      this.setStamp[a] = seq;
      this.setSlot[a] = this.execute.directSlotOf(a);
    }
    return this.setSlot[a];
  }

  // Counts a decided packet where the stages would: a cache hit, a megaflow
  // hit (which may enter the cache), or a miss that took an upcall.
  private countFound(via: number, key: Uint32Array, k: number, h: number, f: number): void {
    if (via === 1) {
      this.emc.insertMaybe(key, k, h, f);
      this.megaflowHits++;
    } else if (via === 2) this.missed++;
    else this.emcHits++;
  }

  // Slow path: the action-set table grew.
  private growSets(): void {
    const size = Math.max(this.sets.count, this.setStamp.length * 2);
    const slot = new Int32Array(size);
    slot.set(this.setSlot.subarray(0, Math.min(size, this.setSlot.length)));
    this.setSlot = slot;
    const stamp = new Uint32Array(size);
    stamp.set(this.setStamp.subarray(0, Math.min(size, this.setStamp.length)));
    this.setStamp = stamp;
    const cts = new Int32Array(size);
    cts.set(this.ctSpec.subarray(0, Math.min(size, this.ctSpec.length)));
    this.ctSpec = cts;
    const ctst = new Uint32Array(size);
    ctst.set(this.ctStamp.subarray(0, Math.min(size, this.ctStamp.length)));
    this.ctStamp = ctst;
  }
}

/** The end of the run of packets from i that arrived on packet i's port with no rx drop (the hot loop's precondition). */
function sameRx(batch: PacketBatch, i: number, n: number): number {
  const inPpid = batch.inPpid;
  const drop = batch.drop;
  const p = inPpid[i];
  let j = i;
  while (j < n && inPpid[j] === p && drop[j] === 0) j++;
  return j;
}

/** What the hot loop reads and writes: one batch's and one datapath's arrays, and the functions it calls. */
interface HotState {
  drop: Uint8Array;
  off: Uint32Array;
  bytesOut: Float64Array;
  b: Uint8Array;
  d: DataView;
  words: Int32Array;
  /** The same bytes as `b`, 8 at a time, when exact8 (else empty). */
  doubles: Float64Array;
  /** Records may be copied 8 bytes at a time through `doubles` (arena.ts FLOAT64_COPY_EXACT). */
  exact8: boolean;
  stats: Float64Array;
  ent: Uint32Array;
  emcMask: number;
  dBase: Int32Array;
  dCap: Int32Array;
  dUsed: Int32Array;
  dBegun: Uint8Array;
  slotPpid: Uint16Array;
  txPackets: Float64Array;
  txBytes: Float64Array;
  commonIpv4: typeof commonIpv4;
  transportWord: typeof transportWord;
  ipv4KeyHash: typeof ipv4KeyHash;
  commonTunnel: typeof commonTunnel;
  tunKeyHash: typeof tunKeyHash;
  /**
   * The ct loop's step (null in the plain loop): packet i, whose key is in
   * cache entry x, of that entry's connection (FastLane.ctConn): conntrack
   * and NAT (LaneCt.hit) before the copy; false, nothing changed, to leave
   * the packet to `one`. l4: the L4 header's offset; cl: the frame's length.
   */
  ctHit: ((i: number, x: number, l4: number, cl: number, now: number) => boolean) | null;
}

/**
 * Packets [from, n), all arriving on the port whose in_port key is w0 with
 * no rx drop, under memo stamp `seq` at time `now`: returns the first one
 * not taken (the bytes of those taken in bytesOut[0]).
 */
type HotLoop = (from: number, n: number, w0: number, seq: number, now: number) => number;

/**
 * The hot loop: each packet of Parse's common case whose key is in the
 * cache, with the flow's direct tx slot kept in the entry under the
 * current stamp (Emc.memo, left there by `one`) and room for the record —
 * key in locals, cache probe, per-flow counters, the record copied into the
 * port's buffer. Stops at the first packet that is anything else (`one`
 * takes that one).
 *
 * Everything the loop touches is a `const` of this function's scope, and
 * the loop refers to nothing outside it, so specializedHotLoop can compile
 * it afresh for each datapath: with one closure of its code, V8 folds each
 * array's data pointer and length into the machine code, as it does for a
 * module's constants. Held in locals instead, ~30 live values spill and
 * each array is reloaded from the stack at every use. The cache probe and
 * the copy are written out here, not called (probeIpv4 and arenaCopy do the
 * same): V8's inlining budget (920 bytes of bytecode) goes to commonIpv4,
 * transportWord and ipv4KeyHash, and the two left as calls cost more than
 * their work. Measured, 10 M 64-byte packets to ports linked to /dev/null,
 * V8 compiling on the main thread: the lane's batches 0.83–0.98 s before,
 * 0.67–0.71 s after (a bench loop of the same work over module constants:
 * 0.59–0.62 s; with its arrays read from an object into locals: 0.70–0.74 s).
 */
function hotLoop(s: HotState): HotLoop {
  const { drop, off, bytesOut, b, d, words, doubles, exact8, stats, ent, emcMask, dBase, dCap, dUsed, dBegun, slotPpid, txPackets, txBytes, commonIpv4, transportWord, ipv4KeyHash, ctHit } = s;
  return function hot(from: number, n: number, w0: number, seq: number, now: number): number {
    let i = from;
    let bytes = 0;
    for (; i < n; i++) {
      // Lengths from the record header (rawPcapLE), which a lazy fill left unread.
      const base = off[i];
      const cl = d.getUint32(base - 8, true);
      const l4 = commonIpv4(b, d, base, cl, d.getUint32(base - 4, true));
      if (l4 === 0) break;
      const proto = b[base + 23];
      const tp = transportWord(b, d, base, proto, l4);
      const w2 = d.getUint32(base);
      const w3 = d.getUint32(base + 4); // dst[4..5] and src[0..1]: parse's two halves
      const w4 = d.getUint32(base + 8);
      const w5 = ((0x0800 << 16) | (proto << 8)) >>> 0; // ETH_P_IPV4
      const w6 = d.getUint32(base + 26);
      const w10 = d.getUint32(base + 30);
      // The cache's two ways, as probeIpv4 (emc.ts) looks: hash, shape, key words, then flow + 1
      // (an empty entry's 0 is no flow). Not the flow's generation: the memo stamp below is only
      // current while no flow's has changed. The two ways written out, not a loop: with a loop
      // V8 compiled the cache's reads as a typed array's general access (a map check, the
      // array's pointer and length loaded at each read) instead of reads at a constant address
      // (2 M 64-byte packets to /dev/null ports, best of 30: 1-5 % less).
      const h = ipv4KeyHash(w0, w2, w3, w6, w10, tp);
      let x = h & emcMask; // the entry's number (the ct loop's connection is kept by it)
      let q = x * 25; // EMC_STRIDE
      if ((ent[q] | 0) !== h || ent[q + 18] !== tp || ent[q + 14] !== w10 || ent[q + 10] !== w6 || ent[q + 4] !== w0 ||
        ent[q + 6] !== w2 || ent[q + 7] !== w3 || ent[q + 8] !== w4 || ent[q + 9] !== w5 || ent[q + 3] !== 1) {
        x = (h >>> 16) & emcMask;
        q = x * 25;
        if ((ent[q] | 0) !== h || ent[q + 18] !== tp || ent[q + 14] !== w10 || ent[q + 10] !== w6 || ent[q + 4] !== w0 ||
          ent[q + 6] !== w2 || ent[q + 7] !== w3 || ent[q + 8] !== w4 || ent[q + 9] !== w5 || ent[q + 3] !== 1) break;
      }
      const f = ent[q + 1] - 1;
      // The flow's tx slot, as `one` left it with the entry (EMC_MEMO) under this stamp.
      if (f < 0 || ent[q + 23] !== seq) break;
      const slot = ent[q + 24];
      const len = cl + 16;
      // Room in the port's buffer, which is open: else `one` takes the packet (and opens
      // or writes out the buffer). The loop calls nothing: a call it had not reached when
      // V8 compiled it (the first buffer full comes late) had no type feedback, its first
      // use threw the compiled loop away, and the run could go on in the code V8 compiles
      // for entering a loop midway, which does not hold the arrays as constants. Measured,
      // 10 M 64-byte packets to /dev/null ports: replays took 0.54-0.62 s or, one in three
      // at random, 0.8-1.2 s; with no call here, 0.52-0.68 s in 18 of 18.
      const u = dUsed[slot];
      if (u + len > dCap[slot] || dBegun[slot] === 0) break;
      // The ct loop: the packet's connection (state, counters, NAT rewriting the frame) before the copy.
      if (ctHit !== null && !ctHit(i, x, l4, cl, now)) break;
      const o = f * 4; // STAT_WORDS: packets, bytes, used
      stats[o]++;
      stats[o + 1] += cl;
      stats[o + 2] = now;
      // The record (header and frame) into the port's buffer. A record of
      // up to 96 bytes (a frame of up to 80) as 96 bytes in a straight line:
      // the bytes after the record land in the buffer's free space (written
      // over by the next record, never written out: the port writes dUsed
      // bytes), read from the rx chunk or the arena after it. Measured, 2 M
      // 64-byte packets to /dev/null ports, best of 30: any loop here,
      // however unrolled (8 or 16 words a step), or a switch into a run of
      // stores, costs 8-10 % of the whole replay over the straight line
      // (0.167-0.181 s against 0.152-0.163 s); 12 doubles rather than 24
      // words, 7 % more (0.159 -> 0.147 s).
      const to = dBase[slot] + u;
      const from = base - 16;
      if (len <= 96 && u + 96 <= dCap[slot] && from + 96 <= b.length && ((from | to) & 3) === 0) {
        if (exact8 && ((from | to) & 7) === 0) {
          const x = to >> 3;
          const y = from >> 3;
          doubles[x] = doubles[y]; doubles[x + 1] = doubles[y + 1]; doubles[x + 2] = doubles[y + 2]; doubles[x + 3] = doubles[y + 3];
          doubles[x + 4] = doubles[y + 4]; doubles[x + 5] = doubles[y + 5]; doubles[x + 6] = doubles[y + 6]; doubles[x + 7] = doubles[y + 7];
          doubles[x + 8] = doubles[y + 8]; doubles[x + 9] = doubles[y + 9]; doubles[x + 10] = doubles[y + 10]; doubles[x + 11] = doubles[y + 11];
        } else {
          const x = to >> 2;
          const y = from >> 2;
          words[x] = words[y]; words[x + 1] = words[y + 1]; words[x + 2] = words[y + 2]; words[x + 3] = words[y + 3];
          words[x + 4] = words[y + 4]; words[x + 5] = words[y + 5]; words[x + 6] = words[y + 6]; words[x + 7] = words[y + 7];
          words[x + 8] = words[y + 8]; words[x + 9] = words[y + 9]; words[x + 10] = words[y + 10]; words[x + 11] = words[y + 11];
          words[x + 12] = words[y + 12]; words[x + 13] = words[y + 13]; words[x + 14] = words[y + 14]; words[x + 15] = words[y + 15];
          words[x + 16] = words[y + 16]; words[x + 17] = words[y + 17]; words[x + 18] = words[y + 18]; words[x + 19] = words[y + 19];
          words[x + 20] = words[y + 20]; words[x + 21] = words[y + 21]; words[x + 22] = words[y + 22]; words[x + 23] = words[y + 23];
        }
      } else if (((from | to | len) & 3) !== 0 || len > 256) b.copyWithin(to, from, from + len); // SMALL_COPY
      else {
        // Larger records as arenaCopy copies them, but 8 words a step.
        let x = to >> 2;
        let y = from >> 2;
        const end = y + (len >> 2);
        for (; y + 8 <= end; x += 8, y += 8) {
          words[x] = words[y]; words[x + 1] = words[y + 1]; words[x + 2] = words[y + 2]; words[x + 3] = words[y + 3];
          words[x + 4] = words[y + 4]; words[x + 5] = words[y + 5]; words[x + 6] = words[y + 6]; words[x + 7] = words[y + 7];
        }
        if (y + 4 <= end) {
          words[x] = words[y]; words[x + 1] = words[y + 1]; words[x + 2] = words[y + 2]; words[x + 3] = words[y + 3];
          x += 4;
          y += 4;
        }
        for (; y < end; x++, y++) words[x] = words[y];
      }
      dUsed[slot] = u + len;
      const ppid = slotPpid[slot];
      txPackets[ppid]++;
      txBytes[ppid] += cl;
      bytes += cl;
      drop[i] = 254; // FORWARDED
    }
    bytesOut[0] = bytes;
    return i;
  };
}

/**
 * Packets [from, n) on the in port whose in_port key is w0, with no rx
 * drop, under memo stamp `seq` at time `now`, while each is a tunnel packet
 * to this host's IPv4 endpoint `vtep` (commonTunnel), not flagged (the
 * Geneve option geneve >> 8 / geneve & 0xff, VXLAN header byte vxlanByte
 * & vxlanMask: FlagCheck.isFlagged's test), whose inner frame is
 * commonIpv4 and whose tunnel key is in the cache with the flow's tx slot
 * kept under `seq` (tunnelFast left it there): returns the first one not
 * taken (the bytes of those taken, as they arrived, in bytesOut[0]).
 */
type TunLoop = (from: number, n: number, w0: number, seq: number, now: number, vtep: number, geneve: number, vxlanByte: number, vxlanMask: number) => number;

/**
 * The tunnel hot loop: tunnelFast's way for a cache hit, in one pass with
 * no calls, as hotLoop is for plain packets (the same reasons: see there) —
 * outer checks, the flag check, the inner frame's key in locals with the
 * tunnel's words, the cache's two ways, per-flow counters, then the inner
 * frame behind a record header of its own (the arrival time of the packet,
 * the inner frame's lengths) in the port's buffer. The inner frame is not
 * 4-byte aligned (the outer headers are 50 bytes and more, and the record
 * ahead of it in the port's buffer any length), so it moves as 32-bit
 * little-endian DataView reads and writes (plain unaligned loads and
 * stores): a frame of up to 96 bytes as 24 of them in a straight line (9 %
 * less than the loop below for 70-byte frames), a longer one by a loop;
 * either may run past the frame on both sides, into the rx chunk (read)
 * and the buffer's free space (written over by the next record, never
 * written out). Building aligned words from the aligned source words
 * around them (shifts by the source's phase) was no faster than the loop. Measured, 4 M 128-byte Geneve
 * packets, 1 % flagged, both versions in one process, alternating: to
 * /dev/null ports 1.03 -> 0.56 s (each packet through `one`, tunnelFast,
 * lookupTun and commit before), to files in /dev/shm 1.15 -> 0.76 s.
 */
function tunnelLoop(s: HotState): TunLoop {
  const { drop, off, bytesOut, b, d, stats, ent, emcMask, dBase, dCap, dUsed, dBegun, slotPpid, txPackets, txBytes, commonIpv4, commonTunnel, transportWord, tunKeyHash } = s;
  return function tun(from: number, n: number, w0: number, seq: number, now: number, vtep: number, geneve: number, vxlanByte: number, vxlanMask: number): number {
    let i = from;
    let bytes = 0;
    for (; i < n; i++) {
      const base = off[i];
      const cl = d.getUint32(base - 8, true);
      const io = commonTunnel(b, d, base, cl, d.getUint32(base - 4, true));
      if (io === 0 || d.getUint32(base + 30) !== vtep || base + cl + 3 > b.length) break;
      const l4 = 14 + (b[base + 14] & 15) * 4;
      const th = base + l4 + 8; // the tunnel header
      const ib = base + io; // the inner frame
      // Flagged (FlagCheck.isFlagged): `one` marks it SPECIAL.
      if (d.getUint16(base + l4 + 2) === 4789) { // UDP_PORT_VXLAN
        if ((b[th + vxlanByte] & vxlanMask) !== 0) break;
      } else {
        let o = th + 8;
        for (; o + 4 <= ib; o += 4 + (b[o + 3] & 0x1f) * 4) if (((b[o] << 16) | (b[o + 1] << 8) | b[o + 2]) === geneve) break;
        if (o + 4 <= ib) break;
      }
      const icl = cl - io;
      const il4 = commonIpv4(b, d, ib, icl, icl);
      if (il4 === 0) break;
      const proto = b[ib + 23];
      const tp = transportWord(b, d, ib, proto, il4);
      const w2 = d.getUint32(ib);
      const w3 = d.getUint32(ib + 4);
      const w4 = d.getUint32(ib + 8);
      const w5 = ((0x0800 << 16) | (proto << 8)) >>> 0; // ETH_P_IPV4
      const w6 = d.getUint32(ib + 26);
      const w10 = d.getUint32(ib + 30);
      const w15 = (0x01000000 | (b[th + 4] << 16) | (b[th + 5] << 8) | b[th + 6]) >>> 0; // TUN_PRESENT | VNI
      const w16 = d.getUint32(base + 26);
      // The cache's two ways, as Emc.lookupTun looks (the key words at entry word 4 + their index).
      const h = tunKeyHash(w0, w2, w3, w6, w10, tp, w15, w16);
      let q = (h & emcMask) * 25; // EMC_STRIDE
      if ((ent[q] | 0) !== h || ent[q + 18] !== tp || ent[q + 14] !== w10 || ent[q + 10] !== w6 || ent[q + 19] !== w15 || ent[q + 20] !== w16 ||
        ent[q + 4] !== w0 || ent[q + 6] !== w2 || ent[q + 7] !== w3 || ent[q + 8] !== w4 || ent[q + 9] !== w5 || ent[q + 21] !== vtep || ent[q + 3] !== 2) {
        q = ((h >>> 16) & emcMask) * 25;
        if ((ent[q] | 0) !== h || ent[q + 18] !== tp || ent[q + 14] !== w10 || ent[q + 10] !== w6 || ent[q + 19] !== w15 || ent[q + 20] !== w16 ||
          ent[q + 4] !== w0 || ent[q + 6] !== w2 || ent[q + 7] !== w3 || ent[q + 8] !== w4 || ent[q + 9] !== w5 || ent[q + 21] !== vtep || ent[q + 3] !== 2) break;
      }
      const f = ent[q + 1] - 1;
      if (f < 0 || ent[q + 23] !== seq) break; // EMC_MEMO: the flow's slot, kept under this stamp
      const slot = ent[q + 24];
      const len = icl + 16;
      const u = dUsed[slot];
      if (u + len + 3 > dCap[slot] || dBegun[slot] === 0) break;
      const o = f * 4; // STAT_WORDS: packets, bytes, used
      stats[o]++;
      stats[o + 1] += icl;
      stats[o + 2] = now;
      // The record header: the packet's arrival time (the rx record's), the inner frame's lengths.
      const to = dBase[slot] + u;
      d.setUint32(to, d.getUint32(base - 16, true), true);
      d.setUint32(to + 4, d.getUint32(base - 12, true), true);
      d.setUint32(to + 8, icl, true);
      d.setUint32(to + 12, icl, true);
      let x = to + 16;
      let y = ib;
      const end = ib + icl;
      if (icl <= 96 && u + 112 <= dCap[slot] && ib + 96 <= b.length) {
        d.setUint32(x + 0, d.getUint32(y + 0, true), true);
        d.setUint32(x + 4, d.getUint32(y + 4, true), true);
        d.setUint32(x + 8, d.getUint32(y + 8, true), true);
        d.setUint32(x + 12, d.getUint32(y + 12, true), true);
        d.setUint32(x + 16, d.getUint32(y + 16, true), true);
        d.setUint32(x + 20, d.getUint32(y + 20, true), true);
        d.setUint32(x + 24, d.getUint32(y + 24, true), true);
        d.setUint32(x + 28, d.getUint32(y + 28, true), true);
        d.setUint32(x + 32, d.getUint32(y + 32, true), true);
        d.setUint32(x + 36, d.getUint32(y + 36, true), true);
        d.setUint32(x + 40, d.getUint32(y + 40, true), true);
        d.setUint32(x + 44, d.getUint32(y + 44, true), true);
        d.setUint32(x + 48, d.getUint32(y + 48, true), true);
        d.setUint32(x + 52, d.getUint32(y + 52, true), true);
        d.setUint32(x + 56, d.getUint32(y + 56, true), true);
        d.setUint32(x + 60, d.getUint32(y + 60, true), true);
        d.setUint32(x + 64, d.getUint32(y + 64, true), true);
        d.setUint32(x + 68, d.getUint32(y + 68, true), true);
        d.setUint32(x + 72, d.getUint32(y + 72, true), true);
        d.setUint32(x + 76, d.getUint32(y + 76, true), true);
        d.setUint32(x + 80, d.getUint32(y + 80, true), true);
        d.setUint32(x + 84, d.getUint32(y + 84, true), true);
        d.setUint32(x + 88, d.getUint32(y + 88, true), true);
        d.setUint32(x + 92, d.getUint32(y + 92, true), true);
      } else {
        for (; y + 16 <= end; x += 16, y += 16) {
          d.setUint32(x, d.getUint32(y, true), true);
          d.setUint32(x + 4, d.getUint32(y + 4, true), true);
          d.setUint32(x + 8, d.getUint32(y + 8, true), true);
          d.setUint32(x + 12, d.getUint32(y + 12, true), true);
        }
        for (; y < end; x += 4, y += 4) d.setUint32(x, d.getUint32(y, true), true);
      }
      dUsed[slot] = u + len;
      const ppid = slotPpid[slot];
      txPackets[ppid]++;
      txBytes[ppid] += icl;
      bytes += cl;
      drop[i] = 254; // FORWARDED
    }
    bytesOut[0] = bytes;
    return i;
  };
}

// The hot loops write as numbers the constants they cannot import (they refer
// to nothing outside themselves); these fail to compile if one of them changes.
const _forwarded: 254 = FORWARDED;
const _stats: [4, 0, 1, 2] = [STAT_WORDS, ST_PACKETS, ST_BYTES, ST_USED];
const _ipv4: 0x0800 = ETH_P_IPV4;
const _emc: [25, 1, 2, 23] = [EMC_STRIDE, EMC_IPV4_SHAPE, EMC_IPV4_TUN_SHAPE, EMC_MEMO];
const _copy: 256 = SMALL_COPY;
const _tun: [0x01000000, 4789, 6081] = [TUN_PRESENT, UDP_PORT_VXLAN, UDP_PORT_GENEVE];
void [_forwarded, _stats, _ipv4, _emc, _copy, _tun];

/**
 * A hot loop's maker (hotLoop, tunnelLoop) compiled afresh (its source
 * through the Function constructor): a function of its own to V8, so the
 * loop it returns is the only closure of its code and its constants fold,
 * however many datapaths and batches a process has (one closure of
 * hotLoop's own code per datapath would be many closures, and none would
 * fold). Each source is made unique: V8 caches what the Function
 * constructor compiles by its source, and a second datapath given the
 * first one's code had a loop of many closures again, compiled without its
 * constants (measured: whole replays at 12-13 Mpps against 18-19 with
 * outputs to /dev/null, at random from the second replay of a process on,
 * as the cache kept or dropped the entry).
 */
let compiled = 0;
function specialized<T extends (s: HotState) => unknown>(maker: T): T {
  try {
    return new Function(`return ${maker.toString()} // hot loop ${++compiled}`)() as T;
  } catch {
    return maker; // code from strings not allowed (node --disallow-code-generation-from-strings): the same loop, shared
  }
}
