/**
 * The state file of fpo run (control/state.ts): checked whole against the
 * topology before any of it is used, refused with file, field and remedy;
 * written temp + fsync + rename + fsync of the folder; and the requests that
 * change it (migrate, set-mapping) persisted and applied as one step, or not
 * at all.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { req } from './run-service.js';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { MAX_STATE_BYTES, checkState, encodeState, loadState, readStateText, stateOf, writeFileAtomic } from '../../control/state.js';
import { loadTopology } from '../../control/topology.js';
import { FpoError } from '../../datapath/errors.js';
import { CLI, FIXTURES, cleanTemp, needTool, runCli, tempDir } from '../helpers.js';

const TOPO = join(FIXTURES, 'topology.json');
const MAX_VPID = 65535;
const running: ChildProcess[] = [];
/** Processes started under another (strace's child): killed by pid at the end. */
const pids: number[] = [];
afterAll(() => {
  for (const p of running) p.kill('SIGKILL');
  for (const p of pids) try { process.kill(p, 'SIGKILL'); } catch { /* gone */ }
  cleanTemp();
});

/** The bundled topology's state as fpo writes it at first start. */
const fresh = () => ({
  version: 1,
  vpids: { 'vm1-eth0': 1, 'vm2-eth0': 2, 'vm3-eth0': 3, 'vm4-eth0': 4, 'vm5-eth0': 5, uplink0: 6 } as Record<string, unknown>,
  ports: { 'vm1-eth0': 'vf1', 'vm2-eth0': 'vf2', 'vm3-eth0': 'vf3', 'vm4-eth0': 'vf4', 'vm5-eth0': null } as Record<string, unknown>,
} as Record<string, any>);

/** What a topology holds that a state file sets: every endpoint's VPID and every interface's port. */
const snapshot = (t: ReturnType<typeof loadTopology>) => JSON.stringify({ i: t.interfaces.map((i) => [i.name, i.vpid, i.port ?? null]), u: t.ports.map((p) => [p.name, p.vpid]) });

/** Loads `text` as the state file of the bundled topology: the error's message, or the topology it gave. */
function tryLoad(text: string | Buffer): { error?: FpoError; topo: ReturnType<typeof loadTopology> } {
  const dir = tempDir('state');
  const file = join(dir, 'fpo-state.json');
  writeFileSync(file, text);
  const topo = loadTopology(TOPO);
  const before = snapshot(topo);
  try {
    loadState(file, topo, MAX_VPID);
    return { topo };
  } catch (e) {
    expect(e).toBeInstanceOf(FpoError);
    // Refused: the topology is as loaded, not half-given the file's state.
    expect(snapshot(topo)).toBe(before);
    return { error: e as FpoError, topo };
  }
}

function refused(state: unknown): string {
  const r = tryLoad(typeof state === 'string' ? state : JSON.stringify(state));
  expect(r.error, 'expected the state file to be refused').toBeDefined();
  expect(r.error!.code).toBe('FPO_ERR_BAD_STATE');
  const msg = r.error!.message;
  // Every refusal names the file and says what to do about it.
  expect(msg).toMatch(/^\/.*fpo-state\.json: /);
  expect(msg).toMatch(/move it away to start from the topology's VPIDs and ports$/);
  return msg.replace(/^\S*fpo-state\.json: /, '').replace(/; the state file cannot be used as it is: .*$/, '');
}

describe('state file: checked whole before any of it is used', () => {
  it('a VPID that is not an integer 1..65535 is refused with its field (it made fpo run spin before)', () => {
    const at = (v: unknown) => refused({ ...fresh(), vpids: { ...fresh().vpids, 'vm1-eth0': v } });
    expect(at('x')).toBe('vpids["vm1-eth0"]: expected an integer in 1..65535, got "x"');
    expect(at('5')).toBe('vpids["vm1-eth0"]: expected an integer in 1..65535, got "5"');
    expect(at(0)).toBe('vpids["vm1-eth0"]: expected an integer in 1..65535, got 0');
    expect(at(65536)).toBe('vpids["vm1-eth0"]: expected an integer in 1..65535, got 65536');
    expect(at(1.5)).toBe('vpids["vm1-eth0"]: expected an integer in 1..65535, got 1.5');
    expect(at(null)).toBe('vpids["vm1-eth0"]: expected an integer in 1..65535, got null');
    expect(at([1])).toBe('vpids["vm1-eth0"]: expected an integer in 1..65535, got array');
    expect(refused(JSON.stringify(fresh()).replace('"vm1-eth0":1', '"vm1-eth0":1e400'))).toBe('vpids["vm1-eth0"]: expected an integer in 1..65535, got number');
  });

  it('null or missing sections, another version, unknown keys and non-objects are refused with the field', () => {
    expect(refused({ ...fresh(), vpids: null })).toBe('vpids: expected an object of endpoint names to VPIDs, received null');
    expect(refused({ ...fresh(), ports: null })).toBe('ports: expected an object of interface names to port names (or null), received null');
    expect(refused({ version: 1, ports: {} })).toBe('vpids: expected an object of endpoint names to VPIDs, received undefined');
    expect(refused({ ...fresh(), version: 2 })).toBe('version: expected 1 (this fpo reads state files of version 1), received 2');
    expect(refused({ ...fresh(), extra: 1 })).toBe('(top level): Unrecognized key: "extra"');
    expect(refused([])).toMatch(/^\(top level\): Invalid input: expected object, received array/);
    expect(refused('null')).toMatch(/^\(top level\): Invalid input: expected object, received null/);
    expect(refused({ ...fresh(), vpids: { ...fresh().vpids, 'a/../b': 7 } })).toBe('vpids["a/../b"]: expected a name of letters, digits, ".", "_", "-" (at most 64) as the key');
    expect(refused({ ...fresh(), ports: { ...fresh().ports, 'vm1-eth0': 7 } })).toBe('ports["vm1-eth0"]: expected a port name, or null for an interface not on this host, received number');
  });

  it('a VPID given twice is refused (it was taken silently)', () => {
    expect(refused({ ...fresh(), vpids: { ...fresh().vpids, 'vm2-eth0': 1 } })).toBe('vpids["vm2-eth0"]: VPID 1 is already "vm1-eth0"\'s');
    // Also against a name the topology no longer has: fpo never writes a VPID twice.
    expect(refused({ ...fresh(), vpids: { old: 3, ...fresh().vpids } })).toBe('vpids["vm3-eth0"]: VPID 3 is already "old"\'s');
  });

  it('a port the topology does not have, an uplink, or one port for two interfaces is refused (a missing port silently detached the interface)', () => {
    expect(refused({ ...fresh(), ports: { ...fresh().ports, 'vm1-eth0': 'vf9' } })).toBe(`ports["vm1-eth0"]: no port named "vf9" in ${TOPO}`);
    expect(refused({ ...fresh(), ports: { ...fresh().ports, 'vm1-eth0': 'uplink0' } })).toBe('ports["vm1-eth0"]: port "uplink0" is an uplink; interfaces attach to VM ports');
    expect(refused({ ...fresh(), ports: { ...fresh().ports, uplink0: 'vf5' } })).toBe('ports["uplink0"]: "uplink0" is an uplink; only interfaces are listed here');
    expect(refused({ ...fresh(), ports: { ...fresh().ports, 'vm1-eth0': 'vf2' } })).toBe('ports["vm2-eth0"]: port "vf2" would carry both "vm1-eth0" and "vm2-eth0"');
    // The file leaves vm2-eth0 out: its port comes from the topology, and collides.
    const { 'vm2-eth0': _, ...rest } = fresh().ports;
    expect(refused({ ...fresh(), ports: { ...rest, 'vm1-eth0': 'vf2' } })).toBe('ports["vm1-eth0"]: port "vf2" would carry both "vm1-eth0" and "vm2-eth0" (one of them from the topology)');
  });

  it('an empty file, a torn one, bytes that are not UTF-8 or JSON are refused and say what to do (empty stopped the start with only a JSON parser message)', () => {
    expect(refused('')).toBe('(file): empty (0 bytes)');
    const whole = encodeState(stateOf(loadTopology(TOPO)));
    expect(refused(whole.slice(0, 40))).toMatch(/^\(file\): not JSON: /);
    const r = tryLoad(Buffer.from([0x7b, 0xff, 0xfe, 0x7d]));
    expect(r.error!.message).toMatch(/fpo-state\.json: \(file\): not UTF-8 text; /);
  });

  it('a FIFO, a folder or a file over the size bound is refused without blocking or reading it', () => {
    const dir = tempDir('state');
    const topo = loadTopology(TOPO);
    const fifo = join(dir, 'fifo.json');
    execFileSync('mkfifo', [fifo]);
    expect(() => readStateText(fifo)).toThrow(/fifo\.json: \(file\): not a regular file; /);
    expect(() => readStateText(dir)).toThrow(/: \(file\): not a regular file; /);
    const big = join(dir, 'big.json');
    writeFileSync(big, '');
    truncateSync(big, MAX_STATE_BYTES + 1);
    expect(() => loadState(big, topo, MAX_VPID)).toThrow(`big.json: (file): ${MAX_STATE_BYTES + 1} bytes, more than a state file can be (${MAX_STATE_BYTES})`);
    expect(readStateText(join(dir, 'absent.json'))).toBeUndefined();
  });

  it('a good file is used whole: its VPIDs and ports, names the topology no longer has forgotten, new names given free VPIDs after the highest', () => {
    const s = fresh();
    s.vpids = { 'vm1-eth0': 42, 'vm2-eth0': 2, gone: 50, toString: 51, uplink0: 6 };
    s.ports = { 'vm1-eth0': 'vf5', 'vm2-eth0': null, gone: 'vf1', constructor: 'vf1' };
    const topo = loadTopology(TOPO);
    const plan = checkState(JSON.stringify(s), 'st.json', topo, MAX_VPID);
    expect(plan.forgotten.sort()).toEqual(['constructor', 'gone', 'toString']);
    // vm3..vm5 are not in the file: the next free VPIDs after the highest one kept (42), in topology order.
    expect(plan.added).toEqual(['vm3-eth0', 'vm4-eth0', 'vm5-eth0']);
    expect(snapshot(topo)).toBe(snapshot(loadTopology(TOPO)));
    loadState(writeTemp(JSON.stringify(s)), topo, MAX_VPID);
    expect(topo.interfaces.map((i) => [i.name, i.vpid, i.port ?? null])).toEqual([
      ['vm1-eth0', 42, 'vf5'], ['vm2-eth0', 2, null], ['vm3-eth0', 43, 'vf3'], ['vm4-eth0', 44, 'vf4'], ['vm5-eth0', 45, null],
    ]);
    expect(topo.ports.find((p) => p.name === 'uplink0')!.vpid).toBe(6);
  });
});

function writeTemp(text: string): string {
  const f = join(tempDir('state'), 'fpo-state.json');
  writeFileSync(f, text);
  return f;
}

describe('fpo run with a state file that cannot be used', () => {
  it('exits 1 at once naming file and field, and leaves the file as it was: not a number (spun at 100 % CPU), null sections (exit 70), empty', () => {
    const cases: [string, RegExp][] = [
      // As found: the other endpoints not named, so fpo looked for free VPIDs after "x".
      [JSON.stringify({ version: 1, vpids: { 'vm1-eth0': 'x' }, ports: {} }), /fpo-state\.json: vpids\["vm1-eth0"\]: expected an integer in 1\.\.65535, got "x"; /],
      [JSON.stringify({ version: 1, vpids: null, ports: null }), /fpo-state\.json: vpids: expected an object of endpoint names to VPIDs, received null; /],
      ['', /fpo-state\.json: \(file\): empty \(0 bytes\); /],
    ];
    let seen = 0;
    for (const [text, want] of cases) {
      const out = tempDir('run-state');
      writeFileSync(join(out, 'fpo-state.json'), text);
      const t0 = Date.now();
      const r = runCli(['run', '-t', TOPO, '-s', join(out, 's.sock'), '-o', out], { timeout: 15_000 });
      expect(r.stderr).toMatch(want);
      expect(r.stderr).toMatch(/move it away to start from the topology's VPIDs and ports\n$/);
      expect(r.status).toBe(1);
      expect(Date.now() - t0).toBeLessThan(10_000);
      expect(readFileSync(join(out, 'fpo-state.json'), 'utf8')).toBe(text);
      expect(existsSync(join(out, 's.sock'))).toBe(false);
      seen++;
    }
    expect(seen).toBe(3);
  }, 60_000);
});

describe('state file: written atomically', () => {
  it('temp file, fsync, rename over, fsync of the folder, in that order (strace of fpo run)', async (ctx) => {
    needTool(ctx, 'strace', 'traces the system calls of the state write');
    needTool(ctx, 'pgrep', 'finds fpo run under strace');
    const out = tempDir('strace');
    const log = join(out, 'strace.log');
    const sock = join(out, 's.sock');
    const p = spawn('strace', ['-f', '-qq', '-e', 'trace=openat,fsync,fdatasync,rename,renameat,renameat2,close', '-o', log, process.execPath, CLI, 'run', '-t', TOPO, '-s', sock, '-o', out], { stdio: 'ignore' });
    running.push(p);
    for (let i = 0; i < 200 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
    // SIGTERM to fpo itself (strace's child), not to strace.
    const child = Number(execFileSync('pgrep', ['-P', String(p.pid)], { encoding: 'utf8' }).trim());
    expect(child).toBeGreaterThan(1);
    pids.push(child);
    expect(existsSync(sock)).toBe(true);
    await new Promise((r) => { p.on('exit', r); process.kill(child, 'SIGTERM'); });
    const state = join(out, 'fpo-state.json');
    const lines = readFileSync(log, 'utf8').split('\n').map((l) => l.replace(/^\d+\s+/, ''));
    const tmpOpen = lines.findIndex((l) => l.startsWith('openat(') && l.includes(`${state}.tmp-`) && /O_CREAT/.test(l));
    expect(tmpOpen).toBeGreaterThanOrEqual(0);
    const fd = /= (\d+)$/.exec(lines[tmpOpen])![1];
    const sync = lines.findIndex((l, i) => i > tmpOpen && (l.startsWith(`fsync(${fd})`) || l.startsWith(`fdatasync(${fd})`)));
    const rename = lines.findIndex((l, i) => i > sync && /^rename(at2?)?\(/.test(l) && l.includes(`${state}"`));
    const dirOpen = lines.findIndex((l, i) => i > rename && l.startsWith('openat(') && l.includes(`"${out}"`) && l.includes('O_DIRECTORY'));
    expect(sync).toBeGreaterThan(tmpOpen);
    expect(rename).toBeGreaterThan(sync);
    expect(dirOpen).toBeGreaterThan(rename);
    const dirFd = /= (\d+)$/.exec(lines[dirOpen])![1];
    expect(lines.findIndex((l, i) => i > dirOpen && l.startsWith(`fsync(${dirFd})`))).toBeGreaterThan(dirOpen);
    expect(JSON.parse(readFileSync(state, 'utf8')).vpids['vm1-eth0']).toBe(1);
  }, 60_000);

  it('temp files of a writer killed mid-write are removed at start; those of a live process, and other names, are left', async () => {
    const out = tempDir('leftover');
    const state = join(out, 'fpo-state.json');
    const live = spawn('sleep', ['30']);
    running.push(live);
    // 4194305 is above the largest pid Linux gives (pid_max <= 2^22): no process has it.
    for (const n of ['tmp-4194305', `tmp-${live.pid}`, 'tmp-x1', 'tmpold']) writeFileSync(`${state}.${n}`, '{"version":1,"vp');
    const proc = spawn(process.execPath, [CLI, 'run', '-t', TOPO, '-s', join(out, 's.sock'), '-o', out], { stdio: ['ignore', 'ignore', 'pipe'] });
    running.push(proc);
    let stderr = '';
    proc.stderr!.on('data', (d) => (stderr += d));
    for (let i = 0; i < 200 && !existsSync(join(out, 's.sock')); i++) await new Promise((r) => setTimeout(r, 50));
    expect(existsSync(join(out, 's.sock'))).toBe(true);
    await new Promise((r) => { proc.on('exit', r); proc.kill('SIGTERM'); });
    expect(readdirSync(out).filter((n) => n.startsWith('fpo-state.json')).sort()).toEqual(['fpo-state.json', `fpo-state.json.tmp-${live.pid}`, 'fpo-state.json.tmp-x1', 'fpo-state.json.tmpold'].sort());
    expect(JSON.parse(stderr.split('\n').find((l) => l.includes('temp files'))!)).toMatchObject({ removed: ['fpo-state.json.tmp-4194305'] });
    live.kill('SIGKILL');
  }, 60_000);

  it('a write that fails leaves the old file whole and no temp file, and says why', () => {
    const dir = tempDir('atomic');
    const file = join(dir, 'fpo-state.json');
    writeFileSync(file, 'old\n');
    mkdirSync(`${file}.tmp-${process.pid}`); // the temp name taken by a folder: the open fails
    expect(() => writeFileAtomic(file, 'new\n')).toThrow(/fpo-state\.json: cannot write the state: EISDIR/);
    expect(readFileSync(file, 'utf8')).toBe('old\n');
    rmSync(`${file}.tmp-${process.pid}`, { recursive: true });
    expect(() => writeFileAtomic(join(dir, 'gone', 'fpo-state.json'), 'new\n')).toThrow(/gone\/fpo-state\.json: cannot write the state: ENOENT/);
    writeFileAtomic(file, 'new\n');
    expect(readFileSync(file, 'utf8')).toBe('new\n');
    expect(readdirSync(dir)).toEqual(['fpo-state.json']);
  });
});

// ---------------------------------------------------------------------------
// The service: a request that fails changes nothing.

interface Svc { proc: ChildProcess; socket: string; state: string; stop: () => Promise<number> }

async function start(out: string, state: string): Promise<Svc> {
  const socket = join(out, 'ctl.sock');
  const proc = spawn(process.execPath, [CLI, 'run', '-t', TOPO, '-s', socket, '-o', out, '--state', state], { stdio: ['ignore', 'ignore', 'pipe'] });
  running.push(proc);
  for (let i = 0; i < 200 && !existsSync(socket); i++) await new Promise((r) => setTimeout(r, 50));
  expect(existsSync(socket)).toBe(true);
  return { proc, socket, state, stop: () => new Promise((resolve) => { proc.on('exit', (c) => resolve(c ?? -1)); proc.kill('SIGTERM'); }) };
}

/** What the service holds that a request may change: VPIDs, mappings, rules (show), and the state file's bytes. */
async function dump(s: Svc): Promise<{ show: string; file: string | null; held: Record<string, unknown> }> {
  const show = (await req(s.socket, 'show')).result;
  const file = existsSync(s.state) ? readFileSync(s.state, 'utf8') : null;
  const held = { vpids: Object.fromEntries([...show.interfaces.map((i: any) => [i.name, i.vpid]), ...show.ports.filter((p: any) => p.role === 'uplink').map((p: any) => [p.name, p.vpid])]), ports: Object.fromEntries(show.interfaces.map((i: any) => [i.name, i.port])) };
  return { show: JSON.stringify({ p: show.ports, i: show.interfaces, r: show.rules }), file, held };
}

describe('fpo run: a request that fails changes nothing', () => {
  it('migrate and set-mapping with the state folder gone are refused and move nothing (migrate moved the interface anyway)', async () => {
    const out = tempDir('gone');
    const stateDir = tempDir('gone-state');
    const s = await start(out, join(stateDir, 'fpo-state.json'));
    const before = await dump(s);
    rmSync(stateDir, { recursive: true });
    const m = await req(s.socket, 'migrate', { interface: 'vm1-eth0', to: 'vf5' });
    expect(m.ok).toBe(false);
    expect((await dump(s)).show).toBe(before.show);
    expect(m.error.message).toMatch(/fpo-state\.json: cannot write the state: ENOENT/);
    const m2 = await req(s.socket, 'migrate', { interface: 'vm1-eth0', to: 'vf5', newVpid: 40 });
    expect(m2.ok).toBe(false);
    const sm = await req(s.socket, 'set-mapping', { vpid: 1, ppid: 15 });
    expect(sm.ok).toBe(false);
    expect(sm.error.message).toMatch(/cannot write the state: ENOENT/);
    const away = await req(s.socket, 'migrate', { interface: 'vm2-eth0', away: true });
    expect(away.ok).toBe(false);
    expect((await dump(s)).show).toBe(before.show);
    // The folder back: the same requests go through, and the file says what the service holds.
    mkdirSync(stateDir);
    expect((await req(s.socket, 'migrate', { interface: 'vm1-eth0', to: 'vf5', newVpid: 40 })).ok).toBe(true);
    const after = await dump(s);
    expect(after.held).toMatchObject({ vpids: { 'vm1-eth0': 40 }, ports: { 'vm1-eth0': 'vf5' } });
    expect(JSON.parse(after.file!)).toEqual({ version: 1, ...after.held });
    expect(await s.stop()).toBe(0);
  }, 60_000);

  it('set-mapping refuses an uplink\'s VPID and an uplink port (an interface on an uplink port made a state file that cannot be used)', async () => {
    const out = tempDir('uplink');
    const s = await start(out, join(out, 'fpo-state.json'));
    const before = await dump(s);
    const a = await req(s.socket, 'set-mapping', { vpid: 6, ppid: 15 });
    expect(a.error.message).toBe('vpid: 6 is uplink "uplink0"\'s; set-mapping moves interfaces');
    const b = await req(s.socket, 'set-mapping', { vpid: 5, ppid: 1 });
    expect(b.error.message).toBe('ppid: port 1 (uplink0) is an uplink; interfaces attach to VM ports');
    expect(await dump(s)).toEqual(before);
    expect(await s.stop()).toBe(0);
    // And the service starts again from the file it left.
    const again = await start(out, join(out, 'fpo-state.json'));
    expect((await dump(again)).held).toEqual(before.held);
    expect(await again.stop()).toBe(0);
  }, 60_000);

  it('set-mapping and migrate with a VPID or PPID out of range say the range (a huge ppid said only "not a port")', async () => {
    const out = tempDir('range');
    const s = await start(out, join(out, 'fpo-state.json'));
    const msg = async (args: Record<string, unknown>) => (await req(s.socket, 'set-mapping', args)).error.message;
    expect(await msg({ vpid: 1, ppid: 99999 })).toBe('ppid: expected an integer in 0..4095, got 99999');
    expect(await msg({ vpid: 1, ppid: 1e300 })).toBe('ppid: expected an integer in 0..4095, got 1e+300');
    expect(await msg({ vpid: 1, ppid: -1 })).toBe('ppid: expected an integer in 0..4095, got -1');
    expect(await msg({ vpid: 1, ppid: '12' })).toBe('ppid: expected an integer in 0..4095, got string');
    expect(await msg({ vpid: 70000, ppid: 12 })).toBe('vpid: expected an integer in 1..65535, got 70000');
    const mig = async (args: Record<string, unknown>) => (await req(s.socket, 'migrate', { interface: 'vm1-eth0', to: 'vf5', ...args })).error.message;
    expect(await mig({ newVpid: 70000 })).toBe('newVpid: expected an integer in 1..65535, got 70000');
    expect(await mig({ newVpid: JSON.parse('1e400') })).toBe('newVpid: expected an integer in 1..65535, got null'); // JSON has no Infinity: it travels as null
    expect(await mig({ newVpid: 6 })).toBe('new-vpid: 6 is in use (uplink "uplink0")');
    expect(await mig({ newVpid: 2 })).toBe('new-vpid: 2 is in use (interface "vm2-eth0")');
    const r = runCli(['ctl', '-s', s.socket, 'set-mapping', '1', '1e12']);
    expect(r.stderr).toBe('fpo: set-mapping: ppid: expected an integer in 0..4095, got 1000000000000\n');
    expect(await s.stop()).toBe(0);
  }, 60_000);
});


// ---------------------------------------------------------------------------
// Fuzz (fast-check): state files and requests.

const TOPO_ITFS = ['vm1-eth0', 'vm2-eth0', 'vm3-eth0', 'vm4-eth0', 'vm5-eth0'];
const TOPO_PORTS: Record<string, string | null> = { 'vm1-eth0': 'vf1', 'vm2-eth0': 'vf2', 'vm3-eth0': 'vf3', 'vm4-eth0': 'vf4', 'vm5-eth0': null };
const VM_PORTS = ['vf1', 'vf2', 'vf3', 'vf4', 'vf5'];
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * What the state file should give, worked out apart from control/state.ts:
 * null when it must be refused, else every endpoint's VPID and every
 * interface's port as fpo run must start with them.
 */
function oracle(json: unknown): { vpids: Record<string, number>; ports: Record<string, string | null> } | null {
  if (!isObj(json)) return null;
  const keys = Object.keys(json);
  if (keys.length !== 3 || !['version', 'vpids', 'ports'].every((k) => Object.hasOwn(json, k))) return null;
  if (json.version !== 1 || !isObj(json.vpids) || !isObj(json.ports)) return null;
  const vp = Object.entries(json.vpids);
  const pp = Object.entries(json.ports);
  for (const [k, v] of vp) if (!NAME_RE.test(k) || typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > MAX_VPID) return null;
  for (const [k, v] of pp) if (!NAME_RE.test(k) || (v !== null && (typeof v !== 'string' || !NAME_RE.test(v)))) return null;
  if (new Set(vp.map(([, v]) => v)).size !== vp.length) return null;
  const ports: Record<string, string | null> = { ...TOPO_PORTS };
  for (const [k, v] of pp) {
    if (k === 'uplink0') return null;
    if (!TOPO_ITFS.includes(k)) continue;
    if (v !== null && !VM_PORTS.includes(v as string)) return null;
    ports[k] = v as string | null;
  }
  const taken = Object.values(ports).filter((p) => p !== null);
  if (new Set(taken).size !== taken.length) return null;
  const kept = vp.filter(([k]) => TOPO_ITFS.includes(k) || k === 'uplink0');
  let next = Math.max(0, ...kept.map(([, v]) => v as number)) + 1;
  const given = new Map(kept as [string, number][]);
  const vpids: Record<string, number> = {};
  for (const n of [...TOPO_ITFS, 'uplink0']) vpids[n] = given.get(n) ?? next++;
  return { vpids, ports };
}

/** A state file's text from entries (so that "__proto__" is a key like any other). */
const objText = (entries: [string, unknown][]) => `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`).join(',')}}`;
const FUZZ_NAMES = [...TOPO_ITFS, 'uplink0', 'gone', 'toString', 'constructor', '__proto__', 'hasOwnProperty', 'vf1', ''];
const anyValue = fc.oneof(fc.jsonValue({ maxDepth: 2 }), fc.integer({ min: -2, max: 8 }), fc.constantFrom(0, 6, 42, 65535, 65536, 1e400, 1.5, '3', null));
const portValue = fc.oneof(fc.constantFrom(...VM_PORTS, 'uplink0', 'vf9', null, '', 'VF1'), fc.jsonValue({ maxDepth: 1 }));
type Op = { op: 'vpid'; name: string; value: unknown } | { op: 'del-vpid'; name: string } | { op: 'port'; name: string; value: unknown } | { op: 'del-port'; name: string }
  | { op: 'version'; value: unknown } | { op: 'extra'; value: unknown } | { op: 'section'; which: 'vpids' | 'ports'; value: unknown } | { op: 'drop'; which: 'vpids' | 'ports' | 'version' } | { op: 'tear'; at: number };
const name = fc.oneof(fc.constantFrom(...FUZZ_NAMES), fc.string({ maxLength: 8 }));
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ op: fc.constant('vpid' as const), name, value: anyValue }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('del-vpid' as const), name: fc.constantFrom(...FUZZ_NAMES) }) },
  { weight: 4, arbitrary: fc.record({ op: fc.constant('port' as const), name, value: portValue }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('del-port' as const), name: fc.constantFrom(...FUZZ_NAMES) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('version' as const), value: fc.oneof(fc.constantFrom(1, 2, 0, '1', null), fc.jsonValue({ maxDepth: 1 })) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('extra' as const), value: fc.jsonValue({ maxDepth: 1 }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('section' as const), which: fc.constantFrom('vpids' as const, 'ports' as const), value: fc.oneof(fc.constantFrom(null, [], {}, 1, 'x'), fc.jsonValue({ maxDepth: 2 })) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('drop' as const), which: fc.constantFrom('vpids' as const, 'ports' as const, 'version' as const) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('tear' as const), at: fc.nat() }) },
);

/** A real state file (fpo's own, or one after migrations), changed by `ops`: the text. */
function mutate(base: 0 | 1, ops: Op[]): string {
  const vpids = new Map<string, unknown>(Object.entries(fresh().vpids));
  const ports = new Map<string, unknown>(Object.entries(fresh().ports));
  if (base === 1) { vpids.set('vm1-eth0', 42); ports.set('vm1-eth0', 'vf5'); ports.set('vm2-eth0', null); }
  const top = new Map<string, unknown>([['version', 1], ['vpids', vpids], ['ports', ports]]);
  let tear = -1;
  for (const o of ops) {
    const v = top.get('vpids');
    const p = top.get('ports');
    if (o.op === 'vpid' && v instanceof Map) v.set(o.name, o.value);
    if (o.op === 'del-vpid' && v instanceof Map) v.delete(o.name);
    if (o.op === 'port' && p instanceof Map) p.set(o.name, o.value);
    if (o.op === 'del-port' && p instanceof Map) p.delete(o.name);
    if (o.op === 'version') top.set('version', o.value);
    if (o.op === 'extra') top.set('extra', o.value);
    if (o.op === 'section') top.set(o.which, o.value);
    if (o.op === 'drop') top.delete(o.which);
    if (o.op === 'tear') tear = o.at;
  }
  // Written as text, not through an object: a "__proto__" key stays a key.
  const exact = `{${[...top].map(([k, x]) => `${JSON.stringify(k)}:${x instanceof Map ? objText([...x]) : JSON.stringify(x)}`).join(',')}}`;
  return tear >= 0 ? exact.slice(0, tear % (exact.length + 1)) : exact;
}

/** The verdict of the text as the oracle sees it (JSON.parse keeps "__proto__" as an own key). */
function expectFrom(text: string | Uint8Array): ReturnType<typeof oracle> {
  let s: string;
  try {
    s = typeof text === 'string' ? text : new TextDecoder('utf-8', { fatal: true }).decode(text);
  } catch {
    return null;
  }
  if (s.length === 0) return null;
  try {
    return oracle(JSON.parse(s));
  } catch {
    return null;
  }
}

/** Loads a state file's bytes into the bundled topology and checks the outcome against the oracle. */
function checkOne(text: string | Uint8Array): void {
  const want = expectFrom(text);
  const r = tryLoad(typeof text === 'string' ? text : Buffer.from(text));
  if (want === null) {
    expect(r.error, `expected a refusal of ${JSON.stringify(String(text).slice(0, 200))}`).toBeDefined();
    expect(r.error!.code).toBe('FPO_ERR_BAD_STATE');
    expect(r.error!.message).toMatch(/^\/\S*fpo-state\.json: .+; the state file cannot be used as it is: correct it, or move it away to start from the topology's VPIDs and ports$/s);
    return;
  }
  expect(r.error, `expected ${JSON.stringify(String(text).slice(0, 200))} to load`).toBeUndefined();
  const got = { vpids: Object.fromEntries([...r.topo.interfaces.map((i) => [i.name, i.vpid]), ['uplink0', r.topo.ports.find((p) => p.name === 'uplink0')!.vpid]]), ports: Object.fromEntries(r.topo.interfaces.map((i) => [i.name, i.port ?? null])) };
  expect(got).toEqual(want);
}

describe('state file fuzz: random JSON, random bytes, near-valid mutations of a real state file', () => {
  it('the loader gives exactly the state the file holds, or refuses it naming the file, never half-applied', () => {
    let valid = 0;
    let refusedN = 0;
    const count = (t: string | Uint8Array) => { if (expectFrom(t) === null) refusedN++; else valid++; };
    fc.assert(fc.property(fc.constantFrom<0 | 1>(0, 1), fc.array(opArb, { minLength: 0, maxLength: 4 }), (base, ops) => {
      const t = mutate(base, ops);
      count(t);
      checkOne(t);
    }), { numRuns: 600, seed: 17 });
    fc.assert(fc.property(fc.jsonValue(), (v) => { const t = JSON.stringify(v) ?? ''; count(t); checkOne(t); }), { numRuns: 200, seed: 17 });
    fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), (b) => { count(b); checkOne(b); }), { numRuns: 200, seed: 17 });
    console.log(`state fuzz: ${valid} loaded, ${refusedN} refused`);
    // Both outcomes were exercised, the loading one often enough to mean something.
    expect(valid + refusedN).toBe(1000);
    expect(valid).toBeGreaterThan(100);
    expect(refusedN).toBeGreaterThan(500);
  }, 120_000);

  it('fpo run itself, on a sample: starts with exactly that state, or exits 1 at once naming the file, never spins or exits 70', async () => {
    const samples = fc.sample(fc.tuple(fc.constantFrom<0 | 1>(0, 1), fc.array(opArb, { minLength: 0, maxLength: 3 })), { numRuns: 14, seed: 1717 }).map(([b, ops]) => mutate(b, ops));
    samples.push(mutate(1, []), mutate(0, [{ op: 'vpid', name: 'gone', value: 9 }, { op: 'del-vpid', name: 'vm3-eth0' }]), mutate(0, [{ op: 'tear', at: 30 }]), '');
    let started = 0;
    let refusals = 0;
    for (const text of samples) {
      const want = expectFrom(text);
      const out = tempDir('fuzz-run');
      const state = join(out, 'fpo-state.json');
      writeFileSync(state, text);
      const socket = join(out, 's.sock');
      const proc = spawn(process.execPath, [CLI, 'run', '-t', TOPO, '-s', socket, '-o', out], { stdio: ['ignore', 'pipe', 'pipe'] });
      running.push(proc);
      let stderr = '';
      proc.stderr!.on('data', (d) => (stderr += d));
      const exit = new Promise<number | null>((resolve) => proc.on('exit', (c) => resolve(c)));
      const t0 = Date.now();
      while (Date.now() - t0 < 10_000 && proc.exitCode === null && !existsSync(socket)) await new Promise((r) => setTimeout(r, 25));
      if (want === null) {
        const code = await Promise.race([exit, new Promise<string>((r) => setTimeout(() => r('still running'), 10_000))]);
        expect(code, `fpo run on ${JSON.stringify(text.slice(0, 200))}: ${stderr}`).toBe(1);
        expect(stderr).toMatch(new RegExp(`^fpo: ${state.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: .*move it away to start from the topology's VPIDs and ports\\n$`, 's'));
        expect(readFileSync(state, 'utf8')).toBe(text);
        refusals++;
      } else {
        expect(existsSync(socket), `fpo run on ${JSON.stringify(text.slice(0, 200))} did not start: ${stderr}`).toBe(true);
        const held = (await dumpOf(socket, state)).held;
        expect(held).toEqual(want);
        proc.kill('SIGTERM');
        expect(await exit).toBe(0);
        expect(JSON.parse(readFileSync(state, 'utf8'))).toEqual({ version: 1, ...want });
        started++;
      }
    }
    console.log(`fpo run fuzz: ${started} started, ${refusals} refused`);
    expect(started + refusals).toBe(samples.length);
    expect(started).toBeGreaterThanOrEqual(3);
    expect(refusals).toBeGreaterThanOrEqual(3);
  }, 240_000);
});

/** dump() for a socket and state path (no Svc). */
const dumpOf = (socket: string, state: string) => dump({ socket, state } as Svc);

describe('service fuzz: a refused request never changes the state', () => {
  it('random migrate, set-mapping, add-flow and del-flow requests, with the state folder sometimes gone: refused ones change nothing, accepted ones are in the file', async () => {
    const out = tempDir('svc-fuzz');
    const stateDir = join(tempDir('svc-fuzz-state'), 'st');
    mkdirSync(stateDir);
    const s = await start(out, join(stateDir, 'fpo-state.json'));
    // Mostly requests that can succeed (so that the state moves), among ones that cannot.
    const often = <T,>(good: T[], bad: T[]) => fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...good) }, { weight: 1, arbitrary: fc.constantFrom(...bad) });
    const itf = often(TOPO_ITFS, ['toString', 'uplink0', '', 'vm9-eth0']);
    const reqArb = fc.oneof(
      { weight: 4, arbitrary: fc.record({ cmd: fc.constant('migrate'), args: fc.oneof(
        fc.record({ interface: itf, to: often(VM_PORTS, ['uplink0', 'vf9', '']), newVpid: often([undefined, undefined, undefined, 40, 41, 42], [1, 6, 0, 70000, -1, 'x', 1.5]) }),
        fc.record({ interface: itf, away: often([true], [false, 'yes']) }),
      ) }) },
      { weight: 3, arbitrary: fc.record({ cmd: fc.constant('set-mapping'), args: fc.record({ vpid: often([1, 2, 3, 4, 5, 40, 41], [6, 0, 70000, 'x', null]), ppid: often([11, 12, 13, 14, 15], [0, 1, 16, 4096, 99999, -1, '12', 1e300]) }) }) },
      { weight: 1, arbitrary: fc.record({ cmd: fc.constantFrom('add-flow', 'del-flow'), args: fc.record({ flow: fc.constantFrom('priority=300,udp,tp_dst=99,actions=drop', 'udp,tp_dst=99', 'priority=60000,constructor,actions=drop', 'priority=x', '', 'priority=5,actions=output:vm2-eth0') }) }) },
      { weight: 1, arbitrary: fc.record({ cmd: fc.constantFrom('rmdir', 'mkdir', 'mkdir'), args: fc.constant({}) }) },
    );
    const reqs = fc.sample(reqArb, { numRuns: 400, seed: 2017 });
    let accepted = 0;
    let refusedN = 0;
    let goneRefusals = 0;
    for (const r of reqs) {
      if (r.cmd === 'rmdir') { rmSync(stateDir, { recursive: true, force: true }); continue; }
      if (r.cmd === 'mkdir') { mkdirSync(stateDir, { recursive: true }); continue; }
      const before = await dump(s);
      const answer = await req(s.socket, r.cmd, r.args as Record<string, unknown>);
      const after = await dump(s);
      if (!answer.ok) {
        refusedN++;
        if (/cannot write the state/.test(answer.error.message)) goneRefusals++;
        expect(after.show, `${r.cmd} ${JSON.stringify(r.args)} was refused (${answer.error.message}) but changed the service`).toBe(before.show);
        expect(after.file).toBe(before.file);
      } else {
        accepted++;
        if (r.cmd === 'migrate' || r.cmd === 'set-mapping') {
          // Accepted: persisted as applied (the folder is there, or the write would have failed).
          expect(after.file, `${r.cmd} ${JSON.stringify(r.args)}`).not.toBeNull();
          expect(JSON.parse(after.file!)).toEqual({ version: 1, ...after.held });
        } else {
          expect(after.file).toBe(before.file); // rules are not in the state file
        }
      }
    }
    console.log(`service fuzz: ${accepted} accepted, ${refusedN} refused (${goneRefusals} for the state folder gone)`);
    expect(accepted + refusedN).toBe(reqs.filter((r) => r.cmd !== 'rmdir' && r.cmd !== 'mkdir').length);
    expect(accepted).toBeGreaterThan(10);
    expect(goneRefusals).toBeGreaterThan(3);
    mkdirSync(stateDir, { recursive: true });
    expect(await s.stop()).toBe(0);
  }, 240_000);
});
