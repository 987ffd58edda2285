import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { replay } from '../../control/replay.js';
import { eth, ipv4, udp, writePcap } from '../../fixtures/packets.js';
import { FIXTURES, cleanTemp, tempDir } from '../helpers.js';

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

