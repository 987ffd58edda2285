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
 * Packets the lane forwarded have no key, offsets or hash in the batch.
 */
import type { ActionSets } from './actions/action-sets.js';
import type { Execute } from './actions/execute.js';
import { arenaCopy } from './arena.js';
import { ABSENT, type PacketBatch } from './batch.js';
import { type Emc, ipv4KeyHash, keyHash, probeIpv4, tunKeyHash } from './classifier/emc.js';
import type { FlagCheck } from './classifier/flag-check.js';
import { KEY_WORDS, TUN_PRESENT, W_ETH_TYPE, W_IP_SRC, W_TP, W_TUN, W_TUN_DST, W_TUN_SRC } from './classifier/flow-key.js';
import { ST_BYTES, ST_PACKETS, ST_USED, STAT_WORDS, type FlowTable } from './classifier/flow-table.js';
import type { Classify } from './classifier/classify.js';
import { FORWARDED, SPECIAL } from './drops.js';
import { ETH_P_IPV4, UDP_PORT_VXLAN, commonIpv4, commonTunnel, parsePacket, transportWord } from './parse/parse.js';

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
   * seq). Kept across batches while Execute's directEpoch stays the same (a
   * batch of 256 to 64 VMs resolved ~63 sets afresh each time); an upcall
   * stamps afresh too.
   */
  private setSlot = new Int32Array(1024);
  private setStamp = new Uint32Array(1024);
  private seq = 0;
  private epoch = -1;

  constructor(
    private readonly inPortKey: Uint32Array,
    private readonly emc: Emc,
    private readonly flows: FlowTable,
    private readonly classify: Classify,
    private readonly execute: Execute,
    private readonly sets: ActionSets,
    /** The datapath's miss handling (look again, upcall): a flow, or -1 with drop[i] set. */
    private readonly miss: (batch: PacketBatch, i: number) => number,
    private readonly flagCheck: FlagCheck,
  ) {}

  /**
   * Forwards the batch's leading common-case packets; returns how many. It
   * counts them received in rxPackets/rxBytes (by PPID) too, as accounting
   * would: a run from one port in two locals, stored when the port changes.
   */
  process(batch: PacketBatch, now: number, rxPackets: Float64Array, rxBytes: Float64Array): number {
    const ex = this.execute;
    const emc = this.emc;
    this.special = 0;
    if (!this.enabled || !batch.rawPcapLE || batch.buf !== ex.dBytes) return 0;
    const useEmc = emc.probeBatch();
    if (this.setStamp.length < this.sets.count) this.growSets();
    const epoch = ex.directEpoch();
    if (epoch !== this.epoch) {
      this.epoch = epoch;
      this.seq++;
    }
    let seq = this.seq;
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
    const ent = emc.ent;
    const emcMask = emc.mask;
    const flowGen = emc.flowGen;
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
      const wl = wirelen[i]; // rx counts the packet as it arrived (a tunnel's outer headers included)
      const l4 = commonIpv4(b, d, base, cl, wl);
      if (l4 === 0) {
        // A tunnel packet for this host: flagged, or decapsulated and sent here too.
        const t = this.tunnelFast(batch, i, now, seq);
        if (t === 0 || (t < 0 && !this.tunnelOne(batch, i, now, seq))) break;
        seq = this.seq; // an upcall in there resolves the slots afresh
        setSlot = this.setSlot;
        setStamp = this.setStamp;
      } else {
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
        let f = useEmc ? probeIpv4(ent, emcMask, flowGen, h, w0, w2, w3, w4, w5, w6, w10, tp) : -1;
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
            // new action set: the memoized slots are resolved afresh after it.
            f = this.miss(batch, i);
            if (f < 0) {
              missed++; // dropped (drop[i] says why); the stages skip it, accounting counts it
              break;
            }
            viaUpcall = true;
            seq = this.restamp();
            setSlot = this.setSlot;
            setStamp = this.setStamp;
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
      }
      const p = inPpid[i];
      if (p !== rxPort) {
        rxPackets[rxPort] += rxRun;
        rxBytes[rxPort] += rxRunBytes;
        rxPort = p;
        rxRun = 0;
        rxRunBytes = 0;
      }
      rxRun++;
      rxRunBytes += wl;
    }
    rxPackets[rxPort] += rxRun;
    rxBytes[rxPort] += rxRunBytes;
    ex.copies += i - this.special;
    this.forwarded += i - this.special;
    this.classify.emcHits += emcHits;
    this.classify.megaflowHits += megaflowHits;
    this.classify.misses += missed;
    if (useEmc) emc.countProbes(emcHits + megaflowHits + missed, emcHits);
    return i;
  }

  /**
   * tunnelOne's common case with no parseOne and the key in locals: a
   * commonTunnel packet to this host whose inner frame is commonIpv4.
   * Returns 1 (forwarded, or marked SPECIAL), 0 (left to the stages as rx
   * left it), or -1 (not this case: tunnelOne decides).
   */
  private tunnelFast(batch: PacketBatch, i: number, now: number, seq: number): number {
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
      key[k + 12] = 0; key[k + 13] = 0; key[k + 14] = tp; key[k + 15] = w15; key[k + 16] = w16; key[k + 17] = w17;
      f = this.flows.lookup(key, k);
      via = 1;
      if (f < 0) {
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
          this.classify.misses++;
          return 0;
        }
        via = 2;
        seq = this.restamp();
      }
    }
    const slot = this.slotFor(this.flows.act[f], seq);
    if (slot < 0 || icl + 16 > this.execute.dCap[slot]) return 0;
    this.countFound(via, batch.key, i * KEY_WORDS, hash, f);
    this.commitTunnel(batch, i, f, slot, ib, icl, icl, now);
    return 1;
  }

  // A decapsulated packet the lane forwards: counters, then its inner frame
  // behind a record header of its own in the port's buffer.
  private commitTunnel(batch: PacketBatch, i: number, f: number, slot: number, ib: number, icl: number, iwl: number, now: number): void {
    this.flagCheck.decapsulated++;
    const o = f * STAT_WORDS;
    const stats = this.flows.stats;
    stats[o + ST_PACKETS]++;
    stats[o + ST_BYTES] += iwl;
    stats[o + ST_USED] = now;
    batch.flow[i] = f;
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
  private tunnelOne(batch: PacketBatch, i: number, now: number, seq: number): boolean {
    const fc = this.flagCheck;
    if (fc.vtep === 0) return false; // the lane's tunnel packets are IPv4-underlay ones
    if (parsePacket(batch, i, this.inPortKey) !== 0) return false;
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
    // The inner frame, in place of the outer one, while we look; put back if we give it up.
    batch.off[i] = base + io;
    batch.caplen[i] = cl - io;
    batch.wirelen[i] = wl - io;
    const f = this.tunnelFlow(batch, i, k, vni, src, seq);
    if (f < 0) {
      batch.off[i] = base;
      batch.caplen[i] = cl;
      batch.wirelen[i] = wl;
      if (f === -2) {
        // Its upcall failed: dropped (drop[i] says why) as the stages would, counted as they count it.
        fc.decapsulated++;
        this.classify.misses++;
      }
      return false;
    }
    // Decided: the packet is the lane's.
    this.commitTunnel(batch, i, f, this.setSlot[this.flows.act[f]], base + io, cl - io, wl - io, now);
    return true;
  }

  // The decapsulated packet i's flow (inner frame in place), when its action
  // set is one plain output to a direct port that takes the record; else -1,
  // or -2 when its upcall failed (drop[i] set).
  private tunnelFlow(batch: PacketBatch, i: number, k: number, vni: number, src: number, seq: number): number {
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
      f = this.flows.lookup(key, k);
      via = 1;
      if (f < 0) {
        f = this.miss(batch, i);
        if (f < 0) return -2;
        via = 2;
        seq = this.restamp();
      }
    }
    const slot = this.slotFor(this.flows.act[f], seq);
    if (slot < 0 || batch.caplen[i] + 16 > this.execute.dCap[slot]) return -1;
    this.countFound(via, key, k, h, f);
    return f;
  }

  // Slow path, after an upcall: the FPAG may have interned a new action set,
  // so the memoized slots are resolved afresh. Returns the new stamp.
  private restamp(): number {
    if (this.setStamp.length < this.sets.count) this.growSets();
    return ++this.seq;
  }

  // The direct tx slot of action set a under the stamp `seq`, or -1.
  private slotFor(a: number, seq: number): number {
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
      this.classify.megaflowHits++;
    } else if (via === 2) this.classify.misses++;
    else this.classify.emcHits++;
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
