/**
 * How many BFD sessions hold without a single false Down while the switch
 * is busy: N sessions at 3 × 50 ms and at 3 × 300 ms, run by the BFD thread
 * that `fpo run` uses (control/bfd/thread.ts), against a peer process that
 * answers them all (bench/control/bfd-peer.ts), held for a while once Up.
 * During the whole hold a full-speed replay runs in another process
 * (bench/replay-loop.ts, 64-byte frames through a fresh switch pass after
 * pass), on this machine's other core — or the same one.
 *
 * Reported: sessions Up before the hold and still Up after it; false Downs
 * (a session leaving Up during the hold) here and at the peer, with why; the
 * timer lateness both sides saw (p50/p99/max, ms: how close to the edge it
 * ran); the kernel drops at both sides' raw sockets ([here, peer]). The ratio is the replay's rate
 * beside BFD against the same replay loop alone, measured in the same run
 * just before the sessions start and just after they end (the baseline is
 * the mean of the two): what holding the sessions costs the switch beside.
 *
 *   node dist/bench/control/bfd-scale.js     (FPO_BENCH_SHORT=1: 100 sessions, 3 s)
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BfdThread } from '../../control/bfd/thread.js';
import { STATE } from '../../control/bfd/packet.js';
import { SHORT, emit } from '../harness.js';

const here = dirname(fileURLToPath(import.meta.url));
const HOLD_S = Number(process.env.FPO_BFD_HOLD_S ?? (SHORT ? 3 : 60));
const COUNTS = SHORT ? [100] : [1000];
const BASELINE_S = SHORT ? 1.5 : 8;
const LOOP_FRAMES = SHORT ? 100_000 : 1_000_000;
const CASES = (process.env.FPO_BFD_CASES ?? '50x3,300x3').split(',').map((c) => c.split('x').map(Number) as [number, number]);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Lines of a child's stdout, as they come. */
function lines(p: ChildProcess): { all: string[]; next: () => Promise<string> } {
  const all: string[] = [];
  const waiting: ((l: string) => void)[] = [];
  let buf = '';
  p.stdout!.on('data', (d) => {
    buf += d;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const l = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      all.push(l);
      waiting.shift()?.(l);
    }
  });
  let seen = 0;
  return { all, next: () => (seen < all.length ? Promise.resolve(all[seen++]) : new Promise((r) => waiting.push((l) => { seen++; r(l); }))) };
}

/** A full-speed replay loop in another process; its passes as they end. */
class ReplayLoop {
  private readonly p: ChildProcess;
  private readonly out: ReturnType<typeof lines>;
  constructor() {
    this.p = spawn(process.execPath, [join(here, '..', 'replay-loop.js'), String(LOOP_FRAMES)], { stdio: ['ignore', 'pipe', 'inherit'] });
    this.out = lines(this.p);
  }
  async ready(): Promise<void> {
    while ((await this.out.next()) !== 'ready');
  }
  /** Packets and seconds of the passes that ended since `from` (an index into the lines). */
  rate(from: number, to = this.out.all.length): { pps: number; passes: number } {
    let packets = 0;
    let seconds = 0;
    let passes = 0;
    for (const l of this.out.all.slice(from, to)) {
      if (!l.startsWith('{')) continue;
      const r = JSON.parse(l) as { packets: number; seconds: number };
      packets += r.packets;
      seconds += r.seconds;
      passes++;
    }
    return { pps: seconds > 0 ? Math.round(packets / seconds) : 0, passes };
  }
  get mark(): number {
    return this.out.all.length;
  }
  async stop(): Promise<void> {
    this.p.kill('SIGTERM');
    await new Promise((r) => (this.p.exitCode !== null ? r(null) : this.p.on('exit', r)));
  }
}

/** The replay loop's rate alone for `seconds`. */
async function alone(seconds: number): Promise<{ pps: number; passes: number }> {
  const loop = new ReplayLoop();
  await loop.ready();
  const m = loop.mark;
  await sleep(seconds * 1000);
  await loop.stop();
  return loop.rate(m);
}

/** Kernel drops of the raw sockets a process holds (where each BFD endpoint reads): /proc/net/raw's last column, by inode. */
function rawDrops(pid: number): number | null {
  try {
    const inodes = new Set<string>();
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      let link = '';
      try { link = readlinkSync(`/proc/${pid}/fd/${fd}`); } catch { continue; } // closed meanwhile
      const m = /^socket:\[(\d+)\]$/.exec(link);
      if (m) inodes.add(m[1]);
    }
    let drops = 0;
    let found = false;
    for (const l of readFileSync('/proc/net/raw', 'utf8').split('\n').slice(1)) {
      const f = l.trim().split(/\s+/);
      if (f.length > 10 && inodes.has(f[9])) {
        drops += Number(f[f.length - 1]);
        found = true;
      }
    }
    return found ? drops : null;
  } catch {
    return null;
  }
}

async function run(n: number, txMs: number, mult: number): Promise<Record<string, unknown>> {
  const before = await alone(BASELINE_S);
  const port = 24000 + Math.floor(Math.random() * 1000);
  const replyPort = port + 1000;
  const peer = spawn(process.execPath, [join(here, 'bfd-peer.js'), '127.0.0.2', String(port), String(replyPort), String(txMs), String(mult)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const peerOut = lines(peer);
  await peerOut.next();
  const bfd = new BfdThread();
  await bfd.listen('127.0.0.1', replyPort);
  let holding = false;
  let falseDowns = 0;
  const why: Record<string, number> = {};
  bfd.onChange = (_s, from, to, reason) => {
    if (!holding || from !== 'Up') return;
    falseDowns++;
    const k = `${to}: ${reason.replace(/\d+ ms/, 'N ms')}`;
    why[k] = (why[k] ?? 0) + 1;
  };
  const sessions = [];
  for (let i = 0; i < n; i++) sessions.push(await bfd.add('127.0.0.1', '127.0.0.2', { txUs: txMs * 1000, rxUs: txMs * 1000, detectMult: mult }, port, `s${i}`));
  const upBy = Date.now() + 30_000;
  while (Date.now() < upBy && sessions.some((s) => s.state !== STATE.Up)) await sleep(100);
  // Hold: every session must stay Up while the replay runs full speed beside, from before the hold to after it.
  const loop = new ReplayLoop();
  await loop.ready();
  const upBeforeHold = sessions.filter((s) => s.state === STATE.Up).length;
  const drops0 = [rawDrops(process.pid), rawDrops(peer.pid!)];
  const mark = loop.mark;
  holding = true;
  peer.kill('SIGUSR1');
  await bfd.lateness(true);
  await sleep(HOLD_S * 1000);
  // The end of the hold: first who is still Up, then the figures (both cheap: a histogram each).
  const endMark = loop.mark;
  const snap = await bfd.describe();
  const upAfterHold = Object.values(snap.sessions).filter((s) => s.state === 'Up').length;
  const late = await bfd.lateness(false);
  const drops1 = [rawDrops(process.pid), rawDrops(peer.pid!)];
  peer.kill('SIGUSR2');
  const peerReport = JSON.parse(await peerOut.next()) as { scheduling: string; falseDowns: number; why: Record<string, number>; latenessMs: unknown };
  holding = false;
  await loop.stop();
  const beside = loop.rate(mark, endMark);
  await bfd.close();
  peer.kill('SIGTERM');
  const after = await alone(BASELINE_S);
  const base = Math.round((before.pps + after.pps) / 2);
  return {
    bench: 'control/bfd-scale', sessions: n, txMs, detectMult: mult, placement: 'thread', scheduling: { here: snap.scheduling, peer: peerReport.scheduling }, upBeforeHold, upAfterHold, heldSeconds: HOLD_S,
    falseDowns: falseDowns + peerReport.falseDowns, falseDownsHere: falseDowns, falseDownsPeer: peerReport.falseDowns, why: { here: why, peer: peerReport.why },
    latenessMs: late,
    peerLatenessMs: peerReport.latenessMs,
    rawSocketDrops: drops0.map((d, i) => (d === null || drops1[i] === null ? null : drops1[i]! - d)),
    discards: snap.endpoints[0]?.discards ?? {},
    replayBesidePps: beside.pps, replayBesidePasses: beside.passes,
    baseline: 'the same full-speed replay loop alone, just before and just after the sessions (mean)', baselinePps: base, baselineRuns: { before: before.pps, after: after.pps },
    ratio: base > 0 ? Number((beside.pps / base).toFixed(3)) : null,
  };
}

for (const [txMs, mult] of CASES) {
  for (const n of COUNTS) emit(await run(n, txMs, mult));
}
