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
 *
 * Stateful rules (issue 19), as ovs-ofctl writes them:
 *
 *   table=0,priority=10,ip,actions=ct(zone=1,table=1)
 *   table=1,priority=20,ct_state=+trk+new,tcp,tp_dst=80,actions=ct(commit,zone=1),output:web
 *   table=1,priority=20,ct_state=+trk+est,actions=normal
 *   table=1,priority=10,actions=drop
 *   priority=5,ip,actions=ct(commit,zone=2,nat(src=192.0.2.1-192.0.2.9:1024-65535)),output:up
 *
 * `table=N` (0 default) is the table a rule is in: a packet a ct(table=N)
 * sent through conntrack is classified again against table N's rules only,
 * with its ct_state; table 0 sees packets as they arrive. ct_state is
 * matched as flags (`+trk+est-new`); ct_zone as a number.
 */
import type { Action, CtNat } from '../datapath/actions/action-sets.js';
import { FIELD_NAMES } from '../datapath/classifier/flow-key.js';
import { FpoError } from '../datapath/errors.js';
import { parseIpText } from '../datapath/ip-text.js';
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

/**
 * The rules that `del-flow TEXT` removes (`fpo ctl del-flow` and a replay's
 * del-flow event): those with TEXT's match, and when TEXT says priority=
 * or table=, that priority and that table (as ovs-ofctl del-flows: no table=
 * is every table). Returns the rules kept, and the removed count.
 */
export function rulesWithout(rules: readonly RuleSpec[], text: string): { keep: RuleSpec[]; removed: number; want: RuleSpec; where: string } {
  const want = parseFlowSpec(text, false);
  const key = (m: object) => JSON.stringify(Object.entries(m).sort());
  const hasPriority = /(^|,)\s*priority=/.test(text);
  const hasTable = /(^|,)\s*table=/.test(text);
  const keep = rules.filter((r) => !(key(r.match) === key(want.match) && (!hasPriority || r.priority === want.priority) && (!hasTable || (r.table ?? 0) === want.table)));
  const where = `${hasTable ? ` in table ${want.table}` : ''}${hasPriority ? ` at priority ${want.priority}` : ''}`;
  return { keep, removed: rules.length - keep.length, want, where };
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
  let table = 0;
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
    if (name !== 'priority' && name !== 'table' && !FIELDS.includes(name)) throw usage(`match.${name}: unknown field ${JSON.stringify(name)}; expected one of ${FIELDS.join(', ')}`);
    if (value === '') throw usage(`match.${name}: no value`);
    if (name === 'table') {
      const t = Number(value);
      if (!/^\d+$/.test(value) || !Number.isInteger(t) || t > 255) throw usage(`table: expected an integer in 0..255, got "${value}"`);
      table = t;
      continue;
    }
    if (name === 'recirc_id') throw usage('match.recirc_id: set by ct(table=N); a rule says which table it is in with table=N');
    if (name === 'priority') {
      const p = Number(value);
      if (!Number.isInteger(p) || p < 0 || p > 65535) throw usage(`priority: expected an integer in 0..65535, got "${value}"`);
      priority = p;
      continue;
    }
    match[name] = /^\d+$/.test(value) ? Number(value) : value;
  }
  const actions = splitTopLevel(actionsPart, 'actions').map((x) => x.trim()).filter((x) => x.length > 0);
  if (needActions && actions.length === 0) throw usage('actions: empty; expected drop, normal, output:NAME or ct(…)');
  for (const [i, a] of actions.entries()) {
    if (a.startsWith('ct(')) {
      try { parseCtAction(a, `actions[${i}]`); } catch (e) { throw usage((e as Error).message); }
      continue;
    }
    if (a !== 'drop' && a !== 'normal' && !/^output:[A-Za-z0-9][A-Za-z0-9._-]*$/.test(a)) throw usage(`actions[${i}]: "${a}" is not drop, normal, output:NAME or ct(…)`);
  }
  return { priority, table, match, actions: needActions ? actions : ['drop'], special };
}

/** Splits at the commas outside parentheses (ct(commit,zone=1) is one part); unbalanced ones are refused. */
function splitTopLevel(text: string, where: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let from = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '(') depth++;
    else if (c === ')') { if (--depth < 0) throw usage(`${where}: a ")" with no "(" at character ${i + 1}`); }
    else if (c === ',' && depth === 0) { out.push(text.slice(from, i)); from = i + 1; }
  }
  if (depth !== 0) throw usage(`${where}: a "(" not closed`);
  out.push(text.slice(from));
  return out;
}

/**
 * ct(…) as ovs-ofctl writes it: `commit`, `zone=N` (0..65535, default 0),
 * `table=N` (1..255: classify the tracked packet again in that table),
 * `nat`, or `nat(src=A[-B][:P[-Q]])` / `nat(dst=…)` (translate the
 * connection this commits to that address range and port range; an IPv6
 * address in brackets when it has a port). Throws Error naming the part.
 */
export function parseCtAction(text: string, where: string): Extract<Action, { op: 'ct' }> {
  const m = /^ct\((.*)\)$/.exec(text);
  if (!m) throw new Error(`${where}: expected ct(…), got ${JSON.stringify(text)}`);
  const a: Extract<Action, { op: 'ct' }> = { op: 'ct', zone: 0, commit: false, table: -1 };
  const seen = new Set<string>();
  for (const part of m[1] === '' ? [] : splitTopLevel(m[1], where)) {
    const p = part.trim();
    const name = /^[a-z_]+/.exec(p)?.[0] ?? p;
    if (seen.has(name)) throw new Error(`${where}: ct: ${name} given twice`);
    seen.add(name);
    if (p === 'commit') a.commit = true;
    else if (p.startsWith('zone=')) a.zone = ctInt(p.slice(5), 0, 65535, `${where}: ct zone`);
    else if (p.startsWith('table=')) a.table = ctInt(p.slice(6), 1, 255, `${where}: ct table`);
    else if (p === 'nat') { /* a translated connection is rewritten anyway (conntrack.ts) */ }
    else if (p.startsWith('nat(') && p.endsWith(')')) a.nat = parseNat(p.slice(4, -1), `${where}: ct nat`);
    else throw new Error(`${where}: ct: unknown argument ${JSON.stringify(p)}; expected commit, zone=N, table=N, nat or nat(src=…|dst=…)`);
  }
  if (a.nat !== undefined && !a.commit) throw new Error(`${where}: ct: nat(${a.nat.kind}=…) sets up a translation, which only a commit does: add commit`);
  return a;
}

function ctInt(v: string, min: number, max: number, where: string): number {
  const n = /^\d+$/.test(v) ? Number(v) : NaN;
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`${where}: expected an integer in ${min}..${max}, got ${JSON.stringify(v)}`);
  return n;
}

function parseNat(text: string, where: string): CtNat {
  const m = /^(src|dst)=(.+)$/.exec(text);
  if (!m) throw new Error(`${where}: expected src=ADDR[-ADDR][:PORT[-PORT]] or dst=…, got ${JSON.stringify(text)}`);
  let addrs = m[2];
  let ports = '';
  const v6 = /^\[([^\]]+)\](?::(.+))?$/.exec(addrs);
  if (v6) { addrs = v6[1]; ports = v6[2] ?? ''; }
  else if (!addrs.includes('::') && addrs.split(':').length === 2) [addrs, ports] = addrs.split(':');
  const [addrMin, addrMax = addrMin] = addrs.split('-');
  for (const x of [addrMin, addrMax]) if (parseIpText(x) === null) throw new Error(`${where}: ${JSON.stringify(x)} is not an IPv4 or IPv6 address`);
  let portMin = 0;
  let portMax = 0;
  if (ports !== '') {
    const [lo, hi = lo] = ports.split('-');
    portMin = ctInt(lo, 1, 65535, `${where}: port`);
    portMax = ctInt(hi, portMin, 65535, `${where}: port range end`);
  }
  return { kind: m[1] as 'src' | 'dst', addrMin, addrMax, portMin, portMax };
}

/** A ct action written back as parseCtAction reads it. */
export function formatCtAction(a: Extract<Action, { op: 'ct' }>): string {
  const parts: string[] = [];
  if (a.commit) parts.push('commit');
  parts.push(`zone=${a.zone}`);
  if (a.table > 0) parts.push(`table=${a.table}`);
  if (a.nat !== undefined) {
    const n = a.nat;
    const v6 = n.addrMin.includes(':');
    const range = n.addrMax === n.addrMin ? n.addrMin : `${n.addrMin}-${n.addrMax}`;
    const port = n.portMin === 0 ? '' : n.portMax === n.portMin ? `:${n.portMin}` : `:${n.portMin}-${n.portMax}`;
    parts.push(`nat(${n.kind}=${v6 && port !== '' ? `[${range}]` : range}${port})`);
  }
  if (a.fw === true) parts.push('firewall'); // the per-port firewall's (its version's table): shown, not taken by add-flow
  return `ct(${parts.join(',')})`;
}

/** The flow written back in the same syntax. */
export function formatFlowSpec(r: RuleSpec): string {
  const parts = r.table ? [`table=${r.table}`, `priority=${r.priority}`] : [`priority=${r.priority}`];
  if (r.special) parts.push('special');
  for (const [k, v] of Object.entries(r.match)) parts.push(`${k}=${v}`);
  return `${parts.join(',')},actions=${r.actions.join(',')}`;
}
