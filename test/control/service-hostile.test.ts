import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { eth, ipv4, udp, writePcap } from '../../fixtures/packets.js';
import { CLI, cleanTemp, runCli, tempDir } from '../helpers.js';
import { TOPO, killAll, rawClient, startService } from './run-service.js';

// What a hostile review of `fpo run` found after issue 17's first slices (each failed before its fix).

afterAll(() => {
  killAll();
  cleanTemp();
});

const pkt = (i: number) => eth('02:00:00:00:00:01', '02:ee:00:00:00:01', 0x0800, ipv4({ src: '192.0.2.1', dst: '10.0.0.1', proto: 17 }, udp(1000 + i, 9, new Uint8Array(20))));
function capture(dir: string, n = 10): string {
  const p = join(dir, `c${n}.pcap`);
  writePcap(p, Array.from({ length: n }, (_, i) => ({ sec: 1_700_000_000, usec: i, data: pkt(i) })));
  return p;
}
const show = (socket: string) => JSON.parse(runCli(['ctl', '-s', socket, '--json', 'show']).stdout);

describe('fpo run: one state, one service', () => {
  it('a second fpo run on the same state file is refused before it changes anything; the first keeps its changes', async () => {
    const out = tempDir('two');
    const a = await startService({ out, socket: join(out, 'a.sock') });
    expect(a.ctl('migrate', 'vm1-eth0', '--to', 'vf5').status).toBe(0);
    const stateBefore = readFileSync(join(out, 'fpo-state.json'), 'utf8');
    const b = runCli(['run', '-t', TOPO, '-s', join(out, 'b.sock'), '-o', out], { timeout: 20_000 });
    expect(b.status).toBe(1);
    expect(b.stderr).toMatch(new RegExp(`fpo-state\\.json: \\(lock\\): in use by another fpo run \\(pid ${a.proc.pid}, .*fpo-state\\.json\\.lock\\); stop it, or give this service another --out or --state`));
    expect(readFileSync(join(out, 'fpo-state.json'), 'utf8')).toBe(stateBefore);
    expect(existsSync(join(out, 'b.sock'))).toBe(false);
    const r = await a.stop();
    expect(r.code).toBe(0);
    expect(JSON.parse(readFileSync(join(out, 'fpo-state.json'), 'utf8')).ports['vm1-eth0']).toBe('vf5');
    expect(existsSync(join(out, 'fpo-state.json.lock'))).toBe(false); // given back at stop
  });

  it('a lock left by a killed service is taken over', async () => {
    const out = tempDir('stale-lock');
    const a = await startService({ out });
    expect(existsSync(join(out, 'fpo-state.json.lock'))).toBe(true);
    await a.stop('SIGKILL');
    expect(existsSync(join(out, 'fpo-state.json.lock'))).toBe(true);
    const b = await startService({ out, socket: join(out, 'b.sock') });
    expect(b.ctl('ping').status).toBe(0);
    expect((await b.stop()).code).toBe(0);
  });

  it('--state naming a port\'s capture is refused (the capture would be overwritten by the state)', () => {
    const out = tempDir('state-is-capture');
    const r = runCli(['run', '-t', TOPO, '-s', join(out, 's.sock'), '-o', out, '--state', join(out, 'vf2.pcap')], { timeout: 20_000 });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/--state .*vf2\.pcap: is port vf2's capture; give the state a file of its own/);
  });

  it('a state file that is a symlink is refused, and one that is not JSON is refused without showing its bytes', () => {
    const out = tempDir('state-link');
    writeFileSync(join(out, 'secret'), 'root:x:0:0:root:/root:/bin/bash\n');
    symlinkSync(join(out, 'secret'), join(out, 'fpo-state.json'));
    const r = runCli(['run', '-t', TOPO, '-s', join(out, 's.sock'), '-o', out], { timeout: 20_000 });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/fpo-state\.json: \(file\): a symbolic link: give the file's own path/);
    const out2 = tempDir('state-bytes');
    writeFileSync(join(out2, 'fpo-state.json'), 'root:x:0:0:root:/root:/bin/bash\n');
    const r2 = runCli(['run', '-t', TOPO, '-s', join(out2, 's.sock'), '-o', out2], { timeout: 20_000 });
    expect(r2.status).toBe(1);
    expect(r2.stderr).toMatch(/fpo-state\.json: \(file\): not JSON: cannot be parsed/);
    expect(r2.stderr).not.toMatch(/root/);
  });
});

describe('fpo run: a start that fails leaves nothing running', () => {
  it('refused for a live socket with --metrics, it exits 1 and serves no metrics', async () => {
    const out = tempDir('live-sock');
    const a = await startService({ out, socket: join(out, 's.sock') });
    const port = await new Promise<number>((resolve) => {
      const s = createServer().listen(0, '127.0.0.1', () => { const p = (s.address() as { port: number }).port; s.close(() => resolve(p)); });
    });
    const out2 = tempDir('live-sock2');
    const r = spawnSync(process.execPath, [CLI, 'run', '-t', TOPO, '-s', join(out, 's.sock'), '-o', out2, '--metrics', `127.0.0.1:${port}`], { encoding: 'utf8', timeout: 15_000 });
    expect(r.signal).toBe(null); // exited by itself (before: alive, serving metrics, until killed)
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/listening on this socket already/);
    expect(existsSync(join(out2, 'fpo-state.json.lock'))).toBe(false);
    expect(a.ctl('ping').status).toBe(0);
    await a.stop();
  });

  it('SIGTERM with the state folder gone: the final counters are printed, then the error, exit 1', async () => {
    const out = tempDir('gone');
    const state = join(tempDir('gone-state'), 'sub', 'state.json');
    spawnSync('mkdir', ['-p', join(state, '..')]);
    const a = await startService({ out, extra: ['--state', state] });
    expect(a.ctl('inject', capture(tempDir('gone-cap'))).status).toBe(0);
    spawnSync('rm', ['-rf', join(state, '..')]);
    const r = await a.stop();
    expect(r.code).toBe(1);
    const last = JSON.parse(r.stdout.trim().split('\n').pop()!);
    expect(last.packets.in).toBe(10);
    expect(a.output().stderr).toMatch(/cannot write the state/);
  });
});

describe('fpo run: injects and request keys', () => {
  it('an inject whose client stops sending is cut after BODY_IDLE_MS; the next inject goes through', async () => {
    const a = await startService();
    const cap = capture(tempDir('stall'));
    const bytes = readFileSync(cap);
    const holder = await rawClient(a.socket);
    holder.send(JSON.stringify({ id: 1, cmd: 'inject', args: { bytes: bytes.length + 1000, port: 'vf1' } }) + '\n');
    holder.send(bytes); // 1000 bytes short, and the connection kept open
    await new Promise((r) => setTimeout(r, 300)); // the holder's inject is under way before the next comes (runCli blocks this process)
    const next = runCli(['ctl', '-s', a.socket, '--json', 'inject', cap, '--port', 'vf2'], { timeout: 30_000 });
    expect(next.status).toBe(0); // before: never answered (the holder held every inject)
    expect(JSON.parse(next.stdout).packets.in).toBe(10);
    await holder.closed; // the service closed the holder's connection
    const st = JSON.parse(a.ctl('--json', 'stats').stdout);
    expect(st.packets.in).toBe(20); // the holder's 10 whole records went in, then the cut; vf2's 10
    expect(st.packets.in).toBe(st.packets.out + st.packets.dropped);
    await a.stop();
  }, 60_000);

  it('an inject whose client went away mid-send before its turn injects nothing', async () => {
    const a = await startService();
    const cap = capture(tempDir('gone-turn'));
    const bytes = readFileSync(cap);
    const holder = await rawClient(a.socket);
    holder.send(JSON.stringify({ id: 1, cmd: 'inject', args: { bytes: bytes.length + 10, port: 'vf1' } }) + '\n');
    holder.send(bytes);
    const waiter = await rawClient(a.socket);
    waiter.send(JSON.stringify({ id: 2, cmd: 'inject', args: { bytes: bytes.length, port: 'vf2' } }) + '\n');
    waiter.send(bytes.subarray(0, bytes.length - 30)); // nine whole records and part of the tenth
    await new Promise((r) => setTimeout(r, 300));
    waiter.sock.destroy(); // gone before its turn, mid-send (a ctl killed by its timeout)
    holder.send(new Uint8Array(10)); // the holder's inject ends (10 bytes of a cut record)
    await holder.waitLines(1);
    await new Promise((r) => setTimeout(r, 300));
    const st = JSON.parse(a.ctl('--json', 'stats').stdout);
    expect(st.ports.find((p: { name: string }) => p.name === 'vf1').rxPackets).toBe(10);
    expect(st.ports.find((p: { name: string }) => p.name === 'vf2').rxPackets).toBe(0); // before: 9, injected for no one
    await a.stop();
  });

  it('inject\'s args and a request\'s own keys are checked by name; the refused inject\'s body is skipped, and nothing changes', async () => {
    const a = await startService();
    const before = show(a.socket);
    const bytes = readFileSync(capture(tempDir('keys')));
    const c = await rawClient(a.socket);
    c.send(JSON.stringify({ id: 1, cmd: 'inject', args: { bytes: bytes.length, prot: 'vf1' } }) + '\n');
    c.send(bytes);
    c.send(JSON.stringify({ id: 2, cmd: 'show', pad: 1 }) + '\n');
    c.send(JSON.stringify({ id: 3, cmd: 'migrate', arg: { interface: 'vm1-eth0', to: 'vf5' } }) + '\n');
    c.send(JSON.stringify({ id: 4, cmd: 'ping' }) + '\n');
    const lines = (await c.waitLines(4)).map((l) => JSON.parse(l));
    expect(lines.map((l) => [l.id, l.ok])).toEqual([[1, false], [2, false], [3, false], [4, true]]);
    expect(lines[0].error.message).toBe('args: unknown field "prot"; inject takes bytes, name, port');
    expect(lines[1].error.message).toBe('request: unknown field "pad"; a request has id, cmd, args');
    expect(lines[2].error.message).toBe('request: unknown field "arg"; a request has id, cmd, args');
    expect(show(a.socket)).toEqual(before);
    expect(JSON.parse(a.ctl('--json', 'stats').stdout).packets.in).toBe(0);
    await a.stop();
  });
});
