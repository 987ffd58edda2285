/**
 * The scale benchmark's peer: one process that answers every BFD session
 * that reaches it (a session of its own per remote discriminator), on
 * ADDRESS:PORT, sending back to REPLY_PORT. Prints "ready". It is the far
 * end of a thousand sessions, so its own false Downs count as much as ours:
 * SIGUSR1 starts a hold (counters reset, timer lateness recorded), SIGUSR2
 * ends it and prints {"falseDowns", "why", "latenessMs"} as one JSON line.
 *
 * It is the same endpoint as ours (control/bfd/endpoint.ts) in passive
 * mode, in a process of its own as FRR's bfdd is: a session starts on the
 * first packet of an unknown remote discriminator. It began as a dgram
 * socket with the default 208 KiB receive buffer: a thousand sessions at
 * 3 × 50 ms (~23 K packets/s) filled that within a 10 ms pause, and the
 * kernel dropped the rest (measured: 25 K drops in /proc/net/udp in a
 * minute beside a replay), and dgram's send and receive cost 37 % of a core.
 *
 *   node dist/bench/control/bfd-peer.js ADDRESS PORT REPLY_PORT TX_MS DETECT_MULT
 */
import { BfdEndpoint } from '../../control/bfd/endpoint.js';
import { libc } from '../../datapath/ports/libc.js';
import { DEFAULT_RT_PRIORITY } from '../../control/bfd/thread.js';

const [address, port, replyPort, txMs, mult] = process.argv.slice(2);
// As bfdd on the far host would be, and as our side's BFD thread is: SCHED_RR when permitted.
const rt = process.env.FPO_BFD_RT !== undefined && process.env.FPO_BFD_RT !== '' ? Number(process.env.FPO_BFD_RT) : DEFAULT_RT_PRIORITY;
const scheduling = rt > 0 && libc().setScheduler(2, rt) === 0 ? `SCHED_RR ${rt}` : 'SCHED_OTHER';
const ep = new BfdEndpoint(address, Number(port));
ep.passive = { config: { txUs: Number(txMs) * 1000, rxUs: Number(txMs) * 1000, detectMult: Number(mult) }, replyPort: Number(replyPort) };
const timers = ep.timers;
let holding = false;
let falseDowns = 0;
const why: Record<string, number> = {};
ep.onChange = (_peer, _s, from, to, reason) => {
  if (!holding || from !== 'Up') return;
  falseDowns++;
  const k = `${to}: ${reason.replace(/\d+ ms/, 'N ms')}`;
  why[k] = (why[k] ?? 0) + 1;
};
process.on('SIGUSR1', () => {
  holding = true;
  falseDowns = 0;
  for (const k of Object.keys(why)) delete why[k];
  timers.lateness.reset();
  timers.recordLateness = true;
});
process.on('SIGUSR2', () => {
  holding = false;
  timers.recordLateness = false;
  process.stdout.write(JSON.stringify({ scheduling, falseDowns, why, latenessMs: timers.lateness.summary(), discards: ep.discards, rawForeign: ep.rawForeign }) + '\n');
});
await ep.listen();
process.stdout.write('ready\n');
process.on('SIGTERM', () => { void ep.close().then(() => process.exit(0)); });
