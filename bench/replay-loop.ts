/**
 * A full-speed replay that runs until it is told to stop: the load other
 * benchmarks put beside them (bench/control/bfd-scale.ts). It generates one
 * capture (64-byte frames, 1 K flows: the fast lane's common case, so the
 * core is busy switching rather than waiting), then replays it through a
 * fresh switch again and again, with no pause, printing one JSON line per
 * pass ({"packets", "seconds"}), until SIGTERM (taken between passes, so
 * every printed pass is whole).
 *
 *   node dist/bench/replay-loop.js FRAMES      (prints "ready" once the capture is made)
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import { replay } from '../control/replay.js';
import { benchTopology, generate } from './gen-capture.js';

const frames = Number(process.argv[2] ?? 1_000_000);
const dir = mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : process.env.TMPDIR ?? '/tmp', 'fpo-loop-'));
const input = join(dir, 'in.pcap');
const topo = join(dir, 'topology.json');
writeFileSync(topo, JSON.stringify(benchTopology(64)));
generate(input, { frames, size: 64, flows: 1000, vms: 64 });
let stop = false;
process.on('SIGTERM', () => { stop = true; });
process.stdout.write('ready\n');
while (!stop) {
  const out = join(dir, 'out');
  const t0 = performance.now();
  const { report } = replay({ capture: input, topology: topo, outDir: out, maxFlows: 65536 });
  const seconds = (performance.now() - t0) / 1000;
  rmSync(out, { recursive: true, force: true });
  process.stdout.write(JSON.stringify({ packets: report.packets.in, seconds }) + '\n');
  // The only pause: one turn of the event loop, so SIGTERM is seen.
  await yieldToLoop();
}
rmSync(dir, { recursive: true, force: true });
