import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { replay } from '../../../control/replay.js';
import { topologyFrom } from '../../../control/topology.js';
import { eth, geneve, ipv4, udp, vxlan, writePcap } from '../../../fixtures/packets.js';
import { cleanTemp, needTool, tempDir, tsharkFields } from '../../helpers.js';

afterAll(cleanTemp);

const VTEP = '192.168.0.1';
const UPLINK_MAC = '02:fe:00:00:00:01';

function topology(specialPort: boolean) {
  return topologyFrom({
    ports: [{ name: 'uplink0', ppid: 1, role: 'uplink', segments: ['blue'] }, { name: 'vf1', ppid: 11 }, { name: 'vf2', ppid: 12 }, ...(specialPort ? [{ name: 'svc0', ppid: 20 }] : [])],
    segments: [{ name: 'blue', vni: 5001 }],
    nodes: [
      { name: 'vm1', interfaces: [{ name: 'vm1-eth0', mac: '02:00:00:00:00:01', segment: 'blue', port: 'vf1' }] },
      { name: 'vm2', interfaces: [{ name: 'vm2-eth0', mac: '02:00:00:00:00:02', segment: 'blue', port: 'vf2' }] },
    ],
    tunnel: { vtep: VTEP, ...(specialPort ? { specialPort: 'svc0' } : {}) },
    replay: { inputPort: 'uplink0' },
  }, 'tunnel-test.json');
}

/** Inner frame to vm n; the inner UDP source port says whether the outer packet is flagged (odd = flagged). */
const inner = (n: number, sport: number) => eth(`02:00:00:00:00:0${n}`, '02:aa:00:00:00:09', 0x0800, ipv4({ src: '172.16.0.9', dst: `10.0.0.${n}`, proto: 17 }, udp(sport, 7000, new Uint8Array(20))));
const outer = (dst: string, dport: number, tun: Uint8Array) => eth(UPLINK_MAC, '02:fe:00:00:00:02', 0x0800, ipv4({ src: '192.168.0.2', dst, proto: 17 }, udp(49152, dport, tun)));
const FLAG_OPT: [number, number, Uint8Array] = [0xfff0, 0x01, new Uint8Array(0)];
const OTHER_OPT: [number, number, Uint8Array] = [0x0103, 0x05, new Uint8Array(4)];

function capture(): { path: string; flagged: number; plain: number } {
  const recs = [];
  let flagged = 0;
  let plain = 0;
  for (let i = 0; i < 200; i++) {
    const isFlagged = i % 7 === 0;
    const sport = 2000 + i * 2 + (isFlagged ? 1 : 0);
    const vm = 1 + (i % 2);
    let frame: Uint8Array;
    if (i % 3 === 0) {
      const t = vxlan(5001, inner(vm, sport));
      if (isFlagged) t[1] |= 0x80;
      frame = outer(VTEP, 4789, t);
    } else {
      frame = outer(VTEP, 6081, geneve(5001, inner(vm, sport), isFlagged ? [OTHER_OPT, FLAG_OPT] : [OTHER_OPT]));
    }
    if (isFlagged) flagged++;
    else plain++;
    recs.push({ sec: 1000, usec: i, data: frame });
  }
  const path = join(tempDir(), 'tunnel.pcap');
  writePcap(path, recs);
  return { path, flagged, plain };
}

describe('flag check (receive side)', () => {
  it('sends every flagged packet, and only those, to the special port untouched; the rest are decapsulated onto the fast path', (ctx) => {
    needTool(ctx, 'tshark', 'decodes the outputs');
    const { path, flagged, plain } = capture();
    const out = tempDir();
    const { report } = replay({ capture: path, topology: topology(true), outDir: out });
    expect(report.tunnel).toEqual({ flagged, unflagged: plain, specialTo: 'svc0', sent: 0, flaggedSent: 0 });
    expect(report.packets.in).toBe(report.packets.out + report.packets.dropped);
    expect(report.packets.dropped).toBe(0);
    const svc = report.ports.find((p) => p.name === 'svc0')!;
    expect(svc.tx.packets).toBe(flagged);
    const vms = report.ports.filter((p) => p.name.startsWith('vf')).reduce((n, p) => n + p.tx.packets, 0);
    expect(vms).toBe(plain);
    // The special port got the outer packets as they came: flag present on every one.
    for (const [vni, geneveOpt, vxlanFlags, udpSrc] of tsharkFields(join(out, 'svc0.pcap'), ['vxlan.vni', 'geneve.option.class', 'vxlan.flags', 'udp.srcport'])) {
      expect(vni || geneveOpt, 'a tunnel packet').toBeTruthy();
      if (geneveOpt) expect(geneveOpt.split(',')).toContain('0xfff0');
      else expect(parseInt(vxlanFlags, 16) & 0x0080).toBe(0x0080);
      expect(Number(udpSrc.split(',')[1]) % 2, 'inner sport odd: flagged').toBe(1);
    }
    // The VMs got inner frames only, none of them flagged.
    for (const f of ['vf1.pcap', 'vf2.pcap']) {
      for (const [proto, sport] of tsharkFields(join(out, f), ['frame.protocols', 'udp.srcport'])) {
        expect(proto).not.toMatch(/vxlan|geneve/);
        expect(Number(sport) % 2).toBe(0);
      }
    }
  });

  it('without a special port, flagged packets go to the FPAG and are counted there', () => {
    const { path, flagged } = capture();
    const { report, fpag } = replay({ capture: path, topology: topology(false), outDir: tempDir() });
    expect(report.tunnel.flagged).toBe(flagged);
    expect(report.tunnel.specialTo).toBe('fpag');
    expect(fpag.specialByPort.get(1)).toBe(flagged);
  });

  it('a tunnel packet for us that is malformed or cut is dropped with its reason, never misclassified', () => {
    const good = outer(VTEP, 6081, geneve(5001, inner(1, 2000), [OTHER_OPT]));
    const badOpt = geneve(5001, inner(1, 2000), [OTHER_OPT]);
    badOpt[0] = 0x3f; // options longer than the packet
    const path = join(tempDir(), 'bad.pcap');
    writePcap(path, [
      { sec: 1, usec: 0, data: outer(VTEP, 6081, badOpt) },
      { sec: 1, usec: 1, data: good.subarray(0, 60), wirelen: good.length },
      { sec: 1, usec: 2, data: outer(VTEP, 4789, vxlan(5001, inner(1, 2000), 0)) },
      { sec: 1, usec: 3, data: good },
    ]);
    const { report } = replay({ capture: path, topology: topology(true), outDir: tempDir() });
    expect(report.drops).toEqual({ geneveBad: 1, tunnelTruncated: 1, vxlanBad: 1 });
    expect(report.tunnel).toEqual({ flagged: 0, unflagged: 1, specialTo: 'svc0', sent: 0, flaggedSent: 0 });
  });

  it('tunnel packets to another endpoint are transit traffic, switched on their outer headers', () => {
    const path = join(tempDir(), 'transit.pcap');
    const t = geneve(5001, inner(1, 2001), [FLAG_OPT]);
    writePcap(path, [{ sec: 1, usec: 0, data: eth('02:00:00:00:00:02', '02:fe:00:00:00:02', 0x0800, ipv4({ src: '192.168.0.2', dst: '192.168.0.9', proto: 17 }, udp(49152, 6081, t))) }]);
    const { report } = replay({ capture: path, topology: topology(true), outDir: tempDir() });
    expect(report.tunnel).toEqual({ flagged: 0, unflagged: 0, specialTo: 'svc0', sent: 0, flaggedSent: 0 });
    expect(report.ports.find((p) => p.name === 'vf2')!.tx.packets).toBe(1);
  });
});
