/**
 * Live forwarding rate, VM to VM: 64-byte UDP frames (64 flows) from a
 * sender in one namespace (bench/ports/blast.c: sendmmsg batches on an
 * AF_PACKET socket, built here with the system's cc) counted by the
 * receiving interface's kernel counter in the other namespace, over
 * SECONDS. Every row in the same run, on the same kind of veth pairs:
 *   - sender-alone: the sender into a veth whose peer is the receiver — no
 *     switch: what the sender can offer, the ceiling of every row below;
 *   - fpo-ring: `fpo run` with both VMs on afpacket ports (the host ends of
 *     their veths) on TPACKET_V3 rings (ring-port.ts); fpo-ring-v2 the same
 *     on TPACKET_V2; fpo-ring-2w with `--workers 2` (a fanout group a
 *     port, vsOneWorker = its rate / fpo-ring's);
 *   - fpo-xdp: the same ports on AF_XDP (`io: xdp`, xdp-port.ts: fpo's XDP
 *     program in the veth driver, frames copied to and from its UMEM);
 *   - fpo-read: the same with `io: read` (a read()/write() a frame);
 *   - fpo-tap: the VMs on TAP ports of fpo (a read()/write() a frame);
 *   - linux-bridge: the host ends in a kernel bridge (the baseline);
 *   - ovs-netdev: Open vSwitch's userspace datapath (datapath_type=netdev)
 *     over the same host ends, when Open vSwitch is installed.
 * Then TCP, VM to VM (iperf3, SECONDS, one stream), on veths with the VMs'
 * offloads on: fpo on ring ports with offloads (64 KiB segments cross
 * whole; V3 and V2), and the Linux bridge — lines with bench ports/live-tcp;
 * and iperf3's UDP flood of 64-byte frames, offered against delivered
 * (ports/live-udp; ofFpoPeak: fpo's delivered rate / fpo-ring's rate above).
 *
 * Each line: offered (frames the sender sent a second) beside forwarded
 * (frames the receiver got a second), and ratio = forwarded / the bridge's
 * forwarded (also vsOvs where OVS ran). Needs root. One JSON line per row.
 *
 *   node dist/bench/ports/live.js        (FPO_BENCH_SHORT=1: 0.5 s a run)
 *   FPO_LIVE_ROWS=fpo-ring,linux-bridge,tcp  only those rows (tcp: the iperf3 pair)
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SHORT, emit } from '../harness.js';

const SECONDS = SHORT ? 0.5 : 3;
/** iperf3 takes whole seconds (and -t 0 is "for ever"). */
const IPERF_SECONDS = Math.max(1, Math.round(SECONDS));
const A = '02:00:00:00:99:01';
const B = '02:00:00:00:99:02';
/**
 * The receiving interface's own MAC: not B, so the receiver's kernel drops
 * each frame as soon as it is counted (PACKET_OTHERHOST, first thing in
 * ip_rcv) instead of running UDP and ICMP for it — in whichever context
 * delivered it (the sender's, fpo's). Every row the same.
 */
const B_DEV = '02:00:00:00:99:fe';
const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..', '..');
const sh = (cmd: string) => execFileSync('sh', ['-c', cmd], { stdio: ['ignore', 'pipe', 'pipe'] });
const quiet = (cmd: string) => spawnSync('sh', ['-c', cmd], { stdio: 'ignore' });
const ROWS = process.env.FPO_LIVE_ROWS?.split(',');
const want = (row: string) => ROWS === undefined || ROWS.includes(row);

function rxCount(ns: string, dev: string): number {
  return Number(execFileSync('ip', ['netns', 'exec', ns, 'cat', `/sys/class/net/${dev}/statistics/rx_packets`], { encoding: 'utf8' }).trim());
}

interface Run { sent: number; received: number; cpuSeconds?: number; userSeconds?: number }

/** CPU seconds a process has used, all threads: [user, system] (/proc/PID/stat fields 14 and 15, in ticks of 1/100 s). */
function cpuSeconds(pid: number): [number, number] {
  const stat = execFileSync('cat', [`/proc/${pid}/stat`], { encoding: 'utf8' });
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return [Number(f[11]) / 100, Number(f[12]) / 100];
}

/** Sends from ns A's devA for SECONDS; returns frames sent and frames ns B's devB received. */
function blast(blaster: string, devA: string, devB: string): Run {
  const before = rxCount('fpob-b', devB);
  const out = execFileSync('ip', ['netns', 'exec', 'fpob-a', blaster, devA, A, B, String(SECONDS)], { encoding: 'utf8' });
  return { sent: Number(out.trim()), received: rxCount('fpob-b', devB) - before };
}

/** A warm-up run (flows installed, JIT warm), then the measured one; with `pid`, the CPU time that process spent in it. */
function measure(blaster: string, devA: string, devB: string, pid?: number): Run {
  blast(blaster, devA, devB);
  const cpu0 = pid !== undefined ? cpuSeconds(pid) : [0, 0];
  const r = blast(blaster, devA, devB);
  if (pid === undefined) return r;
  const cpu1 = cpuSeconds(pid);
  return { ...r, cpuSeconds: cpu1[0] + cpu1[1] - cpu0[0] - cpu0[1], userSeconds: cpu1[0] - cpu0[0] };
}

function cleanup(): void {
  quiet('ip netns del fpob-a; ip netns del fpob-b; ip link del fpob-br; ip link del fpob-ha; ip link del fpob-hb');
  quiet('ovs-vsctl --if-exists del-br fpob-ovs');
}

/** Two namespaces, each with a veth whose host end stays here (fpob-ha, fpob-hb), IPv6 off (no chatter). */
function veths(): void {
  sh('ip netns add fpob-a && ip netns add fpob-b'
    + ' && ip link add fpob-va type veth peer name fpob-ha && ip link add fpob-vb type veth peer name fpob-hb'
    + ' && ip link set fpob-va netns fpob-a && ip link set fpob-vb netns fpob-b'
    + ' && sysctl -qw net.ipv6.conf.fpob-ha.disable_ipv6=1 net.ipv6.conf.fpob-hb.disable_ipv6=1'
    + ` && ip -n fpob-a link set fpob-va address ${A} up && ip -n fpob-b link set fpob-vb address ${B_DEV} up`
    + ' && ip link set fpob-ha up && ip link set fpob-hb up');
}

async function runFpo(dir: string, ports: object[], workers: number, body: (pid: number) => Run | void): Promise<Run | void> {
  const topo = join(dir, 'topology.json');
  writeFileSync(topo, JSON.stringify({
    name: 'live', ports,
    segments: [{ name: 's' }],
    nodes: [{ name: 'a', interfaces: [{ name: 'a0', mac: A, segment: 's', port: 'pa' }] }, { name: 'b', interfaces: [{ name: 'b0', mac: B, segment: 's', port: 'pb' }] }],
  }));
  const sock = join(dir, 'fpo.sock');
  rmSync(sock, { force: true });
  const args = [join(root, 'dist', 'control', 'cli.js'), 'run', '-t', topo, '-s', sock, '-o', join(dir, 'out'), '--state', join(dir, `state-${Date.now()}.json`)];
  if (workers > 1) args.push('--workers', String(workers));
  const fpo = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  fpo.stderr.on('data', (d) => (err += d));
  for (let i = 0; i < 200 && !existsSync(sock) && fpo.exitCode === null; i++) await new Promise((r) => setTimeout(r, 50));
  if (!existsSync(sock)) throw new Error(`fpo run did not start: ${err}`);
  try {
    return body(fpo.pid!);
  } finally {
    fpo.kill('SIGTERM');
    await new Promise((r) => fpo.on('exit', r));
  }
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('ports/live needs root');
  const dir = mkdtempSync(join(tmpdir(), 'fpo-live-'));
  const blaster = join(dir, 'blast');
  execFileSync('cc', ['-O2', '-o', blaster, join(root, 'bench', 'ports', 'blast.c')]);
  cleanup();
  const results: Record<string, Run> = {};
  try {
    if (want('sender-alone')) {
      // The sender into a veth straight to the receiver: its rate with no switch between.
      sh('ip netns add fpob-a && ip netns add fpob-b && ip link add fpob-va type veth peer name fpob-vb'
        + ' && ip link set fpob-va netns fpob-a && ip link set fpob-vb netns fpob-b'
        + ` && ip -n fpob-a link set fpob-va address ${A} up && ip -n fpob-b link set fpob-vb address ${B_DEV} up`);
      results['sender-alone'] = measure(blaster, 'fpob-va', 'fpob-vb');
      cleanup();
    }

    const vethPorts = (io: 'ring' | 'read' | 'xdp', tpacket?: 2) => [
      { name: 'pa', ppid: 11, kind: 'afpacket', device: 'fpob-ha', io, tpacket }, { name: 'pb', ppid: 12, kind: 'afpacket', device: 'fpob-hb', io, tpacket }];
    for (const [row, io, workers, tpacket] of [['fpo-ring', 'ring', 1, undefined], ['fpo-ring-2w', 'ring', 2, undefined], ['fpo-ring-v2', 'ring', 1, 2], ['fpo-xdp', 'xdp', 1, undefined], ['fpo-read', 'read', 1, undefined]] as const) {
      if (!want(row)) continue;
      veths();
      const r = await runFpo(dir, vethPorts(io, tpacket), workers, (pid) => measure(blaster, 'fpob-va', 'fpob-vb', pid));
      if (r) results[row] = r;
      cleanup();
    }

    if (want('fpo-tap')) {
      // fpo creates the TAPs; they are moved into the namespaces once it runs.
      const ports = [{ name: 'pa', ppid: 11, kind: 'tap', device: 'fpob-ta' }, { name: 'pb', ppid: 12, kind: 'tap', device: 'fpob-tb' }];
      const r = await runFpo(dir, ports, 1, (pid) => {
        sh('ip netns add fpob-a && ip netns add fpob-b && ip link set fpob-ta netns fpob-a && ip link set fpob-tb netns fpob-b'
          + ` && ip -n fpob-a link set fpob-ta address ${A} up && ip -n fpob-b link set fpob-tb address ${B_DEV} up`);
        return measure(blaster, 'fpob-ta', 'fpob-tb', pid);
      });
      if (r) results['fpo-tap'] = r;
      cleanup();
    }

    if (want('linux-bridge') || want('ovs-netdev')) {
      veths();
      sh('ip link add fpob-br type bridge && ip link set fpob-br up && ip link set fpob-ha master fpob-br && ip link set fpob-hb master fpob-br');
      if (want('linux-bridge')) results['linux-bridge'] = measure(blaster, 'fpob-va', 'fpob-vb');
      // Open vSwitch's userspace datapath, when installed; its daemons are started (and stopped) here if not running.
      const ovsCtl = '/usr/share/openvswitch/scripts/ovs-ctl';
      let startedOvs = false;
      if (want('ovs-netdev') && spawnSync('ovs-vsctl', ['--timeout=2', 'show'], { stdio: 'ignore' }).status !== 0 && existsSync(ovsCtl)) {
        quiet(`${ovsCtl} --no-ovs-vswitchd start --system-id=random && ${ovsCtl} --no-ovsdb-server --no-monitor start`);
        startedOvs = true;
      }
      if (want('ovs-netdev') && spawnSync('ovs-vsctl', ['--timeout=2', 'show'], { stdio: 'ignore' }).status === 0) {
        sh('ip link set fpob-ha nomaster && ip link set fpob-hb nomaster'
          + ' && ovs-vsctl add-br fpob-ovs -- set bridge fpob-ovs datapath_type=netdev'
          + ' && ovs-vsctl add-port fpob-ovs fpob-ha && ovs-vsctl add-port fpob-ovs fpob-hb');
        results['ovs-netdev'] = measure(blaster, 'fpob-va', 'fpob-vb');
        quiet('ovs-vsctl --if-exists del-br fpob-ovs');
      }
      if (startedOvs) quiet(`${ovsCtl} stop`);
      cleanup();
    }

    // TCP through fpo (ring ports with offloads) and through the bridge, with iperf3 when installed.
    const tcp: Record<string, number> = {};
    const udp: Record<string, { bps: number; packets: number; lost: number; rcvbufErrors?: number; fpoMissed?: number; fpoDropped?: number }> = {};
    /** The receiver's UDP datagrams dropped for a full socket buffer (iperf3's server not keeping up), so far. */
    const rcvbufErrors = () => Number(/UdpRcvbufErrors\s+(\d+)/.exec(execFileSync('ip', ['netns', 'exec', 'fpob-b', 'nstat', '-az', 'UdpRcvbufErrors'], { encoding: 'utf8' }))?.[1] ?? 0);
    /** The UDP flood, with where its losses went: the receiver's socket, and for fpo its rings' misses and its drops. */
    const flood = (row: string, fpoSock?: string) => {
      const before = rcvbufErrors();
      const u: (typeof udp)[string] = iperfRun(['-u', '-l', '18', '-b', '0']);
      u.rcvbufErrors = rcvbufErrors() - before;
      if (fpoSock !== undefined) {
        const st = JSON.parse(execFileSync(process.execPath, [join(root, 'dist', 'control', 'cli.js'), 'ctl', '-s', fpoSock, '--json', 'stats'], { encoding: 'utf8' })) as { live: { rxMissed: number }[]; packets: { dropped: number } };
        u.fpoMissed = st.live.reduce((n, l) => n + l.rxMissed, 0);
        u.fpoDropped = st.packets.dropped;
      }
      udp[row] = u;
    };
    let iperfRun: (extra: string[]) => { bps: number; packets: number; lost: number } = () => { throw new Error('no iperf3'); };
    if (want('tcp') && spawnSync('iperf3', ['--version'], { stdio: 'ignore' }).status === 0) {
      const ipAddrs = () => sh(`ip -n fpob-a link set fpob-va address ${A} && ip -n fpob-b link set fpob-vb address ${B}`
        + ' && ip -n fpob-a addr add 10.98.0.1/24 dev fpob-va && ip -n fpob-b addr add 10.98.0.2/24 dev fpob-vb && ip -n fpob-a link set lo up && ip -n fpob-b link set lo up');
      const iperf = (): number => iperfRun([]).bps;
      /** iperf3 a to b for SECONDS with `extra` client options; the receiver's bits/s, and for UDP the datagrams sent and lost. */
      iperfRun = (extra: string[]): { bps: number; packets: number; lost: number } => {
        const server = spawn('ip', ['netns', 'exec', 'fpob-b', 'iperf3', '-s', '-1', '-B', '10.98.0.2'], { stdio: 'ignore' });
        try {
          for (let i = 0; i < 50; i++) {
            if (spawnSync('ip', ['netns', 'exec', 'fpob-b', 'sh', '-c', 'ss -ltn | grep -q 5201']).status === 0) break;
            spawnSync('sleep', ['0.1']);
          }
          const out = execFileSync('ip', ['netns', 'exec', 'fpob-a', 'iperf3', '-c', '10.98.0.2', '-t', String(IPERF_SECONDS), '-J', ...extra], { encoding: 'utf8', maxBuffer: 64 << 20 });
          const j = JSON.parse(out) as { error?: string; end: { sum_received?: { bits_per_second: number }; sum?: { bits_per_second: number; packets: number; lost_packets: number } } };
          if (j.error !== undefined || (!j.end.sum_received && !j.end.sum)) throw new Error(`iperf3 ${extra.join(' ')}: ${j.error ?? 'no totals in its report'}`);
          const end = j.end;
          // UDP: end.sum has the datagrams sent and lost (as the server counted them); TCP: what the receiver took.
          if (end.sum !== undefined && typeof end.sum.packets === 'number') return { bps: end.sum.bits_per_second, packets: end.sum.packets, lost: end.sum.lost_packets };
          return { bps: end.sum_received!.bits_per_second, packets: 0, lost: 0 };
        } finally {
          server.kill();
        }
      };
      for (const [row, tpacket] of [['fpo-ring-offload', 3], ['fpo-ring-v2-offload', 2]] as const) {
        veths();
        ipAddrs();
        const ports = [{ name: 'pa', ppid: 11, kind: 'afpacket', device: 'fpob-ha', offload: true, tpacket }, { name: 'pb', ppid: 12, kind: 'afpacket', device: 'fpob-hb', offload: true, tpacket }];
        await runFpo(dir, ports, 1, () => {
          tcp[row] = iperf();
          // UDP, 18-byte payloads (64-byte frames on the wire with the FCS), as fast as iperf3 sends: offered and delivered.
          if (tpacket === 3) flood(row, join(dir, 'fpo.sock'));
        });
        cleanup();
      }
      // The UDP flood through AF_XDP ports: frames of one chunk, no virtio-net header, so the VMs finish
      // their checksums themselves (tx checksum offload off on their ends, as a user of such ports sets).
      if (want('fpo-xdp')) {
        veths();
        ipAddrs();
        sh('ip netns exec fpob-a ethtool -K fpob-va tx off >/dev/null && ip netns exec fpob-b ethtool -K fpob-vb tx off >/dev/null');
        const ports = [{ name: 'pa', ppid: 11, kind: 'afpacket', device: 'fpob-ha', io: 'xdp' }, { name: 'pb', ppid: 12, kind: 'afpacket', device: 'fpob-hb', io: 'xdp' }];
        await runFpo(dir, ports, 1, () => {
          flood('fpo-xdp', join(dir, 'fpo.sock'));
        });
        cleanup();
      }
      veths();
      ipAddrs();
      sh('ip link add fpob-br type bridge && ip link set fpob-br up && ip link set fpob-ha master fpob-br && ip link set fpob-hb master fpob-br');
      tcp['linux-bridge'] = iperf();
      flood('linux-bridge');
      cleanup();
    }

    const base = results['linux-bridge']?.received;
    const ovs = results['ovs-netdev']?.received;
    const ring1 = results['fpo-ring']?.received;
    for (const [name, r] of Object.entries(results)) {
      // Same SECONDS for every row: a ratio of rates is the ratio of frames received.
      emit({
        bench: 'ports/live', switch: name, frameBytes: 64, seconds: SECONDS, sent: r.sent, received: r.received,
        offeredPps: Math.round(r.sent / SECONDS), pps: Math.round(r.received / SECONDS), took: Number((r.received / Math.max(1, r.sent)).toFixed(3)),
        baseline: base !== undefined ? 'linux-bridge' : undefined, ratio: base !== undefined ? Number((r.received / base).toFixed(3)) : undefined,
        vsOvs: ovs !== undefined ? Number((r.received / ovs).toFixed(3)) : undefined,
        // fpo's own CPU time in the measured run, and frames forwarded per second of it: its rate were it
        // given a whole core (the sender and fpo share this machine's two).
        fpoCpuSeconds: r.cpuSeconds !== undefined ? Number(r.cpuSeconds.toFixed(2)) : undefined,
        // of which in the kernel (its system calls: sending carries the frame on into the receiver's stack)
        fpoSystemSeconds: r.cpuSeconds !== undefined ? Number((r.cpuSeconds - r.userSeconds!).toFixed(2)) : undefined,
        ppsPerFpoCore: r.cpuSeconds ? Math.round(r.received / r.cpuSeconds) : undefined,
        vsOneWorker: name === 'fpo-ring-2w' && ring1 !== undefined ? Number((r.received / ring1).toFixed(3)) : undefined,
      });
    }
    for (const [name, u] of Object.entries(udp)) {
      const delivered = u.packets - u.lost;
      const own = results[name === 'fpo-xdp' ? 'fpo-xdp' : 'fpo-ring'];
      const peak = own !== undefined ? own.received / SECONDS : undefined;
      emit({
        bench: 'ports/live-udp', switch: name, seconds: IPERF_SECONDS, payloadBytes: 18, offeredPps: Math.round(u.packets / IPERF_SECONDS), deliveredPps: Math.round(delivered / IPERF_SECONDS),
        delivered: Number((delivered / Math.max(1, u.packets)).toFixed(3)),
        // fpo: what it delivered of iperf3's flood against its own peak rate (fpo-ring or fpo-xdp above, the blaster's run).
        ofFpoPeak: name.startsWith('fpo') && peak !== undefined ? Number((delivered / IPERF_SECONDS / peak).toFixed(3)) : undefined,
        // where the lost went: the receiver's full socket buffer (iperf3's server behind), fpo's rings, fpo's drops
        rcvbufErrors: u.rcvbufErrors, fpoMissed: u.fpoMissed, fpoDropped: u.fpoDropped,
        // fpo: the share of the offered datagrams it forwarded (not missed at its rings, not dropped), whatever the receiver then kept
        fpoForwarded: u.fpoMissed !== undefined ? Number((1 - (u.fpoMissed + (u.fpoDropped ?? 0)) / Math.max(1, u.packets)).toFixed(3)) : undefined,
      });
    }
    for (const [name, bps] of Object.entries(tcp)) {
      emit({ bench: 'ports/live-tcp', switch: name, seconds: IPERF_SECONDS, streams: 1, bitsPerSec: Math.round(bps), gbitPerSec: Number((bps / 1e9).toFixed(2)), baseline: 'linux-bridge', ratio: Number((Math.round(bps) / Math.round(tcp['linux-bridge'])).toFixed(3)) });
    }
  } finally {
    cleanup();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
