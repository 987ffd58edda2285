/**
 * fpo run's control side (service.ts: the socket server, shutdown and
 * inject), against a real service. In its own file beside service.test.ts,
 * which covers the requests themselves.
 */
import { execFileSync, spawn } from 'node:child_process';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { COMMANDS } from '../../control/socket.js';
import { benchTopology, generate } from '../../bench/gen-capture.js';
import { eth, ipv4, udp, writePcap } from '../../fixtures/packets.js';
import { CLI, cleanTemp, needTool, tempDir } from '../helpers.js';
import { killAll, rawClient, startService, type Svc } from './run-service.js';

afterAll(() => {
  killAll();
  cleanTemp();
});

/** Sends the signal and resolves with the exit and how long it took (ms); a service still there after 10 s is killed (ms: Infinity). */
async function timedStop(s: Svc, signal: NodeJS.Signals): Promise<{ code: number | null; stdout: string; ms: number }> {
  const t0 = performance.now();
  let killed = false;
  const guard = setTimeout(() => { killed = true; s.proc.kill('SIGKILL'); }, 10_000);
  const r = await s.stop(signal);
  clearTimeout(guard);
  return { code: r.code, stdout: r.stdout, ms: killed ? Infinity : performance.now() - t0 };
}

describe('fpo run stops on SIGTERM and SIGINT whatever its clients do', () => {
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    it(`${signal} with an idle client, a client that reads nothing and a client half-way through an inject: every connection closed, exit 0 within a second, final counters printed`, async () => {
      const dir = tempDir('stop');
      const s = await startService({ out: join(dir, 'out') });
      const idle = await rawClient(s.socket);
      const deaf = await rawClient(s.socket, { read: false });
      let many = '';
      for (let i = 0; i < 5000; i++) many += `{"id":${i},"cmd":"show"}\n`;
      deaf.send(many);
      // An inject that declares 1 MB and sends a pcap header and one record of it, then stalls.
      const half = await rawClient(s.socket);
      const frame = eth('02:00:00:00:00:01', '02:ee:00:00:00:01', 0x0800, ipv4({ src: '192.0.2.1', dst: '10.0.0.1', proto: 17 }, udp(1, 9, new Uint8Array(18))));
      const cap = join(dir, 'one.pcap');
      writePcap(cap, [{ sec: 1000, usec: 1, data: frame }]);
      half.send(`{"id":1,"cmd":"inject","args":{"bytes":1000000}}\n`);
      half.send(readFileSync(cap));
      // The service has taken all three (the record counted) before the signal.
      let st: any;
      for (let i = 0; i < 100; i++) {
        st = JSON.parse(s.ctl('--json', 'stats').stdout);
        if (st.packets.in === 1 && st.control.clients === 4) break; // the three and this ctl
        await new Promise((r) => setTimeout(r, 50));
      }
      expect(st.packets.in).toBe(1);
      expect(st.control.clients).toBe(4);
      const r = await timedStop(s, signal);
      console.log(`${signal}: exit in ${r.ms.toFixed(0)} ms`);
      expect(r.code).toBe(0);
      expect(r.ms).toBeLessThan(1000);
      const final = JSON.parse(r.stdout);
      expect(final.packets.in).toBe(1);
      // Each client sees its connection closed (the one that did not read, once it reads).
      deaf.sock.resume();
      await Promise.all([idle.closed, deaf.closed, half.closed]);
      expect(idle.lines).toEqual([]);
    }, 60_000);
  }
});

describe('inject: the service opens no path a client names', () => {
  const frame = eth('02:00:00:00:00:01', '02:ee:00:00:00:01', 0x0800, ipv4({ src: '192.0.2.1', dst: '10.0.0.1', proto: 17 }, udp(1, 9, new Uint8Array(18))));

  /** Resolves with the first reply line, or rejects after 10 s (a blocked service). */
  async function ask(socket: string, payload: string | Uint8Array, closeAfter = false): Promise<any> {
    const c = await rawClient(socket);
    c.send(payload);
    if (closeAfter) c.sock.end();
    let t: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => { t = setTimeout(() => reject(new Error('no answer in 10 s: the service is blocked')), 10_000); });
    try {
      const lines = await Promise.race([c.waitLines(1), timeout]);
      return lines.length ? JSON.parse(lines[0]) : null;
    } finally {
      clearTimeout(t);
      c.sock.destroy();
    }
  }

  it('100 bad injects (paths to a FIFO, a folder and a system file; bodies that are not a pcap, pcapng, cut short) each get an answer or a clean close; no descriptor is left behind, no file byte echoed, the service keeps serving', async (ctx) => {
    needTool(ctx, 'editcap', 'writes the pcapng copy');
    const dir = tempDir('badinj');
    const fifo = join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    const secret = join(dir, 'secret');
    writeFileSync(secret, 'SECRET-BYTES');
    const cap = join(dir, 'ok.pcap');
    writePcap(cap, Array.from({ length: 20 }, (_, i) => ({ sec: 1000, usec: i, data: frame })));
    const ok = readFileSync(cap);
    const ng = Buffer.from(execFileSync('editcap', ['-F', 'pcapng', cap, '-'], { maxBuffer: 1 << 20 }));
    const s = await startService({ out: join(dir, 'out') });
    expect((await ask(s.socket, '{"id":0,"cmd":"ping"}\n')).ok).toBe(true);
    let fds = s.fds();
    const inject = (n: number, extra = '') => `{"id":1,"cmd":"inject","args":{"bytes":${n}${extra}}}\n`;
    const kinds: [string, () => Promise<void>][] = [
      ['a FIFO by path', async () => { const r = await ask(s.socket, `{"id":1,"cmd":"inject","args":{"capture":${JSON.stringify(fifo)}}}\n`); expect(r.error.message).toMatch(/opens no file a client names/); }],
      ['a folder by path', async () => { const r = await ask(s.socket, `{"id":1,"cmd":"inject","args":{"capture":${JSON.stringify(dir)}}}\n`); expect(r.error.message).toMatch(/opens no file a client names/); }],
      ['a file by path', async () => { const r = await ask(s.socket, `{"id":1,"cmd":"inject","args":{"capture":${JSON.stringify(secret)}}}\n`); expect(JSON.stringify(r)).not.toMatch(/SECR|53454352/); }],
      ['not a pcap', async () => { const r = await ask(s.socket, Buffer.concat([Buffer.from(inject(32)), Buffer.from('SECRET-BYTES-SECRET-BYTES-SECRET')])); expect(r.error.message).toMatch(/not a pcap or pcapng file/); expect(JSON.stringify(r)).not.toMatch(/SECR|53454352|0x5345/); }],
      ['pcapng', async () => { const r = await ask(s.socket, Buffer.concat([Buffer.from(inject(ng.length)), ng])); expect(r.error.message).toMatch(/inject takes a classic Ethernet pcap/); }],
      ['cut short, the client gone', async () => { const r = await ask(s.socket, Buffer.concat([Buffer.from(inject(ok.length)), ok.subarray(0, ok.length - 30)]), true); expect(r === null || r.ok === true).toBe(true); }],
      ['a port that does not exist', async () => { const r = await ask(s.socket, Buffer.concat([Buffer.from(inject(ok.length, ',"port":"nosuch"')), ok])); expect(r.error.message).toBe('port: no port named "nosuch"'); }],
      ['no length', async () => { const r = await ask(s.socket, '{"id":1,"cmd":"inject","args":{}}\n'); expect(r.error.message).toMatch(/^bytes: expected/); }],
    ];
    // One of each first: what the service opens once, on first use (the thread pool's handles for its file
    // checks), is not a leak; the descriptors are counted after that, and must be the same after 100 more.
    const settle = async () => {
      for (let i = 0; i < 100 && JSON.parse(s.ctl('--json', 'stats').stdout).control.clients > 1; i++) await new Promise((r) => setTimeout(r, 50));
      await new Promise((r) => setTimeout(r, 200));
    };
    for (const [, run] of kinds) await run();
    await settle();
    fds = s.fds();
    const before = s.fdList();
    let done = 0;
    for (let i = 0; i < 100; i++) {
      await kinds[i % kinds.length][1]();
      done++;
    }
    expect(done).toBe(100);
    // The connections are gone when the service has counted them out; then only its own descriptors remain.
    await settle();
    for (let i = 0; i < 40 && s.fds() !== fds; i++) await new Promise((r) => setTimeout(r, 50));
    expect(s.fds(), `descriptors before: ${before.join(', ')}; after: ${s.fdList().join(', ')}`).toBe(fds);
    // Still serving, and a good inject still goes in whole.
    const r = await ask(s.socket, Buffer.concat([Buffer.from(inject(ok.length, ',"port":"uplink0"')), ok]));
    expect(r.result.packets).toEqual({ in: 20, out: 20, dropped: 0 });
    await s.stop();
  }, 120_000);

  it('a 200 MB inject streams through: the service\'s peak memory grows by a bounded amount, not by the capture', async () => {
    const dir = tempDir('biginj');
    const cap = join(dir, 'big.pcap');
    const frames = 2_600_000; // 80 bytes a record: 208 MB
    generate(cap, { frames, size: 64, flows: 50, vms: 1 });
    const size = statSync(cap).size;
    expect(size).toBeGreaterThan(200e6);
    const topo = join(dir, 'topo.json');
    writeFileSync(topo, JSON.stringify(benchTopology(1)));
    const s = await startService({ out: join(dir, 'out'), topology: topo });
    // Warm: the first inject's flows and buffers are made before the peak is read.
    const small = join(dir, 'small.pcap');
    generate(small, { frames: 10_000, size: 64, flows: 50, vms: 1 });
    expect(s.ctl('--json', 'inject', small).status).toBe(0);
    const before = s.memory();
    const r = await new Promise<{ code: number | null; out: string }>((resolve) => {
      const p = spawn(process.execPath, [CLI, 'ctl', '-s', s.socket, '--json', 'inject', cap], { stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      p.stdout.on('data', (d) => (out += d));
      p.on('exit', (code) => resolve({ code, out }));
    });
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out).packets).toEqual({ in: frames, out: frames, dropped: 0 });
    const after = s.memory();
    const grew = after.hwm - Math.max(before.hwm, before.rss);
    console.log(`inject of ${size} bytes: peak RSS ${before.hwm} -> ${after.hwm} kB (+${grew} kB)`);
    // The body is held BODY_QUEUE (4 MiB) at a time, plus the reader's 1 MiB chunk; what grows besides is
    // the heap's garbage of socket reads before a collection (+43 MB here). Holding the capture would be +200 MB.
    expect(grew).toBeLessThan(100 * 1024);
    await s.stop();
  }, 120_000);
});

describe('the control protocol under fuzz (fast-check), with an inject running beside', () => {
  it('random, truncated, oversized, pipelined and unread requests: each is answered or refused, memory stays bounded, forwarding goes on, and a refused request changes nothing', async () => {
    const dir = tempDir('fuzz');
    const cap = join(dir, 'beside.pcap');
    generate(cap, { frames: 200_000, size: 64, flows: 50, vms: 2 });
    const topo = join(dir, 'topo.json');
    const t = benchTopology(2) as { ports: object[] };
    t.ports.push({ name: 'spare', ppid: 50 });
    writeFileSync(topo, JSON.stringify(t));
    const s = await startService({ out: join(dir, 'out'), topology: topo });
    // The inject beside: one after another on one connection, from this process (no gap for a ctl to start).
    const body = readFileSync(cap);
    let fuzzing = true;
    let injects = 0;
    const beside = (async () => {
      const c = await rawClient(s.socket);
      while (fuzzing) {
        c.send(Buffer.concat([Buffer.from(`{"id":${injects},"cmd":"inject","args":{"bytes":${body.length},"port":"uplink0"}}\n`), body]));
        const r = JSON.parse((await c.waitLines(injects + 1))[injects]);
        expect(r.result.packets.in).toBe(200_000);
        injects++;
      }
      c.sock.destroy();
    })();
    const request = async (line: string): Promise<any> => {
      const c = await rawClient(s.socket);
      c.send(line + '\n');
      const r = JSON.parse((await c.waitLines(1))[0]);
      c.sock.destroy();
      return r;
    };
    // What a refused request must leave alone: mappings, VPIDs, rules, the installed flows' matches and actions, the state file.
    const snapshot = async () => {
      const show = (await request('{"id":"snap","cmd":"show"}')).result;
      const flows = (await request('{"id":"snap","cmd":"dump-flows"}')).result.map((f: any) => `${f.match} -> ${f.actions}`).sort();
      return JSON.stringify({ show, flows, state: readFileSync(join(s.out, 'fpo-state.json'), 'utf8') });
    };
    const packetsIn = async () => (await request('{"id":"st","cmd":"stats"}')).result.packets.in as number;
    // Wait until the inject beside has installed its flows (its 50 flows are the steady set).
    while ((await packetsIn()) < 400_000) await new Promise((r) => setTimeout(r, 50));
    const baseRss = s.memory().rss;
    const READ_ONLY = new Set(['ping', 'show', 'dump-flows', 'stats', 'trace', 'bfd']);
    const argNames = ['flow', 'packet', 'vpid', 'ppid', 'interface', 'to', 'away', 'newVpid', 'port', 'capture', 'name'];
    const argValue = fc.oneof(fc.string({ maxLength: 24 }), fc.integer({ min: -2, max: 60 }), fc.boolean(), fc.constant(null), fc.constantFrom('vm0-eth0', 'spare', 'vf0', 'uplink0', 'priority=5,udp,actions=drop', 'in_port=uplink0,udp'));
    const structured = fc.record({ id: fc.nat(), cmd: fc.oneof(fc.constantFrom(...COMMANDS), fc.string({ maxLength: 12 })), args: fc.option(fc.dictionary(fc.constantFrom(...argNames), argValue, { maxKeys: 4 }), { nil: undefined }) });
    type Act =
      | { kind: 'lines'; lines: string[] } // pipelined on one connection, every reply read
      | { kind: 'bytes'; bytes: Uint8Array } // anything, then the client closes its side
      | { kind: 'truncated'; text: string } // a request cut before its newline, then closed
      | { kind: 'oversized'; extra: number }
      | { kind: 'unread'; n: number } // n requests, replies never read, then the client goes
      | { kind: 'body'; bytes: Uint8Array; declared: number }; // an inject whose body is random (maybe cut short)
    const act: fc.Arbitrary<Act> = fc.oneof(
      fc.array(fc.oneof(structured.map((r) => JSON.stringify(r)), fc.string({ maxLength: 80 }).map((x) => x.replace(/\n/g, ' '))), { minLength: 1, maxLength: 40 }).map((lines) => ({ kind: 'lines' as const, lines })),
      fc.uint8Array({ maxLength: 2000 }).map((bytes) => ({ kind: 'bytes' as const, bytes })),
      structured.chain((r) => { const j = JSON.stringify(r); return fc.nat({ max: j.length - 1 }).map((k) => ({ kind: 'truncated' as const, text: j.slice(0, k).replace(/\n/g, ' ') })); }),
      fc.integer({ min: 1, max: 300_000 }).map((extra) => ({ kind: 'oversized' as const, extra })),
      fc.integer({ min: 1000, max: 100_000 }).map((n) => ({ kind: 'unread' as const, n })),
      fc.tuple(fc.uint8Array({ minLength: 1, maxLength: 5000 }), fc.integer({ min: 0, max: 100 })).map(([bytes, more]) => ({ kind: 'body' as const, bytes, declared: bytes.length + more })),
    );
    let before = await snapshot();
    let maxRss = 0;
    const moved: number[] = [await packetsIn()];
    let runs = 0;
    let compared = 0; // runs whose state was compared (nothing that may change it was answered ok)
    await fc.assert(fc.asyncProperty(act, async (a) => {
      let changed = false; // a request that may change state was answered ok
      if (a.kind === 'lines') {
        const c = await rawClient(s.socket);
        c.send(a.lines.join('\n') + '\n');
        const replies = (await c.waitLines(a.lines.length)).map((l) => JSON.parse(l));
        c.sock.destroy();
        expect(replies.length).toBe(a.lines.length);
        replies.forEach((r, i) => {
          expect(typeof r.ok).toBe('boolean');
          let sent: any = null;
          try { sent = JSON.parse(a.lines[i]); } catch { /* not JSON: refused */ }
          if (sent !== null && typeof sent === 'object' && !Array.isArray(sent) && sent.id !== undefined) expect(r.id).toEqual(sent.id); // in order
          if (r.ok && !READ_ONLY.has(sent?.cmd)) changed = true;
        });
      } else if (a.kind === 'bytes' || a.kind === 'truncated') {
        const c = await rawClient(s.socket);
        c.send(a.kind === 'bytes' ? a.bytes : a.text);
        c.sock.end();
        await c.closed;
        const text = a.kind === 'bytes' ? Buffer.from(a.bytes).toString('latin1') : a.text;
        const complete = a.kind === 'bytes' ? text.split('\n').length - 1 : 0;
        // A line over the limit ends the connection with one refusal; otherwise one answer per complete line.
        const long = text.split('\n').some((l) => Buffer.byteLength(l, 'latin1') > 65536);
        if (!long) expect(c.lines.length).toBe(complete);
        for (const l of c.lines) expect(JSON.parse(l).ok === false || JSON.parse(l).ok === true).toBe(true);
        changed = c.lines.some((l) => JSON.parse(l).ok === true && !['pong'].includes(Object.keys(JSON.parse(l).result ?? {})[0]));
      } else if (a.kind === 'oversized') {
        const c = await rawClient(s.socket);
        c.send(`{"id":1,"cmd":"add-flow","args":{"flow":"${'x'.repeat(65536 + a.extra)}"}}\n`);
        await c.closed;
        expect(c.lines.length).toBe(1);
        expect(JSON.parse(c.lines[0]).error.message).toBe('request: longer than 65536 bytes; closing');
      } else if (a.kind === 'unread') {
        const c = await rawClient(s.socket, { read: false });
        let many = '';
        for (let i = 0; i < a.n; i++) many += `{"id":${i},"cmd":"show"}\n`;
        c.send(many);
        // Long enough for a service without bounds to make most of the replies (and hold them).
        await new Promise((r) => setTimeout(r, 300));
        c.sock.destroy();
      } else {
        const c = await rawClient(s.socket);
        c.send(Buffer.concat([Buffer.from(`{"id":"b","cmd":"inject","args":{"bytes":${a.declared},"port":"uplink0"}}\n`), a.bytes]));
        c.sock.end();
        await c.closed;
        expect(c.lines.length).toBe(1);
        const r = JSON.parse(c.lines[0]);
        expect(r.id).toBe('b');
        // Random bytes are not a pcap: refused (or, were they one, taken with the fault reported).
        if (r.ok) changed = true;
      }
      const rss = s.memory().rss;
      maxRss = Math.max(maxRss, rss);
      // +45 MB at most here; without the bounds of connection.ts, +141 MB and more.
      expect(rss - baseRss).toBeLessThan(100 * 1024);
      const after = await snapshot();
      if (!changed) {
        expect(after).toBe(before);
        compared++;
      }
      before = after;
      runs++;
      if (runs % 5 === 0) moved.push(await packetsIn());
    }), { numRuns: 150, seed: 17, endOnFailure: true });
    fuzzing = false;
    await beside;
    console.log(`fuzz: ${runs} runs (${compared} compared unchanged), ${injects} injects beside, RSS ${baseRss} -> max ${maxRss} kB`);
    expect(compared).toBeGreaterThan(runs / 2);
    // The inject beside kept forwarding: its counter moved between every five runs.
    let rising = 0;
    for (let i = 1; i < moved.length; i++) if (moved[i] > moved[i - 1]) rising++;
    expect(moved.length).toBe(1 + Math.floor(runs / 5));
    expect(rising).toBe(moved.length - 1);
    await s.stop();
  }, 300_000);
});
