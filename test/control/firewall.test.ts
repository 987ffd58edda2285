import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { FW_TABLE_IN, FW_TABLE_OUT } from '../../control/fpag.js';
import { topologyFrom } from '../../control/topology.js';
import { formatMatch } from '../../datapath/classifier/flow-key.js';
import { Datapath } from '../../datapath/datapath.js';
import { FpoError } from '../../datapath/errors.js';
import { eth, ipv4, ipv6, udp } from '../../fixtures/packets.js';
import { C, C_MAC, S, S_MAC, fwConns, seg, twoVms, type Rule } from '../datapath/conntrack/switch.js';

const toBroadcast = (f: Uint8Array) => { const g = f.slice(); g.fill(0xff, 0, 6); return g; };
const toUnknownMac = (f: Uint8Array) => { const g = f.slice(); g.set([2, 9, 9, 9, 9, 9], 0); return g; };

// The per-port firewall (fpag.ts): an interface's rules compiled into ct
// flows, run by the datapath — a client and a server VM, frames through.

/** in = delivered + dropped; the drops by reason. */
function accounted(dp: Datapath): Record<string, number> {
  const s = dp.stats();
  expect(s.packetsIn).toBe(s.delivered + s.dropped);
  return s.drops as Record<string, number>;
}

const WEB_SERVER = { firewall: [{ direction: 'in', action: 'allow', proto: 'tcp', ports: 80 }] };
const arp = (from: string) => eth('ff:ff:ff:ff:ff:ff', from, 0x0806, new Uint8Array(28));

describe('the per-port firewall', () => {
  it('a server that allows tcp 80 in: a client connects to 80 and both ways pass; 22 and the server opening are dropped; ARP passes', () => {
    const { dp, send } = twoVms([], {}, WEB_SERVER);
    expect(send([[1, seg('c', 100, 0, 'S')]]).toServer).toHaveLength(1);
    expect(send([[2, seg('s', 500, 101, 'SA')]]).toClient).toHaveLength(1);
    const r = send([[1, seg('c', 101, 501, 'PA', 10)], [2, seg('s', 501, 111, 'PA', 20)]]);
    expect(r.toServer).toHaveLength(1);
    expect(r.toClient).toHaveLength(1);
    expect(send([[1, seg('c', 100, 0, 'S', 0, 22)]]).toServer).toHaveLength(0);
    // The server opening a connection (its out rules allow nothing).
    expect(send([[2, eth(C_MAC, S_MAC, 0x0800, ipv4({ src: S, dst: C, proto: 17 }, udp(53, 5353, new Uint8Array(8))))]]).toClient).toHaveLength(0);
    // ARP from either side is not filtered.
    const a = send([[1, arp(C_MAC)], [2, arp(S_MAC)]]);
    expect(a.toServer).toHaveLength(1);
    expect(a.toClient).toHaveLength(1);
    expect(accounted(dp)).toEqual({ firewall: 2 });
    expect(fwConns(dp, 'v1')).toHaveLength(1); // the one allowed connection, in the server's zone
    const list = fwConns(dp, 'v1');
    expect(list[0].zone).toBe(2); // the server interface's VPID
    // Its flows check the firewall's tables.
    const lines = dp.dumpFlows().map((f) => formatMatch(f.key, f.mask));
    expect(lines.some((l) => l.includes(`recirc_id=${FW_TABLE_IN}`) && l.includes('tp_dst=80'))).toBe(true);
    expect(lines.some((l) => l.includes(`recirc_id=${FW_TABLE_OUT}`))).toBe(true);
  });

  it('two firewalled VMs: the connection goes through both zones; a drop rule before the allow wins', () => {
    const { dp, send } = twoVms([], { firewall: [{ direction: 'out', action: 'allow', proto: 'tcp' }] }, {
      firewall: [{ direction: 'in', action: 'drop', remote: '10.0.0.99' }, { direction: 'in', action: 'allow', proto: 'tcp', ports: '80-81', remote: '10.0.0.0/24' }],
    });
    expect(send([[1, seg('c', 100, 0, 'S', 0, 81)]]).toServer).toHaveLength(1);
    expect(send([[2, seg('s', 500, 101, 'SA', 0, 81)]]).toClient).toHaveLength(1);
    expect(send([[1, seg('c', 101, 501, 'A', 0, 81)]]).toServer).toHaveLength(1);
    expect(fwConns(dp, 'v1')).toHaveLength(2); // one in each interface's zone
    // From the address the server's first rule drops (port security off on the client for this).
    expect(accounted(dp)).toEqual({});
    const { dp: dp2, send: send2 } = twoVms([], { portSecurity: false }, { firewall: [{ direction: 'in', action: 'drop', remote: '10.0.0.99' }, { direction: 'in', action: 'allow', proto: 'tcp' }] });
    const spoof = seg('c', 1, 0, 'S');
    spoof.set([10, 0, 0, 99], 26); // ipv4 source
    expect(send2([[1, spoof]]).toServer).toHaveLength(0);
    expect(accounted(dp2)).toEqual({ firewall: 1 });
  });

  it('an out-of-window segment of an allowed connection is inv: dropped', () => {
    const { dp, send } = twoVms([], {}, WEB_SERVER);
    send([[1, seg('c', 100, 0, 'S')]]);
    send([[2, seg('s', 500, 101, 'SA')]]);
    expect(send([[2, seg('s', 9_000_000, 101, 'PA', 10)]]).toClient).toHaveLength(0);
    expect(accounted(dp)).toEqual({ firewall: 1 });
  });

  it('property: nothing reaches the web server but port 80, and every packet ends once', () => {
    fc.assert(fc.property(fc.array(fc.record({ from: fc.constantFrom<'c' | 's'>('c', 's'), seq: fc.nat(3000), ack: fc.nat(3000), flags: fc.constantFrom('S', 'SA', 'A', 'PA', 'FA', 'R'), port: fc.constantFrom(80, 22, 443), udp: fc.boolean() }), { minLength: 1, maxLength: 50 }), (pkts) => {
      const { dp, send } = twoVms([], {}, WEB_SERVER);
      let delivered = 0;
      for (let k = 0; k < pkts.length; k += 5) {
        const r = send(pkts.slice(k, k + 5).map((p) => [p.from === 'c' ? 1 : 2, p.udp
          ? (p.from === 'c' ? eth(S_MAC, C_MAC, 0x0800, ipv4({ src: C, dst: S, proto: 17 }, udp(40000, p.port, new Uint8Array(4)))) : eth(C_MAC, S_MAC, 0x0800, ipv4({ src: S, dst: C, proto: 17 }, udp(p.port, 40000, new Uint8Array(4)))))
          : seg(p.from, p.seq, p.ack, p.flags, 0, p.port)] as [number, Uint8Array]));
        for (const f of r.toServer) {
          expect(f[23]).toBe(6); // TCP only
          expect((f[36] << 8) | f[37]).toBe(80); // to port 80 only
        }
        for (const f of r.toClient) {
          expect(f[23]).toBe(6);
          expect((f[34] << 8) | f[35]).toBe(80); // the server answers from 80 only
        }
        delivered += r.toServer.length + r.toClient.length;
      }
      const st = dp.stats();
      expect(st.packetsIn).toBe(pkts.length);
      expect(st.packetsIn).toBe(st.delivered + st.dropped);
      expect(st.delivered).toBe(delivered);
    }), { numRuns: 80 });
  });

  it('a flood reaches a firewalled VM only when its in rules allow the packet: a broadcast or unknown-unicast SYN to port 22 does not', () => {
    // Three VMs, so that L2's flood has two receivers (with one it is a unicast, checked in table 255).
    const { dp, send } = twoVms([], {}, WEB_SERVER, { other: {} });
    const b = send([[1, toBroadcast(seg('c', 100, 0, 'S', 0, 22))], [1, toUnknownMac(seg('c', 100, 0, 'S', 0, 23))]]);
    expect(b.toServer).toHaveLength(0);
    expect(b.toOther).toHaveLength(2); // the unfirewalled VM gets its copies
    // Port 80, which the server's rules allow, reaches it flooded too; ARP is not filtered.
    const ok = send([[1, toBroadcast(seg('c', 100, 0, 'S', 0, 80))], [1, arp(C_MAC)]]);
    expect(ok.toServer).toHaveLength(2);
    // From a firewalled client whose out rules allow everything: the server's in rules still say.
    const { dp: dp2, send: send2 } = twoVms([], { firewall: [{ direction: 'out', action: 'allow' }] }, WEB_SERVER, { other: {} });
    const c = send2([[1, toBroadcast(seg('c', 100, 0, 'S', 0, 22))]]);
    expect(c.toServer).toHaveLength(0);
    expect(c.toOther).toHaveLength(1);
    // Two firewalled receivers that both refuse it: a firewall drop, counted once.
    const { dp: dp3, send: send3 } = twoVms([], {}, WEB_SERVER, { other: WEB_SERVER });
    expect(send3([[1, toBroadcast(seg('c', 100, 0, 'S', 0, 22))]]).toServer).toHaveLength(0);
    expect(accounted(dp)).toEqual({});
    expect(accounted(dp2)).toEqual({});
    expect(accounted(dp3)).toEqual({ firewall: 1 });
  });

  it('IPv6 neighbour discovery to and from a firewalled VM passes, as ARP does (it was dropped, so no IPv6 rule could work); other ICMPv6 is filtered', () => {
    const { dp, send } = twoVms([], {}, WEB_SERVER);
    const icmp6 = (type: number, from: 'c' | 's') => {
      const m = new Uint8Array(24);
      m[0] = type;
      const [src, dst] = from === 'c' ? ['fe80::ff:fe00:1', 'fe80::ff:fe00:2'] : ['fe80::ff:fe00:2', 'fe80::ff:fe00:1'];
      return eth(from === 'c' ? S_MAC : C_MAC, from === 'c' ? C_MAC : S_MAC, 0x86dd, ipv6({ src, dst, nh: 58, hlim: 255 }, m));
    };
    const r = send([[1, icmp6(135, 'c')], [1, icmp6(136, 'c')], [2, icmp6(135, 's')], [2, icmp6(136, 's')], [1, icmp6(128, 'c')]]);
    expect(r.toServer).toHaveLength(2); // NS and NA; not the echo request
    expect(r.toClient).toHaveLength(2);
    expect(accounted(dp)).toEqual({ firewall: 1 });
  });

  it('a migration that gives the server a new VPID keeps its firewall, and its connections (the zone stays)', () => {
    const { dp, fpag, send } = twoVms([], {}, WEB_SERVER);
    expect(send([[1, seg('c', 100, 0, 'S')]]).toServer).toHaveLength(1);
    expect(send([[2, seg('s', 500, 101, 'SA')]]).toClient).toHaveLength(1);
    fpag.migrate('server', 'p2', 50);
    expect(send([[1, seg('c', 100, 0, 'S', 0, 22)]]).toServer).toHaveLength(0);
    const r = send([[1, seg('c', 101, 501, 'PA', 10)], [2, seg('s', 501, 111, 'PA', 20)]]);
    expect(r.toServer).toHaveLength(1);
    expect(r.toClient).toHaveLength(1);
    expect(accounted(dp)).toEqual({ firewall: 1 });
  });

  it('a zone of a rule\'s ct or of a service VM\'s hand-over that is a firewalled interface\'s zone is refused: its connections would pass that firewall as established', () => {
    // The server is VPID 2, so its firewall tracks in zone 2.
    expect(() => twoVms([{ priority: 1, match: { eth_dst: 'ff:ff:ff:ff:ff:ff' }, actions: ['ct(commit,zone=2)', 'drop'] }], {}, WEB_SERVER)).toThrow(/ct\.json: rules\[0\]\.actions\[0\]: zone 2 is the firewall zone of interface server/);
    expect(() => twoVms([{ priority: 1, actions: ['ct(zone=2,table=1)'] }], {}, WEB_SERVER)).toThrow(/rules\[0\]\.actions\[0\]: zone 2 is the firewall zone/);
    expect(() => twoVms([{ priority: 1, actions: ['ct(zone=1,table=1)'] }], {}, WEB_SERVER)).not.toThrow();
    // A service VM whose offers land in the server's zone (the server is VPID 3 here): an offered client → server:22 would be est there.
    const svc = (zone: number) => topologyFrom({ ports: [{ name: 'p1', ppid: 1 }, { name: 'p2', ppid: 2 }], segments: [{ name: 'a' }], nodes: [
      { name: 'svc', offload: { agent: '/x', zone, inside: ['svc0'], outside: ['svc1'] }, interfaces: [{ name: 'svc0', mac: '02:00:00:00:00:09', segment: 'a', port: 'p1' }, { name: 'svc1', mac: '02:00:00:00:00:0a', segment: 'a' }] },
      { name: 'server', interfaces: [{ name: 'server', mac: S_MAC, ip: S, segment: 'a', port: 'p2', ...WEB_SERVER }] },
    ] }, 'svc.json');
    expect(() => svc(3)).toThrow(/svc\.json: nodes\[0\]\.offload\.zone: zone 3 is the firewall zone of interface server/);
    expect(() => svc(7)).not.toThrow();
  });

  it('explicit rules do not get round the firewall: a normal rule, an output rule, a rule from the firewalled VM; what they allow still passes', () => {
    // The review's repro: a plain "tcp: normal" rule took a SYN to port 22 past a tcp-80 firewall.
    const rules: Rule[] = [{ priority: 1, match: { ip_proto: 6 }, actions: ['normal'] }, { priority: 1, match: { ip_proto: 6, in_port: 'client' }, actions: ['output:server'] }];
    for (const rule of rules) {
      const { dp, send } = twoVms([rule], {}, WEB_SERVER);
      expect(send([[1, seg('c', 100, 0, 'S', 0, 22)]]).toServer, JSON.stringify(rule)).toHaveLength(0);
      expect(send([[1, seg('c', 100, 0, 'S')]]).toServer, JSON.stringify(rule)).toHaveLength(1); // port 80: allowed, by way of the rule
      expect(send([[2, seg('s', 500, 101, 'SA')]]).toClient).toHaveLength(1); // the answer
      expect(accounted(dp)).toEqual({ firewall: 1 });
    }
    // From the firewalled VM: its packets are checked before the rule sends them on.
    const { dp, send } = twoVms([{ priority: 1, match: { ip_proto: 17 }, actions: ['output:client'] }], {}, { firewall: [{ direction: 'out', action: 'allow', proto: 'udp', ports: 53 }] });
    expect(send([[2, eth(C_MAC, S_MAC, 0x0800, ipv4({ src: S, dst: C, proto: 17 }, udp(5000, 53, new Uint8Array(8))))]]).toClient).toHaveLength(1);
    expect(send([[2, eth(C_MAC, S_MAC, 0x0800, ipv4({ src: S, dst: C, proto: 17 }, udp(5000, 54, new Uint8Array(8))))]]).toClient).toHaveLength(0);
    expect(accounted(dp)).toEqual({ firewall: 1 });
  });

  it('refuses rules that cannot mean anything, naming the interface, rule and field', () => {
    const refuse = (server: Record<string, unknown>, why: RegExp) => expect(() => twoVms([], {}, server), JSON.stringify(server)).toThrow(why);
    refuse({ firewall: [{ direction: 'in', action: 'allow', ports: 80 }] }, /interface server \(node server\)\.firewall\[0\]\.ports: a port needs proto tcp or udp/);
    refuse({ firewall: [{ direction: 'in', action: 'allow', proto: 'icmp', remote: 'fd00::/64' }] }, /firewall\[0\]\.remote: fd00::\/64 is IPv6/);
    refuse({ firewall: [{ direction: 'sideways', action: 'allow' }] }, /firewall\[0\]\.direction/);
    refuse({ firewall: [{ direction: 'in', action: 'allow', remote: '10.0.0.0/33' }] }, /firewall\[0\]\.remote: expected an IPv4 or IPv6 address or prefix/);
    refuse({ firewall: [{ direction: 'in', action: 'allow', proto: 'tcp', ports: '90-80' }] }, /firewall\[0\]\.ports: expected a port/);
    expect(() => twoVms([{ table: FW_TABLE_OUT, priority: 1, actions: ['drop'] }]), 'reserved table').toThrow(/per-port firewall's/);
    expect(() => twoVms([{ priority: 1, actions: [`ct(table=${FW_TABLE_IN})`] }]), 'reserved table in ct').toThrow(/per-port firewall's/);
    try { topologyFrom({ ports: [{ name: 'p1', ppid: 1 }], segments: [{ name: 'a' }], nodes: [{ name: 'n', interfaces: [{ name: 'i', mac: '02:00:00:00:00:09', segment: 'a', port: 'p1', firewall: [{ direction: 'in' }] }] }] }, 'fw.json'); expect.unreachable(); } catch (e) {
      expect(e).toBeInstanceOf(FpoError);
      expect((e as Error).message).toMatch(/fw\.json.*firewall\[0\]\.action/);
    }
  });
});
