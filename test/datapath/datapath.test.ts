import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { replay } from '../../control/replay.js';
import { eth, ipv4, udp, writePcap } from '../../fixtures/packets.js';
import { FIXTURES, cleanTemp, tempDir } from '../helpers.js';

afterAll(cleanTemp);

const TOPO = join(FIXTURES, 'topology.json');
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
