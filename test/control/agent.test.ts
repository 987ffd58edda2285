import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import fc from 'fast-check';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { AGENT_MAX_LINE, LineReader, Liveness } from '../../control/agent.js';
import { TunnelMonitor } from '../../control/monitor.js';
import { CLI, cleanTemp, needRoot, needTool, tempDir } from '../helpers.js';

const procs: ChildProcess[] = [];
afterAll(() => {
  for (const p of procs) p.kill('SIGKILL');
  cleanTemp();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function until(cond: () => boolean | Promise<boolean>, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond()) return true;
    await sleep(20);
  }
  return cond();
}

/** What an agent channel may carry: lines good and bad, cut anywhere, and lines far past the bound. */
const line = fc.oneof(
  fc.integer({ min: -3, max: 50 }).map((seq) => JSON.stringify({ type: 'alive', seq })),
  fc.constantFrom('{"type":"alive","seq":1e300}', '{"type":"alive","seq":1.5}', '{"type":"alive","seq":"3"}', '{"type":"alive"}', '{"type":"ack"}', 'null', '[1]', '"alive"', '{"type":"alive","seq":2', '{}', '', '{"__proto__":{"type":"alive"},"seq":1}'),
  fc.string({ maxLength: 64 }),
  fc.integer({ min: AGENT_MAX_LINE - 2, max: AGENT_MAX_LINE * 3 }).map((n) => 'x'.repeat(n)),
);
/** A stream of such lines, joined by newlines and cut into chunks at random places. */
const stream = fc.tuple(fc.array(line, { maxLength: 30 }), fc.array(fc.integer({ min: 1, max: 5000 }), { maxLength: 12 })).map(([lines, cuts]) => {
  const text = lines.map((l) => l + '\n').join('');
  const chunks: string[] = [];
  let at = 0;
  for (const c of cuts) {
    if (at >= text.length) break;
    chunks.push(text.slice(at, at + c));
    at += c;
  }
  if (at < text.length) chunks.push(text.slice(at));
  return { lines, chunks };
});

describe('LineReader (the agent channel, either side)', () => {
  it('gives back the lines however the stream is cut, never holds more than the bound, and refuses a longer line (property)', () => {
    fc.assert(fc.property(stream, ({ lines, chunks }) => {
      const r = new LineReader();
      const got: string[] = [];
      let refused = false;
      for (const c of chunks) {
        if (!r.push(c, (l) => got.push(l))) { refused = true; break; }
        expect(r.buffered).toBeLessThanOrEqual(AGENT_MAX_LINE);
      }
      const firstLong = lines.findIndex((l) => l.length > AGENT_MAX_LINE);
      expect(refused).toBe(firstLong >= 0);
      expect(got).toEqual(firstLong >= 0 ? lines.slice(0, firstLong) : lines);
      if (refused) expect(r.buffered).toBe(0);
    }), { numRuns: 500 });
  });

  it('the bound is exact: a line of AGENT_MAX_LINE characters passes, one more is refused, in one chunk or many', () => {
    for (const split of [1, 7, AGENT_MAX_LINE]) {
      const r = new LineReader();
      const ok = 'a'.repeat(AGENT_MAX_LINE) + '\n';
      const got: string[] = [];
      for (let i = 0; i < ok.length; i += split) expect(r.push(ok.slice(i, i + split), (l) => got.push(l))).toBe(true);
      expect(got.map((l) => l.length)).toEqual([AGENT_MAX_LINE]);
      let pass = true;
      const long = 'b'.repeat(AGENT_MAX_LINE + 1);
      for (let i = 0; i < long.length && pass; i += split) pass = r.push(long.slice(i, i + split), () => undefined);
      expect(pass).toBe(false);
      expect(r.buffered).toBe(0);
    }
  });
});

describe('Liveness (fpo\'s side of the channel)', () => {
  it('takes only answers to probes it sent; any other line is refused with a reason and changes nothing (property)', () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: 20 }), fc.array(line, { maxLength: 40 }), (probes, lines) => {
      const l = new Liveness();
      for (let i = 0; i < probes; i++) l.probe();
      let t = 1000;
      for (const text of lines) {
        const before = { seq: l.seq, answered: l.answered, lastAlive: l.lastAlive, refused: { ...l.refused } };
        const r = l.take(text, ++t);
        if (r === 'alive') {
          const seq = (JSON.parse(text) as { seq: number }).seq;
          expect(seq >= 1 && seq <= probes).toBe(true);
          expect(l.answered).toBe(Math.max(before.answered, seq));
          expect(l.lastAlive).toBe(t);
        } else {
          expect({ seq: l.seq, answered: l.answered, lastAlive: l.lastAlive }).toEqual({ seq: before.seq, answered: before.answered, lastAlive: before.lastAlive });
          if (r !== 'ack') expect(l.refused[r]).toBe(before.refused[r] + 1);
        }
        expect(l.answered).toBeLessThanOrEqual(l.seq);
      }
    }), { numRuns: 500 });
  });

  it('an answer to a probe never sent (the seq 1e300 that once kept a dead VM alive) is refused', () => {
    const l = new Liveness();
    l.probe();
    expect(l.take('{"type":"alive","seq":1e300}', 5)).toBe('seqNotProbed');
    expect(l.take('{"type":"alive","seq":2}', 5)).toBe('seqNotProbed');
    expect(l.take('{"type":"alive","seq":1}', 5)).toBe('alive');
    expect(l).toMatchObject({ seq: 1, answered: 1, lastAlive: 5 });
  });
});

describe('the agent channel end to end', () => {
  it('fpo agent (the guest side) closes a connection that sends a line past the bound and keeps answering others', async () => {
    const dir = tempDir('agent');
    const sock = join(dir, 'a.sock');
    const p = spawn(process.execPath, [CLI, 'agent', '--socket', sock, '--name', 'vmx'], { stdio: ['ignore', 'pipe', 'pipe'] });
    procs.push(p);
    let err = '';
    p.stderr!.on('data', (d) => (err += d));
    expect(await until(() => existsSync(sock), 5000)).toBe(true);
    const flood = connect(sock);
    const closed = new Promise<void>((r) => flood.on('close', () => r()));
    flood.on('error', () => undefined);
    flood.write('x'.repeat(AGENT_MAX_LINE * 50));
    await closed;
    expect(await until(() => /"refused":"tooLong"/.test(err), 5000), err).toBe(true);
    const c = connect(sock);
    const answer = await new Promise<string>((resolve) => {
      let got = '';
      c.on('data', (d) => { got += d; if (got.includes('\n')) resolve(got); });
      c.write('{"type":"probe","seq":7}\n');
    });
    expect(JSON.parse(answer)).toMatchObject({ type: 'alive', seq: 7, agent: 'vmx' });
    c.destroy();
    p.kill('SIGTERM');
  });

  it('fpo agent stops on SIGTERM while fpo\'s channel is open (with --conntrack too: its conntrack -E goes with it), and takes its socket away', async (ctx) => {
    needRoot(ctx, 'conntrack -E needs root');
    needTool(ctx, 'conntrack', 'fpo agent --conntrack runs conntrack -E');
    for (const extra of [[], ['--conntrack']]) {
      const dir = tempDir('agentstop');
      const sock = join(dir, 'a.sock');
      const p = spawn(process.execPath, [CLI, 'agent', '--socket', sock, '--name', 'vmy', ...extra], { stdio: ['ignore', 'ignore', 'ignore'] });
      procs.push(p);
      expect(await until(() => existsSync(sock), 5000)).toBe(true);
      const c = connect(sock); // fpo's side, left open
      c.on('error', () => undefined);
      await new Promise<void>((r) => c.on('connect', () => r()));
      const exited = new Promise<number | null>((r) => p.on('exit', (code) => r(code)));
      p.kill('SIGTERM');
      const code = await Promise.race([exited, new Promise<string>((r) => setTimeout(() => r('still running'), 5000))]);
      expect(code, extra.join(' ')).toBe(0);
      expect(existsSync(sock)).toBe(false);
      c.destroy();
    }
  });

  it('fpo\'s tunnel monitor, fed random, truncated, oversized and garbage lines by a hostile agent, stays up, holds no more than the bound, and still takes a good answer (fuzz)', async (ctx) => {
    needRoot(ctx, 'the BFD endpoint reads with a raw socket as root');
    const dir = tempDir('agent-fuzz');
    const sock = join(dir, 'vm.sock');
    // The hostile agent: on each connection from fpo, writes the next script of chunks, then answers probes honestly.
    let scripts: string[][] = [];
    const conns: Socket[] = [];
    let honest = false;
    const server: Server = createServer((c) => {
      conns.push(c);
      c.on('error', () => undefined);
      const script = scripts.shift() ?? [];
      for (const chunk of script) c.write(chunk);
      let buf = '';
      c.on('data', (d) => {
        buf += d;
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const m = JSON.parse(buf.slice(0, nl)) as { type: string; seq: number };
          buf = buf.slice(nl + 1);
          if (honest && m.type === 'probe') c.write(JSON.stringify({ type: 'alive', seq: m.seq }) + '\n');
        }
      });
    });
    await new Promise<void>((r) => server.listen(sock, r));
    const mon = new TunnelMonitor([{ interface: 'vm1-eth0', agent: sock, local: '127.0.0.77', peer: '127.0.0.78', peerPort: 3999, txMs: 1000, rxMs: 1000, detectMult: 3, probeMs: 20, misses: 3 }], pino({ level: 'silent' }));
    await mon.start();
    try {
      // First a flood: 64 MiB with no newline. fpo must close the channel itself, holding at most the bound.
      const heap0 = process.memoryUsage().heapUsed;
      scripts = [Array.from({ length: 64 }, () => 'y'.repeat(1 << 20))];
      expect(await until(() => conns.length >= 1, 5000)).toBe(true);
      const flood = conns[0];
      expect(await until(() => flood.destroyed || flood.readableEnded, 10_000), 'fpo closed the flooding channel').toBe(true);
      expect(((await mon.describe())[0] as { agentRefused: Record<string, number> }).agentRefused.tooLong).toBe(1);
      expect(process.memoryUsage().heapUsed - heap0).toBeLessThan(48 << 20);
      const samples = fc.sample(stream, { numRuns: 40, seed: 17 });
      scripts = samples.map((s) => s.chunks);
      expect(await until(() => conns.length >= 2, 5000)).toBe(true);
      conns[1].destroy();
      // Each script is one connection; fpo reconnects on its next probe after a close.
      for (let i = 0; i < samples.length; i++) {
        const n = conns.length;
        expect(await until(() => conns.length > n, 5000)).toBe(true);
        conns[conns.length - 1].destroy(); // next connection, next script
      }
      const [w] = (await mon.describe()) as { vmAlive: boolean; agentRefused: Record<string, number> }[];
      const total = Object.values(w.agentRefused).reduce((a, b) => a + b, 0);
      expect(total).toBeGreaterThan(20);
      expect(w.agentRefused.tooLong).toBeGreaterThan(0);
      expect(process.memoryUsage().heapUsed - heap0).toBeLessThan(64 << 20);
      // Now an honest agent: the VM is seen alive again.
      honest = true;
      scripts = [];
      conns[conns.length - 1].destroy();
      expect(await until(async () => ((await mon.describe())[0] as { vmAlive: boolean }).vmAlive, 5000)).toBe(true);
    } finally {
      await mon.stop();
      for (const c of conns) c.destroy();
      server.close();
    }
  }, 60_000);
});
