/**
 * Classifier lookups per second at 1 thousand, 100 thousand and 1 million
 * flows, with 1 and 20 subtables, exact-match cache hits and megaflow hits
 * measured apart (the megaflow cases turn the exact-match cache off:
 * `megaflow-hit` the subtables alone, `smc-hit` with the signature-match
 * cache in front of them, flow-table.ts); `emc-hit` is the
 * classify stage's lookup of a batch's keys, `emc-hit-ipv4` the fast lane's
 * probe of the same keys held in locals (lookupIpv4). `megaflow-hit` and
 * `megaflow-miss` (keys of no flow: every subtable tried, as before an
 * upcall) also time the table with its Bloom filter off, in the same run
 * (`withoutBloomPerSec`, `bloomRatio` = with/without). The baseline in
 * the same run is a plain JavaScript Map from a string key to the flow, the
 * obvious way to write a flow cache in Node, its keys made before timing as
 * fpo's are; the ratio is ours/Map (and, apart, ours against a Map whose
 * string key is built in the loop, as a switch using one would per packet).
 *
 *   node dist/bench/classifier/lookup.js
 */
import { PacketBatch } from '../../datapath/batch.js';
import { Classify } from '../../datapath/classifier/classify.js';
import { Emc, EMC_ENTRIES, ipv4KeyHash } from '../../datapath/classifier/emc.js';
import { KEY_WORDS, W_ETH_DST_HI, W_ETH_MID, W_ETH_TYPE, W_IN_PORT, W_IP_DST, W_IP_SRC, W_TP } from '../../datapath/classifier/flow-key.js';
import { FlowTable, ST_BYTES, ST_PACKETS, STAT_WORDS } from '../../datapath/classifier/flow-table.js';
import { SHORT, emit } from '../harness.js';

const BATCH = 256;
/** Batches of prepared keys (8 × 256 = 2048 keys, hot in cache as keys just parsed are). */
const RING = 8;

/** Key of flow f: a UDP 5-tuple to one of 64 VMs. */
function flowKey(k: Uint32Array, o: number, f: number): void {
  k.fill(0, o, o + KEY_WORDS);
  k[o + W_IN_PORT] = 100;
  k[o + W_ETH_DST_HI] = 0x02000000 | (f & 63);
  k[o + W_ETH_MID] = 0x01000000;
  k[o + W_ETH_TYPE] = (0x0800 << 16) | (17 << 8);
  k[o + W_IP_SRC] = (0x0a000000 | f) >>> 0;
  k[o + W_IP_DST] = 0x0a020000 | (f & 63);
  k[o + W_TP] = ((1024 + (f % 50000)) << 16) | 5001;
}

/** Subtable s's mask: the 5-tuple, with s low bits of the source port wildcarded. */
function subMask(s: number): Uint32Array {
  const m = new Uint32Array(KEY_WORDS);
  m[W_IN_PORT] = 0xffffffff;
  m[W_ETH_DST_HI] = 0xffffffff;
  m[W_ETH_MID] = 0xffff0000;
  m[W_ETH_TYPE] = 0xffffff00;
  m[W_IP_SRC] = 0xffffffff;
  m[W_IP_DST] = 0xffffffff;
  m[W_TP] = ((0xffff << (16 + s)) | 0xffff) >>> 0;
  return m;
}

interface RunOptions { emc: boolean; ipv4?: boolean; smc?: boolean; bloom?: boolean; miss?: boolean }

function run(flows: number, subtables: number, o: RunOptions): { lookups: number; seconds: number; hitRate: number } {
  const emcOn = o.emc;
  const ipv4 = o.ipv4 ?? false;
  const table = new FlowTable(flows * 2);
  table.smcOn = o.smc ?? true;
  table.bloomOn = o.bloom ?? true;
  const emc = new Emc(table, EMC_ENTRIES, emcOn ? 1 : 0);
  const c = new Classify(table, emc, BATCH);
  const k = new Uint32Array(KEY_WORDS);
  const masks = Array.from({ length: subtables }, (_, s) => subMask(s));
  for (let f = 0; f < flows; f++) {
    flowKey(k, 0, f);
    table.install(k, masks[f % subtables], 0, 0);
  }
  // EMC hits: as many distinct flows as the cache holds comfortably; megaflow: all flows.
  const active = emcOn ? Math.min(flows, EMC_ENTRIES / 2) : flows;

  // Keys are made before timing: RING batches of BATCH keys, walked in turn.
  const ring = Array.from({ length: RING }, () => new PacketBatch(BATCH));
  const stride = 7919; // a prime: visits every active flow
  let f = 0;
  for (const b of ring) {
    for (let i = 0; i < BATCH; i++) {
      // A miss: a key of no flow (flows + f is past every installed one; under 2^24, so its source address is its own).
      flowKey(b.key, i * KEY_WORDS, o.miss ? flows + f : f);
      f = (f + stride) % active;
    }
    b.count = BATCH;
  }
  // (The subtables alone, 20 of them, run at 1-4 M/s: fewer lookups, the line in seconds, not minutes.)
  const lookups = SHORT ? 800 * BATCH : !emcOn && !table.smcOn && subtables > 1 ? 2 << 20 : 10_000_000;
  const pass = () => {
    for (let done = 0, r = 0; done < lookups; done += BATCH, r = (r + 1) & (RING - 1)) c.process(ring[r], 0);
  };
  pass(); // warm-up, and fills the cache
  if (ipv4) {
    // The fast lane's probe (fast-lane.ts): the key's IPv4 words in locals, ipv4KeyHash,
    // lookupIpv4 and the flow's counters, as it does for each packet.
    const stats = table.stats;
    const ipv4Pass = (): number => {
      let hits = 0;
      for (let done = 0, r = 0; done < lookups; done += BATCH, r = (r + 1) & (RING - 1)) {
        const key = ring[r].key;
        for (let i = 0; i < BATCH; i++) {
          const o = i * KEY_WORDS;
          const w0 = key[o], w2 = key[o + 2], w3 = key[o + 3], w4 = key[o + 4], w5 = key[o + 5], w6 = key[o + 6], w10 = key[o + 10], w14 = key[o + 14];
          const f = emc.lookupIpv4(ipv4KeyHash(w0, w2, w3, w6, w10, w14), w0, w2, w3, w4, w5, w6, w10, w14);
          if (f < 0) continue;
          hits++;
          stats[f * STAT_WORDS + ST_PACKETS]++;
          stats[f * STAT_WORDS + ST_BYTES] += 64;
        }
      }
      return hits;
    };
    ipv4Pass();
    const t0 = performance.now();
    const hits = ipv4Pass();
    return { lookups, seconds: (performance.now() - t0) / 1000, hitRate: hits / lookups };
  }
  const before = emcOn ? c.emcHits : c.megaflowHits;
  const t0 = performance.now();
  pass();
  const seconds = (performance.now() - t0) / 1000;
  const hits = (emcOn ? c.emcHits : c.megaflowHits) - before;
  return { lookups, seconds, hitRate: hits / lookups };
}

/**
 * The baseline: Map<string, number> keyed by the key's words joined. As on
 * fpo's side, the keys are made before timing (RING × BATCH of them, in the
 * same stride order, walked in turn), so the loop times only the lookups.
 * (Before, each lookup built its key and joined it to a string inside the
 * timed loop while fpo's keys were ready: the Map paid for work fpo did not.)
 * A string keeps its hash once computed, so after the warm-up pass the Map
 * hashes nothing, where fpo hashes every key it looks up; a switch built on
 * a Map would make each packet's string, which `withKeyBuild` times apart
 * (the key's words set and joined in the loop, as this baseline did before).
 */
function runMap(flows: number): { lookups: number; seconds: number; withKeyBuild: { lookups: number; seconds: number } } {
  const map = new Map<string, number>();
  const k = new Uint32Array(KEY_WORDS);
  for (let f = 0; f < flows; f++) { flowKey(k, 0, f); map.set(k.join(','), f); }
  const keys: string[] = [];
  for (let n = 0, f = 0; n < RING * BATCH; n++, f = (f + 7919) % flows) { flowKey(k, 0, f); keys.push(k.join(',')); }
  const lookups = SHORT ? 200_000 : 10_000_000;
  let found = 0;
  const pass = () => {
    for (let n = 0, i = 0; n < lookups; n++, i = (i + 1) & (RING * BATCH - 1)) {
      if (map.get(keys[i]) !== undefined) found++;
    }
  };
  pass();
  const t0 = performance.now();
  pass();
  const seconds = (performance.now() - t0) / 1000;
  if (found !== 2 * lookups) throw new Error(`Map baseline found ${found} of ${2 * lookups}`);
  const slowLookups = SHORT ? 200_000 : 2_000_000;
  let f = 0;
  const buildPass = () => {
    for (let n = 0; n < slowLookups; n++) {
      flowKey(k, 0, f);
      if (map.get(k.join(',')) !== undefined) found++;
      f = (f + 7919) % flows;
    }
  };
  buildPass();
  const t1 = performance.now();
  buildPass();
  return { lookups, seconds, withKeyBuild: { lookups: slowLookups, seconds: (performance.now() - t1) / 1000 } };
}

const sizes = SHORT ? [1000, 20_000] : [1000, 100_000, 1_000_000];
for (const flows of sizes) {
  const base = runMap(flows);
  const baseRate = Math.round(base.lookups / base.seconds);
  const buildRate = Math.round(base.withKeyBuild.lookups / base.withKeyBuild.seconds);
  for (const subtables of [1, 20]) {
    for (const path of ['emc-hit', 'emc-hit-ipv4', 'megaflow-hit', 'megaflow-miss', 'smc-hit'] as const) {
      const subtablesAlone = path === 'megaflow-hit' || path === 'megaflow-miss';
      const o: RunOptions = { emc: path === 'emc-hit' || path === 'emc-hit-ipv4', ipv4: path === 'emc-hit-ipv4', smc: !subtablesAlone, miss: path === 'megaflow-miss' };
      const r = run(flows, subtables, o);
      const rate = Math.round(r.lookups / r.seconds);
      // The subtables alone, with the Bloom filter off too (same run, same keys).
      let bloom = {};
      if (subtablesAlone) {
        const w = run(flows, subtables, { ...o, bloom: false });
        const without = Math.round(w.lookups / w.seconds);
        bloom = { withoutBloomPerSec: without, bloomRatio: Number((rate / without).toFixed(2)) };
      }
      // The ratio of the two rates as printed, so that it can be checked from the line.
      emit({ bench: 'classifier/lookup', path, flows, subtables, lookupsPerSec: rate, hitRate: Number(r.hitRate.toFixed(4)), ...bloom, baseline: 'Map<string>', baselinePerSec: baseRate, ratio: Number((rate / baseRate).toFixed(2)), mapWithKeyBuildPerSec: buildRate, ratioToMapWithKeyBuild: Number((rate / buildRate).toFixed(2)) });
    }
  }
}
