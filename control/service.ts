/**
 * Service: fpo as a long-running switch (`fpo run`). It holds the datapath
 * and the FPAG, listens on a Unix control socket (mode 0600) for JSON
 * requests, one a line, and keeps the interfaces' VPIDs and mappings in a
 * state file written atomically, so a restart gives every interface the
 * same VPID and port.
 *
 * Traffic: `inject` replays a capture into a port of the running switch
 * (batches interleaved with control requests, so a migration can land in the
 * middle of a stream); every port writes what it emits to OUT/<port>.pcap for
 * the life of the service.
 *
 * Protocol: request {"id": any, "cmd": "…", "args": {…}}; response {"id",
 * "ok": true, "result"} or {"id", "ok": false, "error": {"code", "message"}}.
 * A line over MAX_REQUEST bytes is answered with an error and the connection
 * closed; malformed JSON gets an error and the connection stays. A request
 * that fails changes nothing.
 */
import { chmodSync, existsSync, mkdirSync, unlinkSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import pino, { type Logger } from 'pino';
import { Arena } from '../datapath/arena.js';
import { PacketBatch } from '../datapath/batch.js';
import { keyHash } from '../datapath/classifier/emc.js';
import { KEY_WORDS, formatMatch } from '../datapath/classifier/flow-key.js';
import { monotonicMs } from '../datapath/clock.js';
import { Datapath, MAX_PPID } from '../datapath/datapath.js';
import { DROP, DROP_NAMES } from '../datapath/drops.js';
import { FpoError } from '../datapath/errors.js';
import { CaptureReader, LINKTYPE_ETHERNET } from '../datapath/ports/capture-reader.js';
import { CaptureWriter, txBufferBytes } from '../datapath/ports/capture-writer.js';
import { Fpag, type Change } from './fpag.js';
import { LiveLoop } from './live.js';
import { TunnelMonitor } from './monitor.js';
import { TapPort } from '../datapath/ports/tap-port.js';
import type { Server as HttpServer } from 'node:http';
import { COMMANDS } from './socket.js';
import { formatFlowSpec, parseFlowSpec } from './flow-syntax.js';
import { flowReport } from './replay.js';
import { StateStore, stateOf } from './state.js';
import { loadTopology, type Topology } from './topology.js';

export const MAX_REQUEST = 64 * 1024;

/**
 * The args each command takes; any other key is refused by name, before
 * anything is done: a misspelt key ("newvpid" for newVpid) was ignored and
 * the request carried out without it. A Map, not an object: the command is
 * the client's text. inject is not listed (its args are the inject path's
 * to define): its unknown keys are not checked here.
 */
const ARGS = new Map<string, readonly string[]>([
  ['ping', []], ['show', []], ['dump-flows', []], ['stats', []], ['bfd', []],
  ['add-flow', ['flow']], ['del-flow', ['flow']], ['trace', ['packet']],
  ['set-mapping', ['vpid', 'ppid']], ['migrate', ['interface', 'to', 'away', 'newVpid']],
]);

export interface ServiceOptions {
  topology: string;
  socket: string;
  outDir: string;
  /** State file (default: OUT/fpo-state.json). */
  state?: string;
  /** pino level: silent, error, warn (default), info, debug. */
  logLevel?: string;
  /** Serve Prometheus metrics on this address (HOST:PORT or PORT, loopback by default). */
  metrics?: string;
}

export class Service {
  readonly dp: Datapath;
  readonly fpag: Fpag;
  readonly topo: Topology;
  readonly log: Logger;
  private readonly opts: Required<Omit<ServiceOptions, 'logLevel' | 'metrics'>> & { metrics?: string };
  private metricsServer: HttpServer | null = null;
  private monitor: TunnelMonitor | null = null;
  private readonly writers = new Map<number, CaptureWriter>();
  private readonly taps: TapPort[] = [];
  private readonly live: LiveLoop;
  private readonly arena: Arena;
  private server: Server | null = null;
  private readonly batch = new PacketBatch(256);
  private readonly store: StateStore;
  private injecting: Promise<unknown> = Promise.resolve();
  requests = 0;
  badRequests = 0;

  constructor(opts: ServiceOptions) {
    this.opts = { topology: opts.topology, socket: opts.socket, outDir: opts.outDir, state: opts.state ?? join(opts.outDir, 'fpo-state.json'), metrics: opts.metrics };
    this.log = pino({ level: opts.logLevel ?? 'warn', base: undefined }, pino.destination(2));
    const topo = loadTopology(opts.topology);
    this.dp = new Datapath({ batchCapacity: 256 });
    // The state file is checked whole before any of it is used (control/state.ts).
    this.store = new StateStore(this.opts.state);
    const plan = this.store.load(topo, this.dp.mapping.maxVpid);
    if (plan) {
      this.log.info({ state: this.opts.state, added: plan.added }, 'state restored');
      if (plan.forgotten.length) this.log.warn({ state: this.opts.state, forgotten: plan.forgotten }, 'state names that the topology no longer has are forgotten');
    }
    if (this.store.leftovers.length) this.log.warn({ state: this.opts.state, removed: this.store.leftovers }, 'temp files of a state write that was cut off removed');
    this.topo = topo;
    mkdirSync(opts.outDir, { recursive: true });
    const txBuffer = txBufferBytes(topo.ports.length);
    this.arena = new Arena(topo.ports.length * (txBuffer + 64) + 4096);
    const layout = { format: 'pcap' as const, nanos: false, interfaces: [{ linktype: LINKTYPE_ETHERNET, snaplen: 262144, tsresol: 6, tsoffset: 0 }] };
    const live: { port: TapPort; ppid: number }[] = [];
    for (const p of topo.ports) {
      if (p.kind === 'tap' || p.kind === 'afpacket') {
        const tap = new TapPort(p.device, 256, p.kind);
        this.taps.push(tap);
        live.push({ port: tap, ppid: p.ppid });
        this.dp.addPort(p.ppid, tap);
        continue;
      }
      const w = new CaptureWriter(join(opts.outDir, `${p.name}.pcap`), layout, this.arena, txBuffer);
      this.writers.set(p.ppid, w);
      this.dp.addPort(p.ppid, w);
    }
    this.live = new LiveLoop(this.dp, live);
    this.fpag = new Fpag(topo, this.dp);
    this.fpag.start();
    this.saveState();
  }

  /**
   * Writes the VPIDs and mappings as they are (temp file, fsync, rename,
   * fsync of the folder); nothing when they are as last written, so the
   * call at stop cannot fail once every change was persisted as it was made.
   */
  saveState(): void {
    this.store.save(stateOf(this.topo));
  }

  /**
   * One change of an interface's VPID or port, persisted and applied as one
   * step: `apply` validates (throwing with nothing changed) and then calls
   * `commit` with the change before it touches anything; commit writes the
   * state that the change gives, and only when that write succeeded does
   * apply go on. So a request whose write fails (the state folder gone, a
   * full disk) is refused with the datapath and the file as they were.
   */
  private changeState<T>(apply: (commit: (c: Change) => void) => T): T {
    let committed = false;
    try {
      return apply((c) => {
        const next = stateOf(this.topo);
        next.vpids.set(c.interface, c.vpid);
        next.ports.set(c.interface, c.port);
        this.store.save(next);
        committed = true;
      });
    } catch (e) {
      // Applying after a successful write cannot fail short of a bug; then the
      // file is brought back to what the service now holds, as far as it can be.
      if (committed) try { this.saveState(); } catch { /* the error below says enough */ }
      throw e;
    }
  }

  async listen(): Promise<void> {
    if (this.opts.metrics !== undefined) {
      // prom-client is loaded only when metrics are served (31-79 ms of start-up here, timed imports).
      const { metricsRegistry, serveMetrics } = await import('./metrics.js');
      this.metricsServer = await serveMetrics(metricsRegistry(this.dp, this.fpag), this.opts.metrics);
      this.log.info({ metrics: this.opts.metrics }, 'metrics');
    }
    if (this.topo.tunnel?.monitor.length) {
      this.monitor = new TunnelMonitor(this.topo.tunnel.monitor, this.log);
      await this.monitor.start();
    }
    if (existsSync(this.opts.socket)) unlinkSync(this.opts.socket);
    const server = createServer((c) => this.onConnection(c));
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once('error', (e) => reject(new FpoError('FPO_ERR_IO', `${this.opts.socket}: cannot listen: ${e.message}`, { path: this.opts.socket })));
      server.listen(this.opts.socket, () => {
        chmodSync(this.opts.socket, 0o600);
        this.log.info({ socket: this.opts.socket, taps: this.taps.map((t) => t.name) }, 'listening');
        this.live.start();
        resolve();
      });
    });
  }

  private onConnection(c: Socket): void {
    let buf = '';
    c.setEncoding('utf8');
    c.on('error', () => undefined);
    c.on('data', (chunk: string) => {
      buf += chunk;
      for (;;) {
        const nl = buf.indexOf('\n');
        if (nl < 0) break;
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        void this.answer(c, line);
      }
      if (buf.length > MAX_REQUEST) {
        this.badRequests++;
        c.end(JSON.stringify({ id: null, ok: false, error: { code: 'FPO_ERR_USAGE', message: `request: longer than ${MAX_REQUEST} bytes; closing` } }) + '\n');
        buf = '';
      }
    });
  }

  private async answer(c: Socket, line: string): Promise<void> {
    this.requests++;
    let id: unknown = null;
    try {
      if (line.length > MAX_REQUEST) throw new FpoError('FPO_ERR_USAGE', `request: longer than ${MAX_REQUEST} bytes`);
      let req: unknown;
      try {
        req = JSON.parse(line);
      } catch (e) {
        throw new FpoError('FPO_ERR_USAGE', `request: not JSON: ${(e as Error).message}`);
      }
      if (req === null || typeof req !== 'object' || Array.isArray(req)) throw new FpoError('FPO_ERR_USAGE', 'request: expected an object {"id", "cmd", "args"}');
      const r = req as { id?: unknown; cmd?: unknown; args?: unknown };
      id = r.id ?? null;
      if (typeof r.cmd !== 'string') throw new FpoError('FPO_ERR_USAGE', `cmd: expected a string, one of ${COMMANDS.join(', ')}`);
      const args = r.args === undefined ? {} : r.args;
      if (args === null || typeof args !== 'object' || Array.isArray(args)) throw new FpoError('FPO_ERR_USAGE', 'args: expected an object');
      const result = await this.handle(r.cmd, args as Record<string, unknown>);
      if (!c.destroyed) c.write(JSON.stringify({ id, ok: true, result }) + '\n');
    } catch (e) {
      this.badRequests++;
      const err = e instanceof FpoError ? { code: e.code, message: e.message } : { code: 'FPO_ERR_INTERNAL', message: (e as Error).message };
      this.log.warn({ err: err.message }, 'request refused');
      if (!c.destroyed) c.write(JSON.stringify({ id, ok: false, error: err }) + '\n');
    }
  }

  /** Runs one control command. Throws FpoError (naming the field) with nothing changed. */
  async handle(cmd: string, args: Record<string, unknown>): Promise<unknown> {
    const allowed = ARGS.get(cmd);
    if (allowed !== undefined) {
      for (const k of Object.keys(args)) {
        if (!allowed.includes(k)) throw new FpoError('FPO_ERR_USAGE', `args: unknown field ${JSON.stringify(k)}; ${cmd} takes ${allowed.length ? allowed.join(', ') : 'no args'}`);
      }
    }
    const str = (name: string, required = true): string | undefined => {
      const v = args[name];
      if (v === undefined && !required) return undefined;
      if (typeof v !== 'string' || v.length === 0 || v.length > 4096) throw new FpoError('FPO_ERR_USAGE', `${name}: expected a non-empty string`);
      return v;
    };
    // An identifier (VPID, PPID): whatever is wrong with it, the message gives the range.
    const id = (name: string, min: number, max: number): number => {
      const v = args[name];
      if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
        throw new FpoError('FPO_ERR_USAGE', `${name}: expected an integer in ${min}..${max}, got ${typeof v === 'number' ? String(v) : v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v}`);
      }
      return v;
    };
    switch (cmd) {
      case 'ping':
        return { pong: true };
      case 'show':
        return this.show();
      case 'dump-flows':
        return flowReport(this.dp, this.fpag);
      case 'stats':
        return this.stats();
      case 'add-flow': {
        const rule = parseFlowSpec(str('flow')!);
        const r = this.fpag.setRules([...this.fpag.ruleSpecs, rule]);
        this.log.info({ flow: formatFlowSpec(rule), ...r }, 'flow added');
        return { added: formatFlowSpec(rule), revalidated: r };
      }
      case 'del-flow': {
        const want = parseFlowSpec(str('flow')!, false);
        const same = (a: Record<string, string | number>, b: Record<string, string | number>) => JSON.stringify(Object.entries(a).sort()) === JSON.stringify(Object.entries(b).sort());
        const hasPriority = /(^|,)\s*priority=/.test(String(args.flow));
        const keep = this.fpag.ruleSpecs.filter((r) => !(same(r.match, want.match) && (!hasPriority || r.priority === want.priority)));
        const removed = this.fpag.ruleSpecs.length - keep.length;
        if (removed === 0) throw new FpoError('FPO_ERR_USAGE', `flow: no rule has the match ${JSON.stringify(want.match)}`);
        const r = this.fpag.setRules(keep);
        return { removed, revalidated: r };
      }
      case 'set-mapping': {
        const vpid = id('vpid', 1, this.dp.mapping.maxVpid);
        const ppid = id('ppid', 0, MAX_PPID);
        this.changeState((commit) => this.fpag.setMapping(vpid, ppid, commit));
        return { vpid, ppid };
      }
      case 'migrate': {
        const name = str('interface')!;
        const away = args.away === true;
        const to = away ? null : str('to')!;
        const newVpid = args.newVpid === undefined ? undefined : id('newVpid', 1, this.dp.mapping.maxVpid);
        const r = this.changeState((commit) => this.fpag.migrate(name, to, newVpid, commit));
        this.log.info({ interface: name, to, ...r }, 'migrated');
        return { interface: name, to, ...r };
      }
      case 'trace':
        return this.trace(str('packet')!);
      case 'bfd':
        return { sessions: (await this.monitor?.describe()) ?? [] };
      case 'inject': {
        const capture = str('capture')!;
        const port = str('port', false);
        const run = this.injecting.then(() => this.inject(capture, port));
        this.injecting = run.catch(() => undefined);
        return await run;
      }
      default:
        throw new FpoError('FPO_ERR_USAGE', `cmd: unknown command "${cmd}"; expected one of ${COMMANDS.join(', ')}`);
    }
  }

  show(): unknown {
    const m = this.dp.mapping;
    return {
      ports: this.topo.ports.map((p) => ({ name: p.name, ppid: p.ppid, role: p.role, vpid: m.toVpid[p.ppid], attached: m.toVpid[p.ppid] >= 0 ? this.fpag.vpidName(m.toVpid[p.ppid]) : null })),
      interfaces: this.topo.interfaces.map((i) => ({ name: i.name, node: i.node, mac: i.mac, ip: i.ip ?? null, segment: i.segment, vpid: i.vpid, ppid: m.toPpid[i.vpid], port: i.port ?? null })),
      segments: this.topo.segments,
      hosts: [{ name: this.topo.name, vtep: this.topo.tunnel?.vtep ?? null }, ...(this.topo.tunnel?.remotes ?? []).map((r) => ({ name: r.name, vtep: r.vtep, via: r.uplink, interfaces: r.interfaces.map((x) => x.name) }))],
      rules: this.fpag.ruleSpecs.map((r) => formatFlowSpec(r)),
    };
  }

  stats(): unknown {
    const st = this.dp.stats();
    return {
      packets: { in: st.packetsIn, out: st.delivered, dropped: st.dropped, copies: st.copies, special: st.special },
      drops: st.drops,
      ports: st.ports.map((p) => ({ name: this.fpag.portOf(p.ppid)?.name, ...p })),
      flows: { installed: st.flowsInstalled, active: st.flowsNow, evicted: st.flowsEvicted, expired: st.flowsExpired, upcalls: st.upcalls, emcHits: st.emcHits, megaflowHits: st.megaflowHits },
      perFlow: flowReport(this.dp, this.fpag),
      migrations: this.fpag.migrations,
      flowRewrites: this.fpag.flowRewrites,
      control: { requests: this.requests, refused: this.badRequests },
    };
  }

  /**
   * Trace: what the switch does with a packet described as match fields
   * (in_port=NAME,eth_dst=…,tcp,tp_dst=80…), step by step, without sending it.
   */
  trace(desc: string): unknown {
    const spec = parseFlowSpec(desc, false);
    const key = new Uint32Array(KEY_WORDS);
    const mask = new Uint32Array(KEY_WORDS);
    const inName = spec.match.in_port;
    if (inName === undefined) throw new FpoError('FPO_ERR_USAGE', 'packet.in_port: required (the port or interface the packet arrives on)');
    const port = this.fpag.portNamed(String(inName));
    const match = { ...spec.match };
    // A VLAN ID in the description means a tagged packet (802.1Q unless said otherwise).
    if ((match.vlan_vid !== undefined || match.vlan_tci !== undefined) && match.vlan_tpid === undefined) match.vlan_tpid = 0x8100;
    if (port) {
      // Arriving on a port: its in_port key is what the NIC would give it (the attached VPID).
      delete match.in_port;
      key[0] = this.dp.mapping.inPortKey[port.ppid];
    }
    this.fpag.compileMatchInto(key, mask, match, 'packet');
    const steps: string[] = [];
    steps.push(port ? `rx on port ${port.name} (ppid ${port.ppid}): ${formatMatch(key, Uint32Array.of(0xffffffff))}` : `in_port ${inName}`);
    steps.push('flag check: no tunnel header addressed to this host: fast path');
    const h = keyHash(key, 0);
    const emc = this.dp.emc.lookup(key, 0, h);
    const mf = emc >= 0 ? emc : this.dp.flows.lookup(key, 0);
    if (emc >= 0) steps.push(`exact-match cache: hit, flow ${emc}`);
    else steps.push('exact-match cache: miss');
    if (emc < 0) steps.push(mf >= 0 ? `megaflow: hit, flow ${mf}` : 'megaflow: miss: the datapath would upcall to the FPAG');
    const d = this.fpag.decide(key, true);
    steps.push(`FPAG: ${d.reason}`);
    steps.push(`megaflow mask: ${formatMatch(key, d.mask)}`);
    const outs: { vpid: number; ppid: number; port: string | null; encap?: string }[] = [];
    let encap: string | undefined;
    for (const a of d.actions) {
      if (a.op === 'encap') encap = `tunnel ${a.tunnel} (${this.fpag.tunnelName(a.tunnel)}) vni ${a.vni}`;
      if (a.op === 'flag') steps.push('flag: encapsulated copies carry the special-processing flag');
      if (a.op === 'drop') steps.push(`drop: ${DROP_NAMES[a.reason]} (${DROP[DROP_NAMES[a.reason]]})`);
      if (a.op === 'output') {
        const ppid = this.dp.mapping.toPpid[a.vpid];
        outs.push({ vpid: a.vpid, ppid, port: ppid >= 0 ? this.fpag.portOf(ppid)?.name ?? null : null, encap });
        steps.push(ppid >= 0 ? `output: vpid ${a.vpid} (${this.fpag.vpidName(a.vpid)}) → ppid ${ppid} (${this.fpag.portOf(ppid)?.name})${encap ? ` after encap to ${encap}` : ''}` : `output: vpid ${a.vpid} (${this.fpag.vpidName(a.vpid)}) has no PPID: dropped as vpidUnmapped`);
      }
    }
    return { steps, rule: d.rule, installed: mf >= 0 ? mf : null, outputs: outs };
  }

  /** Replays a capture into a port of the running switch, yielding to control requests between batches. */
  async inject(capture: string, portName?: string): Promise<unknown> {
    const reader = new CaptureReader(capture);
    try {
      if (reader.format !== 'pcap' || reader.nanos || reader.interfaces[0].linktype !== LINKTYPE_ETHERNET) {
        throw new FpoError('FPO_ERR_BAD_CAPTURE', `capture: ${capture}: inject takes a classic Ethernet pcap with µs timestamps`, { path: capture });
      }
      const name = portName ?? (this.topo.inputPort !== 'by-source-mac' ? this.topo.inputPort : undefined) ?? this.topo.ports.find((p) => p.role === 'uplink')?.name ?? this.topo.ports[0].name;
      const port = this.fpag.portNamed(name);
      if (!port) throw new FpoError('FPO_ERR_USAGE', `port: no port named "${name}"`);
      const before = this.dp.stats();
      const batch = this.batch;
      let batches = 0;
      while (reader.fill(batch, port.ppid) > 0) {
        this.dp.process(batch, monotonicMs()); // the service's clock, never the capture's (clock.ts)
        if (++batches % 4 === 0) await yieldToLoop();
      }
      for (const w of this.writers.values()) if (w.opened) w.flush();
      const after = this.dp.stats();
      return {
        capture, port: name, packets: { in: after.packetsIn - before.packetsIn, out: after.delivered - before.delivered, dropped: after.dropped - before.dropped },
        error: reader.error ? { code: reader.error.code, message: reader.error.message } : undefined,
      };
    } finally {
      reader.close();
    }
  }

  /** Stops listening, flushes the port files, saves state; returns the final counters. */
  async stop(): Promise<unknown> {
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
    if (this.metricsServer) await (await import('./metrics.js')).closeMetrics(this.metricsServer);
    if (existsSync(this.opts.socket)) unlinkSync(this.opts.socket);
    await this.injecting;
    await this.monitor?.stop();
    await this.live.stop();
    for (const t of this.taps) t.close();
    for (const w of this.writers.values()) w.close();
    this.saveState();
    return this.stats();
  }
}

// In their own module so that `fpo ctl` does not load the service (pino, prom-client, the datapath).
export { COMMANDS, defaultSocket } from './socket.js';
