/**
 * A real `fpo run` for the control-socket tests: started on a socket in a
 * temp folder, with raw clients that speak the protocol by hand (what fpo
 * ctl hides: pipelining, bodies, not reading), and the service's memory and
 * descriptors read from /proc.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readlinkSync, readdirSync, readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { CLI, FIXTURES, runCli, tempDir } from '../helpers.js';

export const TOPO = join(FIXTURES, 'topology.json');

export interface Svc {
  proc: ChildProcess;
  socket: string;
  out: string;
  /** What the service printed on stdout and stderr so far. */
  output: () => { stdout: string; stderr: string };
  ctl: (...a: string[]) => { status: number; stdout: string; stderr: string };
  /** SIGTERM (or `signal`), then its exit: code, signal and stdout. */
  stop: (signal?: NodeJS.Signals) => Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string }>;
  /** VmRSS and VmHWM (peak) in kB, from /proc/PID/status. */
  memory: () => { rss: number; hwm: number };
  /** Open descriptors (entries of /proc/PID/fd). */
  fds: () => number;
  /** Open descriptors and what each is (for a message when a count is off). */
  fdList: () => string[];
}

const running: ChildProcess[] = [];
export function killAll(): void {
  for (const p of running) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
}

export async function startService(opts: { out?: string; socket?: string; topology?: string; extra?: string[] } = {}): Promise<Svc> {
  const out = opts.out ?? tempDir('svc');
  const socket = opts.socket ?? join(out, 'ctl.sock');
  const proc = spawn(process.execPath, [CLI, 'run', '-t', opts.topology ?? TOPO, '-s', socket, '-o', out, ...(opts.extra ?? [])], { stdio: ['ignore', 'pipe', 'pipe'] });
  running.push(proc);
  let stdout = '';
  let stderr = '';
  proc.stdout!.on('data', (d) => (stdout += d));
  proc.stderr!.on('data', (d) => (stderr += d));
  for (let i = 0; i < 200 && !existsSync(socket) && proc.exitCode === null; i++) await new Promise((r) => setTimeout(r, 50));
  if (!existsSync(socket)) throw new Error(`fpo run did not start: ${stderr}`);
  // The socket's file appears at bind(), a moment before listen(): a connect in between is refused. Wait until one is taken.
  for (let i = 0; i < 100; i++) {
    const ok = await new Promise<boolean>((resolve) => {
      const c = connect(socket);
      c.once('connect', () => { c.destroy(); resolve(true); });
      c.once('error', () => resolve(false));
    });
    if (ok) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  const status = () => readFileSync(`/proc/${proc.pid}/status`, 'utf8');
  const kb = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status())![1]);
  return {
    proc, socket, out,
    output: () => ({ stdout, stderr }),
    ctl: (...a: string[]) => runCli(['ctl', '-s', socket, ...a]),
    stop: (signal: NodeJS.Signals = 'SIGTERM') => new Promise((resolve) => {
      if (proc.exitCode !== null) return resolve({ code: proc.exitCode, signal: null, stdout });
      proc.on('exit', (code, sig) => resolve({ code, signal: sig, stdout }));
      proc.kill(signal);
    }),
    memory: () => ({ rss: kb('VmRSS'), hwm: kb('VmHWM') }),
    fds: () => readdirSync(`/proc/${proc.pid}/fd`).length,
    fdList: () => readdirSync(`/proc/${proc.pid}/fd`).map((f) => { try { return `${f} ${readlinkSync(`/proc/${proc.pid}/fd/${f}`)}`; } catch { return f; } }),
  };
}

/** A raw client: send bytes, collect reply lines; reading can be stopped (pause) and started. */
export interface Raw {
  sock: Socket;
  lines: string[];
  send: (s: string | Uint8Array) => boolean;
  /** Resolves when `n` lines have come (or the connection closed: then with what came). */
  waitLines: (n: number) => Promise<string[]>;
  closed: Promise<void>;
}

export function rawClient(socket: string, opts: { read?: boolean } = {}): Promise<Raw> {
  return new Promise((resolve, reject) => {
    const sock = connect(socket);
    const lines: string[] = [];
    let part = '';
    let waiters: (() => void)[] = [];
    let isClosed = false;
    const closed = new Promise<void>((r) => sock.on('close', () => { isClosed = true; for (const w of waiters) w(); waiters = []; r(); }));
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      part += d;
      let nl: number;
      while ((nl = part.indexOf('\n')) >= 0) {
        lines.push(part.slice(0, nl));
        part = part.slice(nl + 1);
      }
      for (const w of waiters) w();
      waiters = [];
    });
    sock.on('error', () => undefined);
    if (opts.read === false) sock.pause();
    sock.once('connect', () => resolve({
      sock, lines, closed,
      send: (s) => sock.write(s),
      waitLines: async (n) => {
        while (lines.length < n && !isClosed) await new Promise<void>((r) => waiters.push(r));
        return lines;
      },
    }));
    sock.once('error', reject);
  });
}

/** One request over a fresh connection, its answer parsed. */
export function req(socket: string, cmd: string, args: Record<string, unknown> = {}): Promise<any> {
  return new Promise((resolve, reject) => {
    const c = connect(socket);
    let got = '';
    c.on('data', (d) => {
      got += d;
      if (got.includes('\n')) { c.end(); resolve(JSON.parse(got)); }
    });
    c.on('error', reject);
    c.on('connect', () => c.write(JSON.stringify({ id: 1, cmd, args }) + '\n'));
  });
}
