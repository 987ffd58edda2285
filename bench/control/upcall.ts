/**
 * Upcalls: the FPAG in the datapath's thread against the FPAG in its own
 * worker thread (messages through shared memory, control/fpag-thread.ts).
 * A capture whose every packet is a new flow makes every packet an upcall;
 * the line gives flow setups per second and the mean upcall round trip for
 * each placement, and the ratio thread/inline.
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
    const { report } = replay({ capture, topology, outDir: join(dir, fpag), fpag, maxFlows: flows * 2 });
    const setups = report.flows.upcalls / report.seconds;
    return { upcalls: report.flows.upcalls, setupsPerSec: Math.round(setups), roundTripUs: report.fpag.roundTripUs ?? Number((1e6 / setups).toFixed(2)) };
  };
  run('inline'); // warm-up
  const inline = run('inline');
  const thread = run('thread');
  emit({ bench: 'control/upcall', placement: 'inline', ...inline, baseline: 'inline' });
  emit({ bench: 'control/upcall', placement: 'thread', ...thread, roundTripUs: Number(thread.roundTripUs.toFixed(2)), baseline: 'inline FPAG, same run', ratio: Number((thread.setupsPerSec / inline.setupsPerSec).toFixed(3)) });
} finally {
  rmSync(dir, { recursive: true, force: true });
}
