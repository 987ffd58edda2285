/**
 * The receive side of sender-assisted classification, in one run:
 *   - the flag check alone (outer parse + reading the flag) against the
 *     full path a packet takes without the flag (outer parse, flag check,
 *     decapsulation, inner parse, classification): the ratio says what the
 *     check costs next to the classification it lets flagged packets skip;
 *   - end-to-end receive-side replay of Geneve traffic with 1 % flagged, in
 *     packets per second, with tcpdump's plain copy of the same file as the
 *     baseline (bench/replay.ts).
 *
 *   node dist/bench/classifier/flag-check.js   (FPO_BENCH_SHORT=1: small N)
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ABSENT, PacketBatch } from '../../datapath/batch.js';
import { KEY_WORDS, W_TP } from '../../datapath/classifier/flow-key.js';
import { benchTopology, generate } from '../gen-capture.js';
import { SHORT, emit } from '../harness.js';
import { runReplayBench } from '../replay.js';
import { CaptureReader } from '../../datapath/ports/capture-reader.js';
import { Datapath } from '../../datapath/datapath.js';
import { Fpag } from '../../control/fpag.js';
import { topologyFrom } from '../../control/topology.js';
import { UDP_PORT_VXLAN } from '../../datapath/parse/parse.js';

const dir = mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : '/tmp', 'fpo-bench-'));
try {
  // Prepared batches of Geneve packets, 1 % flagged.
  const input = join(dir, 'geneve.pcap');
  const topoPath = join(dir, 'topology.json');
  const topoJson = benchTopology(64);
  writeFileSync(topoPath, JSON.stringify(topoJson));
  generate(input, { frames: 8192, size: 128, flows: 1000, vms: 64, tunnel: 'geneve', flagged: 1 });
  const dp = new Datapath({ maxFlows: 65536 });
  const topo = topologyFrom(topoJson, topoPath);
  for (const p of topo.ports) dp.addPort(p.ppid, { writeBatch: () => undefined });
  new Fpag(topo, dp).start();
  const reader = new CaptureReader(input, undefined, 8 << 20);
  const batches: PacketBatch[] = [];
  for (;;) {
    const b = new PacketBatch(32);
    if (reader.fill(b, 1) === 0) break;
    batches.push(b);
  }
  const saved = batches.map((b) => ({ off: b.off.slice(), caplen: b.caplen.slice(), wirelen: b.wirelen.slice() }));
  const restore = () => batches.forEach((b, j) => { b.off.set(saved[j].off); b.caplen.set(saved[j].caplen); b.wirelen.set(saved[j].wirelen); b.drop.fill(0); });
  const rounds = SHORT ? 20 : 400;
  const packets = rounds * batches.reduce((n, b) => n + b.count, 0);

  let sink = 0;
  const checkOnly = () => {
    for (let r = 0; r < rounds; r++) {
      for (const b of batches) {
        b.drop.fill(0);
        dp.parse.process(b);
        for (let i = 0; i < b.count; i++) {
          if (b.innerOff[i] === ABSENT) continue;
          const base = b.off[i];
          if (dp.flagCheck.isFlagged(b.buf, base + b.tunHdr[i], base + b.innerOff[i], (b.key[i * KEY_WORDS + W_TP] & 0xffff) === UDP_PORT_VXLAN)) sink++;
        }
      }
    }
  };
  const full = () => {
    for (let r = 0; r < rounds; r++) {
      restore();
      for (const b of batches) {
        dp.parse.process(b);
        dp.flagCheck.process(b);
        dp.classify.process(b, 0);
      }
    }
  };
  // Warm up both (and install the flows), then time.
  full(); checkOnly();
  let t0 = performance.now();
  checkOnly();
  const tCheck = (performance.now() - t0) / 1000;
  t0 = performance.now();
  full();
  const tFull = (performance.now() - t0) / 1000;
  const flagCheckNsPerPacket = Number(((tCheck / packets) * 1e9).toFixed(1));
  const fullPathNsPerPacket = Number(((tFull / packets) * 1e9).toFixed(1));
  // The ratio of the ns as printed, so that the line checks itself.
  emit({ bench: 'classifier/flag-check', packets, flagCheckPps: Math.round(packets / tCheck), fullPathPps: Math.round(packets / tFull), flagCheckNsPerPacket, fullPathNsPerPacket, baseline: 'outer parse + flag check + decap + inner parse + classify', ratio: Number((flagCheckNsPerPacket / fullPathNsPerPacket).toFixed(3)), flaggedSeen: sink > 0 });

  emit({ ...(await runReplayBench({ size: 128, flows: 1000, frames: SHORT ? 20_000 : 4_000_000, tunnel: 'geneve', flagged: 1, dir, label: 'receive-side Geneve, 1% flagged' })) });
} finally {
  rmSync(dir, { recursive: true, force: true });
}
