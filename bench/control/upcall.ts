/**
 * Flow set-ups: a capture whose every packet is a new flow makes every
 * packet an upcall; the FPAG in the datapath's thread against the FPAG in its
 * own worker thread (messages through shared memory, control/fpag-thread.ts),
 * waited for a batch at a time (thread) or not (async: the datapath parks the
 * packets of flows being set up and goes on), each in two regimes:
 *
 *   cold    a table sized for every flow (maxFlows 2 × flows): each flow
 *           lands in memory never touched before (on this machine the first
 *           touch of a page costs ~3 ms a MB: a flow's ~150 bytes cost ~0.4 µs);
 *   steady  the default table (65 536 flows) under a flood of a million:
 *           full after the first 65 536, then least-recently-used flows are
 *           evicted to make room, and their memory is taken again — a switch
 *           that has run for a while.
 *
 * A line is the median of three replays (`runs`: each one's set-ups a
 * second, in order), after one inline warm-up replay. It gives set-ups a
 * second (upcalls over the replay's whole time; inline, beside it, over the
 * time in the upcall path alone: inPathSetupsPerSec), the
 * upcall batches (the misses of a datapath batch go together) and the round
 * trips with their mean: inline, one call of the sink a batch, timed from
 * the hand-over to its return with the flows installed (the sink is wrapped
 * here); on the thread, the batch goes in parts of PART_KEYS keys (up to 4
 * in flight), each timed by FpagThread from its sending to the taking of its
 * answer — which may wait in its slot till the fast lane needs it (since
 * 2026-12-05 afternoon: not comparable with earlier lines; `partial`: the
 * batches whose packets were switched while their last parts were decided). The thread line's
 * ratio is thread/inline in the same regime and run (async: its round trips
 * are its requests, each the keys handed over while the last was answered).
 *
 *   node dist/bench/control/upcall.js     (FPO_BENCH_SHORT=1: small N)
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { replay } from '../../control/replay.js';
import type { UpcallBatch } from '../../datapath/upcall.js';
import { benchTopology, generate } from '../gen-capture.js';
import { SHORT, emit } from '../harness.js';

/** Replays a placement and regime (the median is the line). */
const RUNS = SHORT ? 1 : 3;

const dir = mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : '/tmp', 'fpo-bench-'));
try {
  const topology = join(dir, 'topology.json');
  writeFileSync(topology, JSON.stringify(benchTopology(8)));
  const regimes = [
    { regime: 'cold', flows: SHORT ? 5_000 : 200_000, maxFlows: (n: number) => n * 2 },
    { regime: 'steady', flows: SHORT ? 20_000 : 1_000_000, maxFlows: () => (SHORT ? 4096 : 65536) },
  ];
  for (const { regime, flows, maxFlows } of regimes) {
    const capture = join(dir, `new-flows-${flows}.pcap`);
    generate(capture, { frames: flows, size: 64, flows, vms: 8 });
    const run = (fpag: 'inline' | 'thread' | 'async') => {
      let ns = 0;
      let timed = 0;
      const { report } = replay({
        capture, topology, outDir: join(dir, fpag), fpag, maxFlows: maxFlows(flows),
        // Inline: time each batch from hand-over to return, as FpagThread does its own (a hook before the
        // first batch: a beforeBatch hook would make the replay fill every batch whole, not lazily).
        onStart: (dp) => {
          const sink = dp.upcallBatchSink;
          if (fpag !== 'inline' || sink === null) return;
          dp.upcallBatchSink = (u: UpcallBatch) => {
            const t0 = process.hrtime.bigint();
            sink(u);
            ns += Number(process.hrtime.bigint() - t0);
            timed++;
          };
        },
      });
      const batches = report.fpag.batches;
      // The thread's round trips: a batch's misses in parts (fpag-thread.ts PART_KEYS); inline, one call a batch.
      const roundTrips = fpag === 'inline' ? timed : report.fpag.roundTrips!;
      const roundTripUs = fpag === 'inline' ? ns / Math.max(1, timed) / 1000 : report.fpag.roundTripUs!;
      return {
        flows, maxFlows: maxFlows(flows), upcalls: report.flows.upcalls, evicted: report.flows.evicted, batches,
        keysPerBatch: Number((report.flows.upcalls / Math.max(1, batches)).toFixed(1)),
        setupsPerSec: Math.round(report.flows.upcalls / report.seconds),
        // Inline, beside it: the set-ups over the time in the upcall path alone (decisions and installs;
        // the replay's reading, switching and writing of the packets left out).
        ...(fpag === 'inline' ? { inPathSetupsPerSec: Math.round(report.flows.upcalls / (ns / 1e9)) } : {}),
        roundTrips, roundTripUs: Number(roundTripUs.toFixed(3)),
        ...(report.fpag.early !== undefined ? { early: report.fpag.early, partial: report.fpag.partial } : {}),
        ...(report.fpag.queue ? { queue: report.fpag.queue } : {}),
      };
    };
    // Each placement replayed RUNS times; the line is the median replay, `runs` every replay's set-ups a
    // second in order (the same line varies by ±20 % from replay to replay here, and V8 settles over the
    // first replays of a process: a fresh process's first replay is apart, in the README).
    const median = (placement: 'inline' | 'thread' | 'async') => {
      const all = Array.from({ length: RUNS }, () => run(placement));
      const mid = [...all].sort((a, b) => a.setupsPerSec - b.setupsPerSec)[RUNS >> 1];
      return { ...mid, runs: all.map((r) => r.setupsPerSec) };
    };
    run('inline'); // warm-up
    const inline = median('inline');
    emit({ bench: 'control/upcall', regime, placement: 'inline', ...inline, baseline: 'inline' });
    for (const placement of ['thread', 'async'] as const) {
      const t = median(placement);
      emit({ bench: 'control/upcall', regime, placement, ...t, baseline: 'inline FPAG, same regime and run', baselineSetupsPerSec: inline.setupsPerSec, ratio: Number((t.setupsPerSec / inline.setupsPerSec).toFixed(3)) });
    }
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
