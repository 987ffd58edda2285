import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { METRICS_LIMITS } from '../../control/metrics.js';
import { CLI, FIXTURES, cleanTemp, tempDir } from '../helpers.js';

// The metrics endpoint of `fpo run` against scrapers that misbehave: half-sent
// requests, too many connections, methods and headers it does not serve.

const TOPO = join(FIXTURES, 'topology.json');
const running: ChildProcess[] = [];
const sockets: Socket[] = [];
afterAll(() => {
  for (const s of sockets) s.destroy();
  for (const p of running) p.kill('SIGKILL');
  cleanTemp();
});

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

async function start(): Promise<{ proc: ChildProcess; port: number; exited: Promise<{ code: number | null; ms: number; stdout: string }>; term: () => number }> {
  const port = await freePort();
  const out = tempDir('metrics');
  const socket = join(out, 'ctl.sock');
  const proc = spawn(process.execPath, [CLI, 'run', '-t', TOPO, '-s', socket, '-o', out, '--metrics', `127.0.0.1:${port}`], { stdio: ['ignore', 'pipe', 'pipe'] });
  running.push(proc);
  let stdout = '';
  proc.stdout!.on('data', (d) => (stdout += d));
  let termAt = 0;
  const exited = new Promise<{ code: number | null; ms: number; stdout: string }>((resolve) => proc.on('exit', (code) => resolve({ code, ms: Date.now() - termAt, stdout })));
  for (let i = 0; i < 100 && !existsSync(socket); i++) await new Promise((r) => setTimeout(r, 50));
  expect(existsSync(socket)).toBe(true);
  return { proc, port, exited, term: () => { termAt = Date.now(); proc.kill('SIGTERM'); return termAt; } };
}

/** A raw TCP connection to the endpoint; `closed` resolves when the server closes it (with what it sent). */
function open(port: number): Promise<{ sock: Socket; closed: Promise<string> }> {
  return new Promise((resolve, reject) => {
    const sock = connect(port, '127.0.0.1');
    sockets.push(sock);
    let got = '';
    sock.on('data', (d) => (got += d));
    const closed = new Promise<string>((r) => sock.on('close', () => r(got)));
    sock.on('error', () => undefined);
    sock.once('connect', () => resolve({ sock, closed }));
    sock.once('error', reject);
  });
}

const within = <T>(p: Promise<T>, ms: number): Promise<T | 'timeout'> => Promise.race([p, new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), ms))]);

describe('fpo run --metrics against careless scrapers', () => {
  it('SIGTERM with a scrape half sent: every connection closed, exit 0 with the final counters, at once', async () => {
    const s = await start();
    const half = await open(s.port);
    half.sock.write('GET /metrics HTTP/1.1\r\nHost: x\r\n'); // never finished
    const idle = await open(s.port);
    idle.sock.write('GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n'); // answered, then left open (keep-alive)
    await new Promise((r) => setTimeout(r, 300));
    s.term();
    // Before closeMetrics, the half-sent request held the exit for Node's 60 s header timeout.
    const r = await within(s.exited, 10_000);
    expect(r).not.toBe('timeout');
    const { code, stdout } = r as { code: number; stdout: string };
    expect(code).toBe(0);
    expect(JSON.parse(stdout.trim().split('\n').pop()!)).toHaveProperty('packets');
    expect(await within(half.closed, 1_000)).toBe('');
    expect(await within(idle.closed, 1_000)).toMatch(/^HTTP\/1\.1 200 OK/);
  });

  it('a connection that never finishes its request is cut off after the header timeout', async () => {
    const s = await start();
    const slow = await open(s.port);
    slow.sock.write('GET /metrics HTTP/1.1\r\n');
    const timer = setInterval(() => slow.sock.write('X-a: b\r\n'), 500); // a slow trickle of headers
    const got = await within(slow.closed, METRICS_LIMITS.headersMs + 8_000);
    clearInterval(timer);
    expect(got).not.toBe('timeout');
    expect(got).toMatch(/^HTTP\/1\.1 408|^$/);
    s.term();
    await s.exited;
  }, 30_000);

  it(`holds at most ${METRICS_LIMITS.maxConnections} connections; beyond that a new one is closed, and scrapes work again when they leave`, async () => {
    const s = await start();
    const held = [];
    for (let i = 0; i < METRICS_LIMITS.maxConnections; i++) held.push(await open(s.port));
    await new Promise((r) => setTimeout(r, 200));
    const extra = await open(s.port);
    expect(await within(extra.closed, 2_000)).toBe(''); // closed by the server on accept, nothing sent
    for (const h of held) expect(h.sock.destroyed).toBe(false);
    for (const h of held) h.sock.destroy();
    await new Promise((r) => setTimeout(r, 200));
    const res = await fetch(`http://127.0.0.1:${s.port}/metrics`);
    expect(res.status).toBe(200);
    expect(await res.text()).toMatch(/^fpo_packets_total\{kind="in"\} \d+$/m);
    s.term();
    expect((await s.exited).code).toBe(0);
  });

  it('serves GET and HEAD of /metrics only; a header block over 8 KiB is refused', async () => {
    const s = await start();
    const base = `http://127.0.0.1:${s.port}`;
    const post = await fetch(`${base}/metrics`, { method: 'POST', body: 'x' });
    expect(post.status).toBe(405);
    expect(post.headers.get('allow')).toBe('GET, HEAD');
    const head = await fetch(`${base}/metrics`, { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(await head.text()).toBe('');
    expect((await fetch(`${base}/other`)).status).toBe(404);
    const big = await open(s.port);
    big.sock.write(`GET /metrics HTTP/1.1\r\nHost: x\r\nX-big: ${'a'.repeat(9000)}\r\n\r\n`);
    expect(await within(big.closed, 3_000)).toMatch(/^HTTP\/1\.1 431/);
    s.term();
    expect((await s.exited).code).toBe(0);
  });
});
