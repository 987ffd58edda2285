/**
 * The pcap-live port (libpcap through the cap addon) against the afpacket
 * port on the same interfaces, on its rings (the default) and with `io:
 * read` (a read and a write a frame): two veth pairs, one end of each in a
 * namespace, the other ends the ports of `fpo run`; 64-byte UDP frames from
 * bench/ports/blast.c (sendmmsg on an AF_PACKET socket) in namespace A,
 * counted by the kernel's rx counter in namespace B over SECONDS. The
 * kinds alternate, ROUNDS each, so a minute of a slower machine falls on
 * all. Needs root. Prints one JSON line per kind (best and every round):
 * frames/s and fpo's CPU time a frame forwarded (from /proc/PID/stat over
 * the blast), the second less swayed by a busy machine than the first.
 *
 *   node dist/bench/ports/pcap-live.js        (FPO_BENCH_SHORT=1: 0.5 s, 1 round)
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SHORT, emit } from '../harness.js';

const SECONDS = SHORT ? 0.5 : 3;
const ROUNDS = SHORT ? 1 : 3;
const A = '02:00:00:00:98:01';
const B = '02:00:00:00:98:02';
const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..', '..');
const sh = (cmd: string) => execFileSync('sh', ['-c', cmd], { stdio: ['ignore', 'pipe', 'pipe'] });
const quiet = (cmd: string) => spawnSync('sh', ['-c', cmd], { stdio: 'ignore' });

function rxCount(): number {
  return Number(execFileSync('ip', ['netns', 'exec', 'fpocb-b', 'cat', '/sys/class/net/fpocb-vb/statistics/rx_packets'], { encoding: 'utf8' }).trim());
}

function cleanup(): void {
  quiet('ip netns del fpocb-a; ip netns del fpocb-b; ip link del fpocb-ha; ip link del fpocb-hb');
}

const KINDS = ['afpacket', 'afpacket-read', 'pcap-live'] as const;

/** CPU seconds (user + system) process `pid` has used, from /proc/PID/stat (clock ticks of 10 ms). */
function cpuSeconds(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
}

async function round(name: (typeof KINDS)[number], dir: string, blaster: string): Promise<{ sent: number; received: number; cpu: number }> {
  const kind = name === 'afpacket-read' ? 'afpacket' : name;
  const io = name === 'afpacket-read' ? { io: 'read' } : {};
  const topo = join(dir, `${name}.json`);
  writeFileSync(topo, JSON.stringify({
    name: 'pl', ports: [{ name: 'pa', ppid: 11, kind, device: 'fpocb-ha', ...io }, { name: 'pb', ppid: 12, kind, device: 'fpocb-hb', ...io }],
    segments: [{ name: 's' }],
    nodes: [{ name: 'a', interfaces: [{ name: 'a0', mac: A, segment: 's', port: 'pa' }] }, { name: 'b', interfaces: [{ name: 'b0', mac: B, segment: 's', port: 'pb' }] }],
  }));
  const sock = join(dir, `${name}.sock`);
  const fpo = spawn(process.execPath, [join(root, 'dist', 'control', 'cli.js'), 'run', '-t', topo, '-s', sock, '-o', join(dir, name)], { stdio: 'ignore' });
  try {
    for (let i = 0; i < 200 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
    const blast = () => {
      const before = rxCount();
      const cpu0 = cpuSeconds(fpo.pid!);
      const out = execFileSync('ip', ['netns', 'exec', 'fpocb-a', blaster, 'fpocb-va', A, B, String(SECONDS)], { encoding: 'utf8' });
      // fpo's CPU over the blast: what a frame costs it, less swayed by a busy machine than the rate is.
      return { sent: Number(out.trim()), received: rxCount() - before, cpu: cpuSeconds(fpo.pid!) - cpu0 };
    };
    blast(); // warm-up: the flow installed, the JIT warm
    return blast();
  } finally {
    fpo.kill('SIGTERM');
    await new Promise((r) => fpo.on('exit', r));
  }
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('ports/pcap-live needs root');
  const dir = mkdtempSync(join(tmpdir(), 'fpo-pcap-live-'));
  const blaster = join(dir, 'blast');
  execFileSync('cc', ['-O2', '-o', blaster, join(root, 'bench', 'ports', 'blast.c')]);
  cleanup();
  try {
    sh('ip netns add fpocb-a && ip netns add fpocb-b'
      + ' && ip link add fpocb-va type veth peer name fpocb-ha && ip link add fpocb-vb type veth peer name fpocb-hb'
      + ' && ip link set fpocb-va netns fpocb-a && ip link set fpocb-vb netns fpocb-b'
      + ` && ip -n fpocb-a link set fpocb-va address ${A} up && ip -n fpocb-b link set fpocb-vb address ${B} up`
      + ' && ip link set fpocb-ha up && ip link set fpocb-hb up');
    const runs: Record<string, { sent: number; received: number; cpu: number }[]> = { afpacket: [], 'afpacket-read': [], 'pcap-live': [] };
    for (let r = 0; r < ROUNDS; r++) {
      for (const kind of KINDS) runs[kind].push(await round(kind, dir, blaster));
    }
    const best = (k: string) => Math.max(...runs[k].map((x) => x.received));
    for (const kind of KINDS) {
      emit({ bench: 'ports/pcap-live', kind, frameBytes: 64, seconds: SECONDS, pps: Math.round(best(kind) / SECONDS), cpuUsPerFrame: Number(Math.min(...runs[kind].map((x) => (x.cpu * 1e6) / Math.max(1, x.received))).toFixed(2)), runs: runs[kind].map((x) => ({ sent: x.sent, pps: Math.round(x.received / SECONDS), cpuUsPerFrame: Number(((x.cpu * 1e6) / Math.max(1, x.received)).toFixed(2)) })), baseline: 'afpacket', ratio: Number((best(kind) / best('afpacket')).toFixed(3)) });
    }
  } finally {
    cleanup();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
