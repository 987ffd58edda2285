import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
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
