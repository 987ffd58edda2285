import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { replay } from '../../control/replay.js';
import { CaptureClock, monotonicMs } from '../../datapath/clock.js';
import { eth, ipv4, udp, writePcap, type Record } from '../../fixtures/packets.js';
import { FIXTURES, cleanTemp, tempDir } from '../helpers.js';

afterAll(cleanTemp);

describe('CaptureClock', () => {
  it('follows capture time step by step; a step past the bound is cut to it and counted; a step back is 0 and counted', () => {
    const c = new CaptureClock(60_000);
    expect(c.advance(1_000_000)).toBe(1_000_000);
    expect(c.advance(1_000_500)).toBe(1_000_500);
    expect(c.advance(1_060_500)).toBe(1_060_500); // exactly the bound: taken
    expect(c.jumps).toBe(0);
    expect(c.advance(0xffffffff * 1000)).toBe(1_120_500); // wild: one bounded step
    expect(c.jumps).toBe(1);
    expect(c.advance(1_061_500)).toBe(1_120_500); // back to the capture's own time: a step back
    expect(c.backs).toBe(1);
    expect(c.advance(1_062_500)).toBe(1_121_500); // and on from there
    expect(c.advance(NaN)).toBe(1_121_500);
  });

  it('monotonicMs never goes back and is near the wall clock', () => {
    let last = monotonicMs();
    for (let i = 0; i < 10_000; i++) {
      const t = monotonicMs();
      expect(t).toBeGreaterThanOrEqual(last);
      last = t;
    }
    expect(Math.abs(last - Date.now())).toBeLessThan(60_000);
  });
});

describe('a replay with one wild timestamp', () => {
  it('still expires idle flows: one packet stamped 0xffffffff does not freeze the clock', () => {
    const dir = tempDir('clock');
    const T = 1_700_000_000;
    // One flow per destination (L2 megaflows match eth_dst): vm1, vm2, vm3 (VLAN 20 on the uplink), then vm4 alone.
    const pkt = (vm: number) => eth(`02:00:00:00:00:0${vm}`, '02:ee:00:00:00:01', 0x0800, ipv4({ src: '192.0.2.1', dst: '10.0.0.1', proto: 17 }, udp(1000, 9, new Uint8Array(20))), vm >= 3 ? [[0x8100, 20]] : []);
    const recs: Record[] = [
      { sec: T, usec: 0, data: pkt(1) },
      { sec: 0xffffffff, usec: 0, data: pkt(2) }, // the wild one
      { sec: T + 2, usec: 0, data: pkt(3) }, // then idle for 30 s of capture time
    ];
    for (let s = 3; s <= 33; s++) recs.push({ sec: T + s, usec: 0, data: pkt(4) });
    writePcap(join(dir, 'in.pcap'), recs);
    const { report, datapath } = replay({ capture: join(dir, 'in.pcap'), topology: join(FIXTURES, 'topology.json'), outDir: join(dir, 'out'), batchSize: 1 });
    expect(report.packets.in).toBe(34);
    expect(report.packets.in).toBe(report.packets.out + report.packets.dropped);
    // Every flow but the last one's went idle for more than 10 s of capture time and expired.
    expect(report.flows.installed).toBe(4);
    expect(report.flows.expired).toBe(3);
    expect(report.flows.active).toBe(1);
    expect(datapath.now).toBeLessThan((T + 200) * 1000);
    expect(report.clock).toEqual({ jumps: 1, backs: 1 });
  });
});
