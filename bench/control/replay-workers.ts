/**
 * `fpo replay --workers N` against one worker, on the same capture in the
 * same run: 5 M 64-byte frames over 1000 flows to 64 VMs (as bench/replay.ts
 * makes it), in /dev/shm. One JSON line for workers=1 and one for workers=2;
 * the second carries `ratio` = its speed over the first's (a rate ratio: the
 * goal in issue 18 is ≥ 1.7 on this 2-core machine), for the whole process
 * (`time fpo replay …`: Node's start, the worker thread's start, the report)
 * and in process (ReplayReport.seconds: from the capture's open to the last
 * write, the worker threads' start included).
 *
 * Rounds alternate the two (1, 2, 1, 2, …) so that drift of a shared
 * machine falls on both; each figure is its side's best, `runs` has every
 * sample and `spread` each side's (max - min) / min.
 *
 *   node dist/bench/control/replay-workers.js   (FPO_BENCH_SHORT=1: small N; FPO_BENCH_WORKERS=3: also 3)
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { replayAsync } from '../../control/replay.js';
import { benchTopology, generate } from '../gen-capture.js';
import { SHORT, emit } from '../harness.js';

const CLI = fileURLToPath(new URL('../../control/cli.js', import.meta.url));
const round4 = (x: number) => Number(x.toFixed(4));

function processSeconds(args: string[]): number {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, [CLI, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  if (r.error || r.status !== 0) throw new Error(`fpo ${args.join(' ')} failed: ${r.stderr}`);
  return (performance.now() - t0) / 1000;
}

export async function runWorkersBench(dir: string, frames: number, counts: number[], rounds: number): Promise<Record<string, unknown>[]> {
  const input = join(dir, 'in.pcap');
  const topo = join(dir, 'topology.json');
  writeFileSync(topo, JSON.stringify(benchTopology(64)));
  generate(input, { frames, size: 64, flows: 1000, vms: 64 });
  const proc = new Map<number, number[]>(counts.map((n) => [n, []]));
  const inProc = new Map<number, number[]>(counts.map((n) => [n, []]));
  const totals = new Map<number, string>();
  try {
    for (let r = 0; r < rounds; r++) {
      for (const n of counts) {
        const out = join(dir, `out-${n}`);
        rmSync(out, { recursive: true, force: true });
        proc.get(n)!.push(processSeconds(['replay', input, '--topology', topo, '--out', out, '--workers', String(n)]));
        rmSync(out, { recursive: true, force: true });
        const { report } = await replayAsync({ capture: input, topology: topo, outDir: out, workers: n });
        inProc.get(n)!.push(report.seconds);
        // The totals every worker count must agree on.
        totals.set(n, JSON.stringify([report.packets, report.drops, report.ports.map((p) => [p.rx, p.tx]), report.flows.installed, report.flows.upcalls]));
        rmSync(out, { recursive: true, force: true });
      }
    }
  } finally {
    rmSync(input, { force: true });
  }
  const best = (xs: number[]) => round4(Math.min(...xs));
  const spread = (xs: number[]) => Number(((Math.max(...xs) - Math.min(...xs)) / Math.min(...xs)).toFixed(3));
  const base = counts[0];
  return counts.map((n) => ({
    bench: 'replay-workers', workers: n, frames, frameBytes: 64, flows: 1000,
    processSeconds: best(proc.get(n)!), inProcessSeconds: best(inProc.get(n)!),
    pps: Math.round(frames / best(inProc.get(n)!)), processPps: Math.round(frames / best(proc.get(n)!)),
    ...(n === base ? {} : {
      ratio: round4(best(proc.get(base)!) / best(proc.get(n)!)),
      inProcessRatio: round4(best(inProc.get(base)!) / best(inProc.get(n)!)),
      sameTotals: totals.get(n) === totals.get(base),
    }),
    spread: { process: spread(proc.get(n)!), inProcess: spread(inProc.get(n)!) },
    runs: { process: proc.get(n)!.map(round4), inProcess: inProc.get(n)!.map(round4) },
    rounds,
  }));
}

if (process.argv[1]?.endsWith('replay-workers.js')) {
  const root = existsSync('/dev/shm') ? '/dev/shm' : undefined;
  const dir = mkdtempSync(join(root ?? process.env.TMPDIR ?? '/tmp', 'fpo-bench-'));
  try {
    const counts = process.env.FPO_BENCH_WORKERS === '3' ? [1, 2, 3] : [1, 2];
    for (const line of await runWorkersBench(dir, SHORT ? 20_000 : 5_000_000, counts, SHORT ? 1 : 5)) emit(line);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
