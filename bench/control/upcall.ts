/**
 * Upcalls: the FPAG in the datapath's thread against the FPAG in its own
 * worker thread (messages through shared memory, control/fpag-thread.ts).
 * A capture whose every packet is a new flow makes every packet an upcall;
 * the line gives flow setups per second and the mean upcall round trip for
 * each placement, and the ratio thread/inline. The round trip is measured
 * the same way for both: hrtime from the datapath handing the upcall to its
 * sink to the sink's return with the flow installed (FpagThread times its
 * own; the inline FPAG's sink is wrapped here, so both runs pay the same two
 * clock reads an upcall). It was 1e6/setups for the inline FPAG, which is
 * the whole replay's time per upcall, not a round trip.
 *
 *   node dist/bench/control/upcall.js     (FPO_BENCH_SHORT=1: small N)
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { replay } from '../../control/replay.js';
import { benchTopology, generate } from '../gen-capture.js';
import { SHORT, emit } from '../harness.js';

const dir = mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : '/tmp', 'fpo-bench-'));
try {
  const flows = SHORT ? 5_000 : 200_000;
  const capture = join(dir, 'new-flows.pcap');
  const topology = join(dir, 'topology.json');
  writeFileSync(topology, JSON.stringify(benchTopology(8)));
  generate(capture, { frames: flows, size: 64, flows, vms: 8 });
  const run = (fpag: 'inline' | 'thread') => {
    let ns = 0;
    let timed = 0;
    const { report } = replay({
      capture, topology, outDir: join(dir, fpag), fpag, maxFlows: flows * 2,
      // Inline: time each upcall from hand-over to return, as FpagThread does its own.
      beforeBatch: (_n, dp) => {
        const sink = dp.upcallSink;
        if (fpag === 'thread' || sink === null || (sink as { timed?: true }).timed) return;
        const wrapped = Object.assign((u: Parameters<typeof sink>[0]) => {
          const t0 = process.hrtime.bigint();
          sink(u);
          ns += Number(process.hrtime.bigint() - t0);
          timed++;
        }, { timed: true as const });
        dp.upcallSink = wrapped;
      },
    });
    const setups = report.flows.upcalls / report.seconds;
    const roundTripUs = fpag === 'thread' ? report.fpag.roundTripUs! : ns / Math.max(1, timed) / 1000;
    return { upcalls: report.flows.upcalls, setupsPerSec: Math.round(setups), roundTripUs: Number(roundTripUs.toFixed(3)), timedUpcalls: fpag === 'thread' ? report.fpag.upcalls : timed };
  };
  run('inline'); // warm-up
  const inline = run('inline');
  const thread = run('thread');
  emit({ bench: 'control/upcall', placement: 'inline', ...inline, baseline: 'inline' });
  emit({ bench: 'control/upcall', placement: 'thread', ...thread, baseline: 'inline FPAG, same run', baselineSetupsPerSec: inline.setupsPerSec, ratio: Number((thread.setupsPerSec / inline.setupsPerSec).toFixed(3)) });
} finally {
  rmSync(dir, { recursive: true, force: true });
}
