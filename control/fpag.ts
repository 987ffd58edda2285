/**
 * FPAG — the flow processing and action generator: the control plane's slow
 * path. It gives out VPIDs (at topology load), maps them to PPIDs in the
 * NIC, holds the full rule set, and answers each upcall with a megaflow
 * whose output names VPIDs, never PPIDs.
 *
 * A decision, for a packet's key:
 *   1. explicit rules, highest priority first: the first rule whose match
 *      covers the key gives the actions ("drop", "output:IFACE_OR_UPLINK",
 *      "normal" = go on to L2);
 *   2. L2 forwarding ("normal"): the segment comes from the in-port (an
 *      interface's segment, or for an uplink the segment of the packet's VLAN
 *      ID); a unicast eth_dst of an interface in that segment goes to its
 *      VPID; broadcast, multicast and unknown unicast flood to every other
 *      interface of the segment and its uplinks.
 * Before both, port security (as OVN's ls_in_port_sec_* stages and
 * OpenStack's port_security_enabled): a packet from a VM interface with
 * port security on (the default) is dropped when its source MAC is not the
 * interface's (portSecMac), or, if the interface has an address, when its
 * IPv4 source (portSecIpv4), ARP sender IP (portSecArp) or IPv6 source
 * (portSecIpv6) is not one of the interface's. Allowed besides, as OVN
 * allows them: a DHCPv4 client's 0.0.0.0 → 255.255.255.255 UDP 68 → 67; an
 * ARP probe's sender 0.0.0.0 (RFC 5227: it claims no address); the IPv6
 * link-local address derived from the MAC (EUI-64, the one OVN and Neutron
 * add; a guest with stable-privacy link-local addresses needs port
 * security off); and :: to ff02::/16 as ICMPv6 MLD report (131, 143) or
 * neighbour solicitation (135), which DAD sends before any address is
 * valid. Other ethertypes are checked by MAC only. A rule cannot
 * undo it: it runs first, as a VM is not trusted. Because it is part of the
 * decision, the flow's mask covers what it looked at (in_port, eth_src,
 * eth_type, the source address) and the fast path needs no check of its
 * own; and because it is keyed by the interface's VPID, a migration (a
 * mapping change) takes the identity along with no flow changed.
 *
 * Last, VLAN tags (vlan.ts): a VM port is an access port, an uplink a trunk
 * on which a segment with a `vlan` is that VLAN. A frame from a VM in such a
 * segment gets `push_vlan:VID` before its outputs to uplinks; a frame from
 * an uplink (not from a tunnel) tagged with a segment's VLAN gets `pop_vlan`
 * before its outputs to VM interfaces. Other outputs (VM to VM, uplink to
 * uplink, encapsulated: the VNI carries the segment) are left as they are.
 * This applies to rules' outputs as to L2's, so the mask then also covers
 * in_port (and for an uplink, tun_id and the VLAN). A topology with no
 * `vlan` segment skips it.
 *
 * The per-port firewall (issue 19; an interface's `firewall` in the
 * topology): a stateful firewall per VM interface, as a security group. Its
 * rules are compiled into ct flows here: an IP packet from a firewalled
 * interface goes through conntrack in the interface's zone (its VPID) and
 * is decided again in table FW_TABLE_OUT; one that L2 sends to a firewalled
 * interface, in that interface's zone, in FW_TABLE_IN. There, a packet of a
 * connection the firewall allowed (est, rel) passes; inv is dropped; a new
 * connection is checked against the interface's rules for its direction, in
 * order: the first that matches says allow (the connection is committed,
 * so its replies and related ICMP pass) or drop; none: drop
 * (D.firewall). Non-IP (ARP) is not filtered, nor is IPv6 neighbour
 * discovery (ICMPv6 133..137). Packets between two
 * firewalled interfaces go through both (two zones), as OVN's per-port
 * zones do. A flood (broadcast, multicast, unknown unicast) is checked on
 * its way out, and each firewalled receiver gets its copy only when its `in`
 * rules allow the packet as a new connection (firewallFlood). Explicit
 * rules do not get round it: a firewalled VM's packets are checked before
 * any rule decides where they go (the rules then decide in table 254, as in
 * table 0), and a rule's outputs to a firewalled VM are checked as they
 * arrive — but a rule with a ct action of its own decides statefully by
 * itself, without the firewall's check at its receivers.
 *
 * The installed flow's mask is the union of every field the decision looked
 * at — port security's fields, the masks of all rules tried, then in_port,
 * VLAN and eth_dst for L2 — so the flow covers exactly the packets that
 * would get the same decision.
 */
import { D } from '../datapath/drops.js';
import type { Action } from '../datapath/actions/action-sets.js';
import { ARP_SHA_NOT_SRC, FIELDS, FIELD_NAMES, KEY_WORDS, PORT_PPID_BIT, TUN_PRESENT, W_CT, W_ETH_DST_HI, W_ETH_MID, W_ETH_SRC_LO, W_ETH_TYPE, W_IN_PORT, W_IP_DST, W_IP_SRC, W_TP, W_TUN, W_VLAN, ipv4ToString, ipv6ToString, macNumber, macToString, parseCtState, setField, fieldBits, unwildcardBits, clearKey, type FieldName } from '../datapath/classifier/flow-key.js';
import { FpoError } from '../datapath/errors.js';
import { parseIpText, type Datapath } from '../datapath/datapath.js';
import type { FlowInstall, Upcall, UpcallBatch } from '../datapath/upcall.js';
import { BatchFlows } from './batch-flows.js';
import { MacTable } from './mac-table.js';
import { parseMac, type Interface, type Port, type Topology } from './topology.js';
import { parseCtAction } from './flow-syntax.js';
import { CS_INV, CS_NEW, CS_TRK } from '../datapath/conntrack/conntrack.js';
import { parseFirewallRemote, parsePortRange, type FirewallRule } from './topology.js';
import { FirewallUpgrade, failpointsFromEnv, type Failpoints, type FirewalledPort } from './firewall-upgrade.js';

/** The per-port firewall's tables: topology rules and ct actions may not use them. */
export const FW_TABLE_OUT = 254;
export const FW_TABLE_IN = 255;

/** One firewall rule as key/mask words (ports apart: a range is not a mask). */
interface CompiledFwRule {
  allow: boolean;
  key: Uint32Array;
  mask: Uint32Array;
  /** tp_dst range, or null. */
  ports: [number, number] | null;
  text: string;
}

/** A firewalled interface: its zone, rules by direction, and the actions that send its packets to be checked. */
interface Firewall {
  name: string;
  zone: number;
  out: CompiledFwRule[];
  in: CompiledFwRule[];
  toOut: Action[];
  toIn: Action[];
  commit: Action[];
}

const FW_PASS = 0;
const FW_COMMIT = 1;
const FW_DROP = 2;

/** A change of one interface's VPID or port, as the state file will hold it (migrate, setMapping). */
export interface Change {
  /** The interface's name. */
  interface: string;
  /** Its VPID after the change. */
  vpid: number;
  /** Its port after the change, or null when it leaves this host. */
  port: string | null;
}

/** IPv4 dotted or IPv6 text → bytes (the topology validated them). */
function parseIp(s: string): Uint8Array {
  return parseIpText(s) ?? new Uint8Array(s.includes(':') ? 16 : 4);
}

/** A rule compiled to key/mask words. */
/** The fields a decision un-wildcards, as bits (flow-key.ts fieldBits): made once. */
const U = {
  ct_state: fieldBits('ct_state'),
  eth_dst: fieldBits('eth_dst'),
  eth_src: fieldBits('eth_src'),
  eth_type: fieldBits('eth_type'),
  in_port: fieldBits('in_port'),
  ip_frag: fieldBits('ip_frag'),
  ip_proto: fieldBits('ip_proto'),
  ipv4_dst: fieldBits('ipv4_dst'),
  recirc_id: fieldBits('recirc_id'),
  tp_dst: fieldBits('tp_dst'),
  tp_src: fieldBits('tp_src'),
  tun_id: fieldBits('tun_id'),
  vlan_tpid: fieldBits('vlan_tpid'),
  vlan_vid: fieldBits('vlan_vid'),
} as const;

interface CompiledRule {
  index: number;
  priority: number;
  /** The table it is in (recirc_id: ct(table=N) sends packets to N; 0 is the first pass). */
  table: number;
  key: Uint32Array;
  mask: Uint32Array;
  /** The words of mask that are not 0 (a rule names a few fields: its checks loop over these). */
  words: Uint8Array;
  /** null = "normal" (L2 forwarding). */
  actions: Action[] | null;
  /** With "normal": actions before L2's outputs (a ct without a table), or null. */
  pre: Action[] | null;
  /** Matching packets get the special-processing flag when tunnelled. */
  special: boolean;
  text: string;
}

/** Where a VPID leads: an interface or an uplink. */
interface Endpoint {
  /** Local interface or uplink: its VPID. Remote interface: -1. */
  vpid: number;
  name: string;
  segments: string[];
  mac?: string;
  uplink: boolean;
  /** Remote interface: the tunnel (index of its remote host) and the VPID of the uplink that reaches it. */
  tunnel?: number;
  viaVpid?: number;
  /** Cached decisions: the actions that reach this endpoint, and its floods by (segment, from uplink, from tunnel). */
  toActions?: Action[];
  floods?: Map<string, Action[]>;
  /** A local interface with port security on: what it may send as. */
  sec?: PortSecurity;
  /** Whether its packets (from or to) get the special-processing flag (Fpag.flagged, which never changes), once known. */
  flag?: boolean;
}

/** A VM interface's identity for port security, as key words. */
interface PortSecurity {
  /** eth_src as the key holds it: word 3's low 16 bits, word 4. */
  mac3: number;
  mac4: number;
  /** IPv4 addresses; none: IP sources are not checked (MAC only, as OVN with a MAC alone). */
  ipv4: number[];
  /** IPv6 sources allowed (4 words each): the EUI-64 link-local one, when ipv4 is not empty. */
  ipv6: Uint32Array[];
}

/** What an interface with port security may send as: its MAC, its IPv4 address and link-local IPv6 one. */
function portSecurityOf(itf: { macBytes: Uint8Array; ip?: string }): PortSecurity {
  const m = itf.macBytes;
  const ip = itf.ip !== undefined ? parseIp(itf.ip) : null;
  return {
    mac3: (m[0] << 8) | m[1],
    mac4: ((m[2] << 24) | (m[3] << 16) | (m[4] << 8) | m[5]) >>> 0,
    ipv4: ip ? [((ip[0] << 24) | (ip[1] << 16) | (ip[2] << 8) | ip[3]) >>> 0] : [],
    ipv6: ip ? [linkLocalWords(m)] : [],
  };
}

/** fe80::/64 + the modified EUI-64 of a MAC (RFC 4291 §2.5.6), as 4 key words. */
function linkLocalWords(m: Uint8Array): Uint32Array {
  return Uint32Array.from([0xfe800000, 0, (((m[0] ^ 2) << 24) | (m[1] << 16) | (m[2] << 8) | 0xff) >>> 0, ((0xfe << 24) | (m[3] << 16) | (m[4] << 8) | m[5]) >>> 0]);
}

/** What the FPAG decided for one key (also what `trace` prints). */
export interface Decision {
  actions: Action[];
  mask: Uint32Array;
  /** Index of the rule that decided, or -1 for L2 forwarding. */
  rule: number;
  /** Why, in words. */
  reason: string;
}

function parseIntField(v: string | number, bits: number, where: string): number {
  const n = typeof v === 'number' ? v : v.startsWith('0x') ? parseInt(v.slice(2), 16) : /^\d+$/.test(v) ? parseInt(v, 10) : NaN;
  if (!Number.isInteger(n) || n < 0 || (bits < 32 && n >= 2 ** bits) || n > 0xffffffff) throw new Error(`${where}: expected an integer in 0..${2 ** bits - 1}, got ${JSON.stringify(v)}`);
  return n;
}

export class Fpag {
  readonly topology: Topology;
  private readonly dp: Datapath;
  private rules: CompiledRule[];
  /** Revalidation counts: flows kept as they were, given new actions, deleted. */
  readonly revalidation = { kept: 0, modified: 0, deleted: 0 };
  private readonly byVpid = new Map<number, Endpoint>();
  private readonly byName = new Map<string, Endpoint>();
  private readonly portByName = new Map<string, Port>();
  private readonly portByPpid = new Map<number, Port>();
  /** Segment name → endpoints in it. */
  private readonly members = new Map<string, Endpoint[]>();
  /** Segment name → interface by MAC (as the number hi32 * 65536 + lo16). */
  private readonly byMac = new Map<string, MacTable<Endpoint>>();
  private readonly dropNoDestination: Action[] = [{ op: 'drop', reason: D.noDestination }];
  /** VLAN ID → segment name; 0 → the untagged segment (if any). */
  private readonly segByVlan = new Map<number, string>();
  /** Segment name → its VLAN ID, for the segments that have one. */
  private readonly vlanOf = new Map<string, number>();
  /** The outputs of an action array with a VLAN op put in, by op (-1: pop; else the VID pushed). */
  private readonly vlanVariants = new Map<number, WeakMap<Action[], Action[]>>();
  /** VNI → segment name, for packets that came in through a tunnel. */
  private readonly segByVni = new Map<number, string>();
  /** Interfaces whose packets (from or to) get the special-processing flag (sender policy). */
  private readonly flagged: Set<string>;
  /** Flagged packets the datapath handed to the FPAG (the special-processing path), by in PPID. */
  readonly specialByPort = new Map<number, number>();
  upcallsHandled = 0;
  private readonly scratchMask = new Uint32Array(KEY_WORDS);
  /** The upcall path's decision and install message, reused (onUpcall). */
  private readonly upcallDecision: Decision = { actions: [], mask: this.scratchMask, rule: -1, reason: '' };
  private readonly installMsg: FlowInstall = { type: 'flow-install', key: this.scratchMask, mask: this.scratchMask, actions: [] };
  /** Firewalled interfaces by VPID. */
  private readonly firewalls = new Map<number, Firewall>();
  private readonly dropFirewall: Action[] = [{ op: 'drop', reason: D.firewall }];

  constructor(topology: Topology, dp: Datapath) {
    this.topology = topology;
    this.dp = dp;
    for (const p of topology.ports) { this.portByName.set(p.name, p); this.portByPpid.set(p.ppid, p); }
    for (const s of topology.segments) {
      this.members.set(s.name, []);
      this.byMac.set(s.name, new MacTable());
      this.segByVlan.set(s.vlan ?? 0, s.name);
      if (s.vlan !== undefined) this.vlanOf.set(s.name, s.vlan);
      if (s.vni !== undefined) this.segByVni.set(s.vni, s.name);
    }
    const add = (e: Endpoint) => {
      this.byVpid.set(e.vpid, e);
      this.byName.set(e.name, e);
      for (const s of e.segments) this.members.get(s)?.push(e);
    };
    for (const itf of topology.interfaces) {
      const e: Endpoint = { vpid: itf.vpid, name: itf.name, segments: [itf.segment], mac: itf.mac, uplink: false };
      if (itf.portSecurity) e.sec = portSecurityOf(itf);
      add(e);
      const b = itf.macBytes;
      this.byMac.get(itf.segment)!.setMac(macNumber(b, 0), e);
    }
    for (const p of topology.ports) if (p.role === 'uplink') add({ vpid: p.vpid, name: p.name, segments: p.segments, uplink: true });
    topology.tunnel?.remotes.forEach((r, t) => {
      const via = this.portByName.get(r.uplink)!.vpid;
      for (const itf of r.interfaces) {
        const e: Endpoint = { vpid: -1, name: itf.name, segments: [itf.segment], mac: itf.mac.toLowerCase(), uplink: false, tunnel: t, viaVpid: via };
        this.byName.set(e.name, e);
        this.members.get(itf.segment)!.push(e);
        const b = parseMac(itf.mac);
        this.byMac.get(itf.segment)!.setMac(macNumber(b, 0), e);
      }
    });
    this.flagged = new Set(topology.tunnel?.policy.interfaces ?? []);
    this.ruleFields = topology.wildcarding === 'rule-fields';
    topology.interfaces.forEach((itf, n) => { if (itf.firewall !== undefined) this.firewalls.set(itf.vpid, this.compileFirewall(itf, n)); });
    this.rules = topology.rules.map((r, i) => this.compileRule(r, i)).sort((a, b) => b.priority - a.priority || a.index - b.index);
  }

  /**
   * Replaces the rule set and revalidates every installed flow against it,
   * as OVS's revalidators do: a flow whose new decision looks only at fields
   * the flow already matches (new mask within the old) keeps its match and
   * gets the new actions if they differ; any other flow is deleted, and its
   * next packet makes a fresh upcall. So no flow keeps forwarding where the
   * rules no longer say. Throws FpoError (and changes nothing) on a bad rule.
   */
  setRules(rules: Topology['rules']): { kept: number; modified: number; deleted: number } {
    const compiled = rules.map((r, i) => this.compileRule(r, i)).sort((a, b) => b.priority - a.priority || a.index - b.index);
    this.rules = compiled;
    (this.topology as { rules: Topology['rules'] }).rules = rules;
    return this.revalidate();
  }

  /** Checks every installed flow against the current rules (see setRules). */
  revalidate(): { kept: number; modified: number; deleted: number } {
    const r = { kept: 0, modified: 0, deleted: 0 };
    for (const flow of this.dp.dumpFlows()) {
      const d = this.decide(flow.key);
      let within = true;
      for (let w = 0; w < KEY_WORDS; w++) if ((d.mask[w] & ~flow.mask[w]) !== 0) within = false;
      if (!within) {
        this.dp.apply({ type: 'flow-delete', key: flow.key, mask: flow.mask });
        r.deleted++;
      } else if (JSON.stringify(d.actions.length ? d.actions : [{ op: 'drop', reason: D.noDestination }]) !== JSON.stringify(flow.actions)) {
        this.dp.apply({ type: 'flow-install', key: flow.key, mask: flow.mask, actions: d.actions });
        r.modified++;
      } else r.kept++;
    }
    this.revalidation.kept += r.kept;
    this.revalidation.modified += r.modified;
    this.revalidation.deleted += r.deleted;
    return r;
  }

  /** Attaches to the datapath: ports' mappings first, then the upcall sink. */
  start(): void {
    for (const p of this.topology.ports) this.dp.apply({ type: 'port-role', ppid: p.ppid, vm: p.role === 'vm' });
    for (const itf of this.topology.interfaces) {
      if (itf.port !== undefined) this.dp.apply({ type: 'mapping-set', vpid: itf.vpid, ppid: this.portByName.get(itf.port)!.ppid });
    }
    for (const p of this.topology.ports) if (p.role === 'uplink') this.dp.apply({ type: 'mapping-set', vpid: p.vpid, ppid: p.ppid });
    const t = this.topology.tunnel;
    if (t) {
      const specialPpid = t.specialPort !== undefined ? this.portByName.get(t.specialPort)!.ppid : -1;
      this.dp.apply({ type: 'tunnel-config', vtep: t.vtep, vtep6: t.vtep6 ?? null, flag: t.flag, specialPpid, flagFirstPackets: t.policy.firstPackets });
      for (const r of t.remotes) {
        this.dp.apply({ type: 'tunnel-add', tunnel: { kind: r.kind ?? t.kind, srcMac: parseMac(t.mac), dstMac: parseMac(r.mac), srcIp: parseIp(t.sendFrom ?? t.vtep), dstIp: parseIp(r.vtep) } });
      }
    }
    this.dp.upcallSink = (u) => this.onUpcall(u);
    this.dp.upcallBatchSink = (u) => this.onUpcalls(u);
    this.dp.specialSink = (p) => this.specialByPort.set(p.inPpid, (this.specialByPort.get(p.inPpid) ?? 0) + 1);
  }

  // Slow path: config.
  private compileRule(r: Topology['rules'][number], index: number): CompiledRule {
    const where = `${this.topology.path}: rules[${index}]`;
    const key = new Uint32Array(KEY_WORDS);
    const mask = new Uint32Array(KEY_WORDS);
    for (const [field, value] of Object.entries(r.match)) {
      const at = `${where}.match.${field}`;
      try {
        this.compileMatch(key, mask, field, value, at);
      } catch (e) {
        if (e instanceof FpoError) throw e;
        throw new FpoError('FPO_ERR_BAD_TOPOLOGY', (e as Error).message, { path: this.topology.path });
      }
    }
    const table = r.table ?? 0;
    if (table >= FW_TABLE_OUT) throw new FpoError('FPO_ERR_BAD_TOPOLOGY', `${where}.table: tables ${FW_TABLE_OUT} and ${FW_TABLE_IN} are the per-port firewall's; a rule's table is 0..${FW_TABLE_OUT - 1}`, { path: this.topology.path });
    setField(key, mask, 0, 'recirc_id', table);
    let actions: Action[] | null = [];
    let pre: Action[] | null = null;
    let ctAt = -1;
    r.actions.forEach((a, j) => {
      const at = `${where}.actions[${j}]`;
      if (a === 'drop') actions?.push({ op: 'drop', reason: D.ruleDrop });
      else if (a.startsWith('ct(')) {
        let ct: Extract<Action, { op: 'ct' }>;
        try { ct = parseCtAction(a, at); } catch (e) { throw new FpoError('FPO_ERR_BAD_TOPOLOGY', (e as Error).message, { path: this.topology.path }); }
        if (actions === null) throw new FpoError('FPO_ERR_BAD_TOPOLOGY', `${at}: a ct action after normal: ct first, then the outputs (or ct(table=N) and normal in table N)`, { path: this.topology.path });
        if (ctAt >= 0) throw new FpoError('FPO_ERR_BAD_TOPOLOGY', `${at}: a second ct action in one rule (actions[${ctAt}] is one): use ct(table=N) and a rule in table N`, { path: this.topology.path });
        const fwz = this.firewallZone(ct.zone);
        if (fwz !== undefined) throw new FpoError('FPO_ERR_BAD_TOPOLOGY', `${at}: zone ${ct.zone} is the firewall zone of interface ${fwz}; a rule's connections there would pass its firewall as established: choose another zone`, { path: this.topology.path });
        if (ct.table >= FW_TABLE_OUT) throw new FpoError('FPO_ERR_BAD_TOPOLOGY', `${at}: table ${ct.table} is the per-port firewall's; ct(table=N) takes 1..${FW_TABLE_OUT - 1}`, { path: this.topology.path });
        if (ct.table > 0 && j !== r.actions.length - 1) throw new FpoError('FPO_ERR_BAD_TOPOLOGY', `${at}: ct(table=${ct.table}) classifies the packet again, so it must be the rule's last action`, { path: this.topology.path });
        ctAt = j;
        actions.push(ct);
      }
      else if (a === 'normal') {
        if (actions !== null && ctAt >= 0) pre = actions; // ct(commit…),normal: conntrack, then L2's outputs
        actions = null;
      }
      else if (a.startsWith('output:')) {
        const e = this.byName.get(a.slice(7));
        if (!e) throw new FpoError('FPO_ERR_BAD_TOPOLOGY', `${at}: no interface or uplink named "${a.slice(7)}"`, { path: this.topology.path });
        actions?.push(...this.outputsTo(e));
      } else throw new FpoError('FPO_ERR_BAD_TOPOLOGY', `${at}: unknown action "${a}"; expected drop, normal or output:NAME`, { path: this.topology.path });
    });
    const words = Uint8Array.from(Array.from({ length: KEY_WORDS }, (_, w) => w).filter((w) => mask[w] !== 0));
    return { index, priority: r.priority, table, key, mask, words, actions, pre, special: r.special, text: `${table > 0 ? `table ${table} ` : ''}${JSON.stringify(r.match)}` };
  }

  private compileMatch(key: Uint32Array, mask: Uint32Array, field: string, value: string | number, at: string): void {
    if (field === 'in_port') {
      const name = String(value);
      const e = this.byName.get(name);
      const port = this.portByName.get(name);
      if (e) setField(key, mask, 0, 'in_port', e.vpid);
      else if (port) setField(key, mask, 0, 'in_port', (PORT_PPID_BIT | port.ppid) >>> 0);
      else throw new Error(`${at}: no interface or port named "${name}"`);
      return;
    }
    if (!(FIELD_NAMES as string[]).includes(field)) throw new Error(`${at}: unknown field ${JSON.stringify(field)}; expected one of ${FIELD_NAMES.join(', ')}`);
    if (field === 'recirc_id') throw new Error(`${at}: recirc_id is set by ct(table=N); a rule says its table with "table": N`);
    if (field === 'ct_state') {
      const [v, m] = parseCtState(value, at);
      key[W_CT] = ((key[W_CT] & 0x00ffffff) | (v << 24)) >>> 0;
      mask[W_CT] = ((mask[W_CT] & 0x00ffffff) | (m << 24)) >>> 0;
      return;
    }
    const f = FIELDS[field as FieldName];
    if (f.kind === 'mac') {
      if (typeof value !== 'string' || !/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/.test(value)) throw new Error(`${at}: expected a MAC address, got ${JSON.stringify(value)}`);
      setField(key, mask, 0, field as FieldName, parseMac(value));
    } else if (f.kind === 'ipv4') {
      const m = /^(\d+\.\d+\.\d+\.\d+)(?:\/(\d+))?$/.exec(String(value));
      const plen = m?.[2] === undefined ? 32 : Number(m[2]);
      if (!m || m[1].split('.').some((x) => Number(x) > 255) || plen > 32) throw new Error(`${at}: expected an IPv4 address or prefix like 10.0.0.0/24, got ${JSON.stringify(value)}`);
      const pm = plen === 0 ? 0 : (0xffffffff << (32 - plen)) >>> 0;
      const a = parseIpText(m[1])!;
      key[f.word] = ((((a[0] << 24) | (a[1] << 16) | (a[2] << 8) | a[3]) >>> 0) & pm) >>> 0;
      mask[f.word] = pm;
    } else if (f.kind === 'ipv6') {
      const b = parseIpText(String(value));
      if (!b || b.length !== 16) throw new Error(`${at}: expected an IPv6 address, got ${JSON.stringify(value)}`);
      setField(key, mask, 0, field as FieldName, b);
    } else {
      setField(key, mask, 0, field as FieldName, parseIntField(value, f.bits, at));
    }
  }

  // Slow path: one call per miss.

  /**
   * Decides what to do with packets whose key is `key`. With `explain` the
   * decision says why in words (for trace); without, no string is built, as
   * an upcall needs none.
   */
  decide(key: Uint32Array, explain = false): Decision {
    return this.decideInto(key, new Uint32Array(KEY_WORDS), explain);
  }

  /**
   * decide() into a caller's (zeroed) mask array and decision object: the
   * upcall path reuses one of each, so a million upcalls leave no garbage
   * here (they left ~200 bytes each: a decision, an L2 answer, a closure).
   */
  private decideInto(key: Uint32Array, mask: Uint32Array, explain: boolean, out: Decision = { actions: this.dropNoDestination, mask, rule: -1, reason: '' }): Decision {
    this.decideOutputs(key, mask, explain, out);
    if (this.vlanOf.size > 0) this.tagOutputs(key, mask, out);
    return out;
  }

  /**
   * VLAN ops for the decision's outputs (see the top of the file): push for
   * a VM's frame to uplinks, pop for an uplink's tagged frame to VMs.
   */
  private tagOutputs(key: Uint32Array, mask: Uint32Array, out: Decision): void {
    const acts = out.actions;
    let outputs = false;
    for (let j = 0; j < acts.length; j++) if (acts[j].op === 'output') outputs = true;
    if (!outputs) return;
    unwildcardBits(mask, U.in_port);
    const inPort = key[W_IN_PORT];
    if (inPort & PORT_PPID_BIT) return;
    const from = this.endpointOfVpid(inPort);
    if (!from) return;
    if (from.uplink) {
      unwildcardBits(mask, U.tun_id);
      if (key[W_TUN] & TUN_PRESENT) return;
      unwildcardBits(mask, U.vlan_tpid);
      unwildcardBits(mask, U.vlan_vid);
      const vid = key[W_VLAN] >>> 16 ? key[W_VLAN] & 0xfff : 0;
      if (vid === 0 || !this.segByVlan.has(vid)) return;
      out.actions = this.withVlan(acts, -1);
    } else {
      const vid = this.vlanOf.get(from.segments[0]);
      if (vid !== undefined) out.actions = this.withVlan(acts, vid);
    }
  }

  /**
   * `actions` with a VLAN op (op -1: pop_vlan, to VM interfaces; else
   * push_vlan:op, to uplinks) in front of the outputs it applies to, moved
   * after the others; outputs from the first encap on are encapsulated and
   * stay last, as they were. One array per input array and op, reused.
   */
  private withVlan(actions: Action[], op: number): Action[] {
    let variants = this.vlanVariants.get(op);
    if (variants === undefined) this.vlanVariants.set(op, (variants = new WeakMap()));
    const have = variants.get(actions);
    if (have !== undefined) return have;
    const head: Action[] = [];
    const tagged: Action[] = [];
    const tail: Action[] = [];
    for (const a of actions) {
      if (tail.length > 0 || a.op === 'encap') tail.push(a);
      else if (a.op === 'output' && this.byVpid.get(a.vpid)?.uplink === (op >= 0)) tagged.push(a);
      else head.push(a);
    }
    const result = tagged.length === 0 ? actions : [...head, op >= 0 ? { op: 'push_vlan', vid: op } as const : { op: 'pop_vlan' } as const, ...tagged, ...tail];
    variants.set(actions, result);
    return result;
  }

  private decideOutputs(key: Uint32Array, mask: Uint32Array, explain: boolean, out: Decision): Decision {
    out.mask = mask;
    // Every flow matches the table (recirc_id): a first-pass flow never takes a recirculated packet, nor the other way.
    unwildcardBits(mask, U.recirc_id);
    const table = (key[W_CT] >>> 16) & 0xff;
    if (table >= FW_TABLE_OUT) return this.firewallTable(key, mask, explain, out, table);
    const inPort = key[W_IN_PORT];
    const fws = this.firewalls.size > 0;
    if (table === 0) {
      // Port security on the packet as the VM sent it (a recirculated one was checked in table 0; NAT may have changed its source since).
      if ((inPort & PORT_PPID_BIT) === 0) {
        const sec = this.endpointOfVpid(inPort)?.sec;
        if (sec !== undefined && this.portSecurity(key, mask, sec, explain, out)) return out;
      }
      // A firewalled VM's packets are checked as they leave it before any rule decides where they go.
      if (fws && this.firewallFrom(key, mask, explain, out)) return out;
    }
    if (this.rulesOf(table, key, key, mask, explain, out)) {
      // A rule's outputs to a firewalled VM are checked as they arrive (a rule with a ct of its own decides statefully itself).
      if (fws && table === 0 && !hasCt(out.actions)) this.firewallTo(key, mask, explain, out);
      return out;
    }
    out.rule = -1;
    if (table !== 0) {
      // A table other than 0 has no L2 fallback (as an OpenFlow table miss): what its rules do not take is dropped.
      this.say(out, this.dropCtNoRule, explain ? `table ${table}: no rule matched (ct_state ${(key[W_CT] >>> 24).toString(16)}): dropped` : '');
      return out;
    }
    this.l2(key, mask, explain, out);
    if (fws) this.firewallTo(key, mask, explain, out);
    return out;
  }

  /**
   * The rules of `table` tried in order against `ruleKey` (the key, or for
   * table 0's rules in a firewall table the key with its ct word cleared):
   * true when one matched, with `out` its decision (its actions, or L2's for
   * normal). The mask gets every rule's fields.
   */
  private rulesOf(table: number, ruleKey: Uint32Array, key: Uint32Array, mask: Uint32Array, explain: boolean, out: Decision): boolean {
    for (const r of this.rules) {
      if (r.table !== table) continue;
      const words = r.words;
      if (this.ruleFields) {
        let hit = true;
        for (let j = 0; j < words.length; j++) { const w = words[j]; if (((ruleKey[w] ^ r.key[w]) & r.mask[w]) !== 0) hit = false; }
        if (!hit) { for (let j = 0; j < words.length; j++) mask[words[j]] |= r.mask[words[j]]; continue; }
      } else if (!proveMiss(r, ruleKey, mask)) continue;
      for (let j = 0; j < words.length; j++) mask[words[j]] |= r.mask[words[j]];
      out.rule = r.index;
      if (r.actions !== null) {
        out.actions = r.special ? this.withFlag(r.actions) : r.actions;
        out.reason = explain ? `rule ${r.index} (priority ${r.priority}) ${r.text}` : '';
        return true;
      }
      this.l2(key, mask, explain, out);
      if (r.pre !== null) out.actions = this.withPre(r.pre, out.actions);
      if (r.special) out.actions = this.withFlag(out.actions);
      if (explain) out.reason = `rule ${r.index} (priority ${r.priority})${r.table > 0 ? ` in table ${r.table}` : ''} said normal; ${out.reason}`;
      return true;
    }
    return false;
  }

  /** Table 0's decision (its rules, else L2) for a packet a firewall table let through: the rules see it as table 0 does. */
  private forward0(key: Uint32Array, mask: Uint32Array, explain: boolean, out: Decision): void {
    const k0 = this.table0Key;
    k0.set(key);
    k0[W_CT] = 0;
    if (this.rulesOf(0, k0, key, mask, explain, out)) return;
    out.rule = -1;
    this.l2(key, mask, explain, out);
  }

  private readonly table0Key = new Uint32Array(KEY_WORDS);

  /** The firewalled interfaces: name and zone (the firewall upgrade's ports). */
  firewalledPorts(): FirewalledPort[] {
    return [...this.firewalls.values()].map((f) => ({ name: f.name, zone: f.zone }));
  }

  private upgrade_: FirewallUpgrade | null = null;

  /** The per-port firewall's upgrade (control/firewall-upgrade.ts), made at its first use. */
  get firewallUpgrade(): FirewallUpgrade {
    return (this.upgrade_ ??= new FirewallUpgrade(this.dp, () => this.firewalledPorts(), this.failpoints));
  }

  /** Failure injection for the firewall upgrade (FPO_FAILPOINTS; tests). */
  failpoints: Failpoints = failpointsFromEnv(process.env.FPO_FAILPOINTS);

  /** The conntrack zone of the firewall of the interface named so, or undefined (no such interface, or no firewall). */
  firewallZoneOf(name: string): number | undefined {
    for (const fw of this.firewalls.values()) if (fw.name === name) return fw.zone;
    return undefined;
  }

  // --- the per-port firewall (see the top of the file) ---

  /** The name of the firewalled interface whose conntrack zone is `zone`, if one is. */
  private firewallZone(zone: number): string | undefined {
    for (const fw of this.firewalls.values()) if (fw.zone === zone) return fw.name;
    return undefined;
  }

  // Slow path, at load: an interface's rules as key/mask words, refused by field when they cannot mean anything.
  private compileFirewall(itf: Interface, n: number): Firewall {
    const rules = itf.firewall as FirewallRule[];
    const node = this.topology.interfaces[n].node;
    const zone = itf.vpid & 0xffff;
    const fw: Firewall = {
      name: itf.name, zone, out: [], in: [],
      toOut: [{ op: 'ct', zone, commit: false, table: FW_TABLE_OUT, fw: true }],
      toIn: [{ op: 'ct', zone, commit: false, table: FW_TABLE_IN, fw: true }],
      commit: [{ op: 'ct', zone, commit: true, table: -1, fw: true }],
    };
    rules.forEach((r, j) => {
      const where = `${this.topology.path}: interface ${itf.name} (node ${node}).firewall[${j}]`;
      const key = new Uint32Array(KEY_WORDS);
      const mask = new Uint32Array(KEY_WORDS);
      const protos: Record<string, [number, number]> = { tcp: [0, 6], udp: [0, 17], icmp: [0x0800, 1], icmp6: [0x86dd, 58] };
      if (r.proto !== 'any') {
        const [et, p] = protos[r.proto];
        if (et !== 0) setField(key, mask, 0, 'eth_type', et);
        setField(key, mask, 0, 'ip_proto', p);
      }
      if (r.remote !== undefined) {
        const { addr, plen } = parseFirewallRemote(r.remote)!;
        const v6 = addr.length === 16;
        if ((r.proto === 'icmp' && v6) || (r.proto === 'icmp6' && !v6)) throw new FpoError('FPO_ERR_BAD_TOPOLOGY', `${where}.remote: ${r.remote} is IPv${v6 ? 6 : 4}, the rule's proto ${r.proto} is not`, { path: this.topology.path });
        setField(key, mask, 0, 'eth_type', v6 ? 0x86dd : 0x0800);
        const word = r.direction === 'out' ? W_IP_DST : W_IP_SRC;
        for (let w = 0; w < addr.length / 4; w++) {
          const bits = Math.max(0, Math.min(32, plen - w * 32));
          const m = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
          key[word + w] = (((addr[w * 4] << 24) | (addr[w * 4 + 1] << 16) | (addr[w * 4 + 2] << 8) | addr[w * 4 + 3]) & m) >>> 0;
          mask[word + w] = m;
        }
      }
      const ports = r.ports !== undefined ? parsePortRange(r.ports) : null;
      if (ports !== null && r.proto !== 'tcp' && r.proto !== 'udp') throw new FpoError('FPO_ERR_BAD_TOPOLOGY', `${where}.ports: a port needs proto tcp or udp (the rule's proto is ${r.proto})`, { path: this.topology.path });
      fw[r.direction].push({ allow: r.action === 'allow', key, mask, ports, text: `${itf.name} firewall[${j}] ${r.direction} ${r.action} ${r.proto}${r.remote ? ` ${r.remote}` : ''}${ports ? ` port ${ports[0]}${ports[1] !== ports[0] ? `-${ports[1]}` : ''}` : ''}` });
    });
    return fw;
  }

  /** Whether the firewall looks at this packet: IP, not IPv6 neighbour discovery. The mask gets what it looked at. */
  private firewalled(key: Uint32Array, mask: Uint32Array): boolean {
    unwildcardBits(mask, U.eth_type);
    const et = key[W_ETH_TYPE] >>> 16;
    if (et !== 0x0800 && et !== 0x86dd) return false;
    if (et === 0x86dd) {
      // Neighbour discovery (ICMPv6 133..137) is IPv6's ARP: not filtered, as ARP is not (and as
      // security groups always allow it). Filtered, no IPv6 rule could work: a VM never learnt its peer's MAC.
      unwildcardBits(mask, U.ip_proto);
      if (((key[W_ETH_TYPE] >>> 8) & 0xff) === 58) {
        unwildcardBits(mask, U.tp_src);
        const type = key[W_TP] >>> 16;
        if (type >= 133 && type <= 137) return false;
      }
    }
    return true;
  }

  /** Table 0, first: an IP packet from a firewalled interface goes to be checked as it leaves (FW_TABLE_OUT); true then. */
  private firewallFrom(key: Uint32Array, mask: Uint32Array, explain: boolean, out: Decision): boolean {
    const inPort = key[W_IN_PORT];
    if ((inPort & PORT_PPID_BIT) !== 0) return false;
    unwildcardBits(mask, U.in_port);
    const from = this.firewalls.get(inPort);
    if (from === undefined || !this.firewalled(key, mask)) return false;
    out.rule = -1;
    out.actions = from.toOut;
    out.reason = explain ? `from ${from.name}, which has a firewall: conntrack in zone ${from.zone}, checked in table ${FW_TABLE_OUT} before any rule` : '';
    return true;
  }

  /**
   * Table 0, once a rule or L2 has said where the packet goes: to a single
   * firewalled interface, it goes to be checked as it arrives (FW_TABLE_IN);
   * to several, each firewalled receiver's copy only if its rules allow it.
   */
  private firewallTo(key: Uint32Array, mask: Uint32Array, explain: boolean, out: Decision): void {
    if (!this.firewalled(key, mask)) return;
    const to = this.firewalls.get(singleOutput(out.actions));
    if (to !== undefined) {
      out.actions = to.toIn;
      if (explain) out.reason = `${out.reason}; to ${to.name}, which has a firewall: conntrack in zone ${to.zone}, checked in table ${FW_TABLE_IN}`;
      return;
    }
    this.firewallFlood(key, mask, explain, out);
  }

  /**
   * A flood (broadcast, multicast, unknown unicast) that L2 sends to several
   * ports: one conntrack pass cannot check it in each receiver's zone, and
   * a broadcast or multicast is no connection anyone's conntrack could call
   * a reply. So each firewalled receiver gets its copy only when its `in`
   * rules allow the packet as a new connection (the first rule that matches
   * says; none: no copy), and nothing is committed. Without this a TCP SYN
   * to a firewalled VM's address with eth_dst ff:ff:ff:ff:ff:ff reached it
   * whatever its rules said. The mask gets the fields the rules looked at.
   */
  private firewallFlood(key: Uint32Array, mask: Uint32Array, explain: boolean, out: Decision): void {
    const acts = out.actions;
    let refused = '';
    for (const a of acts) {
      if (a.op === 'encap') break; // outputs from here on are encapsulated to remote hosts
      if (a.op !== 'output') continue;
      const fw = this.firewalls.get(a.vpid);
      if (fw !== undefined && !this.firewallAllowsNew(fw.in, key, mask)) refused += `${a.vpid},`;
    }
    if (refused === '') return;
    let byRefused = this.floodsFiltered.get(acts);
    if (byRefused === undefined) this.floodsFiltered.set(acts, (byRefused = new Map()));
    let kept = byRefused.get(refused);
    if (kept === undefined) {
      const drop = new Set(refused.split(',').filter((v) => v !== '').map(Number));
      let encapped = false;
      kept = acts.filter((a) => {
        if (a.op === 'encap') encapped = true;
        return encapped || a.op !== 'output' || !drop.has(a.vpid);
      });
      if (!kept.some((a) => a.op === 'output')) kept = this.dropFirewall;
      byRefused.set(refused, kept);
    }
    out.actions = kept;
    if (explain) out.reason = `${out.reason}; not to ${refused.split(',').filter((v) => v !== '').map((v) => this.firewalls.get(Number(v))!.name).join(', ')}: a flood their firewall's in rules do not allow`;
  }

  /** Flood actions without the outputs to firewalled receivers that refused the packet, by the refused VPIDs. */
  private readonly floodsFiltered = new WeakMap<Action[], Map<string, Action[]>>();

  /** Whether the first of `rules` that matches the packet allows it (none: no). The mask gets every field looked at. */
  private firewallAllowsNew(rules: CompiledFwRule[], key: Uint32Array, mask: Uint32Array): boolean {
    return firstFirewallRule(rules, key, mask)?.allow ?? false;
  }

  /** The firewall's tables: the packet's ct_state in the interface's zone, its rules, then where L2 sends it. */
  private firewallTable(key: Uint32Array, mask: Uint32Array, explain: boolean, out: Decision, table: number): Decision {
    out.rule = -1;
    unwildcardBits(mask, U.ct_state);
    unwildcardBits(mask, U.in_port);
    if (table === FW_TABLE_OUT) {
      const fw = this.firewalls.get(key[W_IN_PORT]);
      if (fw === undefined) { this.say(out, this.dropCtNoRule, explain ? `table ${table}: in_port has no firewall (now)` : ''); return out; }
      const v = this.firewallVerdict(fw.out, key, mask);
      if (v.verdict === FW_DROP) { this.say(out, this.dropFirewall, explain ? `${fw.name}'s firewall, out: ${v.why}: dropped` : ''); return out; }
      this.forward0(key, mask, explain, out);
      const to = hasCt(out.actions) ? undefined : this.firewalls.get(singleOutput(out.actions));
      if (to === undefined && !hasCt(out.actions)) this.firewallFlood(key, mask, explain, out);
      if (out.actions === this.dropFirewall) { if (explain) out.reason = `${fw.name}'s firewall, out: ${v.why}; ${out.reason}`; return out; }
      let acts = to !== undefined ? to.toIn : out.actions;
      if (v.verdict === FW_COMMIT) acts = this.withPre(fw.commit, acts);
      out.actions = acts;
      if (explain) out.reason = `${fw.name}'s firewall, out: ${v.why}; ${out.reason}${to !== undefined ? `; to ${to.name}, which has a firewall: checked in table ${FW_TABLE_IN}` : ''}`;
      return out;
    }
    this.forward0(key, mask, explain, out);
    const fw = this.firewalls.get(singleOutput(out.actions));
    if (fw === undefined) { this.say(out, this.dropCtNoRule, explain ? `table ${table}: it goes to no single firewalled interface (now)` : ''); return out; }
    const v = this.firewallVerdict(fw.in, key, mask);
    if (v.verdict === FW_DROP) { this.say(out, this.dropFirewall, explain ? `${fw.name}'s firewall, in: ${v.why}: dropped` : ''); return out; }
    if (v.verdict === FW_COMMIT) out.actions = this.withPre(fw.commit, out.actions);
    if (explain) out.reason = `${fw.name}'s firewall, in: ${v.why}; ${out.reason}`;
    return out;
  }

  /** What a firewall's rules for one direction say of the packet (its mask gets every field looked at). */
  private firewallVerdict(rules: CompiledFwRule[], key: Uint32Array, mask: Uint32Array): { verdict: number; why: string } {
    const st = key[W_CT] >>> 24;
    if ((st & CS_TRK) === 0 || (st & CS_INV) !== 0) return { verdict: FW_DROP, why: 'ct_state inv' };
    if ((st & CS_NEW) === 0) return { verdict: FW_PASS, why: 'a connection it allowed (est or rel)' };
    const r = firstFirewallRule(rules, key, mask);
    if (r !== null) return { verdict: r.allow ? FW_COMMIT : FW_DROP, why: `a new connection: ${r.text}` };
    return { verdict: FW_DROP, why: 'a new connection no rule allows' };
  }

  private readonly dropCtNoRule: Action[] = [{ op: 'drop', reason: D.ctNoRule }];

  /**
   * Port security for a packet from an interface with it on (see the top of
   * the file): true, with out set to a drop, when the packet may not pass.
   * The mask gets every field looked at.
   */
  private portSecurity(key: Uint32Array, mask: Uint32Array, sec: PortSecurity, explain: boolean, out: Decision): boolean {
    unwildcardBits(mask, U.in_port);
    unwildcardBits(mask, U.eth_src);
    out.rule = -1;
    if ((key[W_ETH_MID] & 0xffff) !== sec.mac3 || key[W_ETH_SRC_LO] !== sec.mac4) {
      this.say(out, this.dropPortSecMac, explain ? `port security: source MAC ${macToString((((key[W_ETH_MID] & 0xffff) << 16) | (key[W_ETH_SRC_LO] >>> 16)) >>> 0, key[W_ETH_SRC_LO] & 0xffff)} is not the interface's` : '');
      return true;
    }
    unwildcardBits(mask, U.eth_type);
    const et = key[W_ETH_TYPE] >>> 16;
    if (et === 0x0806) {
      unwildcardBits(mask, U.ip_frag);
      if ((key[W_ETH_TYPE] & ARP_SHA_NOT_SRC) !== 0) {
        this.say(out, this.dropPortSecArp, explain ? 'port security: the ARP sender MAC is not the frame\'s source (the interface\'s)' : '');
        return true;
      }
    }
    if (sec.ipv4.length === 0) return false;
    if (et === 0x0800 || et === 0x0806) {
      mask[W_IP_SRC] = 0xffffffff;
      const src = key[W_IP_SRC];
      if (sec.ipv4.includes(src)) return false;
      if (src === 0 && et === 0x0806) return false; // an ARP probe (RFC 5227)
      if (src === 0) {
        // A DHCPv4 client before it has an address: 0.0.0.0:68 → 255.255.255.255:67.
        unwildcardBits(mask, U.ip_proto);
        unwildcardBits(mask, U.ipv4_dst);
        unwildcardBits(mask, U.tp_src);
        unwildcardBits(mask, U.tp_dst);
        if (((key[W_ETH_TYPE] >>> 8) & 0xff) === 17 && key[W_IP_DST] === 0xffffffff && key[W_TP] === ((68 << 16) | 67)) return false;
      }
      const arp = et === 0x0806;
      this.say(out, arp ? this.dropPortSecArp : this.dropPortSecIpv4, explain ? `port security: ${arp ? 'ARP sender' : 'IPv4 source'} ${ipv4ToString(src)} is not the interface's` : '');
      return true;
    }
    if (et === 0x86dd) {
      for (let w = 0; w < 4; w++) mask[W_IP_SRC + w] = 0xffffffff;
      for (const a of sec.ipv6) if (key[W_IP_SRC] === a[0] && key[W_IP_SRC + 1] === a[1] && key[W_IP_SRC + 2] === a[2] && key[W_IP_SRC + 3] === a[3]) return false;
      if ((key[W_IP_SRC] | key[W_IP_SRC + 1] | key[W_IP_SRC + 2] | key[W_IP_SRC + 3]) === 0) {
        // DAD and MLD before an address is valid: :: to ff02::/16, ICMPv6 131, 135 or 143.
        unwildcardBits(mask, U.ip_proto);
        unwildcardBits(mask, U.tp_src);
        mask[W_IP_DST] = (mask[W_IP_DST] | 0xffff0000) >>> 0;
        const type = key[W_TP] >>> 16;
        if (((key[W_ETH_TYPE] >>> 8) & 0xff) === 58 && key[W_IP_DST] >>> 16 === 0xff02 && (type === 131 || type === 135 || type === 143)) return false;
      }
      this.say(out, this.dropPortSecIpv6, explain ? `port security: IPv6 source ${ipv6ToString(key, W_IP_SRC)} is not the interface's` : '');
      return true;
    }
    return false;
  }

  private readonly dropPortSecMac: Action[] = [{ op: 'drop', reason: D.portSecMac }];
  private readonly dropPortSecIpv4: Action[] = [{ op: 'drop', reason: D.portSecIpv4 }];
  private readonly dropPortSecArp: Action[] = [{ op: 'drop', reason: D.portSecArp }];
  private readonly dropPortSecIpv6: Action[] = [{ op: 'drop', reason: D.portSecIpv6 }];

  /** The actions that send a copy to endpoint e: an output, or for a remote interface encap + output to the uplink. */
  private outputsTo(e: Endpoint): Action[] {
    if (e.tunnel === undefined) return [{ op: 'output', vpid: e.vpid }];
    const vni = this.topology.segments.find((s) => s.name === e.segments[0])!.vni!;
    return [{ op: 'encap', tunnel: e.tunnel, vni }, { op: 'output', vpid: e.viaVpid! }];
  }

  /** The same actions with the flag in front (one array per input array, reused). */
  private withFlag(actions: Action[]): Action[] {
    let f = this.flaggedActions.get(actions);
    if (f === undefined) {
      f = [{ op: 'flag' }, ...actions];
      this.flaggedActions.set(actions, f);
    }
    return f;
  }

  private readonly flaggedActions = new WeakMap<Action[], Action[]>();

  /** `pre` then `actions` (one array per pair, reused: L2's answers are cached arrays too). */
  private withPre(pre: Action[], actions: Action[]): Action[] {
    let byActions = this.preActions.get(pre);
    if (byActions === undefined) this.preActions.set(pre, (byActions = new WeakMap()));
    let joined = byActions.get(actions);
    if (joined === undefined) byActions.set(actions, (joined = [...pre, ...actions]));
    return joined;
  }

  private readonly preActions = new WeakMap<Action[], WeakMap<Action[], Action[]>>();

  /** Name of the remote host of tunnel t. */
  tunnelName(t: number): string | undefined {
    return this.topology.tunnel?.remotes[t]?.name;
  }

  // L2 forwarding's answer into out.actions and out.reason.
  private l2(key: Uint32Array, mask: Uint32Array, explain: boolean, out: Decision): void {
    unwildcardBits(mask, U.in_port);
    const inPort = key[W_IN_PORT];
    if (inPort & PORT_PPID_BIT) {
      // A port with no VPID: an uplink whose mapping is missing, or a VM port with no interface now.
      const port = this.portByPpid.get(inPort & ~PORT_PPID_BIT);
      return this.say(out, this.dropNoDestination, explain ? `in_port ppid ${inPort & ~PORT_PPID_BIT}${port ? ` (${port.name})` : ''} carries no VPID` : '');
    }
    const from = this.endpointOfVpid(inPort);
    if (!from) return this.say(out, this.dropNoDestination, explain ? `in_port vpid ${inPort} is unknown` : '');
    const inVpid = from.vpid;
    let segment: string | undefined;
    if (from.uplink && key[W_TUN] & TUN_PRESENT) {
      // Decapsulated: the VNI says the segment.
      unwildcardBits(mask, U.tun_id);
      const vni = key[W_TUN] & 0xffffff;
      if (vni !== this.lastVni) {
        this.lastVni = vni;
        this.lastVniSegment = this.segByVni.get(vni);
      }
      segment = this.lastVniSegment;
      if (!segment) return this.say(out, this.dropNoDestination, explain ? `no segment has VNI ${vni}` : '');
    } else if (from.uplink) {
      unwildcardBits(mask, U.tun_id);
      unwildcardBits(mask, U.vlan_tpid);
      unwildcardBits(mask, U.vlan_vid);
      const vid = key[W_VLAN] >>> 16 ? key[W_VLAN] & 0xfff : 0;
      if (vid !== this.lastVid || from !== this.lastVidFrom) {
        this.lastVid = vid;
        this.lastVidFrom = from;
        const seg = this.segByVlan.get(vid);
        this.lastVidSegment = seg !== undefined && from.segments.includes(seg) ? seg : undefined;
      }
      segment = this.lastVidSegment;
      if (!segment) return this.say(out, this.dropNoDestination, explain ? `uplink ${from.name} carries no segment for VLAN ${vid}` : '');
    } else {
      segment = from.segments[0];
    }
    unwildcardBits(mask, U.eth_dst);
    const dstHi = key[W_ETH_DST_HI];
    const dstLo = key[W_ETH_MID] >>> 16;
    const dst = explain ? macToString(dstHi, dstLo) : '';
    if (segment !== this.lastSegment) {
      this.lastSegment = segment;
      this.lastMembers = this.members.get(segment) ?? [];
      this.lastMacs = this.byMac.get(segment);
    }
    const group = this.lastMembers;
    const fromTunnel = (key[W_TUN] & TUN_PRESENT) !== 0;
    const floodKey = fromTunnel ? `${segment}/t` : segment; // flood(): split horizon for tunnel traffic
    const flagFrom = (from.flag ??= this.flagged.has(from.name));
    if ((dstHi >>> 24) & 1) {
      const flooded = flagFrom ? this.withFlag(this.flood(from, floodKey, group, fromTunnel)) : this.flood(from, floodKey, group, fromTunnel);
      return this.say(out, flooded, explain ? `L2 ${dst === 'ff:ff:ff:ff:ff:ff' ? 'broadcast' : 'multicast'} in segment ${segment}: flood to ${flooded.length}` : '');
    }
    const to = this.lastMacs?.get(dstHi, dstLo);
    if (to) {
      if (to.vpid === inVpid) return this.say(out, this.dropNoDestination, explain ? `L2 ${dst} is the sender itself` : '');
      if (to.tunnel !== undefined && from.uplink) return this.say(out, this.dropNoDestination, explain ? `L2 ${dst} is remote; not sent back into the underlay` : '');
      const outs = (to.toActions ??= this.outputsTo(to));
      const flag = flagFrom || (to.flag ??= this.flagged.has(to.name));
      return this.say(out, flag ? this.withFlag(outs) : outs, explain ? `L2 ${dst} is ${to.name} (${to.tunnel === undefined ? `vpid ${to.vpid}` : `through tunnel ${to.tunnel} to ${this.tunnelName(to.tunnel)}`}) in segment ${segment}` : '');
    }
    const flooded = flagFrom ? this.withFlag(this.flood(from, floodKey, group, fromTunnel)) : this.flood(from, floodKey, group, fromTunnel);
    return this.say(out, flooded, explain ? `L2 ${dst} unknown in segment ${segment}: flood to ${flooded.length}` : '');
  }

  /**
   * byVpid.get, the last answer kept: a batch's upcalls come from one port
   * (a Map's get of a number had cost ~15 ns a decision). Set back (-1)
   * wherever byVpid changes.
   */
  private endpointOfVpid(vpid: number): Endpoint | undefined {
    if (vpid !== this.lastVpid) {
      this.lastVpid = vpid;
      this.lastEndpoint = this.byVpid.get(vpid);
    }
    return this.lastEndpoint;
  }

  private lastVpid = -1;
  private lastEndpoint: Endpoint | undefined = undefined;
  /** l2's last VNI and segment looked up (segByVni, and each segment's members and MAC table, are made once and changed in place only). */
  private lastVni = -1;
  /** l2's last uplink and VLAN ID, and the segment they say (undefined: none the uplink carries; segByVlan and an uplink's segments are made once). */
  private lastVid = -1;
  private lastVidFrom: Endpoint | undefined = undefined;
  private lastVidSegment: string | undefined = undefined;
  private lastVniSegment: string | undefined = undefined;
  private lastSegment: string | undefined = undefined;
  private lastMembers: Endpoint[] = [];
  private lastMacs: MacTable<Endpoint> | undefined = undefined;

  private say(out: Decision, actions: Action[], reason: string): void {
    out.actions = actions;
    out.reason = reason;
  }

  /**
   * The flood of a packet from endpoint `from` in a segment (cached per
   * endpoint and key): every other local member; remote hosts (one copy
   * each, encapsulated) unless the packet came from an uplink or a tunnel
   * (split horizon: never back into the underlay).
   */
  private flood(from: Endpoint, floodKey: string, group: Endpoint[], fromTunnel: boolean): Action[] {
    const floods = (from.floods ??= new Map());
    const cached = floods.get(floodKey);
    if (cached !== undefined) return cached;
    const out: Action[] = [];
    const tunnels = new Set<number>();
    for (const e of group) {
      if (e.vpid === from.vpid && e.tunnel === undefined) continue;
      if (e.tunnel !== undefined) {
        if (from.uplink || tunnels.has(e.tunnel)) continue;
        tunnels.add(e.tunnel);
      } else if (e.uplink && fromTunnel) continue;
      out.push(...this.outputsTo(e));
    }
    floods.set(floodKey, out);
    return out;
  }

  /** The batch path's megaflows of the batch being answered (onUpcalls). */
  private readonly batchFlows = new BatchFlows();
  /** Views of an UpcallBatch's keys, one a key (made once for each keys array: the decision reads them in place, no copy). */
  private keyViews = new WeakMap<Uint32Array, Uint32Array[]>();

  // Slow path (once a keys array): the views of its keys.
  private viewsOf(keys: Uint32Array): Uint32Array[] {
    let v = this.keyViews.get(keys);
    if (v === undefined) {
      v = Array.from({ length: Math.floor(keys.length / KEY_WORDS) }, (_, j) => keys.subarray(j * KEY_WORDS, (j + 1) * KEY_WORDS));
      this.keyViews.set(keys, v);
    }
    return v;
  }
  /** Upcalled keys a megaflow decided earlier in their batch covered (no decision of their own). */
  get upcallsCovered(): number { return this.batchFlows.covered; }

  /**
   * A batch's misses: each key a megaflow of the batch does not cover yet is
   * decided (as onUpcall); the batch's megaflows go back as one FlowInstalls.
   */
  private onUpcalls(u: UpcallBatch): void {
    const bf = this.batchFlows;
    // A whole batch (its keys put till this returns): its flows name its keys where they are.
    if (!u.continues) bf.begin(u.whole ? u.keys : null);
    else if (bf.inPlace !== null) throw new FpoError('FPO_ERR_USAGE', 'upcalls: a batch said whole went on in another call');
    const from = bf.message.count;
    const coveredBefore = bf.covered;
    const views = this.viewsOf(u.keys);
    const entry = u.entry;
    for (let j = 0; j < u.count; j++) {
      const key = views[j];
      const e = bf.covering(key);
      if (e >= 0) { entry[j] = e; continue; }
      this.upcallsHandled++;
      const mask = this.scratchMask;
      clearKey(mask, 0); // (fill(0), a builtin's call, and a loop both cost more for 19 words)
      const d = this.decideInto(key, mask, false, this.upcallDecision);
      entry[j] = bf.add(key, mask, d.actions, j);
    }
    u.entries = true;
    u.covered = bf.covered - coveredBefore;
    if (bf.message.count > from) this.dp.apply(from === 0 ? bf.message : bf.since(from));
  }

  private onUpcall(u: Upcall): void {
    this.upcallsHandled++;
    const mask = this.scratchMask.fill(0);
    const d = this.decideInto(u.key, mask, false, this.upcallDecision);
    // The datapath copies key and mask into its tables and interns the actions: the
    // scratch arrays, decision and message can be reused.
    const m = this.installMsg;
    m.key = u.key;
    m.mask = mask;
    m.actions = d.actions;
    this.dp.apply(m);
  }

  /**
   * A VM that left for another host of the tunnel (a live migration's
   * source, issue 21): its interface becomes a remote one behind `host`, so
   * what L2 sent to its VPID now goes through the tunnel to that host. Its
   * VPID is unmapped here (and stays reserved); installed flows are
   * revalidated into tunnel outputs (their rewrites counted here — the
   * destination rewrites none: it maps the same interface to its port).
   * Refused, with nothing changed, for an unknown interface or host, or an
   * interface that is not local.
   */
  moveToRemote(name: string, host: string, commit?: (c: Change) => void): { vpid: number; remote: string; flowRewrites: number } {
    const itf = this.topology.interfaces.find((i) => i.name === name);
    if (!itf) throw new FpoError('FPO_ERR_USAGE', `interface: no interface named "${name.slice(0, 80)}"`);
    const remotes = this.topology.tunnel?.remotes ?? [];
    const t = remotes.findIndex((r) => r.name === host);
    if (t < 0) throw new FpoError('FPO_ERR_USAGE', `remote: "${host.slice(0, 80)}" is no remote host of this host's tunnel (${remotes.map((r) => r.name).join(', ') || 'none'})`);
    const e = this.byName.get(name);
    if (e === undefined || e.uplink || e.tunnel !== undefined) throw new FpoError('FPO_ERR_USAGE', `interface: ${name} is not a local interface here`);
    commit?.({ interface: name, vpid: itf.vpid, port: null });
    this.dp.apply({ type: 'mapping-set', vpid: itf.vpid, ppid: -1 });
    itf.port = undefined;
    e.tunnel = t;
    e.viaVpid = this.portByName.get(remotes[t].uplink)!.vpid;
    this.clearCaches();
    const r = this.revalidate();
    const rewrites = r.modified + r.deleted;
    this.migrations++;
    this.flowRewrites += rewrites;
    return { vpid: itf.vpid, remote: host, flowRewrites: rewrites };
  }

  /**
   * A remote host learnt at run time (the etcd directory, issue 22): a tunnel
   * to it, added once (its index). Refused without a tunnel in this host's
   * topology.
   */
  addRemoteHost(h: { name: string; vtep: string; mac: string; kind?: 'vxlan' | 'geneve' }): number {
    const t = this.topology.tunnel;
    if (!t) throw new FpoError('FPO_ERR_USAGE', 'remote host: this host\'s topology has no tunnel');
    const known = t.remotes.findIndex((r) => r.name === h.name);
    if (known >= 0) {
      // The host again, maybe moved (restarted on a new address, its name reused): the tunnel follows it.
      const r = t.remotes[known];
      const kind = h.kind ?? t.kind;
      if (r.vtep !== h.vtep || r.mac.toLowerCase() !== h.mac.toLowerCase() || (r.kind ?? t.kind) !== kind) {
        this.dp.apply({ type: 'tunnel-set', id: known, tunnel: { kind, srcMac: parseMac(t.mac), dstMac: parseMac(h.mac), srcIp: parseIp(t.sendFrom ?? t.vtep), dstIp: parseIp(h.vtep) } });
        r.vtep = h.vtep;
        r.mac = h.mac;
        (r as { kind?: 'vxlan' | 'geneve' }).kind = kind;
        this.tunnelsMoved++;
      }
      return known;
    }
    const uplink = this.topology.ports.find((p) => p.role === 'uplink');
    if (!uplink) throw new FpoError('FPO_ERR_USAGE', 'remote host: this host has no uplink to reach it');
    t.remotes.push({ name: h.name, vtep: h.vtep, mac: h.mac, uplink: uplink.name, kind: h.kind, interfaces: [] } as (typeof t.remotes)[number]);
    this.dp.apply({ type: 'tunnel-add', tunnel: { kind: h.kind ?? t.kind, srcMac: parseMac(t.mac), dstMac: parseMac(h.mac), srcIp: parseIp(t.sendFrom ?? t.vtep), dstIp: parseIp(h.vtep) } });
    return t.remotes.length - 1;
  }

  /**
   * A VM interface behind remote host `host` learnt at run time (issue 22):
   * L2 sends to its MAC through the tunnel from now on (flows revalidated).
   * false, nothing changed, when its segment is not one of this host's or its
   * name is a local interface's; an earlier remote entry of the name is
   * replaced.
   */
  addRemoteInterface(host: string, i: { name: string; mac: string; segment: string }): boolean {
    if (this.remoteConflict(host, i) !== null) return false;
    const t = this.topology.tunnel!.remotes.findIndex((r) => r.name === host);
    const old = this.byName.get(i.name);
    if (old !== undefined) this.dropEndpoint(old);
    const remote = this.topology.tunnel!.remotes[t];
    const e: Endpoint = { vpid: -1, name: i.name, segments: [i.segment], mac: i.mac.toLowerCase(), uplink: false, tunnel: t, viaVpid: this.portByName.get(remote.uplink)!.vpid };
    this.byName.set(e.name, e);
    this.members.get(i.segment)!.push(e);
    this.byMac.get(i.segment)!.setMac(macNumber(parseMac(i.mac), 0), e);
    this.clearCaches();
    const r = this.revalidate();
    this.flowRewrites += r.modified + r.deleted;
    return true;
  }

  /**
   * Why a remote interface cannot be taken here, or null: an unknown host,
   * a segment this host does not have, a name a local interface or uplink
   * has, or a MAC another endpoint of the segment has (taking it would send
   * that one's traffic into the tunnel).
   */
  remoteConflict(host: string, i: { name: string; mac: string; segment: string }): string | null {
    const t = this.topology.tunnel?.remotes.findIndex((r) => r.name === host) ?? -1;
    if (t < 0) return `host ${host} is not a remote host here`;
    if (!this.members.has(i.segment)) return `segment ${i.segment} is not one of this host's`;
    const old = this.byName.get(i.name);
    if (old !== undefined && old.tunnel === undefined) return `${i.name} is a local ${old.uplink ? 'uplink' : 'interface'}'s name here`;
    const same = this.byMac.get(i.segment)!.getMac(macNumber(parseMac(i.mac), 0));
    if (same !== undefined && same.name !== i.name) return `MAC ${i.mac} is ${same.name}'s in segment ${i.segment}`;
    return null;
  }

  /** A remote interface that left the directory (its VM gone, or its host): forgotten, flows revalidated. false when unknown or local. */
  removeRemoteInterface(name: string): boolean {
    const e = this.byName.get(name);
    if (e === undefined || e.tunnel === undefined) return false;
    this.dropEndpoint(e);
    this.clearCaches();
    const r = this.revalidate();
    this.flowRewrites += r.modified + r.deleted;
    return true;
  }

  /** Throws FpoError (nothing changed) when `arrive` would refuse. */
  checkArrive(i: { name: string; mac: string; segment: string }, port: string, vpid: number | null): void {
    const p = this.portByName.get(port);
    if (!p) throw new FpoError('FPO_ERR_USAGE', `port: no port named "${port.slice(0, 80)}"; ports are ${[...this.portByName.keys()].join(', ')}`);
    if (p.role !== 'vm') throw new FpoError('FPO_ERR_USAGE', `port: "${port}" is an uplink; interfaces attach to VM ports`);
    const itf = this.topology.interfaces.find((x) => x.name === i.name);
    const holder = this.topology.interfaces.find((x) => x.port === port && x !== itf);
    if (holder) throw new FpoError('FPO_ERR_USAGE', `port: "${port}" carries interface "${holder.name}"`);
    if (!this.members.has(i.segment)) throw new FpoError('FPO_ERR_USAGE', `segment: "${i.segment.slice(0, 80)}" is not a segment of this host`);
    if (itf !== undefined && (itf.mac !== i.mac.toLowerCase() || itf.segment !== i.segment)) throw new FpoError('FPO_ERR_USAGE', `interface: ${i.name} is ${itf.mac} on ${itf.segment} in this host's topology`);
    const max = this.dp.mapping.maxVpid;
    if (vpid !== null) {
      if (!(Number.isInteger(vpid) && vpid >= 1 && vpid <= max)) throw new FpoError('FPO_ERR_USAGE', `vpid: expected an integer in 1..${max}, got ${vpid}`);
      const own = itf !== undefined ? this.byVpid.get(itf.vpid) : undefined;
      const other = this.byVpid.get(vpid);
      if (other !== undefined && other !== own) throw new FpoError('FPO_ERR_USAGE', `vpid: ${vpid} is in use here (${other.uplink ? 'uplink' : 'interface'} "${other.name}")`);
    }
    const current = this.byName.get(i.name);
    if (current !== undefined && current.uplink) throw new FpoError('FPO_ERR_USAGE', `interface: "${i.name}" is an uplink's name here`);
    const sameMac = this.byMac.get(i.segment)!.getMac(macNumber(parseMac(i.mac), 0));
    if (sameMac !== undefined && sameMac.name !== i.name) throw new FpoError('FPO_ERR_USAGE', `mac: ${i.mac} is "${sameMac.name}"'s in segment ${i.segment}`);
  }

  /** The MAC a remote interface has here, or null. */
  remoteMacOf(name: string): string | null {
    const e = this.byName.get(name);
    return e?.tunnel !== undefined ? e.mac ?? null : null;
  }

  /**
   * A VM interface that runs here now (issue 22: moved here from another
   * host, or started here): local, on VM port `port`, under `vpid` (the one
   * the directory keeps for it). An interface of this host's topology comes
   * back under its own record (its firewall with it); one known only from
   * the directory gets a record here. Its remote entry, if any, goes; its
   * VPID is mapped to the port (one mapping update) and the flows are
   * revalidated (what went through the tunnel to it now goes to the port).
   * Refused, nothing changed, for a port that is no free VM port, a segment
   * that is not this host's, or a VPID another endpoint here holds.
   */
  arrive(i: { name: string; mac: string; ip?: string; segment: string }, port: string, vpid: number, commit?: (c: Change) => void): { vpid: number; ppid: number; flowRewrites: number } {
    this.checkArrive(i, port, vpid);
    const p = this.portByName.get(port)!;
    let itf = this.topology.interfaces.find((x) => x.name === i.name);
    const own = itf !== undefined ? this.byVpid.get(itf.vpid) : undefined;
    const current = this.byName.get(i.name);
    commit?.({ interface: i.name, vpid, port });
    // Its remote entry (behind another host's tunnel) goes.
    if (current !== undefined && current.tunnel !== undefined) this.dropEndpoint(current);
    let e = own;
    if (itf === undefined) {
      // Port security on, as for an interface of the topology (the default there).
      itf = { name: i.name, node: i.name, mac: i.mac.toLowerCase(), macBytes: parseMac(i.mac), ...(i.ip !== undefined ? { ip: i.ip } : {}), segment: i.segment, port, vpid, portSecurity: true };
      this.topology.interfaces.push(itf);
    }
    if (e === undefined) e = { vpid, name: itf.name, segments: [itf.segment], mac: itf.mac, uplink: false, ...(itf.portSecurity ? { sec: portSecurityOf(itf) } : {}) };
    if (e.vpid !== vpid) this.releaseVpid(e.vpid, vpid);
    e.vpid = vpid;
    e.tunnel = undefined;
    e.viaVpid = undefined;
    itf.vpid = vpid;
    itf.port = port;
    this.byVpid.set(vpid, e);
    this.lastVpid = -1;
    if (this.byName.get(e.name) !== e) {
      this.byName.set(e.name, e);
      for (const s of e.segments) if (!this.members.get(s)!.includes(e)) this.members.get(s)!.push(e);
      this.byMac.get(itf.segment)!.setMac(macNumber(itf.macBytes, 0), e);
    }
    this.dp.apply({ type: 'mapping-set', vpid, ppid: p.ppid });
    this.clearCaches();
    const r = this.revalidate();
    const rewrites = r.modified + r.deleted;
    this.migrations++;
    this.flowRewrites += rewrites;
    return { vpid, ppid: p.ppid, flowRewrites: rewrites };
  }

  /** Whether `name` is a local interface here now (not behind a tunnel). */
  isLocal(name: string): boolean {
    const e = this.byName.get(name);
    return e !== undefined && !e.uplink && e.tunnel === undefined;
  }

  /** The remote host an interface is behind now, or null (local, or unknown). */
  remoteHostOf(name: string): string | null {
    const e = this.byName.get(name);
    return e?.tunnel !== undefined ? this.topology.tunnel!.remotes[e.tunnel].name : null;
  }

  /** The names of the remote interfaces behind `host` now. */
  remoteInterfacesOf(host: string): string[] {
    const t = this.topology.tunnel?.remotes.findIndex((r) => r.name === host) ?? -1;
    return [...this.byName.values()].filter((e) => e.tunnel === t && t >= 0).map((e) => e.name);
  }

  private dropEndpoint(e: Endpoint): void {
    this.byName.delete(e.name);
    for (const s of e.segments) {
      const m = this.members.get(s);
      if (m) { const k = m.indexOf(e); if (k >= 0) m.splice(k, 1); }
      const byMac = this.byMac.get(s);
      if (byMac && e.mac !== undefined) { const key = macNumber(parseMac(e.mac), 0); if (byMac.getMac(key) === e) byMac.deleteMac(key); }
    }
  }

  /** Name of the interface or uplink behind a VPID. */
  vpidName(vpid: number): string | undefined {
    return this.byVpid.get(vpid)?.name;
  }

  /** Forgets every cached decision (after an endpoint changed). */
  private clearCaches(): void {
    for (const e of this.byName.values()) {
      e.toActions = undefined;
      e.floods = undefined;
    }
  }

  /**
   * Migration by mapping. Moves interface `name` to port `toPort` (null: it
   * leaves this host), optionally under a new VPID. A port move is one
   * mapping update: no flow changes, because flows name VPIDs. A new VPID
   * changes what flows must say, so they are revalidated and the rewrites
   * counted. Throws FpoError naming the field, with nothing changed, on an
   * unknown interface or port, a port that is an uplink or carries another
   * interface, or a VPID in use. `commit`, when given, is called with the
   * change once it is known to be valid and before anything changes (the
   * service persists it there); when it throws, nothing changes.
   */
  migrate(name: string, toPort: string | null, newVpid?: number, commit?: (c: Change) => void): { vpid: number; oldPpid: number; newPpid: number; flowRewrites: number } {
    const itf = this.topology.interfaces.find((i) => i.name === name);
    if (!itf) throw new FpoError('FPO_ERR_USAGE', `interface: no interface named "${name}"`);
    let ppid = -1;
    if (toPort !== null) {
      const port = this.portByName.get(toPort);
      if (!port) throw new FpoError('FPO_ERR_USAGE', `to: no port named "${toPort}"; ports are ${[...this.portByName.keys()].join(', ')}`);
      if (port.role !== 'vm') throw new FpoError('FPO_ERR_USAGE', `to: port "${toPort}" is an uplink; interfaces attach to VM ports`);
      const holder = this.topology.interfaces.find((i) => i.port === toPort && i !== itf);
      if (holder) throw new FpoError('FPO_ERR_USAGE', `to: port "${toPort}" carries interface "${holder.name}"; move or remove it first`);
      ppid = port.ppid;
    }
    if (newVpid !== undefined && newVpid !== itf.vpid) {
      const max = this.dp.mapping.maxVpid;
      if (!(Number.isInteger(newVpid) && newVpid >= 1 && newVpid <= max)) throw new FpoError('FPO_ERR_USAGE', `new-vpid: expected an integer in 1..${max}, got ${newVpid}`);
      const holder = this.byVpid.get(newVpid);
      if (holder) throw new FpoError('FPO_ERR_USAGE', `new-vpid: ${newVpid} is in use (${holder.uplink ? 'uplink' : 'interface'} "${holder.name}")`);
    }
    const oldPpid = this.dp.mapping.toPpid[itf.vpid];
    commit?.({ interface: itf.name, vpid: newVpid ?? itf.vpid, port: toPort });
    let rewrites = 0;
    if (newVpid !== undefined && newVpid !== itf.vpid) {
      const e = this.byVpid.get(itf.vpid)!;
      this.releaseVpid(itf.vpid, newVpid);
      e.vpid = newVpid;
      itf.vpid = newVpid;
      this.byVpid.set(newVpid, e);
      this.lastVpid = -1;
      this.clearCaches();
      if (ppid >= 0) this.dp.apply({ type: 'mapping-set', vpid: newVpid, ppid });
      const r = this.revalidate();
      rewrites = r.modified + r.deleted;
    } else {
      this.dp.apply({ type: 'mapping-set', vpid: itf.vpid, ppid });
    }
    itf.port = toPort ?? undefined;
    this.migrations++;
    this.flowRewrites += rewrites;
    return { vpid: itf.vpid, oldPpid, newPpid: ppid, flowRewrites: rewrites };
  }

  /**
   * An interface's VPID changes from `from` to `to`: the old one unmapped
   * and given up here; its firewall goes with it (under its old zone: its
   * connections stay allowed). The caller maps and records the new one.
   */
  private releaseVpid(from: number, to: number): void {
    this.dp.apply({ type: 'mapping-set', vpid: from, ppid: -1 });
    this.byVpid.delete(from);
    this.lastVpid = -1;
    const fw = this.firewalls.get(from);
    if (fw !== undefined) { this.firewalls.delete(from); this.firewalls.set(to, fw); }
  }

  /**
   * Points an interface's VPID at a PPID directly (set-mapping); the port
   * must be a VM port free of other VPIDs. Uplinks keep their ports (their
   * VPIDs are not interfaces', and the state file records interfaces'
   * ports only: a moved uplink would come back on its own port at restart,
   * and an interface on an uplink port would make a state file that cannot
   * be used). `commit` as in migrate.
   */
  setMapping(vpid: number, ppid: number, commit?: (c: Change) => void): void {
    const e = this.byVpid.get(vpid);
    if (!e) throw new FpoError('FPO_ERR_USAGE', `vpid: ${vpid} is not assigned to any interface or uplink`);
    if (e.uplink) throw new FpoError('FPO_ERR_USAGE', `vpid: ${vpid} is uplink "${e.name}"'s; set-mapping moves interfaces`);
    const port = this.portByPpid.get(ppid);
    if (!port) throw new FpoError('FPO_ERR_USAGE', `ppid: ${ppid} is not a port of this NIC; ports are ${[...this.portByPpid.keys()].join(', ')}`);
    if (port.role !== 'vm') throw new FpoError('FPO_ERR_USAGE', `ppid: port ${ppid} (${port.name}) is an uplink; interfaces attach to VM ports`);
    const other = this.dp.mapping.toVpid[ppid];
    if (other >= 0 && other !== vpid) throw new FpoError('FPO_ERR_USAGE', `ppid: port ${ppid} (${port.name}) carries vpid ${other}; move it first`);
    const itf = this.topology.interfaces.find((i) => i.vpid === vpid)!;
    commit?.({ interface: itf.name, vpid, port: port.name });
    this.dp.apply({ type: 'mapping-set', vpid, ppid });
    itf.port = port.name;
  }

  /** The rules now, as given (for add-flow/del-flow and the state shown). */
  get ruleSpecs(): Topology['rules'] {
    return this.topology.rules;
  }

  /** topology.wildcarding "rule-fields": a missed rule adds every field it names to the megaflow (else the proof alone). */
  private readonly ruleFields: boolean;

  /** Remote hosts whose tunnel got new ends (a new VTEP, MAC or kind in the directory). */
  tunnelsMoved = 0;

  /** Migrations done, and the flow rewrites they needed. */
  migrations = 0;
  flowRewrites = 0;

  portNamed(name: string): Port | undefined {
    return this.portByName.get(name);
  }

  portOf(ppid: number): Port | undefined {
    return this.portByPpid.get(ppid);
  }

  /** Compiles one match (as in a rule) into key and mask; throws FpoError naming the field. */
  compileMatchInto(key: Uint32Array, mask: Uint32Array, match: Record<string, string | number>, where: string): void {
    for (const [field, value] of Object.entries(match)) {
      try {
        this.compileMatch(key, mask, field, value, `${where}.${field}`);
      } catch (e) {
        if (e instanceof FpoError) throw e;
        throw new FpoError('FPO_ERR_USAGE', (e as Error).message);
      }
    }
  }

  interfaceByName(name: string): Interface | undefined {
    return this.topology.interfaces.find((i) => i.name === name);
  }
}

/**
 * Key words in the order a rule's miss is proved in: the EtherType and IP
 * protocol word first (shared by every flow of a kind), then the ports and
 * MACs, the addresses, the transport ports, the rest.
 */
const PROOF_ORDER: readonly number[] = (() => {
  const first = [W_ETH_TYPE, W_IN_PORT, W_TUN, W_VLAN];
  return [...first, ...Array.from({ length: KEY_WORDS }, (_, w) => w).filter((w) => !first.includes(w))];
})();

/**
 * Whether rule `r` matches `key`; when it does not, un-wildcards in `mask`
 * only what proves it — the first word (in PROOF_ORDER) where the key
 * differs from the rule, from its top bit down to the highest differing one
 * (a prefix, as OVS's prefix tracking gives for addresses). Every packet of
 * the megaflow has those bits, so none matches the rule: a rule on one
 * source address no longer makes a megaflow per source (every other
 * address shares the first bit it differs in), where un-wildcarding the
 * rule's every field did (one flow per source address and port: a million
 * upcalls for a million connections).
 */
function proveMiss(r: { key: Uint32Array; mask: Uint32Array }, key: Uint32Array, mask: Uint32Array): boolean {
  for (let j = 0; j < PROOF_ORDER.length; j++) {
    const w = PROOF_ORDER[j];
    const diff = (key[w] ^ r.key[w]) & r.mask[w];
    if (diff !== 0) {
      mask[w] |= r.mask[w] & (-1 << (31 - Math.clz32(diff)));
      return false;
    }
  }
  return true;
}

/** The VPID of the one plain output among `actions` (a unicast to a local interface), or -1. */
function singleOutput(actions: readonly Action[]): number {
  let vpid = -1;
  for (const a of actions) {
    if (a.op === 'encap') return -1;
    if (a.op === 'output') { if (vpid >= 0) return -1; vpid = a.vpid; }
  }
  return vpid;
}

/** The first of a firewall's rules that matches the packet, or null; the mask gets every field looked at (each rule tried, and tp_dst for a port range). */
function firstFirewallRule(rules: CompiledFwRule[], key: Uint32Array, mask: Uint32Array): CompiledFwRule | null {
  for (const r of rules) {
    let hit = true;
    for (let w = 0; w < KEY_WORDS; w++) {
      mask[w] |= r.mask[w];
      if (((key[w] ^ r.key[w]) & r.mask[w]) !== 0) hit = false;
    }
    if (hit && r.ports !== null) {
      unwildcardBits(mask, U.tp_dst);
      const p = key[W_TP] & 0xffff;
      if (p < r.ports[0] || p > r.ports[1]) hit = false;
    }
    if (hit) return r;
  }
  return null;
}

/** Whether actions hold a ct action (a rule that tracks statefully on its own). */
function hasCt(actions: readonly Action[]): boolean {
  for (let j = 0; j < actions.length; j++) if (actions[j].op === 'ct') return true;
  return false;
}
