/**
 * A live migration between two fpo hosts under a sender at full speed
 * (issue 21), real parts: host B's `fpo run` in a namespace of its own, an
 * underlay (a veth pair) between it and host A; on A, a sender VM
 * (a namespace on a ring port, bench/ports/blast.c: 64-byte frames as fast
 * as it can) sending to vm1, which runs on A's VF port (its guest: the
 * driver and its own writes). While it sends (~500 k frames/s here),
 * `fpo ctl migrate-vm` moves vm1 to B over the underlay: the memory at the
 * switch is exact (both SHA-256), and every frame the sender sent is
 * accounted for on A — read by fpo or missed at its ring; of those read for
 * vm1, written into its memory, counted by the VF with a reason, or (after
 * the switch) sent through the tunnel toward B.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CLI, ROOT, cleanTemp, needRoot, needTool, runCli, tempDir } from '../../helpers.js';

const TAG = `m${process.pid % 100000}`;
const NS = { send: `fpo-${TAG}-s`, b: `fpo-${TAG}-b` };
const LINK = { sendHost: `${TAG}sh`, sendVm: `${TAG}sv`, ulA: `${TAG}ua`, ulB: `${TAG}ub` };
const SENDER = '02:00:00:00:74:01';
const VM1 = '02:00:00:00:74:09';
const MEM = 32 << 20;
const children: ChildProcess[] = [];
const sh = (cmd: string) => execFileSync('sh', ['-c', cmd], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const quiet = (cmd: string) => spawnSync('sh', ['-c', cmd], { stdio: 'ignore' });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function cleanup(): void {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  quiet(`ip netns del ${NS.send}; ip netns del ${NS.b}; ip link del ${LINK.sendHost}; ip link del ${LINK.ulA}`);
}

afterAll(() => { cleanup(); cleanTemp(); });

function run(args: string[], netns?: string): { proc: ChildProcess; err: () => string } {
  const cmd = netns ? ['ip', ['netns', 'exec', netns, process.execPath, CLI, ...args]] as const : [process.execPath, [CLI, ...args]] as const;
  const proc = spawn(cmd[0], [...cmd[1]], { stdio: ['ignore', 'ignore', 'pipe'] });
  children.push(proc);
  let err = '';
  proc.stderr!.on('data', (d) => (err += d));
  return { proc, err: () => err };
}

describe('fpo ctl migrate-vm between two hosts on an underlay, under a sender at full speed', () => {
  it('the VM\'s memory arrives exact, and every frame sent to it is accounted for', async (ctx) => {
    needRoot(ctx, 'makes namespaces and veth pairs');
    needTool(ctx, 'ip', 'makes the namespaces');
    needTool(ctx, 'cc', 'builds the sender');
    cleanup();
    const dir = tempDir('miglab');
    const blaster = join(dir, 'blast');
    execFileSync('cc', ['-O2', '-o', blaster, join(ROOT, 'bench', 'ports', 'blast.c')]);
    // The sender VM, and the underlay: A in this namespace at 10.88.0.1, B in its own at 10.88.0.2.
    sh(`ip netns add ${NS.send} && ip netns add ${NS.b}`
      + ` && ip link add ${LINK.sendVm} type veth peer name ${LINK.sendHost} && ip link set ${LINK.sendVm} netns ${NS.send}`
      + ` && sysctl -qw net.ipv6.conf.${LINK.sendHost}.disable_ipv6=1 && ip netns exec ${NS.send} sysctl -qw net.ipv6.conf.all.disable_ipv6=1`
      + ` && ip -n ${NS.send} link set ${LINK.sendVm} address ${SENDER} up && ip link set ${LINK.sendHost} up`
      + ` && ip link add ${LINK.ulA} type veth peer name ${LINK.ulB} && ip link set ${LINK.ulB} netns ${NS.b}`
      + ` && ip addr add 10.88.0.1/24 dev ${LINK.ulA} && ip link set ${LINK.ulA} up`
      + ` && ip -n ${NS.b} addr add 10.88.0.2/24 dev ${LINK.ulB} && ip -n ${NS.b} link set ${LINK.ulB} up && ip -n ${NS.b} link set lo up`);
    const topo = (host: 'a' | 'b') => {
      const f = join(dir, `${host}.json`);
      writeFileSync(f, JSON.stringify({
        name: host, segments: [{ name: 's', vni: 5001 }],
        ports: [
          { name: 'up0', ppid: 1, role: 'uplink', segments: ['s'] },
          ...(host === 'a' ? [{ name: 'psend', ppid: 10, kind: 'afpacket', device: LINK.sendHost }] : []),
          { name: 'vf1', ppid: 11, kind: 'vf', memory: MEM, memoryFile: join(dir, `${host}-vm1.mem`), guest: { dirtyRate: host === 'a' ? 5000 : 0, start: host === 'a' ? 'boot' : 'arrival' } },
        ],
        nodes: [
          { name: 'vm1', interfaces: [{ name: 'vm1-eth0', mac: VM1, ip: '10.0.0.9', segment: 's', port: 'vf1' }] },
          ...(host === 'a' ? [{ name: 'sender', interfaces: [{ name: 'send0', mac: SENDER, segment: 's', port: 'psend' }] }] : []),
        ],
        ...(host === 'a' ? { tunnel: { vtep: '192.168.0.1', mac: '02:fe:00:00:00:01', kind: 'vxlan', remotes: [{ name: 'b', vtep: '192.168.0.2', mac: '02:fe:00:00:00:02', uplink: 'up0' }] } } : {}),
      }));
      return f;
    };
    const sockA = join(dir, 'a.sock');
    const sockB = join(dir, 'b.sock');
    const a = run(['run', '-t', topo('a'), '-s', sockA, '-o', join(dir, 'outa')]);
    const b = run(['run', '-t', topo('b'), '-s', sockB, '-o', join(dir, 'outb'), '--migrate-listen', '10.88.0.2:7400'], NS.b);
    try {
      for (let i = 0; i < 200 && !(existsSync(sockA) && existsSync(sockB)); i++) await sleep(50);
      expect(existsSync(sockA), a.err()).toBe(true);
      expect(existsSync(sockB), b.err()).toBe(true);
      await sleep(500);
      const ctlA = (...x: string[]) => JSON.parse(runCli(['ctl', '-s', sockA, '--json', ...x], { timeout: 60_000 }).stdout);
      // The sender, 3 s at full speed; the migration starts a second in.
      const blast = spawn('ip', ['netns', 'exec', NS.send, blaster, LINK.sendVm, SENDER, VM1, '3'], { stdio: ['ignore', 'pipe', 'ignore'] });
      children.push(blast);
      let sentOut = '';
      blast.stdout!.on('data', (d) => (sentOut += d));
      const blasted = new Promise((r) => blast.on('exit', r));
      await sleep(1000);
      const mig = await new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
        const c = spawn(process.execPath, [CLI, 'ctl', '-s', sockA, '--json', 'migrate-vm', 'vm1-eth0', '--to', '10.88.0.2:7400', '--dest-port', 'vf1', '--remote', 'b']);
        let stdout = '';
        let stderr = '';
        c.stdout.on('data', (d) => (stdout += d));
        c.stderr.on('data', (d) => (stderr += d));
        c.on('close', (status) => resolve({ status, stdout, stderr }));
      });
      await blasted;
      expect(mig.stderr).toBe('');
      const j = JSON.parse(mig.stdout);
      expect(j.exact).toBe(true);
      expect(j.sourceSha256).toBe(j.destination.sha256);
      expect(j.rounds[0].pages).toBe(MEM / 4096);
      expect(j.destination.guestStarted).toBe(true);
      expect(j.destination.mapping.flowRewrites).toBe(0);
      expect(j.destination.sameVpid).toBe(true); // the VM keeps its VPID: one mapping update there
      expect(j.sourceMapping.remote).toBe('b');
      // Let A finish what its ring holds, then the counts.
      let st: any;
      for (let i = 0; i < 50; i++) {
        await sleep(100);
        const now = ctlA('stats');
        if (st && now.packets.in === st.packets.in) break;
        st = now;
      }
      const sent = Number(sentOut.trim());
      const live = st.live.find((l: any) => l.port === 'psend');
      const rx = st.ports.find((p: any) => p.name === 'psend').rxPackets;
      const kernel = Number(sh(`cat /sys/class/net/${LINK.sendHost}/statistics/rx_dropped`).trim()) + Number(sh(`ip netns exec ${NS.send} cat /sys/class/net/${LINK.sendVm}/statistics/tx_dropped`).trim());
      const rate = sent / 3;
      console.log(`migration lab: sender ${sent} frames in 3 s (${Math.round(rate)}/s); read ${rx}, missed ${live.rxMissed}, kernel ${kernel}; rounds ${j.rounds.length} (${j.rounds.map((r: any) => r.pages).join(', ')}), downtime ${j.downtimeMs} ms`);
      expect(rate).toBeGreaterThan(300_000);
      expect(rx + live.rxMissed + kernel).toBe(sent);
      // Of what A read: to vm1's VF (written, or counted by the VF with its reason), or after the switch into the tunnel (up0).
      const vf = st.vf.find((v: any) => v.port === 'vf1');
      const toVf = st.ports.find((p: any) => p.name === 'vf1').txPackets;
      const toTunnel = st.ports.find((p: any) => p.name === 'up0').txPackets;
      expect(vf.written + vf.noDescriptor + vf.notReady + vf.paused + vf.tooLong + vf.badBuffer + vf.badQueue).toBe(toVf);
      expect(vf.written).toBeGreaterThan(10_000);
      expect(toVf + toTunnel + (st.drops.vpidUnmapped ?? 0)).toBe(rx);
      expect(st.drops.vpidUnmapped ?? 0).toBe(0);
      expect(st.packets.in).toBe(st.packets.out + st.packets.dropped);
    } finally {
      a.proc.kill('SIGTERM');
      b.proc.kill('SIGTERM');
      await Promise.all([a.proc, b.proc].map((p) => new Promise((r) => (p.exitCode !== null ? r(null) : p.on('exit', r)))));
    }
  }, 90_000);
});
