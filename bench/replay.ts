/**
 * End-to-end replay: a synthetic capture in, per-PPID captures out, in
 * packets per second and Gbit/s, for 64- and 1500-byte frames over 1
 * thousand and 1 million flows. In the same run, the same capture through
 * `tcpdump -r IN -w OUT` (libpcap's copy, no switching at all) is the
 * baseline, and `ratio` is fpo/tcpdump. Each result also carries the heap
 * growth and GC time during the replay, and the peak RSS; `warm` is a second
 * replay of the same capture in the same process (the JIT warmed up: the
 * first pays for compiling the fast path), against the same baseline.
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
import { replay } from '../control/replay.js';
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

  // Baseline first, on a cold output file, as fpo gets one.
  const tdOut = join(dir, 'tcpdump-out.pcap');
  const base = tcpdumpSeconds(input, tdOut);
  rmSync(tdOut, { force: true });

  let gcMs = 0;
  const obs = new PerformanceObserver((list) => { for (const e of list.getEntries()) gcMs += e.duration; });
  obs.observe({ entryTypes: ['gc'] });
  const out = join(dir, 'fpo-out');
  rmSync(out, { recursive: true, force: true });
  const heap0 = process.memoryUsage().heapUsed;
  const { report } = replay({ capture: input, topology: topo, outDir: out, maxFlows: Math.max(65536, flows * 2) });
  const heap1 = process.memoryUsage().heapUsed;
  // GC entries reach the observer from the event loop: let them arrive.
  await new Promise((r) => setTimeout(r, 20));
  obs.disconnect();
  const rss = process.resourceUsage().maxRSS * 1024;
  rmSync(out, { recursive: true, force: true });
  // The same capture again, in the same process: the JIT has compiled the fast path and
  // (for this capture) nothing else differs; fresh output files as before.
  const warm = replay({ capture: input, topology: topo, outDir: out, maxFlows: Math.max(65536, flows * 2) }).report;
  rmSync(out, { recursive: true, force: true });
  rmSync(input, { force: true });
  const pps = report.packets.in / report.seconds;
  const result: Record<string, unknown> = {
    bench: 'replay', label: opts.label, frameBytes: size, flows, frames: report.packets.in, tunnel: opts.tunnel,
    seconds: Number(report.seconds.toFixed(4)), pps: Math.round(pps), gbps: Number(((pps * size * 8) / 1e9).toFixed(3)),
    dropped: report.packets.dropped, upcalls: report.flows.upcalls, emcHits: report.flows.emcHits, megaflowHits: report.flows.megaflowHits,
    baseline: 'tcpdump -r IN -w OUT', baselineSeconds: base === null ? null : Number(base.toFixed(4)),
    baselinePps: base === null ? null : Math.round(report.packets.in / base),
    ratio: base === null ? null : Number((base / report.seconds).toFixed(3)),
    heapGrowthBytes: heap1 - heap0, gcMs: Number(gcMs.toFixed(2)), gcShare: Number((gcMs / 1000 / report.seconds).toFixed(5)), peakRssBytes: rss,
    warm: { seconds: Number(warm.seconds.toFixed(4)), pps: Math.round(warm.packets.in / warm.seconds), ratio: base === null ? null : Number((base / warm.seconds).toFixed(3)) },
    fastLane: report.flows.fastLane,
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
