/**
 * The floor under a replay written in TypeScript on this machine, beside
 * fpo and tcpdump, for the 64-byte case of bench/replay.ts (1 thousand
 * flows to 64 VMs). Four sides, in alternating rounds, best of each:
 *
 *   io       the kernel's share alone: the capture read in fpo's 1 MiB
 *            chunks, and as many bytes written in tx-buffer-sized writes,
 *            round robin over the ports' files; no per-packet work;
 *   floor    the least a switch can do per packet, with fpo's IO: walk the
 *            records, pick a port from a hash of the IPv4 destination, copy
 *            the record into that port's buffer (rx chunk and tx buffers in
 *            one block, fpo's sizes); no parse, lookup or counters;
 *   fpo      replay() through a 64-VM topology;
 *   tcpdump  `tcpdump -r IN -w OUT`, the baseline of bench/replay.ts.
 *
 * `ratio` is tcpdump/fpo as in bench/replay.ts, `floorRatio` tcpdump/floor
 * (what no TypeScript switch here can beat), `fpoOverFloor` floor/fpo, and
 * `ns` the same split per packet: what the kernel's IO takes, what the
 * floor's loop adds, what fpo's switching adds.
 *
 *   node dist/bench/replay-floor.js       (FPO_BENCH_SHORT=1: small N)
 */
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { replay } from '../control/replay.js';
import { txBufferBytes } from '../datapath/ports/capture-writer.js';
import { benchTopology, generate } from './gen-capture.js';
import { SHORT, emit } from './harness.js';

const VMS = 64;
const PORTS = VMS + 1; // benchTopology: the VMs' ports and the uplink
const CHUNK = 1 << 20; // control/replay.ts's rx chunk
const TX = txBufferBytes(PORTS);
const GLOBAL_HEADER = 24;

/** The floor's memory, as fpo's arena: the rx chunk, then one tx buffer per port. */
const block = new ArrayBuffer(CHUNK + PORTS * TX);
const bytes = new Uint8Array(block);
const words = new Int32Array(block);
const view = new DataView(block);
bytes.fill(0);
const used = new Int32Array(PORTS);

function openOutputs(dir: string, header: Uint8Array): number[] {
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir);
  const fds: number[] = [];
  for (let p = 0; p < PORTS; p++) {
    const fd = openSync(join(dir, `p${p}.pcap`), 'w');
    writeSync(fd, header);
    fds.push(fd);
  }
  return fds;
}

function closeOutputs(fds: number[], dir: string): void {
  for (const fd of fds) closeSync(fd);
  rmSync(dir, { recursive: true, force: true });
}

/** The kernel's share: read the file in chunks, write as many bytes in TX-sized writes over the ports. */
function ioSeconds(input: string, dir: string, header: Uint8Array): number {
  const fds = openOutputs(dir, header);
  const t0 = performance.now();
  const fd = openSync(input, 'r');
  let pending = 0;
  let port = 0;
  for (let n; (n = readSync(fd, bytes, 0, CHUNK, null)) > 0;) {
    pending += n;
    for (; pending >= TX; pending -= TX, port = (port + 1) % PORTS) writeSync(fds[port], bytes, CHUNK + port * TX, TX);
  }
  if (pending > 0) writeSync(fds[port], bytes, CHUNK + port * TX, pending);
  closeSync(fd);
  const s = (performance.now() - t0) / 1000;
  closeOutputs(fds, dir);
  return s;
}

/** The least per-packet work, with fpo's IO. Returns seconds and packets. */
function floorRun(input: string, dir: string, header: Uint8Array): { seconds: number; packets: number } {
  const fds = openOutputs(dir, header);
  used.fill(0);
  const t0 = performance.now();
  const fd = openSync(input, 'r');
  let have = readSync(fd, bytes, 0, CHUNK, null);
  let p = GLOBAL_HEADER;
  let packets = 0;
  for (;;) {
    for (;;) {
      if (p + 16 > have) break;
      const len = 16 + view.getUint32(p + 8, true);
      if (p + len > have) break;
      const port = Math.imul(view.getUint32(p + 16 + 30), 0x9e3779b1) >>> 0 >>> 26; // one of 64
      let u = used[port];
      if (u + len > TX) {
        writeSync(fds[port], bytes, CHUNK + port * TX, u);
        u = 0;
      }
      const to = CHUNK + port * TX + u;
      if (((p | to | len) & 3) === 0) {
        let a = to >> 2;
        let b = p >> 2;
        const end = b + (len >> 2);
        for (; b + 4 <= end; a += 4, b += 4) {
          words[a] = words[b]; words[a + 1] = words[b + 1]; words[a + 2] = words[b + 2]; words[a + 3] = words[b + 3];
        }
        for (; b < end; a++, b++) words[a] = words[b];
      } else bytes.copyWithin(to, p, p + len);
      used[port] = u + len;
      p += len;
      packets++;
    }
    const rest = have - p;
    bytes.copyWithin(0, p, have);
    const n = readSync(fd, bytes, rest, CHUNK - rest, null);
    if (n <= 0) break;
    have = rest + n;
    p = 0;
  }
  for (let q = 0; q < PORTS; q++) if (used[q] > 0) writeSync(fds[q], bytes, CHUNK + q * TX, used[q]);
  closeSync(fd);
  const seconds = (performance.now() - t0) / 1000;
  closeOutputs(fds, dir);
  return { seconds, packets };
}

function tcpdumpSeconds(input: string, output: string): number | null {
  const t0 = performance.now();
  const r = spawnSync('tcpdump', ['-r', input, '-w', output], { stdio: 'ignore' });
  rmSync(output, { force: true });
  if (r.error || r.status !== 0) return null;
  return (performance.now() - t0) / 1000;
}

export function runFloorBench(opts: { frames: number; flows: number; dir: string }): Record<string, unknown> {
  const { frames, flows, dir } = opts;
  const input = join(dir, 'floor-in.pcap');
  const topo = join(dir, 'floor-topology.json');
  writeFileSync(topo, JSON.stringify(benchTopology(VMS)));
  generate(input, { frames, size: 64, flows, vms: VMS });
  const header = new Uint8Array(GLOBAL_HEADER);
  const hfd = openSync(input, 'r');
  readSync(hfd, header, 0, GLOBAL_HEADER, 0);
  closeSync(hfd);
  const out = join(dir, 'floor-out');
  const rounds = SHORT ? 1 : 3;
  const runs = { io: [] as number[], floor: [] as number[], fpo: [] as number[], tcpdump: [] as number[] };
  let packets = 0;
  for (let r = 0; r < rounds; r++) {
    const t = tcpdumpSeconds(input, join(dir, 'floor-tcpdump.pcap'));
    if (t !== null) runs.tcpdump.push(t);
    runs.io.push(ioSeconds(input, out, header));
    const f = floorRun(input, out, header);
    runs.floor.push(f.seconds);
    packets = f.packets;
    rmSync(out, { recursive: true, force: true });
    const rep = replay({ capture: input, topology: topo, outDir: out, maxFlows: 65536 }).report;
    rmSync(out, { recursive: true, force: true });
    if (rep.packets.in !== packets || rep.flows.fastLane !== packets) throw new Error(`floor bench: fpo read ${rep.packets.in} (lane ${rep.flows.fastLane}), the floor ${packets}`);
    runs.fpo.push(rep.seconds);
  }
  rmSync(input, { force: true });
  const io = Math.min(...runs.io);
  const floor = Math.min(...runs.floor);
  const fpo = Math.min(...runs.fpo);
  const td = runs.tcpdump.length > 0 ? Math.min(...runs.tcpdump) : null;
  const r4 = (x: number) => Number(x.toFixed(4));
  const ns = (s: number) => Number(((s * 1e9) / packets).toFixed(1));
  return {
    bench: 'replay-floor', frameBytes: 64, flows, frames: packets, rounds, txBufferBytes: TX, ports: PORTS,
    ioSeconds: r4(io), floorSeconds: r4(floor), seconds: r4(fpo), baseline: 'tcpdump -r IN -w OUT', baselineSeconds: td === null ? null : r4(td),
    ioPps: Math.round(packets / io), floorPps: Math.round(packets / floor), pps: Math.round(packets / fpo), baselinePps: td === null ? null : Math.round(packets / td),
    ratio: td === null ? null : Number((td / fpo).toFixed(3)),
    floorRatio: td === null ? null : Number((td / floor).toFixed(3)),
    fpoOverFloor: Number((floor / fpo).toFixed(3)),
    ns: { kernelIo: ns(io), floorLoop: ns(floor - io), fpoSwitching: ns(fpo - floor), tcpdump: td === null ? null : ns(td) },
    runs: { io: runs.io.map(r4), floor: runs.floor.map(r4), fpo: runs.fpo.map(r4), tcpdump: runs.tcpdump.map(r4) },
  };
}

if (process.argv[1]?.endsWith('replay-floor.js')) {
  const root = existsSync('/dev/shm') ? '/dev/shm' : undefined;
  const dir = mkdtempSync(join(root ?? process.env.TMPDIR ?? '/tmp', 'fpo-floor-'));
  try {
    emit(runFloorBench({ frames: SHORT ? 20_000 : 10_000_000, flows: 1000, dir }));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
