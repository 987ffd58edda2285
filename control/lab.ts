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
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FpoError } from '../datapath/errors.js';
import { CheckError, array, formatPath, int, number, object, oneOf, optional, string, withDefault, type Out } from './check.js';

// The lab file is checked with check.ts's combinators, as the topology and events are (zod took ~100 ms to load).
const short = string({ regex: /^[a-z0-9]{1,6}$/, message: 'expected 1 to 6 lowercase letters or digits (it becomes part of interface names)' });
const ipPrefix = string({ regex: /^\d+\.\d+\.\d+\.\d+\/\d+$/, message: 'expected an IPv4 address with its prefix, like 10.0.0.1/24' });
const mac = string({ regex: /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/, message: 'expected a lowercase MAC address like 02:00:00:00:01:01' });
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
  }), { min: 1 }),
  spares: withDefault(array(object({ name: short, vm: short })), () => []),
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
  if (state.pid === undefined) return 'gone';
  const argv = procCmdline(state.pid);
  // No command line: no such process, or one that has exited (a zombie) or a kernel thread: not a running fpo.
  if (argv === undefined || argv.length === 0) return 'gone';
  const after = (flag: string) => { const i = argv.indexOf(flag); return i >= 0 ? argv[i + 1] : undefined; };
  const ours = argv.includes('run') && after('-t') === state.topology && after('-s') === state.socket
    && (state.startTime === undefined || procStartTime(state.pid) === state.startTime);
  return ours ? 'ours' : { other: argv.join(' ').slice(0, 200) };
}

/** Reads and checks lab-state.json: a pid that can only be one process, namespaces that are the lab's own. */
export function readLabState(file: string, lab: Lab): LabState {
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
  const mine = new Set(lab.vms.map((v) => labNames(lab).netns(v.name)));
  if (!Array.isArray(st.netns)) throw bad('netns', 'expected an array of namespace names');
  st.netns.forEach((ns, i) => {
    if (typeof ns !== 'string' || !mine.has(ns)) throw bad(`netns[${i}]`, `${JSON.stringify(ns)} is not a namespace of lab ${lab.name} (${[...mine].join(', ')})`);
  });
  const hosts = new Set([...lab.vms.map((v) => v.name), ...lab.spares.map((sp) => sp.name)].map((p) => labNames(lab).host(p)));
  if (st.links !== undefined && !Array.isArray(st.links)) throw bad('links', 'expected an array of interface names');
  ((st.links ?? []) as unknown[]).forEach((l, i) => {
    if (typeof l !== 'string' || !hosts.has(l)) throw bad(`links[${i}]`, `${JSON.stringify(l)} is not a veth of lab ${lab.name} (${[...hosts].join(', ')})`);
  });
  return { pid: st.pid as number | undefined, netns: st.netns as string[], links: st.links as string[] | undefined, socket: st.socket, topology: st.topology, startTime: st.startTime as string | undefined };
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

/** The fpo topology of a lab: a port per VM and per spare (afpacket on the host's veth end, or TAP), the VMs' interfaces on them. */
export function labTopology(lab: Lab): object {
  const n = labNames(lab);
  // veth: the VM's end keeps its offloads (TSO, checksum): the ring port takes its 64 KiB segments whole.
  const port = (name: string) => (lab.ports === 'veth' ? { kind: 'afpacket', device: n.host(name), offload: true } : { kind: 'tap', device: n.device(name) });
  const ports = [...lab.vms.map((v, i) => ({ name: `p-${v.name}`, ppid: 10 + i, ...port(v.name) })),
    ...lab.spares.map((s, i) => ({ name: s.name, ppid: 100 + i, ...port(s.name) }))];
  return {
    name: lab.name, ports, segments: lab.segments,
    nodes: lab.vms.map((v) => ({ name: v.name, interfaces: [{ name: `${v.name}-eth0`, mac: v.mac, ip: v.ip.split('/')[0], segment: v.segment, port: `p-${v.name}` }] })),
  };
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
    for (const v of lab.vms) {
      const ns = n.netns(v.name);
      ip('netns', 'add', ns);
      state.netns.push(ns);
      save();
    }
    if (lab.ports === 'veth') {
      // The pairs first: fpo run attaches to the host ends, so they must be there when it starts.
      for (const [port, vm] of [...lab.vms.map((v) => [v.name, v.name]), ...lab.spares.map((sp) => [sp.name, sp.vm])]) {
        const host = n.host(port);
        ip('link', 'add', host, 'type', 'veth', 'peer', 'name', n.device(port));
        state.links!.push(host);
        save();
        ip('link', 'set', n.device(port), 'netns', n.netns(vm));
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
    }
    if (lab.ports === 'tap') for (const sp of lab.spares) ip('link', 'set', n.device(sp.name), 'netns', n.netns(sp.vm));
  } catch (e) {
    throw wiring(e);
  }
  return { dir: lab.dir, socket: lab.socketPath, netns: state.netns, pid };
}

export async function labDown(path: string): Promise<{ stopped: boolean; removed: string[] }> {
  const lab = loadLab(path);
  const file = join(lab.dir, 'lab-state.json');
  if (!existsSync(file)) throw new FpoError('FPO_ERR_USAGE', `${path}: lab ${lab.name} is not up (no ${file})`);
  const state = readLabState(file, lab);
  let stopped = false;
  const who = labProcess(state);
  if (who === 'gone') {
    stopped = true; // not running any more
  } else if (who !== 'ours') {
    // The pid is another process's now (the lab's fpo run exited and the pid was
    // given again): it is not signalled, and the lab's own namespaces still go.
    process.stderr.write(`fpo: lab down: pid ${state.pid} is not lab ${lab.name}'s fpo run (it runs: ${who.other}); not signalled\n`);
    stopped = true;
  } else {
    const pid = state.pid as number; // 'ours': a pid was there and is lab's fpo run
    try {
      process.kill(pid, 'SIGTERM');
      for (let i = 0; i < 100; i++) {
        await new Promise((r) => setTimeout(r, 50));
        if (labProcess(state) !== 'ours') { stopped = true; break; }
      }
      // Looked at again right before: the pid may have been given to another process meanwhile.
      if (!stopped && labProcess(state) === 'ours') process.kill(pid, 'SIGKILL');
    } catch {
      stopped = true; // exited between the look and the signal
    }
  }
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
