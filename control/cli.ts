#!/usr/bin/env node
/**
 * fpo — the command line. Each command is a function taking its argv; errors
 * of fpo (FpoError) end the process with one line on stderr and a non-zero
 * exit code, never a stack trace (set FPO_DEBUG=1 to see one).
 *
 * Start-up: a command loads only the modules it uses, with `await import()`
 * when it runs (`fpo --help` loads only the error and drop names; `replay` the datapath,
 * the topology and the FPAG, not the service's logging, metrics, control
 * socket or FFI). Loading every command's modules up front took ~150 ms of
 * a 671-packet replay's 0.24 s here (measured with --cpu-prof and timed
 * imports), most of it zod, prom-client and pino being compiled.
 */
import { parseArgs } from 'node:util';
import { DROP, type DropReason } from '../datapath/drops.js';
import { FpoError } from '../datapath/errors.js';
import type { ReplayReport } from './replay.js';
import type { SpawnedThreads } from './replay-threads.js';

const HELP = `fpo — a userspace virtual switch with flow processing offload

Usage: fpo <command> [options]

Commands:
  replay CAPTURE --topology FILE --out DIR
                 replay a pcap/pcapng capture through the switch; writes
                 DIR/<port>.pcap (or .pcapng) for every port that emitted
                 packets and prints where every packet went
  run --topology FILE [--socket PATH] [--out DIR]
                 run the switch as a service with a control socket
  ctl COMMAND    talk to a running switch: show, dump-flows, stats, add-flow,
                 del-flow, set-mapping, migrate, trace, inject, capture ('fpo ctl --help')
  lab up|down FILE
                 a live lab: VMs in network namespaces on TAP ports of a
                 running fpo (root; see README)
  agent --socket PATH
                 the guest side of the tunnel monitor's liveness channel
  help [COMMAND] this text, or a command's

Run 'fpo COMMAND --help' for a command's options.
`;

const REPLAY_HELP = `Usage: fpo replay CAPTURE --topology FILE --out DIR [options]

Replays CAPTURE (pcap or pcapng, Ethernet) as if it arrived on the topology's
replay.inputPort (default: the first uplink), switches every packet through
the flow table (the FPAG installs a flow on each miss), and writes what each
port emitted to DIR/<port>.<pcap|pcapng>, with the input's timestamps.

Options:
  -t, --topology FILE   topology JSON (ports, segments, nodes, rules)
  -o, --out DIR         output folder (created if missing)
      --json            print the report as one JSON object
      --dump-flows      also print the installed flows (in --json: "flowTable")
      --batch N         packets per batch, 1..256 (default 256)
      --max-flows N     flow table capacity (default 65536)
      --no-emc          without the exact-match cache (for comparison: the
                        output is the same, the lookups go further)
      --no-smc          without the signature-match cache (likewise)
      --no-bloom        without the subtables' Bloom filter (likewise)
      --fpag WHERE      where the FPAG runs: inline (this thread, default),
                        thread (a worker thread: upcalls and flow installs
                        cross as messages; a batch waits for its answers), or
                        async (that thread, not waited for: packets of flows
                        being set up wait in a queue, hits go on)
      --workers N       datapath worker threads, one a core (default 1: this
                        thread alone); packets are spread by flow hash, one
                        FPAG decides flows for all, per-flow order is kept in
                        every output (see README)
      --events FILE     timed control events (migrate, set-mapping, add-flow,
                        del-flow) applied between packets at given packet
                        counts or capture times (see README)
      --clean           first remove fpo's own files in DIR: <port>.pcap and
                        <port>.pcapng of the topology's ports and temp files
                        a dead run left (<port>.pcap.partial-PID); without
                        it, such files this run does not write are listed as
                        stale in the report
  -h, --help            this text

Outputs: each is written as DIR/<port>.pcap.partial-PID and renamed to
DIR/<port>.pcap when complete, so a killed run leaves no complete-looking
capture. An output that is one of the run's inputs (the same file, also
through a link) is refused before anything is written.

Signals: SIGINT or SIGTERM finishes the batch being switched, closes and
renames the outputs (complete captures of the packets switched so far),
prints the report marked "interrupted" and exits 130 (SIGINT) or 143
(SIGTERM). A second signal exits at once, leaving only temp names.

Exit status: 0 when the whole capture was read; 1 when the capture or the
topology could not be read (packets before a fault in the capture are still
switched, written and reported) or an output would replace an input; 2 for a
wrong command line; 130/143 when interrupted (above).
`;

class UsageError extends FpoError {
  constructor(msg: string) {
    super('FPO_ERR_USAGE', msg);
  }
}

function fmtBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function table(rows: string[][]): string {
  const w = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows.map((r) => r.map((x, c) => (c === 0 ? x.padEnd(w[c]) : x.padStart(w[c]))).join('  ')).join('\n');
}

function printReport(r: ReplayReport, flows: boolean): void {
  const out: string[] = [];
  out.push(`replayed ${r.capture} (${r.format}) through ${r.topology} in ${r.seconds.toFixed(3)} s`);
  if (r.interrupted !== undefined) out.push(`interrupted by ${r.interrupted} after ${r.packets.in} packets: the outputs hold the packets switched before it`);
  out.push(`packets: in ${r.packets.in} = out ${r.packets.out} + dropped ${r.packets.dropped}   (copies sent ${r.packets.copies})`);
  if (r.tunnel.sent > 0) out.push(`tunnel: ${r.tunnel.sent} copies encapsulated, ${r.tunnel.flaggedSent} of them flagged`);
  if (r.tunnel.flagged + r.tunnel.unflagged > 0) out.push(`tunnel: ${r.tunnel.unflagged} unflagged (decapsulated, fast path), ${r.tunnel.flagged} flagged (to ${r.tunnel.specialTo}, untouched)`);
  out.push('');
  const rows = [['port', 'ppid', 'vpid', 'attached', 'rx pkts', 'rx bytes', 'tx pkts', 'tx bytes']];
  for (const p of r.ports) rows.push([p.name, String(p.ppid), p.vpid >= 0 ? String(p.vpid) : '-', p.attached ?? '-', String(p.rx.packets), fmtBytes(p.rx.bytes), String(p.tx.packets), fmtBytes(p.tx.bytes)]);
  out.push(table(rows));
  out.push('');
  out.push(`flows: ${r.flows.installed} installed, ${r.flows.active} active, ${r.flows.evicted} evicted, ${r.flows.expired} expired; upcalls ${r.flows.upcalls}; lookups: ${r.flows.emcHits} exact-match cache, ${r.flows.megaflowHits} megaflow, ${r.flows.misses} missed; fast lane ${r.flows.fastLane} packets`);
  if (r.fpag.placement !== 'inline') {
    const q = r.fpag.queue;
    out.push(`fpag: on its thread${r.fpag.placement === 'async' ? ', not waited for' : ''}; ${r.fpag.upcalls} upcalls in ${r.fpag.batches} batches, ${r.fpag.roundTrips ?? 0} round trips of ${(r.fpag.roundTripUs ?? 0).toFixed(1)} µs${q ? `; queue: ${q.parked} packets waited, at most ${q.maxDepth} at once, the datapath waited ${q.waits} times` : ''}`);
  }
  const drops = Object.entries(r.drops) as [DropReason, number][];
  if (drops.length) {
    out.push('drops:');
    const dr = drops.sort((a, b) => b[1] - a[1]).map(([k, v]) => [`  ${k}`, String(v), DROP[k]]);
    out.push(table(dr));
  } else out.push('drops: none');
  if (r.events?.length) {
    out.push('', 'events:');
    for (const e of r.events) out.push(`  after packet ${e.atPacket}: ${e.event.do} ${JSON.stringify(e.result)}`);
  }
  if (r.cleaned?.length) out.push('', `cleaned (--clean): ${r.cleaned.join(', ')}`);
  if (r.stale.length) out.push('', `stale (not written by this run; --clean removes them): ${r.stale.join(', ')}`);
  if (flows && r.flowTable) {
    out.push('', 'flows:');
    for (const f of r.flowTable) out.push(`  ${f.match}, packets:${f.packets}, bytes:${f.bytes}, used:${f.usedSecondsAgo.toFixed(3)}s, actions:${f.actions}`);
  }
  process.stdout.write(out.join('\n') + '\n');
}

function progressBar(): (done: number, total: number) => void {
  return (done, total) => {
    const frac = total ? Math.min(1, done / total) : 1;
    const width = 30;
    const fill = Math.round(frac * width);
    process.stderr.write(`\r[${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${(frac * 100).toFixed(0).padStart(3)}% ${fmtBytes(done)}`);
    if (frac >= 1) process.stderr.write('\r' + ' '.repeat(width + 24) + '\r');
  };
}

function fpagPlacement(v: string | undefined): 'inline' | 'thread' | 'async' | undefined {
  if (v === undefined || v === 'inline' || v === 'thread' || v === 'async') return v;
  throw new UsageError(`--fpag: expected inline, thread or async, got "${v}"`);
}

function intOption(v: string | undefined, name: string, min: number, max: number): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) throw new UsageError(`--${name}: expected an integer in ${min}..${max}, got "${v}"`);
  return n;
}

/** `fpo replay`'s arguments. */
function parseReplayArgs(argv: string[]) {
  return parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      topology: { type: 'string', short: 't' },
      out: { type: 'string', short: 'o' },
      json: { type: 'boolean' },
      'dump-flows': { type: 'boolean' },
      batch: { type: 'string' },
      'max-flows': { type: 'string' },
      'no-emc': { type: 'boolean' },
      'no-smc': { type: 'boolean' },
      'no-bloom': { type: 'boolean' },
      events: { type: 'string' },
      fpag: { type: 'string' },
      workers: { type: 'string' },
      clean: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
}
type ReplayValues = ReturnType<typeof parseReplayArgs>['values'];

async function cmdReplay(argv: string[]): Promise<number> {
  const { values, positionals } = parseReplayArgs(argv);
  if (values.help) {
    process.stdout.write(REPLAY_HELP);
    return 0;
  }
  if (positionals.length !== 1) throw new UsageError(`replay: expected one CAPTURE file, got ${positionals.length}; see 'fpo replay --help'`);
  if (!values.topology) throw new UsageError(`replay: --topology FILE is required; see 'fpo replay --help'`);
  if (!values.out) throw new UsageError(`replay: --out DIR is required; see 'fpo replay --help'`);
  const showProgress = process.stderr.isTTY === true && !values.json;
  // Worker threads take ~90 ms to start: spawned now, they start while this thread loads the replay's modules.
  const early = /^\d+$/.test(values.workers ?? '') && Number(values.workers) >= 2 && Number(values.workers) <= 64
    ? (await import('./replay-threads.js')).spawnReplayThreads(Number(values.workers)) : undefined;
  try {
    return await replayCommand(values, values.topology, values.out, positionals[0], showProgress, early);
  } finally {
    if (early !== undefined) (await import('./replay-threads.js')).dropReplayThreads(early);
  }
}

async function replayCommand(values: ReplayValues, topology: string, outDir: string, capture: string, showProgress: boolean, early: SpawnedThreads | undefined): Promise<number> {
  const [{ flowReport, replayAsync, replayHostsAsync }, { loadHosts }] = await Promise.all([import('./replay.js'), import('./topology.js')]);
  // SIGINT/SIGTERM: the replay stops after the batch it is switching and reports; a second signal exits at once.
  const interrupt: { signal?: string } = {};
  const onSignal = (signal: NodeJS.Signals): void => {
    if (interrupt.signal !== undefined) process.exit(exitFor(signal));
    interrupt.signal = signal;
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const hosts = loadHosts(topology);
    const common = {
      outDir,
      batchSize: intOption(values.batch, 'batch', 1, 256),
      maxFlows: intOption(values['max-flows'], 'max-flows', 16, 1 << 23),
      ...(values['no-emc'] || values['no-smc'] || values['no-bloom'] ? { caches: { emc: values['no-emc'] !== true, smc: values['no-smc'] !== true, bloom: values['no-bloom'] !== true } } : {}),
      inputs: [topology, ...(values.events ? [values.events] : [])],
      clean: values.clean === true,
      interrupt,
      workers: intOption(values.workers, 'workers', 1, 64),
    };
    if (hosts.length > 1) {
      const r = await replayHostsAsync({ ...common, capture, hosts });
      if (values.json) process.stdout.write(JSON.stringify(r) + '\n');
      else for (const h of r.hosts) { process.stdout.write(`== host ${h.host} ==\n`); printReport(h, false); process.stdout.write('\n'); }
      if (r.interrupted !== undefined) return interrupted(r.interrupted, r.hosts.reduce((n, h) => n + h.packets.in, 0));
      const err = r.hosts.find((h) => h.error)?.error;
      if (err) {
        process.stderr.write(`fpo: ${err.message}\n`);
        return 1;
      }
      return 0;
    }
    const { report, datapath, fpag } = await replayAsync({
      ...common,
      capture,
      topology: hosts[0],
      onProgress: showProgress ? progressBar() : undefined,
      events: values.events ? (await import('./events.js')).loadEvents(values.events) : undefined,
      threads: early,
      fpag: fpagPlacement(values.fpag),
    });
    if (values['dump-flows']) report.flowTable = flowReport(datapath, fpag);
    if (values.json) process.stdout.write(JSON.stringify(report) + '\n');
    else printReport(report, values['dump-flows'] === true);
    if (report.interrupted !== undefined) return interrupted(report.interrupted, report.packets.in);
    if (report.error) {
      process.stderr.write(`fpo: ${report.error.message}\n`);
      return 1;
    }
    return 0;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/** The shell's convention for a process ended by a signal: 128 + its number (SIGINT 130, SIGTERM 143). */
function exitFor(signal: string): number {
  return signal === 'SIGTERM' ? 143 : 130;
}

function interrupted(signal: string, packets: number): number {
  process.stderr.write(`fpo: interrupted by ${signal} after ${packets} packets; the outputs hold those packets\n`);
  return exitFor(signal);
}

const AGENT_HELP = `Usage: fpo agent --socket PATH [--name NAME] [--conntrack [--min-packets N] [--min-bytes N]]

The guest agent of the tunnel monitor's liveness channel: run it inside the
VM (e.g. ip netns exec VM fpo agent --socket /run/fpo/vm1.sock). It answers
the monitor's probes and prints a JSON line when the monitor says the VM's
tunnel went down or came back. SIGINT/SIGTERM stop it.

With --conntrack (a service VM: firewall and NAT), it also watches the VM's
connection tracking (conntrack -E) and hands each established connection to
fpo over the same channel (with its route), keeping the VM's entry alive
while fpo has it; --min-packets/--min-bytes: only after that many (both
directions; needs nf_conntrack_acct=1 in the VM).
`;

const RUN_HELP = `Usage: fpo run --topology FILE [options]

Runs the switch as a service: the datapath, the FPAG and a control socket
(a Unix socket, mode 0600 from the start) that 'fpo ctl' talks to. Every port writes what it
emits to OUT/<port>.pcap. VPIDs and mappings are kept in a state file
(written atomically), so a restart gives every interface the same VPID and
port. SIGINT or SIGTERM stops it cleanly and prints the final counters (JSON).

Options:
  -t, --topology FILE   topology JSON
  -s, --socket PATH     control socket (default $FPO_SOCKET, else fpo.sock in
                        $XDG_RUNTIME_DIR, else in TMP/fpo-UID, a 0700 folder);
                        an existing path must be a socket nothing answers on
  -o, --out DIR         where port captures and the state file go (default ./fpo-run)
      --state FILE      state file (default OUT/fpo-state.json)
      --log-level L     silent, error, warn (default), info, debug: JSON lines on stderr
      --metrics ADDR    serve Prometheus metrics at http://ADDR/metrics
                        (HOST:PORT or PORT; host 127.0.0.1 when not given)
      --etcd URL[,URL…] [--host NAME] [--deployment D]
                        share hosts, VMs and segments through etcd: this host's are published
                        under a lease, the others' become tunnel remotes as they come and go
      --migrate-listen HOST:PORT
                        take VMs migrated from other fpo hosts (fpo ctl migrate-vm) on this address
      --workers N       N datapath workers (threads), each with its own flow
                        caches and its own sockets on every live port, frames
                        spread by flow (default 1: the datapath on the main thread)
  -h, --help            this text
`;

async function cmdRun(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv, allowPositionals: true,
    options: { topology: { type: 'string', short: 't' }, socket: { type: 'string', short: 's' }, out: { type: 'string', short: 'o' }, state: { type: 'string' }, 'log-level': { type: 'string' }, metrics: { type: 'string' }, workers: { type: 'string' }, 'migrate-listen': { type: 'string' }, etcd: { type: 'string' }, host: { type: 'string' }, deployment: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
  });
  if (values.help) { process.stdout.write(RUN_HELP); return 0; }
  const workers = values.workers === undefined ? 1 : Number(values.workers);
  if (!/^\d+$/.test(values.workers ?? '1') || !(workers >= 1 && workers <= 64)) throw new UsageError(`run: --workers: expected an integer in 1..64, got "${values.workers}"`);
  if (positionals.length) throw new UsageError(`run: unexpected argument "${positionals[0]}"; see 'fpo run --help'`);
  if (!values.topology) throw new UsageError(`run: --topology FILE is required; see 'fpo run --help'`);
  const level = values['log-level'] ?? 'warn';
  if (!['silent', 'error', 'warn', 'info', 'debug', 'trace'].includes(level)) throw new UsageError(`run: --log-level: expected silent, error, warn, info or debug, got "${level}"`);
  if (values.metrics !== undefined) (await import('./metrics.js')).parseAddr(values.metrics);
  const { Service, defaultSocket } = await import('./service.js');
  const svc = new Service({ topology: values.topology, socket: values.socket ?? defaultSocket(), outDir: values.out ?? 'fpo-run', state: values.state, logLevel: level, metrics: values.metrics, workers, migrateListen: values['migrate-listen'], etcd: values.etcd, host: values.host, deployment: values.deployment });
  try {
    await svc.listen();
  } catch (e) {
    await svc.abort();
    // Not started: nothing left may hold the process (an etcd member that answers nothing keeps etcd3's
    // channel open, and a join given up has calls still waiting on it). A second for the error to go.
    setTimeout(() => process.exit(), 1000).unref();
    throw e;
  }
  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  const final = await svc.stop();
  // Stopped: nothing left may hold the process (etcd's client keeps a channel to a member that
  // answers nothing open after its close; the run had never exited). A second for the output to go.
  setTimeout(() => process.exit(), 1000).unref();
  svc.log.info('stopped');
  process.stdout.write(JSON.stringify(final) + '\n');
  if (svc.stopError) throw svc.stopError; // after the counters: they are the run's either way
  return 0;
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  try {
    switch (cmd) {
      case 'run':
        return await cmdRun(rest);
      case 'ctl': {
        const ctl = await import('./ctl.js');
        try {
          return await ctl.ctlMain(rest);
        } catch (e) {
          throw e instanceof ctl.CtlUsage ? new UsageError(e.message) : e;
        }
      }
      case 'agent': {
        const { values } = parseArgs({ args: rest, options: { socket: { type: 'string', short: 's' }, name: { type: 'string' }, help: { type: 'boolean', short: 'h' }, conntrack: { type: 'boolean' }, 'min-packets': { type: 'string' }, 'min-bytes': { type: 'string' } } });
        if (values.help) { process.stdout.write(AGENT_HELP); return 0; }
        if (!values.socket) throw new UsageError(`agent: --socket PATH is required; see 'fpo agent --help'`);
        const count = (flag: 'min-packets' | 'min-bytes') => {
          const v = values[flag];
          if (v === undefined) return undefined;
          if (!/^\d{1,15}$/.test(v)) throw new UsageError(`agent: --${flag}: expected a whole number, got "${v}"`);
          if (!values.conntrack) throw new UsageError(`agent: --${flag} is for --conntrack`);
          return Number(v);
        };
        const policy = { minPackets: count('min-packets'), minBytes: count('min-bytes') };
        await (await import('./agent.js')).runAgent(values.socket, values.name ?? 'vm', values.conntrack ? { conntrack: policy } : {});
        return 0;
      }
      case 'lab': {
        const [verb, file, ...more] = rest;
        if ((verb !== 'up' && verb !== 'down') || !file || more.length) throw new UsageError(`lab: expected "fpo lab up FILE" or "fpo lab down FILE"`);
        const { labDown, labUp } = await import('./lab.js');
        const r = verb === 'up' ? await labUp(file) : await labDown(file);
        process.stdout.write(JSON.stringify(r) + '\n');
        return 0;
      }
      case undefined:
      case '-h':
      case '--help':
        process.stdout.write(HELP);
        return 0;
      case 'help':
        process.stdout.write(rest[0] === 'replay' ? REPLAY_HELP : rest[0] === 'run' ? RUN_HELP : rest[0] === 'ctl' ? (await import('./ctl.js')).CTL_HELP : HELP);
        return 0;
      case 'replay':
        return await cmdReplay(rest);
      default:
        throw new UsageError(`unknown command "${cmd}"; expected one of: replay, run, ctl, lab, agent, help`);
    }
  } catch (e) {
    if (process.env.FPO_DEBUG) console.error(e);
    if (e instanceof UsageError || (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`fpo: ${(e as Error).message}\n`);
      return 2;
    }
    if (e instanceof FpoError) {
      process.stderr.write(`fpo: ${e.message}\n`);
      return 1;
    }
    process.stderr.write(`fpo: internal error: ${(e as Error).message ?? String(e)}\n`);
    return 70;
  }
}

// A reader that goes away (fpo … | head) is not an error worth a stack trace.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw e;
});

process.exitCode = await main(process.argv.slice(2));
