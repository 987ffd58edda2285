/**
 * End-to-end replay: a synthetic capture in, per-PPID captures out, for 64-
 * and 1500-byte frames over 1 thousand and 1 million flows, and the small
 * demo capture. The baseline is `tcpdump -r IN -w OUT` on the same file
 * (libpcap's copy, no switching at all), timed as a whole process.
 *
 * Two figures for fpo, side by side:
 *
 *   whole process   `node dist/control/cli.js replay IN --topology T --out DIR`
 *                   as a child process, wall time: what `time fpo replay …`
 *                   shows a user (Node's start-up, loading fpo's modules and
 *                   the topology, compiling the fast path, the replay, the
 *                   report, exit). `processSeconds`; the headline `ratio` is
 *                   tcpdump's whole process against this one.
 *   in process      replay() called in this process, from the capture's open
 *                   to the last write (ReplayReport.seconds): the switching
 *                   alone. `inProcessSeconds`, `inProcessRatio`, and `pps`,
 *                   `gbps` (the switching rate, as these lines always gave).
 *
 * Each round runs tcpdump, fpo's process and fpo in process, one after the
 * other, on fresh output files; `rounds` rounds; each figure is its side's
 * best (this machine's speed drifts from minute to minute), `medians` has
 * the medians and `runs` every sample. `firstRun` is the first in-process
 * run, which also compiles the fast path. The heap growth and GC time are
 * those of the first in-process run, the peak RSS this process's.
 *
 * The small case (the 671-packet demo) is all start-up: beside it,
 * `node -e 0` (`nodeStartSeconds`: Node's own start and exit, which any
 * Node program pays) and tcpdump; `fpoOverNodeSeconds` is what fpo adds.
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
import { fileURLToPath } from 'node:url';
import { PerformanceObserver } from 'node:perf_hooks';
import { replay, type ReplayReport } from '../control/replay.js';
import { benchTopology, generate } from './gen-capture.js';
import { SHORT, emit } from './harness.js';

const VMS = 64;
const CLI = fileURLToPath(new URL('../control/cli.js', import.meta.url));
const FIXTURES = fileURLToPath(new URL('../../fixtures/', import.meta.url));

/** Wall seconds of a child process run to its end, or null when it fails. */
function processSeconds(cmd: string, args: string[]): number | null {
  const t0 = performance.now();
  const r = spawnSync(cmd, args, { stdio: 'ignore' });
  if (r.error || r.status !== 0) return null;
  return (performance.now() - t0) / 1000;
}

function tcpdumpSeconds(input: string, output: string): number | null {
  return processSeconds('tcpdump', ['-r', input, '-w', output]);
}

/** fpo as a user runs it: a new Node process, the CLI, the report printed. */
function fpoProcessSeconds(input: string, topology: string, out: string, maxFlows: number): number {
  const t = processSeconds(process.execPath, [CLI, 'replay', input, '--topology', topology, '--out', out, '--max-flows', String(maxFlows)]);
  if (t === null) throw new Error(`fpo replay ${input} failed as a process`);
  return t;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
const round4 = (x: number) => Number(x.toFixed(4));
const ratioOf = (base: number | null, x: number) => (base === null ? null : Number((base / x).toFixed(3)));

export async function runReplayBench(opts: { size: number; flows: number; frames: number; tunnel?: 'vxlan' | 'geneve'; flagged?: number; dir: string; label?: string; wildcarding?: 'proof' | 'rule-fields' }): Promise<Record<string, unknown>> {
  const { size, flows, frames, dir } = opts;
  const input = join(dir, `in-${size}-${flows}.pcap`);
  const topo = join(dir, 'topology.json');
  writeFileSync(topo, JSON.stringify(benchTopology(VMS, opts.wildcarding)));
  generate(input, { frames, size, flows, vms: VMS, tunnel: opts.tunnel, flagged: opts.flagged });
  const r = await timeRounds({ input, topo, dir, rounds: SHORT ? 1 : 3, maxFlows: Math.max(65536, flows * 2) });
  rmSync(input, { force: true });
  return { bench: 'replay', label: opts.label, frameBytes: size, flows, tunnel: opts.tunnel, wildcarding: opts.wildcarding ?? 'rule-fields', ...r };
}

/**
 * Rounds of (tcpdump, fpo's process, fpo in process) on one capture; the
 * line's figures. With `nodeStart`, each round also times `node -e 0`.
 */
async function timeRounds(o: { input: string; topo: string; dir: string; rounds: number; maxFlows: number; nodeStart?: boolean }): Promise<Record<string, unknown>> {
  const tdOut = join(o.dir, 'tcpdump-out.pcap');
  const out = join(o.dir, 'fpo-out');
  const td: number[] = [];
  const proc: number[] = [];
  const inProc: number[] = [];
  const node: number[] = [];
  let first: ReplayReport | null = null;
  let gcMs = 0;
  let heapGrowth = 0;
  for (let r = 0; r < o.rounds; r++) {
    if (o.nodeStart) {
      const t = processSeconds(process.execPath, ['-e', '0']);
      if (t !== null) node.push(t);
    }
    const t = tcpdumpSeconds(o.input, tdOut);
    rmSync(tdOut, { force: true });
    if (t !== null) td.push(t);
    rmSync(out, { recursive: true, force: true });
    proc.push(fpoProcessSeconds(o.input, o.topo, out, o.maxFlows));
    rmSync(out, { recursive: true, force: true });
    if (r === 0) {
      const obs = new PerformanceObserver((list) => { for (const e of list.getEntries()) gcMs += e.duration; });
      obs.observe({ entryTypes: ['gc'] });
      const heap0 = process.memoryUsage().heapUsed;
      first = replay({ capture: o.input, topology: o.topo, outDir: out, maxFlows: o.maxFlows }).report;
      heapGrowth = process.memoryUsage().heapUsed - heap0;
      // GC entries reach the observer from the event loop: let them arrive.
      await new Promise((res) => setTimeout(res, 20));
      obs.disconnect();
      inProc.push(first.seconds);
    } else {
      inProc.push(replay({ capture: o.input, topology: o.topo, outDir: out, maxFlows: o.maxFlows }).report.seconds);
    }
    rmSync(out, { recursive: true, force: true });
  }
  const report = first as ReplayReport;
  // Best of each side, as printed: the ratios are of these, so that the line checks itself.
  const bestProc = round4(Math.min(...proc));
  const bestIn = round4(Math.min(...inProc));
  const base = td.length > 0 ? round4(Math.min(...td)) : null;
  const pps = report.packets.in / bestIn;
  const size = report.packets.in ? report.ports.reduce((n, p) => n + p.rx.bytes, 0) / report.packets.in : 0;
  const nodeBest = node.length > 0 ? round4(Math.min(...node)) : null;
  return {
    frames: report.packets.in,
    // Whole process against whole process: the headline.
    processSeconds: bestProc,
    baseline: 'tcpdump -r IN -w OUT (whole process)', baselineSeconds: base,
    ratio: ratioOf(base, bestProc),
    ...(o.nodeStart ? { nodeStartSeconds: nodeBest, fpoOverNodeSeconds: nodeBest === null ? null : round4(bestProc - nodeBest) } : {}),
    // In process: the switching alone (no Node start-up, module loading, topology, exit).
    inProcessSeconds: bestIn, inProcessRatio: ratioOf(base, bestIn),
    pps: Math.round(pps), gbps: Number(((pps * size * 8) / 1e9).toFixed(3)), processPps: Math.round(report.packets.in / bestProc),
    baselinePps: base === null ? null : Math.round(report.packets.in / base),
    dropped: report.packets.dropped, upcalls: report.flows.upcalls, emcHits: report.flows.emcHits, megaflowHits: report.flows.megaflowHits, fastLane: report.flows.fastLane,
    rounds: o.rounds,
    medians: { process: round4(median(proc)), inProcess: round4(median(inProc)), tcpdump: td.length ? round4(median(td)) : null, ...(o.nodeStart ? { nodeStart: node.length ? round4(median(node)) : null } : {}) },
    runs: { process: proc.map(round4), inProcess: inProc.map(round4), tcpdump: td.map(round4), ...(o.nodeStart ? { nodeStart: node.map(round4) } : {}) },
    firstRun: { inProcessSeconds: round4(report.seconds), inProcessRatio: td.length > 0 ? ratioOf(round4(td[0]), round4(report.seconds)) : null },
    heapGrowthBytes: heapGrowth, gcMs: Number(gcMs.toFixed(2)), gcShare: Number((gcMs / 1000 / report.seconds).toFixed(5)), peakRssBytes: process.resourceUsage().maxRSS * 1024,
  };
}

/** The small replay: fixtures/demo.pcap through fixtures/topology.json, where start-up is nearly all. */
export async function runSmallReplayBench(dir: string): Promise<Record<string, unknown>> {
  const r = await timeRounds({ input: join(FIXTURES, 'demo.pcap'), topo: join(FIXTURES, 'topology.json'), dir, rounds: SHORT ? 2 : 10, maxFlows: 65536, nodeStart: true });
  return { bench: 'replay', label: 'small: the 671-packet demo (fixtures/demo.pcap)', frameBytes: null, flows: null, ...r };
}

if (process.argv[1]?.endsWith('replay.js')) {
  const root = existsSync('/dev/shm') ? '/dev/shm' : undefined;
  const dir = mkdtempSync(join(root ?? process.env.TMPDIR ?? '/tmp', 'fpo-bench-'));
  try {
    const n = (full: number) => (SHORT ? Math.min(full, 20_000) : full);
    const cases = [
      { size: 64, flows: 1000, frames: n(10_000_000) },
      { size: 64, flows: 1000, frames: n(5_000_000) },
      { size: 64, flows: 1_000_000, frames: n(10_000_000) },
      { size: 64, flows: 1_000_000, frames: n(5_000_000), label: 'many flows: 1 M flows × 5 packets, a megaflow per flow (issue 23)' },
      { size: 64, flows: 1_000_000, frames: n(5_000_000), label: 'many flows: 1 M flows × 5 packets, the missed rule\'s proof alone (issue 23)', wildcarding: 'proof' as const },
      { size: 1500, flows: 1000, frames: n(1_000_000) },
      { size: 1500, flows: 1_000_000, frames: n(2_000_000) },
    ];
    // FPO_BENCH_ONLY=N runs the N-th case alone (0-based), e.g. to measure one change.
    const only = process.env.FPO_BENCH_ONLY === undefined ? null : Number(process.env.FPO_BENCH_ONLY);
    for (const [k, c] of cases.entries()) if (only === null || only === k) emit(await runReplayBench({ ...c, flows: SHORT ? Math.min(c.flows, 5000) : c.flows, dir }));
    if (only === null) emit(await runSmallReplayBench(dir));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
