import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { KEY_WORDS } from '../../datapath/classifier/flow-key.js';
import type { Datapath } from '../../datapath/datapath.js';
import { replay } from '../../control/replay.js';
import { eth, ipv4, udp, writePcap } from '../../fixtures/packets.js';
import { FIXTURES, captureFrames, cleanTemp, tempDir } from '../helpers.js';
import { benchTopology, generate } from '../../bench/gen-capture.js';

afterAll(cleanTemp);

// The fixture topology with every field of a missed rule in the megaflow (wildcarding "rule-fields"): the
// telnet rule then makes tp_dst part of every megaflow, so ports make flows, as these lifetime tests need.
const TOPO = (() => {
  const f = join(tempDir('topo'), 'topology.json');
  writeFileSync(f, JSON.stringify({ ...JSON.parse(readFileSync(join(FIXTURES, 'topology.json'), 'utf8')), wildcarding: 'rule-fields' }));
  return f;
})();
const toVm = (n: number, sport: number) => eth(`02:00:00:00:00:0${n}`, '02:ee:00:00:00:01', 0x0800, ipv4({ src: '192.0.2.1', dst: `10.0.0.${n}`, proto: 17 }, udp(sport, 9, new Uint8Array(18))));

describe('Datapath flow lifetime', () => {
  it('a flow idle for longer than the idle timeout is removed, and its next packet is an upcall again', () => {
    const p = join(tempDir(), 'idle.pcap');
    // vm1's flow at t=0 and t=30 s; vm2's flow every second in between.
    const recs = [{ sec: 1000, usec: 0, data: toVm(1, 1) }];
    for (let t = 1; t < 30; t++) recs.push({ sec: 1000 + t, usec: 0, data: toVm(2, 2) });
    recs.push({ sec: 1030, usec: 0, data: toVm(1, 1) });
    writePcap(p, recs);
    const { report } = replay({ capture: p, topology: TOPO, outDir: tempDir(), batchSize: 1 });
    expect(report.flows.expired).toBe(1);
    expect(report.flows.upcalls).toBe(3);
    expect(report.packets.out).toBe(31);
  });

  it('a full flow table evicts the least recently used flows and keeps forwarding, counting them', () => {
    const p = join(tempDir(), 'many.pcap');
    // 64 distinct flows (the telnet rule makes tp_dst part of every megaflow, so ports make flows) into a 16-flow table.
    const recs = Array.from({ length: 200 }, (_, i) => ({ sec: 1000, usec: i, data: eth('02:00:00:00:00:01', '02:ee:00:00:00:01', 0x0800, ipv4({ src: '192.0.2.1', dst: '10.0.0.1', proto: 6 }, new Uint8Array([0, 1, 0, 100 + (i % 64), 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0, 0, 0, 0, 0, 0, 0]))) }));
    writePcap(p, recs);
    const { report } = replay({ capture: p, topology: TOPO, outDir: tempDir(), maxFlows: 16, batchSize: 8 });
    expect(report.flows.evicted).toBeGreaterThan(0);
    expect(report.flows.active).toBeLessThanOrEqual(16);
    expect(report.packets.in).toBe(200);
    expect(report.packets.out).toBe(200);
    expect(report.drops).toEqual({});
  });
});

describe('Datapath flow-flush', () => {
  // 120 packets over three flows (vm1 port 9, vm2 port 9, vm1 port 10: the telnet rule makes
  // tp_dst part of every megaflow), in an irregular order; the packets of a flow are alike, so
  // the exact-match cache and the fast lane's memo hold them too.
  const flowOf = (i: number) => [0, 1, 0, 2, 0, 0, 1, 2, 2, 0, 1][i % 11];
  const frame = (i: number) => {
    const f = flowOf(i);
    return eth(`02:00:00:00:00:0${f === 1 ? 2 : 1}`, '02:ee:00:00:00:01', 0x0800, ipv4({ src: '192.0.2.1', dst: `10.0.0.${f === 1 ? 2 : 1}`, proto: 17 }, udp(1000 + f, f === 2 ? 10 : 9, new Uint8Array(18))));
  };
  const N = 120;
  const cap = join(tempDir('flush'), 'three-flows.pcap');
  writePcap(cap, Array.from({ length: N }, (_, i) => ({ sec: 1000, usec: i, data: frame(i) })));

  /** The model: packet i makes an upcall when its flow has not been seen since the last flush at or before i. */
  function expectedUpcalls(flushes: number[]): boolean[] {
    const seen = new Set<number>();
    return Array.from({ length: N }, (_, i) => {
      if (flushes.includes(i)) seen.clear();
      const miss = !seen.has(flowOf(i));
      seen.add(flowOf(i));
      return miss;
    });
  }

  for (const flushes of [[1], [20, 21], [3, 40, 119], [0, 59, 60, 61]]) {
    it(`a flow-flush before packets ${flushes.join(', ')} removes every flow: the next packet of each flow is an upcall again, one packet at a time`, () => {
      const upcallsBefore: number[] = [];
      const flowsAfterFlush: number[] = [];
      const { report, datapath } = replay({
        capture: cap, topology: TOPO, outDir: tempDir(), batchSize: 1,
        beforeBatch: (soFar, dp) => {
          upcallsBefore[soFar] = dp.upcalls;
          if (flushes.includes(soFar)) {
            dp.apply({ type: 'flow-flush' });
            flowsAfterFlush.push(dp.flows.count);
          }
        },
      });
      upcallsBefore[N] = datapath.upcalls;
      const want = expectedUpcalls(flushes);
      let seen = 0;
      for (let i = 0; i < N; i++) {
        expect(upcallsBefore[i + 1] - upcallsBefore[i], `packet ${i}`).toBe(want[i] ? 1 : 0);
        seen++;
      }
      expect(seen).toBe(N);
      expect(flowsAfterFlush).toEqual(flushes.map(() => 0));
      // At the end: the flows seen since the last flush, and every packet delivered where it belongs.
      const last = Math.max(...flushes);
      expect(datapath.flows.count).toBe(new Set(Array.from({ length: N - last }, (_, j) => flowOf(last + j))).size);
      expect(report.packets).toEqual({ in: N, out: N, dropped: 0, copies: N });
      const toVm2 = Array.from({ length: N }, (_, i) => i).filter((i) => flowOf(i) === 1).length;
      expect(report.ports.find((p) => p.name === 'vf2')!.tx.packets).toBe(toVm2);
      expect(report.ports.find((p) => p.name === 'vf1')!.tx.packets).toBe(N - toVm2);
    });
  }

  it('a flow-flush between batches of 16 (the fast lane and its caches in use) makes each flow upcall once more, and no packet goes astray', () => {
    const flushes = [32, 48, 96];
    const upcallsAt = new Map<number, number>();
    const { report, datapath } = replay({
      capture: cap, topology: TOPO, outDir: tempDir(), batchSize: 16,
      beforeBatch: (soFar, dp) => {
        upcallsAt.set(soFar, dp.upcalls);
        if (flushes.includes(soFar)) dp.apply({ type: 'flow-flush' });
      },
    });
    upcallsAt.set(N, datapath.upcalls);
    const want = expectedUpcalls(flushes);
    let batches = 0;
    for (let b = 0; b < N; b += 16) {
      const inBatch = want.slice(b, Math.min(N, b + 16)).filter(Boolean).length;
      expect(upcallsAt.get(Math.min(N, b + 16))! - upcallsAt.get(b)!, `batch at ${b}`).toBe(inBatch);
      batches++;
    }
    expect(batches).toBe(8);
    expect(report.flows.fastLane).toBeGreaterThan(0);
    expect(report.packets).toEqual({ in: N, out: N, dropped: 0, copies: N });
  });
});


describe('Datapath upcalls in batches', () => {
  // n flows of `per` packets each, interleaved (flow i: UDP to port 1000 + i, a megaflow each under rule-fields), to vm1 or vm2.
  const flowsCapture = (n: number, per: number, vms = 1): string => {
    const p = join(tempDir(), `flows-${n}x${per}-${vms}.pcap`);
    const recs = [];
    for (let k = 0; k < per; k++) {
      for (let i = 0; i < n; i++) {
        const vm = 1 + (i % vms);
        recs.push({ sec: 1000, usec: k * n + i, data: eth(`02:00:00:00:00:0${vm}`, '02:ee:00:00:00:01', 0x0800, ipv4({ src: '192.0.2.9', dst: `10.0.0.${vm}`, proto: 17 }, udp(5000, 1000 + i, new Uint8Array(18)))) });
      }
    }
    writePcap(p, recs);
    return p;
  };

  it('the misses of a batch reach the FPAG together, each megaflow decided once; the outputs are those of one packet a batch', () => {
    const cap = flowsCapture(50, 4);
    const a = tempDir('batched');
    const b = tempDir('one-by-one');
    const big = replay({ capture: cap, topology: TOPO, outDir: a, batchSize: 256 }).report;
    const one = replay({ capture: cap, topology: TOPO, outDir: b, batchSize: 1 }).report;
    expect(big.packets.in).toBe(200);
    expect(big.packets.out).toBe(200);
    expect(big.flows.upcalls).toBe(50);
    expect(big.flows.installed).toBe(50);
    // The 50 first packets miss together: one batch (the lane gathers them from its first miss).
    expect(big.fpag.batches).toBe(1);
    expect(one.fpag.batches).toBe(50);
    expect(one.flows.upcalls).toBe(50);
    for (const f of readdirSync(b)) expect(readFileSync(join(a, f)).equals(readFileSync(join(b, f))), f).toBe(true);
    expect(readdirSync(a).sort()).toEqual(readdirSync(b).sort());
  });

  it('the fast lane and the stages hand over the same misses and forward the same bytes', () => {
    const cap = flowsCapture(120, 3, 2);
    const a = tempDir('lane');
    const b = tempDir('stages');
    const lane = replay({ capture: cap, topology: TOPO, outDir: a, batchSize: 64 });
    const stages = replay({ capture: cap, topology: TOPO, outDir: b, batchSize: 64, fastLane: false });
    expect(lane.report.flows.upcalls).toBe(120);
    expect(stages.report.flows.upcalls).toBe(120);
    expect(lane.report.fpag.batches).toBe(stages.report.fpag.batches);
    const counts = (ports: typeof lane.report.ports) => ports.map((p) => ({ ...p, file: undefined }));
    expect(counts(lane.report.ports)).toEqual(counts(stages.report.ports));
    for (const f of readdirSync(b)) expect(readFileSync(join(a, f)).equals(readFileSync(join(b, f))), f).toBe(true);
  });

  for (const fastLane of [true, false]) {
    it(`a batch of more new flows than the table holds (fast lane ${fastLane ? 'on' : 'off'}): flows evicted mid-batch keep their actions till it ends, every packet goes by its own flow`, () => {
      const cap = flowsCapture(64, 3, 2); // to vm1 and vm2 in turn; 64 flows into a table of 16, batches of 64
      const out = tempDir('full');
      const { report, datapath } = replay({ capture: cap, topology: TOPO, outDir: out, batchSize: 64, maxFlows: 16, fastLane });
      expect(report.packets.in).toBe(192);
      expect(report.packets.out).toBe(192);
      expect(report.drops).toEqual({});
      expect(report.flows.evicted).toBeGreaterThan(100);
      expect(datapath.flows.count).toBeLessThanOrEqual(16);
      // vm1's file holds frames to vm1 only, vm2's to vm2 only (a reused flow index had sent some the other way).
      for (const [port, mac] of [['vf1', '02:00:00:00:00:01'], ['vf2', '02:00:00:00:00:02']]) {
        const frames = captureFrames(join(out, `${port}.pcap`));
        expect(frames.length).toBe(96);
        for (const fr of frames) expect([...fr.subarray(0, 6)].map((x) => x.toString(16).padStart(2, '0')).join(':')).toBe(mac);
      }
    });
  }

  it('a table holding all the flows evicts none, however full (the room a batch needs is not made ahead)', () => {
    const cap = flowsCapture(1000, 5);
    const { report } = replay({ capture: cap, topology: TOPO, outDir: tempDir(), batchSize: 256, maxFlows: 1024 });
    expect(report.packets.out).toBe(5000);
    expect(report.flows.upcalls).toBe(1000);
    expect(report.flows.evicted).toBe(0);
    expect(report.flows.active).toBe(1000);
  });
});

describe('the caches in front of the megaflow table', () => {
  it('a flush after the slots grew (1 000 flows in a 16 384-flow table, 256-packet batches, flushed at packet 1 024): the exact-match cache on and off give the same flows (a review\'s find: the flow installed as the slots grew was in them twice, still found once removed, and the cache then gave its reused index to another key)', () => {
    const dir = tempDir('flush-grown');
    const topo = join(dir, 't.json');
    writeFileSync(topo, JSON.stringify(benchTopology(4)));
    const cap = join(dir, 'c.pcap');
    generate(cap, { frames: 3_000, size: 64, flows: 1000, vms: 4 });
    const run = (emc: boolean) => {
      const r = replay({
        capture: cap, topology: topo, outDir: join(dir, `o-${emc}`), batchSize: 256, maxFlows: 16384, fastLane: false,
        caches: { emc, smc: false, bloom: false },
        beforeBatch: (soFar, dp) => { if (soFar === 1024) dp.apply({ type: 'flow-flush' }); },
      });
      return { report: r.report, flows: r.datapath.dumpFlows().map((f) => `${[...f.key]} ${f.packets} ${f.bytes}`).sort() };
    };
    const on = run(true);
    const off = run(false);
    expect(off.report.flows).toMatchObject({ installed: 2000, upcalls: 2000, active: 1000 });
    expect(on.report.flows.installed).toBe(2000);
    expect(on.flows).toEqual(off.flows);
  });

  // Changes between batches, in random order and at random times, with every cache, the Bloom filter, the
  // generated lookup and the fast lane on, against none of them: a flow removed, flushed, expired, evicted
  // or given new actions, or a VM moved, is never served from what a cache kept of it.
  type Change = { at: number; kind: 'remove' | 'actions' | 'flush' | 'expire' | 'move' | 'sort'; r: number };
  const change = fc.record({
    at: fc.integer({ min: 0, max: 3_000 - 256 }), // (before the last batch of any size: every change is applied)
    kind: fc.constantFrom('remove' as const, 'actions' as const, 'flush' as const, 'expire' as const, 'move' as const, 'sort' as const),
    r: fc.integer({ min: 0, max: 6 }),
  });
  /** Applies the change to dp; chosen by the flows' keys and counters (the same in both runs), not by indices. */
  const apply = (c: Change, dp: Datapath): number => {
    const t = dp.flows;
    const live: number[] = [];
    for (let f = 0; f < t.indices; f++) if (t.live[f] === 1) live.push(f);
    const kw = (f: number, w: number) => t.key[f * KEY_WORDS + w];
    const pick = (f: number) => ((kw(f, 6) ^ kw(f, 10) ^ kw(f, 14)) >>> 0) % 7 <= c.r % 3; // ~1/7 to 3/7 of the flows
    let n = 0;
    switch (c.kind) {
      case 'remove':
        for (const f of live) if (pick(f)) { t.remove(f); expect(t.live[f]).toBe(0); n++; }
        return n;
      case 'actions': {
        // Flows of one action set installed again (same key and mask) with another's: no upcall follows.
        const sets = [...new Set(live.map((f) => t.act[f]))].sort((a, b) => a - b);
        if (sets.length < 2) return 0;
        const from = sets[c.r % sets.length];
        const to = sets[(c.r + 1) % sets.length];
        for (const f of live) {
          if (t.act[f] !== from || !pick(f)) continue;
          const s = t.sub[f];
          expect(t.install(t.key.slice(f * KEY_WORDS, (f + 1) * KEY_WORDS), t.mask.slice(s * KEY_WORDS, (s + 1) * KEY_WORDS), to, 0)).toBe(f);
          expect(t.act[f]).toBe(to);
          n++;
        }
        return n;
      }
      case 'flush':
        dp.apply({ type: 'flow-flush' });
        expect(t.count).toBe(0);
        return live.length;
      case 'expire': {
        const used = live.map((f) => t.usedOf(f)).sort((a, b) => a - b);
        if (used.length === 0) return 0;
        const cut = used[used.length >> 1];
        const idle = live.filter((f) => t.usedOf(f) < cut);
        expect(t.expire(cut)).toBe(idle.length); // the idle ones, and only they
        for (const f of live) expect(t.live[f]).toBe(idle.includes(f) ? 0 : 1);
        return idle.length;
      }
      case 'move': {
        // One VM's port given another VM's VPID (the two swap): the flows' VPIDs now resolve elsewhere.
        const [a, b] = [c.r % 4, (c.r + 1) % 4];
        const pa = dp.mapping.toPpid[vpidOf[a]];
        const pb = dp.mapping.toPpid[vpidOf[b]];
        dp.apply({ type: 'mapping-set', vpid: vpidOf[a], ppid: pb });
        dp.apply({ type: 'mapping-set', vpid: vpidOf[b], ppid: pa });
        expect([dp.mapping.toPpid[vpidOf[a]], dp.mapping.toPpid[vpidOf[b]]]).toEqual([pb, pa]);
        return pa !== pb ? 2 : 0;
      }
      case 'sort': {
        const order = () => Array.from((t as unknown as { order: Int16Array }).order.subarray(0, t.subCount));
        const before = order();
        t.sortSubtables();
        const o = order();
        for (let x = 1; x < o.length; x++) expect(t.subHits[o[x - 1]]).toBeGreaterThanOrEqual(t.subHits[o[x]]); // most hits first
        return o.join() !== before.join() ? 1 : 0; // (reordered)
      }
    }
  };
  let vpidOf: number[] = [];
  it('changes between batches (flows removed, flushed, expired, evicted or given new actions; VMs moved; subtables sorted) in random order: with every cache, the Bloom filter, the generated lookup and the fast lane (with its lookahead, the flow table reading ahead) on, the same bytes, drops and per-flow counters as with none', () => {
    const dir = tempDir('changes');
    const rulesTopo = join(dir, 't-rules.json');
    const plainTopo = join(dir, 't.json');
    const portRules = [
      { priority: 300, match: { eth_type: '0x0800', ip_proto: 17, tp_src: 1100 }, actions: ['drop'] },
      { priority: 250, match: { eth_type: '0x0800', ipv4_src: '10.1.0.0/24' }, actions: ['normal'] },
    ];
    writeFileSync(rulesTopo, JSON.stringify({ ...benchTopology(4), rules: portRules, wildcarding: 'proof' }));
    writeFileSync(plainTopo, JSON.stringify(benchTopology(4)));
    const caps = new Map<number, string>();
    const capOf = (flows: number) => {
      let c = caps.get(flows);
      if (c === undefined) { c = join(dir, `c${flows}.pcap`); generate(c, { frames: 3_000, size: 64, flows, vms: 4 }); caps.set(flows, c); }
      return c;
    };
    const seen = { remove: 0, actions: 0, flush: 0, expire: 0, move: 0, sort: 0, evicted: 0, smcHits: 0, emcHits: 0, lane: 0, gens: 0, bloomSkips: 0, bloomRebuilds: 0, subtables: 0, lookaheads: 0, touched: 0 };
    let runs = 0;
    fc.assert(fc.property(
      fc.constantFrom(40, 300, 1_000), fc.constantFrom(16, 64, 256), fc.constantFrom(16, 64, 1 << 14), fc.boolean(), fc.array(change, { maxLength: 8 }),
      // The caches of the run with them: all, or some (without the exact-match cache, lookups reach the subtables).
      fc.constantFrom([true, true, true], [true, true, true], [false, true, true], [false, false, true], [true, false, true]),
      (flows, batchSize, maxFlows, rules, changes, [emc, smc, bloom]) => {
        runs++;
        const todo = [...changes].sort((a, b) => a.at - b.at);
        const run = (on: boolean) => {
          const outDir = join(dir, `out-${runs}-${on}`);
          let next = 0;
          const r = replay({
            capture: capOf(flows), topology: rules ? rulesTopo : plainTopo, outDir, batchSize, maxFlows, fastLane: on,
            caches: on ? { emc, smc, bloom } : { emc: false, smc: false, bloom: false },
            beforeBatch: (soFar, dp) => {
              if (soFar === 0) {
                vpidOf = [0, 1, 2, 3].map((m) => dp.mapping.toVpid[10 + m]); // (the VMs' ports, vf0..vf3)
                if (on) dp.flows.regenEvery = 32; // the generated lookup made after a few batches
                if (on && runs % 2 === 0) {
                  // The lane's lookahead and the table's reads ahead, at any size (not only past the caches).
                  dp.fastLane.lookaheadMinFlows = 0;
                  dp.flows.touchSlots = 0;
                }
              }
              while (next < todo.length && todo[next].at <= soFar) {
                const c = todo[next++];
                const n = apply(c, dp);
                if (on) seen[c.kind] += n;
              }
            },
          });
          const flowsNow = r.datapath.dumpFlows().map((f) => `${[...f.key]}/${[...f.mask]} ${JSON.stringify(f.actions)} ${f.packets} ${f.bytes} ${f.used}`).sort();
          return { r, outDir, flowsNow };
        };
        const on = run(true);
        const off = run(false);
        const a = on.r.report;
        const b = off.r.report;
        expect(a.packets.in).toBe(3_000);
        expect(a.packets.out + a.packets.dropped).toBe(3_000); // every packet ends in one place
        expect(a.packets).toEqual(b.packets);
        expect(a.drops).toEqual(b.drops);
        expect(a.flows.upcalls).toBe(b.flows.upcalls);
        expect(a.flows.installed).toBe(b.flows.installed);
        expect(a.flows.evicted).toBe(b.flows.evicted);
        expect(a.flows.expired).toBe(b.flows.expired);
        expect(on.flowsNow).toEqual(off.flowsNow);
        const files = readdirSync(off.outDir).sort();
        expect(readdirSync(on.outDir).sort()).toEqual(files);
        for (const f of files) expect(readFileSync(join(on.outDir, f)).equals(readFileSync(join(off.outDir, f))), f).toBe(true);
        expect(b.flows.smcHits + b.flows.emcHits + b.flows.fastLane).toBe(0); // (off: nothing cached)
        seen.evicted += a.flows.evicted;
        seen.smcHits += a.flows.smcHits;
        seen.emcHits += a.flows.emcHits;
        seen.lane += a.flows.fastLane;
        seen.gens += on.r.datapath.flows.lookupGens;
        seen.lookaheads += on.r.datapath.fastLane.lookaheadHits;
        seen.touched += on.r.datapath.flows.touchedBatches;
        seen.bloomSkips += on.r.datapath.flows.bloomSkips;
        seen.bloomRebuilds += on.r.datapath.flows.bloomRebuilds;
        seen.subtables = Math.max(seen.subtables, on.r.datapath.flows.subCount);
      },
    ), { numRuns: 60, seed: 23 });
    expect(runs).toBe(60);
    // Each change and each cache was met, not bypassed.
    for (const k of ['remove', 'actions', 'flush', 'expire', 'move', 'sort', 'evicted', 'smcHits', 'emcHits', 'lane', 'gens', 'bloomSkips', 'bloomRebuilds', 'lookaheads', 'touched'] as const) expect(seen[k], k).toBeGreaterThan(0);
    expect(seen.subtables).toBeGreaterThan(4);
  });

  // The exact-match and signature-match caches in every combination, and the subtables' Bloom filter on and off,
  // forward the same bytes and count the same per flow.
  // A rule on one source port makes the proof's megaflows of many masks (9 subtables): the Bloom filter at work.
  const portRules = [
    { priority: 300, match: { eth_type: '0x0800', ip_proto: 17, tp_src: 1100 }, actions: ['drop'] },
    { priority: 250, match: { eth_type: '0x0800', ipv4_src: '10.1.0.0/24' }, actions: ['normal'] },
  ];
  for (const [wildcarding, rules] of [['proof', undefined], ['rule-fields', undefined], ['proof', portRules]] as const) {
    it(`on and off: byte-identical outputs and identical per-flow counters (${wildcarding}${rules ? ', a port rule' : ''}, 20 000 frames over 3 000 flows to 8 VMs)`, () => {
      const dir = tempDir('caches');
      const cap = join(dir, 'c.pcap');
      const topo = join(dir, 't.json');
      generate(cap, { frames: 20_000, size: 64, flows: 3_000, vms: 8 });
      writeFileSync(topo, JSON.stringify({ ...benchTopology(8, wildcarding), ...(rules ? { rules } : {}) }));
      const runs = ([[true, true, true], [false, true, true], [true, false, true], [false, false, true], [true, true, false], [false, false, false]] as const).map(([emc, smc, bloom]) => {
        const outDir = join(dir, `out-${emc}-${smc}-${bloom}`);
        const r = replay({ capture: cap, topology: topo, outDir, caches: { emc, smc, bloom }, maxFlows: 1 << 14 });
        const flows = r.datapath.dumpFlows().map((f) => `${[...f.key]}/${[...f.mask]} ${JSON.stringify(f.actions)} ${f.packets} ${f.bytes}`).sort();
        return { outDir, report: r.report, flows, subtables: r.datapath.flows.subCount, bloomSkips: r.datapath.flows.bloomSkips };
      });
      const [base, ...rest] = runs;
      if (rules) {
        expect(base.subtables).toBeGreaterThan(4);
        expect(base.bloomSkips).toBeGreaterThan(0);
        expect(base.report.packets.dropped).toBeGreaterThan(0); // the port rule's
      } else {
        expect(base.report.packets.dropped).toBe(0);
      }
      expect(runs[4].bloomSkips + runs[5].bloomSkips).toBe(0);
      expect(base.report.packets.in).toBe(20_000);
      expect(base.report.packets.out + base.report.packets.dropped).toBe(20_000);
      expect(base.flows.length).toBeGreaterThan(wildcarding === 'proof' ? 0 : 2_000);
      if (wildcarding === 'rule-fields') expect(base.report.flows.smcHits + base.report.flows.emcHits).toBeGreaterThan(0);
      for (const r of rest) {
        expect(r.report.packets).toEqual(base.report.packets);
        expect(r.report.flows.upcalls).toBe(base.report.flows.upcalls);
        expect(r.report.flows.installed).toBe(base.report.flows.installed);
        expect(r.flows).toEqual(base.flows);
        const files = readdirSync(base.outDir).sort();
        expect(readdirSync(r.outDir).sort()).toEqual(files);
        for (const f of files) expect(readFileSync(join(r.outDir, f)).equals(readFileSync(join(base.outDir, f))), f).toBe(true);
      }
    });
  }
});
