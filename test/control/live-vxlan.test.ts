import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CLI, type Skippable, needRoot, needTool, runCli, tempDir } from '../helpers.js';

// A VM behind fpo pings an address behind the Linux kernel's VXLAN device in
// another namespace: fpo's uplink is an AF_PACKET port on one end of a veth
// "underlay", the kernel's VXLAN endpoint sits on the other end.

const sh = (cmd: string) => execFileSync('sh', ['-c', cmd], { stdio: ['ignore', 'pipe', 'pipe'] });
let fpo: ChildProcess | null = null;

function cleanup(): void {
  fpo?.kill('SIGKILL');
  for (const ns of ['fpovx-r', 'fpovx-vm1']) spawnSync('ip', ['netns', 'del', ns]);
  spawnSync('ip', ['link', 'del', 'fpovxu0']);
}
afterAll(cleanup);

function canRun(ctx: Skippable): void {
  needRoot(ctx, 'the live tunnel test makes namespaces, veths and a TAP');
  needTool(ctx, 'ip', 'creates the namespaces and the kernel VXLAN device');
  needTool(ctx, 'ping', 'the VM pings across the tunnel');
}

// [workers, the uplink with offloads (the kernel's VXLAN then sends its outer UDP checksum for the NIC to finish)]
describe.each([[1, false], [2, false], [1, true]] as const)('a live VXLAN uplink against the kernel\'s VXLAN, %i datapath worker(s), uplink offloads %s', (workers, offload) => {
  it('a VM on a TAP port of fpo pings an address behind a kernel VXLAN endpoint, across an AF_PACKET uplink (a ring port) on a veth underlay', async (ctx) => {
    canRun(ctx);
    cleanup();
    const dir = tempDir('vx');
    // The underlay and the kernel's side.
    sh([
      'ip netns add fpovx-r',
      'ip link add fpovxu0 type veth peer name fpovxu1',
      'ip link set fpovxu1 netns fpovx-r',
      'ip link set fpovxu0 up',
      'ip -n fpovx-r link set fpovxu1 address 02:fe:00:00:77:02',
      'ip -n fpovx-r addr add 192.168.77.2/24 dev fpovxu1',
      'ip -n fpovx-r link set fpovxu1 up',
      'ip -n fpovx-r link set lo up',
      // fpo does not answer ARP for its endpoint: the kernel gets its MAC statically.
      'ip -n fpovx-r neigh add 192.168.77.1 lladdr 02:fe:00:00:77:01 dev fpovxu1',
      `ip -n fpovx-r link add vx0 type vxlan id 5001 remote 192.168.77.1 local 192.168.77.2 dstport 4789 dev fpovxu1${offload ? ' udpcsum' : ''}`,
      'ip -n fpovx-r link set vx0 address 02:00:00:00:80:02',
      'ip -n fpovx-r addr add 10.80.0.2/24 dev vx0',
      'ip -n fpovx-r link set vx0 up',
    ].join(' && '));
    const topo = join(dir, 'topology.json');
    writeFileSync(topo, JSON.stringify({
      name: 'vxlab',
      ports: [
        { name: 'up0', ppid: 1, role: 'uplink', kind: 'afpacket', device: 'fpovxu0', offload },
        { name: 'p1', ppid: 11, kind: 'tap', device: 'fpovxt1' },
      ],
      segments: [{ name: 'blue', vni: 5001 }],
      nodes: [{ name: 'vm1', interfaces: [{ name: 'vm1-eth0', mac: '02:00:00:00:80:01', ip: '10.80.0.1', segment: 'blue', port: 'p1' }] }],
      tunnel: {
        vtep: '192.168.77.1', mac: '02:fe:00:00:77:01', kind: 'vxlan',
        remotes: [{ name: 'kernel', vtep: '192.168.77.2', mac: '02:fe:00:00:77:02', uplink: 'up0', interfaces: [{ name: 'vmr', mac: '02:00:00:00:80:02', segment: 'blue' }] }],
      },
    }));
    const sock = join(dir, 'fpo.sock');
    // Two workers: the uplink a fanout group of two rings, the TAP a multi-queue TAP of two queues.
    fpo = spawn(process.execPath, [CLI, 'run', '-t', topo, '-s', sock, '-o', dir, '--workers', String(workers)], { stdio: 'ignore' });
    for (let i = 0; i < 100 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
    expect(existsSync(sock)).toBe(true);
    sh([
      'ip netns add fpovx-vm1',
      'ip link set fpovxt1 netns fpovx-vm1',
      'ip -n fpovx-vm1 link set fpovxt1 address 02:00:00:00:80:01',
      'ip -n fpovx-vm1 addr add 10.80.0.1/24 dev fpovxt1',
      'ip -n fpovx-vm1 link set fpovxt1 up',
      'ip -n fpovx-vm1 link set lo up',
    ].join(' && '));
    const ping = spawnSync('ip', ['netns', 'exec', 'fpovx-vm1', 'ping', '-c', '5', '-i', '0.2', '-W', '2', '10.80.0.2'], { encoding: 'utf8', timeout: 30_000 });
    const st = JSON.parse(runCli(['ctl', '-s', sock, '--json', 'stats']).stdout);
    expect(ping.stdout, JSON.stringify(st)).toMatch(/5 packets transmitted, [45] received/);
    // Both directions went through the tunnel: encapsulated out, decapsulated in.
    const up = st.ports.find((p: any) => p.name === 'up0');
    expect(up.txPackets).toBeGreaterThanOrEqual(5);
    expect(up.rxPackets).toBeGreaterThanOrEqual(5);
    expect(st.packets.in).toBe(st.packets.out + st.packets.dropped);
    if (workers > 1) expect(st.workers.map((w: any) => w.alive)).toEqual([true, true]);
    // The kernel saw VXLAN from fpo and learned the VM's MAC behind fpo's endpoint.
    expect(execFileSync('ip', ['-n', 'fpovx-r', 'neigh', 'show', '10.80.0.1'], { encoding: 'utf8' })).toMatch(/lladdr 02:00:00:00:80:01/);
    expect(execFileSync('bridge', ['-n', 'fpovx-r', 'fdb', 'show', 'dev', 'vx0'], { encoding: 'utf8' })).toMatch(/02:00:00:00:80:01 dst 192\.168\.77\.1/);
    fpo!.kill('SIGTERM');
    await new Promise((r) => fpo!.on('exit', r));
    fpo = null;
    cleanup();
    expect(execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })).not.toMatch(/fpovx-/);
  }, 120_000);
});
