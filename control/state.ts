/**
 * State file of `fpo run` (OUT/fpo-state.json): every interface's and
 * uplink's VPID and every interface's port, so that a restart gives each the
 * same VPID and port.
 *
 *   { "version": 1,
 *     "vpids": { "vm1-eth0": 1, …, "uplink0": 6 },
 *     "ports": { "vm1-eth0": "vf1", …, "vm5-eth0": null } }
 *
 * Reading: the file is checked whole against the topology before any of it
 * is used (one schema, check.ts, as the topology's), and refused with the
 * file, the field and what to do about it: a value of the wrong type or out
 * of range, a VPID given twice, a port the topology does not have or that is
 * an uplink, two interfaces on one port, an empty or torn file, something
 * that is not a regular file. Names the topology no longer has are forgotten
 * (an interface removed from the topology is not an error); endpoints the
 * file does not name get free VPIDs and keep the topology's port. So the
 * service starts with exactly the state written, or does not start.
 *
 * Writing: temp file, fsync, rename over the old one, fsync of the folder,
 * so that a crash at any point leaves the old state or the new one, never a
 * torn one; a temp file that a killed writer left is removed at the next
 * start. A request that changes the state persists it before it changes the
 * datapath (service.ts), so a write that fails changes nothing.
 *
 * Names are keys of `Map`s, never of plain objects: an interface named
 * "toString" or "constructor" must not find Object.prototype's members.
 */
import { closeSync, constants, fstatSync, fsyncSync, openSync, readFileSync, readSync, readdirSync, renameSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { FpoError } from '../datapath/errors.js';
import { processRunning } from './files.js';
import { CheckError, object, type Check, type Path } from './check.js';
import type { Topology } from './topology.js';

export const STATE_VERSION = 1;
/** Bigger than any state fpo writes (65,535 endpoints of 64-character names are about 10 MB). */
export const MAX_STATE_BYTES = 16 << 20;

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** What the state file holds. */
export interface State {
  /** Endpoint (interface or uplink) name → VPID. */
  vpids: Map<string, number>;
  /** Interface name → port name, or null when it is not on this host. */
  ports: Map<string, string | null>;
}

/** What a checked state file gives the topology: a VPID for every endpoint, a port (or none) for every interface. */
export interface StatePlan {
  /** Interface name → VPID, every interface of the topology. */
  interfaceVpids: Map<string, number>;
  /** Uplink name → VPID, every uplink of the topology. */
  uplinkVpids: Map<string, number>;
  /** Interface name → port name or undefined (not on this host), every interface. */
  ports: Map<string, string | undefined>;
  /** Names in the file that the topology no longer has (left out of the state). */
  forgotten: string[];
  /** Endpoints the file did not name, with the VPIDs they were given. */
  added: string[];
}

const REMEDY = 'the state file cannot be used as it is: correct it, or move it away to start from the topology\'s VPIDs and ports';

function refuse(path: string, field: string, what: string): FpoError {
  return new FpoError('FPO_ERR_BAD_STATE', `${path}: ${field}: ${what}; ${REMEDY}`, { path });
}

/** A key as the messages write it: JSON-quoted, cut at 80 characters. */
function key(k: string): string {
  const q = JSON.stringify(k);
  return q.length > 82 ? `${q.slice(0, 80)}…"` : q;
}

/** `vpids["vm1-eth0"]` from ['vpids', 'vm1-eth0']. */
function field(path: Path): string {
  if (path.length === 0) return '(top level)';
  return String(path[0]) + path.slice(1).map((p) => `[${typeof p === 'number' ? p : key(p)}]`).join('');
}

function kind(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  return typeof v;
}

/** A JSON object of names → values, as a Map (never a plain object: see the header). */
function mapOf<T>(value: Check<T>, what: string): Check<Map<string, T>> {
  return (v, path) => {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new CheckError(path, `expected an object of ${what}, received ${kind(v)}`);
    const out = new Map<string, T>();
    for (const [k, x] of Object.entries(v)) {
      if (!NAME.test(k)) throw new CheckError([...path, k], 'expected a name of letters, digits, ".", "_", "-" (at most 64) as the key');
      out.set(k, value(x, [...path, k]));
    }
    return out;
  };
}

function vpidCheck(maxVpid: number): Check<number> {
  return (v, path) => {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > maxVpid) {
      throw new CheckError(path, `expected an integer in 1..${maxVpid}, got ${typeof v === 'number' && Number.isFinite(v) ? String(v) : typeof v === 'string' ? key(v) : kind(v)}`);
    }
    return v;
  };
}

const portCheck: Check<string | null> = (v, path) => {
  if (v === null) return null;
  if (typeof v !== 'string' || !NAME.test(v)) throw new CheckError(path, `expected a port name, or null for an interface not on this host, received ${typeof v === 'string' ? key(v) : kind(v)}`);
  return v;
};

const versionCheck: Check<1> = (v, path) => {
  if (v !== STATE_VERSION) throw new CheckError(path, `expected ${STATE_VERSION} (this fpo reads state files of version ${STATE_VERSION}), received ${typeof v === 'number' ? String(v) : kind(v)}`);
  return STATE_VERSION;
};

function stateSchema(maxVpid: number) {
  return object({
    version: versionCheck,
    vpids: mapOf(vpidCheck(maxVpid), 'endpoint names to VPIDs'),
    ports: mapOf(portCheck, 'interface names to port names (or null)'),
  });
}

/**
 * Reads the state file's text: undefined when there is none. Refuses (with
 * what to do) anything that is not a non-empty regular file of UTF-8 text
 * under MAX_STATE_BYTES; a FIFO is opened without blocking and refused.
 */
export function readStateText(path: string): string | undefined {
  let fd: number;
  try {
    // O_NOFOLLOW: a symlink would be replaced by a regular file at the first save, its target left with the old state.
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOFOLLOW);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    if ((e as NodeJS.ErrnoException).code === 'ELOOP') throw refuse(path, '(file)', 'a symbolic link: give the file\'s own path');
    throw refuse(path, '(file)', `cannot open: ${(e as Error).message}`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw refuse(path, '(file)', 'not a regular file');
    if (st.size === 0) throw refuse(path, '(file)', 'empty (0 bytes)');
    if (st.size > MAX_STATE_BYTES) throw refuse(path, '(file)', `${st.size} bytes, more than a state file can be (${MAX_STATE_BYTES})`);
    const buf = Buffer.alloc(st.size);
    let got = 0;
    for (;;) {
      const n = readSync(fd, buf, got, buf.length - got, null);
      if (n === 0) break;
      got += n;
      if (got === buf.length) break;
    }
    if (got !== st.size) throw refuse(path, '(file)', `changed while it was read (${got} of ${st.size} bytes)`);
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(buf);
    } catch {
      throw refuse(path, '(file)', 'not UTF-8 text');
    }
  } catch (e) {
    if (e instanceof FpoError) throw e;
    throw refuse(path, '(file)', `cannot read: ${(e as Error).message}`);
  } finally {
    closeSync(fd);
  }
}

/**
 * Checks a state file's text against the topology, whole, and works out what
 * every endpoint gets. Changes nothing; throws FpoError (FPO_ERR_BAD_STATE)
 * naming the file and the field.
 */
export function checkState(text: string, path: string, topo: Topology, maxVpid: number): StatePlan {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    // The parser's message quotes the text it choked on: say where, never what (the file may not be ours to show).
    const at = /position (\d+)/.exec((e as Error).message);
    throw refuse(path, '(file)', `not JSON: cannot be parsed${at ? ` (at byte ${at[1]})` : ''}`);
  }
  let s: { version: 1; vpids: Map<string, number>; ports: Map<string, string | null> };
  try {
    s = stateSchema(maxVpid)(json, []);
  } catch (e) {
    if (e instanceof CheckError) throw refuse(path, field(e.path), e.message);
    throw e;
  }
  const interfaces = new Map(topo.interfaces.map((i) => [i.name, i]));
  const ports = new Map(topo.ports.map((p) => [p.name, p]));
  const uplinks = new Map(topo.ports.filter((p) => p.role === 'uplink').map((p) => [p.name, p]));
  const forgotten = new Set<string>();
  // VPIDs: unique over the whole file (fpo never writes one twice), in range (the schema).
  const owner = new Map<number, string>();
  for (const [name, vpid] of s.vpids) {
    const other = owner.get(vpid);
    if (other !== undefined) throw refuse(path, field(['vpids', name]), `VPID ${vpid} is already ${key(other)}'s`);
    owner.set(vpid, name);
    if (!interfaces.has(name) && !uplinks.has(name)) forgotten.add(name);
  }
  for (const [name, port] of s.ports) {
    if (uplinks.has(name)) throw refuse(path, field(['ports', name]), `${key(name)} is an uplink; only interfaces are listed here`);
    if (!interfaces.has(name)) {
      forgotten.add(name);
      continue;
    }
    if (port === null) continue;
    const p = ports.get(port);
    if (!p) throw refuse(path, field(['ports', name]), `no port named ${key(port)} in ${topo.path}`);
    if (p.role !== 'vm') throw refuse(path, field(['ports', name]), `port ${key(port)} is an uplink; interfaces attach to VM ports`);
  }
  // Every interface's port: the file's, else the topology's; no port twice.
  const portOf = new Map<string, string | undefined>();
  const holder = new Map<string, string>();
  for (const itf of topo.interfaces) {
    const saved = s.ports.get(itf.name);
    const port = s.ports.has(itf.name) ? (saved === null ? undefined : saved) : itf.port;
    portOf.set(itf.name, port);
    if (port === undefined) continue;
    const other = holder.get(port);
    if (other !== undefined) {
      const at = s.ports.has(itf.name) ? field(['ports', itf.name]) : field(['ports', other]);
      throw refuse(path, at, `port ${key(port)} would carry both ${key(other)} and ${key(itf.name)}${s.ports.has(itf.name) && s.ports.has(other) ? '' : ' (one of them from the topology)'}`);
    }
    holder.set(port, itf.name);
  }
  // Endpoints the file does not name: free VPIDs, after the highest in use, in topology order.
  const used = new Set<number>();
  for (const [name, vpid] of s.vpids) if (!forgotten.has(name)) used.add(vpid);
  let next = 1;
  for (const v of used) if (v >= next) next = v + 1;
  const added: string[] = [];
  const take = (name: string): number => {
    const v = s.vpids.get(name);
    if (v !== undefined) return v;
    for (let tries = 0; tries < maxVpid && (used.has(next) || next > maxVpid); tries++) next = next >= maxVpid ? 1 : next + 1;
    if (used.has(next) || next > maxVpid) throw refuse(path, 'vpids', `no free VPID in 1..${maxVpid} for ${key(name)}`);
    used.add(next);
    added.push(name);
    return next;
  };
  const interfaceVpids = new Map<string, number>();
  for (const itf of topo.interfaces) interfaceVpids.set(itf.name, take(itf.name));
  const uplinkVpids = new Map<string, number>();
  for (const p of topo.ports) if (p.role === 'uplink') uplinkVpids.set(p.name, take(p.name));
  return { interfaceVpids, uplinkVpids, ports: portOf, forgotten: [...forgotten], added };
}

/** Gives the topology the plan's VPIDs and ports (cannot fail: checkState checked everything). */
export function applyPlan(topo: Topology, plan: StatePlan): void {
  for (const itf of topo.interfaces) {
    itf.vpid = plan.interfaceVpids.get(itf.name)!;
    itf.port = plan.ports.get(itf.name);
  }
  for (const p of topo.ports) if (p.role === 'uplink') p.vpid = plan.uplinkVpids.get(p.name)!;
}

/**
 * Reads, checks and applies the state file at `path` to a freshly loaded
 * topology. Returns the plan applied, or undefined when there is no file.
 * On any error the topology is left as loaded.
 */
export function loadState(path: string, topo: Topology, maxVpid: number): StatePlan | undefined {
  const text = readStateText(path);
  if (text === undefined) return undefined;
  const plan = checkState(text, path, topo, maxVpid);
  applyPlan(topo, plan);
  return plan;
}

/** The state of a topology as it is now. */
export function stateOf(topo: Topology): State {
  const s: State = { vpids: new Map(), ports: new Map() };
  for (const itf of topo.interfaces) {
    s.vpids.set(itf.name, itf.vpid);
    s.ports.set(itf.name, itf.port ?? null);
  }
  for (const p of topo.ports) if (p.role === 'uplink') s.vpids.set(p.name, p.vpid);
  return s;
}

/** The file's text of a state (Object.fromEntries makes own properties, whatever the names). */
export function encodeState(s: State): string {
  return JSON.stringify({ version: STATE_VERSION, vpids: Object.fromEntries(s.vpids), ports: Object.fromEntries(s.ports) }, null, 1) + '\n';
}

/**
 * Writes `text` to `path` so that a crash leaves the old file or the new one:
 * a temp file beside it, fsync, rename over, fsync of the folder (without it
 * the rename itself may not survive a power cut). On failure the temp file is
 * removed, the old file is untouched, and FpoError (FPO_ERR_IO) says why.
 */
export function writeFileAtomic(path: string, text: string): void {
  const tmp = `${path}.tmp-${process.pid}`;
  let fd = -1;
  try {
    fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW, 0o644);
    const buf = Buffer.from(text, 'utf8');
    for (let off = 0; off < buf.length;) off += writeSync(fd, buf, off, buf.length - off);
    fsyncSync(fd);
    closeSync(fd);
    fd = -1;
    renameSync(tmp, path);
  } catch (e) {
    if (fd >= 0) closeSync(fd);
    try { unlinkSync(tmp); } catch { /* not made */ }
    throw new FpoError('FPO_ERR_IO', `${path}: cannot write the state: ${(e as Error).message}`, { path });
  }
  // The folder's entry: without this sync the rename itself may not survive a
  // power cut. The new state is in place whatever happens here, so a failure
  // (the folder removed this instant) is not reported as a failed write.
  let dir = -1;
  try {
    dir = openSync(dirname(path), constants.O_RDONLY | constants.O_DIRECTORY);
    fsyncSync(dir);
  } catch {
    /* see above */
  } finally {
    if (dir >= 0) closeSync(dir);
  }
}

/** Removes `PATH.tmp-PID` files whose PID is not a running process (a writer killed between open and rename). */
function removeLeftovers(path: string): string[] {
  const dir = dirname(path);
  const prefix = `${basename(path)}.tmp-`;
  const removed: string[] = [];
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return removed;
  }
  for (const n of names) {
    if (!n.startsWith(prefix) || !/^\d+$/.test(n.slice(prefix.length))) continue;
    const pid = Number(n.slice(prefix.length));
    if (processRunning(pid)) continue; // a live process: perhaps another fpo run writing this very file (this one's own are removed)
    try {
      unlinkSync(join(dir, n));
      removed.push(n);
    } catch {
      /* gone meanwhile */
    }
  }
  return removed;
}

/**
 * The service's state file: what was last written, so that writing the same
 * state again (at stop) costs nothing and cannot fail — as long as the file
 * on disk is still the one written (same inode, size and mtime); one removed
 * or replaced meanwhile is written again.
 */
export class StateStore {
  private written: { text: string; ino: number; size: number; mtimeMs: number } | undefined;
  private locked = false;

  constructor(readonly path: string) {}

  /** The lock file beside the state: `PATH.lock`, holding the PID of the fpo run that uses the state. */
  get lockPath(): string {
    return `${this.path}.lock`;
  }

  /**
   * Takes the state for this process, before it is read: two services on one
   * state file would each overwrite the other's changes (and their captures).
   * The lock is a file made with O_EXCL holding this PID; one whose PID no
   * longer runs an fpo service (a killed service's) is taken over. Throws
   * FpoError (FPO_ERR_BAD_STATE) naming the PID that holds it.
   */
  lock(): void {
    for (let attempt = 0; attempt < 2; attempt++) {
      let fd: number;
      try {
        fd = openSync(this.lockPath, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o644);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw refuse(this.path, '(lock)', `cannot make ${this.lockPath}: ${(e as Error).message}`);
        const holder = lockHolder(this.lockPath);
        if (holder !== null) throw refuse(this.path, '(lock)', `in use by another fpo run (pid ${holder}, ${this.lockPath}); stop it, or give this service another --out or --state`);
        try { unlinkSync(this.lockPath); } catch { /* taken over meanwhile: the next attempt says */ }
        continue;
      }
      try {
        writeSync(fd, `${process.pid}\n`);
      } finally {
        closeSync(fd);
      }
      this.locked = true;
      return;
    }
    throw refuse(this.path, '(lock)', `${this.lockPath} is being taken by another process; try again`);
  }

  /** Gives the lock back (only if it is still this process's). */
  unlock(): void {
    if (!this.locked) return;
    this.locked = false;
    try {
      if (lockHolder(this.lockPath) === process.pid) unlinkSync(this.lockPath);
    } catch {
      /* gone already */
    }
  }

  /**
   * Reads, checks and applies the file to the topology (see loadState), and
   * removes temp files that a writer killed mid-write left beside it
   * (`NAME.tmp-PID` of a PID that no longer runs); returns their names too.
   */
  load(topo: Topology, maxVpid: number): StatePlan | undefined {
    const plan = loadState(this.path, topo, maxVpid);
    this.leftovers = removeLeftovers(this.path);
    return plan;
  }

  /** Temp files of dead writers removed by load(). */
  leftovers: string[] = [];

  /** Persists `s` (temp, fsync, rename, fsync); nothing when it is what was last written. Throws FpoError with the file unchanged. */
  save(s: State): void {
    const text = encodeState(s);
    if (this.written?.text === text && this.onDisk(this.written)) return;
    this.written = undefined;
    writeFileAtomic(this.path, text);
    try {
      const st = statSync(this.path);
      this.written = { text, ino: st.ino, size: st.size, mtimeMs: st.mtimeMs };
    } catch {
      /* gone already: the next save writes again */
    }
  }

  private onDisk(w: { ino: number; size: number; mtimeMs: number }): boolean {
    try {
      const st = statSync(this.path);
      return st.ino === w.ino && st.size === w.size && st.mtimeMs === w.mtimeMs;
    } catch {
      return false;
    }
  }
}

/**
 * The PID in a lock file if that process still runs an fpo service (its
 * command line has `run`), else null: a stale lock, its process gone or the
 * PID reused by another program. An unreadable or malformed lock is stale.
 */
function lockHolder(lockPath: string): number | null {
  let text: string;
  try {
    text = readFileSync(lockPath, 'utf8');
  } catch {
    return null;
  }
  if (!/^\d{1,10}\n?$/.test(text)) return null;
  const pid = Number(text.trim());
  if (pid < 1) return null;
  if (pid === process.pid) return pid;
  let cmdline: string;
  try {
    cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
  } catch {
    return null; // not running
  }
  const argv = cmdline.split('\0');
  return argv.includes('run') ? pid : null;
}
