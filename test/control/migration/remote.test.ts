/**
 * The source's side of a migration between hosts (issue 21): once the VM
 * runs on host B, its interface here becomes a remote one behind B — the
 * flows that sent to its VPID are revalidated into tunnel outputs toward B
 * (rewrites counted here), its VPID unmapped here.
 */
import { describe, expect, it } from 'vitest';
import { Fpag } from '../../../control/fpag.js';
import { topologyFrom, type TopologyInput } from '../../../control/topology.js';
import { PacketBatch } from '../../../datapath/batch.js';
import { Datapath, type TxPort } from '../../../datapath/datapath.js';
import { FpoError } from '../../../datapath/errors.js';
import { concat, eth, ipv4, udp } from '../../../fixtures/packets.js';

class Keep implements TxPort {
  frames: Uint8Array[] = [];
  writeBatch(batch: PacketBatch, idx: Uint16Array, from: number, n: number, enc?: Int32Array, encap?: import('../../../datapath/actions/encap.js').Encap): void {
    for (let j = from; j < from + n; j++) {
      const i = idx[j];
      const e = enc?.[j] ?? -1;
      if (e >= 0 && encap !== undefined) {
        const out = new Uint8Array(batch.caplen[i] + 128);
        const hl = encap.write(out, 0, e >> 1, (e & 1) === 1, batch.wirelen[i], batch.hash[i]);
        out.set(batch.buf.subarray(batch.off[i], batch.off[i] + batch.caplen[i]), hl);
        encap.finish(out, 0, e >> 1, hl, batch.caplen[i]);
        this.frames.push(out.subarray(0, hl + batch.caplen[i]));
      } else this.frames.push(batch.buf.slice(batch.off[i], batch.off[i] + batch.caplen[i]));
    }
  }
}

describe('a migrated VM\'s interface becomes remote at the source', () => {
  it('flows to it are revalidated into tunnel outputs toward the new host (counted); its VPID unmapped; refusals change nothing', () => {
    const topo = topologyFrom({
      name: 'a',
      ports: [{ name: 'uplink0', ppid: 1, role: 'uplink' }, { name: 'vf1', ppid: 11 }, { name: 'vf2', ppid: 12 }],
      segments: [{ name: 'blue', vni: 5001 }],
      nodes: [
        { name: 'vm1', interfaces: [{ name: 'vm1-eth0', mac: '02:00:00:00:0a:01', ip: '10.0.0.1', segment: 'blue', port: 'vf1' }] },
        { name: 'vm2', interfaces: [{ name: 'vm2-eth0', mac: '02:00:00:00:0a:02', ip: '10.0.0.2', segment: 'blue', port: 'vf2' }] },
      ],
      tunnel: { vtep: '192.168.0.1', mac: '02:fe:00:00:00:01', kind: 'vxlan', remotes: [{ name: 'hostB', vtep: '192.168.0.2', mac: '02:fe:00:00:00:02', uplink: 'uplink0', interfaces: [{ name: 'vmB9-eth0', mac: '02:00:00:00:0b:09', segment: 'blue' }] }] },
    } as TopologyInput, 'a.json');
    const dp = new Datapath({ maxFlows: 256 });
    const ports = new Map([[1, new Keep()], [11, new Keep()], [12, new Keep()]]);
    for (const [p, k] of ports) dp.addPort(p, k);
    const fpag = new Fpag(topo, dp);
    fpag.start();
    const batch = new PacketBatch(8);
    let now = 10;
    const send = (f: Uint8Array, inPpid: number) => {
      for (const k of ports.values()) k.frames = [];
      batch.batchSetBuffer(concat(f));
      batch.count = 1;
      batch.off[0] = 0; batch.caplen[0] = f.length; batch.wirelen[0] = f.length; batch.inPpid[0] = inPpid; batch.drop[0] = 0;
      dp.process(batch, (now += 10));
    };
    const toVm1 = eth('02:00:00:00:0a:01', '02:00:00:00:0a:02', 0x0800, ipv4({ src: '10.0.0.2', dst: '10.0.0.1', proto: 17 }, udp(7, 9, new Uint8Array(30))));
    send(toVm1, 12);
    expect(ports.get(11)!.frames).toHaveLength(1); // local: to vf1
    // Refused: an unknown host, an unknown interface, an uplink — nothing changes.
    for (const [n, h, re] of [['vm1-eth0', 'hostZ', /"hostZ" is no remote host of this host's tunnel \(hostB\)/], ['vm9', 'hostB', /no interface named "vm9"/], ['vmB9-eth0', 'hostB', /no interface named "vmB9-eth0"/]] as const) {
      expect(() => fpag.moveToRemote(n, h)).toThrow(FpoError);
      expect(() => fpag.moveToRemote(n, h)).toThrow(re);
    }
    send(toVm1, 12);
    expect(ports.get(11)!.frames).toHaveLength(1);
    const r = fpag.moveToRemote('vm1-eth0', 'hostB');
    expect(() => fpag.moveToRemote('vm1-eth0', 'hostB')).toThrow(/vm1-eth0 is not a local interface here/); // once only
    expect(r.flowRewrites).toBeGreaterThan(0);
    expect(dp.mapping.toPpid[r.vpid]).toBe(-1);
    // The next frame to vm1 goes through the tunnel to host B: VXLAN on the uplink, to 192.168.0.2, VNI 5001, the frame inside.
    send(toVm1, 12);
    expect(ports.get(11)!.frames).toHaveLength(0);
    const up = ports.get(1)!.frames;
    expect(up).toHaveLength(1);
    const o = up[0];
    expect([...o.subarray(30, 34)]).toEqual([192, 168, 0, 2]); // outer IPv4 destination
    expect((o[36] << 8) | o[37]).toBe(4789); // VXLAN
    expect((o[46] << 16) | (o[47] << 8) | o[48]).toBe(5001);
    expect(Buffer.from(o.subarray(50)).equals(Buffer.from(toVm1))).toBe(true);
    const st = dp.stats();
    expect(st.packetsIn).toBe(st.delivered + st.dropped);
  });
});
