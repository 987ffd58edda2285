import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CLI, ROOT, cleanTemp, needRoot, needTool, runCli, tempDir } from '../helpers.js';

// fpo run with two VM ports on rings (afpacket on the host ends of veth pairs), a sender that sends
// 64-byte frames as fast as it can (bench/ports/blast.c) for a second: every frame it sent is either
// read by fpo or counted by the kernel as missed at fpo's ring, and every frame fpo sent out is either
// received by the other VM's interface or counted as dropped there — exactly.

const A = '02:00:00:00:73:01';
const B = '02:00:00:00:73:02';
const ns = (x: string) => `fpolr-${process.pid}-${x}`;
const sh = (cmd: string) => execFileSync('sh', ['-c', cmd], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const quiet = (cmd: string) => spawnSync('sh', ['-c', cmd], { stdio: 'ignore' });
const stat = (n: string, dev: string, what: string) => Number(sh(`ip netns exec ${n} cat /sys/class/net/${dev}/statistics/${what}`).trim());

afterAll(() => {
  quiet(`ip netns del ${ns('a')}; ip netns del ${ns('b')}; ip link del fpolr-ha; ip link del fpolr-hb`);
  cleanTemp();
});

describe.each([['ring', 'tpacket-v3'], ['xdp', 'af-xdp-copy-native']] as const)('fpo run on ports with io %s under a sender faster than it', (io, mode) => {
  it('accounts for every frame: sent = read + missed at the rx ring; sent out = received + dropped at the peer; in = delivered + dropped', async (ctx) => {
    needRoot(ctx, 'makes namespaces, veth pairs and AF_PACKET rings');
    quiet(`ip netns del ${ns('a')}; ip netns del ${ns('b')}; ip link del fpolr-ha; ip link del fpolr-hb`);
    needTool(ctx, 'ip', 'makes the namespaces');
    needTool(ctx, 'cc', 'builds the sender');
    const dir = tempDir('livering');
    const blaster = join(dir, 'blast');
    execFileSync('cc', ['-O2', '-o', blaster, join(ROOT, 'bench', 'ports', 'blast.c')]);
    sh(`ip netns add ${ns('a')} && ip netns add ${ns('b')}`
      + ' && ip link add fpolr-va type veth peer name fpolr-ha && ip link add fpolr-vb type veth peer name fpolr-hb'
      + ` && ip link set fpolr-va netns ${ns('a')} && ip link set fpolr-vb netns ${ns('b')}`
      + ' && sysctl -qw net.ipv6.conf.fpolr-ha.disable_ipv6=1 net.ipv6.conf.fpolr-hb.disable_ipv6=1'
      + ` && ip netns exec ${ns('a')} sysctl -qw net.ipv6.conf.all.disable_ipv6=1 && ip netns exec ${ns('b')} sysctl -qw net.ipv6.conf.all.disable_ipv6=1`
      + ` && ip -n ${ns('a')} link set fpolr-va address ${A} up && ip -n ${ns('b')} link set fpolr-vb address 02:00:00:00:73:fe up`
      + ' && ip link set fpolr-ha up && ip link set fpolr-hb up');
    const topo = join(dir, 'topology.json');
    writeFileSync(topo, JSON.stringify({
      name: 'lr', segments: [{ name: 's' }],
      ports: [{ name: 'pa', ppid: 11, kind: 'afpacket', device: 'fpolr-ha', io }, { name: 'pb', ppid: 12, kind: 'afpacket', device: 'fpolr-hb', io }],
      nodes: [{ name: 'a', interfaces: [{ name: 'a0', mac: A, segment: 's', port: 'pa' }] }, { name: 'b', interfaces: [{ name: 'b0', mac: B, segment: 's', port: 'pb' }] }],
    }));
    const sock = join(dir, 'fpo.sock');
    const fpo = spawn(process.execPath, [CLI, 'run', '-t', topo, '-s', sock, '-o', join(dir, 'out')], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    fpo.stderr.on('data', (d) => (err += d));
    try {
      for (let i = 0; i < 200 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
      expect(existsSync(sock), err).toBe(true);
      const rx0 = stat(ns('b'), 'fpolr-vb', 'rx_packets');
      const drop0 = stat(ns('b'), 'fpolr-vb', 'rx_dropped');
      // The kernel's own drops between the sender and fpo's socket (a full backlog): at the veth, counted there.
      const kernelDrops = () => stat(ns('a'), 'fpolr-va', 'tx_dropped') + Number(sh('cat /sys/class/net/fpolr-ha/statistics/rx_dropped').trim());
      const kd0 = kernelDrops();
      const sent = Number(sh(`ip netns exec ${ns('a')} ${blaster} fpolr-va ${A} ${B} 1`).trim());
      // Let fpo finish what its ring holds, then read every count.
      let st: any;
      for (let i = 0; i < 50; i++) {
        await new Promise((r) => setTimeout(r, 100));
        const now = JSON.parse(runCli(['ctl', '-s', sock, '--json', 'stats']).stdout);
        if (st && now.packets.in === st.packets.in) break;
        st = now;
      }
      const pa = st.live.find((l: any) => l.port === 'pa');
      const pb = st.live.find((l: any) => l.port === 'pb');
      const portA = st.ports.find((p: any) => p.name === 'pa');
      const portB = st.ports.find((p: any) => p.name === 'pb');
      expect(pa.mode).toBe(mode);
      expect(sent).toBeGreaterThan(10_000);
      const kd = kernelDrops() - kd0;
      console.log(`live-ring (io ${io}) counts: sent ${sent}, read ${portA.rxPackets}, missed ${pa.rxMissed}, kernel ${kd} (a tx_dropped ${stat(ns('a'), 'fpolr-va', 'tx_dropped')}, ha rx_dropped ${sh('cat /sys/class/net/fpolr-ha/statistics/rx_dropped').trim()})`);
      if (io === 'ring') expect(portA.rxPackets + pa.rxMissed + kd).toBe(sent);
      else {
        // AF_XDP: a frame the socket had no room for is dropped by the veth's XDP path, which counts it as
        // its rx_dropped too (with any it dropped before the program ran): the socket's count is within it.
        expect(portA.rxPackets + kd).toBe(sent);
        expect(pa.rxMissed).toBeLessThanOrEqual(kd);
      }
      expect(st.packets.in).toBe(st.packets.out + st.packets.dropped);
      expect(st.packets.in).toBe(portA.rxPackets + portB.rxPackets);
      // Out of pb's ring: each frame queued is received by b's interface or dropped there (its backlog full).
      const received = stat(ns('b'), 'fpolr-vb', 'rx_packets') - rx0;
      const droppedAtB = stat(ns('b'), 'fpolr-vb', 'rx_dropped') - drop0;
      expect(st.drops).toEqual({});
      expect(portB.txPackets).toBe(portA.rxPackets); // one flow, a to b: all delivered to pb
      expect(pb.txSent + pb.txRingFull + pb.txErrors).toBe(portB.txPackets);
      expect(received + droppedAtB).toBe(pb.txSent);
      console.log(`live-ring (io ${io}): sent ${sent}, read ${portA.rxPackets}, missed at the ring ${pa.rxMissed}, dropped by the kernel before it ${kd}; out ${portB.txPackets}, sent ${pb.txSent}, ring full ${pb.txRingFull}, received ${received}, dropped at b ${droppedAtB}`);
    } finally {
      fpo.kill('SIGTERM');
      await new Promise((r) => fpo.on('exit', r));
    }
  }, 60_000);
});
