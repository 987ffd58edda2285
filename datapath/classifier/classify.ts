/**
 * Classify: finds each packet's flow, in three passes over the batch, as
 * dpif-netdev does (hash the batch, then look up, then count):
 *
 *   1+2. hash every live packet's key (batch.hash) and look it up in the
 *      exact-match cache (emc.ts) — one loop: measured faster than two here;
 *   3. megaflow table (flow-table.ts lookupBatch: its signature-match
 *      cache, whose buckets are read for all the misses at once, then the
 *      subtables) for the cache's misses, caching hits.
 *
 * Packets that match nothing keep flow[i] = -1 and the count of them is
 * returned: the datapath turns them into upcalls. Per-flow packets, bytes
 * and last-used time are counted here, once per packet that matched.
 */
import type { PacketBatch } from '../batch.js';
import { KEY_WORDS } from './flow-key.js';
import { ST_BYTES, ST_PACKETS, ST_USED, STAT_WORDS, type FlowTable } from './flow-table.js';
import { Emc, keyHash } from './emc.js';

export class Classify {
  static readonly stageName = 'classify';
  static readonly next = ['execute', 'upcall'] as const;

  readonly flows: FlowTable;
  readonly emc: Emc;
  /** Packets found in the exact-match cache / in the megaflow table / in neither. */
  emcHits = 0;
  megaflowHits = 0;
  misses = 0;
  private readonly missIdx: Uint16Array;
  /** The misses' flows (FlowTable.lookupBatch). */
  private readonly found: Int32Array;

  constructor(flows: FlowTable, emc: Emc, batchCapacity: number) {
    this.flows = flows;
    this.emc = emc;
    this.missIdx = new Uint16Array(batchCapacity);
    this.found = new Int32Array(batchCapacity);
  }

  process(batch: PacketBatch, now: number): number {
    const n = batch.count;
    const drop = batch.drop;
    const flow = batch.flow;
    const hash = batch.hash;
    const key = batch.key;
    const emc = this.emc;
    const flows = this.flows;
    const missIdx = this.missIdx;
    // Per-flow packets, bytes and last use are counted as each packet is
    // found (one pass, not a third); a flow's packets in one batch all take
    // the same pass (the cache changes only after the first), so the
    // ordinals still follow arrival order.
    const stats = flows.stats;
    const wirelen = batch.wirelen;
    const ordinal = batch.ordinal;
    let m = 0;
    let emcHits = 0;
    const useEmc = emc.probeBatch();
    for (let i = 0; i < n; i++) {
      flow[i] = -1;
      if (drop[i] !== 0) continue;
      const ko = i * KEY_WORDS;
      const h = keyHash(key, ko);
      hash[i] = h;
      const f = useEmc ? emc.lookup(key, ko, h) : -1;
      if (f >= 0) {
        flow[i] = f;
        emcHits++;
        const o = f * STAT_WORDS;
        ordinal[i] = ++stats[o + ST_PACKETS];
        stats[o + ST_BYTES] += wirelen[i];
        stats[o + ST_USED] = now;
      } else missIdx[m++] = i;
    }

    let misses = 0;
    // The misses looked up together (the signature-match cache's buckets in one pass: their loads overlap).
    const found = this.found;
    if (m > 0) flows.lookupBatch(key, hash, missIdx, m, found);
    for (let j = 0; j < m; j++) {
      const i = missIdx[j];
      const ko = i * KEY_WORDS;
      const f = found[j];
      if (f >= 0) {
        flow[i] = f;
        emc.insertMaybe(key, ko, hash[i], f); // also while the cache is bypassed: it stays warm
        const o = f * STAT_WORDS;
        ordinal[i] = ++stats[o + ST_PACKETS];
        stats[o + ST_BYTES] += wirelen[i];
        stats[o + ST_USED] = now;
      } else misses++;
    }
    if (useEmc) emc.countProbes(emcHits + m, emcHits);
    this.emcHits += emcHits;
    this.megaflowHits += m - misses;
    this.misses += misses;
    return misses;
  }
}
