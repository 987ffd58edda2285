/**
 * The floor under a replay written in TypeScript on this machine, beside
 * fpo and tcpdump, for the 64-byte case of bench/replay.ts (1 thousand
 * flows to 64 VMs). Five sides, in alternating rounds, best of each:
 *
 *   io       the kernel's share alone: the capture read in fpo's 1 MiB
 *            chunks, and as many bytes written in tx-buffer-sized writes,
 *            round robin over the ports' files; no per-packet work;
 *   floor    the least a switch can do per packet, with fpo's IO: walk the
 *            records, pick a port from a hash of the IPv4 destination, copy
 *            the record into that port's buffer (rx chunk and tx buffers in
 *            one block, fpo's sizes); no parse, lookup or counters;
 *   lean     the floor plus the fast lane's per-packet work, written as one
 *            function over module-level arrays: commonIpv4 and the key's
 *            words, ipv4KeyHash, a two-way exact-match probe comparing the
 *            key (misses go to a Map), per-flow packets/bytes/used and
 *            per-port tx counters, then the copy — what fpo's lane does for
 *            these packets, minus its generality (other layouts, tunnels,
 *            upcalls, action sets, several datapaths in one process);
 *   fpo      replay() through a 64-VM topology;
 *   tcpdump  `tcpdump -r IN -w OUT`, the baseline of bench/replay.ts.
 *
 * `ratio` is tcpdump/fpo as in bench/replay.ts, `floorRatio` tcpdump/floor
 * (what no TypeScript switch here can beat), `fpoOverFloor` floor/fpo, `leanRatio`
 * tcpdump/lean, and `ns` the same split per packet: what the kernel's IO
 * takes, what the floor's loop adds, what the lean lane's work adds, what
 * fpo's switching adds over the floor.
 *
 *   node dist/bench/replay-floor.js       (FPO_BENCH_SHORT=1: small N)
 */
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { replay } from '../control/replay.js';
import { FLOAT64_COPY_EXACT, arenaCopy } from '../datapath/arena.js';
import { ipv4KeyHash } from '../datapath/classifier/emc.js';
import { commonIpv4, transportWord } from '../datapath/parse/parse.js';
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
const doubles = new Float64Array(block);
bytes.fill(0);
const used = new Int32Array(PORTS);
// The lean lane's tables: 8192 two-way entries of 24 words (hash, flow + 1, the key's
// 10 words at 4..), per-flow counters as fpo keeps them, per-port tx counters.
const ENTRIES = 8192;
const ent = new Uint32Array(ENTRIES * 24);
const flowPort = new Int32Array(65536);
const flowStats = new Float64Array(65536 * 4);
const txPackets = new Float64Array(PORTS);
const txBytes = new Float64Array(PORTS);
const flowOfKey = new Map<string, number>();

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

/**
 * Copies the record at p (len bytes) into the port's buffer, writing the
 * buffer out first when it is full; as fpo's hot loop copies a short
 * record: up to 96 bytes as 96 in a straight line, 8 at a time where both
 * ends allow (and the engine keeps NaN bits), the bytes past the record
 * landing in the buffer's free space.
 */
function toPort(fds: number[], port: number, p: number, len: number): void {
  let u = used[port];
  if (u + len > TX) {
    writeSync(fds[port], bytes, CHUNK + port * TX, u);
    u = 0;
  }
  const to = CHUNK + port * TX + u;
  if (FLOAT64_COPY_EXACT && len <= 96 && u + 96 <= TX && ((p | to) & 7) === 0) {
    const x = to >> 3;
    const y = p >> 3;
    doubles[x] = doubles[y]; doubles[x + 1] = doubles[y + 1]; doubles[x + 2] = doubles[y + 2]; doubles[x + 3] = doubles[y + 3];
    doubles[x + 4] = doubles[y + 4]; doubles[x + 5] = doubles[y + 5]; doubles[x + 6] = doubles[y + 6]; doubles[x + 7] = doubles[y + 7];
    doubles[x + 8] = doubles[y + 8]; doubles[x + 9] = doubles[y + 9]; doubles[x + 10] = doubles[y + 10]; doubles[x + 11] = doubles[y + 11];
  } else arenaCopy(bytes, words, p, len, to);
  used[port] = u + len;
}

/** Moves the unread tail [p, have) of the chunk to its front and reads after it: the new fill, or 0 at the end. */
function refill(fd: number, p: number, have: number): number {
  const rest = have - p;
  bytes.copyWithin(0, p, have);
  const n = readSync(fd, bytes, rest, CHUNK - rest, null);
  return n <= 0 ? 0 : rest + n;
}

/** The end of a run: the ports' buffers written out, files closed; the seconds since t0 (before the clean-up). */
function finish(fd: number, fds: number[], dir: string, t0: number): number {
  for (let q = 0; q < PORTS; q++) if (used[q] > 0) writeSync(fds[q], bytes, CHUNK + q * TX, used[q]);
  closeSync(fd);
  const seconds = (performance.now() - t0) / 1000;
  closeOutputs(fds, dir);
  return seconds;
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
      toPort(fds, Math.imul(view.getUint32(p + 16 + 30), 0x9e3779b1) >>> 0 >>> 26, p, len); // one of 64 ports
      p += len;
      packets++;
    }
    have = refill(fd, p, have);
    if (have === 0) break;
    p = 0;
  }
  const seconds = finish(fd, fds, dir, t0);
  return { seconds, packets };
}

// A miss: the flow by its full key (a Map, as a control plane would answer), then cached.
function leanMiss(h: number, w0: number, w2: number, w3: number, w4: number, w5: number, w6: number, w10: number, tp: number): number {
  const name = `${w0},${w2},${w3},${w4},${w5},${w6},${w10},${tp}`;
  let f = flowOfKey.get(name);
  if (f === undefined) {
    f = flowOfKey.size;
    flowOfKey.set(name, f);
    flowPort[f] = Math.imul(w10, 0x9e3779b1) >>> 0 >>> 26;
  }
  let q = (h & (ENTRIES - 1)) * 24;
  if (ent[q + 1] !== 0) q = ((h >>> 16) & (ENTRIES - 1)) * 24;
  ent[q] = h; ent[q + 1] = f + 1;
  ent[q + 4] = w0; ent[q + 5] = w2; ent[q + 6] = w3; ent[q + 7] = w4; ent[q + 8] = w5; ent[q + 9] = w6; ent[q + 10] = w10; ent[q + 11] = tp;
  return f;
}

/** The floor plus the lane's work for these packets. Returns seconds and packets. */
function leanRun(input: string, dir: string, header: Uint8Array, flows: number): { seconds: number; packets: number } {
  const fds = openOutputs(dir, header);
  used.fill(0);
  ent.fill(0);
  flowOfKey.clear();
  const t0 = performance.now();
  const fd = openSync(input, 'r');
  let have = readSync(fd, bytes, 0, CHUNK, null);
  let p = GLOBAL_HEADER;
  let packets = 0;
  const now = Date.now();
  for (;;) {
    for (;;) {
      if (p + 16 > have) break;
      const cl = view.getUint32(p + 8, true);
      const len = 16 + cl;
      if (p + len > have) break;
      const base = p + 16;
      const l4 = commonIpv4(bytes, view, base, cl, view.getUint32(p + 12, true));
      if (l4 === 0) throw new Error(`floor bench: record at ${p} is not the common case`);
      const proto = bytes[base + 23];
      const tp = transportWord(bytes, view, base, proto, l4);
      const w0 = 1;
      const w2 = view.getUint32(base);
      const w3 = view.getUint32(base + 4);
      const w4 = view.getUint32(base + 8);
      const w5 = ((0x0800 << 16) | (proto << 8)) >>> 0;
      const w6 = view.getUint32(base + 26);
      const w10 = view.getUint32(base + 30);
      const h = ipv4KeyHash(w0, w2, w3, w6, w10, tp);
      // The two ways written out, as fpo's hot loop probes them.
      let f = -1;
      let q = (h & (ENTRIES - 1)) * 24;
      if (ent[q] === h && ent[q + 11] === tp && ent[q + 10] === w10 && ent[q + 9] === w6 && ent[q + 4] === w0 &&
        ent[q + 5] === w2 && ent[q + 6] === w3 && ent[q + 7] === w4 && ent[q + 8] === w5) f = ent[q + 1] - 1;
      else {
        q = ((h >>> 16) & (ENTRIES - 1)) * 24;
        if (ent[q] === h && ent[q + 11] === tp && ent[q + 10] === w10 && ent[q + 9] === w6 && ent[q + 4] === w0 &&
          ent[q + 5] === w2 && ent[q + 6] === w3 && ent[q + 7] === w4 && ent[q + 8] === w5) f = ent[q + 1] - 1;
      }
      if (f < 0) f = leanMiss(h, w0, w2, w3, w4, w5, w6, w10, tp);
      const o = f * 4;
      flowStats[o]++;
      flowStats[o + 1] += cl;
      flowStats[o + 2] = now;
      const port = flowPort[f];
      toPort(fds, port, p, len);
      txPackets[port]++;
      txBytes[port] += cl;
      p += len;
      packets++;
    }
    have = refill(fd, p, have);
    if (have === 0) break;
    p = 0;
  }
  const seconds = finish(fd, fds, dir, t0);
  if (flowOfKey.size !== Math.min(packets, flows)) throw new Error(`floor bench: the lean lane found ${flowOfKey.size} flows, the capture has ${flows}`);
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
  const runs = { io: [] as number[], floor: [] as number[], lean: [] as number[], fpo: [] as number[], tcpdump: [] as number[] };
  let packets = 0;
  for (let r = 0; r < rounds; r++) {
    const t = tcpdumpSeconds(input, join(dir, 'floor-tcpdump.pcap'));
    if (t !== null) runs.tcpdump.push(t);
    runs.io.push(ioSeconds(input, out, header));
    const f = floorRun(input, out, header);
    runs.floor.push(f.seconds);
    packets = f.packets;
    runs.lean.push(leanRun(input, out, header, flows).seconds);
    rmSync(out, { recursive: true, force: true });
    const rep = replay({ capture: input, topology: topo, outDir: out, maxFlows: 65536 }).report;
    rmSync(out, { recursive: true, force: true });
    if (rep.packets.in !== packets || rep.flows.fastLane !== packets) throw new Error(`floor bench: fpo read ${rep.packets.in} (lane ${rep.flows.fastLane}), the floor ${packets}`);
    runs.fpo.push(rep.seconds);
  }
  rmSync(input, { force: true });
  const io = Math.min(...runs.io);
  const floor = Math.min(...runs.floor);
  const lean = Math.min(...runs.lean);
  const fpo = Math.min(...runs.fpo);
  const td = runs.tcpdump.length > 0 ? Math.min(...runs.tcpdump) : null;
  const r4 = (x: number) => Number(x.toFixed(4));
  const ns = (s: number) => Number(((s * 1e9) / packets).toFixed(1));
  return {
    bench: 'replay-floor', frameBytes: 64, flows, frames: packets, rounds, txBufferBytes: TX, ports: PORTS,
    ioSeconds: r4(io), floorSeconds: r4(floor), leanSeconds: r4(lean), seconds: r4(fpo), baseline: 'tcpdump -r IN -w OUT', baselineSeconds: td === null ? null : r4(td),
    ioPps: Math.round(packets / io), floorPps: Math.round(packets / floor), leanPps: Math.round(packets / lean), pps: Math.round(packets / fpo), baselinePps: td === null ? null : Math.round(packets / td),
    // Ratios of the seconds as printed, so that the line checks itself.
    ratio: td === null ? null : Number((r4(td) / r4(fpo)).toFixed(3)),
    floorRatio: td === null ? null : Number((r4(td) / r4(floor)).toFixed(3)),
    leanRatio: td === null ? null : Number((r4(td) / r4(lean)).toFixed(3)),
    fpoOverFloor: Number((r4(floor) / r4(fpo)).toFixed(3)),
    ns: { kernelIo: ns(io), floorLoop: ns(floor - io), leanWork: ns(lean - floor), fpoSwitching: ns(fpo - floor), tcpdump: td === null ? null : ns(td) },
    runs: { io: runs.io.map(r4), floor: runs.floor.map(r4), lean: runs.lean.map(r4), fpo: runs.fpo.map(r4), tcpdump: runs.tcpdump.map(r4) },
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
