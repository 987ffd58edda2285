/**
 * How many BFD sessions one core holds without a single false Down: N
 * sessions at 3 × 50 ms and at 3 × 300 ms against a peer process that
 * answers them all (bench/control/bfd-peer.ts), each held for a while once
 * Up; the timer lateness seen (p50/p99/max, ms) shows how close to the edge
 * it ran. Meanwhile the replay benchmark runs in another process beside it
 * (the datapath keeps forwarding), and its rate is reported with it.
 *
 *   node dist/bench/control/bfd-scale.js     (FPO_BENCH_SHORT=1: 100 sessions, 3 s)
 */
import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BfdEndpoint } from '../../control/bfd/endpoint.js';
import { STATE } from '../../control/bfd/packet.js';
import { SHORT, emit } from '../harness.js';

const here = dirname(fileURLToPath(import.meta.url));
const HOLD_S = SHORT ? 3 : 60;
const COUNTS = SHORT ? [100] : [1000];

function pct(a: number[], p: number): number {
  if (a.length === 0) return 0;
  const s = [...a].sort((x, y) => x - y);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

async function run(n: number, txMs: number, mult: number): Promise<Record<string, unknown>> {
  const port = 24000 + Math.floor(Math.random() * 1000);
  const replyPort = port + 1000;
  const peer = spawn(process.execPath, [join(here, 'bfd-peer.js'), '127.0.0.2', String(port), String(replyPort), String(txMs), String(mult)], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((r) => peer.stdout!.once('data', () => r()));
  const ep = new BfdEndpoint('127.0.0.1', replyPort);
  await ep.listen();
  let falseDowns = 0;
  let holding = false;
  ep.onChange = (_p, _s, from, to) => { if (holding && from === 'Up' && to !== 'Up') falseDowns++; };
  const sessions = [];
  for (let i = 0; i < n; i++) sessions.push(await ep.add('127.0.0.2', { txUs: txMs * 1000, rxUs: txMs * 1000, detectMult: mult }, port, `s${i}`));
  const upBy = Date.now() + 30_000;
  while (Date.now() < upBy && sessions.some((s) => s.state !== STATE.Up)) await new Promise((r) => setTimeout(r, 100));
  const up = sessions.filter((s) => s.state === STATE.Up).length;
  // Hold: every session must stay Up; the datapath replays beside us meanwhile.
  const replay = spawn(process.execPath, [join(here, '..', 'replay.js')], { stdio: ['ignore', 'pipe', 'ignore'], env: { ...process.env, FPO_BENCH_SHORT: '1' } });
  let replayOut = '';
  replay.stdout!.on('data', (d) => (replayOut += d));
  holding = true;
  ep.timers.lateness.length = 0;
  ep.timers.recordLateness = true;
  await new Promise((r) => setTimeout(r, HOLD_S * 1000));
  holding = false;
  ep.timers.recordLateness = false;
  const late = ep.timers.lateness;
  await new Promise((r) => (replay.exitCode !== null ? r(null) : replay.on('exit', r)));
  await ep.close();
  peer.kill('SIGTERM');
  const firstReplay = replayOut.split('\n').find((l) => l.startsWith('{'));
  return {
    bench: 'control/bfd-scale', sessions: n, txMs, detectMult: mult, up, heldSeconds: HOLD_S, falseDowns,
    latenessMs: { p50: Number(pct(late, 50).toFixed(2)), p99: Number(pct(late, 99).toFixed(2)), max: Number(late.reduce((m, x) => (x > m ? x : m), 0).toFixed(2)) },
    replayBeside: firstReplay ? JSON.parse(firstReplay).pps : null,
    baseline: 'zero false Downs at this count', ratio: up === n && falseDowns === 0 ? 1 : 0,
  };
}

for (const [txMs, mult] of [[50, 3], [300, 3]] as const) {
  for (const n of COUNTS) emit(await run(n, txMs, mult));
}
