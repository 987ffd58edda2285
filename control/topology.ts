/**
 * Topology: what a host looks like, loaded from a JSON file and validated
 * (check.ts for shapes, then the cross-references), with every error naming
 * the file and the field.
 *
 *   ports      the NIC's own interfaces with their PPIDs; role "uplink" for
 *              ports that face the network (they belong to segments), "vm"
 *              (the default) for ports a VM interface attaches to
 *   segments   L2 broadcast domains; `vlan` says which VLAN ID an uplink
 *              packet carries to belong to it (untagged: the one without),
 *              and the tag the segment's frames get on the uplinks (VM ports
 *              are access ports: fpag.ts, datapath/actions/vlan.ts)
 *   nodes      compute nodes (VMs, containers) and their interfaces: name,
 *              MAC, IP, segment, and the port they are attached to (none:
 *              the interface exists but is not on this NIC now)
 *   rules      explicit priority rules for the FPAG (fpag.ts)
 *   replay     which port a replayed capture arrives on
 *
 * Loading also assigns VPIDs: every interface, then every uplink port, gets a
 * locally unique VPID, 1, 2, … in file order, so the same file always gives
 * the same VPIDs.
 */
import { readFileSync } from 'node:fs';
import { FpoError } from '../datapath/errors.js';
import { parseIpText } from '../datapath/datapath.js';
import { FIELD_NAMES } from '../datapath/classifier/flow-key.js';
import { compileFilter } from '../datapath/ports/bpf.js';
import { CheckError, array, boolean, either, formatPath, int, number, object, oneOf, optional, record, refine, string, withDefault, type Check, type Out } from './check.js';

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const MAC = /^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/;
const IPV4 = /^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/;

// The checks are plain functions (control/check.ts), not zod: zod's load and
// this schema's construction were 100-130 ms of every replay's start-up.
const name = string({ regex: NAME, message: 'expected a name of letters, digits, ".", "_", "-" (at most 64)' });

/** The longest name that becomes a file or folder name (NAME's limit too). */
export const PATH_NAME_MAX = 64;

/**
 * Why `s` cannot be one segment of a path, or null when it can: names that
 * become file or folder names (a host's folder under --out in a multi-host
 * replay, OUT/<host>/; a port's OUT/<port>.pcap) must stay inside the
 * folder they are joined to. A host named "../../x" wrote outside --out.
 */
export function pathNameProblem(s: string): string | null {
  if (s.length === 0) return 'expected a name, got an empty string';
  if (s.length > PATH_NAME_MAX) return `expected at most ${PATH_NAME_MAX} characters (it becomes a folder name), got ${s.length}`;
  if (s.includes('/') || s.includes('\\')) return `expected one path segment (it becomes a folder name), without "/" or "\\": ${JSON.stringify(s)}`;
  if (/^\.+$/.test(s)) return `expected a name that is not only dots (it becomes a folder name): ${JSON.stringify(s)}`;
  if (/[\u0000-\u001f\u007f]/.test(s)) return `expected no control characters or NUL (it becomes a folder name): ${JSON.stringify(s)}`;
  return null;
}

/** A string that pathNameProblem accepts. */
const pathName: Check<string> = (v, path) => {
  const s = string()(v, path);
  const problem = pathNameProblem(s);
  if (problem !== null) throw new CheckError(path, problem);
  return s;
};
const mac = (example: string) => string({ regex: MAC, message: `expected a MAC address like ${example}` });
const ipv4 = (message: string) => string({ regex: IPV4, message });

const PortSchema = object({
  name,
  ppid: int(0, 4095),
  role: withDefault(oneOf(['vm', 'uplink'] as const), () => 'vm' as const),
  segments: withDefault(array(name), () => []),
  /**
   * pcap (default): what the port emits goes to a capture file. tap: a TAP
   * device fpo creates; afpacket: an existing interface (a veth end) fpo
   * attaches to with an AF_PACKET socket; pcap-live: an existing interface
   * through libpcap (the cap module), with an optional BPF `filter` (all
   * three with fpo run).
   */
  kind: withDefault(oneOf(['pcap', 'tap', 'afpacket', 'pcap-live', 'vf'] as const), () => 'pcap' as const),
  /**
   * afpacket: how frames move — `ring` (default): memory-mapped TPACKET_V3
   * rx and tx rings, a batch per system call at most; `read`: one read()
   * and write() a frame (the older way, kept to compare); `xdp`: an AF_XDP
   * socket on the interface's queue 0 with fpo's XDP program (xdp-port.ts;
   * one worker, no offloads).
   */
  io: optional(oneOf(['ring', 'read', 'xdp'] as const)),
  /**
   * afpacket on rings (PACKET_VNET_HDR) and TAP (IFF_VNET_HDR, TUNSETOFFLOAD):
   * frames with their virtio-net header, so GSO segments of up to 64 KiB and
   * partial checksums cross whole (offload.ts); default false. Copies to
   * ports without offloads are cut and finished in software.
   */
  offload: optional(boolean()),
  /**
   * afpacket on rings: TPACKET_V3 (3, default: frames packed in blocks, a
   * block handed over when full or 1 ms after its first frame) or TPACKET_V2
   * (2: a slot a frame, each handed over as it lands: no delay).
   */
  tpacket: optional(oneOf([2, 3] as const)),
  /** pcap-live: a tcpdump filter expression; only frames it matches are received (checked by libpcap at load). */
  filter: optional(string()),
  /**
   * vf (issue 21): an SR-IOV virtual function's receive path — what the port
   * emits is DMA'd into the VM's memory (datapath/ports/vf/vf-port.ts):
   * `memory` bytes (a multiple of 4096, 16 KiB .. 4 GiB) in a shared-memory
   * file, `memoryFile` (default /dev/shm/fpo-vf-NAME.mem), made at start.
   */
  memory: optional(int(16384, 4 * 1024 * 1024 * 1024)),
  memoryFile: optional(string({ min: 1 })),
  /** vf: fpo run starts the VM's stand-in on its memory (control/migration/guest-driver.ts): its driver, and its own writes at `dirtyRate` pages a second. */
  guest: optional(object({ dirtyRate: withDefault(int(0, 10_000_000), () => 0), start: withDefault(oneOf(['boot', 'arrival'] as const), () => 'boot' as const) })),
  /** The TAP device's name (default: the port's name; at most 15 characters). */
  device: optional(refine(string({ regex: /^[A-Za-z0-9._-]{1,15}$/, message: 'expected an interface name of 1 to 15 letters, digits, ".", "_", "-"' }), (d) => !/^\.+$/.test(d), 'expected an interface name that is not only dots (Linux refuses "." and "..")')),
});

const SegmentSchema = object({
  name,
  vlan: optional(int(1, 4094)),
  /** The VXLAN/Geneve VNI that carries this segment between hosts. */
  vni: optional(int(0, 0xffffff)),
});

const FlagSchema = object({
  geneveClass: optional(int(0, 0xffff)),
  geneveType: optional(int(0, 0xff)),
  vxlanByte: optional(oneOf([1, 2, 3, 7] as const)),
  vxlanMask: optional(refine(int(1, 0x80), (m) => (m & (m - 1)) === 0, 'expected one bit: 1, 2, 4, … 128')),
});

const RemoteSchema = object({
  name,
  /** The remote host's tunnel endpoint (IPv4, or IPv6 when ours is too). */
  vtep: string({ min: 2 }),
  /** The next hop's MAC on the underlay (the remote host's, on one link). */
  mac: mac('02:fe:00:00:00:02'),
  /** Our uplink port that reaches it. */
  uplink: name,
  /** VXLAN or Geneve (default: the tunnel's kind). */
  kind: optional(oneOf(['vxlan', 'geneve'] as const)),
  /** The remote host's VM interfaces that this host forwards to through the tunnel. */
  interfaces: withDefault(array(object({ name, mac: mac('02:00:00:00:00:01'), segment: name })), () => []),
});

const MonitorSchema = object({
  interface: name,
  agent: string({ min: 1 }),
  local: ipv4('expected an IPv4 address'),
  peer: ipv4('expected an IPv4 address'),
  txMs: withDefault(int(10, 60000), () => 300),
  rxMs: withDefault(int(10, 60000), () => 300),
  detectMult: withDefault(int(1, 255), () => 3),
  probeMs: withDefault(int(10, 60000), () => 200),
  misses: withDefault(int(1, 100), () => 3),
  peerPort: optional(int(1, 65535)),
  /** BFD authentication with the remote (RFC 5880 §6.7). */
  auth: optional(object({ type: oneOf(['simple', 'md5', 'meticulous-md5', 'sha1', 'meticulous-sha1'] as const), keyId: int(0, 255), key: string({ min: 1, max: 20 }) })),
});

const TunnelSchema = object({
  /** This host's tunnel endpoint: the outer IPv4 address tunnel packets for it carry. */
  vtep: ipv4('expected an IPv4 address like 192.168.0.1'),
  /** Outer source address this host sends from when different from vtep (an IPv6 underlay). */
  sendFrom: optional(string({ min: 2 })),
  /** This host's IPv6 tunnel endpoint, terminated as well as vtep. */
  vtep6: optional(string({ min: 2 })),
  /** This host's MAC on the underlay (outer Ethernet source). */
  mac: withDefault(mac('02:fe:00:00:00:01'), () => '02:fe:00:00:00:01'),
  /** VXLAN or Geneve, for remotes that do not say (default geneve). */
  kind: withDefault(oneOf(['vxlan', 'geneve'] as const), () => 'geneve' as const),
  /** Hosts this one sends to through tunnels. */
  remotes: withDefault(array(RemoteSchema), () => []),
  /**
   * Tunnel monitor: per VM using the tunnel, a BFD session with the remote
   * host (local and peer underlay addresses) and a liveness channel with the
   * VM's agent (a Unix socket path) — fpo run.
   */
  monitor: withDefault(array(MonitorSchema), () => []),
  /** Sender side: which packets get the special-processing flag. */
  policy: withDefault(object({
    /** The first this-many packets of every new flow (default 0). */
    firstPackets: withDefault(int(0, 1000), () => 0),
    /** Packets from or to these interfaces (local or remote names). */
    interfaces: withDefault(array(name), () => []),
  }), () => ({ firstPackets: 0, interfaces: [] })),
  /** How the sender's special-processing flag is written (defaults: Geneve option 0xfff0/0x01, VXLAN byte 1 bit 0x80). */
  flag: withDefault(FlagSchema, () => ({})),
  /** A port that receives flagged packets untouched (a service port); none: they go to the FPAG. */
  specialPort: optional(name),
});

/**
 * One rule of an interface's stateful firewall (fpag.ts, "The per-port
 * firewall"), as a security group's: the direction (out: connections the
 * interface opens; in: connections opened to it), what it does with a new
 * connection that matches, and the match: protocol, the remote end's
 * address or prefix, the destination port or range.
 */
export const FirewallRuleSchema = object({
  direction: oneOf(['in', 'out'] as const),
  action: oneOf(['allow', 'drop'] as const),
  proto: withDefault(oneOf(['any', 'tcp', 'udp', 'icmp', 'icmp6'] as const), () => 'any' as const),
  remote: optional(refine(string(), (v) => parseFirewallRemote(v) !== null, 'expected an IPv4 or IPv6 address or prefix, like 10.0.0.0/24 or fd00::/64')),
  ports: optional(refine(either(int(1, 65535), string()), (v) => parsePortRange(v) !== null, 'expected a port 1..65535 or a range like 8000-8080')),
  comment: optional(string()),
});
export type FirewallRule = Out<typeof FirewallRuleSchema>;

/** A firewall rule's remote: address bytes and prefix length, or null. */
export function parseFirewallRemote(v: string): { addr: Uint8Array; plen: number } | null {
  const m = /^([^/]+)(?:\/(\d{1,3}))?$/.exec(v);
  if (!m) return null;
  const addr = parseIpText(m[1]);
  if (addr === null) return null;
  const plen = m[2] === undefined ? addr.length * 8 : Number(m[2]);
  return plen <= addr.length * 8 ? { addr, plen } : null;
}

/** A firewall rule's ports: [min, max], or null. */
export function parsePortRange(v: number | string): [number, number] | null {
  if (typeof v === 'number') return [v, v];
  const m = /^(\d{1,5})(?:-(\d{1,5}))?$/.exec(v);
  if (!m) return null;
  const lo = Number(m[1]);
  const hi = m[2] === undefined ? lo : Number(m[2]);
  return lo >= 1 && hi <= 65535 && lo <= hi ? [lo, hi] : null;
}

const InterfaceSchema = object({
  name,
  mac: mac('02:00:00:00:00:01'),
  ip: optional(ipv4('expected an IPv4 address like 10.0.0.1')),
  segment: name,
  port: optional(name),
  /** Port security (as OVN's and OpenStack's): only this MAC and address as a source. Default on; false turns it off. */
  portSecurity: withDefault(boolean(), () => true),
  /** A stateful firewall on this interface: ordered rules; what none allows is dropped. Absent: no firewall. */
  firewall: optional(array(FirewallRuleSchema)),
});

/**
 * A service VM (issue 19's hand-over): its agent hands established
 * connections to fpo over `agent` (the guest's Unix socket), fpo tracks them
 * in `zone`, and serves packets addressed to the listed interfaces (inside:
 * towards its clients; outside: towards the servers) for them.
 */
const OffloadSchema = object({
  agent: string({ min: 1 }),
  zone: int(0, 65535),
  inside: array(name, { min: 1 }),
  outside: array(name, { min: 1 }),
  /** The longest an adopted connection lives without a packet, in seconds (capped by fpo's own timeouts; default: the guest's). */
  maxTimeout: optional(int(1, 432_000)),
  /** The most connections this VM may have handed over at once (default: a quarter of the connection table, so one VM's offers cannot take the table from every other zone). */
  maxConnections: optional(int(1, 16_777_216)),
});

const NodeSchema = object({
  name,
  interfaces: array(InterfaceSchema, { min: 1 }),
  offload: optional(OffloadSchema),
});

const RuleSchema = object({
  priority: int(0, 65535),
  /** The table the rule is in: 0 sees packets as they arrive, N the packets a ct(table=N) action recirculated (fpag.ts). */
  table: withDefault(int(0, 255), () => 0),
  /** Packets this rule matches get the special-processing flag when they are sent through a tunnel. */
  special: withDefault(boolean(), () => false),
  /** Field → value; a null-prototype object, its keys only the flow key's fields (check.ts record). */
  match: withDefault(record(either(string(), number(), 'expected string or number'), { keys: FIELD_NAMES }), () => Object.create(null) as Record<string, string | number>),
  actions: array(string(), { min: 1 }),
  comment: optional(string()),
});

export const TopologySchema = object({
  /** The host's name; in a multi-host replay its output folder (OUT/<name>/), so one path segment. */
  name: withDefault(pathName, () => 'topology'),
  ports: array(PortSchema, { min: 1 }),
  segments: array(SegmentSchema, { min: 1 }),
  nodes: withDefault(array(NodeSchema), () => []),
  rules: withDefault(array(RuleSchema), () => []),
  tunnel: optional(TunnelSchema),
  /** Which port a replayed capture arrives on; "by-source-mac": each packet on the port of the interface with its source MAC. */
  replay: optional(object({ inputPort: either(name, oneOf(['by-source-mac'] as const)) })),
  /**
   * What a rule a packet misses adds to its megaflow: "proof" (default) only
   * the prefix of the first field where the packet differs from the rule —
   * every packet of the megaflow misses the rule too; "rule-fields" every
   * field the rule names, as before (a rule on one source made a megaflow
   * per source address and port: kept for comparison and for measuring
   * flow set-ups).
   */
  wildcarding: withDefault(oneOf(['proof', 'rule-fields'] as const), () => 'proof' as const),
});

/** A topology file's content once checked, defaults filled in. */
export type TopologyFile = Out<typeof TopologySchema>;
/** A topology file's content as written (before checking: any key may be left to its default). */
export type TopologyInput = { [K in keyof TopologyFile]?: unknown };
export type RuleSpec = Out<typeof RuleSchema>;

/** A port of the NIC. */
export interface Port {
  name: string;
  ppid: number;
  role: 'vm' | 'uplink';
  /** pcap: a capture file; tap: a TAP device; afpacket, pcap-live: an existing interface (fpo run). */
  kind: 'pcap' | 'tap' | 'afpacket' | 'pcap-live' | 'vf';
  /** vf: the guest memory's bytes and its file. */
  memory?: number;
  memoryFile?: string;
  /** vf: the VM's stand-in fpo run starts on its memory: at boot, or when a migrated VM arrives (fpo run --migrate-listen). */
  guest?: { dirtyRate: number; start: 'boot' | 'arrival' };
  /** TAP device name, or the interface an afpacket or pcap-live port attaches to. */
  device: string;
  /** afpacket: rings (default), a read/write a frame, or AF_XDP. */
  io: 'ring' | 'read' | 'xdp';
  /** TAP and afpacket on rings: virtio-net headers (GSO, checksum offload). */
  offload: boolean;
  /** afpacket on rings: TPACKET_V2 or V3. */
  tpacket: 2 | 3;
  /** pcap-live: the BPF filter (a tcpdump expression), if any. */
  filter?: string;
  /** Uplinks: the segments they carry. VM ports: the segment of the attached interface. */
  segments: string[];
  /** Uplinks: the VPID the control plane gave the uplink. VM ports: none (-1). */
  vpid: number;
}

/** A compute node's interface. */
export interface Interface {
  name: string;
  node: string;
  mac: string;
  macBytes: Uint8Array;
  ip?: string;
  segment: string;
  /** Name of the port it is attached to, or undefined. */
  port?: string;
  vpid: number;
  /** Port security on (the default): frames with another source MAC or address are dropped (fpag.ts). */
  portSecurity: boolean;
  /** The interface's stateful firewall rules, or undefined (no firewall). */
  firewall?: FirewallRule[];
}

/** A service VM whose established connections fpo may take over (a node's `offload` section). */
export interface OffloadSpec {
  node: string;
  /** The agent's channel (a Unix socket path). */
  agent: string;
  zone: number;
  /** Its interfaces (names in this topology) by side. */
  inside: string[];
  outside: string[];
  maxTimeout?: number;
  /** The most connections handed over at once (default: a quarter of the connection table). */
  maxConnections?: number;
}

export interface Segment {
  name: string;
  vlan?: number;
  vni?: number;
}

export type TunnelSpec = Out<typeof TunnelSchema>;

export interface Topology {
  name: string;
  path: string;
  ports: Port[];
  segments: Segment[];
  interfaces: Interface[];
  rules: RuleSpec[];
  tunnel?: TunnelSpec;
  inputPort?: string;
  /** Service VMs with the hand-over on (nodes' offload sections). */
  offload: OffloadSpec[];
  /** What a missed rule adds to a megaflow (TopologySchema's wildcarding). */
  wildcarding?: 'proof' | 'rule-fields';
}

export function parseMac(s: string): Uint8Array {
  return Uint8Array.from(s.split(':').map((x) => parseInt(x, 16)));
}

function bad(path: string, field: string, what: string): FpoError {
  return new FpoError('FPO_ERR_BAD_TOPOLOGY', `${path}: ${field}: ${what}`, { path });
}

/**
 * Reads a file of one host (a topology) or of several (`{"hosts": [...]}`,
 * each a topology; errors name `hosts[i]`).
 */
export function loadHosts(path: string): Topology[] {
  const json = readJson(path);
  if (json !== null && typeof json === 'object' && Object.hasOwn(json, 'hosts')) {
    const hosts = (json as { hosts: unknown }).hosts;
    if (!Array.isArray(hosts) || hosts.length === 0) throw bad(path, 'hosts', 'expected a non-empty array of host topologies');
    const out = hosts.map((h, i) => topologyFrom(h, `${path}: hosts[${i}]`));
    const names = new Set<string>();
    out.forEach((t, i) => {
      if (names.has(t.name)) throw bad(path, `hosts[${i}].name`, `host name "${t.name}" is used twice`);
      names.add(t.name);
      (t as { path: string }).path = path;
    });
    return out;
  }
  return [topologyFrom(json, path)];
}

function readJson(path: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new FpoError('FPO_ERR_IO', `${path}: cannot read: ${(e as Error).message}`, { path });
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw bad(path, '(file)', `not JSON: ${(e as Error).message}`);
  }
}

/** Reads and validates a topology file of one host. */
export function loadTopology(path: string): Topology {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new FpoError('FPO_ERR_IO', `${path}: cannot read: ${(e as Error).message}`, { path });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw bad(path, '(file)', `not JSON: ${(e as Error).message}`);
  }
  return topologyFrom(json, path);
}

/** Validates an already-parsed topology object; `path` names it in errors. */
export function topologyFrom(json: unknown, path: string): Topology {
  let t: TopologyFile;
  try {
    t = TopologySchema(json, []);
  } catch (e) {
    if (e instanceof CheckError) throw bad(path, formatPath(e.path), e.message);
    throw e;
  }
  const seen = new Map<string, string>();
  const unique = (kind: string, n: string, field: string) => {
    const key = `${kind}:${n}`;
    if (seen.has(key)) throw bad(path, field, `${kind} name "${n}" is used twice (also at ${seen.get(key)})`);
    seen.set(key, field);
  };
  const segments = new Map<string, Segment>();
  const vlans = new Map<number, string>();
  const vnis = new Map<number, string>();
  t.segments.forEach((s, i) => {
    if (s.vni !== undefined) {
      if (vnis.has(s.vni)) throw bad(path, `segments[${i}].vni`, `VNI ${s.vni} is already segment "${vnis.get(s.vni)}"'s`);
      vnis.set(s.vni, s.name);
    }
    unique('segment', s.name, `segments[${i}].name`);
    if (s.vlan !== undefined) {
      if (vlans.has(s.vlan)) throw bad(path, `segments[${i}].vlan`, `VLAN ${s.vlan} is already segment "${vlans.get(s.vlan)}"'s`);
      vlans.set(s.vlan, s.name);
    }
    segments.set(s.name, { name: s.name, vlan: s.vlan, vni: s.vni });
  });
  const ports = new Map<string, Port>();
  const ppids = new Map<number, string>();
  t.ports.forEach((p, i) => {
    unique('port', p.name, `ports[${i}].name`);
    if (ppids.has(p.ppid)) throw bad(path, `ports[${i}].ppid`, `PPID ${p.ppid} is already port "${ppids.get(p.ppid)}"'s`);
    ppids.set(p.ppid, p.name);
    p.segments.forEach((s, j) => {
      if (!segments.has(s)) throw bad(path, `ports[${i}].segments[${j}]`, `no segment named "${s}"`);
    });
    if (p.role === 'vm' && p.segments.length) throw bad(path, `ports[${i}].segments`, 'only uplink ports list segments; a VM port takes its interface\'s');
    if (p.kind === 'vf' && p.memory === undefined) throw bad(path, `ports[${i}].memory`, 'a vf port needs "memory": the bytes of the guest memory its frames are written into');
    if (p.kind !== 'vf' && p.guest !== undefined) throw bad(path, `ports[${i}].guest`, `"guest" is for vf ports; this port is ${p.kind}`);
    if (p.kind !== 'vf' && (p.memory !== undefined || p.memoryFile !== undefined)) throw bad(path, `ports[${i}].${p.memory !== undefined ? 'memory' : 'memoryFile'}`, `"memory" and "memoryFile" are for vf ports; this port is ${p.kind}`);
    if (p.memory !== undefined && p.memory % 4096 !== 0) throw bad(path, `ports[${i}].memory`, `${p.memory} bytes: expected a multiple of 4096 (whole pages)`);
    if (p.kind !== 'pcap' && p.kind !== 'vf' && p.device === undefined && p.name.length > 15) throw bad(path, `ports[${i}].device`, `the port name "${p.name}" is longer than a TAP device may be (15); give a device name`);
    if (p.io !== undefined && p.kind !== 'afpacket') throw bad(path, `ports[${i}].io`, `"io" is for afpacket ports; this port is ${p.kind}`);
    const io = p.io === 'read' || p.io === 'xdp' ? ` with io ${p.io}` : '';
    if (p.tpacket !== undefined && (p.kind !== 'afpacket' || io !== '')) throw bad(path, `ports[${i}].tpacket`, `"tpacket" is for afpacket ports on rings; this port is ${p.kind}${io}`);
    if (p.offload === true && (p.kind === 'pcap' || p.kind === 'pcap-live' || io !== '')) throw bad(path, `ports[${i}].offload`, `offloads are for TAP ports and afpacket ports on rings; this port is ${p.kind}${io}`);
    if (p.filter !== undefined) {
      if (p.kind !== 'pcap-live') throw bad(path, `ports[${i}].filter`, `only a pcap-live port takes a filter; this port is ${p.kind}`);
      // libpcap's own compiler (its words), at load: a filter that cannot compile is refused before fpo run opens anything.
      try {
        compileFilter(p.filter);
      } catch (e) {
        if (e instanceof FpoError) throw bad(path, `ports[${i}].filter`, `${JSON.stringify(p.filter.length > 200 ? `${p.filter.slice(0, 200)}…` : p.filter)}: ${e.message}`);
        throw e;
      }
    }
    ports.set(p.name, { name: p.name, ppid: p.ppid, role: p.role, kind: p.kind, device: p.device ?? p.name, io: p.io ?? 'ring', offload: p.offload ?? false, tpacket: p.tpacket ?? 3, segments: [...p.segments], vpid: -1, ...(p.filter !== undefined ? { filter: p.filter } : {}),
      ...(p.kind === 'vf' ? { memory: p.memory, memoryFile: p.memoryFile ?? `/dev/shm/fpo-vf-${p.name}.mem`, ...(p.guest !== undefined ? { guest: { dirtyRate: p.guest.dirtyRate, start: p.guest.start } } : {}) } : {}) });
  });
  const interfaces: Interface[] = [];
  const taken = new Map<string, string>();
  const macs = new Map<string, string>();
  let vpid = 1;
  t.nodes.forEach((node, i) => {
    unique('node', node.name, `nodes[${i}].name`);
    node.interfaces.forEach((itf, j) => {
      const at = `nodes[${i}].interfaces[${j}]`;
      unique('interface', itf.name, `${at}.name`);
      if (!segments.has(itf.segment)) throw bad(path, `${at}.segment`, `no segment named "${itf.segment}"`);
      const macKey = `${itf.segment}/${itf.mac.toLowerCase()}`;
      if (macs.has(macKey)) throw bad(path, `${at}.mac`, `MAC ${itf.mac} is already interface "${macs.get(macKey)}"'s in segment "${itf.segment}"`);
      macs.set(macKey, itf.name);
      if (itf.port !== undefined) {
        const port = ports.get(itf.port);
        if (!port) throw bad(path, `${at}.port`, `no port named "${itf.port}"`);
        if (port.role !== 'vm') throw bad(path, `${at}.port`, `port "${itf.port}" is an uplink; interfaces attach to VM ports`);
        if (taken.has(itf.port)) throw bad(path, `${at}.port`, `port "${itf.port}" already carries interface "${taken.get(itf.port)}"`);
        taken.set(itf.port, itf.name);
        port.segments = [itf.segment];
      }
      interfaces.push({ name: itf.name, node: node.name, mac: itf.mac.toLowerCase(), macBytes: parseMac(itf.mac), ip: itf.ip, segment: itf.segment, port: itf.port, vpid: vpid++, portSecurity: itf.portSecurity, ...(itf.firewall !== undefined ? { firewall: itf.firewall } : {}) });
    });
  });
  for (const p of ports.values()) if (p.role === 'uplink') p.vpid = vpid++;
  const offload: OffloadSpec[] = [];
  const zones = new Map<number, string>();
  t.nodes.forEach((node, i) => {
    const o = node.offload;
    if (o === undefined) return;
    const at = `nodes[${i}].offload`;
    if (zones.has(o.zone)) throw bad(path, `${at}.zone`, `zone ${o.zone} is already service VM "${zones.get(o.zone)}"'s; each service VM's connections have a zone of their own`);
    // A firewalled interface tracks in the zone of its VPID (fpag.ts): an offer there would be an established connection to its firewall.
    const fwz = interfaces.find((x) => x.firewall !== undefined && (x.vpid & 0xffff) === o.zone);
    if (fwz !== undefined) throw bad(path, `${at}.zone`, `zone ${o.zone} is the firewall zone of interface ${fwz.name} (its VPID); choose a zone no firewalled interface's VPID is`);
    zones.set(o.zone, node.name);
    const own = new Set(node.interfaces.map((x) => x.name));
    const sides = new Set<string>();
    for (const side of ['inside', 'outside'] as const) {
      o[side].forEach((n, j) => {
        if (!own.has(n)) throw bad(path, `${at}.${side}[${j}]`, `expected one of this node's interfaces (${[...own].join(', ')}), got "${n}"`);
        if (sides.has(n)) throw bad(path, `${at}.${side}[${j}]`, `interface "${n}" is listed twice (an interface is inside or outside, not both)`);
        sides.add(n);
      });
    }
    offload.push({ node: node.name, agent: o.agent, zone: o.zone, inside: [...o.inside], outside: [...o.outside], ...(o.maxTimeout !== undefined ? { maxTimeout: o.maxTimeout } : {}), ...(o.maxConnections !== undefined ? { maxConnections: o.maxConnections } : {}) });
  });
  if (t.replay && t.replay.inputPort !== 'by-source-mac' && !ports.has(t.replay.inputPort)) throw bad(path, 'replay.inputPort', `no port named "${t.replay.inputPort}"`);
  if (t.tunnel?.specialPort !== undefined && !ports.has(t.tunnel.specialPort)) throw bad(path, 'tunnel.specialPort', `no port named "${t.tunnel.specialPort}"`);
  if (t.tunnel?.vtep6 !== undefined && parseIpText(t.tunnel.vtep6)?.length !== 16) throw bad(path, 'tunnel.vtep6', `expected an IPv6 address like 2001:db8::1, got "${t.tunnel.vtep6}"`);
  if (t.tunnel?.sendFrom !== undefined && parseIpText(t.tunnel.sendFrom) === null) throw bad(path, 'tunnel.sendFrom', `expected an IPv4 or IPv6 address, got "${t.tunnel.sendFrom}"`);
  t.tunnel?.remotes.forEach((r, i) => {
    const at = `tunnel.remotes[${i}]`;
    unique('remote', r.name, `${at}.name`);
    const up = ports.get(r.uplink);
    if (!up || up.role !== 'uplink') throw bad(path, `${at}.uplink`, `no uplink port named "${r.uplink}"`);
    const fam = (a: string) => (IPV4.test(a) ? 4 : a.includes(':') ? 6 : 0);
    const ours = fam(t.tunnel!.sendFrom ?? t.tunnel!.vtep);
    if (parseIpText(r.vtep) === null) throw bad(path, `${at}.vtep`, `expected an IPv4 or IPv6 address, got "${r.vtep}"`);
    if (fam(r.vtep) !== ours) throw bad(path, `${at}.vtep`, `address family differs from this host's (${t.tunnel!.sendFrom ?? t.tunnel!.vtep}); set tunnel.sendFrom`);
    r.interfaces.forEach((itf, j) => {
      unique('interface', itf.name, `${at}.interfaces[${j}].name`);
      const seg = segments.get(itf.segment);
      if (!seg) throw bad(path, `${at}.interfaces[${j}].segment`, `no segment named "${itf.segment}"`);
      if (seg.vni === undefined) throw bad(path, `${at}.interfaces[${j}].segment`, `segment "${itf.segment}" has no vni to carry it through a tunnel`);
    });
  });
  t.tunnel?.monitor.forEach((m, i) => {
    if (!interfaces.some((x) => x.name === m.interface)) throw bad(path, `tunnel.monitor[${i}].interface`, `no interface named "${m.interface}"`);
  });
  t.tunnel?.policy.interfaces.forEach((n, i) => {
    if (!seen.has(`interface:${n}`)) throw bad(path, `tunnel.policy.interfaces[${i}]`, `no interface named "${n}"`);
  });
  return { name: t.name, path, ports: [...ports.values()], segments: [...segments.values()], interfaces, rules: t.rules, tunnel: t.tunnel, inputPort: t.replay?.inputPort, offload, wildcarding: t.wildcarding };
}
