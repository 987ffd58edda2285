/**
 * Live forwarding rate, VM to VM: 64-byte UDP frames from a sender in one
 * namespace (bench/ports/blast.c: sendmmsg batches on an AF_PACKET socket,
 * built here with the system's cc) counted by the receiving interface's
 * kernel counter in the other namespace, over SECONDS. Same topology, same
 * run:
 *   - fpo: the two VMs on TAP ports of `fpo run`;
 *   - linux-bridge: the two VMs on veth pairs into a kernel bridge (the
 *     baseline; ratio = fpo / bridge);
 *   - ovs-netdev: Open vSwitch's userspace datapath (datapath_type=netdev)
 *     over the same veths, when Open vSwitch is installed.
 * Needs root. Prints one JSON line per switch.
 *
 *   node dist/bench/ports/live.js        (FPO_BENCH_SHORT=1: 0.5 s a run)
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SHORT, emit } from '../harness.js';

const SECONDS = SHORT ? 0.5 : 3;
const A = '02:00:00:00:99:01';
const B = '02:00:00:00:99:02';
const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..', '..');
const sh = (cmd: string) => execFileSync('sh', ['-c', cmd], { stdio: ['ignore', 'pipe', 'pipe'] });
const quiet = (cmd: string) => spawnSync('sh', ['-c', cmd], { stdio: 'ignore' });

function rxCount(ns: string, dev: string): number {
  return Number(execFileSync('ip', ['netns', 'exec', ns, 'cat', `/sys/class/net/${dev}/statistics/rx_packets`], { encoding: 'utf8' }).trim());
}

/** Sends from ns A for SECONDS; returns frames sent and received. */
function blast(blaster: string, devA: string, nsB: string, devB: string): { sent: number; received: number } {
  const before = rxCount(nsB, devB);
  const out = execFileSync('ip', ['netns', 'exec', 'fpob-a', blaster, devA, A, B, String(SECONDS)], { encoding: 'utf8' });
  const received = rxCount(nsB, devB) - before;
  return { sent: Number(out.trim()), received };
}

function cleanup(): void {
  quiet('ip netns del fpob-a; ip netns del fpob-b; ip link del fpob-br; ip link del fpob-ha; ip link del fpob-hb');
  quiet('ovs-vsctl --if-exists del-br fpob-ovs');
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('ports/live needs root');
  const dir = mkdtempSync(join(tmpdir(), 'fpo-live-'));
  const blaster = join(dir, 'blast');
  execFileSync('cc', ['-O2', '-o', blaster, join(root, 'bench', 'ports', 'blast.c')]);
  cleanup();
  try {
    const results: Record<string, { sent: number; received: number }> = {};

    // fpo: two TAP ports, one in each namespace.
    const topo = join(dir, 'topology.json');
    writeFileSync(topo, JSON.stringify({
      name: 'live', ports: [{ name: 'pa', ppid: 11, kind: 'tap', device: 'fpob-ta' }, { name: 'pb', ppid: 12, kind: 'tap', device: 'fpob-tb' }],
      segments: [{ name: 's' }],
      nodes: [{ name: 'a', interfaces: [{ name: 'a0', mac: A, segment: 's', port: 'pa' }] }, { name: 'b', interfaces: [{ name: 'b0', mac: B, segment: 's', port: 'pb' }] }],
    }));
    const sock = join(dir, 'fpo.sock');
    const fpo = spawn(process.execPath, [join(root, 'dist', 'control', 'cli.js'), 'run', '-t', topo, '-s', sock, '-o', dir], { stdio: 'ignore' });
    for (let i = 0; i < 200 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
    sh('ip netns add fpob-a && ip netns add fpob-b && ip link set fpob-ta netns fpob-a && ip link set fpob-tb netns fpob-b'
      + ` && ip -n fpob-a link set fpob-ta address ${A} up && ip -n fpob-b link set fpob-tb address ${B} up`);
    blast(blaster, 'fpob-ta', 'fpob-b', 'fpob-tb'); // warm-up: flows installed, JIT warm
    results.fpo = blast(blaster, 'fpob-ta', 'fpob-b', 'fpob-tb');
    fpo.kill('SIGTERM');
    await new Promise((r) => fpo.on('exit', r));
    cleanup();

    // Linux bridge over veths.
    sh('ip netns add fpob-a && ip netns add fpob-b && ip link add fpob-br type bridge && ip link set fpob-br up'
      + ' && ip link add fpob-va type veth peer name fpob-ha && ip link add fpob-vb type veth peer name fpob-hb'
      + ' && ip link set fpob-va netns fpob-a && ip link set fpob-vb netns fpob-b'
      + ` && ip -n fpob-a link set fpob-va address ${A} up && ip -n fpob-b link set fpob-vb address ${B} up`
      + ' && ip link set fpob-ha master fpob-br up && ip link set fpob-hb master fpob-br up');
    blast(blaster, 'fpob-va', 'fpob-b', 'fpob-vb');
    results['linux-bridge'] = blast(blaster, 'fpob-va', 'fpob-b', 'fpob-vb');

    // Open vSwitch's userspace datapath, when installed; its daemons are started (and stopped) here if not running.
    const ovsCtl = '/usr/share/openvswitch/scripts/ovs-ctl';
    let startedOvs = false;
    if (spawnSync('ovs-vsctl', ['--timeout=2', 'show'], { stdio: 'ignore' }).status !== 0 && existsSync(ovsCtl)) {
      quiet(`${ovsCtl} --no-ovs-vswitchd start --system-id=random && ${ovsCtl} --no-ovsdb-server --no-monitor start`);
      startedOvs = true;
    }
    if (spawnSync('ovs-vsctl', ['--timeout=2', 'show'], { stdio: 'ignore' }).status === 0) {
      sh('ip link set fpob-ha nomaster && ip link set fpob-hb nomaster'
        + ' && ovs-vsctl add-br fpob-ovs -- set bridge fpob-ovs datapath_type=netdev'
        + ' && ovs-vsctl add-port fpob-ovs fpob-ha && ovs-vsctl add-port fpob-ovs fpob-hb');
      blast(blaster, 'fpob-va', 'fpob-b', 'fpob-vb');
      results['ovs-netdev'] = blast(blaster, 'fpob-va', 'fpob-b', 'fpob-vb');
      quiet('ovs-vsctl --if-exists del-br fpob-ovs');
    }
    if (startedOvs) quiet(`${ovsCtl} stop`);

    const base = results['linux-bridge'].received;
    for (const [name, r] of Object.entries(results)) {
      // Same SECONDS for every switch: the ratio of rates is the ratio of frames received.
      emit({ bench: 'ports/live', switch: name, frameBytes: 64, seconds: SECONDS, sent: r.sent, received: r.received, pps: Math.round(r.received / SECONDS), baseline: 'linux-bridge', ratio: Number((r.received / base).toFixed(3)) });
    }
  } finally {
    cleanup();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
