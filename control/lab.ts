/**
 * fpo lab up FILE / fpo lab down FILE: a live lab on one Linux box. "VMs"
 * are network namespaces, each with a port of fpo:
 *   - "ports": "veth" (default): a veth pair per port; the VM's end goes into
 *     its namespace with the VM's MAC and address, the host's end
 *     (h-LAB-VM, IPv6 off, no address: it says nothing of its own) is an
 *     afpacket port of fpo on memory-mapped rings with offloads (ring-port.ts,
 *     offload.ts: TCP segments of 64 KiB cross whole) — what a user picks
 *     for speed;
 *   - "ports": "tap": fpo creates a TAP per port and the lab moves its
 *     kernel side into the VM's namespace (a read()/write() a frame). `up` writes the topology, starts `fpo run` on it
 * (detached; its pid, logs and port state in the lab's folder), and wires
 * the namespaces; `down` stops that fpo and deletes the namespaces it made —
 * only those, listed in the lab's state file. Needs root and iproute2.
 *
 *   { "name": "lab1",
 *     "segments": [{ "name": "blue" }, { "name": "red" }],
 *     "vms": [{ "name": "vm1", "segment": "blue", "ip": "10.0.0.1/24", "mac": "02:00:00:00:01:01" }, …],
 *     "spares": [{ "name": "spare1", "vm": "vm1" }] }
 *
 * A spare is a second TAP port in a VM's namespace, down until a migration
 * moves the VM's interface onto it.
 *
 * A service (issue 19) is a service VM: a namespace with two interfaces, on
 * the `inside` and `outside` segments, IP forwarding on and its own nftables
 * ruleset (a file, or by default a stateful firewall and masquerade out of
 * the outside interface), port security off on both (it forwards others'
 * packets), and an `offload` section in the topology whose agent socket is
 * in the lab's folder; with `"handover": true` the lab starts `fpo agent
 * --conntrack` in it, and lab down stops that agent as it stops fpo run
 * (its pid, command line and start time checked first). A VM's `gateway`
 * is its default route (a service VM's inside address, say).
 *
 *   "services": [{ "name": "fw", "zone": 5, "handover": true,
 *     "inside":  { "segment": "blue", "ip": "10.1.0.1/24", "mac": "02:00:00:00:0a:01" },
 *     "outside": { "segment": "red",  "ip": "10.2.0.1/24", "mac": "02:00:00:00:0a:02" } }]
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FpoError } from '../datapath/errors.js';
import { CheckError, array, boolean, formatPath, int, number, object, oneOf, optional, string, withDefault, type Out } from './check.js';
import { FirewallRuleSchema } from './topology.js';

// The lab file is checked with check.ts's combinators, as the topology and events are (zod took ~100 ms to load).
const short = string({ regex: /^[a-z0-9]{1,6}$/, message: 'expected 1 to 6 lowercase letters or digits (it becomes part of interface names)' });
const ipPrefix = string({ regex: /^\d+\.\d+\.\d+\.\d+\/\d+$/, message: 'expected an IPv4 address with its prefix, like 10.0.0.1/24' });
const mac = string({ regex: /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/, message: 'expected a lowercase MAC address like 02:00:00:00:01:01' });
/** One interface of a service VM: its segment, address and MAC. */
const ServiceSide = object({ segment: string({ min: 1 }), ip: ipPrefix, mac });
/** A service VM (the file's doc above); its name one shorter than a VM's: its ports are NAMEi and NAMEo. */
const ServiceSchema = object({
  name: string({ regex: /^[a-z0-9]{1,5}$/, message: 'expected 1 to 5 lowercase letters or digits (it becomes part of interface names, with i or o after it)' }),
  /** The conntrack zone fpo tracks its handed-over connections in (the topology's offload.zone). */
  zone: int(0, 65535),
  inside: ServiceSide,
  outside: ServiceSide,
  /** Start `fpo agent --conntrack` in it (default false: the VM forwards everything itself). */
  handover: withDefault(boolean(), () => false),
  /** A file with the VM's own nftables ruleset (`nft -f`), relative to the lab file; default: the lab's stateful firewall and masquerade. */
  nftables: optional(string({ min: 1 })),
  /** The agent's --min-packets / --min-bytes. */
  minPackets: optional(int(0, 999_999_999_999_999)),
  minBytes: optional(int(0, 999_999_999_999_999)),
});
const LabSchema = object({
  name: short,
  out: optional(string()),
  socket: optional(string()),
  segments: array(object({ name: string({ min: 1 }), vlan: optional(number({ int: true })), vni: optional(number({ int: true })) }), { min: 1 }),
  vms: array(object({
    name: short,
    segment: string({ min: 1 }),
    ip: ipPrefix,
    mac,
    /** The VM's default route, e.g. a service VM's inside address. */
    gateway: optional(string({ regex: /^\d+\.\d+\.\d+\.\d+$/, message: 'expected an IPv4 address, like 10.1.0.1' })),
    /** The VM interface's stateful firewall (the topology's interfaces[].firewall, checked there). */
    firewall: optional(array(FirewallRuleSchema)),
  }), { min: 1 }),
  spares: withDefault(array(object({ name: short, vm: short })), () => []),
  services: withDefault(array(ServiceSchema), () => []),
  ports: withDefault(oneOf(['veth', 'tap'] as const), () => 'veth' as const),
  /** fpo run --workers: datapath threads (workers.ts). */
  workers: withDefault(int(1, 64), () => 1),
});
export type Lab = Out<typeof LabSchema>;

interface LabState {
  /** fpo run's process (absent while lab up had not started it yet). */
  pid?: number;
  /** Namespaces made so far (lab down deletes these, and only names the lab gives). */
  netns: string[];
  /** veth pairs made so far, by their host end (lab down deletes those still there). */
  links?: string[];
  socket: string;
  topology: string;
  /**
   * fpo run's start time (/proc/PID/stat field 22, clock ticks after boot):
   * with the command line, what tells the lab's process from a later one
   * that was given the same pid. Absent in state files of older fpo.
   */
  startTime?: string;
  /** The service VMs' agents started so far (lab down stops these, once each is checked as fpo run is). */
  agents?: AgentState[];
}

interface AgentState {
  /** The service it runs in. */
  service: string;
  pid: number;
  /** Its --socket: the lab's own path for that service (agentSocket). */
  socket: string;
  /** /proc/PID/stat's start time, as for fpo run. */
  startTime?: string;
}

/** /proc/PID/stat's start time, or undefined when there is no such process. */
function procStartTime(pid: number): string | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // "pid (comm) state ppid …": comm may hold spaces and parentheses; fields restart after the last ")".
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
}

/** /proc/PID/cmdline as arguments, or undefined when there is no such process. */
function procCmdline(pid: number): string[] | undefined {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter((a, i, all) => i < all.length - 1 || a !== '');
  } catch {
    return undefined;
  }
}

/**
 * Whether `pid` is the lab's own fpo run: its command line is `… run -t
 * TOPOLOGY -s SOCKET …` with the lab's topology and socket, and (when the
 * state file has it) it started when the lab's did. 'gone': not running.
 */
export function labProcess(state: LabState): 'ours' | 'gone' | { other: string } {
  return ownProcess(state.pid, state.startTime, (argv, after) => argv.includes('run') && after('-t') === state.topology && after('-s') === state.socket);
}

/** Whether `agent` is the lab's own `fpo agent` of that service: `… agent --socket SOCKET …`, started when lab up recorded. */
export function agentProcess(agent: AgentState): 'ours' | 'gone' | { other: string } {
  return ownProcess(agent.pid, agent.startTime, (argv, after) => argv.includes('agent') && after('--socket') === agent.socket);
}

function ownProcess(pid: number | undefined, startTime: string | undefined, looksOurs: (argv: string[], after: (flag: string) => string | undefined) => boolean): 'ours' | 'gone' | { other: string } {
  if (pid === undefined) return 'gone';
  const argv = procCmdline(pid);
  // No command line: no such process, or one that has exited (a zombie) or a kernel thread: not a running fpo.
  if (argv === undefined || argv.length === 0) return 'gone';
  const after = (flag: string) => { const i = argv.indexOf(flag); return i >= 0 ? argv[i + 1] : undefined; };
  const ours = looksOurs(argv, after) && (startTime === undefined || procStartTime(pid) === startTime);
  return ours ? 'ours' : { other: argv.join(' ').slice(0, 200) };
}

/** Where a service VM's agent listens: in the lab's folder. */
export const agentSocket = (lab: { dir: string }, service: string) => join(lab.dir, `agent-${service}.sock`);

/** A service VM's two ports: the lab's port name (NAMEi, NAMEo), the topology's interface name, the side. */
export function servicePorts(s: Lab['services'][number]): { port: string; itf: string; side: 'inside' | 'outside' }[] {
  return [{ port: `${s.name}i`, itf: `${s.name}-in`, side: 'inside' }, { port: `${s.name}o`, itf: `${s.name}-out`, side: 'outside' }];
}

/** Every port of the lab (VMs', spares', service VMs') with the namespace its VM end goes into. */
function labPorts(lab: Lab): { port: string; ns: string }[] {
  const n = labNames(lab);
  return [...lab.vms.map((v) => ({ port: v.name, ns: n.netns(v.name) })), ...lab.spares.map((sp) => ({ port: sp.name, ns: n.netns(sp.vm) })),
    ...lab.services.flatMap((s) => servicePorts(s).map((p) => ({ port: p.port, ns: n.netns(s.name) })))];
}

/** Reads and checks lab-state.json: a pid that can only be one process, namespaces that are the lab's own. */
export function readLabState(file: string, lab: Lab & { dir: string }): LabState {
  const bad = (field: string, what: string) => new FpoError('FPO_ERR_USAGE', `${file}: ${field}: ${what}; nothing was signalled or removed (lab down trusts only a state it made)`, { path: file });
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw bad('(file)', `not the lab's state: ${(e as Error).message}`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw bad('(top level)', 'expected an object');
  const st = json as Record<string, unknown>;
  // 0 would signal lab down's own process group, -1 every process it may signal.
  // No pid: lab up stopped before it started fpo run (nothing to signal).
  if (st.pid !== undefined && (typeof st.pid !== 'number' || !Number.isInteger(st.pid) || st.pid < 2 || st.pid > 4194304)) throw bad('pid', `expected a process id (an integer in 2..4194304), got ${JSON.stringify(st.pid)}`);
  if (typeof st.socket !== 'string' || typeof st.topology !== 'string') throw bad('socket', 'expected the socket and topology paths as strings');
  if (st.startTime !== undefined && typeof st.startTime !== 'string') throw bad('startTime', 'expected a string');
  const mine = new Set([...lab.vms, ...lab.services].map((v) => labNames(lab).netns(v.name)));
  if (!Array.isArray(st.netns)) throw bad('netns', 'expected an array of namespace names');
  st.netns.forEach((ns, i) => {
    if (typeof ns !== 'string' || !mine.has(ns)) throw bad(`netns[${i}]`, `${JSON.stringify(ns)} is not a namespace of lab ${lab.name} (${[...mine].join(', ')})`);
  });
  const hosts = new Set(labPorts(lab).map((p) => labNames(lab).host(p.port)));
  if (st.links !== undefined && !Array.isArray(st.links)) throw bad('links', 'expected an array of interface names');
  ((st.links ?? []) as unknown[]).forEach((l, i) => {
    if (typeof l !== 'string' || !hosts.has(l)) throw bad(`links[${i}]`, `${JSON.stringify(l)} is not a veth of lab ${lab.name} (${[...hosts].join(', ')})`);
  });
  // An agent is signalled only as the lab's own: a service of this lab with the hand-over, at the lab's socket path for it.
  if (st.agents !== undefined && !Array.isArray(st.agents)) throw bad('agents', 'expected an array of agents');
  const agents = ((st.agents ?? []) as unknown[]).map((a, i): AgentState => {
    if (typeof a !== 'object' || a === null || Array.isArray(a)) throw bad(`agents[${i}]`, 'expected an object');
    const { service, pid, socket, startTime } = a as Record<string, unknown>;
    const svc = lab.services.find((s) => s.name === service && s.handover);
    if (svc === undefined) throw bad(`agents[${i}].service`, `${JSON.stringify(service)} is not a service VM of lab ${lab.name} with the hand-over on`);
    if (typeof pid !== 'number' || !Number.isInteger(pid) || pid < 2 || pid > 4194304) throw bad(`agents[${i}].pid`, `expected a process id (an integer in 2..4194304), got ${JSON.stringify(pid)}`);
    if (socket !== agentSocket(lab, svc.name)) throw bad(`agents[${i}].socket`, `expected ${JSON.stringify(agentSocket(lab, svc.name))}, got ${JSON.stringify(socket)}`);
    if (startTime !== undefined && typeof startTime !== 'string') throw bad(`agents[${i}].startTime`, 'expected a string');
    return { service: svc.name, pid, socket, startTime };
  });
  return { pid: st.pid as number | undefined, netns: st.netns as string[], links: st.links as string[] | undefined, socket: st.socket, topology: st.topology, startTime: st.startTime as string | undefined, agents };
}

export function loadLab(path: string): Lab & { dir: string; socketPath: string } {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new FpoError('FPO_ERR_USAGE', `${path}: cannot read the lab: ${(e as Error).message}`, { path });
  }
  let lab: Lab;
  try {
    lab = LabSchema(json, []);
  } catch (e) {
    if (e instanceof CheckError) throw new FpoError('FPO_ERR_USAGE', `${path}: ${formatPath(e.path)}: ${e.message}`, { path });
    throw e;
  }
  const vmNames = new Set(lab.vms.map((v) => v.name));
  if (vmNames.size !== lab.vms.length) throw new FpoError('FPO_ERR_USAGE', `${path}: vms: two VMs have the same name`);
  lab.vms.forEach((v, i) => { if (!lab.segments.some((s) => s.name === v.segment)) throw new FpoError('FPO_ERR_USAGE', `${path}: vms[${i}].segment: no segment named "${v.segment}"`); });
  lab.spares.forEach((s, i) => { if (!vmNames.has(s.vm)) throw new FpoError('FPO_ERR_USAGE', `${path}: spares[${i}].vm: no VM named "${s.vm}"`); });
  // A service VM has a namespace like a VM's and two ports like a VM's: their names must not meet.
  const portNames = new Map<string, string>([...lab.vms.map((v) => [v.name, `VM "${v.name}"`] as const), ...lab.spares.map((sp) => [sp.name, `spare "${sp.name}"`] as const)]);
  const zones = new Map<number, string>();
  lab.services.forEach((s, i) => {
    const at = `${path}: services[${i}]`;
    if (vmNames.has(s.name)) throw new FpoError('FPO_ERR_USAGE', `${at}.name: "${s.name}" is already a VM's name (a service VM is a namespace of its own)`);
    for (const p of servicePorts(s)) {
      if (portNames.has(p.port)) throw new FpoError('FPO_ERR_USAGE', `${at}.name: its ${p.side} port would be named "${p.port}", already ${portNames.get(p.port)}'s`);
      portNames.set(p.port, `service "${s.name}"`);
      if (!lab.segments.some((g) => g.name === s[p.side].segment)) throw new FpoError('FPO_ERR_USAGE', `${at}.${p.side}.segment: no segment named "${s[p.side].segment}"`);
    }
    if (zones.has(s.zone)) throw new FpoError('FPO_ERR_USAGE', `${at}.zone: zone ${s.zone} is already service "${zones.get(s.zone)}"'s; each service VM has a zone of its own`);
    zones.set(s.zone, s.name);
    if (s.nftables !== undefined) {
      s.nftables = resolve(dirname(path), s.nftables);
      if (!existsSync(s.nftables)) throw new FpoError('FPO_ERR_USAGE', `${at}.nftables: expected a file with an nftables ruleset, no file at ${s.nftables}`);
    }
    if ((s.minPackets !== undefined || s.minBytes !== undefined) && !s.handover) throw new FpoError('FPO_ERR_USAGE', `${at}.minPackets: expected with "handover": true only (they are the agent's)`);
  });
  const dir = resolve(lab.out ?? join(tmpdir(), `fpo-lab-${lab.name}`));
  return { ...lab, dir, socketPath: lab.socket ?? join(dir, 'fpo.sock') };
}

/** Names the lab gives things: namespace of a VM, the VM's interface (TAP or veth end), the host's veth end. */
export const labNames = (lab: Lab) => ({
  netns: (vm: string) => `fpo-${lab.name}-${vm}`,
  device: (port: string) => `${lab.name}-${port}`.slice(0, 15),
  host: (port: string) => `h-${lab.name}-${port}`.slice(0, 15),
});

function ip(...args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

/**
 * The fpo topology of a lab: a port per VM, per spare and two per service VM
 * (afpacket on the host's veth end, or TAP), the VMs' interfaces on them; a
 * service VM's node has its offload section and port security off.
 */
export function labTopology(lab: Lab & { dir: string }): object {
  const n = labNames(lab);
  // veth: the VM's end keeps its offloads (TSO, checksum): the ring port takes its 64 KiB segments whole.
  const port = (name: string) => (lab.ports === 'veth' ? { kind: 'afpacket', device: n.host(name), offload: true } : { kind: 'tap', device: n.device(name) });
  const ports = [...lab.vms.map((v, i) => ({ name: `p-${v.name}`, ppid: 10 + i, ...port(v.name) })),
    ...lab.spares.map((s, i) => ({ name: s.name, ppid: 100 + i, ...port(s.name) })),
    ...lab.services.flatMap((s, i) => servicePorts(s).map((p, j) => ({ name: `p-${p.port}`, ppid: 200 + 2 * i + j, ...port(p.port) })))];
  return {
    name: lab.name, ports, segments: lab.segments,
    nodes: [
      ...lab.vms.map((v) => ({ name: v.name, interfaces: [{ name: `${v.name}-eth0`, mac: v.mac, ip: v.ip.split('/')[0], segment: v.segment, port: `p-${v.name}`, ...(v.firewall !== undefined ? { firewall: v.firewall } : {}) }] })),
      // A service VM forwards others' packets: their source addresses are not its own, so no port security.
      ...lab.services.map((s) => ({
        name: s.name,
        offload: { agent: agentSocket(lab, s.name), zone: s.zone, inside: [`${s.name}-in`], outside: [`${s.name}-out`] },
        interfaces: servicePorts(s).map((p) => ({ name: p.itf, mac: s[p.side].mac, ip: s[p.side].ip.split('/')[0], segment: s[p.side].segment, port: `p-${p.port}`, portSecurity: false })),
      })),
    ],
  };
}

/**
 * A service VM's ruleset when its file names none: a stateful firewall on
 * forwarding (replies and related packets pass, invalid ones are dropped, new
 * connections only from inside to outside, nothing else) and masquerade out of
 * the outside interface, as an operator writes it.
 */
export function defaultRuleset(inside: string, outside: string): string {
  return `table inet fw {
  chain forward {
    type filter hook forward priority 0; policy drop;
    ct state established,related counter accept
    ct state invalid counter drop
    iifname "${inside}" oifname "${outside}" ct state new counter accept
  }
}
table ip nat {
  chain post {
    type nat hook postrouting priority 100;
    oifname "${outside}" counter masquerade
  }
}
`;
}

export async function labUp(path: string): Promise<{ dir: string; socket: string; netns: string[]; pid: number }> {
  const lab = loadLab(path);
  const n = labNames(lab);
  if (existsSync(join(lab.dir, 'lab-state.json'))) throw new FpoError('FPO_ERR_USAGE', `${path}: lab ${lab.name} is up already (${join(lab.dir, 'lab-state.json')}); run fpo lab down first`);
  mkdirSync(lab.dir, { recursive: true });
  // A lab starts as its file says: no VPIDs or mappings left from an earlier run.
  rmSync(join(lab.dir, 'fpo-state.json'), { force: true });
  const topology = join(lab.dir, 'topology.json');
  writeFileSync(topology, JSON.stringify(labTopology(lab), null, 1));
  const state: LabState = { netns: [], links: [], socket: lab.socketPath, topology };
  const save = () => writeFileSync(join(lab.dir, 'lab-state.json'), JSON.stringify(state, null, 1));
  const wiring = (e: unknown) => new FpoError('FPO_ERR_IO', `lab ${lab.name}: wiring failed: ${((e as { stderr?: Buffer }).stderr?.toString() || (e as Error).message).trim()}; run fpo lab down ${path}`);
  save();
  try {
    for (const v of [...lab.vms, ...lab.services]) {
      const ns = n.netns(v.name);
      ip('netns', 'add', ns);
      state.netns.push(ns);
      save();
    }
    if (lab.ports === 'veth') {
      // The pairs first: fpo run attaches to the host ends, so they must be there when it starts.
      for (const { port, ns } of labPorts(lab)) {
        const host = n.host(port);
        ip('link', 'add', host, 'type', 'veth', 'peer', 'name', n.device(port));
        state.links!.push(host);
        save();
        ip('link', 'set', n.device(port), 'netns', ns);
        execFileSync('sysctl', ['-qw', `net.ipv6.conf.${host}.disable_ipv6=1`], { stdio: ['ignore', 'ignore', 'pipe'] });
        ip('link', 'set', host, 'up');
      }
    }
  } catch (e) {
    throw wiring(e);
  }
  const cli = fileURLToPath(new URL('./cli.js', import.meta.url));
  const out = openSync(join(lab.dir, 'fpo-run.out'), 'w');
  const err = openSync(join(lab.dir, 'fpo-run.log'), 'w');
  const child = spawn(process.execPath, [cli, 'run', '-t', topology, '-s', lab.socketPath, '-o', lab.dir, '--log-level', 'info', ...(lab.workers > 1 ? ['--workers', String(lab.workers)] : [])], { detached: true, stdio: ['ignore', out, err] });
  child.unref();
  const pid = child.pid!;
  state.pid = pid;
  state.startTime = procStartTime(pid);
  save();
  for (let i = 0; i < 200 && !existsSync(lab.socketPath); i++) await new Promise((r) => setTimeout(r, 50));
  if (!existsSync(lab.socketPath)) throw new FpoError('FPO_ERR_IO', `lab ${lab.name}: fpo run did not start; see ${join(lab.dir, 'fpo-run.log')}`);
  try {
    for (const v of lab.vms) {
      const ns = n.netns(v.name);
      const dev = n.device(v.name);
      if (lab.ports === 'tap') ip('link', 'set', dev, 'netns', ns); // fpo run made the TAP: into the VM now
      ip('-n', ns, 'link', 'set', dev, 'address', v.mac);
      ip('-n', ns, 'addr', 'add', v.ip, 'dev', dev);
      ip('-n', ns, 'link', 'set', dev, 'up');
      ip('-n', ns, 'link', 'set', 'lo', 'up');
      if (v.gateway !== undefined) ip('-n', ns, 'route', 'add', 'default', 'via', v.gateway);
    }
    if (lab.ports === 'tap') for (const sp of lab.spares) ip('link', 'set', n.device(sp.name), 'netns', n.netns(sp.vm));
    for (const s of lab.services) {
      const ns = n.netns(s.name);
      for (const p of servicePorts(s)) {
        const dev = n.device(p.port);
        if (lab.ports === 'tap') ip('link', 'set', dev, 'netns', ns);
        ip('-n', ns, 'link', 'set', dev, 'address', s[p.side].mac);
        ip('-n', ns, 'addr', 'add', s[p.side].ip, 'dev', dev);
        ip('-n', ns, 'link', 'set', dev, 'up');
      }
      ip('-n', ns, 'link', 'set', 'lo', 'up');
      ip('netns', 'exec', ns, 'sysctl', '-qw', 'net.ipv4.ip_forward=1');
      // The default ruleset is written beside the topology, so what the VM runs can be read.
      let rules = s.nftables;
      if (rules === undefined) {
        rules = join(lab.dir, `nftables-${s.name}.nft`);
        writeFileSync(rules, defaultRuleset(n.device(`${s.name}i`), n.device(`${s.name}o`)));
      }
      ip('netns', 'exec', ns, 'nft', '-f', rules);
    }
  } catch (e) {
    throw wiring(e);
  }
  // The agents last: the service VMs forward and filter already; each listens on its socket in the lab's folder, and fpo run connects.
  state.agents = [];
  for (const s of lab.services.filter((x) => x.handover)) {
    const sock = agentSocket(lab, s.name);
    rmSync(sock, { force: true });
    const log = join(lab.dir, `agent-${s.name}.log`);
    const policy = [...(s.minPackets !== undefined ? ['--min-packets', String(s.minPackets)] : []), ...(s.minBytes !== undefined ? ['--min-bytes', String(s.minBytes)] : [])];
    // ip netns exec execs the command in place: the pid is the agent's. Its own process group, so a SIGKILL reaches its conntrack -E too.
    const agent = spawn('ip', ['netns', 'exec', n.netns(s.name), process.execPath, cli, 'agent', '--socket', sock, '--name', s.name, '--conntrack', ...policy], { detached: true, stdio: ['ignore', openSync(log, 'w'), openSync(log, 'a')] });
    agent.unref();
    state.agents.push({ service: s.name, pid: agent.pid!, socket: sock, startTime: procStartTime(agent.pid!) });
    save();
    for (let i = 0; i < 200 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
    if (!existsSync(sock)) throw new FpoError('FPO_ERR_IO', `lab ${lab.name}: the agent of service VM ${s.name} did not start; see ${log}; run fpo lab down ${path}`);
  }
  return { dir: lab.dir, socket: lab.socketPath, netns: state.netns, pid };
}

/**
 * Stops `pid` when `who()` says it is ours: SIGTERM, then SIGKILL after 5 s
 * (to its process group when `group`: the agent's conntrack -E goes too),
 * looking again right before each signal. Another process now holding the pid
 * is not signalled (said on stderr) and counts as stopped: the lab's own
 * process is gone.
 */
async function stopOwn(pid: number | undefined, who: () => 'ours' | 'gone' | { other: string }, what: string, group: boolean): Promise<boolean> {
  const w = who();
  if (w === 'gone') return true; // not running any more
  if (w !== 'ours') {
    // The pid is another process's now (the lab's process exited and the pid was
    // given again): it is not signalled, and the lab's own namespaces still go.
    process.stderr.write(`fpo: lab down: pid ${pid} is not ${what} (it runs: ${w.other}); not signalled\n`);
    return true;
  }
  const own = pid as number; // 'ours': a pid was there and is the lab's
  try {
    process.kill(own, 'SIGTERM');
    for (let i = 0; i < 100; i++) {
      await new Promise((r) => setTimeout(r, 50));
      if (who() !== 'ours') return true;
    }
    // Looked at again right before: the pid may have been given to another process meanwhile.
    if (who() === 'ours') process.kill(group ? -own : own, 'SIGKILL');
  } catch {
    return true; // exited between the look and the signal
  }
  return false;
}

export async function labDown(path: string): Promise<{ stopped: boolean; removed: string[] }> {
  const lab = loadLab(path);
  const file = join(lab.dir, 'lab-state.json');
  if (!existsSync(file)) throw new FpoError('FPO_ERR_USAGE', `${path}: lab ${lab.name} is not up (no ${file})`);
  const state = readLabState(file, lab);
  // The agents first (a namespace's deletion does not end the processes in it), then fpo run.
  for (const a of state.agents ?? []) {
    await stopOwn(a.pid, () => agentProcess(a), `lab ${lab.name}'s agent of service VM ${a.service}`, true);
    if (agentProcess(a) === 'gone') rmSync(a.socket, { force: true });
  }
  const stopped = await stopOwn(state.pid, () => labProcess(state), `lab ${lab.name}'s fpo run`, false);
  const removed: string[] = [];
  const existing = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  for (const ns of state.netns) {
    if (!existing.split('\n').some((l) => l.split(' ')[0] === ns)) continue;
    ip('netns', 'del', ns);
    removed.push(ns);
  }
  // A pair goes with its namespace; one whose VM end never got there (wiring cut short) goes here.
  const links = execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' });
  for (const host of state.links ?? []) {
    if (!links.split('\n').some((l) => l.split(': ')[1]?.split('@')[0] === host)) continue;
    try {
      ip('link', 'del', host);
      removed.push(host);
    } catch {
      // Gone meanwhile: its namespace's deletion took the pair along (the kernel does that after the call returns).
    }
  }
  rmSync(file);
  rmSync(join(lab.dir, 'fpo-state.json'), { force: true });
  return { stopped, removed };
}
