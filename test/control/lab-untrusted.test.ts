/**
 * An untrusted VM in the lab: VMs in network namespaces (fis-*) on TAP
 * ports of a real `fpo run`, and an uplink (AF_PACKET on a veth whose other
 * end is watched in a namespace of its own). The VM spoofs its IP and MAC
 * address, sends VLAN-tagged frames, and floods 560 000 malformed frames;
 * fpo must drop and count what it must, account for every frame, and keep
 * forwarding.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT, type Skippable, needRoot, needTool, tempDir } from '../helpers.js';

const NS = { vm1: 'fis-vm1', vm2: 'fis-vm2', up: 'fis-upl' };
const MAC1 = '02:00:00:00:77:01';
const MAC2 = '02:00:00:00:77:02';
let dir = '';
let sock = '';
let fpo: ChildProcess | null = null;
let ready = false;

function canRun(ctx: Skippable): void {
  needRoot(ctx, 'the lab makes namespaces and TAP devices');
  needTool(ctx, 'ip', 'creates the namespaces');
  needTool(ctx, 'ping', 'the VMs ping each other');
  needTool(ctx, 'tcpdump', 'watches the uplink');
  if (!ready) throw new Error(`the lab did not come up; see ${dir}/fpo-run.log`);
}

const inNs = (ns: string, ...cmd: string[]) => spawnSync('ip', ['netns', 'exec', ns, ...cmd], { encoding: 'utf8', timeout: 60_000 });
const sh = (cmds: string[]) => execFileSync('sh', ['-c', cmds.join(' && ')], { stdio: ['ignore', 'pipe', 'pipe'] });
// stats lists every flow (perFlow): after the flood that is more than spawnSync's default 1 MiB.
const stats = () => JSON.parse(spawnSync(process.execPath, [join(ROOT, 'dist', 'control', 'cli.js'), 'ctl', '-s', sock, '--json', 'stats'], { encoding: 'utf8', maxBuffer: 1 << 28 }).stdout) as { packets: { in: number; out: number; dropped: number }; drops: Record<string, number>; ports: { name: string; rxPackets: number }[] };
const drop = (r: string) => stats().drops[r] ?? 0;

function teardown(): void {
  if (fpo && fpo.exitCode === null) fpo.kill('SIGKILL');
  for (const ns of Object.values(NS)) spawnSync('ip', ['netns', 'del', ns]);
  for (const dev of ['fis-t1', 'fis-t2', 'fis-u0']) spawnSync('ip', ['link', 'del', dev]);
}

beforeAll(async () => {
  if (process.getuid?.() !== 0 || spawnSync('sh', ['-c', 'command -v ip && command -v tcpdump']).status !== 0) return;
  teardown();
  dir = tempDir('fis-lab');
  sock = join(dir, 'fpo.sock');
  const topo = {
    name: 'fis',
    ports: [
      { name: 'uplink0', ppid: 1, role: 'uplink', segments: ['blue', 'red'], kind: 'afpacket', device: 'fis-u0' },
      { name: 'vf1', ppid: 11, kind: 'tap', device: 'fis-t1' },
      { name: 'vf2', ppid: 12, kind: 'tap', device: 'fis-t2' },
    ],
    segments: [{ name: 'blue' }, { name: 'red', vlan: 20 }],
    nodes: [
      { name: 'vm1', interfaces: [{ name: 'vm1-eth0', mac: MAC1, ip: '10.77.0.1', segment: 'blue', port: 'vf1' }] },
      { name: 'vm2', interfaces: [{ name: 'vm2-eth0', mac: MAC2, ip: '10.77.0.2', segment: 'blue', port: 'vf2' }] },
    ],
  };
  writeFileSync(join(dir, 'topo.json'), JSON.stringify(topo));
  sh([`ip netns add ${NS.up}`, 'ip link add fis-u0 type veth peer name fis-u1', `ip link set fis-u1 netns ${NS.up}`, 'ip link set fis-u0 up', `ip -n ${NS.up} link set fis-u1 up`]);
  fpo = spawn(process.execPath, [join(ROOT, 'dist', 'control', 'cli.js'), 'run', '-t', join(dir, 'topo.json'), '-s', sock, '-o', dir, '--log-level', 'warn'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  fpo.stderr!.on('data', (d) => (log += d));
  for (let i = 0; i < 200 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
  if (!existsSync(sock)) throw new Error(`fpo run did not start: ${log}`);
  for (const [ns, dev, mac, ip] of [[NS.vm1, 'fis-t1', MAC1, '10.77.0.1/24'], [NS.vm2, 'fis-t2', MAC2, '10.77.0.2/24']]) {
    // The MAC before the link is up: the kernel derives its link-local IPv6 address from it.
    sh([`ip netns add ${ns}`, `ip link set ${dev} netns ${ns}`, `ip -n ${ns} link set ${dev} address ${mac}`, `ip -n ${ns} addr add ${ip} dev ${dev}`, `ip -n ${ns} link set ${dev} up`, `ip -n ${ns} link set lo up`]);
  }
  ready = true;
}, 60_000);

afterAll(() => {
  teardown();
  expect(execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })).not.toMatch(/fis-(vm1|vm2|upl)\b/);
});

describe('an untrusted VM in the lab', () => {
  it('its own address pings; a spoofed IP source is dropped (portSecIpv4/portSecArp) and counted; after `ip link set address` its frames are dropped as portSecMac, and with its MAC back it pings again', (ctx) => {
    canRun(ctx);
    expect(inNs(NS.vm1, 'ping', '-c', '3', '-i', '0.2', '-W', '2', '10.77.0.2').status).toBe(0);
    // Spoofed IP: a second address in the VM, used as the source.
    const ip0 = drop('portSecIpv4') + drop('portSecArp');
    inNs(NS.vm1, 'ip', 'addr', 'add', '10.77.0.99/32', 'dev', 'fis-t1');
    expect(inNs(NS.vm1, 'ping', '-c', '3', '-i', '0.2', '-W', '1', '-I', '10.77.0.99', '10.77.0.2').status).not.toBe(0);
    expect(drop('portSecIpv4') + drop('portSecArp') - ip0).toBeGreaterThanOrEqual(2);
    inNs(NS.vm1, 'ip', 'addr', 'del', '10.77.0.99/32', 'dev', 'fis-t1');
    // Spoofed MAC: the VM's NIC takes another address.
    const mac0 = drop('portSecMac');
    inNs(NS.vm1, 'ip', 'link', 'set', 'fis-t1', 'address', '02:00:00:00:77:99');
    inNs(NS.vm1, 'ip', 'neigh', 'flush', 'all');
    expect(inNs(NS.vm1, 'ping', '-c', '3', '-i', '0.2', '-W', '1', '10.77.0.2').status).not.toBe(0);
    expect(drop('portSecMac') - mac0).toBeGreaterThanOrEqual(2);
    inNs(NS.vm1, 'ip', 'link', 'set', 'fis-t1', 'address', MAC1);
    expect(inNs(NS.vm1, 'ping', '-c', '3', '-i', '0.2', '-W', '2', '10.77.0.2').status).toBe(0);
    const s = stats();
    expect(s.packets.in).toBe(s.packets.out + s.packets.dropped);
  }, 60_000);

  it('frames it sends tagged with VLAN 20 (the red segment on the uplink) are dropped as vlanFromVm: none leaves the uplink tagged', async (ctx) => {
    canRun(ctx);
    const pcap = join(dir, 'uplink.pcap');
    const dump = spawn('ip', ['netns', 'exec', NS.up, 'tcpdump', '-i', 'fis-u1', '-n', '-U', '-w', pcap], { stdio: ['ignore', 'ignore', 'pipe'] });
    let dumpErr = '';
    dump.stderr!.on('data', (d) => (dumpErr += d));
    for (let i = 0; i < 100 && !dumpErr.includes('listening'); i++) await new Promise((r) => setTimeout(r, 50));
    const v0 = drop('vlanFromVm');
    // Tagged frames from the VM's NIC (this kernel may have no 8021q module: written raw, as a guest could).
    const gen = join(dir, 'gen.mjs');
    writeFileSync(gen, GENERATOR);
    const g = inNs(NS.vm1, process.execPath, gen, join(ROOT, 'dist', 'datapath', 'ports', 'libc.js'), 'fis-t1', '60', 'vlan20Bcast,vlan20ToPeer,priorityThenTag,qinq20');
    expect(g.status, g.stderr).toBe(0);
    // An untagged broadcast (ARP) does go out of the uplink: the capture works.
    inNs(NS.vm1, 'ping', '-c', '1', '-W', '1', '10.77.0.50');
    await new Promise((r) => setTimeout(r, 300));
    dump.kill('SIGINT');
    await new Promise((r) => dump.on('exit', r));
    expect(drop('vlanFromVm') - v0).toBe(60 - JSON.parse(g.stdout).txDropped);
    const tagged = execFileSync('tcpdump', ['-r', pcap, '-n', '-e', 'vlan'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    expect(tagged.trim()).toBe('');
    const untagged = execFileSync('tcpdump', ['-r', pcap, '-n', '-e', 'arp'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    expect(untagged).toMatch(/02:00:00:00:77:01 > ff:ff:ff:ff:ff:ff.*who-has 10\.77\.0\.50/);
  }, 60_000);

  it('560 000 malformed frames from the VM (lying lengths, deep VLAN stacks, garbage tunnel headers) are all accounted for, by reason, and a ping across works afterwards', (ctx) => {
    canRun(ctx);
    const gen = join(dir, 'gen.mjs');
    // The generator: an AF_PACKET socket in the VM's namespace, on its NIC, through fpo's own libc binding.
    writeFileSync(gen, GENERATOR);
    const tapStat = (what: string) => Number(inNs(NS.vm1, 'cat', `/sys/class/net/fis-t1/statistics/${what}`).stdout);
    const before = stats();
    const rx0 = before.ports.find((p) => p.name === 'vf1')!.rxPackets;
    const txd0 = tapStat('tx_dropped');
    const t0 = Date.now();
    const g = inNs(NS.vm1, process.execPath, gen, join(ROOT, 'dist', 'datapath', 'ports', 'libc.js'), 'fis-t1', String(560_000));
    expect(g.status, g.stderr).toBe(0);
    expect(g.stdout.length, g.stdout.slice(0, 400)).toBeLessThan(2000);
    const sent = JSON.parse(g.stdout) as { sent: number; kinds: Record<string, number>; txDropped: number };
    expect(sent.sent).toBe(560_000);
    // Wait until fpo has taken every frame the kernel handed to its TAP (its rx count stops moving).
    let after = stats();
    for (let i = 0, last = -1; i < 200; i++) {
      execFileSync('sleep', ['0.1']);
      after = stats();
      const now = after.ports.find((p) => p.name === 'vf1')!.rxPackets;
      if (now === last) break;
      last = now;
    }
    const txDropped = tapStat('tx_dropped') - txd0;
    const took = Date.now() - t0;
    const rx = after.ports.find((p) => p.name === 'vf1')!.rxPackets - rx0;
    // Every frame sent reached fpo or was dropped by the TAP queue in front of it (the kernel's count):
    // the 560 000, and the few the VM's own kernel sent meanwhile (ARP, IPv6 ND).
    expect(rx + txDropped - 560_000).toBeGreaterThanOrEqual(0);
    expect(rx + txDropped - 560_000).toBeLessThan(50);
    expect(after.packets.in).toBe(after.packets.out + after.packets.dropped);
    const d = (r: string) => (after.drops[r] ?? 0) - (before.drops[r] ?? 0);
    const dropped = after.packets.dropped - before.packets.dropped;
    const delivered = after.packets.out - before.packets.out;
    // In = delivered + dropped over the run (the other ports' few frames, vm2's ND say, included), and by reason.
    const inDelta = after.packets.in - before.packets.in;
    expect(inDelta - rx).toBeGreaterThanOrEqual(0);
    expect(inDelta - rx).toBeLessThan(50);
    expect(delivered + dropped).toBe(inDelta);
    expect(Object.keys(after.drops).reduce((a, r) => a + d(r), 0)).toBe(dropped);
    for (const r of ['ipv4BadTotalLength', 'ipv4BadHeaderLength', 'ipv4BadVersion', 'udpBadLength', 'tcpBadDataOffset', 'vlanFromVm', 'vxlanBad', 'geneveBad', 'ipv6BadPayloadLength', 'arpTruncated', 'portSecMac', 'portSecIpv4']) expect(d(r), r).toBeGreaterThan(0);
    console.log(`560000 malformed frames in ${took} ms: fpo took ${rx} (the TAP queue in front of it dropped ${txDropped}), delivered ${delivered}, dropped ${dropped}: ${JSON.stringify(Object.fromEntries(Object.keys(after.drops).map((r) => [r, d(r)]).filter(([, n]) => (n as number) > 0)))}`);
    // And fpo still forwards.
    expect(inNs(NS.vm1, 'ping', '-c', '3', '-i', '0.2', '-W', '2', '10.77.0.2').status).toBe(0);
    // With no traffic at all, the flood's flows expire by the service's own clock (10 s idle).
    const busy = stats() as unknown as { flows: { active: number; expired: number } };
    expect(busy.flows.active).toBeGreaterThan(100);
    execFileSync('sleep', ['12']);
    const idle = stats() as unknown as { flows: { active: number; expired: number }; packets: { in: number } };
    expect(idle.flows.expired - busy.flows.expired).toBeGreaterThanOrEqual(busy.flows.active - 10);
    expect(idle.flows.active).toBeLessThan(10);
  }, 90_000);
});

// Runs inside the VM: node gen.mjs LIBC_JS DEV COUNT. Sends COUNT frames of 14 kinds, round robin, paced in
// bursts, retrying a send the kernel refuses for want of buffer space (ENOBUFS, EAGAIN); prints what it sent.
const GENERATOR = `
import { readFileSync } from 'node:fs';
const [, , libcPath, dev, countText, only] = process.argv;
const { libc } = await import(libcPath);
const c = libc();
const count = Number(countText);
const fd = c.socket(17, 3, 0); // AF_PACKET, SOCK_RAW, no protocol: send only
if (fd < 0) throw new Error('socket: errno ' + c.errno());
const ifindex = c.ifNameToIndex(dev);
const sll = Buffer.alloc(20);
sll.writeUInt16LE(17, 0);
sll.writeInt32LE(ifindex, 4);
if (c.bind(fd, sll, 20) < 0) throw new Error('bind: errno ' + c.errno());
const ME = [2, 0, 0, 0, 0x77, 1], PEER = [2, 0, 0, 0, 0x77, 2], BC = [255, 255, 255, 255, 255, 255];
let seed = 12345;
const rnd = () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) >>> 8;
function frame(dst, type, payload, tags = []) {
  const b = Buffer.alloc(14 + tags.length * 4 + payload.length);
  b.set(dst, 0); b.set(ME, 6);
  let p = 12;
  for (const [tpid, tci] of tags) { b.writeUInt16BE(tpid, p); b.writeUInt16BE(tci, p + 2); p += 4; }
  b.writeUInt16BE(type, p);
  b.set(payload, p + 2);
  return b;
}
function ip4({ proto, tot, ihl = 5, ver = 4, src = [10, 77, 0, 1], dst = [10, 77, 0, 2] }, l4) {
  const h = Buffer.alloc(ihl * 4 < 20 ? 20 : ihl * 4);
  h[0] = (ver << 4) | ihl; h.writeUInt16BE(tot ?? h.length + l4.length, 2); h[8] = 64; h[9] = proto;
  h.set(src, 12); h.set(dst, 16);
  return Buffer.concat([h, l4]);
}
const udp = (sport, dport, len, body) => { const u = Buffer.alloc(8 + body.length); u.writeUInt16BE(sport, 0); u.writeUInt16BE(dport, 2); u.writeUInt16BE(len ?? 8 + body.length, 4); u.set(body, 8); return u; };
const junk = (n) => { const b = Buffer.alloc(n); for (let i = 0; i < n; i++) b[i] = rnd() & 255; return b; };
const kinds = {
  ipv4TotalLengthLies: () => frame(PEER, 0x0800, ip4({ proto: 17, tot: 1400 + (rnd() % 60000) }, udp(1, 2, undefined, junk(20)))),
  ipv4IhlBelow5: () => frame(PEER, 0x0800, ip4({ proto: 6, ihl: rnd() % 5 }, junk(20))),
  ipv4VersionWrong: () => frame(PEER, 0x0800, ip4({ proto: 17, ver: 5 + (rnd() % 10) }, junk(20))),
  udpLengthLies: () => frame(PEER, 0x0800, ip4({ proto: 17 }, udp(1000, 2000, 9 + 40 + (rnd() % 9000), junk(40)))),
  tcpOffsetLies: () => { const t = junk(20); t[12] = (rnd() % 5) << 4 | (t[12] & 15); if (t[12] >> 4 >= 5) t[12] = 0xf0; return frame(PEER, 0x0800, ip4({ proto: 6 }, t)); },
  deepVlanStack: () => frame(BC, 0x0800, junk(30), Array.from({ length: 2 + (rnd() % 7) }, (_, i) => [i % 2 ? 0x8100 : 0x88a8, rnd() & 0xfff])),
  priorityThenTag: () => frame(BC, 0x0806, junk(28), [[0x8100, 0], [0x8100, 20]]),
  vxlanGarbage: () => { const v = junk(8 + (rnd() % 30)); v[0] &= ~0x08; return frame(PEER, 0x0800, ip4({ proto: 17 }, udp(rnd() & 0xffff, 4789, undefined, v))); },
  geneveGarbage: () => { const g = junk(8 + (rnd() % 30)); g[0] = 0xc0 | (g[0] & 0x3f); return frame(PEER, 0x0800, ip4({ proto: 17 }, udp(rnd() & 0xffff, 6081, undefined, g))); },
  ipv6PayloadLies: () => { const h = Buffer.alloc(40 + 16); h[0] = 0x60; h.writeUInt16BE(200 + (rnd() % 60000), 4); h[6] = 17; h[7] = 64; h[8] = 0xfe; h[9] = 0x80; return frame(PEER, 0x86dd, h); },
  arpCut: () => frame(BC, 0x0806, junk(rnd() % 8)),
  randomBytes: () => frame(rnd() & 1 ? PEER : BC, rnd() & 0xffff, junk(rnd() % 100)),
  spoofedMac: () => { const f = frame(PEER, 0x0800, ip4({ proto: 17 }, udp(5, 6, undefined, junk(10)))); f[11] = rnd() & 255 | 1; f[11] = f[11] === 1 ? 3 : f[11]; return f; },
  spoofedIp: () => frame(PEER, 0x0800, ip4({ proto: 17, src: [10, 77, 0, 3 + (rnd() % 200)] }, udp(5, 6, undefined, junk(10)))),
};
// Well-formed but tagged: only when asked for by name.
const arpFor = (tpa) => { const a = Buffer.alloc(28); a.writeUInt16BE(1, 0); a.writeUInt16BE(0x0800, 2); a[4] = 6; a[5] = 4; a.writeUInt16BE(1, 6); a.set(ME, 8); a.set([10, 77, 0, 1], 14); a.set(tpa, 24); return a; };
const tagged = {
  vlan20Bcast: () => frame(BC, 0x0806, arpFor([10, 78, 0, 3]), [[0x8100, 20]]),
  vlan20ToPeer: () => frame(PEER, 0x0800, ip4({ proto: 17 }, udp(5, 6, undefined, junk(10))), [[0x8100, 20]]),
  priorityThenTag: kinds.priorityThenTag,
  qinq20: () => frame(BC, 0x0806, arpFor([10, 78, 0, 3]), [[0x88a8, 20], [0x8100, 20]]),
};
const table = only ? Object.fromEntries(only.split(',').map((k) => [k, kinds[k] ?? tagged[k]])) : kinds;
const names = Object.keys(table);
const sent = Object.fromEntries(names.map((n) => [n, 0]));
const txPath = '/sys/class/net/' + dev + '/statistics/tx_dropped';
const tx0 = Number(readFileSync(txPath, 'utf8'));
const pause = new Int32Array(new SharedArrayBuffer(4));
let n = 0;
while (n < count) {
  const name = names[n % names.length];
  const f = table[name]();
  const r = c.write(fd, f, f.length);
  if (r !== f.length) {
    const e = c.errno();
    if (e === 105 || e === 11) { Atomics.wait(pause, 0, 0, 1); continue; } // ENOBUFS, EAGAIN: the queue is full; again
    throw new Error('write: errno ' + e + ' for ' + name + ' of ' + f.length + ' bytes');
  }
  sent[name]++;
  n++;
  if (n % 128 === 0) Atomics.wait(pause, 0, 0, 0.3); // about the pace fpo's TAP port takes
}
const txDropped = Number(readFileSync(txPath, 'utf8')) - tx0;
process.stdout.write(JSON.stringify({ sent: n, kinds: sent, txDropped }));
`;
