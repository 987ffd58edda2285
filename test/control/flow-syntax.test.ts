import { describe, expect, it } from 'vitest';
import { formatFlowSpec, parseFlowSpec } from '../../control/flow-syntax.js';

describe('flow syntax (ovs-ofctl-like)', () => {
  it('parses priority, shorthands, OVS field names and actions', () => {
    expect(parseFlowSpec('priority=100,tcp,tp_dst=23,actions=drop')).toEqual({ priority: 100, table: 0, match: { eth_type: '0x0800', ip_proto: 6, tp_dst: 23 }, actions: ['drop'], special: false });
    expect(parseFlowSpec('special,dl_dst=02:00:00:00:00:01,nw_src=10.0.0.0/8,actions=output:vm1-eth0,output:vm2-eth0')).toEqual({
      priority: 32768, table: 0, match: { eth_dst: '02:00:00:00:00:01', ipv4_src: '10.0.0.0/8' }, actions: ['output:vm1-eth0', 'output:vm2-eth0'], special: true,
    });
  });
  it('writes a flow back in the same syntax', () => {
    const r = parseFlowSpec('priority=7,udp6,tp_src=53,actions=normal');
    expect(parseFlowSpec(formatFlowSpec(r))).toEqual(r);
  });
  it('names what is wrong', () => {
    expect(() => parseFlowSpec('tcp,tp_dst=23')).toThrowError(/actions: missing/);
    expect(() => parseFlowSpec('priority=70000,actions=drop')).toThrowError(/priority: expected an integer in 0\.\.65535/);
    expect(() => parseFlowSpec('sctp,actions=drop')).toThrowError(/match: unknown field "sctp": not a shorthand/);
    expect(() => parseFlowSpec('foo=1,actions=drop')).toThrowError(/match\.foo: unknown field/);
    expect(() => parseFlowSpec('tcp,actions=teleport')).toThrowError(/actions\[0\]: "teleport"/);
    expect(() => parseFlowSpec('tp_dst=,actions=drop')).toThrowError(/match\.tp_dst: no value/);
    expect(() => parseFlowSpec('')).toThrowError(/flow: empty/);
  });
});

describe('flow syntax: names Object.prototype has are refused by name', () => {
  const PROTO_KEYS = ['__proto__', 'constructor', 'toString', 'hasOwnProperty', 'valueOf'];

  it('as a shorthand ("priority=60000,constructor,actions=drop" was a match-all drop)', () => {
    for (const k of PROTO_KEYS) {
      for (const needActions of [true, false]) {
        expect(() => parseFlowSpec(`priority=60000,${k},actions=drop`, needActions)).toThrowError(`match: unknown field "${k}": not a shorthand (ip, ipv6, arp, tcp, udp, icmp, tcp6, udp6, icmp6), special, or FIELD=VALUE`);
        expect(() => parseFlowSpec(`tcp,${k}`, false)).toThrowError(`match: unknown field "${k}"`);
      }
    }
  });

  it('as a field, with the field named (not a function\'s source)', () => {
    for (const k of PROTO_KEYS) {
      expect(() => parseFlowSpec(`${k}=1,actions=drop`)).toThrowError(new RegExp(`^match\\.${k}: unknown field "${k}"; expected one of in_port, vlan_tpid, `));
      expect(() => parseFlowSpec(`in_port=vf1,${k}=1`, false)).toThrowError(`match.${k}: unknown field "${k}"`);
    }
  });

  it('a parsed match is a null-prototype object of exactly the fields given', () => {
    const r = parseFlowSpec('tcp,tp_dst=22,actions=drop');
    expect(Object.getPrototypeOf(r.match)).toBe(null);
    expect(Object.keys(r.match)).toEqual(['eth_type', 'ip_proto', 'tp_dst']);
    // A value may be any text the field's parser then checks: names of Object.prototype's keys included.
    expect(parseFlowSpec('in_port=toString,actions=output:constructor')).toEqual({ priority: 32768, table: 0, match: { in_port: 'toString' }, actions: ['output:constructor'], special: false });
  });
});
