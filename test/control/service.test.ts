import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { PacketBatch } from '../../datapath/batch.js';
import { CaptureReader } from '../../datapath/ports/capture-reader.js';
import { benchTopology, generate } from '../../bench/gen-capture.js';
import { writeFileSync } from 'node:fs';
import { CLI, FIXTURES, cleanTemp, needTool, runCli, tempDir, tsharkFields } from '../helpers.js';

const running: ChildProcess[] = [];
afterAll(() => {
  for (const p of running) p.kill('SIGKILL');
  cleanTemp();
});

interface Svc { proc: ChildProcess; socket: string; out: string; ctl: (...a: string[]) => { status: number; stdout: string; stderr: string }; stop: () => Promise<string> }

async function start(topology: string, out = tempDir('svc'), extra: string[] = []): Promise<Svc> {
  const socket = join(out, 'ctl.sock');
  const proc = spawn(process.execPath, [CLI, 'run', '-t', topology, '-s', socket, '-o', out, ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
  running.push(proc);
  let stdout = '';
  proc.stdout!.on('data', (d) => (stdout += d));
  for (let i = 0; i < 100 && !existsSync(socket); i++) await new Promise((r) => setTimeout(r, 50));
  expect(existsSync(socket)).toBe(true);
  return {
    proc, socket, out,
    ctl: (...a: string[]) => runCli(['ctl', '-s', socket, ...a]),
    stop: () => new Promise((resolve) => { proc.on('exit', () => resolve(stdout)); proc.kill('SIGTERM'); }),
  };
}

/** One request over the socket, answered. */
function req(socket: string, cmd: string, args: Record<string, unknown> = {}): Promise<any> {
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

function stamps(path: string): string[] {
  if (!existsSync(path)) return [];
  const r = new CaptureReader(path);
  const b = new PacketBatch(256);
  const out: string[] = [];
  while (r.fill(b, 0) > 0) for (let i = 0; i < b.count; i++) out.push(`${b.tsA[i]}.${b.tsB[i]}`);
  r.close();
  return out;
}

const TOPO = join(FIXTURES, 'topology.json');

describe('fpo run and fpo ctl', () => {
  it('serves show, inject, stats, dump-flows and trace; the socket is mode 0600; SIGTERM prints final counters', async (ctx) => {
    needTool(ctx, 'tshark', 'reads the port captures');
    const s = await start(TOPO);
    expect(spawnSync('stat', ['-c', '%a', s.socket], { encoding: 'utf8' }).stdout.trim()).toBe('600');
    const show = JSON.parse(s.ctl('--json', 'show').stdout);
    expect(show.interfaces.find((i: any) => i.name === 'vm1-eth0')).toMatchObject({ vpid: 1, ppid: 11, port: 'vf1' });
    const inj = JSON.parse(s.ctl('--json', 'inject', join(FIXTURES, 'demo.pcap')).stdout);
    expect(inj.packets).toEqual({ in: 671, out: 621, dropped: 50 });
    const st = JSON.parse(s.ctl('--json', 'stats').stdout);
    expect(st.packets.in).toBe(st.packets.out + st.packets.dropped);
    expect(st.drops.ruleDrop).toBe(20);
    expect(s.ctl('dump-flows').stdout).toMatch(/actions:output:vpid1\(vm1-eth0\)/);
    const tr = s.ctl('trace', 'in_port=uplink0,eth_dst=02:00:00:00:00:03,dl_vlan=20,udp,ipv4_dst=10.0.1.3,tp_dst=53');
    expect(tr.status).toBe(0);
    expect(tr.stdout).toMatch(/flag check/);
    expect(tr.stdout).toMatch(/exact-match cache: hit|megaflow: hit/);
    expect(tr.stdout).toMatch(/output: vpid 3 \(vm3-eth0\) → ppid 13 \(vf3\)/);
    const final = JSON.parse(await s.stop());
    expect(final.packets.in).toBe(671);
    expect(tsharkFields(join(s.out, 'vf3.pcap'), ['frame.number']).length).toBe(final.ports.find((p: any) => p.name === 'vf3').txPackets);
    expect(existsSync(s.socket)).toBe(false);
  }, 60_000);

  it('add-flow and del-flow change forwarding and revalidate installed flows', async () => {
    const s = await start(TOPO);
    s.ctl('inject', join(FIXTURES, 'demo.pcap'));
    const add = JSON.parse(s.ctl('--json', 'add-flow', 'priority=300,udp,tp_dst=53,actions=drop').stdout);
    expect(add.revalidated.modified + add.revalidated.deleted).toBeGreaterThan(0);
    s.ctl('inject', join(FIXTURES, 'demo.pcap'));
    let st = JSON.parse(s.ctl('--json', 'stats').stdout);
    expect(st.drops.ruleDrop).toBe(20 * 2 + 100); // telnet twice, and now vm3's DNS
    const del = JSON.parse(s.ctl('--json', 'del-flow', 'udp,tp_dst=53').stdout);
    expect(del.removed).toBe(1);
    s.ctl('inject', join(FIXTURES, 'demo.pcap'));
    st = JSON.parse(s.ctl('--json', 'stats').stdout);
    expect(st.drops.ruleDrop).toBe(20 * 3 + 100);
    expect(s.ctl('del-flow', 'udp,tp_dst=54').stderr).toMatch(/no rule has the match/);
    expect(s.ctl('add-flow', 'priority=1,colour=red,actions=drop').stderr).toMatch(/match\.colour: unknown field/);
    expect(s.ctl('add-flow', 'priority=1,tcp,actions=output:nobody').stderr).toMatch(/no interface or uplink named "nobody"/);
    await s.stop();
  }, 120_000);

  it('a migration during an inject loses no packet and duplicates none, with zero flow rewrites', async () => {
    const dir = tempDir('mig');
    const cap = join(dir, 'one-vm.pcap');
    const frames = 2_000_000;
    generate(cap, { frames, size: 64, flows: 50, vms: 1 });
    const topo = join(dir, 'topo.json');
    const t = benchTopology(2) as { ports: object[] };
    t.ports.push({ name: 'spare', ppid: 50 });
    writeFileSync(topo, JSON.stringify(t));
    const s = await start(topo);
    const inject = new Promise<string>((resolve) => {
      const p = spawn(process.execPath, [CLI, 'ctl', '-s', s.socket, '--json', 'inject', cap]);
      let o = '';
      p.stdout.on('data', (d) => (o += d));
      p.on('exit', () => resolve(o));
    });
    // Migrate once the stream is flowing (the service answers between batches).
    for (let i = 0; i < 400; i++) {
      const st = await req(s.socket, 'stats');
      if (st.result.packets.in > 0) break;
      await new Promise((r) => setTimeout(r, 5));
    }
    const mig = await req(s.socket, 'migrate', { interface: 'vm0-eth0', to: 'spare' });
    expect(mig.ok).toBe(true);
    expect(mig.result.flowRewrites).toBe(0);
    const inj = JSON.parse(await inject);
    expect(inj.packets).toEqual({ in: frames, out: frames, dropped: 0 });
    await s.stop();
    const before = stamps(join(s.out, 'vf0.pcap'));
    const after = stamps(join(s.out, 'spare.pcap'));
    expect(before.length).toBeGreaterThan(0);
    expect(after.length).toBeGreaterThan(0);
    expect(before.length + after.length).toBe(frames);
    expect(new Set([...before, ...after]).size).toBe(frames);
  }, 120_000);

  it('VPIDs and mappings survive a restart (state file written atomically)', async () => {
    const out = tempDir('restart');
    let s = await start(TOPO, out);
    expect(s.ctl('migrate', 'vm1-eth0', '--to', 'vf5', '--new-vpid', '42').status).toBe(0);
    expect(s.ctl('migrate', 'vm2-eth0', '--away').status).toBe(0);
    await s.stop();
    const state = JSON.parse(readFileSync(join(out, 'fpo-state.json'), 'utf8'));
    expect(state.vpids['vm1-eth0']).toBe(42);
    s = await start(TOPO, out);
    const show = JSON.parse(s.ctl('--json', 'show').stdout);
    const byName = Object.fromEntries(show.interfaces.map((i: any) => [i.name, i]));
    expect(byName['vm1-eth0']).toMatchObject({ vpid: 42, port: 'vf5', ppid: 15 });
    expect(byName['vm2-eth0']).toMatchObject({ vpid: 2, port: null, ppid: -1 });
    expect(byName['vm3-eth0']).toMatchObject({ vpid: 3, port: 'vf3' });
    await s.stop();
  }, 120_000);

  it('refuses bad requests with the field named and changes nothing', async () => {
    const s = await start(TOPO);
    expect(s.ctl('migrate', 'vm1-eth0', '--to', 'uplink0').stderr).toMatch(/to: port "uplink0" is an uplink/);
    expect(s.ctl('migrate', 'vm1-eth0', '--to', 'vf2').stderr).toMatch(/to: port "vf2" carries interface "vm2-eth0"/);
    expect(s.ctl('migrate', 'vm1-eth0', '--to', 'vf5', '--new-vpid', '2').stderr).toMatch(/new-vpid: 2 is in use/);
    expect(s.ctl('set-mapping', '99', '11').stderr).toMatch(/vpid: 99 is not assigned/);
    expect(s.ctl('set-mapping', '1', '12').stderr).toMatch(/ppid: port 12 \(vf2\) carries vpid 2/);
    expect(s.ctl('trace', 'eth_dst=02:00:00:00:00:01').stderr).toMatch(/packet.in_port: required/);
    expect(s.ctl('inject', '/nonexistent.pcap').stderr).toMatch(/nonexistent.pcap: cannot open/);
    const show = JSON.parse(s.ctl('--json', 'show').stdout);
    expect(show.interfaces.find((i: any) => i.name === 'vm1-eth0')).toMatchObject({ vpid: 1, port: 'vf1' });
    const bad = runCli(['ctl', '-s', s.socket, 'frobnicate']);
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/unknown command "frobnicate"; expected one of ping, show/);
    for (const c of ['show', 'migrate', 'trace', 'add-flow']) expect(s.ctl(c, '--help').stdout).toMatch(/^Usage: fpo ctl/);
    await s.stop();
  }, 120_000);

  it('serves Prometheus metrics on loopback: per-port and per-reason counters, flows, upcalls', async () => {
    const port = 20000 + Math.floor(Math.random() * 20000);
    const s = await start(TOPO, tempDir('metrics'), ['--metrics', String(port)]);
    s.ctl('inject', join(FIXTURES, 'demo.pcap'));
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    expect(text).toMatch(/# TYPE fpo_port_rx_packets_total counter/);
    expect(text).toMatch(/fpo_port_rx_packets_total\{port="uplink0",ppid="1"\} 671/);
    expect(text).toMatch(/fpo_port_tx_packets_total\{port="vf3",ppid="13"\} 108/);
    expect(text).toMatch(/fpo_drops_total\{reason="ruleDrop"\} 20/);
    expect(text).toMatch(/fpo_packets_total\{kind="in"\} 671/);
    expect(text).toMatch(/fpo_flows 13/);
    expect(text).toMatch(/fpo_upcalls_total 13/);
    expect((await fetch(`http://127.0.0.1:${port}/other`)).status).toBe(404);
    await s.stop();
  }, 60_000);

  it('survives random and truncated requests on the socket and keeps forwarding (fuzz)', async () => {
    const s = await start(TOPO);
    const send = (payload: string | Uint8Array) => new Promise<string>((resolve) => {
      const c = connect(s.socket);
      let got = '';
      c.on('data', (d) => (got += d));
      c.on('error', () => resolve(got));
      c.on('close', () => resolve(got));
      c.on('connect', () => { c.write(payload); setTimeout(() => c.end(), 2); });
    });
    const garbage = fc.sample(fc.oneof(
      fc.string({ maxLength: 200 }).map((x) => x + '\n'),
      fc.uint8Array({ maxLength: 300 }),
      fc.constantFrom('{"cmd":"migrate","args":{"interface":1}}\n', '{"cmd":"set-mapping","args":{"vpid":"x"}}\n', '{"cmd":"inject","args":{"capture":""}}\n', '[1,2]\n', 'null\n', '{"cmd":\n', '{"cmd":"add-flow","args":{"flow":"' + 'x'.repeat(5000) + '"}}\n'),
    ), { numRuns: 150, seed: 42 });
    for (const g of garbage) await send(g);
    const big = await send('{"cmd":"ping","args":{"x":"' + 'a'.repeat(70_000) + '"}}\n');
    expect(big).toMatch(/longer than 65536 bytes/);
    const inj = JSON.parse(s.ctl('--json', 'inject', join(FIXTURES, 'demo.pcap')).stdout);
    expect(inj.packets).toEqual({ in: 671, out: 621, dropped: 0 + 50 });
    const show = JSON.parse(s.ctl('--json', 'show').stdout);
    expect(show.rules.length).toBe(2);
    await s.stop();
  }, 120_000);
});
