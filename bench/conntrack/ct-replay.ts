/**
 * ct + NAT in the whole datapath, in process: the same synthetic capture
 * (64-byte UDP frames from the uplink to 64 VMs over 1 thousand flows)
 * replayed through two topologies that differ in one rule:
 *
 *   plain    the bench topology (L2 to the VMs; the fast lane takes nearly
 *            every packet) — the baseline, measured in the same run;
 *   ct+nat   the same with `ct(commit,zone=1,nat(src=198.51.100.1-198.51.100.254:1024-65535)),normal`
 *            on every IPv4 packet: each packet goes out of the fast lane
 *            through conntrack (a flow's first packet commits its
 *            connection and picks a translation; every later one finds it
 *            and is rewritten: addresses, port, IP and UDP checksums), then
 *            on to L2's outputs as the ct's continuation.
 *
 * Rounds alternate the two; each side's best. ratio = pps(ct+nat) /
 * pps(plain) (issue 19's goal: ≥ 0.5). `connections` and `natRewritten`
 * say the work was done (a connection per flow; every packet translated).
 *
 *   node dist/bench/conntrack/ct-replay.js     (FPO_BENCH_SHORT=1: fewer frames)
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { replay } from '../../control/replay.js';
import { benchTopology, generate } from '../gen-capture.js';
import { SHORT, emit } from '../harness.js';

const FRAMES = SHORT ? 200_000 : 2_000_000;
const FLOWS = 1000;
const ROUNDS = 3;

function main(): void {
  const dir = mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : '/tmp', 'fpo-ct-bench-'));
  try {
    const cap = join(dir, 'in.pcap');
    generate(cap, { frames: FRAMES, size: 64, flows: FLOWS, vms: 64 });
    const plain = benchTopology(64);
    const withCt = { ...benchTopology(64), rules: [{ priority: 200, match: { eth_type: '0x0800' }, actions: ['ct(commit,zone=1,nat(src=198.51.100.1-198.51.100.254:1024-65535))', 'normal'] }] };
    const topo = { plain: join(dir, 'plain.json'), ct: join(dir, 'ct.json') };
    writeFileSync(topo.plain, JSON.stringify(plain));
    writeFileSync(topo.ct, JSON.stringify(withCt));
    const secs = { plain: [] as number[], ct: [] as number[] };
    let last: ReturnType<typeof replay> | null = null;
    for (let r = 0; r < ROUNDS; r++) {
      for (const side of ['plain', 'ct'] as const) {
        const out = join(dir, `out-${side}`);
        const res = replay({ capture: cap, topology: topo[side], outDir: out });
        secs[side].push(res.report.seconds);
        if (side === 'ct') last = res;
        rmSync(out, { recursive: true, force: true });
      }
    }
    const best = (a: number[]) => Math.min(...a);
    const pps = (s: number) => Math.round(FRAMES / s);
    const dp = last!.datapath;
    const st = dp.stats();
    emit({
      bench: 'ct-replay', frames: FRAMES, flows: FLOWS, frameBytes: 64,
      case: 'ct(commit,nat(src=…)),normal on every packet',
      seconds: Number(best(secs.ct).toFixed(4)), pps: pps(best(secs.ct)),
      baseline: 'the same replay without the rule (fast lane)', baselineSeconds: Number(best(secs.plain).toFixed(4)), baselinePps: pps(best(secs.plain)),
      ratio: Number((best(secs.plain) / best(secs.ct)).toFixed(3)), goal: 0.5,
      connections: dp.conntrack.stats.created, ctPackets: st.ctPackets, natRewritten: dp.conntrack.stats.found + dp.conntrack.stats.created, delivered: st.delivered, dropped: st.dropped,
      runs: { plain: secs.plain.map((s) => Number(s.toFixed(4))), ct: secs.ct.map((s) => Number(s.toFixed(4))) },
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main();
