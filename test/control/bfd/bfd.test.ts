import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { BfdEndpoint } from '../../../control/bfd/endpoint.js';
import { Auth } from '../../../control/bfd/auth.js';
import { DIAG, STATE, decode, encode } from '../../../control/bfd/packet.js';

/** The BFD packets of a capture: time (ms), IPv4 source, state. */
function bfdOnWire(path: string): { t: number; src: string; state: number }[] {
  const r = new CaptureReader(path);
  const b = new PacketBatch(64);
  const out: { t: number; src: string; state: number }[] = [];
  while (r.fill(b, 0) > 0) {
    for (let i = 0; i < b.count; i++) {
      const o = b.off[i];
      const d = b.buf;
      if (b.caplen[i] < 14 + 20 + 8 + 24 || d[o + 12] !== 0x08 || d[o + 13] !== 0) continue;
      const ihl = (d[o + 14] & 15) * 4;
      out.push({ t: b.tsA[i] * 1000 + b.tsB[i] / (r.nanos ? 1e6 : 1e3), src: `${d[o + 26]}.${d[o + 27]}.${d[o + 28]}.${d[o + 29]}`, state: d[o + 14 + ihl + 8 + 1] >> 6 });
    }
  }
  r.close();
  return out;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) { if (cond()) return true; await sleep(20); }
  return cond();
}

function packet(over: Partial<Record<string, number | boolean>> = {}): Uint8Array {
  const b = new Uint8Array(24);
  encode({ diag: 0, state: STATE.Up, poll: false, final: false, cpi: false, demand: false, detectMult: 3, myDisc: 7, yourDisc: 9, desiredMinTx: 300000, requiredMinRx: 300000, requiredMinEchoRx: 0, ...over } as never, b);
  return b;
}

describe('BFD packets (RFC 5880 §4.1, §6.8.6)', () => {
  it('encode then decode gives the packet back', () => {
    const p = decode(packet({ poll: true, diag: DIAG.pathDown }));
    expect(typeof p).toBe('object');
    expect(p).toMatchObject({ version: 1, state: STATE.Up, poll: true, final: false, diag: DIAG.pathDown, detectMult: 3, myDisc: 7, yourDisc: 9, desiredMinTx: 300000 });
  });
  it('each malformed packet is discarded with its reason', () => {
    const b = packet(); b[0] = (2 << 5); expect(decode(b)).toBe('version');
    expect(decode(packet().subarray(0, 20))).toBe('short');
    expect(decode(packet({ detectMult: 0 }))).toBe('detectMult');
    expect(decode(packet({ myDisc: 0 }))).toBe('myDisc');
    expect(decode(packet({ yourDisc: 0 }))).toBe('yourDisc');
    expect(decode(packet({ yourDisc: 0, state: STATE.Down }))).toMatchObject({ state: STATE.Down });
    const l = packet(); l[3] = 40; expect(decode(l)).toBe('length');
    const m = packet(); m[1] |= 1; expect(decode(m)).toBe('multipoint');
    const a = packet(); a[1] |= 4; a[3] = 24; expect(decode(a)).toBe('length');
  });
  it('random and near-valid packets: the decoder agrees with a validity model of §6.8.6, and what decodes re-encodes to the same bytes (property)', () => {
    // The model, written apart from the decoder: the reception checks of RFC 5880 §6.8.6 in
    // the RFC's order, for an endpoint with no authentication configured.
    const model = (b: Uint8Array): string => {
      if (b.length < 24) return 'short';
      if (b[0] >> 5 !== 1) return 'version';
      const a = (b[1] & 0x04) !== 0;
      if (b[3] < (a ? 26 : 24) || b[3] > b.length) return 'length';
      if (b[2] === 0) return 'detectMult';
      if (b[1] & 0x01) return 'multipoint';
      const word = (o: number) => b[o] * 2 ** 24 + b[o + 1] * 2 ** 16 + b[o + 2] * 2 ** 8 + b[o + 3];
      if (word(4) === 0) return 'myDisc';
      if (word(8) === 0 && b[1] >> 6 !== STATE.Down && b[1] >> 6 !== STATE.AdminDown) return 'yourDisc';
      if (a) return 'auth';
      return 'valid';
    };
    // Near-valid packets reach every check: each field from a few telling values.
    const near = fc.record({
      vers: fc.constantFrom(1, 1, 1, 0, 2, 7), diag: fc.integer({ min: 0, max: 31 }), state: fc.integer({ min: 0, max: 3 }),
      flags: fc.constantFrom(0, 0, 0x20, 0x10, 0x08, 0x02, 0x01, 0x04, 0x3e), mult: fc.constantFrom(3, 1, 255, 0),
      extra: fc.constantFrom(0, 0, 0, 2, 4, 28), lenDelta: fc.constantFrom(0, 0, 0, -1, -2, 1, 2),
      my: fc.constantFrom(7, 0, 0xffffffff), your: fc.constantFrom(9, 0, 0x80000000),
      tx: fc.integer({ min: 0, max: 0xffffffff }), rx: fc.integer({ min: 0, max: 0xffffffff }), echo: fc.integer({ min: 0, max: 0xffffffff }),
    }).map((f) => {
      const b = new Uint8Array(24 + f.extra);
      const v = new DataView(b.buffer);
      b[0] = (f.vers << 5) | f.diag;
      b[1] = (f.state << 6) | f.flags;
      b[2] = f.mult;
      b[3] = Math.max(0, Math.min(255, 24 + f.extra + f.lenDelta));
      v.setUint32(4, f.my);
      v.setUint32(8, f.your);
      v.setUint32(12, f.tx);
      v.setUint32(16, f.rx);
      v.setUint32(20, f.echo);
      return b;
    });
    const seen = new Set<string>();
    fc.assert(fc.property(fc.oneof(fc.uint8Array({ maxLength: 80 }), near), (b) => {
      const r = decode(b);
      const want = model(b);
      seen.add(want);
      if (want !== 'valid') {
        expect(r).toBe(want);
        return;
      }
      if (typeof r === 'string') throw new Error(`decoder discarded a valid packet as ${r}`);
      // Re-encoding gives the same 24 bytes (the length field aside: encode writes 24).
      const out = new Uint8Array(24);
      encode(r, out);
      const head = b.slice(0, 24);
      head[3] = 24;
      expect(Array.from(out)).toEqual(Array.from(head));
      expect(r.length).toBe(b[3]);
    }), { numRuns: 20_000 });
    // The generator reached every outcome, so the agreement above means something.
    expect([...seen].sort()).toEqual(['auth', 'detectMult', 'length', 'multipoint', 'myDisc', 'short', 'valid', 'version', 'yourDisc']);
  });
});

describe('GTSM: the TTL of received packets (RFC 5881 §5)', () => {
  it('a BFD packet whose TTL is not 255 is discarded and counted; one at 255 is taken', async (ctx) => {
    needRoot(ctx, 'the TTL check reads a raw socket');
    const ep = new BfdEndpoint('127.0.0.3', 25784);
    await ep.listen();
    const { createSocket } = await import('node:dgram');
    const tx = createSocket('udp4');
    await new Promise<void>((r) => tx.bind(0, '127.0.0.4', () => r()));
    try {
      const pkt = packet({ state: STATE.Down, yourDisc: 0 });
      tx.setTTL(64);
      tx.send(pkt, 25784, '127.0.0.3');
      expect(await until(() => ep.discards.ttl === 1, 2000)).toBe(true);
      tx.setTTL(255);
      tx.send(pkt, 25784, '127.0.0.3');
      expect(await until(() => ep.discards.unknownSession === 1, 2000)).toBe(true); // passed the TTL check; no session for it
      expect(ep.ttlUnchecked).toBe(0);
    } finally {
      tx.close();
      await ep.close();
    }
  });
});

describe('BFD sessions between two fpo endpoints', () => {
  it('come Up, follow a Poll/Final interval change, and detect a dead peer within the detection time', async () => {
    const a = new BfdEndpoint('127.0.0.1', 23784);
    const b = new BfdEndpoint('127.0.0.2', 23784);
    await a.listen();
    await b.listen();
    try {
      const sa = await a.add('127.0.0.2', { txUs: 50_000, rxUs: 50_000, detectMult: 3 }, 23784);
      const sb = await b.add('127.0.0.1', { txUs: 50_000, rxUs: 50_000, detectMult: 3 }, 23784);
      expect(await until(() => sa.state === STATE.Up && sb.state === STATE.Up, 5000)).toBe(true);
      // Poll/Final: A slows to 100 ms; B learns it once the sequence completes.
      sa.setIntervals(100_000, 100_000);
      expect(await until(() => sb.remoteDesiredTxUs === 100_000, 2000)).toBe(true);
      expect(await until(() => !(sa as unknown as { pollPending: boolean }).pollPending, 2000)).toBe(true);
      // B dies: A goes Down after remote detect mult × max(A's rx, B's tx) = 3 × 100 ms, plus at most 10 %.
      let lastRx = 0;
      const recv = sa.receive.bind(sa);
      sa.receive = (p) => { lastRx = performance.now(); recv(p); };
      await sleep(300);
      let downAt = 0;
      a.onChange = (_p, _s, _f, to) => { if (to === 'Down') downAt = performance.now(); };
      await b.close();
      expect(await until(() => sa.state === STATE.Down, 2000)).toBe(true);
      expect(sa.diag).toBe(DIAG.controlDetectionTimeExpired);
      expect(downAt - lastRx).toBeLessThanOrEqual(300 * 1.1);
      expect(downAt - lastRx).toBeGreaterThanOrEqual(290);
    } finally {
      await a.close();
    }
  }, 30_000);
});

import { needFrr, frrDown, frrPeer, frrUp, FRR_DIR as D, FRR_DIR } from './frr.js';
import { CLI, needRoot, needTool, runCli, tempDir } from '../../helpers.js';
import { PacketBatch } from '../../../datapath/batch.js';
import { CaptureReader } from '../../../datapath/ports/capture-reader.js';
import { benchTopology, generate } from '../../../bench/gen-capture.js';

// The FRR tests share one namespace, so they live in this one file (files run in parallel).

afterAll(frrDown);


describe('interop with FRR bfdd', () => {
  for (const ms of [300, 50]) {
    it(`reaches Up with FRR, detects FRR's death within 3 × ${ms} ms + 10 % (at least 20 ms), and FRR accepts a Poll/Final interval change and sees our AdminDown`, async (ctx) => {
      needFrr(ctx);
      frrUp(ms);
      const a = new BfdEndpoint('10.90.0.1');
      await a.listen();
      try {
        const s = await a.add('10.90.0.2', { txUs: ms * 1000, rxUs: ms * 1000, detectMult: 3 });
        expect(await until(() => s.state === STATE.Up && frrPeer().status === 'up', 15_000), JSON.stringify(frrPeer())).toBe(true);
        // Poll/Final: a new interval, accepted by FRR.
        s.setIntervals(ms * 2000, ms * 2000);
        expect(await until(() => frrPeer()['remote-transmit-interval'] === ms * 2, 5000), JSON.stringify(frrPeer())).toBe(true);
        s.setIntervals(ms * 1000, ms * 1000);
        expect(await until(() => frrPeer()['remote-transmit-interval'] === ms, 5000)).toBe(true);
        // AdminDown with its diagnostic: FRR shows the session down and why.
        s.adminDown(DIAG.administrativelyDown);
        expect(await until(() => frrPeer().status === 'down', 5000), JSON.stringify(frrPeer())).toBe(true);
        expect(String(frrPeer()['remote-diagnostic'])).toMatch(/administratively/);
        s.adminUp();
        expect(await until(() => s.state === STATE.Up && frrPeer().status === 'up', 15_000)).toBe(true);
        // FRR dies: we go Down within the detection time, measured on the wire: tcpdump on
        // the veth, from FRR's last BFD packet to our first packet that is not Up.
        const cap = join(tempDir('bfdcap'), 'veth.pcap');
        const dump = spawn('tcpdump', ['-i', 'fpobfd0', '--immediate-mode', '-w', cap, '-U', 'udp port 3784'], { stdio: ['ignore', 'ignore', 'pipe'] });
        let dumpErr = '';
        dump.stderr!.on('data', (d) => (dumpErr += d));
        expect(await until(() => dumpErr.includes('listening on'), 5000)).toBe(true);
        await sleep(1000);
        expect(s.state).toBe(STATE.Up);
        execFileSync('kill', ['-9', readFileSync(`${D}/bfdd.pid`, 'utf8').trim()]);
        expect(await until(() => s.state === STATE.Down, 5000)).toBe(true);
        await sleep(500);
        dump.kill('SIGINT');
        await new Promise((r) => dump.on('exit', r));
        const wire = bfdOnWire(cap);
        const lastFrr = Math.max(...wire.filter((p) => p.src === '10.90.0.2').map((p) => p.t));
        const firstDown = Math.min(...wire.filter((p) => p.src === '10.90.0.1' && p.t > lastFrr && p.state !== STATE.Up).map((p) => p.t));
        const gap = firstDown - lastFrr;
        // Within the detection time, plus 10 % or 20 ms, whichever is more: a user-space timer here (2 vCPUs) fires late
        // at times — seen once in a clean CI run: 166.4 ms at 3 × 50 ms, its Down 16 ms past the detection time.
        expect(gap, `on the wire: ${gap.toFixed(1)} ms`).toBeLessThanOrEqual(3 * ms + Math.max(0.3 * ms, 20));
        expect(gap).toBeGreaterThan(3 * ms * 0.9);
        expect(a.discards).toEqual({});
      } finally {
        await a.close();
        frrDown();
      }
    }, 60_000);
  }
});

const procs: ChildProcess[] = [];
afterAll(() => { for (const p of procs) p.kill('SIGKILL'); });

function agent(sock: string): { proc: ChildProcess; out: () => string } {
  const proc = spawn(process.execPath, [CLI, 'agent', '--socket', sock, '--name', 'vm1']);
  procs.push(proc);
  let out = '';
  proc.stdout!.on('data', (d) => (out += d));
  return { proc, out: () => out };
}

describe('tunnel monitor: BFD with FRR on a VM\'s behalf, and a liveness channel with the VM', () => {
  it('a dead VM takes the session AdminDown at FRR; a live VM brings it back; a dead tunnel is told to the VM', async (ctx) => {
    needFrr(ctx);
    frrUp(300);
    const dir = tempDir('mon');
    const sock = join(dir, 'vm1.sock');
    const topo = join(dir, 'topology.json');
    writeFileSync(topo, JSON.stringify({
      name: 'mon',
      ports: [{ name: 'up0', ppid: 1, role: 'uplink' }, { name: 'p1', ppid: 11 }],
      segments: [{ name: 'blue', vni: 5001 }],
      nodes: [{ name: 'vm1', interfaces: [{ name: 'vm1-eth0', mac: '02:00:00:00:90:01', segment: 'blue', port: 'p1' }] }],
      tunnel: { vtep: '10.90.0.1', monitor: [{ interface: 'vm1-eth0', agent: sock, local: '10.90.0.1', peer: '10.90.0.2', txMs: 300, rxMs: 300, detectMult: 3, probeMs: 100, misses: 3 }] },
    }));
    let a = agent(sock);
    const ctlSock = join(dir, 'fpo.sock');
    const fpo = spawn(process.execPath, [CLI, 'run', '-t', topo, '-s', ctlSock, '-o', dir, '--log-level', 'info'], { stdio: ['ignore', 'ignore', 'pipe'] });
    procs.push(fpo);
    let log = '';
    fpo.stderr!.on('data', (d) => (log += d));
    for (let i = 0; i < 100 && !existsSync(ctlSock); i++) await sleep(50);
    const bfd = () => JSON.parse(runCli(['ctl', '-s', ctlSock, '--json', 'bfd']).stdout).sessions[0];
    expect(await until(() => frrPeer().status === 'up', 20_000), JSON.stringify(frrPeer())).toBe(true);
    expect(bfd()).toMatchObject({ interface: 'vm1-eth0', vmAlive: true, session: { state: 'Up' } });
    expect(runCli(['ctl', '-s', ctlSock, 'bfd']).stdout).toMatch(/vm1-eth0\s+10\.90\.0\.2\s+Up/);

    // The VM dies: its agent stops answering; FRR sees AdminDown with its diagnostic.
    a.proc.kill('SIGKILL');
    expect(await until(() => frrPeer().status === 'down', 5000), JSON.stringify(frrPeer())).toBe(true);
    expect(String(frrPeer()['remote-diagnostic'])).toMatch(/administratively/);
    expect(bfd()).toMatchObject({ vmAlive: false, session: { state: 'AdminDown' } });

    // The VM is back: the session comes back Up.
    a = agent(sock);
    expect(await until(() => frrPeer().status === 'up' && bfd().session.state === 'Up', 20_000)).toBe(true);

    // The tunnel dies (FRR killed): the VM is told through its channel.
    const before = a.out().split('\n').filter((l) => l.includes('"tunnel":"down"')).length;
    spawn('kill', ['-9', readFileSync(`${FRR_DIR}/bfdd.pid`, 'utf8').trim()]);
    expect(await until(() => a.out().split('\n').filter((l) => l.includes('"tunnel":"down"')).length > before, 5000), a.out()).toBe(true);
    expect(a.out()).toMatch(/"tunnel":"down","peer":"10\.90\.0\.2","why":"no packet for 900 ms"/);
    expect(log).toMatch(/vm not answering/);
    fpo.kill('SIGTERM');
    await new Promise((r) => fpo.on('exit', r));
    a.proc.kill('SIGTERM');
  }, 90_000);
});

describe('tunnel monitor under load: the same fpo run switches traffic while its BFD thread holds 3 × 50 ms with FRR', () => {
  it('a capture of 200 K flows injected again and again for 15 s, each pass followed by a full stats report, never takes the session down at either end', async (ctx) => {
    needFrr(ctx);
    frrUp(50);
    const dir = tempDir('monload');
    const sock = join(dir, 'vm0.sock');
    const topo = join(dir, 'topology.json');
    const cap = join(dir, 'load.pcap');
    // Many flows: upcalls to the FPAG and a long per-flow report, all on the main thread.
    generate(cap, { frames: 1_000_000, size: 64, flows: 200_000, vms: 64 });
    writeFileSync(topo, JSON.stringify({
      name: 'monload', ...benchTopology(64),
      tunnel: { vtep: '10.90.0.1', monitor: [{ interface: 'vm0-eth0', agent: sock, local: '10.90.0.1', peer: '10.90.0.2', txMs: 50, rxMs: 50, detectMult: 3, probeMs: 100, misses: 3 }] },
    }));
    const a = agent(sock);
    const ctlSock = join(dir, 'fpo.sock');
    const fpo = spawn(process.execPath, [CLI, 'run', '-t', topo, '-s', ctlSock, '-o', dir, '--log-level', 'info'], { stdio: ['ignore', 'ignore', 'pipe'] });
    procs.push(fpo);
    let log = '';
    fpo.stderr!.on('data', (d) => (log += d));
    try {
      for (let i = 0; i < 100 && !existsSync(ctlSock); i++) await sleep(50);
      const bfd = () => JSON.parse(runCli(['ctl', '-s', ctlSock, '--json', 'bfd']).stdout).sessions[0];
      expect(await until(() => frrPeer().status === 'up' && bfd()?.session.state === 'Up', 20_000), JSON.stringify(frrPeer())).toBe(true);
      // The bring-up's own log line may still be on its way through the pipe (a CI run had counted it as a change under load).
      expect(await until(() => /bfd \w+ -> Up/.test(log), 5000), log).toBe(true);
      const upLines = log.split('\n').filter((l) => /bfd \w+ -> /.test(l)).length;
      const frrCounters = (): Record<string, number> => {
        try {
          return JSON.parse(execFileSync('ip', ['netns', 'exec', 'fpobfd', 'vtysh', '--vty_socket', FRR_DIR, '-c', 'show bfd peers counters json'], { encoding: 'utf8' }))[0] ?? {};
        } catch { return {}; }
      };
      const c0 = frrCounters();
      // Load: the switch in the same process forwards the capture pass after pass.
      let packets = 0;
      let passes = 0;
      const end = Date.now() + 15_000;
      while (Date.now() < end) {
        const r = runCli(['ctl', '-s', ctlSock, '--json', 'inject', cap], { timeout: 120_000 });
        expect(r.status, r.stderr).toBe(0);
        packets += JSON.parse(r.stdout).packets.in as number;
        passes++;
        // A report over every flow: hundreds of milliseconds of one synchronous call.
        const st = spawnSync(process.execPath, [CLI, 'ctl', '-s', ctlSock, '--json', 'stats'], { maxBuffer: 1 << 30, timeout: 120_000 });
        expect(st.status, String(st.error ?? st.stderr)).toBe(0);
      }
      expect(packets).toBe(passes * 1_000_000);
      // fpo's log reaches this process between its synchronous ctl calls: let it arrive.
      await sleep(1000);
      expect(log).not.toMatch(/vm not answering/);
      // No change at our end (the log names every one), none at FRR's (its session's uptime ran on).
      const changes = log.split('\n').filter((l) => /bfd \w+ -> /.test(l)).slice(upLines);
      expect(changes, changes.join('\n')).toEqual([]);
      expect(bfd().session.state).toBe('Up');
      const p = frrPeer();
      expect(p.status, JSON.stringify(p)).toBe('up');
      const c1 = frrCounters();
      expect(c1['session-down'], `${JSON.stringify(c0)} ${JSON.stringify(c1)} ${JSON.stringify(p)}`).toBe(c0['session-down']);
      expect(c1['session-up']).toBe(c0['session-up']);
    } finally {
      fpo.kill('SIGTERM');
      await new Promise((r) => (fpo.exitCode !== null ? r(null) : fpo.on('exit', r)));
      a.proc.kill('SIGTERM');
      frrDown();
    }
  }, 120_000);
});

describe('interop with BIRD', () => {
  const birdAuth: Record<string, string> = { simple: 'simple', md5: 'keyed md5', 'meticulous-md5': 'meticulous keyed md5', sha1: 'keyed sha1', 'meticulous-sha1': 'meticulous keyed sha1' };
  const cases: { auth?: 'simple' | 'md5' | 'meticulous-md5' | 'sha1' | 'meticulous-sha1'; ourKey?: string }[] = [{}, { auth: 'simple' }, { auth: 'md5' }, { auth: 'meticulous-sha1' }, { auth: 'sha1', ourKey: 'wrong' }];
  for (const c of cases) {
    const title = c.ourKey ? `with ${c.auth} and a wrong key, never comes Up and counts the failures` : `a session with BIRD 2 (a second independent implementation) comes Up on both sides, authentication ${c.auth ?? 'none'}`;
    it(title, async (ctx) => {
      needRoot(ctx, 'BIRD runs in a namespace');
      needTool(ctx, 'ip', 'makes the namespace and the veth');
      needTool(ctx, 'bird', 'BIRD (Debian bird2) is the second BFD peer');
      needTool(ctx, 'birdc', 'reads the session from BIRD');
      const dir = '/tmp/fpobird';
      const down = () => {
        if (existsSync(`${dir}/bird.pid`)) spawnSync('kill', [readFileSync(`${dir}/bird.pid`, 'utf8').trim()]);
        spawnSync('ip', ['netns', 'del', 'fpobird']);
        spawnSync('ip', ['link', 'del', 'fpobird0']);
      };
      down();
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(dir, { recursive: true });
      const authLine = c.auth ? ` authentication ${birdAuth[c.auth]}; password "s3cret" { id 5; };` : '';
      writeFileSync(`${dir}/bird.conf`, `router id 10.91.0.2;\nprotocol device { }\nprotocol bfd {\n  interface "fpobird1" { interval 300 ms; multiplier 3;${authLine} };\n  neighbor 10.91.0.1 dev "fpobird1";\n}\n`);
      execFileSync('sh', ['-c', [
        'ip netns add fpobird', 'ip link add fpobird0 type veth peer name fpobird1', 'ip link set fpobird1 netns fpobird',
        'ip addr add 10.91.0.1/24 dev fpobird0', 'ip link set fpobird0 up', 'ip -n fpobird addr add 10.91.0.2/24 dev fpobird1',
        'ip -n fpobird link set fpobird1 up', 'ip -n fpobird link set lo up',
        `ip netns exec fpobird bird -c ${dir}/bird.conf -s ${dir}/bird.ctl -P ${dir}/bird.pid`,
      ].join(' && ')], { stdio: ['ignore', 'pipe', 'pipe'] });
      const a = new BfdEndpoint('10.91.0.1');
      await a.listen();
      try {
        const s = await a.add('10.91.0.2', { txUs: 300_000, rxUs: 300_000, detectMult: 3, auth: c.auth ? { type: c.auth, keyId: 5, key: c.ourKey ?? 's3cret' } : undefined });
        const birdSays = () => execFileSync('ip', ['netns', 'exec', 'fpobird', 'birdc', '-s', `${dir}/bird.ctl`, 'show', 'bfd', 'sessions'], { encoding: 'utf8' });
        if (c.ourKey) {
          await sleep(3000);
          expect(s.state).not.toBe(STATE.Up);
          expect(a.discards.auth).toBeGreaterThan(0);
          expect(birdSays()).not.toMatch(/10\.91\.0\.1\s+fpobird1\s+Up/);
        } else {
          expect(await until(() => s.state === STATE.Up && /10\.91\.0\.1\s+fpobird1\s+Up/.test(birdSays()), 15_000), birdSays()).toBe(true);
          expect(a.discards).toEqual({});
        }
      } finally {
        await a.close();
        down();
      }
    }, 60_000);
  }
});

describe('BFD authentication (RFC 5880 §6.7)', () => {
  const types = ['simple', 'md5', 'meticulous-md5', 'sha1', 'meticulous-sha1'] as const;
  for (const type of types) {
    it(`${type}: what one side signs the other verifies; a changed byte, another key or a replayed sequence fails`, () => {
      const tx = new Auth({ type, keyId: 9, key: 'k3y' });
      const rx = new Auth({ type, keyId: 9, key: 'k3y' });
      const out = new Uint8Array(52);
      out.set(packet(), 0);
      const len = tx.sign(out);
      const pkt = out.slice(0, len);
      expect(decode(pkt, true)).toMatchObject({ auth: true, length: len });
      expect(rx.verify(pkt, 3)).toBe(true);
      const bad = pkt.slice();
      bad[type === 'simple' ? 27 : 20] ^= 1; // a simple password protects itself only; digests cover the packet
      expect(rx.verify(bad, 3)).toBe(false);
      expect(new Auth({ type, keyId: 9, key: 'other' }).verify(pkt, 3)).toBe(false);
      expect(new Auth({ type, keyId: 8, key: 'k3y' }).verify(pkt, 3)).toBe(false);
      if (type.startsWith('meticulous')) expect(rx.verify(pkt, 3)).toBe(false); // the same sequence number again
    });
  }
  it('a packet with authentication to a session without it (and the reverse) is discarded as auth', async () => {
    const a = new BfdEndpoint('127.0.0.5', 26784);
    const b = new BfdEndpoint('127.0.0.6', 26784);
    await a.listen();
    await b.listen();
    try {
      await a.add('127.0.0.6', { txUs: 50_000, rxUs: 50_000, detectMult: 3, auth: { type: 'sha1', keyId: 1, key: 'x' } }, 26784);
      const sb = await b.add('127.0.0.5', { txUs: 50_000, rxUs: 50_000, detectMult: 3 }, 26784);
      expect(await until(() => (b.discards.auth ?? 0) > 0 && (a.discards.auth ?? 0) > 0, 5000)).toBe(true);
      expect(sb.state).not.toBe(STATE.Up);
    } finally {
      await a.close();
      await b.close();
    }
  });
});

describe('authentication across a peer restart (RFC 5880 §6.8.1)', () => {
  const birdAuth: Record<string, string> = { md5: 'keyed md5', 'meticulous-sha1': 'meticulous keyed sha1' };
  for (const auth of ['md5', 'meticulous-sha1'] as const) {
    it(`${auth}: BIRD 2 restarted mid-session (a new sequence number) is Up again within 2 × detection time + BIRD's 1 s slow rate + start-up`, async (ctx) => {
      needRoot(ctx, 'BIRD runs in a namespace');
      needTool(ctx, 'ip', 'makes the namespace and the veth');
      needTool(ctx, 'bird', 'BIRD (Debian bird2) is the BFD peer');
      needTool(ctx, 'birdc', 'reads the session from BIRD');
      const dir = '/tmp/fis-bird';
      const ns = 'fis-bird';
      const stopBird = () => {
        if (existsSync(`${dir}/bird.pid`)) spawnSync('kill', ['-9', readFileSync(`${dir}/bird.pid`, 'utf8').trim()]);
        rmSync(`${dir}/bird.pid`, { force: true });
        rmSync(`${dir}/bird.ctl`, { force: true });
      };
      const down = () => {
        stopBird();
        spawnSync('ip', ['netns', 'del', ns]);
        spawnSync('ip', ['link', 'del', 'fis-bird0']);
      };
      const startBird = () => execFileSync('ip', ['netns', 'exec', ns, 'bird', '-c', `${dir}/bird.conf`, '-s', `${dir}/bird.ctl`, '-P', `${dir}/bird.pid`], { stdio: ['ignore', 'pipe', 'pipe'] });
      down();
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(dir, { recursive: true });
      writeFileSync(`${dir}/bird.conf`, `router id 10.93.0.2;\nprotocol device { }\nprotocol bfd {\n  interface "fis-bird1" { interval 300 ms; multiplier 3; authentication ${birdAuth[auth]}; password "s3cret" { id 5; }; };\n  neighbor 10.93.0.1 dev "fis-bird1";\n}\n`);
      execFileSync('sh', ['-c', [
        `ip netns add ${ns}`, 'ip link add fis-bird0 type veth peer name fis-bird1', `ip link set fis-bird1 netns ${ns}`,
        'ip addr add 10.93.0.1/24 dev fis-bird0', 'ip link set fis-bird0 up', `ip -n ${ns} addr add 10.93.0.2/24 dev fis-bird1`,
        `ip -n ${ns} link set fis-bird1 up`, `ip -n ${ns} link set lo up`,
      ].join(' && ')], { stdio: ['ignore', 'pipe', 'pipe'] });
      startBird();
      const a = new BfdEndpoint('10.93.0.1');
      await a.listen();
      try {
        const s = await a.add('10.93.0.2', { txUs: 300_000, rxUs: 300_000, detectMult: 3, auth: { type: auth, keyId: 5, key: 's3cret' } });
        const birdSays = () => execFileSync('ip', ['netns', 'exec', ns, 'birdc', '-s', `${dir}/bird.ctl`, 'show', 'bfd', 'sessions'], { encoding: 'utf8' });
        const birdUp = () => { try { return /10\.93\.0\.1\s+fis-bird1\s+Up/.test(birdSays()); } catch { return false; } };
        expect(await until(() => s.state === STATE.Up && birdUp(), 15_000)).toBe(true);
        await sleep(1500); // sequence numbers well under way
        expect(s.state).toBe(STATE.Up);
        // The restart: BIRD killed and started again at once, with a fresh sequence number.
        stopBird();
        startBird();
        const t0 = Date.now();
        expect(await until(() => s.state === STATE.Up && birdUp(), 12_000), `${birdSays()} discards ${JSON.stringify(a.discards)}`).toBe(true);
        const took = Date.now() - t0;
        // Detection 900 ms, forgotten after 2 × 900 ms without a packet that verifies; BIRD sends at 1/s until Up.
        expect(took).toBeLessThan(8_000);
        expect(s.authSeqResets).toBeGreaterThanOrEqual(1);
        console.log(`bfd ${auth}: Up again ${took} ms after BIRD restarted; auth discards ${a.discards.auth ?? 0}, sequence resets ${s.authSeqResets}`);
      } finally {
        await a.close();
        down();
        rmSync(dir, { recursive: true, force: true });
      }
    }, 60_000);
  }
});
