import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Fpag } from '../../control/fpag.js';
import { loadTopology } from '../../control/topology.js';
import { DatapathWorkers, RecordingDatapath } from '../../control/workers.js';
import { KEY_WORDS } from '../../datapath/classifier/flow-key.js';
import { Datapath } from '../../datapath/datapath.js';
import { CLI, ROOT, cleanTemp, needRoot, needTool, runCli, tempDir } from '../helpers.js';

// fpo run --workers N: N datapath threads, each with its own sockets on every port (a fanout group per
// port), one FPAG on the main thread. Two VMs on veth pairs; a sender in a sends numbered frames of 32
// flows, a reader in b (a ring on b's end) notes each flow's numbers as they arrive.

const A = '02:00:00:00:76:01';
const B = '02:00:00:00:76:02';
const ns = (x: string) => `fpowk-${process.pid}-${x}`;
const sh = (cmd: string) => execFileSync('sh', ['-c', cmd], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const quiet = (cmd: string) => spawnSync('sh', ['-c', cmd], { stdio: 'ignore' });
const DIST = join(ROOT, 'dist', 'datapath');
const clean = () => quiet(`ip netns del ${ns('a')}; ip netns del ${ns('b')}; ip link del fpowk-ha; ip link del fpowk-hb`);

afterAll(() => {
  clean();
  cleanTemp();
});

function setUp(dir: string): string {
  clean();
  sh(`ip netns add ${ns('a')} && ip netns add ${ns('b')}`
    + ' && ip link add fpowk-va type veth peer name fpowk-ha && ip link add fpowk-vb type veth peer name fpowk-hb'
    + ` && ip link set fpowk-va netns ${ns('a')} && ip link set fpowk-vb netns ${ns('b')}`
    + ' && sysctl -qw net.ipv6.conf.fpowk-ha.disable_ipv6=1 net.ipv6.conf.fpowk-hb.disable_ipv6=1'
    + ` && ip netns exec ${ns('a')} sysctl -qw net.ipv6.conf.all.disable_ipv6=1 && ip netns exec ${ns('b')} sysctl -qw net.ipv6.conf.all.disable_ipv6=1`
    + ` && ip -n ${ns('a')} link set fpowk-va address ${A} up && ip -n ${ns('b')} link set fpowk-vb address 02:00:00:00:76:fe up`
    + ' && ip link set fpowk-ha up && ip link set fpowk-hb up');
  const topo = join(dir, 'topology.json');
  writeFileSync(topo, JSON.stringify({
    name: 'wk', segments: [{ name: 's' }],
    ports: [{ name: 'pa', ppid: 11, kind: 'afpacket', device: 'fpowk-ha' }, { name: 'pb', ppid: 12, kind: 'afpacket', device: 'fpowk-hb' }],
    nodes: [{ name: 'a', interfaces: [{ name: 'a0', mac: A, segment: 's', port: 'pa' }] }, { name: 'b', interfaces: [{ name: 'b0', mac: B, segment: 's', port: 'pb' }] }],
  }));
  return topo;
}

/** A reader in b: every 0x0800 frame from A, per flow (UDP source port) its numbers in arrival order; prints JSON when told to stop (stdin closes). */
/** The frames of each flow the reader got (by source port, their sequence numbers), and what its own ring dropped (a busy machine). */
function startReader(): { stop: () => Promise<{ flows: Record<string, number[]>; missed: number }> } {
  const p = spawn('ip', ['netns', 'exec', ns('b'), process.execPath, '--input-type=module', '-e', `
    import { RingPort } from ${JSON.stringify(join(DIST, 'ports', 'ring-port.js'))};
    import { PacketBatch } from ${JSON.stringify(join(DIST, 'batch.js'))};
    const ring = new RingPort('fpowk-vb', { version: 2 });
    const b = new PacketBatch(256);
    const flows = {};
    let done = false;
    process.stdin.on('end', () => { done = true; });
    process.stdin.resume();
    console.log('ready');
    const drain = () => { let n; while ((n = ring.fill(b, 1, 0)) > 0) for (let i = 0; i < n; i++) {
      const o = b.off[i]; const u = b.buf;
      if (u[o + 6] !== 2 || u[o + 11] !== 1 || u[o + 12] !== 8) continue;
      const sport = (u[o + 34] << 8) | u[o + 35];
      const seq = (u[o + 42] << 24 | u[o + 43] << 16 | u[o + 44] << 8 | u[o + 45]) >>> 0;
      (flows[sport] ??= []).push(seq);
    } };
    while (!done) { drain(); await new Promise((r) => setTimeout(r, 1)); }
    await new Promise((r) => setTimeout(r, 20)); drain();
    console.log(JSON.stringify({ flows, missed: ring.rxMissed }));`], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  p.stdout.on('data', (d) => (out += d));
  p.stderr.on('data', (d) => (err += d));
  return {
    stop: async () => {
      for (let i = 0; i < 100 && !out.includes('ready'); i++) await new Promise((r) => setTimeout(r, 50));
      p.stdin.end();
      await new Promise((r) => p.on('exit', r));
      if (err) throw new Error(err);
      return JSON.parse(out.trim().split('\n').at(-1)!);
    },
  };
}

/** Sends `perFlow` numbered UDP frames of each of `flows` flows from a, interleaved (flow = source port 2000 + f). */
function send(flows: number, perFlow: number, from = 0): void {
  const r = spawnSync('ip', ['netns', 'exec', ns('a'), process.execPath, '--input-type=module', '-e', `
    import { TapPort } from ${JSON.stringify(join(DIST, 'ports', 'tap-port.js'))};
    import { libc } from ${JSON.stringify(join(DIST, 'ports', 'libc.js'))};
    const p = new TapPort('fpowk-va', 1, 'afpacket');
    const f = Buffer.alloc(60);
    Buffer.from('${B.replaceAll(':', '')}${A.replaceAll(':', '')}0800', 'hex').copy(f, 0);
    f[14] = 0x45; f[17] = 46; f[22] = 64; f[23] = 17; f.set([10, 76, 0, 1, 10, 76, 0, 2], 26);
    for (let k = ${from}; k < ${from + perFlow}; k++) for (let fl = 0; fl < ${flows}; fl++) {
      f.writeUInt16BE(2000 + fl, 34); f.writeUInt16BE(5001, 36); f.writeUInt16BE(26, 38);
      f.writeUInt32BE(k, 42);
      while (libc().write(p.fd, f, 60) !== 60) {} // the socket's queue full: again
    }`], { encoding: 'utf8', timeout: 60_000 });
  expect(r.stderr).toBe('');
}

describe('fpo run --workers: what it refuses, before anything is opened', () => {
  it('a count that is not 1..64; a port writing a capture file', () => {
    const dir = tempDir('workers');
    for (const bad of ['0', '65', 'abc', '1.5', '2x']) {
      const r = runCli(['run', '-t', join(ROOT, 'fixtures', 'topology.json'), '-s', join(dir, 's'), '-o', dir, '--workers', bad]);
      expect(r.status).toBe(2);
      expect(r.stderr).toMatch(/--workers: expected an integer in 1\.\.64/);
    }
    const pcap = runCli(['run', '-t', join(ROOT, 'fixtures', 'topology.json'), '-s', join(dir, 's'), '-o', dir, '--workers', '2']);
    expect(pcap.status).toBe(1);
    expect(pcap.stderr).toMatch(/port \S+ is a capture file; with several workers every port must be tap or afpacket/);
    expect(existsSync(join(dir, 's'))).toBe(false);
    // An AF_XDP port takes one queue of its interface: one worker.
    const xdpTopo = join(dir, 'xdp.json');
    writeFileSync(xdpTopo, JSON.stringify({
      name: 'x', segments: [{ name: 's' }],
      ports: [{ name: 'pa', ppid: 11, kind: 'afpacket', device: 'fpowk-nosuch', io: 'xdp' }],
      nodes: [{ name: 'a', interfaces: [{ name: 'a0', mac: '02:00:00:00:75:01', segment: 's', port: 'pa' }] }],
    }));
    const xdp = runCli(['run', '-t', xdpTopo, '-s', join(dir, 's'), '-o', dir, '--workers', '2']);
    expect(xdp.status).toBe(1);
    expect(xdp.stderr).toMatch(/--workers 2: port pa is on AF_XDP \(io xdp\), one queue and so one worker; with several workers use io ring/);
    expect(existsSync(join(dir, 's'))).toBe(false);
    // NAT: a translated reply may hash to another worker than its connection (spread.ts is symmetric, not across NAT).
    const natTopo = join(dir, 'nat.json');
    writeFileSync(natTopo, JSON.stringify({
      name: 'n', segments: [{ name: 's' }],
      ports: [{ name: 'pa', ppid: 11, kind: 'afpacket', device: 'fpowk-nosuch' }],
      nodes: [{ name: 'a', interfaces: [{ name: 'a0', mac: '02:00:00:00:75:01', segment: 's', port: 'pa' }] }],
      rules: [{ priority: 1, match: { eth_type: '0x0800' }, actions: ['ct(commit,zone=1,nat(src=192.0.2.1))', 'output:a0'] }],
    }));
    const nat = runCli(['run', '-t', natTopo, '-s', join(dir, 's'), '-o', dir, '--workers', '2']);
    expect(nat.status).toBe(1);
    expect(nat.stderr).toMatch(/--workers 2: rules\[0\] translates addresses .*NAT runs with one datapath only/);
    expect(existsSync(join(dir, 's'))).toBe(false);
  });
});

describe('the shadow datapath (workers.ts)', () => {
  it('a full table evicts by messages the workers get: a worker applying the log holds exactly the shadow\'s flows', () => {
    const topo = loadTopology(join(ROOT, 'fixtures', 'topology.json'));
    const shadow = new RecordingDatapath({ maxFlows: 32, idleTimeoutMs: 0 });
    for (const p of topo.ports) shadow.addPort(p.ppid, { writeBatch: () => undefined });
    const worker = new Datapath({ maxFlows: 64, idleTimeoutMs: 0 });
    for (const p of topo.ports) worker.addPort(p.ppid, { writeBatch: () => undefined });
    const key = (k: number) => { const a = new Uint32Array(KEY_WORDS); a[0] = k; return a; };
    const mask = new Uint32Array(KEY_WORDS).fill(0xffffffff);
    for (let k = 1; k <= 100; k++) shadow.apply({ type: 'flow-install', key: key(k), mask, actions: [{ op: 'drop', reason: 1 }] }, k);
    expect(shadow.outbox.filter((m) => m.type === 'flow-delete').length).toBeGreaterThan(0);
    for (const m of shadow.outbox) worker.apply(m);
    const keys = (dp: Datapath) => dp.dumpFlows().map((f) => f.key[0]).sort((a, b) => a - b);
    expect(shadow.stats().flowsEvicted).toBe(0);
    expect(worker.stats().flowsEvicted).toBe(0);
    expect(keys(worker)).toEqual(keys(shadow));
    expect(keys(shadow)).toContain(100); // the newest stays; the oldest went
    expect(keys(shadow)).not.toContain(1);
  });
});

describe('fpo run --workers 2', () => {
  it('spreads flows over both workers, keeps every flow in order, and the totals add up exactly', async (ctx) => {
    needRoot(ctx, 'makes namespaces, veth pairs and AF_PACKET rings');
    needTool(ctx, 'ip', 'makes the namespaces');
    const dir = tempDir('workers');
    const topo = setUp(dir);
    const sock = join(dir, 'fpo.sock');
    const fpo = spawn(process.execPath, [CLI, 'run', '-t', topo, '-s', sock, '-o', join(dir, 'out'), '--workers', '2'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    let final = '';
    fpo.stderr.on('data', (d) => (err += d));
    fpo.stdout.on('data', (d) => (final += d));
    try {
      for (let i = 0; i < 200 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
      expect(existsSync(sock), err).toBe(true);
      const reader = startReader();
      await new Promise((r) => setTimeout(r, 300));
      send(32, 500);
      await new Promise((r) => setTimeout(r, 300));
      const { flows, missed } = await reader.stop();
      const st = JSON.parse(runCli(['ctl', '-s', sock, '--json', 'stats']).stdout);
      // Every flow's frames in order (what the rings dropped is missing, never reordered).
      expect(Object.keys(flows).length).toBe(32);
      let got = 0;
      for (const seqs of Object.values(flows)) {
        for (let i = 1; i < seqs.length; i++) expect(seqs[i]).toBeGreaterThan(seqs[i - 1]);
        got += seqs.length;
      }
      const pa = st.ports.find((p: any) => p.name === 'pa');
      const livePa = st.live.find((l: any) => l.port === 'pa');
      expect(pa.rxPackets + livePa.rxMissed).toBe(32 * 500);
      expect(st.packets.in).toBe(st.packets.out + st.packets.dropped);
      // Every frame fpo sent on pb reached the reader, or its ring counted it dropped (the reader is a test process on a busy machine).
      expect(got + missed).toBe(st.live.find((l: any) => l.port === 'pb').txSent);
      // Both workers took a share, and the FPAG decided the flow once for the switch.
      expect(st.workers.length).toBe(2);
      for (const w of st.workers) {
        expect(w.alive).toBe(true);
        expect(w.packetsIn).toBeGreaterThan(0);
      }
      expect(st.workers[0].packetsIn + st.workers[1].packetsIn).toBe(st.packets.in);
      expect(st.perFlow.length).toBe(1);
      expect(st.perFlow[0].packets).toBe(pa.rxPackets);
    } finally {
      fpo.kill('SIGTERM');
      await new Promise((r) => fpo.on('exit', r));
    }
    // The final counters (printed at stop) are the workers' too.
    expect(JSON.parse(final.trim().split('\n').at(-1)!).packets.in).toBeGreaterThan(0);
  }, 120_000);

  it('a mapping change reaches every worker before it is answered: after b0 is migrated away, no worker sends to its old port', async (ctx) => {
    needRoot(ctx, 'makes namespaces, veth pairs and AF_PACKET rings');
    needTool(ctx, 'ip', 'makes the namespaces');
    const dir = tempDir('workers');
    const topo = setUp(dir);
    const sock = join(dir, 'fpo.sock');
    const fpo = spawn(process.execPath, [CLI, 'run', '-t', topo, '-s', sock, '-o', join(dir, 'out'), '--workers', '2'], { stdio: ['ignore', 'ignore', 'pipe'] });
    try {
      for (let i = 0; i < 200 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
      send(32, 50);
      const before = JSON.parse(runCli(['ctl', '-s', sock, '--json', 'stats']).stdout);
      // b0 away from every port: its frames are dropped by every worker from the answer on.
      expect(before.ports.find((p: any) => p.name === 'pb').txPackets).toBeGreaterThan(0);
      const r = runCli(['ctl', '-s', sock, '--json', 'migrate', 'b0', '--away']);
      expect(r.stderr).toBe('');
      const mid = JSON.parse(runCli(['ctl', '-s', sock, '--json', 'stats']).stdout);
      for (const w of mid.workers) expect(w.applied).toBe(mid.workers[0].applied);
      send(32, 50, 50);
      const after = JSON.parse(runCli(['ctl', '-s', sock, '--json', 'stats']).stdout);
      const txB = (s: any) => s.ports.find((p: any) => p.name === 'pb').txPackets;
      expect(txB(after)).toBe(txB(mid)); // nothing more to pb
      expect(after.packets.in - mid.packets.in).toBe(32 * 50 - (after.live[0].rxMissed - mid.live[0].rxMissed));
      expect(after.packets.in).toBe(after.packets.out + after.packets.dropped);
      for (const w of after.workers) expect(w.packetsIn).toBeGreaterThan(0);
    } finally {
      fpo.kill('SIGTERM');
      await new Promise((r) => fpo.on('exit', r));
    }
  }, 120_000);

  it('a worker that dies is reported; the others go on and take its share (the kernel spreads its fanout over them)', async (ctx) => {
    needRoot(ctx, 'makes namespaces, veth pairs and AF_PACKET rings');
    needTool(ctx, 'ip', 'makes the namespaces');
    const dir = tempDir('workers');
    const topo = loadTopology(setUp(dir));
    const shadow = new RecordingDatapath({ batchCapacity: 256, idleTimeoutMs: 0 });
    for (const p of topo.ports) shadow.addPort(p.ppid, { writeBatch: () => undefined });
    const fpag = new Fpag(topo, shadow);
    fpag.start();
    const errors: string[] = [];
    const w = new DatapathWorkers(topo, 2, shadow, { error: (o) => errors.push(JSON.stringify(o)) });
    try {
      await w.ready();
      send(32, 100);
      await new Promise((r) => setTimeout(r, 200));
      const s1 = await w.stats();
      expect(s1[0].dp.packetsIn).toBeGreaterThan(0);
      expect(s1[1].dp.packetsIn).toBeGreaterThan(0);
      await w.workerOf(1).terminate();
      await new Promise((r) => setTimeout(r, 100));
      const h = w.health();
      expect(h[1].alive).toBe(false);
      expect(h[1].error).toMatch(/exited/);
      expect(h[0].alive).toBe(true);
      expect(errors.length).toBe(1);
      const reader = startReader();
      await new Promise((r) => setTimeout(r, 300));
      send(32, 100, 100);
      await new Promise((r) => setTimeout(r, 300));
      const { flows } = await reader.stop();
      const s2 = await w.stats();
      // Worker 0 now reads every frame of the 32 flows (its socket alone in the group).
      const newIn = s2[0].dp.packetsIn - s1[0].dp.packetsIn;
      const missed = s2[0].live.find((l) => l.ppid === 11)!.rxMissed - s1[0].live.find((l) => l.ppid === 11)!.rxMissed;
      expect(newIn + missed).toBe(32 * 100);
      expect(Object.values(flows).reduce((n, f) => n + f.length, 0)).toBe(newIn);
    } finally {
      await w.stop();
    }
  }, 120_000);
});
