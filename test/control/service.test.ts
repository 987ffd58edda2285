import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { req } from './run-service.js';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { PacketBatch } from '../../datapath/batch.js';
import { CaptureReader } from '../../datapath/ports/capture-reader.js';
import { benchTopology, generate } from '../../bench/gen-capture.js';
import { Service } from '../../control/service.js';
import { writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { eth, ipv4, tcp, udp, writePcap } from '../../fixtures/packets.js';
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

  it('ct flows by add-flow: the demo\'s TCP through conntrack and table 1; dump-flows, trace and stats say so', async () => {
    const s = await start(TOPO);
    s.ctl('inject', join(FIXTURES, 'demo.pcap'));
    const before = JSON.parse(s.ctl('--json', 'stats').stdout);
    // TCP (not telnet: its drop has a higher priority) through conntrack, then table 1: +trk passes, inv dropped.
    expect(s.ctl('add-flow', 'priority=90,tcp,actions=ct(zone=5,table=1)').status).toBe(0);
    expect(s.ctl('add-flow', 'table=1,priority=10,ct_state=+trk-inv,actions=normal').status).toBe(0);
    s.ctl('inject', join(FIXTURES, 'demo.pcap'));
    const st = JSON.parse(s.ctl('--json', 'stats').stdout);
    expect(st.packets.in).toBe(2 * 671);
    expect(st.packets.in).toBe(st.packets.out + st.packets.dropped);
    // Each TCP packet but telnet's went through ct once (as tshark counts them in the capture).
    expect(st.conntrack.packets).toBe(tsharkFields(join(FIXTURES, 'demo.pcap'), ['frame.number'], 'tcp && tcp.dstport != 23').length);
    const flows = s.ctl('dump-flows').stdout;
    expect(flows).toMatch(/ct\(zone=5,table=1\)/);
    expect(flows).toMatch(/recirc_id=1/);
    const tr = s.ctl('trace', 'in_port=vf1,eth_src=02:00:00:00:00:01,eth_dst=02:00:00:00:00:02,tcp,ipv4_src=10.0.0.1,ipv4_dst=10.0.0.2,tp_dst=80');
    expect(tr.stdout).toMatch(/ct\(zone=5,table=1\): through conntrack/);
    const tr1 = s.ctl('trace', 'in_port=vf1,eth_src=02:00:00:00:00:01,eth_dst=02:00:00:00:00:02,tcp,ipv4_src=10.0.0.1,ipv4_dst=10.0.0.2,tp_dst=80,table=1,ct_state=+trk+new');
    expect(tr1.stdout).toMatch(/rule \d+ \(priority 10\) in table 1 said normal/);
    expect(tr1.stdout).toMatch(/output: vpid 2 \(vm2-eth0\)/);
    const tr2 = s.ctl('trace', 'in_port=vf1,eth_src=02:00:00:00:00:01,eth_dst=02:00:00:00:00:02,tcp,table=1,ct_state=+trk+inv');
    expect(tr2.stdout).toMatch(/table 1: no rule matched/);
    expect(s.ctl('add-flow', 'priority=1,actions=ct(zone=5,table=1),output:vm1-eth0').stderr).toMatch(/must be the rule's last action/);
    expect(s.ctl('add-flow', 'priority=1,actions=ct(zone=99999)').stderr).toMatch(/zone.*0\.\.65535/);
    await s.stop();
  }, 120_000);

  it('a firewalled interface: its connections listed by its port (its zone); a port with neither a firewall nor a hand-over refused', async () => {
    const dir = tempDir('fwsvc');
    const t = JSON.parse(readFileSync(TOPO, 'utf8'));
    for (const n of t.nodes) for (const i of n.interfaces) if (i.name === 'vm2-eth0') i.firewall = [{ direction: 'in', action: 'allow', proto: 'tcp', ports: 443 }, { direction: 'out', action: 'allow' }];
    const topo = join(dir, 'fw.json');
    writeFileSync(topo, JSON.stringify(t));
    const s = await start(topo);
    s.ctl('inject', join(FIXTURES, 'demo.pcap'));
    // SYNs to vm2's 443 (the capture's TCP to it is met mid-stream: the firewall admits TCP only by its SYN).
    const syns = join(dir, 'syn.pcap');
    writePcap(syns, [1, 2, 3].map((k) => ({ sec: 1, usec: k, data: eth('02:00:00:00:00:02', '02:ee:00:00:00:01', 0x0800, ipv4({ src: `192.0.2.${30 + k}`, dst: '10.0.0.2', proto: 6 }, tcp(40000 + k, 443, new Uint8Array(0), 0x02))) })));
    s.ctl('inject', syns);
    const st = JSON.parse(s.ctl('--json', 'stats').stdout);
    expect(st.packets.in).toBe(st.packets.out + st.packets.dropped);
    const byPort = JSON.parse(s.ctl('--json', 'conntrack', 'list', '--port', 'vf2').stdout);
    const byName = JSON.parse(s.ctl('--json', 'conntrack', 'list', '--port', 'vm2-eth0').stdout);
    const byZone = JSON.parse(s.ctl('--json', 'conntrack', 'list', '--zone', '2').stdout);
    expect(byPort.connections.length).toBeGreaterThan(0);
    const ids = (r: any) => r.connections.map((c: any) => [c.id, c.zone, c.orig, c.reply]); // (expiresInMs moves between calls)
    expect(ids(byPort)).toEqual(ids(byZone));
    expect(ids(byName)).toEqual(ids(byZone));
    expect(byPort.connections.every((c: any) => c.zone === 2 && c.owner === 'firewall' && c.firewall === 'v1')).toBe(true);
    expect(byPort.connections).toHaveLength(3);
    expect(s.ctl('conntrack', 'list', '--port', 'vf1').stderr).toMatch(/"vf1" is no port or interface of a service VM .* or of an interface with a firewall/);
    expect(s.ctl('conntrack', 'list', '--port', 'vf2', '--zone', '3').stderr).toMatch(/zone: 3 is not the zone of vm2-eth0's firewall \(2\)/);
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

/** A TCP port free on `host` now (the kernel's pick; closed again before it is used). */
function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const a = srv.address();
      srv.close(() => resolve(typeof a === 'object' && a ? a.port : -1));
    });
  });
}

/** Ids (UDP source ports) of the frames in a port's capture, in order, read by tshark; [] when none. */
function udpIds(out: string, port: string): number[] {
  const f = join(out, `${port}.pcap`);
  if (!existsSync(f)) return [];
  return tsharkFields(f, ['udp.srcport']).map((r) => Number(r[0]));
}

const MAC = (n: number) => `02:00:00:00:00:0${n}`;
const range = (a: number, b: number) => Array.from({ length: b - a }, (_, i) => a + i);
/** A UDP frame from the uplink side to vm `n`, its id as source port. */
const toVm = (n: number, id: number) => eth(MAC(n), '02:ee:00:00:00:01', 0x0800, ipv4({ src: '192.0.2.1', dst: `10.0.0.${n}`, proto: 17 }, udp(id, 9, new Uint8Array(18))));

describe('fpo ctl set-mapping', () => {
  it('a successful set-mapping sends the VPID\'s packets to the new port from then on, with no new flow, and is kept in the state file', async (ctx) => {
    needTool(ctx, 'tshark', 'reads the port captures');
    const dir = tempDir('setmap');
    // Two captures, each 40 packets to vm1 and 30 to vm2, told apart by their ids.
    const mk = (file: string, base: number) => {
      writePcap(file, range(0, 70).map((i) => ({ sec: 1000, usec: i, data: i < 40 ? toVm(1, base + i) : toVm(2, base + i) })));
      return file;
    };
    const a = mk(join(dir, 'a.pcap'), 20000);
    const b = mk(join(dir, 'b.pcap'), 30000);
    const s = await start(TOPO, join(dir, 'out'));
    expect(JSON.parse(s.ctl('--json', 'inject', a).stdout).packets).toEqual({ in: 70, out: 70, dropped: 0 });
    const before = JSON.parse(s.ctl('--json', 'stats').stdout);
    const r = s.ctl('--json', 'set-mapping', '1', '15');
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ vpid: 1, ppid: 15 });
    const show = JSON.parse(s.ctl('--json', 'show').stdout);
    expect(show.interfaces.find((i: any) => i.name === 'vm1-eth0')).toMatchObject({ vpid: 1, ppid: 15, port: 'vf5' });
    expect(show.ports.find((p: any) => p.name === 'vf5')).toMatchObject({ ppid: 15, vpid: 1, attached: 'vm1-eth0' });
    expect(show.ports.find((p: any) => p.name === 'vf1')).toMatchObject({ ppid: 11, vpid: -1, attached: null });
    expect(JSON.parse(readFileSync(join(s.out, 'fpo-state.json'), 'utf8')).ports['vm1-eth0']).toBe('vf5');
    expect(JSON.parse(s.ctl('--json', 'inject', b).stdout).packets).toEqual({ in: 70, out: 70, dropped: 0 });
    const after = JSON.parse(s.ctl('--json', 'stats').stdout);
    // The flows of the first capture carried the second: a mapping change, no flow change.
    expect(after.flows.upcalls).toBe(before.flows.upcalls);
    expect(after.flows.installed).toBe(before.flows.installed);
    await s.stop();
    expect(udpIds(s.out, 'vf1')).toEqual(range(20000, 20040));
    expect(udpIds(s.out, 'vf5')).toEqual(range(30000, 30040));
    expect(udpIds(s.out, 'vf2')).toEqual([...range(20040, 20070), ...range(30040, 30070)]);
  }, 60_000);
});

describe('fpo ctl inject --port', () => {
  it('injects a capture into the named port: it is received there, and floods leave by every other port of the segment', async (ctx) => {
    needTool(ctx, 'tshark', 'reads the capture and the port captures');
    const dir = tempDir('injport');
    // From vm2: 25 unicast frames to vm1, then 15 broadcasts in its segment (blue: vm1, vm5 with no port, the uplink).
    const bcast = (id: number) => eth('ff:ff:ff:ff:ff:ff', MAC(2), 0x0800, ipv4({ src: '10.0.0.2', dst: '10.0.0.255', proto: 17 }, udp(id, 9, new Uint8Array(18))));
    const fromVm2 = (id: number) => eth(MAC(1), MAC(2), 0x0800, ipv4({ src: '10.0.0.2', dst: '10.0.0.1', proto: 17 }, udp(id, 9, new Uint8Array(30))));
    const cap = join(dir, 'from-vm2.pcap');
    writePcap(cap, range(0, 40).map((i) => ({ sec: 1000, usec: i, data: i < 25 ? fromVm2(100 + i) : bcast(100 + i) })));
    const lens = tsharkFields(cap, ['frame.len']).map((r) => Number(r[0]));
    expect(lens.length).toBe(40);
    const s = await start(TOPO, join(dir, 'out'));
    const r = s.ctl('--json', 'inject', cap, '--port', 'vf2');
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toMatchObject({ port: 'vf2', packets: { in: 40, out: 40, dropped: 0 } });
    const st = JSON.parse(s.ctl('--json', 'stats').stdout);
    const port = (name: string) => st.ports.find((p: any) => p.name === name);
    expect(port('vf2')).toMatchObject({ rxPackets: 40, rxBytes: lens.reduce((x, y) => x + y, 0) });
    expect(port('uplink0')).toMatchObject({ rxPackets: 0, rxBytes: 0 });
    await s.stop();
    expect(udpIds(s.out, 'vf1')).toEqual(range(100, 140)); // its unicasts and the broadcasts
    expect(udpIds(s.out, 'uplink0')).toEqual(range(125, 140)); // the broadcasts only
    expect(udpIds(s.out, 'vf2')).toEqual([]); // never back out of the port it came in on
    for (const red of ['vf3', 'vf4']) expect(udpIds(s.out, red)).toEqual([]);
  }, 60_000);

  it('refuses a port that does not exist, an empty port, and a capture that is not a µs Ethernet pcap, injecting nothing', async (ctx) => {
    needTool(ctx, 'editcap', 'writes the pcapng and nanosecond copies');
    const dir = tempDir('injbad');
    const cap = join(dir, 'ok.pcap');
    writePcap(cap, range(0, 10).map((i) => ({ sec: 1000, usec: i, data: toVm(1, 500 + i) })));
    const ng = join(dir, 'ok.pcapng');
    execFileSync('editcap', ['-F', 'pcapng', cap, ng]);
    const ns = join(dir, 'ok-ns.pcap');
    execFileSync('editcap', ['-F', 'nsecpcap', cap, ns]);
    const raw = join(dir, 'raw.pcap'); // the same file with link type 101 (raw IP)
    const bytes = readFileSync(cap);
    bytes.writeUInt32LE(101, 20);
    writeFileSync(raw, bytes);
    const s = await start(TOPO, join(dir, 'out'));
    const refusals: [string[], RegExp][] = [
      [[cap, '--port', 'nosuch'], /^fpo: inject: port: no port named "nosuch"\n$/],
      [[cap, '--port', 'vm1-eth0'], /^fpo: inject: port: no port named "vm1-eth0"\n$/], // an interface, not a port
      [[cap, '--port', ''], /^fpo: inject: port: expected a non-empty string\n$/],
      [[ng], /inject takes a classic Ethernet pcap with µs timestamps/],
      [[ns], /inject takes a classic Ethernet pcap with µs timestamps/],
      [[raw], /inject takes a classic Ethernet pcap with µs timestamps/],
    ];
    let seen = 0;
    for (const [args, msg] of refusals) {
      const r = s.ctl('inject', ...args);
      expect(r.status, args.join(' ')).toBe(1);
      expect(r.stderr, args.join(' ')).toMatch(msg);
      expect(r.stdout).toBe('');
      seen++;
    }
    expect(seen).toBe(6);
    const st = JSON.parse(s.ctl('--json', 'stats').stdout);
    expect(st.packets.in).toBe(0);
    expect(st.ports.reduce((n: number, p: any) => n + p.rxPackets + p.txPackets, 0)).toBe(0);
    expect(st.control.refused).toBe(6);
    // The same capture into a real port goes in whole.
    expect(JSON.parse(s.ctl('--json', 'inject', cap, '--port', 'uplink0').stdout).packets).toEqual({ in: 10, out: 10, dropped: 0 });
    await s.stop();
  }, 60_000);
});

/** Prometheus text → (name{labels sorted} → value); every sample line once. */
function parseProm(text: string): Map<string, number> {
  const m = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const r = /^([a-z_]+)(?:\{([^}]*)\})? (\S+)$/.exec(line);
    expect(r, line).not.toBeNull();
    const labels = r![2] ? r![2].split(',').map((l) => l.trim()).sort().join(',') : '';
    const k = labels ? `${r![1]}{${labels}}` : r![1];
    expect(m.has(k), k).toBe(false);
    m.set(k, Number(r![3]));
  }
  return m;
}

describe('fpo run --metrics HOST:PORT', () => {
  for (const [host, url] of [['127.0.0.2', '127.0.0.2'], ['::1', '[::1]']] as const) {
    it(`serves /metrics on ${host} only, and its counters are the service's stats`, async (ctx) => {
      needTool(ctx, 'tshark', 'counts the injected capture');
      const port = await freePort(host);
      const addr = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
      const s = await start(TOPO, tempDir('metrics-host'), ['--metrics', addr]);
      const demo = join(FIXTURES, 'demo.pcap');
      s.ctl('inject', demo);
      s.ctl('migrate', 'vm1-eth0', '--to', 'vf5');
      const res = await fetch(`http://${url}:${port}/metrics`);
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toMatch(/^text\/plain/);
      const m = parseProm(await res.text());
      const st = JSON.parse(s.ctl('--json', 'stats').stdout);
      // Not on the default host: the address given is the only one served.
      await expect(fetch(`http://127.0.0.1:${port}/metrics`)).rejects.toThrow();
      await s.stop();
      // Independent of both: what tshark reads from the capture arrived on uplink0.
      const frames = tsharkFields(demo, ['frame.len']);
      expect(m.get('fpo_port_rx_packets_total{port="uplink0",ppid="1"}')).toBe(frames.length);
      expect(m.get('fpo_port_rx_bytes_total{port="uplink0",ppid="1"}')).toBe(frames.reduce((n, r) => n + Number(r[0]), 0));
      let ports = 0;
      for (const p of st.ports) {
        const l = `{port="${p.name}",ppid="${p.ppid}"}`;
        expect(m.get(`fpo_port_rx_packets_total${l}`), p.name).toBe(p.rxPackets);
        expect(m.get(`fpo_port_rx_bytes_total${l}`), p.name).toBe(p.rxBytes);
        expect(m.get(`fpo_port_tx_packets_total${l}`), p.name).toBe(p.txPackets);
        expect(m.get(`fpo_port_tx_bytes_total${l}`), p.name).toBe(p.txBytes);
        ports++;
      }
      expect(ports).toBe(6);
      let reasons = 0;
      for (const [reason, n] of Object.entries(st.drops)) {
        expect(m.get(`fpo_drops_total{reason="${reason}"}`), reason).toBe(n);
        reasons++;
      }
      expect(reasons).toBe(6);
      expect([...m.keys()].filter((k) => k.startsWith('fpo_drops_total')).length).toBe(reasons);
      expect(m.get('fpo_packets_total{kind="in"}')).toBe(st.packets.in);
      expect(m.get('fpo_packets_total{kind="out"}')).toBe(st.packets.out);
      expect(m.get('fpo_packets_total{kind="dropped"}')).toBe(st.packets.dropped);
      expect(m.get('fpo_upcalls_total')).toBe(st.flows.upcalls);
      expect(m.get('fpo_flows')).toBe(st.flows.active);
      expect(m.get('fpo_migrations_total')).toBe(st.migrations);
      expect(st.migrations).toBe(1);
    }, 60_000);
  }

  it('an address in use, or one that is not HOST:PORT, stops fpo run with the address named', async () => {
    const port = await freePort('127.0.0.1');
    const s = await start(TOPO, tempDir('metrics-busy'), ['--metrics', `127.0.0.1:${port}`]);
    const dir = tempDir('metrics-busy2');
    const busy = runCli(['run', '-t', TOPO, '-s', join(dir, 'ctl.sock'), '-o', dir, '--metrics', `127.0.0.1:${port}`], { timeout: 20_000 });
    expect(busy.status).toBe(1);
    expect(busy.stderr).toMatch(new RegExp(`^fpo: --metrics 127\\.0\\.0\\.1:${port}: cannot listen: .*EADDRINUSE`));
    const bad = runCli(['run', '-t', TOPO, '-s', join(dir, 'ctl.sock'), '-o', dir, '--metrics', 'localhost:99999'], { timeout: 20_000 });
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/--metrics: expected HOST:PORT or PORT, got "localhost:99999"/);
    await s.stop();
  }, 60_000);
});


describe('fpo run: names and keys Object.prototype has', () => {
  const PROTO_KEYS = ['__proto__', 'constructor', 'toString', 'hasOwnProperty', 'valueOf'];

  /** A service in this process (no socket): its requests through handle(), as the socket hands them on. */
  function service(topology: string, out: string): Service {
    return new Service({ topology, socket: join(out, 'ctl.sock'), outDir: out, logLevel: 'silent' });
  }

  it('an interface named "toString" that the state file does not list gets a free VPID (a number) and keeps its port', async () => {
    const out = tempDir('svc-tostring');
    const first = service(TOPO, out);
    await first.stop(); // the state file now lists vm1-eth0 … vm5-eth0 and uplink0: VPIDs 1..6
    const renamed = join(out, 'topology.json');
    writeFileSync(renamed, readFileSync(TOPO, 'utf8').replaceAll('vm1-eth0', 'toString'));
    const svc = service(renamed, out);
    const itf = (svc.show() as any).interfaces.find((i: any) => i.name === 'toString');
    expect(itf).toEqual({ name: 'toString', node: 'vm1', mac: '02:00:00:00:00:01', ip: '10.0.0.1', segment: 'blue', vpid: 7, ppid: 11, port: 'vf1' });
    await svc.stop();
    expect(JSON.parse(readFileSync(join(out, 'fpo-state.json'), 'utf8')).vpids.toString).toBe(7);
  });

  it('del-flow with table=N removes that table\'s rules only (it removed the same match in every table); without table=, every table\'s', async () => {
    const out = tempDir('svc-delflow-table');
    const svc = service(TOPO, out);
    const n = svc.fpag.ruleSpecs.length;
    await svc.handle('add-flow', { flow: 'priority=7,icmp,actions=drop' });
    await svc.handle('add-flow', { flow: 'table=1,priority=7,icmp,actions=normal' });
    await svc.handle('add-flow', { flow: 'table=2,priority=7,icmp,actions=normal' });
    expect(await svc.handle('del-flow', { flow: 'table=1,icmp' })).toMatchObject({ removed: 1 });
    const left = svc.fpag.ruleSpecs;
    expect(left).toHaveLength(n + 2);
    expect(left.filter((r) => r.priority === 7).map((r) => r.table ?? 0)).toEqual([0, 2]);
    await expect(svc.handle('del-flow', { flow: 'table=1,icmp' })).rejects.toThrowError(/no rule has the match .* in table 1/);
    expect(await svc.handle('del-flow', { flow: 'icmp' })).toMatchObject({ removed: 2 });
    await svc.stop();
  });

  it('add-flow, del-flow and trace refuse them as match fields by name, and change nothing', async () => {
    const out = tempDir('svc-protokeys');
    const svc = service(TOPO, out);
    const rules = (svc.show() as any).rules;
    expect(rules).toHaveLength(2);
    let refused = 0;
    for (const k of PROTO_KEYS) {
      await expect(svc.handle('add-flow', { flow: `priority=60000,${k},actions=drop` })).rejects.toThrowError(`match: unknown field "${k}"`);
      await expect(svc.handle('add-flow', { flow: `priority=60000,${k}=1,actions=drop` })).rejects.toThrowError(`match.${k}: unknown field "${k}"`);
      await expect(svc.handle('del-flow', { flow: k })).rejects.toThrowError(`match: unknown field "${k}"`);
      await expect(svc.handle('trace', { packet: `in_port=vf1,${k}=1` })).rejects.toThrowError(`match.${k}: unknown field "${k}"`);
      refused += 4;
    }
    expect(refused).toBe(20);
    expect((svc.show() as any).rules).toEqual(rules);
    // As values they are names like any, looked up in Maps: none is an interface or port here.
    await expect(svc.handle('trace', { packet: 'in_port=toString,tcp' })).rejects.toThrowError('packet.in_port: no interface or port named "toString"');
    await expect(svc.handle('add-flow', { flow: 'tcp,actions=output:constructor' })).rejects.toThrowError('no interface or uplink named "constructor"');
    await expect(svc.handle('migrate', { interface: 'valueOf', to: 'vf5' })).rejects.toThrowError('interface: no interface named "valueOf"');
    await expect(svc.handle('migrate', { interface: 'vm1-eth0', to: 'hasOwnProperty' })).rejects.toThrowError('to: no port named "hasOwnProperty"');
    await svc.stop();
  });
});

describe('fpo run: request fields', () => {
  it('an unknown field of a request\'s args is refused by name, before anything is done', async () => {
    const out = tempDir('svc-args');
    const svc = new Service({ topology: TOPO, socket: join(out, 'ctl.sock'), outDir: out, logLevel: 'silent' });
    const before = JSON.stringify(svc.show());
    // A misspelt newVpid was ignored: the interface moved without its new VPID.
    await expect(svc.handle('migrate', { interface: 'vm1-eth0', to: 'vf5', newvpid: 9 })).rejects.toThrowError('args: unknown field "newvpid"; migrate takes interface, to, away, newVpid');
    await expect(svc.handle('set-mapping', JSON.parse('{"vpid": 1, "ppid": 15, "__proto__": {"ppid": 11}}'))).rejects.toThrowError('args: unknown field "__proto__"; set-mapping takes vpid, ppid');
    for (const k of ['__proto__', 'constructor', 'toString', 'hasOwnProperty', 'valueOf']) {
      await expect(svc.handle('add-flow', JSON.parse(`{"flow": "tcp,actions=drop", ${JSON.stringify(k)}: 1}`))).rejects.toThrowError(`args: unknown field ${JSON.stringify(k)}; add-flow takes flow`);
      await expect(svc.handle('show', JSON.parse(`{${JSON.stringify(k)}: 1}`))).rejects.toThrowError(`args: unknown field ${JSON.stringify(k)}; show takes no args`);
    }
    expect(JSON.stringify(svc.show())).toBe(before);
    // What ctl sends still passes (undefined options are left out of its JSON).
    expect(await svc.handle('migrate', JSON.parse(JSON.stringify({ interface: 'vm1-eth0', to: 'vf5', away: false, newVpid: undefined })))).toMatchObject({ interface: 'vm1-eth0', to: 'vf5' });
    await svc.stop();
  });
});

describe('fpo run keeps its own clock', () => {
  it('a capture stamped 0xffffffff injected into the service does not stop flows from expiring (the service expires by its monotonic clock)', async () => {
    const dir = tempDir('svc-clock');
    const pkt = (vm: number) => eth(`02:00:00:00:00:0${vm}`, '02:ee:00:00:00:01', 0x0800, ipv4({ src: '192.0.2.1', dst: '10.0.0.1', proto: 17 }, udp(1000, 9, new Uint8Array(20))));
    writePcap(join(dir, 'wild.pcap'), [{ sec: 0xffffffff, usec: 999_999, data: pkt(1) }, { sec: 0xffffffff, usec: 999_999, data: pkt(2) }]);
    writePcap(join(dir, 'later.pcap'), [{ sec: 1_700_000_000, usec: 0, data: pkt(9) }]); // unknown unicast: a flood, a flow of its own
    const s = await start(TOPO, join(dir, 'out'));
    expect(JSON.parse(s.ctl('--json', 'inject', join(dir, 'wild.pcap')).stdout).packets).toEqual({ in: 2, out: 2, dropped: 0 });
    const before = JSON.parse(s.ctl('--json', 'stats').stdout);
    expect(before.flows.active).toBe(2);
    // The default idle timeout is 10 s; expiry runs when a batch passes.
    await new Promise((r) => setTimeout(r, 11_500));
    expect(JSON.parse(s.ctl('--json', 'inject', join(dir, 'later.pcap')).stdout).packets).toEqual({ in: 1, out: 1, dropped: 0 });
    const after = JSON.parse(s.ctl('--json', 'stats').stdout);
    expect(after.flows.expired).toBe(2);
    expect(after.flows.active).toBe(1); // the later packet's
    expect(after.packets.in).toBe(after.packets.out + after.packets.dropped);
    await s.stop();
  }, 30_000);
});
