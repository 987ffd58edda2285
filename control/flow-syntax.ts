/**
 * The textual flow syntax of `fpo ctl add-flow/del-flow`, close to
 * ovs-ofctl's: comma-separated match fields, then `actions=` and the actions.
 *
 *   priority=100,tcp,tp_dst=23,actions=drop
 *   priority=50,in_port=vm1-eth0,ipv4_dst=10.0.0.0/24,actions=output:vm2-eth0,output:vm3-eth0
 *   priority=10,special,udp,actions=normal
 *
 * Shorthands: ip, ipv6, arp, tcp, udp, icmp, tcp6, udp6, icmp6. OVS names
 * are accepted for the common fields (dl_src, dl_dst, dl_type, dl_vlan,
 * nw_src, nw_dst, nw_proto). `special` marks the rule's packets for the
 * special-processing flag. Errors name the part that is wrong.
 */
import { FIELD_NAMES } from '../datapath/classifier/flow-key.js';
import { FpoError } from '../datapath/errors.js';
import type { RuleSpec } from './topology.js';

// Maps, not object literals: the keys looked up are the user's text, and a
// literal's prototype answered "constructor" (a shorthand that matched
// everything: `priority=60000,constructor,actions=drop` dropped all traffic).
const SHORTHANDS = new Map<string, Record<string, string | number>>([
  ['ip', { eth_type: '0x0800' }],
  ['ipv6', { eth_type: '0x86dd' }],
  ['arp', { eth_type: '0x0806' }],
  ['tcp', { eth_type: '0x0800', ip_proto: 6 }],
  ['udp', { eth_type: '0x0800', ip_proto: 17 }],
  ['icmp', { eth_type: '0x0800', ip_proto: 1 }],
  ['tcp6', { eth_type: '0x86dd', ip_proto: 6 }],
  ['udp6', { eth_type: '0x86dd', ip_proto: 17 }],
  ['icmp6', { eth_type: '0x86dd', ip_proto: 58 }],
]);

const ALIASES = new Map<string, string>([
  ['dl_src', 'eth_src'], ['dl_dst', 'eth_dst'], ['dl_type', 'eth_type'], ['dl_vlan', 'vlan_vid'],
  ['nw_src', 'ipv4_src'], ['nw_dst', 'ipv4_dst'], ['nw_proto', 'ip_proto'],
]);

/** Fields a flow may match (in_port is one of the flow key's fields). */
const FIELDS: readonly string[] = FIELD_NAMES;

function usage(what: string): FpoError {
  return new FpoError('FPO_ERR_USAGE', what);
}

/** Parses a flow; `needActions` false for del-flow (match only). */
export function parseFlowSpec(text: string, needActions = true): RuleSpec {
  const t = text.trim();
  if (t.length === 0) throw usage('flow: empty; expected e.g. priority=100,tcp,tp_dst=23,actions=drop');
  const at = t.indexOf('actions=');
  const matchPart = at >= 0 ? t.slice(0, at).replace(/,\s*$/, '') : t;
  const actionsPart = at >= 0 ? t.slice(at + 'actions='.length) : '';
  if (needActions && at < 0) throw usage('actions: missing; a flow ends with actions=drop, actions=normal or actions=output:NAME[,output:NAME…]');
  // Null prototype: keys are checked against FIELDS first, and a lookup of one never finds Object.prototype's.
  const match = Object.create(null) as Record<string, string | number>;
  let priority = 32768;
  let special = false;
  for (const tok of matchPart.split(',').map((x) => x.trim()).filter((x) => x.length > 0)) {
    const eq = tok.indexOf('=');
    if (eq < 0) {
      if (tok === 'special') { special = true; continue; }
      const sh = SHORTHANDS.get(tok);
      if (sh === undefined) throw usage(`match: unknown field ${JSON.stringify(tok)}: not a shorthand (${[...SHORTHANDS.keys()].join(', ')}), special, or FIELD=VALUE`);
      for (const [k, v] of Object.entries(sh)) match[k] = v;
      continue;
    }
    const given = tok.slice(0, eq);
    const name = ALIASES.get(given) ?? given;
    const value = tok.slice(eq + 1);
    if (name !== 'priority' && !FIELDS.includes(name)) throw usage(`match.${name}: unknown field ${JSON.stringify(name)}; expected one of ${FIELDS.join(', ')}`);
    if (value === '') throw usage(`match.${name}: no value`);
    if (name === 'priority') {
      const p = Number(value);
      if (!Number.isInteger(p) || p < 0 || p > 65535) throw usage(`priority: expected an integer in 0..65535, got "${value}"`);
      priority = p;
      continue;
    }
    match[name] = /^\d+$/.test(value) ? Number(value) : value;
  }
  const actions = actionsPart.split(',').map((x) => x.trim()).filter((x) => x.length > 0);
  if (needActions && actions.length === 0) throw usage('actions: empty; expected drop, normal or output:NAME');
  for (const [i, a] of actions.entries()) {
    if (a !== 'drop' && a !== 'normal' && !/^output:[A-Za-z0-9][A-Za-z0-9._-]*$/.test(a)) throw usage(`actions[${i}]: "${a}" is not drop, normal or output:NAME`);
  }
  return { priority, match, actions: needActions ? actions : ['drop'], special };
}

/** The flow written back in the same syntax. */
export function formatFlowSpec(r: RuleSpec): string {
  const parts = [`priority=${r.priority}`];
  if (r.special) parts.push('special');
  for (const [k, v] of Object.entries(r.match)) parts.push(`${k}=${v}`);
  return `${parts.join(',')},actions=${r.actions.join(',')}`;
}
