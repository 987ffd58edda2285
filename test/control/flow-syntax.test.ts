import { describe, expect, it } from 'vitest';
import { formatFlowSpec, parseFlowSpec } from '../../control/flow-syntax.js';

describe('flow syntax (ovs-ofctl-like)', () => {
  it('parses priority, shorthands, OVS field names and actions', () => {
    expect(parseFlowSpec('priority=100,tcp,tp_dst=23,actions=drop')).toEqual({ priority: 100, match: { eth_type: '0x0800', ip_proto: 6, tp_dst: 23 }, actions: ['drop'], special: false });
    expect(parseFlowSpec('special,dl_dst=02:00:00:00:00:01,nw_src=10.0.0.0/8,actions=output:vm1-eth0,output:vm2-eth0')).toEqual({
      priority: 32768, match: { eth_dst: '02:00:00:00:00:01', ipv4_src: '10.0.0.0/8' }, actions: ['output:vm1-eth0', 'output:vm2-eth0'], special: true,
    });
  });
  it('writes a flow back in the same syntax', () => {
    const r = parseFlowSpec('priority=7,udp6,tp_src=53,actions=normal');
    expect(parseFlowSpec(formatFlowSpec(r))).toEqual(r);
  });
  it('names what is wrong', () => {
    expect(() => parseFlowSpec('tcp,tp_dst=23')).toThrowError(/actions: missing/);
    expect(() => parseFlowSpec('priority=70000,actions=drop')).toThrowError(/priority: expected an integer in 0\.\.65535/);
    expect(() => parseFlowSpec('sctp,actions=drop')).toThrowError(/match: "sctp" is not a shorthand/);
    expect(() => parseFlowSpec('foo=1,actions=drop')).toThrowError(/match\.foo: unknown field/);
    expect(() => parseFlowSpec('tcp,actions=teleport')).toThrowError(/actions\[0\]: "teleport"/);
    expect(() => parseFlowSpec('tp_dst=,actions=drop')).toThrowError(/match\.tp_dst: no value/);
    expect(() => parseFlowSpec('')).toThrowError(/flow: empty/);
  });
});
