/**
 * End-to-end replay: a synthetic capture in, per-PPID captures out, in
 * packets per second and Gbit/s, for 64- and 1500-byte frames over 1
 * thousand and 1 million flows. In the same run, the same capture through
 * `tcpdump -r IN -w OUT` (libpcap's copy, no switching at all) is the
 * baseline, and `ratio` is fpo/tcpdump. Each result also carries the heap
 * growth and GC time during the first replay, and the peak RSS. Each side
 * runs `rounds` times, alternately (tcpdump, fpo, tcpdump, fpo, ...), and
 * the figures are each side's best, since this machine's speed drifts from
 * minute to minute; `runs` has every sample, `firstRun` the first fpo run
 * (which also pays for compiling the fast path) against the first tcpdump.
 *
 * Files live in /dev/shm when it exists (a RAM disk, as the kernel's page
 * cache would be for a capture just written), so both sides measure
 * switching and copying rather than the disk.
 *
 *   node dist/bench/replay.js            (FPO_BENCH_SHORT=1: small N)
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PerformanceObserver } from 'node:perf_hooks';
import { replay, type ReplayReport } from '../control/replay.js';
import { benchTopology, generate } from './gen-capture.js';
import { SHORT, emit } from './harness.js';

const VMS = 64;

function tcpdumpSeconds(input: string, output: string): number | null {
  const t0 = performance.now();
  const r = spawnSync('tcpdump', ['-r', input, '-w', output], { stdio: 'ignore' });
  if (r.error || r.status !== 0) return null;
  return (performance.now() - t0) / 1000;
}

export async function runReplayBench(opts: { size: number; flows: number; frames: number; tunnel?: 'vxlan' | 'geneve'; flagged?: number; dir: string; label?: string }): Promise<Record<string, unknown>> {
  const { size, flows, frames, dir } = opts;
  const input = join(dir, `in-${size}-${flows}.pcap`);
  const topo = join(dir, 'topology.json');
  writeFileSync(topo, JSON.stringify(benchTopology(VMS)));
  generate(input, { frames, size, flows, vms: VMS, tunnel: opts.tunnel, flagged: opts.flagged });

  // Rounds of (tcpdump, fpo), each on fresh output files: this machine's speed drifts by a
  // third from minute to minute, so both sides are sampled at the same times and the
  // ratio is best against best. The first fpo run also pays for compiling the fast path.
  const rounds = SHORT ? 1 : 3;
  const tdOut = join(dir, 'tcpdump-out.pcap');
  const out = join(dir, 'fpo-out');
  const maxFlows = Math.max(65536, flows * 2);
  const td: number[] = [];
  const fpo: number[] = [];
  let first: ReplayReport | null = null;
  let gcMs = 0;
  let heapGrowth = 0;
  for (let r = 0; r < rounds; r++) {
    const t = tcpdumpSeconds(input, tdOut);
    rmSync(tdOut, { force: true });
    if (t !== null) td.push(t);
    rmSync(out, { recursive: true, force: true });
    if (r === 0) {
      const obs = new PerformanceObserver((list) => { for (const e of list.getEntries()) gcMs += e.duration; });
      obs.observe({ entryTypes: ['gc'] });
      const heap0 = process.memoryUsage().heapUsed;
      first = replay({ capture: input, topology: topo, outDir: out, maxFlows }).report;
      heapGrowth = process.memoryUsage().heapUsed - heap0;
      // GC entries reach the observer from the event loop: let them arrive.
      await new Promise((res) => setTimeout(res, 20));
      obs.disconnect();
      fpo.push(first.seconds);
    } else {
      fpo.push(replay({ capture: input, topology: topo, outDir: out, maxFlows }).report.seconds);
    }
    rmSync(out, { recursive: true, force: true });
  }
  const rss = process.resourceUsage().maxRSS * 1024;
  rmSync(input, { force: true });
  const report = first as ReplayReport;
  const best = Math.min(...fpo);
  const base = td.length > 0 ? Math.min(...td) : null;
  const pps = report.packets.in / best;
  const round4 = (x: number) => Number(x.toFixed(4));
  const result: Record<string, unknown> = {
    bench: 'replay', label: opts.label, frameBytes: size, flows, frames: report.packets.in, tunnel: opts.tunnel,
    seconds: round4(best), pps: Math.round(pps), gbps: Number(((pps * size * 8) / 1e9).toFixed(3)),
    dropped: report.packets.dropped, upcalls: report.flows.upcalls, emcHits: report.flows.emcHits, megaflowHits: report.flows.megaflowHits, fastLane: report.flows.fastLane,
    baseline: 'tcpdump -r IN -w OUT', baselineSeconds: base === null ? null : round4(base),
    baselinePps: base === null ? null : Math.round(report.packets.in / base),
    ratio: base === null ? null : Number((base / best).toFixed(3)),
    rounds, runs: { fpo: fpo.map(round4), tcpdump: td.map(round4) },
    firstRun: { seconds: round4(report.seconds), ratio: td.length > 0 ? Number((td[0] / report.seconds).toFixed(3)) : null },
    heapGrowthBytes: heapGrowth, gcMs: Number(gcMs.toFixed(2)), gcShare: Number((gcMs / 1000 / report.seconds).toFixed(5)), peakRssBytes: rss,
  };
  return result;
}

if (process.argv[1]?.endsWith('replay.js')) {
  const root = existsSync('/dev/shm') ? '/dev/shm' : undefined;
  const dir = mkdtempSync(join(root ?? process.env.TMPDIR ?? '/tmp', 'fpo-bench-'));
  try {
    const n = (full: number) => (SHORT ? Math.min(full, 20_000) : full);
    const cases = [
      { size: 64, flows: 1000, frames: n(10_000_000) },
      { size: 64, flows: 1_000_000, frames: n(10_000_000) },
      { size: 1500, flows: 1000, frames: n(1_000_000) },
      { size: 1500, flows: 1_000_000, frames: n(2_000_000) },
    ];
    for (const c of cases) emit(await runReplayBench({ ...c, flows: SHORT ? Math.min(c.flows, 5000) : c.flows, dir }));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
