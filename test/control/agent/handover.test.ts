import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Datapath } from '../../../datapath/datapath.js';
import { HandOver, drainHandBacks } from '../../../control/agent/handover.js';
import { topologyFrom, type TopologyInput } from '../../../control/topology.js';

// fpo's side of a service VM's hand-over channel, fed lines directly (no socket): what it adopts,
// what it refuses, and that no line — random or hostile — throws out of it or changes the tables.

const SVC_IN = '02:00:00:00:0a:01';
const SVC_OUT = '02:00:00:00:0a:02';
const topoInput = {
  ports: [1, 2, 3, 4].map((p) => ({ name: `p${p}`, ppid: p })),
  segments: [{ name: 'inside' }, { name: 'outside' }],
  nodes: [
    { name: 'client', interfaces: [{ name: 'client-eth0', mac: '02:00:00:00:01:01', ip: '10.1.0.2', segment: 'inside', port: 'p1' }] },
    { name: 'svc', offload: { agent: '/nonexistent/agent.sock', zone: 7, inside: ['svc-in'], outside: ['svc-out'] }, interfaces: [
      { name: 'svc-in', mac: SVC_IN, ip: '10.1.0.1', segment: 'inside', port: 'p2', portSecurity: false },
      { name: 'svc-out', mac: SVC_OUT, ip: '10.2.0.1', segment: 'outside', port: 'p3', portSecurity: false },
    ] },
    { name: 'server', interfaces: [{ name: 'server-eth0', mac: '02:00:00:00:02:01', ip: '10.2.0.2', segment: 'outside', port: 'p4' }] },
  ],
} as TopologyInput & { nodes: { name: string; offload?: Record<string, unknown> }[] };
const topo = topologyFrom(topoInput, 'handover-test');

const offer = (id = 1, sport = 40000) => ({
  type: 'ct-offer', id, proto: 6, state: 'ESTABLISHED', timeout: 432000, zone: 7,
  orig: { src: '10.1.0.2', dst: '10.2.0.2', sport, dport: 5201 },
  reply: { src: '10.2.0.2', dst: '10.2.0.1', sport: 5201, dport: sport },
  nat: { src: { addr: '10.2.0.1', port: sport } },
});
const route = { orig: { out: SVC_OUT, nextHop: '02:00:00:00:02:01' }, reply: { out: SVC_IN, nextHop: '02:00:00:00:01:01' } };
const line = (o: object) => JSON.stringify(o);

function rig() {
  const dp = new Datapath({ conntrackCapacity: 64 });
  const h = new HandOver(topo.offload[0], topo, dp, undefined, () => 1000);
  return { dp, h };
}

describe('HandOver: offers from a service VM\'s agent', () => {
  it('the topology\'s offload section is checked: an interface of another node, or one listed on both sides, is refused with its path', () => {
    const bad = (o: object) => () => topologyFrom({ ports: [{ name: 'p1', ppid: 1 }], segments: [{ name: 's' }], nodes: [{ name: 'a', interfaces: [{ name: 'a0', mac: SVC_IN, segment: 's' }], offload: o }, { name: 'b', interfaces: [{ name: 'b0', mac: SVC_OUT, segment: 's' }] }] }, 't.json');
    expect(bad({ agent: '/x', zone: 1, inside: ['b0'], outside: ['a0'] })).toThrow(/t\.json: nodes\[0\]\.offload\.inside\[0\]: expected one of this node's interfaces \(a0\), got "b0"/);
    expect(bad({ agent: '/x', zone: 1, inside: ['a0'], outside: ['a0'] })).toThrow(/nodes\[0\]\.offload\.outside\[0\]: interface "a0" is listed twice/);
    expect(bad({ agent: '/x', zone: 70000, inside: ['a0'], outside: ['a0'] })).toThrow(/nodes\[0\]\.offload\.zone/);
  });

  it('a checked offer with its route is adopted and offloaded; the same again is refused as a duplicate; a hand-back is passed on once', () => {
    const { dp, h } = rig();
    expect(h.take(line({ type: 'ct-offer-route', offer: offer(), route }))).toMatchObject({ type: 'ct-adopted', id: 1 });
    expect(dp.offload.active).toBe(1);
    expect(h.take(line({ type: 'ct-offer-route', offer: offer(), route }))).toMatchObject({ type: 'ct-refused', id: 1, why: expect.stringMatching(/^duplicate/) });
    expect(dp.conntrack.list(1000)[0]).toMatchObject({ owner: 'vnic', nat: 'src', zone: 7 });
    expect(h.take(line({ type: 'ct-withdraw', id: 1 }))).toBeNull();
    const hb = dp.offload.takeHandBack()!;
    expect(hb.why).toBe('withdrawn');
    h.ended(hb.id, hb.why);
    h.ended(hb.id, hb.why);
    expect(h.counts).toMatchObject({ adopted: 1, handedBack: 1, withdrawn: 1 });
    expect(dp.conntrack.count).toBe(0);
  });

  it('refused, naming the field, with nothing changed: another zone, a route out of an interface not the VM\'s, a multicast next hop, an unknown field', () => {
    const { dp, h } = rig();
    const cases: [object, RegExp][] = [
      [{ type: 'ct-offer-route', offer: { ...offer(), zone: 8 }, route }, /badOffer: ct-offer\.zone/],
      [{ type: 'ct-offer-route', offer: offer(), route: { ...route, orig: { out: '02:00:00:00:01:01', nextHop: '02:00:00:00:02:01' } } }, /badRoute: route\.orig\.out/],
      [{ type: 'ct-offer-route', offer: offer(), route: { ...route, reply: { out: SVC_IN, nextHop: '01:00:5e:00:00:01' } } }, /badRoute: route\.reply\.nextHop: expected a unicast MAC/],
      [{ type: 'ct-offer-route', offer: offer(), route, extra: 1 }, /badMessage: unknown field "extra"/],
      [{ type: 'ct-withdraw', id: 99 }, /unknownId/],
    ];
    for (const [m, why] of cases) expect((h.take(line(m)) as { why: string }).why).toMatch(why);
    expect(dp.hasConntrack ? dp.conntrack.count : 0).toBe(0);
    expect(dp.offload.active).toBe(0);
  });

  it('a flood of offers stops at the VM\'s quota (a quarter of the table unless offload.maxConnections says): the rest stays free for other zones\' connections', () => {
    const { dp, h } = rig(); // a table of 64
    const answers = Array.from({ length: 64 }, (_, k) => h.take(line({ type: 'ct-offer-route', offer: offer(k + 1, 40000 + k), route })) as { type: string; why?: string });
    expect(answers.filter((a) => a.type === 'ct-adopted')).toHaveLength(16);
    expect(answers[16]).toMatchObject({ type: 'ct-refused', id: 17, why: expect.stringMatching(/^quota: .*16/) });
    expect(dp.conntrack.count).toBe(16);
    expect(h.refused.quota).toBe(48);
    // One handed back: room for one more.
    h.take(line({ type: 'ct-withdraw', id: 1 }));
    h.drainHandBacks = () => drainHandBacks(dp, [h]);
    expect(h.take(line({ type: 'ct-offer-route', offer: offer(100, 41000), route }))).toMatchObject({ type: 'ct-adopted', id: 100 });
    // The topology can say how many.
    const t2 = topologyFrom({ ...topoInput, nodes: topoInput.nodes.map((n) => (n.name === 'svc' ? { ...n, offload: { ...n.offload!, maxConnections: 2 } } : n)) }, 'handover-test');
    const h2 = new HandOver(t2.offload[0], t2, new Datapath({ conntrackCapacity: 64 }), undefined, () => 1000);
    expect([1, 2, 3].map((k) => (h2.take(line({ type: 'ct-offer-route', offer: offer(k, 40000 + k), route })) as { type: string }).type)).toEqual(['ct-adopted', 'ct-adopted', 'ct-refused']);
    expect(() => topologyFrom({ ...topoInput, nodes: topoInput.nodes.map((n) => (n.name === 'svc' ? { ...n, offload: { ...n.offload!, maxConnections: 0 } } : n)) }, 't.json')).toThrow(/nodes\[1\]\.offload\.maxConnections/);
  });

  it('fuzz: random and hostile lines never throw out of it, and change the tables only by an adoption it answers', () => {
    const { dp, h } = rig();
    const valid = line({ type: 'ct-offer-route', offer: offer(5, 41000), route });
    const mutated = fc.tuple(fc.nat(valid.length), fc.nat(valid.length), fc.string({ maxLength: 8 })).map(([a, b, s]) => valid.slice(0, Math.min(a, b)) + s + valid.slice(Math.max(a, b)));
    const deep = fc.record({ type: fc.constantFrom('ct-offer-route', 'ct-withdraw', 'probe', '__proto__'), offer: fc.oneof(fc.anything(), fc.constant(offer(9)).map((o) => ({ ...o, orig: { ...o.orig, src: '224.0.0.1' } }))), route: fc.oneof(fc.anything(), fc.constant(route)), id: fc.anything() }, { requiredKeys: ['type'] }).map((o) => JSON.stringify(o) ?? 'null');
    const lines = fc.oneof(fc.string({ maxLength: 300 }), fc.json(), mutated, deep, fc.jsonValue().map((v) => JSON.stringify({ type: 'ct-offer-route', offer: v, route: v })));
    fc.assert(fc.property(lines, (l) => {
      const before = [dp.hasConntrack ? dp.conntrack.count : 0, dp.offload.active];
      const out = h.take(l) as { type?: string } | null;
      const after = [dp.hasConntrack ? dp.conntrack.count : 0, dp.offload.active];
      if (out?.type === 'ct-adopted') expect(after).toEqual([before[0] + 1, before[1] + 1]);
      else if (out?.type === 'ct-refused' || out === null) expect(after[0] <= before[0] && after[1] <= before[1]).toBe(true); // a withdraw of its own only lowers them
      else throw new Error(`unexpected answer ${JSON.stringify(out)}`);
    }), { numRuns: 3000 });
  });
});
