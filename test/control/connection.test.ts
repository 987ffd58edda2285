/**
 * The control socket's bounds (connection.ts), against a real fpo run:
 * a client that does not read its replies, too many clients, and replies
 * in request order on one connection.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { MAX_CLIENTS, MAX_QUEUED } from '../../control/connection.js';
import { writePcap, eth, ipv4, udp } from '../../fixtures/packets.js';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { cleanTemp, tempDir } from '../helpers.js';
import { killAll, rawClient, startService } from './run-service.js';

afterAll(() => {
  killAll();
  cleanTemp();
});

describe('control socket back-pressure', () => {
  it('a client that pipelines 200 k requests and reads nothing holds a bounded amount of the service\'s memory; another client is served meanwhile; then it reads every reply, in order', async () => {
    const s = await startService();
    const N = 200_000;
    const base = s.memory().rss;
    const slow = await rawClient(s.socket, { read: false });
    // One write per 1000 requests; what the service does not read waits in this process and the kernel.
    for (let i = 0; i < N; i += 1000) {
      let chunk = '';
      for (let j = i; j < i + 1000; j++) chunk += `{"id":${j},"cmd":"show"}\n`;
      slow.send(chunk);
    }
    // Wait until the service stops taking the slow client's requests: its count holds still.
    const other = await rawClient(s.socket);
    let seen = -1;
    let steady = 0;
    let asked = 0;
    for (let i = 0; steady < 5; i++) {
      other.send(`{"id":${i},"cmd":"stats"}\n`);
      asked++;
      const st = JSON.parse((await other.waitLines(asked))[asked - 1]);
      expect(st.ok).toBe(true);
      const n = st.result.control.requests - asked; // the slow client's requests taken (this stats ask is counted)
      steady = n === seen ? steady + 1 : 0;
      seen = n;
      await new Promise((r) => setTimeout(r, 100));
    }
    // The replies made for the slow client wait in the service (at most MAX_QUEUED and the reply that
    // crossed it) and in the socket buffers of the two ends (each at most wmem_max/rmem_max, doubled
    // by the kernel's bookkeeping): worked out from the sizes, not from the service's counters.
    const took = seen;
    const showBytes = JSON.stringify({ id: 99999, ok: true, result: JSON.parse(s.ctl('--json', 'show').stdout) }).length + 1;
    const kernel = 2 * (Number(readFileSync('/proc/sys/net/core/wmem_max', 'utf8')) + Number(readFileSync('/proc/sys/net/core/rmem_max', 'utf8')));
    expect(took * showBytes).toBeLessThanOrEqual(MAX_QUEUED + showBytes + kernel);
    expect(took).toBeGreaterThan(0);
    const held = s.memory().rss - base;
    console.log(`slow client: the service took ${took} of ${N} requests (${took * showBytes} reply bytes); RSS +${held} kB`);
    expect(held).toBeLessThan(100 * 1024);
    // Still answering others.
    other.send('{"id":"p","cmd":"ping"}\n');
    expect(JSON.parse((await other.waitLines(asked + 1))[asked])).toEqual({ id: 'p', ok: true, result: { pong: true } });
    // Now the slow client reads: every reply, in request order.
    slow.sock.resume();
    const lines = await slow.waitLines(N);
    expect(lines.length).toBe(N);
    let inOrder = 0;
    for (let i = 0; i < N; i++) {
      const r = JSON.parse(lines[i]);
      if (r.id === i && r.ok === true) inOrder++;
    }
    expect(inOrder).toBe(N);
    slow.sock.destroy();
    other.sock.destroy();
    const fin = await s.stop();
    expect(fin.code).toBe(0);
    expect(JSON.parse(fin.stdout).control.requests).toBe(N + asked + 2); // and the show that sized a reply
  }, 120_000);
});

describe('control socket clients', () => {
  it(`${MAX_CLIENTS} clients are served; one more gets a one-line error and is closed, and is counted`, async () => {
    const s = await startService();
    const clients = [];
    for (let i = 0; i < MAX_CLIENTS; i++) clients.push(await rawClient(s.socket));
    // Every one of them is served (the last one too).
    for (const [i, c] of clients.entries()) c.send(`{"id":${i},"cmd":"ping"}\n`);
    let served = 0;
    for (const [i, c] of clients.entries()) {
      expect(JSON.parse((await c.waitLines(1))[0])).toEqual({ id: i, ok: true, result: { pong: true } });
      served++;
    }
    expect(served).toBe(MAX_CLIENTS);
    const extra = await rawClient(s.socket);
    extra.send('{"id":"x","cmd":"ping"}\n');
    await extra.closed;
    expect(extra.lines.length).toBe(1);
    const refusal = JSON.parse(extra.lines[0]);
    expect(refusal).toMatchObject({ id: null, ok: false, error: { code: 'FPO_ERR_CAPACITY' } });
    expect(refusal.error.message).toMatch(new RegExp(`clients: ${MAX_CLIENTS} connected`));
    // fpo ctl says so too, with exit 1.
    const r = s.ctl('ping');
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/clients: 64 connected, the most fpo run serves at once/);
    // One leaves: the next is served, and the refusals were counted.
    clients.pop()!.sock.destroy();
    let st: any = null;
    for (let i = 0; i < 100 && st === null; i++) {
      const t = s.ctl('--json', 'stats');
      if (t.status === 0) st = JSON.parse(t.stdout);
      else await new Promise((res) => setTimeout(res, 50));
    }
    expect(st.control.clientsRefused).toBe(2);
    expect(st.control.clients).toBe(MAX_CLIENTS); // 63 idle ones and this one
    for (const c of clients) c.sock.destroy();
    await s.stop();
  }, 60_000);
});

describe('request lines that arrive in pieces', () => {
  it('a request sent a few bytes at a time is answered; a line that passes 64 KiB in pieces is refused and closed', async () => {
    const s = await startService();
    const c = await rawClient(s.socket);
    const req = '{"id":"slow","cmd":"ping"}\n';
    let sent = 0;
    for (let i = 0; i < req.length; i += 3) {
      c.send(req.slice(i, i + 3));
      await new Promise((r) => setImmediate(r));
      sent++;
    }
    expect(sent).toBe(Math.ceil(req.length / 3));
    expect(JSON.parse((await c.waitLines(1))[0])).toEqual({ id: 'slow', ok: true, result: { pong: true } });
    // 70 pieces of 1000 bytes with no newline: past 65536 the service refuses and closes.
    for (let i = 0; i < 70 && !c.sock.destroyed; i++) {
      c.send('x'.repeat(1000));
      await new Promise((r) => setImmediate(r));
    }
    await c.closed;
    expect(c.lines.length).toBe(2);
    expect(JSON.parse(c.lines[1])).toEqual({ id: null, ok: false, error: { code: 'FPO_ERR_USAGE', message: 'request: longer than 65536 bytes; closing' } });
    await s.stop();
  }, 60_000);
});

describe('replies in request order', () => {
  it('an inject pipelined with pings on one connection is answered first, then the pings, in order', async () => {
    const dir = tempDir('order');
    const cap = join(dir, 'c.pcap');
    const frame = eth('02:00:00:00:00:01', '02:ee:00:00:00:01', 0x0800, ipv4({ src: '192.0.2.1', dst: '10.0.0.1', proto: 17 }, udp(1, 9, new Uint8Array(18))));
    writePcap(cap, Array.from({ length: 50_000 }, (_, i) => ({ sec: 1000, usec: i % 1_000_000, data: frame })));
    const body = readFileSync(cap);
    const s = await startService();
    const c = await rawClient(s.socket);
    c.send(Buffer.concat([
      Buffer.from(`{"id":"inj","cmd":"inject","args":{"bytes":${body.length},"port":"uplink0"}}\n`), body,
      Buffer.from('{"id":"p1","cmd":"ping"}\n{"id":"p2","cmd":"stats"}\n{"id":"p3","cmd":"ping"}\n'),
    ]));
    const lines = (await c.waitLines(4)).map((l) => JSON.parse(l));
    expect(lines.map((l) => l.id)).toEqual(['inj', 'p1', 'p2', 'p3']);
    expect(lines[0].result.packets).toEqual({ in: 50_000, out: 50_000, dropped: 0 });
    expect(lines[2].result.packets.in).toBe(50_000);
    c.sock.destroy();
    await s.stop();
  }, 60_000);
});
