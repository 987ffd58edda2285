/**
 * fpo ctl capture (control/capture.ts, control/ctl-capture.ts) against a real
 * fpo run: frames a port receives and sends, after the actions, marked with
 * their direction, in a pcapng file that tshark reads; the filter applied in
 * the service; a slow reader's frames dropped and counted while the switch
 * goes on; several captures at once up to the limit; hostile requests
 * refused with nothing changed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { eth, ipv4, udp, writePcap } from '../../fixtures/packets.js';
import { MAX_CAPTURES } from '../../control/capture.js';
import { CLI, FIXTURES, cleanTemp, needTool, tempDir, tsharkFields } from '../helpers.js';
import { killAll, rawClient, req, startService, type Svc } from './run-service.js';

afterAll(() => {
  killAll();
  cleanTemp();
});

const DEMO = join(FIXTURES, 'demo.pcap');

/** fpo ctl as a child that this test can signal; resolves with its exit and output. */
function ctlChild(svc: Svc, args: string[]): { proc: ChildProcess; done: Promise<{ status: number; stdout: string; stderr: string }> } {
  const proc = spawn(process.execPath, [CLI, 'ctl', '-s', svc.socket, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stdout!.on('data', (d) => (stdout += d));
  proc.stderr!.on('data', (d) => (stderr += d));
  const done = new Promise<{ status: number; stdout: string; stderr: string }>((resolve) => proc.on('exit', (code) => resolve({ status: code ?? -1, stdout, stderr })));
  return { proc, done };
}

/** Waits until the service says `n` captures are running (a hang here is the test's timeout). */
async function running(svc: Svc, n: number): Promise<any> {
  for (;;) {
    const st = await req(svc.socket, 'stats');
    if (st.result.captures.running === n) return st.result;
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Frames of a pcap or pcapng file as tshark reads them: bytes in hex, in order. */
function frameBytes(file: string): string[] {
  return tsharkFields(file, ['frame.number', 'eth.src', 'eth.dst', 'frame.len', 'vlan.id', 'ip.src', 'ip.dst', 'udp.srcport', 'udp.dstport']).map((f) => f.slice(1).join('|'));
}

describe('fpo ctl capture', () => {
  it('a port\'s sent frames, after the actions (VLAN tag popped), and its received ones, each marked, in pcapng that tshark reads', async (ctx) => {
    needTool(ctx, 'tshark', 'the capture file is checked with tshark');
    const svc = await startService();
    const dir = tempDir('cap');
    const vf3 = join(dir, 'vf3.pcapng');
    const up = join(dir, 'up.pcapng');
    const a = ctlChild(svc, ['capture', 'vf3', '-w', vf3]);
    const b = ctlChild(svc, ['capture', 'uplink0', '--filter', 'vlan 20 and ether dst 02:00:00:00:00:03', '-w', up]);
    await running(svc, 2);
    expect(svc.ctl('inject', DEMO).status).toBe(0);
    a.proc.kill('SIGINT');
    b.proc.kill('SIGINT');
    const [ra, rb] = await Promise.all([a.done, b.done]);
    expect(ra.status, ra.stderr).toBe(0);
    expect(rb.status, rb.stderr).toBe(0);
    // vf3 sent exactly what its own output capture holds (the tag popped), every frame marked outbound.
    const sent = frameBytes(vf3);
    expect(sent.length).toBeGreaterThan(100);
    expect(sent).toEqual(frameBytes(join(svc.out, 'vf3.pcap')));
    expect(new Set(tsharkFields(vf3, ['frame.packet_flags_direction']).map((f) => f[0]))).toEqual(new Set(['0x00000002']));
    expect(tsharkFields(vf3, ['vlan.id']).every((f) => f[0] === '')).toBe(true);
    expect(new Set(tsharkFields(vf3, ['frame.interface_name']).map((f) => f[0]))).toEqual(new Set(['vf3']));
    // uplink0 received them tagged: the filter (in the service) kept only those, marked inbound.
    const got = tsharkFields(up, ['vlan.id', 'eth.dst', 'frame.packet_flags_direction']);
    expect(got.length).toBe(100);
    expect(got.every((f) => f[0] === '20' && f[1] === '02:00:00:00:00:03' && f[2] === '0x00000001')).toBe(true);
    expect(ra.stderr).toContain(`${sent.length} frames captured (${sent.length} passed the filter in fpo run, none dropped)`);
    const st = await running(svc, 0);
    expect(st.captures.started).toBe(2);
    await svc.stop();
  }, 60_000);

  it('-c COUNT ends by itself after COUNT frames; without -w one line a frame, direction first', async () => {
    const svc = await startService();
    const c = ctlChild(svc, ['capture', 'uplink0', '--filter', 'udp and dst port 161', '-c', '3']);
    await running(svc, 1);
    expect(svc.ctl('inject', DEMO).status).toBe(0);
    const r = await c.done;
    expect(r.status, r.stderr).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines.length).toBe(3);
    for (const l of lines) expect(l).toMatch(/^\d\d:\d\d:\d\d\.\d{6} In {2}02:ee:00:00:00:01 > 02:00:00:00:00:0\d, IPv4 [\d.]+ > [\d.]+ udp \d+ > 161, length \d+$/);
    expect(r.stderr).toBe('3 frames captured (3 passed the filter in fpo run, none dropped)\n');
    await running(svc, 0);
    // The port takes its direct copies again: a second inject is written as before.
    expect(svc.ctl('inject', DEMO).status).toBe(0);
    const st = await req(svc.socket, 'stats');
    expect(st.result.packets.in).toBe(2 * 671);
    await svc.stop();
  }, 60_000);

  it('a reader that does not read costs the switch nothing: its frames are dropped and counted, the inject goes through whole', async () => {
    const dir = tempDir('capslow');
    const big = join(dir, 'big.pcap');
    // 60 000 frames of 150 bytes from the uplink to vm1: ~11 MB of capture stream, more than the bound and the socket's buffers.
    const frame = eth('02:00:00:00:00:01', '02:ee:00:00:00:01', 0x0800, ipv4({ src: '192.0.2.1', dst: '10.0.0.1', proto: 17 }, udp(1000, 2000, new Uint8Array(108))));
    writePcap(big, Array.from({ length: 60_000 }, (_, i) => ({ sec: 1, usec: i, data: frame })));
    const svc = await startService();
    // A client of our own (bytes, not text), paused from the start: it reads nothing while the inject runs.
    const slow = connect(svc.socket);
    slow.pause();
    const closed = new Promise((r) => slow.on('close', r));
    slow.write(JSON.stringify({ id: 7, cmd: 'capture', args: { port: 'uplink0' } }) + '\n');
    await running(svc, 1);
    const r = svc.ctl('inject', big);
    expect(r.status, r.stderr).toBe(0);
    const st = (await req(svc.socket, 'stats')).result;
    expect(st.packets.in).toBe(60_000);
    expect(st.packets.in).toBe(st.packets.out + st.packets.dropped);
    // Now read everything: the ok line, the stream, and at the end (after our half-close) the statistics block.
    const chunks: Buffer[] = [];
    slow.on('data', (d: Buffer) => chunks.push(d));
    slow.resume();
    slow.end();
    await closed;
    const all = Buffer.concat(chunks);
    const nl = all.indexOf(10);
    expect(JSON.parse(all.subarray(0, nl).toString())).toMatchObject({ id: 7, ok: true, result: { port: 'uplink0', format: 'pcapng' } });
    const isb = all.subarray(all.length - 52);
    expect(isb.readUInt32LE(0)).toBe(5);
    const matched = Number(isb.readBigUInt64LE(24));
    const dropped = Number(isb.readBigUInt64LE(36));
    let frames = 0;
    for (let at = nl + 1; at < all.length - 52; at += all.readUInt32LE(at + 4)) if (all.readUInt32LE(at) === 6) frames++;
    expect(matched).toBe(60_000);
    expect(dropped).toBeGreaterThan(0);
    expect(frames + dropped).toBe(matched);
    await svc.stop();
  }, 120_000);

  it(`${MAX_CAPTURES} captures at once; one more is refused until one ends`, async () => {
    const svc = await startService();
    const clients = await Promise.all(Array.from({ length: MAX_CAPTURES }, () => rawClient(svc.socket)));
    clients.forEach((c, i) => c.send(JSON.stringify({ id: i, cmd: 'capture', args: { port: i % 2 ? 'vf1' : 'uplink0' } }) + '\n'));
    await running(svc, MAX_CAPTURES);
    const more = await req(svc.socket, 'capture', { port: 'vf2' });
    expect(more).toMatchObject({ ok: false, error: { code: 'FPO_ERR_CAPACITY' } });
    expect(more.error.message).toContain(`${MAX_CAPTURES} captures are running`);
    clients[0].sock.destroy();
    await running(svc, MAX_CAPTURES - 1);
    const again = ctlChild(svc, ['capture', 'vf2', '-c', '1']);
    await running(svc, MAX_CAPTURES);
    for (const c of clients.slice(1)) c.sock.end();
    await running(svc, 1);
    again.proc.kill('SIGINT');
    const r = await again.done;
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toContain('0 frames captured');
    await svc.stop();
  }, 60_000);

  it('ctl: a refused capture says why, exits 1 and leaves no -w file', async () => {
    const svc = await startService();
    const dir = tempDir('caprefuse');
    const f = join(dir, 'x.pcapng');
    const cases: [string[], string][] = [
      [['capture', 'nosuch', '-w', f], 'fpo: capture: port: no port named "nosuch"\n'],
      [['capture', 'vf1', '--filter', 'udp and and', '-w', f], 'fpo: capture: filter "udp and and": libpcap: can\'t parse filter expression: syntax error\n'],
      [['capture', 'vf1', '--filter', 'ip6 and arp[0] = 1 and tcp[999999999999] = 1', '-w', f], 'fpo: capture: filter "ip6 and arp[0] = 1 and tcp[999999999999] = 1": libpcap: '],
      [['capture', 'vf1', '-c', '4294967296', '-w', f], 'fpo: capture: count: expected an integer in 1..2147483647, got 4294967296\n'],
    ];
    for (const [args, err] of cases) {
      const r = svc.ctl(...args);
      expect(r.status).toBe(1);
      expect(r.stderr.startsWith(err)).toBe(true);
      expect(existsSync(f)).toBe(false);
    }
    const usage = svc.ctl('capture', 'vf1', '-c', 'lots');
    expect(usage.status).toBe(2);
    expect(usage.stderr).toContain('-c: expected a whole number of frames, got "lots"');
    expect((await req(svc.socket, 'stats')).result.captures).toEqual({ running: 0, started: 0, refused: 4 });
    await svc.stop();
  }, 60_000);

  it('fuzz: random capture requests are refused naming the field, or run; the switch is unchanged either way', async () => {
    const svc = await startService();
    const before = { show: await req(svc.socket, 'show'), flows: await req(svc.socket, 'dump-flows') };
    const ports = ['uplink0', 'vf1', 'vf5', 'VF1', '', 'vf1 ', '__proto__', 'constructor', 'x'.repeat(5000)];
    const filters = ['udp', 'tcp port 80', 'vlan 20', 'inbound', 'ether[0] & 1 = 1', 'udp and and', 'host', 'port 99999', 'ip[', '\u0000udp', 'udp\nor tcp', 'x'.repeat(5000), ''];
    const value = fc.oneof(fc.constantFrom<unknown>(null, true, [], {}, -1, 0, 1.5, 2 ** 31, 2 ** 53, 'lots', '5'), fc.integer(), fc.string());
    const arb = fc.record({
      // Weighted toward good values, so that every run has requests that run as well as ones refused.
      port: fc.oneof({ arbitrary: fc.constantFrom('uplink0', 'vf1'), weight: 4 }, fc.constantFrom(...ports), fc.string(), value),
      filter: fc.option(fc.oneof({ arbitrary: fc.constantFrom('udp', 'vlan 20', 'inbound'), weight: 3 }, fc.constantFrom(...filters), fc.string(), value), { nil: undefined }),
      count: fc.option(fc.oneof(fc.integer({ min: 1, max: 10 }), value), { nil: undefined }),
      extra: fc.option(fc.constantFrom('snaplen', 'file', '__proto__', 'Port'), { nil: undefined }),
    });
    let ran = 0;
    let refused = 0;
    await fc.assert(fc.asyncProperty(arb, async (a) => {
      const args: Record<string, unknown> = { port: a.port };
      if (a.filter !== undefined) args.filter = a.filter;
      if (a.count !== undefined) args.count = a.count;
      // Written by hand: an extra key such as "__proto__" must reach the service as a key.
      const fields = [...(a.extra ? [`${JSON.stringify(a.extra)}:1`] : []), ...Object.entries(args).map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`)];
      const body = `{"id":1,"cmd":"capture","args":{${fields.join(',')}}}`;
      const c = await rawClient(svc.socket);
      c.send(body + '\n');
      const [first] = await c.waitLines(1);
      const ans = JSON.parse(first);
      if (ans.ok) {
        ran++;
        c.sock.destroy();
      } else {
        refused++;
        expect(ans.error.code).toMatch(/^FPO_ERR_(USAGE|BAD_FILTER)$/);
        expect(ans.error.message).toMatch(/^(port|filter|count|args)(: | ")/);
        c.sock.destroy();
      }
      await running(svc, 0);
    }), { numRuns: 150 });
    expect(ran).toBeGreaterThan(0);
    expect(refused).toBeGreaterThan(0);
    expect(await req(svc.socket, 'show')).toEqual(before.show);
    expect(await req(svc.socket, 'dump-flows')).toEqual(before.flows);
    // And the switch switches as before: the demo goes through, in = out + dropped.
    expect(svc.ctl('inject', DEMO).status).toBe(0);
    const st = (await req(svc.socket, 'stats')).result;
    expect(st.packets).toMatchObject({ in: 671, out: 621, dropped: 50 });
    await svc.stop();
  }, 180_000);
});
