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
 * The key lives in locals, not in the batch: on a cache hit nothing is
 * written but the counters and the copy. The first packet that is not the
 * common case (another layout, a tunnel packet, an action set that is not
 * a single direct output) ends the lane for the batch: it and the packets
 * after it go through the stages (parse, flag check, classify, execute),
 * which skip the packets the lane marked FORWARDED. The lane forwards
 * exactly what the stages would: same key, same flow, same counters, same
 * bytes out in the same order (test/datapath/fast-lane.test.ts replays
 * captures both ways and compares). Only the cache's own statistics may
 * differ (a packet the lane looked up and then left to the stages is
 * looked up twice).
 *
 * Packets the lane forwarded have no key, offsets or hash in the batch.
 */
import type { ActionSets } from './actions/action-sets.js';
import type { Execute } from './actions/execute.js';
import { arenaCopy } from './arena.js';
import type { PacketBatch } from './batch.js';
import { type Emc, ipv4KeyHash } from './classifier/emc.js';
import { KEY_WORDS } from './classifier/flow-key.js';
import { ST_BYTES, ST_PACKETS, ST_USED, STAT_WORDS, type FlowTable } from './classifier/flow-table.js';
import type { Classify } from './classifier/classify.js';
import { FORWARDED } from './drops.js';
import { ETH_P_IPV4, commonIpv4, transportWord } from './parse/parse.js';

export class FastLane {
  static readonly stageName = 'fast-lane';
  static readonly next = ['parse'] as const;

  /** Off: every packet takes the stages (for comparison, and for tests). */
  enabled = true;
  /** Packets forwarded by the lane. */
  forwarded = 0;
  /** Per action set: the direct tx slot it resolved to this batch (valid when setStamp = seq). */
  private setSlot = new Int32Array(1024);
  private setStamp = new Uint32Array(1024);
  private seq = 0;

  constructor(
    private readonly inPortKey: Uint32Array,
    private readonly emc: Emc,
    private readonly flows: FlowTable,
    private readonly classify: Classify,
    private readonly execute: Execute,
    private readonly sets: ActionSets,
    /** The datapath's miss handling (look again, upcall): a flow, or -1 with drop[i] set. */
    private readonly miss: (batch: PacketBatch, i: number) => number,
  ) {}

  /**
   * Forwards the batch's leading common-case packets; returns how many. It
   * counts them received in rxPackets/rxBytes (by PPID) too, as accounting
   * would: a run from one port in two locals, stored when the port changes.
   */
  process(batch: PacketBatch, now: number, rxPackets: Float64Array, rxBytes: Float64Array): number {
    const ex = this.execute;
    const emc = this.emc;
    if (!this.enabled || !batch.rawPcapLE || batch.buf !== ex.dBytes) return 0;
    const useEmc = emc.probeBatch();
    if (this.setStamp.length < this.sets.count) this.growSets();
    let seq = ++this.seq;
    let setSlot = this.setSlot;
    let setStamp = this.setStamp;
    const n = batch.count;
    const drop = batch.drop;
    const off = batch.off;
    const caplen = batch.caplen;
    const wirelen = batch.wirelen;
    const inPpid = batch.inPpid;
    const flowOf = batch.flow;
    const d = batch.dv;
    const b = batch.buf;
    const inPortKey = this.inPortKey;
    const flows = this.flows;
    const stats = flows.stats;
    const act = flows.act;
    const words = ex.dWords;
    const dBase = ex.dBase;
    const dCap = ex.dCap;
    const dUsed = ex.dUsed;
    const dBegun = ex.dBegun;
    const slotPpid = ex.slotPpid;
    const txPackets = ex.txPackets;
    const txBytes = ex.txBytes;
    let emcHits = 0;
    let megaflowHits = 0;
    let missed = 0;
    let rxPort = n > 0 ? inPpid[0] : 0;
    let rxRun = 0;
    let rxRunBytes = 0;
    let i = 0;
    for (; i < n; i++) {
      if (drop[i] !== 0) break;
      // Parse's common case (parse.ts), or the stages take it from here.
      const base = off[i];
      const cl = caplen[i];
      const l4 = commonIpv4(b, d, base, cl, wirelen[i]);
      if (l4 === 0) break;
      const proto = b[base + 23];
      const tp = transportWord(b, d, base, proto, l4);
      const w0 = inPortKey[inPpid[i]];
      const w2 = d.getUint32(base);
      const w3 = d.getUint32(base + 4); // dst[4..5] and src[0..1]: parse's two halves
      const w4 = d.getUint32(base + 8);
      const w5 = ((ETH_P_IPV4 << 16) | (proto << 8)) >>> 0;
      const w6 = d.getUint32(base + 26);
      const w10 = d.getUint32(base + 30);
      const h = ipv4KeyHash(w0, w2, w3, w6, w10, tp);
      let f = useEmc ? emc.lookupIpv4(h, w0, w2, w3, w4, w5, w6, w10, tp) : -1;
      let viaMegaflow = false;
      let viaUpcall = false;
      if (f < 0) {
        // The megaflow table takes the key from the batch: write it there.
        const key = batch.key;
        const k = i * KEY_WORDS;
        key[k] = w0; key[k + 1] = 0; key[k + 2] = w2; key[k + 3] = w3; key[k + 4] = w4; key[k + 5] = w5;
        key[k + 6] = w6; key[k + 7] = 0; key[k + 8] = 0; key[k + 9] = 0; key[k + 10] = w10; key[k + 11] = 0;
        key[k + 12] = 0; key[k + 13] = 0; key[k + 14] = tp; key[k + 15] = 0; key[k + 16] = 0; key[k + 17] = 0;
        f = flows.lookup(key, k);
        if (f >= 0) viaMegaflow = true;
        else {
          // Slow path: an upcall, as the stages would make it. The FPAG may have interned a
          // new action set: the per-batch slots are resolved afresh after it.
          f = this.miss(batch, i);
          if (f < 0) {
            missed++; // dropped (drop[i] says why); the stages skip it, accounting counts it
            break;
          }
          viaUpcall = true;
          if (this.setStamp.length < this.sets.count) this.growSets();
          setSlot = this.setSlot;
          setStamp = this.setStamp;
          seq = ++this.seq;
        }
      }
      const a = act[f];
      if (setStamp[a] !== seq) {
        setStamp[a] = seq;
        setSlot[a] = ex.directSlotOf(a);
      }
      const slot = setSlot[a];
      if (slot < 0) break;
      const len = cl + 16;
      if (len > dCap[slot]) break;
      // Decided: from here on the packet is the lane's.
      if (viaMegaflow) {
        emc.insertMaybe(batch.key, i * KEY_WORDS, h, f);
        megaflowHits++;
      } else if (viaUpcall) missed++;
      else emcHits++;
      const o = f * STAT_WORDS;
      stats[o + ST_PACKETS]++;
      stats[o + ST_BYTES] += cl;
      stats[o + ST_USED] = now;
      flowOf[i] = f;
      if (dBegun[slot] === 0) ex.directBegin(slot);
      let u = dUsed[slot];
      if (u + len > dCap[slot]) u = ex.directFlush(slot);
      arenaCopy(b, words, base - 16, len, dBase[slot] + u);
      dUsed[slot] = u + len;
      const ppid = slotPpid[slot];
      txPackets[ppid]++;
      txBytes[ppid] += cl;
      drop[i] = FORWARDED;
      const p = inPpid[i];
      if (p !== rxPort) {
        rxPackets[rxPort] += rxRun;
        rxBytes[rxPort] += rxRunBytes;
        rxPort = p;
        rxRun = 0;
        rxRunBytes = 0;
      }
      rxRun++;
      rxRunBytes += cl;
    }
    rxPackets[rxPort] += rxRun;
    rxBytes[rxPort] += rxRunBytes;
    ex.copies += i;
    this.forwarded += i;
    this.classify.emcHits += emcHits;
    this.classify.megaflowHits += megaflowHits;
    this.classify.misses += missed;
    if (useEmc) emc.countProbes(emcHits + megaflowHits + missed, emcHits);
    return i;
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
  }
}
