import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Fpag } from '../../control/fpag.js';
import { topologyFrom, type TopologyInput } from '../../control/topology.js';
import { KEY_WORDS, W_ETH_TYPE, W_IN_PORT, W_IP_DST, W_IP_SRC, W_TP, W_VLAN, setField } from '../../datapath/classifier/flow-key.js';
import { Datapath } from '../../datapath/datapath.js';
import { D } from '../../datapath/drops.js';
import { FpoError } from '../../datapath/errors.js';

const NOPORT = { writeBatch: () => undefined };

// Port security is off here unless a test turns it on: these keys are made
// without a source MAC; the port-security tests below give it one.
function setup(extra: Partial<TopologyInput> = {}, portSecurity = false) {
  const file = {
    ports: [{ name: 'up', ppid: 1, role: 'uplink', segments: ['a', 'b'] }, { name: 'p1', ppid: 11 }, { name: 'p2', ppid: 12 }, { name: 'p3', ppid: 13 }],
    segments: [{ name: 'a' }, { name: 'b', vlan: 7 }],
    nodes: [
      { name: 'v1', interfaces: [{ name: 'v1', mac: '02:00:00:00:00:01', ip: '10.1.2.3', segment: 'a', port: 'p1', portSecurity }] },
      { name: 'v2', interfaces: [{ name: 'v2', mac: '02:00:00:00:00:02', segment: 'a', port: 'p2', portSecurity }] },
      { name: 'v3', interfaces: [{ name: 'v3', mac: '02:00:00:00:00:03', ip: '10.0.0.3', segment: 'b', port: 'p3', portSecurity }] },
    ],
    ...extra,
  };
  const topo = topologyFrom(file, 't.json');
  const dp = new Datapath({ maxFlows: 4096 });
  for (const p of topo.ports) dp.addPort(p.ppid, NOPORT);
  const fpag = new Fpag(topo, dp);
  fpag.start();
  return { topo, dp, fpag };
}

/** The flow for k: found, or installed from the FPAG's decision (as an upcall would) and found. */
function lookupOrInstall(dp: ReturnType<typeof setup>['dp'], fpag: ReturnType<typeof setup>['fpag'], k: Uint32Array): number {
  let f = dp.flows.lookup(k);
  if (f < 0) {
    const d = fpag.decide(k);
    dp.apply({ type: 'flow-install', key: k, mask: d.mask, actions: d.actions });
    f = dp.flows.lookup(k);
  }
  return f;
}

function key(inPort: number, dst: string, f: { vlan?: number; ethType?: number; proto?: number; src?: number; dstIp?: number; sport?: number; dport?: number; srcMac?: string } = {}): Uint32Array {
  const k = new Uint32Array(KEY_WORDS);
  const m = new Uint32Array(KEY_WORDS);
  k[W_IN_PORT] = inPort;
  setField(k, m, 0, 'eth_dst', Uint8Array.from(dst.split(':').map((x) => parseInt(x, 16))));
  if (f.srcMac !== undefined) setField(k, m, 0, 'eth_src', Uint8Array.from(f.srcMac.split(':').map((x) => parseInt(x, 16))));
  if (f.vlan !== undefined) k[W_VLAN] = ((0x8100 << 16) | f.vlan) >>> 0;
  k[W_ETH_TYPE] = (((f.ethType ?? 0x0800) << 16) | ((f.proto ?? 6) << 8)) >>> 0;
  k[W_IP_SRC] = f.src ?? 0;
  k[W_IP_DST] = f.dstIp ?? 0;
  k[W_TP] = (((f.sport ?? 0) << 16) | (f.dport ?? 0)) >>> 0;
  return k;
}

describe('FPAG decisions', () => {
  it('unicast to a known MAC outputs to that interface\'s VPID', () => {
    const { fpag } = setup();
    const d = fpag.decide(key(1, '02:00:00:00:00:02'));
    expect(d.actions).toEqual([{ op: 'output', vpid: 2 }]);
    expect(d.rule).toBe(-1);
  });

  it('an interface given a new VPID: decisions for its packets follow it at once (the old VPID, just decided for, is unknown; the new one is v1\'s)', () => {
    const { fpag } = setup();
    // (Decisions keep the last in_port's endpoint: a batch's upcalls come from one port.)
    expect(fpag.decide(key(1, '02:00:00:00:00:02')).actions).toEqual([{ op: 'output', vpid: 2 }]);
    fpag.migrate('v1', 'p1', 9);
    expect(fpag.decide(key(1, '02:00:00:00:00:02')).actions).toEqual([{ op: 'drop', reason: D.noDestination }]);
    expect(fpag.decide(key(9, '02:00:00:00:00:02')).actions).toEqual([{ op: 'output', vpid: 2 }]);
    expect(fpag.decide(key(2, '02:00:00:00:00:01')).actions).toEqual([{ op: 'output', vpid: 9 }]);
    fpag.migrate('v1', 'p1', 1);
    expect(fpag.decide(key(9, '02:00:00:00:00:02')).actions).toEqual([{ op: 'drop', reason: D.noDestination }]);
    expect(fpag.decide(key(1, '02:00:00:00:00:02')).actions).toEqual([{ op: 'output', vpid: 2 }]);
  });

  it('broadcast floods to the other members of the segment, uplink included', () => {
    const { fpag } = setup();
    expect(fpag.decide(key(1, 'ff:ff:ff:ff:ff:ff')).actions).toEqual([{ op: 'output', vpid: 2 }, { op: 'output', vpid: 4 }]);
  });

  it('traffic from the uplink belongs to the segment of its VLAN', () => {
    const { fpag } = setup();
    // VLAN 7 is segment b: v3's port is an access port, so the tag comes off (pop_vlan) on the way.
    expect(fpag.decide(key(4, 'ff:ff:ff:ff:ff:ff', { vlan: 7 })).actions).toEqual([{ op: 'pop_vlan' }, { op: 'output', vpid: 3 }]);
    // Untagged, so segment a: v3 (segment b) is unknown there and the packet floods a's members.
    expect(fpag.decide(key(4, '02:00:00:00:00:03')).actions).toEqual([{ op: 'output', vpid: 1 }, { op: 'output', vpid: 2 }]);
    expect(fpag.decide(key(4, '02:00:00:00:00:01', { vlan: 99 })).actions).toEqual([{ op: 'drop', reason: D.noDestination }]);
  });

  it('the highest-priority matching rule wins, and the mask covers what proves each rule tried', () => {
    const { fpag } = setup({
      rules: [
        { priority: 10, match: { tp_dst: 22 }, actions: ['drop'] },
        { priority: 20, match: { ipv4_src: '10.0.0.0/8', tp_dst: 22 }, actions: ['output:v3'] },
      ],
    });
    const d = fpag.decide(key(1, '02:00:00:00:00:02', { src: 0x0a010203, dport: 22 }));
    expect(d.actions).toEqual([{ op: 'output', vpid: 3 }]);
    expect(d.mask[W_IP_SRC]).toBe(0xff000000);
    const e = fpag.decide(key(1, '02:00:00:00:00:02', { src: 0x0b010203, dport: 22 }));
    expect(e.actions).toEqual([{ op: 'drop', reason: D.ruleDrop }]);
    expect(e.mask[W_IP_SRC]).toBe(0xff000000);
    expect(e.mask[W_TP] & 0xffff).toBe(0xffff);
  });

  it('a rule a packet misses costs the megaflow only what proves the miss: one address prefix, not every field (a million sources stay one flow)', () => {
    const { dp, fpag } = setup({ rules: [{ priority: 100, match: { eth_type: '0x0800', ipv4_src: '192.0.2.1', ip_proto: 17, tp_src: 7 }, actions: ['drop'] }] });
    const d = fpag.decide(key(4, '02:00:00:00:00:02', { proto: 17, src: 0x0a010203, sport: 5555, dport: 9 }));
    expect(d.actions).toEqual([{ op: 'output', vpid: 2 }]);
    expect(d.mask[W_IP_SRC]).toBe(0x80000000); // 10.x and 192.0.2.1 differ in the first bit
    expect(d.mask[W_TP]).toBe(0); // the ports prove nothing more: not looked at
    // 2000 sources and ports to one VM: one megaflow; the rule's own source still hits the rule.
    for (let n = 0; n < 2000; n++) {
      const k = key(4, '02:00:00:00:00:02', { proto: 17, src: (0x0a000000 + n * 7919) >>> 0, sport: 1024 + n, dport: 9 });
      expect(dp.actionSets.describe(dp.flows.act[lookupOrInstall(dp, fpag, k)])).toEqual([{ op: 'output', vpid: 2 }]);
    }
    expect(dp.flows.count).toBe(1);
    const hit = key(4, '02:00:00:00:00:02', { proto: 17, src: 0xc0000201, sport: 7, dport: 9 });
    expect(dp.actionSets.describe(dp.flows.act[lookupOrInstall(dp, fpag, hit)])).toEqual([{ op: 'drop', reason: D.ruleDrop }]);
    // A source that shares 10 bits with the rule's: the prefix grows to where they part.
    const near = fpag.decide(key(4, '02:00:00:00:00:02', { proto: 17, src: 0xc0200201, sport: 7, dport: 9 }));
    expect(near.mask[W_IP_SRC]).toBe(0xffe00000);
  });

  it('a rule with an unknown field or action is refused naming it', () => {
    expect(() => setup({ rules: [{ priority: 1, match: { colour: 3 }, actions: ['drop'] }] })).toThrowError(/rules\[0\]\.match: unknown field "colour"/);
    expect(() => setup({ rules: [{ priority: 1, match: { tp_dst: 70000 }, actions: ['drop'] }] })).toThrowError(/rules\[0\]\.match\.tp_dst: expected an integer in 0\.\.65535/);
    expect(() => setup({ rules: [{ priority: 1, match: {}, actions: ['output:nobody'] }] })).toThrowError(FpoError);
    expect(() => setup({ rules: [{ priority: 1, match: {}, actions: ['explode'] }] })).toThrowError(/actions\[0\]: unknown action "explode"/);
  });

  it('megaflows agree with the FPAG on random packets and overlapping rules (property)', () => {
    const macs = ['02:00:00:00:00:01', '02:00:00:00:00:02', '02:00:00:00:00:03', 'ff:ff:ff:ff:ff:ff', '02:00:00:00:00:09'];
    const rule = fc.record({
      priority: fc.integer({ min: 0, max: 5 }),
      match: fc.record({ tp_dst: fc.constantFrom(22, 80, 443), ip_proto: fc.constantFrom(6, 17), ipv4_src: fc.constantFrom('10.0.0.0/8', '10.1.0.0/16', '10.1.2.3') }, { requiredKeys: [] }),
      actions: fc.constantFrom(['drop'], ['output:v1'], ['output:v2', 'output:v3'], ['normal']),
    });
    const pkt = fc.record({
      inPort: fc.constantFrom(1, 2, 3, 4),
      dst: fc.constantFrom(...macs),
      vlan: fc.constantFrom(undefined, 7),
      proto: fc.constantFrom(6, 17),
      src: fc.constantFrom(0x0a000001, 0x0a010203, 0x0a010299, 0x0b000001),
      dport: fc.constantFrom(22, 80, 443, 8080),
    });
    fc.assert(fc.property(fc.array(rule, { maxLength: 6 }), fc.array(pkt, { minLength: 1, maxLength: 60 }), (rules, pkts) => {
      const { dp, fpag } = setup({ rules: rules.map((r) => ({ ...r, actions: [...r.actions] })) });
      for (const p of pkts) {
        const k = key(p.inPort, p.dst, { vlan: p.vlan, proto: p.proto, src: p.src, dport: p.dport });
        const f = lookupOrInstall(dp, fpag, k);
        expect(f).toBeGreaterThanOrEqual(0);
        expect(dp.actionSets.describe(dp.flows.act[f])).toEqual(fpag.decide(k).actions.length ? fpag.decide(k).actions : [{ op: 'drop', reason: D.noDestination }]);
      }
    }), { numRuns: 300 });
  });
});

describe('VLAN tags: VM ports are access ports, the uplink a trunk', () => {
  it('a frame from a VM in a VLAN segment gets push_vlan before its outputs to uplinks only', () => {
    const { fpag } = setup({ nodes: [
      { name: 'v1', interfaces: [{ name: 'v1', mac: '02:00:00:00:00:01', segment: 'a', port: 'p1', portSecurity: false }] },
      { name: 'v3', interfaces: [{ name: 'v3', mac: '02:00:00:00:00:03', segment: 'b', port: 'p3', portSecurity: false }] },
      { name: 'v4', interfaces: [{ name: 'v4', mac: '02:00:00:00:00:04', segment: 'b', port: 'p2', portSecurity: false }] },
    ] });
    // v3 floods segment b: untagged to v4, tagged 7 to the uplink (VPID 4).
    expect(fpag.decide(key(2, 'ff:ff:ff:ff:ff:ff')).actions).toEqual([{ op: 'output', vpid: 3 }, { op: 'push_vlan', vid: 7 }, { op: 'output', vpid: 4 }]);
    // v1 is in the untagged segment a: its flood goes out as it is.
    expect(fpag.decide(key(1, 'ff:ff:ff:ff:ff:ff')).actions).toEqual([{ op: 'output', vpid: 4 }]);
  });

  it('rule outputs get the ops too, and their mask then covers in_port (and the VLAN, from an uplink)', () => {
    const { fpag } = setup({ rules: [{ priority: 10, match: { tp_dst: 161 }, actions: ['output:v1', 'output:up'] }] });
    const fromUp = fpag.decide(key(4, '02:00:00:00:00:09', { vlan: 7, dport: 161 }));
    expect(fromUp.actions).toEqual([{ op: 'output', vpid: 4 }, { op: 'pop_vlan' }, { op: 'output', vpid: 1 }]);
    expect(fromUp.mask[W_IN_PORT]).toBe(0xffffffff);
    expect(fromUp.mask[W_VLAN] & 0xfff).toBe(0xfff);
    const fromV3 = fpag.decide(key(3, '02:00:00:00:00:09', { dport: 161 }));
    expect(fromV3.actions).toEqual([{ op: 'output', vpid: 1 }, { op: 'push_vlan', vid: 7 }, { op: 'output', vpid: 4 }]);
    expect(fromV3.mask[W_IN_PORT]).toBe(0xffffffff);
    // Untagged from the uplink, from v1 (segment a): nothing to change.
    expect(fpag.decide(key(4, '02:00:00:00:00:09', { dport: 161 })).actions).toEqual([{ op: 'output', vpid: 1 }, { op: 'output', vpid: 4 }]);
    expect(fpag.decide(key(1, '02:00:00:00:00:09', { dport: 161 })).actions).toEqual([{ op: 'output', vpid: 1 }, { op: 'output', vpid: 4 }]);
  });
});

describe('revalidation', () => {
  it('a rule change deletes flows whose decision now looks at more fields, and the next packet gets the new decision', () => {
    const { dp, fpag } = setup();
    const k80 = key(1, '02:00:00:00:00:02', { dport: 80 });
    const install = (k: Uint32Array) => { const d = fpag.decide(k); dp.apply({ type: 'flow-install', key: k, mask: d.mask, actions: d.actions }); };
    install(k80);
    install(key(1, '02:00:00:00:00:01', { dport: 80 }));
    expect(dp.flows.count).toBe(2); // to v2, and v1 → v1 (the sender itself: a drop)
    expect(dp.flows.lookup(k80)).toBeGreaterThanOrEqual(0);
    const r = fpag.setRules([{ priority: 10, table: 0, special: false, match: { tp_dst: 80 }, actions: ['drop'] }]);
    expect(r).toEqual({ kept: 0, modified: 0, deleted: 2 });
    expect(dp.flows.count).toBe(0);
    expect(dp.flows.lookup(k80)).toBe(-1); // stale flow gone: no forwarding where the rules no longer say
    install(k80);
    const f = dp.flows.lookup(k80);
    expect(dp.actionSets.describe(dp.flows.act[f])).toEqual([{ op: 'drop', reason: D.ruleDrop }]);
  });

  it('a rule change within a flow\'s mask rewrites its actions in place and keeps the others', () => {
    // The rule names in_port: with a VLAN segment in the topology, a decision with outputs covers
    // in_port (a VLAN op depends on it), so a drop rule without it gives a wider mask than an output rule.
    const { dp, fpag } = setup({ rules: [{ priority: 10, match: { in_port: 'v1', tp_dst: 22 }, actions: ['drop'] }] });
    const install = (k: Uint32Array) => { const d = fpag.decide(k); dp.apply({ type: 'flow-install', key: k, mask: d.mask, actions: d.actions }); return dp.flows.lookup(k); };
    const f22 = install(key(1, '02:00:00:00:00:02', { dport: 22 }));
    const f80 = install(key(1, '02:00:00:00:00:02', { dport: 80 }));
    const r = fpag.setRules([{ priority: 10, table: 0, special: false, match: { in_port: 'v1', tp_dst: 22 }, actions: ['output:v3'] }]);
    expect(r).toEqual({ kept: 1, modified: 1, deleted: 0 });
    expect(dp.flows.lookup(key(1, '02:00:00:00:00:02', { dport: 22 }))).toBe(f22);
    expect(dp.actionSets.describe(dp.flows.act[f22])).toEqual([{ op: 'output', vpid: 3 }]);
    expect(dp.actionSets.describe(dp.flows.act[f80])).toEqual([{ op: 'output', vpid: 2 }]);
  });

  it('a bad rule set is refused and changes nothing', () => {
    const { dp, fpag } = setup({ rules: [{ priority: 10, match: { tp_dst: 22 }, actions: ['drop'] }] });
    const k = key(1, '02:00:00:00:00:02', { dport: 22 });
    const d = fpag.decide(k);
    dp.apply({ type: 'flow-install', key: k, mask: d.mask, actions: d.actions });
    expect(() => fpag.setRules([{ priority: 1, table: 0, special: false, match: { nope: 1 }, actions: ['drop'] }])).toThrowError(FpoError);
    expect(fpag.decide(k).actions).toEqual([{ op: 'drop', reason: D.ruleDrop }]);
    expect(dp.flows.count).toBe(1);
  });
});

describe('tunnel metadata in rules', () => {
  it('a rule can match the tunnel a decapsulated packet came in on (tun_id, tun_src, tun_dst)', () => {
    const { fpag } = setup({ rules: [{ priority: 5, match: { tun_id: 5001, tun_src: '192.168.0.2', tun_dst: '192.168.0.1' }, actions: ['drop'] }] });
    const k = key(4, '02:00:00:00:00:01');
    k[15] = (0x01000000 | 5001) >>> 0;
    k[16] = 0xc0a80002;
    k[17] = 0xc0a80001;
    const d = fpag.decide(k);
    expect(d.actions).toEqual([{ op: 'drop', reason: D.ruleDrop }]);
    expect([d.mask[15], d.mask[16], d.mask[17]]).toEqual([0xffffff, 0xffffffff, 0xffffffff]);
    k[16] = 0xc0a80009;
    expect(fpag.decide(k).rule).toBe(-1);
  });
});

describe('port security', () => {
  const V1 = '02:00:00:00:00:01';
  const v6 = (k: Uint32Array, at: number, words: number[]) => { for (let w = 0; w < 4; w++) k[at + w] = words[w] >>> 0; };

  it('a frame from a VM with another source MAC is dropped as portSecMac, and the mask covers in_port and eth_src', () => {
    const { fpag } = setup({}, true);
    const d = fpag.decide(key(1, '02:00:00:00:00:02', { srcMac: '02:00:00:00:00:02', src: 0x0a010203 }), true);
    expect(d.actions).toEqual([{ op: 'drop', reason: D.portSecMac }]);
    expect(d.reason).toContain('source MAC 02:00:00:00:00:02');
    expect(d.mask[W_IN_PORT]).toBe(0xffffffff);
    expect(d.mask[4]).toBe(0xffffffff);
    // v2 has no address: its own MAC passes with any IP source (MAC-only, as OVN).
    expect(fpag.decide(key(2, V1, { srcMac: '02:00:00:00:00:02', src: 0x01020304 })).actions).toEqual([{ op: 'output', vpid: 1 }]);
  });

  it('IPv4 and ARP sources must be the interface\'s; DHCP discover and ARP probes from 0.0.0.0 pass', () => {
    const { fpag } = setup({}, true);
    expect(fpag.decide(key(1, '02:00:00:00:00:02', { srcMac: V1, src: 0x0a010203 })).actions).toEqual([{ op: 'output', vpid: 2 }]);
    expect(fpag.decide(key(1, '02:00:00:00:00:02', { srcMac: V1, src: 0x0a010204 })).actions).toEqual([{ op: 'drop', reason: D.portSecIpv4 }]);
    expect(fpag.decide(key(1, 'ff:ff:ff:ff:ff:ff', { srcMac: V1, ethType: 0x0806, proto: 1, src: 0x0a000002 })).actions).toEqual([{ op: 'drop', reason: D.portSecArp }]);
    expect(fpag.decide(key(1, 'ff:ff:ff:ff:ff:ff', { srcMac: V1, ethType: 0x0806, proto: 1, src: 0 })).actions).toEqual([{ op: 'output', vpid: 2 }, { op: 'output', vpid: 4 }]);
    const dhcp = { srcMac: V1, proto: 17, src: 0, dstIp: 0xffffffff, sport: 68, dport: 67 };
    expect(fpag.decide(key(1, 'ff:ff:ff:ff:ff:ff', dhcp)).actions).toEqual([{ op: 'output', vpid: 2 }, { op: 'output', vpid: 4 }]);
    expect(fpag.decide(key(1, 'ff:ff:ff:ff:ff:ff', { ...dhcp, dport: 68 })).actions).toEqual([{ op: 'drop', reason: D.portSecIpv4 }]);
    expect(fpag.decide(key(1, 'ff:ff:ff:ff:ff:ff', { ...dhcp, dstIp: 0x0a000002 })).actions).toEqual([{ op: 'drop', reason: D.portSecIpv4 }]);
  });

  it('IPv6: the EUI-64 link-local source passes, :: only for DAD and MLD to ff02::/16, any other source is portSecIpv6', () => {
    const { fpag } = setup({}, true);
    const k = (src: number[], dst: number[], type: number) => {
      const x = key(1, '33:33:00:00:00:01', { srcMac: V1, ethType: 0x86dd, proto: 58, sport: type });
      v6(x, W_IP_SRC, src);
      v6(x, W_IP_DST, dst);
      return x;
    };
    const ll = [0xfe800000, 0, 0x000000ff, 0xfe000001]; // 02:00:00:00:00:01 → fe80::ff:fe00:1
    const all = [0xff020000, 0, 0, 1];
    const flood = [{ op: 'output', vpid: 2 }, { op: 'output', vpid: 4 }];
    expect(fpag.decide(k(ll, all, 128)).actions).toEqual(flood);
    expect(fpag.decide(k([0xfe800000, 0, 0x000000ff, 0xfe000002], all, 128)).actions).toEqual([{ op: 'drop', reason: D.portSecIpv6 }]);
    expect(fpag.decide(k([0x20010db8, 0, 0, 1], all, 128)).actions).toEqual([{ op: 'drop', reason: D.portSecIpv6 }]);
    for (const t of [131, 135, 143]) expect(fpag.decide(k([0, 0, 0, 0], [0xff020000, 0, 1, 0xff000001], t)).actions).toEqual(flood);
    expect(fpag.decide(k([0, 0, 0, 0], all, 128)).actions).toEqual([{ op: 'drop', reason: D.portSecIpv6 }]);
    expect(fpag.decide(k([0, 0, 0, 0], [0x20010db8, 0, 0, 1], 135)).actions).toEqual([{ op: 'drop', reason: D.portSecIpv6 }]);
  });

  it('a rule cannot let a spoofed frame through: port security decides first', () => {
    const { fpag } = setup({ rules: [{ priority: 9, match: { tp_dst: 80 }, actions: ['output:v2'] }] }, true);
    expect(fpag.decide(key(1, '02:00:00:00:00:02', { srcMac: '02:00:00:00:00:09', src: 0x0a010203, dport: 80 })).actions).toEqual([{ op: 'drop', reason: D.portSecMac }]);
    expect(fpag.decide(key(1, '02:00:00:00:00:02', { srcMac: V1, src: 0x0a010203, dport: 80 })).actions).toEqual([{ op: 'output', vpid: 2 }]);
  });

  it('off per interface ("portSecurity": false): any source passes', () => {
    const { fpag } = setup({}, false);
    expect(fpag.decide(key(1, '02:00:00:00:00:02', { srcMac: '02:00:00:00:00:09', src: 0x01010101 })).actions).toEqual([{ op: 'output', vpid: 2 }]);
  });

  it('megaflows agree with the FPAG on random sources, port security on (property)', () => {
    const pkt = fc.record({
      inPort: fc.constantFrom(1, 2, 3, 4),
      dst: fc.constantFrom('02:00:00:00:00:01', '02:00:00:00:00:02', 'ff:ff:ff:ff:ff:ff'),
      srcMac: fc.constantFrom('02:00:00:00:00:01', '02:00:00:00:00:02', '02:00:00:00:00:03', '02:00:00:00:00:09'),
      ethType: fc.constantFrom(0x0800, 0x0806, 0x86dd, 0x88cc),
      proto: fc.constantFrom(17, 58, 6),
      src: fc.constantFrom(0, 0x0a010203, 0x0a000003, 0x0b000001),
      dstIp: fc.constantFrom(0xffffffff, 0xff020000, 0x0a000002),
      sport: fc.constantFrom(68, 135, 128),
      dport: fc.constantFrom(67, 80),
    });
    fc.assert(fc.property(fc.array(pkt, { minLength: 1, maxLength: 60 }), (pkts) => {
      const { dp, fpag } = setup({}, true);
      for (const p of pkts) {
        const k = key(p.inPort, p.dst, p);
        const f = lookupOrInstall(dp, fpag, k);
        expect(f).toBeGreaterThanOrEqual(0);
        const want = fpag.decide(k).actions;
        expect(dp.actionSets.describe(dp.flows.act[f])).toEqual(want.length ? want : [{ op: 'drop', reason: D.noDestination }]);
      }
    }), { numRuns: 300 });
  });

  it('a migration takes the identity along: same VPID on the new port, same decisions, no flow rewritten', () => {
    const { dp, fpag } = setup({ ports: [{ name: 'up', ppid: 1, role: 'uplink', segments: ['a', 'b'] }, { name: 'p1', ppid: 11 }, { name: 'p2', ppid: 12 }, { name: 'p3', ppid: 13 }, { name: 'p9', ppid: 19 }] }, true);
    const r = fpag.migrate('v1', 'p9');
    expect(r).toMatchObject({ vpid: 1, oldPpid: 11, newPpid: 19, flowRewrites: 0 });
    expect(dp.mapping.inPortKey[19]).toBe(1);
    expect(fpag.decide(key(1, '02:00:00:00:00:02', { srcMac: '02:00:00:00:00:09', src: 0x0a010203 })).actions).toEqual([{ op: 'drop', reason: D.portSecMac }]);
    // With a new VPID too: the identity is the interface's, under its new VPID.
    fpag.migrate('v1', 'p1', 40);
    expect(fpag.decide(key(40, '02:00:00:00:00:02', { srcMac: V1, src: 0x0a010204 })).actions).toEqual([{ op: 'drop', reason: D.portSecIpv4 }]);
    expect(fpag.decide(key(40, '02:00:00:00:00:02', { srcMac: V1, src: 0x0a010203 })).actions).toEqual([{ op: 'output', vpid: 2 }]);
  });
});
