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
 * that fails changes nothing. Requests on one connection are answered in
 * order, one at a time; the bounds on clients, queued replies and bodies are
 * in connection.ts.
 *
 * inject's body: the service never opens a path a client names. The request
 * {"cmd": "inject", "args": {"bytes": N, "name"?: "…", "port"?: "…"}} is
 * followed on the connection by exactly N raw bytes: the capture (a classic
 * Ethernet pcap, µs), which `fpo ctl inject FILE` reads on the client's
 * side and streams. The service feeds them to the datapath as they arrive,
 * holding at most BODY_QUEUE of them; a refused inject's remaining bytes are
 * read and dropped, so the next request on the connection is found.
 */
import { chmodSync, existsSync, lstatSync, mkdirSync, unlinkSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { sameFile } from './files.js';
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import pino, { type Logger } from 'pino';
import { Arena } from '../datapath/arena.js';
import { PacketBatch } from '../datapath/batch.js';
import { keyHash } from '../datapath/classifier/emc.js';
import { KEY_WORDS, W_CT, formatMatch } from '../datapath/classifier/flow-key.js';
import { monotonicMs } from '../datapath/clock.js';
import { Datapath, MAX_PPID, type DatapathStats } from '../datapath/datapath.js';
import { FIREWALL_VERSIONS } from '../datapath/services/firewall/module.js';
import { DirtyBitmap } from '../datapath/dirty-log.js';
import { type GuestMemory, PfDriver, VfPort, openGuestMemory } from '../datapath/ports/vf/vf-port.js';
import { createHash } from 'node:crypto';
import { connect as netConnect, createServer as createNetServer, type Server as NetServer } from 'node:net';
import { Guest } from './migration/guest-driver.js';
import { precopy } from './migration/precopy.js';
import { FrameReader, T_ACCEPT, T_DONE, T_ERROR, T_FINAL, T_HELLO, T_PAGES, jsonFrame, pagesFrame, type Frame } from './migration/wire.js';
import { PAGE_SIZE } from '../datapath/dirty-log.js';
import { Directory } from './directory/directory.js';
import { InterfaceEntry } from './directory/schema.js';
import { CheckError, formatPath } from './check.js';
import { UPLINK_VPID_MIN, VPID_MAX, VpidClaims } from './directory/vpids.js';

/** A VF port of fpo run: its receive path, memory, the dirty logs (PF: the VF's DMA; cpu: the guest's own writes), the VM's stand-in. */
interface VfEntry { vf: VfPort; mem: GuestMemory; file: string; size: number; bitmap: DirtyBitmap | null; pf: PfDriver; cpu: DirtyBitmap; guest: Guest | null; guestSpec: { dirtyRate: number; start: 'boot' | 'arrival' } | null }

function startGuest(e: VfEntry): Guest {
  return new Guest({ file: e.file, size: e.size, cpuBits: e.cpu.words.buffer as SharedArrayBuffer, ring: 1024, bufLen: 2048, dirtyRate: e.guestSpec?.dirtyRate ?? 0 });
}
import { DROP, DROP_NAMES } from '../datapath/drops.js';
import { FpoError } from '../datapath/errors.js';
import { CaptureReader, LINKTYPE_ETHERNET } from '../datapath/ports/capture-reader.js';
import { CaptureWriter, txBufferBytes } from '../datapath/ports/capture-writer.js';
import { Fpag, type Change } from './fpag.js';
import { Captures } from './capture.js';
import { LiveLoop } from './live.js';
import { DatapathWorkers, RecordingDatapath } from './workers.js';
import { TunnelMonitor } from './monitor.js';
import { HandOver, drainHandBacks } from './agent/handover.js';
import { openLivePort, type LivePort } from '../datapath/ports/live-port.js';
import { PcapLivePort } from '../datapath/ports/pcap-live-port.js';
import type { Server as HttpServer } from 'node:http';
import { COMMANDS, claimSocketPath } from './socket.js';
import { Connection, MAX_BODY, MAX_CLIENTS, MAX_REQUEST, TooLong, type Body } from './connection.js';
import { formatCtAction, formatFlowSpec, parseFlowSpec, rulesWithout } from './flow-syntax.js';
import { flowReport, type FlowReport } from './replay.js';
import { StateStore, stateOf } from './state.js';
import { loadTopology, type Topology } from './topology.js';

export { MAX_BODY, MAX_CLIENTS, MAX_QUEUED, MAX_REQUEST } from './connection.js';

/** answer()'s result for a capture: its stream was the answer, and the connection ends with it. */
const STREAMED = Symbol('streamed');

/**
 * The args each command takes; any other key is refused by name, before
 * anything is done: a misspelt key ("newvpid" for newVpid) was ignored and
 * the request carried out without it. A Map, not an object: the command is
 * the client's text. inject is not listed (its args are the inject path's
 * to define): its unknown keys are not checked here.
 */
/** inject's args (checked in injectRequest, once its body's length is known). */
const INJECT_ARGS: readonly string[] = ['bytes', 'name', 'port'];

const ARGS = new Map<string, readonly string[]>([
  ['ping', []], ['show', []], ['dump-flows', []], ['stats', []], ['bfd', []],
  ['add-flow', ['flow']], ['del-flow', ['flow']], ['trace', ['packet']],
  ['set-mapping', ['vpid', 'ppid']], ['migrate', ['interface', 'to', 'away', 'newVpid']],
  ['conntrack', ['action', 'port', 'zone']],
  ['firewall', ['action', 'to', 'ports', 'maxPauseMs', 'resume', 'restart']],
  ['dirty-log', ['action', 'port']],
  ['migrate-vm', ['interface', 'to', 'destPort', 'vfLog', 'remote']],
  ['attach', ['interface', 'port', 'mac', 'segment', 'ip']],
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
  /** Take incoming VM migrations on this TCP address (HOST:PORT; issue 21: fpo ctl migrate-vm's other end). */
  migrateListen?: string;
  /** The etcd directory (issue 22): endpoints (comma-separated URLs), this host's name in it, the deployment's prefix. */
  etcd?: string;
  host?: string;
  deployment?: string;
  /** Datapath workers (worker threads, workers.ts); 1 (default): the datapath on the main thread. */
  workers?: number;
}

/** How long `fpo run --etcd` waits for etcd to take this host in (register, claims, read, arrivals, watch) before it refuses to start. */
export const JOIN_MS = 20_000;

export class Service {
  readonly dp: Datapath;
  readonly fpag: Fpag;
  readonly topo: Topology;
  readonly log: Logger;
  private readonly opts: Required<Omit<ServiceOptions, 'logLevel' | 'metrics' | 'workers' | 'migrateListen' | 'etcd' | 'host' | 'deployment'>> & { metrics?: string; workers: number; migrateListen?: string; etcd?: string; host?: string; deployment?: string };
  private directory: Directory | null = null;
  private vpidClaims: VpidClaims | null = null;
  /** This host's name in the directory (fpo run --etcd). */
  private me = '';
  /** With --workers N > 1: the workers; this.dp is then the FPAG's shadow (no ports, no traffic). */
  private workers: DatapathWorkers | null = null;
  private metricsServer: HttpServer | null = null;
  private monitor: TunnelMonitor | null = null;
  /** Service VMs' hand-over channels (topology nodes with an offload section), and the timer that drains hand-backs to them. */
  private handovers: HandOver[] = [];
  private handbackTimer: NodeJS.Timeout | null = null;
  private readonly writers = new Map<number, CaptureWriter>();
  private readonly taps: LivePort[] = [];
  /** VF ports (issue 21): each one's receive path into its guest memory, and the hypervisor's dirty log of that memory while on. */
  private readonly vfs = new Map<string, VfEntry>();
  private migrateServer: NetServer | null = null;
  private readonly liveRows: { port: LivePort; name: string; ppid: number }[] = [];
  private readonly live: LiveLoop;
  private readonly arena: Arena;
  private server: Server | null = null;
  private readonly batch = new PacketBatch(256);
  private readonly store: StateStore;
  private injecting: Promise<unknown> = Promise.resolve();
  /** Clients connected now. */
  private readonly conns = new Set<Connection>();
  /** The socket file this service made (device, inode), so that stop removes only its own. */
  private socketId: { dev: number; ino: number } | null = null;
  requests = 0;
  badRequests = 0;
  /** Connections refused because MAX_CLIENTS were connected. */
  clientsRefused = 0;
  /** Refused connections still open (being given their error line). */
  private refusing = 0;
  /** Live captures (fpo ctl capture; capture.ts). */
  readonly captures: Captures;

  constructor(opts: ServiceOptions) {
    const nWorkers = opts.workers ?? 1;
    if (!Number.isInteger(nWorkers) || nWorkers < 1 || nWorkers > 64) throw new FpoError('FPO_ERR_USAGE', `--workers: expected an integer in 1..64, got ${nWorkers}`);
    this.opts = { topology: opts.topology, socket: opts.socket, outDir: opts.outDir, state: opts.state ?? join(opts.outDir, 'fpo-state.json'), metrics: opts.metrics, workers: nWorkers, migrateListen: opts.migrateListen, etcd: opts.etcd, host: opts.host, deployment: opts.deployment };
    if (opts.migrateListen !== undefined && !/^[0-9a-fA-F:.]+:\d{1,5}$/.test(opts.migrateListen)) throw new FpoError('FPO_ERR_USAGE', `--migrate-listen: expected HOST:PORT, got "${opts.migrateListen.slice(0, 80)}"`);
    this.log = pino({ level: opts.logLevel ?? 'warn', base: undefined }, pino.destination(2));
    const topo = loadTopology(opts.topology);
    if (nWorkers > 1) {
      // What the workers do not take yet is refused before anything is opened.
      const vfp = topo.ports.find((p) => p.kind === 'vf');
      if (vfp) throw new FpoError('FPO_ERR_USAGE', `--workers ${nWorkers}: port ${vfp.name} is a vf port (its guest memory and dirty log are this thread's); run it with one datapath`);
      const pcap = topo.ports.find((p) => p.kind === 'pcap' || p.kind === 'pcap-live');
      if (pcap) throw new FpoError('FPO_ERR_USAGE', `--workers ${nWorkers}: port ${pcap.name} is ${pcap.kind === 'pcap' ? 'a capture file' : 'a libpcap port'}; with several workers every port must be tap or afpacket`);
      const xdp = topo.ports.find((p) => p.kind === 'afpacket' && p.io === 'xdp');
      if (xdp) throw new FpoError('FPO_ERR_USAGE', `--workers ${nWorkers}: port ${xdp.name} is on AF_XDP (io xdp), one queue and so one worker; with several workers use io ring`);
      if (topo.tunnel?.monitor.length) throw new FpoError('FPO_ERR_USAGE', `--workers ${nWorkers}: the tunnel monitor (BFD) runs with one datapath only, for now`);
      if (topo.offload.length) throw new FpoError('FPO_ERR_USAGE', `--workers ${nWorkers}: the conntrack hand-over (nodes[].offload of ${topo.offload[0].node}) runs with one datapath only, for now`);
      if (opts.metrics !== undefined) throw new FpoError('FPO_ERR_USAGE', `--workers ${nWorkers}: --metrics serves one datapath's counters only, for now; use fpo ctl stats`);
      const nat = topo.rules.findIndex((r) => r.actions.some(natAction));
      if (nat >= 0) throw new FpoError('FPO_ERR_USAGE', `--workers ${nWorkers}: rules[${nat}] translates addresses (ct(…nat(…))); a translated reply may meet another worker than its connection (spread.ts): NAT runs with one datapath only, for now`);
    }
    // Several workers: the FPAG decides on a shadow that records what it applies, for the workers (workers.ts).
    this.dp = nWorkers > 1 ? new RecordingDatapath({ batchCapacity: 256, idleTimeoutMs: 0 }) : new Datapath({ batchCapacity: 256 });
    this.captures = new Captures(this.dp);
    // The state file is checked whole before any of it is used (control/state.ts), and taken first:
    // a second service on the same state (and the same captures) is refused before it touches anything.
    this.store = new StateStore(this.opts.state);
    for (const p of topo.ports) {
      if (p.kind === 'pcap' && sameFile(join(opts.outDir, `${p.name}.pcap`), this.opts.state)) {
        throw new FpoError('FPO_ERR_USAGE', `--state ${this.opts.state}: is port ${p.name}'s capture; give the state a file of its own`, { path: this.opts.state });
      }
    }
    mkdirSync(opts.outDir, { recursive: true });
    this.store.lock();
    try {
      const plan = this.store.load(topo, this.dp.mapping.maxVpid);
      if (plan) {
        this.log.info({ state: this.opts.state, added: plan.added }, 'state restored');
        if (plan.forgotten.length) this.log.warn({ state: this.opts.state, forgotten: plan.forgotten }, 'state names that the topology no longer has are forgotten');
      }
      if (opts.etcd !== undefined) {
        // fpo run --etcd: interfaces' VPIDs are the deployment's (claimed in etcd, 1..VPID_MAX); this host's
        // uplinks take the range above, from 65535 down, so a VM moving here never finds its VPID an uplink's.
        const uplinks = topo.ports.filter((p) => p.role === 'uplink');
        if (uplinks.length > 65535 - VPID_MAX) throw new FpoError('FPO_ERR_USAGE', `--etcd: ${uplinks.length} uplinks; at most ${65535 - VPID_MAX}`);
        uplinks.forEach((p, k) => { p.vpid = 65535 - k; });
        const high = topo.interfaces.find((i) => i.vpid >= UPLINK_VPID_MIN);
        if (high !== undefined) throw new FpoError('FPO_ERR_USAGE', `--etcd: interface ${high.name} has VPID ${high.vpid} (its state file's), in the uplinks' range ${UPLINK_VPID_MIN}..65535; give it a lower one first (fpo ctl migrate --new-vpid) or remove the state file`, { path: this.opts.state });
      }
      if (this.store.leftovers.length) this.log.warn({ state: this.opts.state, removed: this.store.leftovers }, 'temp files of a state write that was cut off removed');
      this.topo = topo;
      const txBuffer = txBufferBytes(topo.ports.length);
      this.arena = new Arena(topo.ports.length * (txBuffer + 64) + 4096);
      const layout = { format: 'pcap' as const, nanos: false, interfaces: [{ linktype: LINKTYPE_ETHERNET, snaplen: 262144, tsresol: 6, tsoffset: 0 }] };
      const live: { port: LivePort; ppid: number }[] = [];
      for (const p of topo.ports) {
        if (nWorkers > 1) {
          this.dp.addPort(p.ppid, { writeBatch: () => undefined }); // the workers have the ports
          continue;
        }
        if (p.kind === 'pcap-live') {
          const port = new PcapLivePort(p.name, p.device, p.filter);
          this.taps.push(port);
          this.liveRows.push({ port, name: p.name, ppid: p.ppid });
          live.push({ port, ppid: p.ppid });
          this.dp.addPort(p.ppid, port);
          continue;
        }
        if (p.kind === 'vf') {
          const mem = openGuestMemory(p.memoryFile!, p.memory!, true);
          const vf = new VfPort(mem);
          const cpu = new DirtyBitmap(mem.pages);
          const e: VfEntry = { vf, mem, file: p.memoryFile!, size: p.memory!, bitmap: null, pf: new PfDriver(), cpu, guest: null, guestSpec: p.guest ?? null };
          if (p.guest !== undefined && p.guest.start === 'boot') e.guest = startGuest(e);
          this.vfs.set(p.name, e);
          this.dp.addPort(p.ppid, vf);
          continue;
        }
        if (p.kind === 'tap' || p.kind === 'afpacket') {
          const tap = openLivePort(p.device, p.kind, p.io, 256, p.offload, p.tpacket);
          this.taps.push(tap);
          this.liveRows.push({ port: tap, name: p.name, ppid: p.ppid });
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
    } catch (e) {
      for (const t of this.taps) t.close();
      this.store.unlock();
      throw e;
    }
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
    // The socket first: a service refused for a live socket opens nothing else (it served metrics before).
    const path = this.opts.socket;
    await claimSocketPath(path);
    if (this.opts.metrics !== undefined) {
      // prom-client is loaded only when metrics are served (31-79 ms of start-up here, timed imports).
      const { metricsRegistry, serveMetrics } = await import('./metrics.js');
      this.metricsServer = await serveMetrics(metricsRegistry(this.dp, this.fpag, () => this.liveCounters(), () => this.directoryCounters()), this.opts.metrics);
      this.log.info({ metrics: this.opts.metrics }, 'metrics');
    }
    if (this.opts.etcd !== undefined) await this.joinDirectory();
    if (this.opts.migrateListen !== undefined) {
      const a = this.opts.migrateListen;
      const i = a.lastIndexOf(':');
      const srv = createNetServer((s) => this.migrationIn(s));
      await new Promise<void>((resolve, reject) => { srv.once('error', reject); srv.listen(Number(a.slice(i + 1)), a.slice(0, i), () => resolve()); })
        .catch((x: Error) => { throw new FpoError('FPO_ERR_USAGE', `--migrate-listen ${a}: ${x.message}`); });
      this.migrateServer = srv;
      this.log.info({ migrateListen: a }, 'migrations in');
    }
    if (this.topo.tunnel?.monitor.length) {
      this.monitor = new TunnelMonitor(this.topo.tunnel.monitor, this.log);
      await this.monitor.start();
    }
    if (this.topo.offload.length) {
      this.handovers = this.topo.offload.map((o) => new HandOver(o, this.topo, this.dp, this.log));
      const drain = () => drainHandBacks(this.dp, this.handovers);
      for (const h of this.handovers) { h.drainHandBacks = drain; h.start(); }
      this.handbackTimer = setInterval(drain, 50);
      this.handbackTimer.unref();
    }
    if (this.opts.workers > 1) {
      this.workers = new DatapathWorkers(this.topo, this.opts.workers, this.dp as RecordingDatapath, this.log);
      await this.workers.ready();
      this.log.info({ workers: this.opts.workers }, 'datapath workers ready');
    }
    // allowHalfOpen: a client that sends its requests and closes its side still gets every reply.
    const server = createServer({ allowHalfOpen: true }, (c) => this.onConnection(c));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e) => reject(new FpoError('FPO_ERR_IO', `${path}: cannot listen: ${e.message}`, { path })));
      // Bound under umask 0177, so the socket is 0600 from the moment it exists (listen binds
      // synchronously in this call; the umask is the process's, put back at once).
      const umask = process.umask(0o177);
      try {
        server.listen(path, () => resolve());
      } finally {
        process.umask(umask);
      }
    });
    chmodSync(path, 0o600);
    const st = lstatSync(path);
    this.socketId = { dev: st.dev, ino: st.ino };
    this.log.info({ socket: path, taps: this.taps.map((t) => t.name) }, 'listening');
    this.live.start();
  }

  private onConnection(c: Socket): void {
    c.on('error', () => undefined);
    const conn = new Connection(c);
    if (this.conns.size >= MAX_CLIENTS) {
      this.clientsRefused++;
      // A refused client is given its error line and a second to read it; a flood of them is cut at once.
      if (this.refusing >= MAX_CLIENTS) {
        c.destroy();
        return;
      }
      this.refusing++;
      c.on('close', () => this.refusing--);
      conn.refuse({ id: null, ok: false, error: { code: 'FPO_ERR_CAPACITY', message: `clients: ${MAX_CLIENTS} connected, the most fpo run serves at once; try again later` } });
      return;
    }
    this.conns.add(conn);
    c.on('close', () => this.conns.delete(conn));
    void this.serve(conn);
  }

  /** Answers one connection's requests one at a time, in order, until it closes. */
  private async serve(conn: Connection): Promise<void> {
    for (;;) {
      let line: string | null;
      try {
        line = await conn.nextLine();
      } catch (e) {
        if (!(e instanceof TooLong)) throw e;
        this.requests++;
        this.badRequests++;
        conn.refuse({ id: null, ok: false, error: { code: e.code, message: e.message } });
        return;
      }
      if (line === null) {
        conn.end();
        return;
      }
      const body: { it: Body | null } = { it: null };
      const reply = await this.answer(conn, line, body);
      if (reply === STREAMED) {
        conn.end(); // a capture's stream is the connection's last answer
        return;
      }
      await conn.reply(reply);
      if (body.it) await conn.skipBody();
    }
  }

  /** One request line → its reply. An inject's body is read from `conn` (its Body left in `body.it`). */
  private async answer(conn: Connection, line: string, body: { it: Body | null }): Promise<unknown> {
    this.requests++;
    let id: unknown = null;
    try {
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
      const a = args as Record<string, unknown>;
      // A request has id, cmd and args only: another key is a mistake (a misspelt "args" was taken as no args).
      const extra = Object.keys(r).find((k) => k !== 'id' && k !== 'cmd' && k !== 'args');
      const top = extra === undefined ? null : new FpoError('FPO_ERR_USAGE', `request: unknown field ${JSON.stringify(extra)}; a request has id, cmd, args`);
      if (r.cmd === 'inject') return { id, ok: true, result: await this.injectRequest(conn, a, body, top) };
      if (r.cmd === 'capture') {
        if (top !== null) throw top;
        if (this.workers) throw new FpoError('FPO_ERR_USAGE', `capture: fpo run --workers ${this.opts.workers} does not tap its workers' ports yet; run it with one datapath to capture`);
        // Checked whole before anything starts (a refusal is an ordinary error reply); then the ok line and the stream.
        const req = await this.captures.check(a, (n) => this.fpag.portNamed(n));
        await conn.reply({ id, ok: true, result: { port: req.port, ppid: req.ppid, filter: req.filter, count: req.count, format: 'pcapng' } });
        if (!conn.ended) await this.captures.run(req, conn.sock);
        return STREAMED;
      }
      if (top !== null) throw top;
      const result = await this.handle(r.cmd, a);
      return { id, ok: true, result };
    } catch (e) {
      this.badRequests++;
      const err = e instanceof FpoError ? { code: e.code, message: e.message } : { code: 'FPO_ERR_INTERNAL', message: (e as Error).message };
      this.log.warn({ err: err.message }, 'request refused');
      return { id, ok: false, error: err };
    }
  }

  /**
   * inject over the socket: args.bytes (the body's length) is checked first,
   * so that a refusal of anything else still knows how many bytes to drop.
   */
  private async injectRequest(conn: Connection, args: Record<string, unknown>, body: { it: Body | null }, top: FpoError | null): Promise<unknown> {
    if (args.capture !== undefined) throw new FpoError('FPO_ERR_USAGE', 'capture: fpo run opens no file a client names; send the capture\'s bytes after the request ("bytes": N), as fpo ctl inject FILE does');
    const n = args.bytes;
    if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > MAX_BODY) throw new FpoError('FPO_ERR_USAGE', `bytes: expected the capture's length, an integer in 1..${MAX_BODY}`);
    const name = args.name === undefined ? 'capture' : args.name;
    if (typeof name !== 'string' || name.length === 0 || name.length > 4096) throw new FpoError('FPO_ERR_USAGE', 'name: expected a non-empty string');
    const b = conn.body(n, name);
    body.it = b;
    // Checked once the body is known, so that a refusal still drops the body's bytes and finds the next request.
    for (const k of Object.keys(args)) {
      if (!INJECT_ARGS.includes(k)) throw new FpoError('FPO_ERR_USAGE', `args: unknown field ${JSON.stringify(k)}; inject takes ${INJECT_ARGS.join(', ')}`);
    }
    if (top !== null) throw top;
    if (this.workers) throw new FpoError('FPO_ERR_USAGE', `inject: fpo run --workers ${this.opts.workers} takes traffic on its live ports only, for now`);
    const portArg = args.port;
    if (portArg !== undefined && (typeof portArg !== 'string' || portArg.length === 0 || portArg.length > 4096)) throw new FpoError('FPO_ERR_USAGE', 'port: expected a non-empty string');
    const portName = portArg ?? (this.topo.inputPort !== 'by-source-mac' ? this.topo.inputPort : undefined) ?? this.topo.ports.find((p) => p.role === 'uplink')?.name ?? this.topo.ports[0].name;
    const port = this.fpag.portNamed(portName);
    if (!port) throw new FpoError('FPO_ERR_USAGE', `port: no port named "${portName}"`);
    // One inject at a time: a later one waits, its body unread (the socket paused at BODY_QUEUE).
    const run = this.injecting.then(() => {
      // A client gone before its turn with its body unfinished (a ctl killed by its timeout mid-send) gets nothing
      // injected: the capture could only end cut, and no one would hear of it. One whose bytes have all come is
      // carried out, as any request received is (a client that half-closes after sending still gets its answer).
      if (conn.ended && conn.bodyQueued() < conn.bodyRemaining()) throw new FpoError('FPO_ERR_USAGE', 'inject: the client went away before its turn, its capture unfinished; nothing injected');
      return this.inject(b, portName, port.ppid);
    });
    this.injecting = run.catch(() => undefined);
    return await run;
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
        return this.workers ? (await this.workersStats()).perFlow : [...flowReport(this.dp, this.fpag), ...this.offloadReport()];
      case 'stats':
        return this.workers ? await this.workersStats() : this.stats();
      case 'add-flow': {
        const rule = parseFlowSpec(str('flow')!);
        if (this.workers !== null && rule.actions.some(natAction)) throw new FpoError('FPO_ERR_USAGE', 'add-flow: this switch runs several workers, and a translated reply may meet another worker than its connection: NAT runs with one datapath only, for now');
        const r = this.fpag.setRules([...this.fpag.ruleSpecs, rule]);
        await this.workers?.sync();
        this.log.info({ flow: formatFlowSpec(rule), ...r }, 'flow added');
        return { added: formatFlowSpec(rule), revalidated: r };
      }
      case 'del-flow': {
        const { keep, removed, want, where } = rulesWithout(this.fpag.ruleSpecs, str('flow')!);
        if (removed === 0) throw new FpoError('FPO_ERR_USAGE', `flow: no rule has the match ${JSON.stringify(want.match)}${where}`);
        const r = this.fpag.setRules(keep);
        await this.workers?.sync();
        return { removed, revalidated: r };
      }
      case 'set-mapping': {
        const vpid = id('vpid', 1, this.dp.mapping.maxVpid);
        const ppid = id('ppid', 0, MAX_PPID);
        this.notAttaching('ppid', this.topo.ports.find((p) => p.ppid === ppid)?.name);
        this.changeState((commit) => this.fpag.setMapping(vpid, ppid, commit));
        await this.workers?.sync();
        return { vpid, ppid };
      }
      case 'migrate': {
        const name = str('interface')!;
        const away = args.away === true;
        const to = away ? null : str('to')!;
        const newVpid = args.newVpid === undefined ? undefined : id('newVpid', 1, this.dp.mapping.maxVpid);
        if (to !== null) this.notAttaching('to', to);
        const r = this.changeState((commit) => this.fpag.migrate(name, to, newVpid, commit));
        // Answered once every worker switches by the new mapping.
        await this.workers?.sync();
        this.log.info({ interface: name, to, ...r }, 'migrated');
        return { interface: name, to, ...r };
      }
      case 'trace':
        return this.trace(str('packet')!);
      case 'conntrack':
        return this.conntrackCmd(args);
      case 'firewall':
        return this.firewallCmd(args);
      case 'dirty-log':
        return this.dirtyLogCmd(args);
      case 'migrate-vm':
        return this.migrateVm(args);
      case 'attach':
        return this.attach(args);
      case 'bfd':
        return { sessions: (await this.monitor?.describe()) ?? [] };
      case 'inject':
        throw new FpoError('FPO_ERR_USAGE', 'inject: takes the capture\'s bytes over the control socket (see service.ts)');
      default:
        throw new FpoError('FPO_ERR_USAGE', `cmd: unknown command "${cmd}"; expected one of ${COMMANDS.join(', ')}`);
    }
  }

  /** Removes the socket file if it is still the one this service made. */
  private unlinkOwnSocket(): void {
    if (!this.socketId) return;
    try {
      const st = lstatSync(this.opts.socket);
      if (st.isSocket() && st.dev === this.socketId.dev && st.ino === this.socketId.ino) unlinkSync(this.opts.socket);
    } catch {
      // Gone already: nothing to remove.
    }
  }

  show(): unknown {
    const m = this.dp.mapping;
    return {
      ports: this.topo.ports.map((p) => ({ name: p.name, ppid: p.ppid, role: p.role, vpid: m.toVpid[p.ppid], attached: m.toVpid[p.ppid] >= 0 ? this.fpag.vpidName(m.toVpid[p.ppid]) : null })),
      interfaces: this.topo.interfaces.map((i) => ({ name: i.name, node: i.node, mac: i.mac, ip: i.ip ?? null, segment: i.segment, vpid: i.vpid, ppid: m.toPpid[i.vpid], port: i.port ?? null, ...(this.fpag.remoteHostOf(i.name) !== null ? { behind: this.fpag.remoteHostOf(i.name) } : {}) })),
      segments: this.topo.segments,
      hosts: [{ name: this.topo.name, vtep: this.topo.tunnel?.vtep ?? null }, ...(this.topo.tunnel?.remotes ?? []).map((r) => ({ name: r.name, vtep: r.vtep, via: r.uplink, interfaces: this.fpag.remoteInterfacesOf(r.name) }))],
      rules: this.fpag.ruleSpecs.map((r) => formatFlowSpec(r)),
      ...(this.directory !== null ? { directory: this.directoryState() } : {}),
    };
  }

  /** The etcd directory as this host sees it (show, stats): connected, the revision it is at, what it refused. */
  private directoryState(): unknown {
    const d = this.directory!;
    return {
      etcd: this.opts.etcd, deployment: d.deployment, connected: d.connected, lostAt: d.lostAt, lastError: d.lastError, revision: d.revision, changesApplied: d.applied,
      hosts: d.hosts.size, interfaces: d.interfaces.size, refused: [...d.refused].map(([key, why]) => ({ key, why })),
      conflicts: [...this.directoryConflicts].map(([name, why]) => ({ name, why })),
      host: this.me, published: [...d.published.keys()], registrations: d.registrations, reregistered: Math.max(0, d.registrations - 1), movedAway: this.directoryMoves,
    };
  }

  private directoryCounters(): import('./metrics.js').DirectoryCounters | null {
    const d = this.directory;
    if (d === null) return null;
    const remote = [...d.interfaces.values()].filter((i) => i.host !== this.me).length;
    return { connected: d.connected, revision: d.revision, changesApplied: d.applied, hosts: d.hosts.size, interfaces: d.interfaces.size, remoteInterfaces: remote, refused: d.refused.size + this.directoryConflicts.size, registrations: d.registrations, movedAway: this.directoryMoves };
  }

  /** Each live port's own counters: how it moves frames, what the kernel dropped before fpo, what it sent and could not send. */
  liveCounters(): { port: string; ppid: number; device: string; mode: string; rxMissed: number; txSent: number; txRingFull: number; txErrors: number }[] {
    return this.liveRows.map(({ port, name, ppid }) => ({ port: name, ppid, device: port.name, mode: port.mode, rxMissed: port.rxMissed, txSent: port.txPackets, txRingFull: port.txRingFull, txErrors: port.txErrors }));
  }

  /** stats over the workers: each one's counters summed, flows by the shadow's ids, and each worker's health. */
  private async workersStats(): Promise<{ perFlow: unknown[] } & Record<string, unknown>> {
    const all = await this.workers!.stats();
    const sum = (f: (s: DatapathStats) => number) => all.reduce((n, w) => n + f(w.dp), 0);
    const drops: Record<string, number> = {};
    for (const w of all) for (const [k, v] of Object.entries(w.dp.drops)) drops[k] = (drops[k] ?? 0) + (v ?? 0);
    const m = this.dp.mapping;
    const ports = this.topo.ports.map((p) => {
      const row = { name: p.name, ppid: p.ppid, vpid: m.toVpid[p.ppid], rxPackets: 0, rxBytes: 0, txPackets: 0, txBytes: 0 };
      for (const w of all) {
        const q = w.dp.ports.find((x) => x.ppid === p.ppid);
        if (q) { row.rxPackets += q.rxPackets; row.rxBytes += q.rxBytes; row.txPackets += q.txPackets; row.txBytes += q.txBytes; }
      }
      return row;
    });
    const live = this.topo.ports.map((p) => {
      const row = { port: p.name, ppid: p.ppid, device: p.device, mode: '', rxMissed: 0, txSent: 0, txRingFull: 0, txErrors: 0 };
      for (const w of all) {
        const l = w.live.find((x) => x.ppid === p.ppid);
        if (l) { row.mode = l.mode; row.rxMissed += l.rxMissed; row.txSent += l.txSent; row.txRingFull += l.txRingFull; row.txErrors += l.txErrors; }
      }
      return row;
    });
    const perId = new Map<number, [number, number]>();
    for (const w of all) for (const [id, pk, by] of w.flows) {
      const c = perId.get(id) ?? [0, 0];
      perId.set(id, [c[0] + pk, c[1] + by]);
    }
    const ids = this.dp.dumpFlows().map((f) => f.id);
    const perFlow = flowReport(this.dp, this.fpag).map((f, i) => ({ ...f, packets: perId.get(ids[i])?.[0] ?? 0, bytes: perId.get(ids[i])?.[1] ?? 0 }));
    return {
      packets: { in: sum((s) => s.packetsIn), out: sum((s) => s.delivered), dropped: sum((s) => s.dropped), copies: sum((s) => s.copies), special: sum((s) => s.special) },
      conntrack: { packets: sum((s) => s.ctPackets) },
      drops,
      ports,
      live,
      flows: { installed: this.dp.stats().flowsInstalled, active: this.dp.flows.count, evicted: sum((s) => s.flowsEvicted), expired: 0, upcalls: this.workers!.upcalls, emcHits: sum((s) => s.emcHits), megaflowHits: sum((s) => s.megaflowHits) },
      perFlow,
      migrations: this.fpag.migrations,
      flowRewrites: this.fpag.flowRewrites,
      control: { requests: this.requests, refused: this.badRequests, clients: this.conns.size, clientsRefused: this.clientsRefused },
      workers: this.workers!.health().map((h, i) => ({ ...h, packetsIn: all[i].dp.packetsIn })),
    };
  }

  stats(): unknown {
    const st = this.dp.stats();
    return {
      packets: { in: st.packetsIn, out: st.delivered, dropped: st.dropped, copies: st.copies, special: st.special },
      drops: st.drops,
      conntrack: { packets: st.ctPackets, connections: this.dp.hasConntrack ? this.dp.conntrack.count : 0, capacity: this.dp.hasConntrack ? this.dp.conntrack.capacity : 0, ...(this.dp.hasConntrack ? this.dp.conntrack.stats : {}) },
      ports: st.ports.map((p) => ({ name: this.fpag.portOf(p.ppid)?.name, ...p })),
      live: this.liveCounters(),
      // VF ports: frames the VF wrote into the guest, and those it did not, by reason (a port's own counters, as a NIC's
      // rx_missed: beside in = out + dropped, which counts them delivered to the port).
      vf: [...this.vfs.entries()].map(([port, v]) => ({ port, written: v.vf.completed, noDescriptor: v.vf.rxNoDescriptor, notReady: v.vf.rxNotReady, paused: v.vf.rxPaused, tooLong: v.vf.rxTooLong, badBuffer: v.vf.rxBadBuffer, badQueue: v.vf.rxBadQueue, guest: v.guest !== null })),
      flows: { installed: st.flowsInstalled, active: st.flowsNow, evicted: st.flowsEvicted, expired: st.flowsExpired, upcalls: st.upcalls, emcHits: st.emcHits, megaflowHits: st.megaflowHits },
      perFlow: flowReport(this.dp, this.fpag),
      migrations: this.fpag.migrations,
      flowRewrites: this.fpag.flowRewrites,
      control: { requests: this.requests, refused: this.badRequests, clients: this.conns.size, clientsRefused: this.clientsRefused },
      captures: { running: this.captures.running, started: this.captures.started, refused: this.captures.refused },
      ...(this.handovers.length ? { offload: { offloaded: this.dp.offload.active, ...this.dp.offload.stats, serviceVms: this.handovers.map((h) => h.describe()) } } : {}),
    };
  }

  private stopHandOvers(): void {
    if (this.handbackTimer !== null) clearInterval(this.handbackTimer);
    this.handbackTimer = null;
    for (const h of this.handovers) h.stop();
  }

  /**
   * fpo ctl migrate-vm IFACE --to HOST:PORT --dest-port PORT [--no-vf-log]
   * (issue 21): the interface's VM — its VF port's guest memory — moves to
   * the fpo host listening at HOST:PORT (fpo run --migrate-listen), onto its
   * vf port destPort: iterative pre-copy over the connection while the VM
   * runs and traffic flows (precopy.ts), the stop-and-copy, the VM resumed
   * there (its VPID mapped to that port there: one mapping update); here the
   * VM's guest stops, its VF stays paused (frames counted), and the
   * interface goes away (its VPID unmapped). The answer: rounds, pages,
   * downtime, and both sides' SHA-256 of the memory at the switch (equal:
   * the copy is exact). --no-vf-log migrates with the CPU-side log alone
   * (for comparison: what the VF wrote meanwhile is missed).
   */
  private async migrateVm(args: Record<string, unknown>): Promise<unknown> {
    const name = args.interface;
    if (typeof name !== 'string' || name.length === 0 || name.length > 256) throw new FpoError('FPO_ERR_USAGE', 'interface: expected an interface name');
    const itf = this.topo.interfaces.find((i) => i.name === name);
    if (itf === undefined) throw new FpoError('FPO_ERR_USAGE', `interface: no interface named "${name.slice(0, 80)}"`);
    const e = itf.port !== undefined ? this.vfs.get(itf.port) : undefined;
    if (e === undefined || e.guest === null) throw new FpoError('FPO_ERR_USAGE', `interface: ${name} is not a running VM on a vf port of this host`);
    const to = args.to;
    if (typeof to !== 'string' || !/^[0-9a-fA-F:.]+:\d{1,5}$/.test(to)) throw new FpoError('FPO_ERR_USAGE', 'to: expected HOST:PORT (the destination\'s --migrate-listen)');
    const destPort = args.destPort;
    if (typeof destPort !== 'string' || destPort.length === 0 || destPort.length > 256) throw new FpoError('FPO_ERR_USAGE', 'destPort: expected the destination\'s vf port');
    if (args.vfLog !== undefined && typeof args.vfLog !== 'boolean') throw new FpoError('FPO_ERR_USAGE', 'vfLog: expected true or false');
    if (args.remote !== undefined) {
      const remotes = this.topo.tunnel?.remotes ?? [];
      if (typeof args.remote !== 'string' || !remotes.some((x) => x.name === args.remote)) throw new FpoError('FPO_ERR_USAGE', `remote: expected a remote host of this host's tunnel (${remotes.map((x) => x.name).join(', ') || 'none'})`);
    }
    const i = to.lastIndexOf(':');
    const sock = netConnect({ host: to.slice(0, i), port: Number(to.slice(i + 1)) });
    const reader = new FrameReader();
    const frames: Frame[] = [];
    let waiting: (() => void) | null = null;
    let failed: Error | null = null;
    sock.on('data', (d) => {
      try { frames.push(...reader.push(d)); } catch (x) { failed = x as Error; sock.destroy(); }
      waiting?.();
    });
    sock.on('error', (x) => { failed = x; waiting?.(); });
    sock.on('close', () => { failed ??= new Error('the destination closed the connection'); waiting?.(); });
    const next = async (): Promise<Frame> => {
      for (;;) {
        const f = frames.shift();
        if (f !== undefined) {
          if (f.type === T_ERROR) throw new FpoError('FPO_ERR_USAGE', `migrate-vm: the destination refused: ${String((f as { json: Record<string, unknown> }).json.message).slice(0, 300)}`);
          return f;
        }
        if (failed !== null) throw new FpoError('FPO_ERR_IO', `migrate-vm: ${to}: ${(failed as Error).message}`);
        await new Promise<void>((r) => { waiting = r; });
        waiting = null;
      }
    };
    await new Promise<void>((resolve, reject) => { sock.once('connect', () => resolve()); sock.once('error', reject); }).catch((x: Error) => { throw new FpoError('FPO_ERR_IO', `migrate-vm: cannot connect to ${to}: ${x.message}`); });
    try {
      sock.write(jsonFrame(T_HELLO, { interface: name, destPort, size: e.size, vpid: itf.vpid }));
      const acc = await next();
      if (acc.type !== T_ACCEPT) throw new FpoError('FPO_ERR_BAD_INPUT', `migrate-vm: expected ACCEPT, got frame type ${acc.type}`);
      const sink = async (pages: Uint32Array, n: number, src: GuestMemory) => {
        if (!sock.write(pagesFrame(pages, n, src.bytes, src.base))) await new Promise((r) => sock.once('drain', r));
        if (failed !== null) throw new FpoError('FPO_ERR_IO', `migrate-vm: ${to}: ${(failed as Error).message}`);
      };
      const report = await precopy({ src: e.mem, sink, cpu: e.cpu, vf: args.vfLog === false ? null : { port: e.vf, pf: e.pf }, vfPort: e.vf, guest: e.guest, maxRounds: 30, smallPages: 256, chunk: 512 });
      const sourceSha256 = createHash('sha256').update(e.mem.bytes.subarray(e.mem.base, e.mem.base + e.size)).digest('hex');
      sock.write(jsonFrame(T_FINAL, {}));
      const done = await next();
      if (done.type !== T_DONE) throw new FpoError('FPO_ERR_BAD_INPUT', `migrate-vm: expected DONE, got frame type ${done.type}`);
      const dj = (done as { json: Record<string, unknown> }).json;
      // The VM runs there now: here its guest stops, its VF stays paused, its interface goes away.
      await e.guest.stop();
      e.guest = null;
      // Its interface away: behind the destination's host on the tunnel when `remote` names it (flows revalidated
      // into tunnel outputs), else unmapped here.
      // With a directory, the destination's transaction moved it: behind that host here too, now (the watch would, a moment later).
      const dirHost = this.directory !== null && typeof dj.host === 'string' ? this.directory.hosts.get(dj.host) : undefined;
      if (dirHost !== undefined) { this.fpag.addRemoteHost(dirHost); this.directory!.forget(name); }
      const remote = dirHost?.name ?? args.remote;
      // (The watch may have done it already: then it is behind that host.)
      const r = dirHost !== undefined && !this.fpag.isLocal(name) ? { vpid: itf.vpid, remote: this.fpag.remoteHostOf(name), flowRewrites: 0 }
        : this.changeState((commit) => (typeof remote === 'string' ? this.fpag.moveToRemote(name, remote, commit) : this.fpag.migrate(name, null, undefined, commit)));
      this.log.info({ interface: name, to, rounds: report.rounds.length, downtimeMs: report.downtimeMs }, 'VM migrated');
      return { interface: name, to, destPort, vfLog: args.vfLog !== false, ...report, sourceSha256, destination: dj, exact: dj.sha256 === sourceSha256, sourceMapping: r };
    } catch (x) {
      // Not moved: the VM goes on here.
      e.vf.paused = false;
      if (e.guest !== null) e.guest.resume();
      throw x;
    } finally {
      sock.destroy();
    }
  }

  /** fpo run --migrate-listen: one incoming migration at a time (migrateVm's other end). */
  private migrationIn(sock: Socket): void {
    const reader = new FrameReader();
    let e: VfEntry | undefined;
    let iface = '';
    let port = '';
    let srcVpid = -1;
    const fail = (message: string) => {
      if (e !== undefined) e.vf.paused = false;
      sock.end(jsonFrame(T_ERROR, { message }));
      e = undefined;
    };
    sock.on('error', () => undefined);
    sock.on('data', (d) => {
      let frames: Frame[];
      try { frames = reader.push(d); } catch (x) { fail((x as Error).message); sock.destroy(); return; }
      for (const f of frames) {
        if (f.type === T_HELLO) {
          const j = f.json;
          if (e !== undefined) return fail('HELLO twice');
          if (typeof j.interface !== 'string' || typeof j.destPort !== 'string' || typeof j.size !== 'number') return fail('HELLO: expected {interface, destPort, size}');
          const v = this.vfs.get(j.destPort);
          if (v === undefined) return fail(`destPort: "${j.destPort.slice(0, 80)}" is no vf port here (${[...this.vfs.keys()].join(', ') || 'none'})`);
          if (v.size !== j.size) return fail(`size: ${j.size} bytes, the port's guest memory has ${v.size}`);
          if (v.guest !== null) return fail(`destPort: a VM runs on ${j.destPort} here`);
          if (this.migrating.has(j.destPort)) return fail(`destPort: a migration to ${j.destPort} is under way`);
          const inDirectory = this.directory?.interfaces.get(j.interface);
          if (!this.topo.interfaces.some((x) => x.name === j.interface) && inDirectory === undefined) return fail(`interface: no interface named "${j.interface.slice(0, 80)}" in this host's topology${this.directory !== null ? ' or the directory' : ''}`);
          if (this.directory !== null && inDirectory !== undefined) {
            try { this.fpag.checkArrive({ name: inDirectory.name, mac: inDirectory.mac, segment: inDirectory.segment }, j.destPort, inDirectory.vpid); } catch (x) { return fail((x as Error).message); }
          }
          e = v;
          iface = j.interface;
          srcVpid = typeof j.vpid === 'number' ? j.vpid : -1;
          port = j.destPort;
          this.migrating.add(port);
          e.vf.paused = true; // nothing is written into the memory while it arrives
          sock.write(jsonFrame(T_ACCEPT, {}));
        } else if (f.type === T_PAGES) {
          if (e === undefined) return fail('PAGES before HELLO');
          const m = e.mem;
          for (let k = 0, o = 0; k < f.n; k++, o += 4 + PAGE_SIZE) {
            const p = f.body.readUInt32LE(o);
            if (p >= m.pages) { this.migrating.delete(port); return fail(`PAGES: page ${p} past the memory's ${m.pages}`); }
            m.bytes.set(f.body.subarray(o + 4, o + 4 + PAGE_SIZE), m.base + p * PAGE_SIZE);
          }
        } else if (f.type === T_FINAL) {
          if (e === undefined) return fail('FINAL before HELLO');
          const v = e;
          e = undefined;
          void this.migrationArrived(sock, v, iface, port, srcVpid).catch((x: Error) => {
            v.vf.paused = false;
            this.migrating.delete(port);
            sock.end(jsonFrame(T_ERROR, { message: x.message }));
          });
        } else return fail(`frame type ${f.type} not expected here`);
      }
    });
    sock.on('close', () => { if (e !== undefined) { e.vf.paused = false; this.migrating.delete(port); } });
  }

  private readonly migrating = new Set<string>();
  /**
   * Ports an attach is taking (port → interface), from its checks till it
   * ends: a local migrate or set-mapping onto one is refused meanwhile. (One
   * had taken the port while etcd answered: the attach, committed there,
   * failed here and was undone, and the VM's old host, which had let it go
   * on the first write, never took it back.)
   */
  private readonly attaching = new Map<string, string>();

  /** Throws FPO_ERR_USAGE (naming `field`) when an attach is taking `port`. */
  private notAttaching(field: string, port: string | undefined): void {
    const by = port === undefined ? undefined : this.attaching.get(port);
    if (by !== undefined) throw new FpoError('FPO_ERR_USAGE', `${field}: ${port} is being taken by the attach of ${by}; try again when it ends`);
  }

  /**
   * A migration's end here (FINAL): the memory is whole (its SHA-256 sent
   * back); with a directory, one etcd transaction makes the VM this host's
   * (refused — the VM goes on at the source — when its entry changed
   * meanwhile), then its VPID is mapped to the port; the VM's guest starts.
   */
  private async migrationArrived(sock: Socket, v: VfEntry, iface: string, port: string, srcVpid: number): Promise<void> {
    const sha256 = createHash('sha256').update(v.mem.bytes.subarray(v.mem.base, v.mem.base + v.size)).digest('hex');
    let mapping: unknown = null;
    const dir = this.directory;
    const known = dir?.interfaces.get(iface);
    if (dir !== null && known !== undefined) {
      const entry = { ...known, host: this.me };
      const spec = { name: known.name, mac: known.mac, ...(known.ips[0] !== undefined ? { ip: known.ips[0] } : {}), segment: known.segment };
      mapping = await this.directorySerial(async () => {
        this.fpag.checkArrive(spec, port, known.vpid);
        const w = await dir.arrive(entry);
        if (!w.ok) throw new Error(`interface: ${iface} changed in the directory during the migration; the VM stays at the source`);
        try {
          return this.changeState((commit) => this.fpag.arrive(spec, port, known.vpid, commit));
        } catch (x) {
          await w.undo(); // etcd as it was: the source keeps the VM
          throw x;
        }
      });
    } else {
      try {
        mapping = this.changeState((commit) => this.fpag.migrate(iface, port, undefined, commit));
      } catch (x) {
        mapping = { error: (x as Error).message };
      }
    }
    v.vf.resync();
    v.vf.paused = false;
    if (v.guestSpec !== null) v.guest = startGuest(v);
    this.migrating.delete(port);
    this.log.info({ interface: iface, port }, 'VM arrived');
    const vpid = this.topo.interfaces.find((x) => x.name === iface)?.vpid ?? -1;
    sock.end(jsonFrame(T_DONE, { sha256, interface: iface, port, mapping, guestStarted: v.guest !== null, vpid, sameVpid: vpid === srcVpid, ...(dir !== null ? { host: this.me } : {}) }));
  }

  /**
   * fpo run --etcd (issue 22): registers this host in the directory under a
   * lease (kept alive), publishes its VM interfaces and segments, reads the
   * rest, and follows the changes: another host's VM becomes a remote
   * interface here (behind that host's tunnel), one that leaves — or whose
   * host's lease expires — is forgotten; flows are revalidated, not flushed.
   */
  private async joinDirectory(): Promise<void> {
    const t = this.topo.tunnel;
    if (!t) throw new FpoError('FPO_ERR_USAGE', '--etcd: the topology needs a tunnel section (this host\'s vtep and underlay MAC)');
    const me = this.opts.host ?? this.topo.name;
    this.me = me;
    const dir = new Directory(this.opts.etcd!.split(','), this.opts.deployment ?? 'fpo');
    this.directory = dir;
    const claims = new VpidClaims(dir.etcd, dir.deployment);
    this.vpidClaims = claims;
    // Bounded: a member that takes connections and answers nothing had held the start for ever (etcd3 waits
    // without a deadline). Given up, the join's later steps change nothing here (`live`): the service is not
    // started, and what etcd takes meanwhile is under this host's lease (gone with it) or a VPID claim that
    // the next start takes again.
    let gaveUp = false;
    const live = () => { if (gaveUp) throw new FpoError('FPO_ERR_IO', 'given up'); };
    const add = (name: string) => {
      const i = dir.interfaces.get(name);
      if (i === undefined || i.host === me) return;
      const h = dir.hosts.get(i.host);
      if (h === undefined) return;
      this.fpag.addRemoteHost(h);
      if (this.fpag.isLocal(name)) {
        // Ours, and it runs on that host now (moved there: attach, migrate-vm): unmapped here, behind that host's tunnel.
        const r = this.changeState((commit) => this.fpag.moveToRemote(name, h.name, commit));
        dir.forget(name);
        this.directoryMoves++;
        this.log.info({ interface: name, host: h.name, flowRewrites: r.flowRewrites }, 'directory: our VM runs on another host now');
        return;
      }
      if (this.fpag.remoteHostOf(name) === h.name && this.fpag.remoteMacOf(name) === i.mac) return;
      const why = this.fpag.remoteConflict(h.name, i);
      if (why !== null) {
        // Not taken: reported (show, metrics as refused), the endpoint that has it keeps its traffic.
        this.directoryConflicts.set(name, why);
        this.log.warn({ interface: name, why }, 'directory: remote interface not taken');
        return;
      }
      this.directoryConflicts.delete(name);
      this.fpag.addRemoteInterface(h.name, i);
    };
    const join = async () => {
      try {
        await dir.registerHost({ name: me, vtep: t.vtep, mac: t.mac.toLowerCase(), kind: t.kind }, 5);
        live();
        for (const s of this.topo.segments) if (s.vni !== undefined) await dir.putSegment({ name: s.name, vni: s.vni });
        // Each interface keeps the VPID etcd has for it (one new to the deployment claims one: its own if free).
        const uplinkVpids = new Set(this.topo.ports.filter((p) => p.role === 'uplink').map((p) => p.vpid));
        const want = new Map<string, number>();
        for (const i of this.topo.interfaces) want.set(i.name, (await claims.claim(i.name, i.vpid, (v) => uplinkVpids.has(v))).vpid);
        live();
        this.renumber(want);
        await dir.load();
        live();
        for (const i of this.topo.interfaces) {
          // One of ours that runs on another (live) host now stays there: it is a remote interface here (below).
          const there = dir.interfaces.get(i.name);
          if (there !== undefined && there.host !== me && dir.hosts.has(there.host)) continue;
          const arrived = await dir.arrive({ name: i.name, mac: i.mac, ips: i.ip ? [i.ip] : [], segment: i.segment, host: me, vpid: i.vpid });
          live();
          if (!arrived.ok) this.log.warn({ interface: i.name }, 'directory: the interface changed in etcd as it was published; left as etcd has it');
        }
      } catch (e) {
        throw new FpoError('FPO_ERR_IO', `--etcd ${this.opts.etcd}: ${(e as Error).message}`);
      }
      for (const name of dir.interfaces.keys()) add(name);
      await dir.watch((c) => {
        if (gaveUp) return;
        if (c.type === 'put' && c.entry.kind === 'interface') add(c.entry.value.name);
        else if (c.type === 'put' && c.entry.kind === 'host') { for (const [n, i] of dir.interfaces) if (i.host === c.entry.value.name) add(n); }
        else if (c.type === 'delete' && c.kind === 'interfaces') { this.directoryConflicts.delete(c.name); this.fpag.removeRemoteInterface(c.name); }
        else if (c.type === 'delete' && c.kind === 'hosts') for (const n of this.fpag.remoteInterfacesOf(c.name)) this.fpag.removeRemoteInterface(n);
        this.log.info({ change: c.type }, 'directory');
      });
    };
    const joined = join();
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        gaveUp = true;
        reject(new FpoError('FPO_ERR_IO', `--etcd ${this.opts.etcd}: etcd did not answer within ${JOIN_MS / 1000} s (a member that takes connections and answers nothing?); not started`));
      }, JOIN_MS);
    });
    joined.catch(() => undefined); // (given up, its own end comes later: nothing to say of it)
    try {
      await Promise.race([joined, deadline]);
    } finally {
      clearTimeout(timer);
    }
    this.log.info({ etcd: this.opts.etcd, host: me, remotes: [...dir.interfaces.values()].filter((i) => i.host !== me).length }, 'directory joined');
  }

  /** Remote interfaces the directory has that this host did not take, and why (a MAC in use here, say). */
  private readonly directoryConflicts = new Map<string, string>();

  /** VMs of this host that the directory moved to another host (the watch saw them go). */
  private directoryMoves = 0;

  /**
   * Gives interfaces the VPIDs of `want` (those etcd keeps for them): in two
   * steps — each changing one to a VPID free here first, then to its own —
   * so that two that trade VPIDs never meet on one. Each step is a
   * persisted change (the state file follows).
   */
  private renumber(want: Map<string, number>): void {
    const changing = this.topo.interfaces.filter((i) => want.has(i.name) && want.get(i.name) !== i.vpid);
    if (changing.length === 0) return;
    const taken = new Set<number>([...this.topo.interfaces.map((i) => i.vpid), ...want.values(), ...this.topo.ports.map((p) => p.vpid)]);
    let free = VPID_MAX;
    for (const i of changing) {
      while (taken.has(free)) free--;
      taken.add(free);
      this.changeState((commit) => this.fpag.migrate(i.name, i.port ?? null, free, commit));
    }
    for (const i of changing) this.changeState((commit) => this.fpag.migrate(i.name, i.port ?? null, want.get(i.name)!, commit));
    this.log.info({ renumbered: changing.map((i) => `${i.name}=${i.vpid}`) }, 'directory: VPIDs as etcd keeps them');
  }

  /**
   * fpo ctl attach IFACE --port PORT [--mac MAC --segment SEG [--ip IP]]
   * (fpo run --etcd): the VM interface runs on PORT of this host now — moved
   * here from another host (its VM's traffic now comes in on PORT), or new
   * (then its MAC and segment are given). Checked here first; then one etcd
   * transaction makes the entry this host's (only if it is still as read:
   * of two hosts taking one VM, one wins); then the VPID etcd keeps for it is
   * mapped to the port. Its old host, watching, turns it into a remote
   * interface behind this host; every other host re-points its tunnel.
   */
  private async attach(args: Record<string, unknown>): Promise<unknown> {
    const dir = this.directory;
    if (dir === null || this.vpidClaims === null) throw new FpoError('FPO_ERR_USAGE', 'attach: this host runs without a directory (fpo run --etcd)');
    const name = args.interface;
    if (typeof name !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/.test(name)) throw new FpoError('FPO_ERR_USAGE', 'interface: expected a name of 1 to 63 letters, digits, _ . -');
    const port = args.port;
    if (typeof port !== 'string' || port.length === 0 || port.length > 256) throw new FpoError('FPO_ERR_USAGE', 'port: expected a VM port of this host');
    for (const k of ['mac', 'segment', 'ip'] as const) if (args[k] !== undefined && typeof args[k] !== 'string') throw new FpoError('FPO_ERR_USAGE', `${k}: expected a string`);
    const claims = this.vpidClaims;
    // One attach (or arrival) at a time: what is checked here still holds when it is applied.
    return this.directorySerial(async () => {
      const known = dir.interfaces.get(name);
      const local = this.topo.interfaces.find((i) => i.name === name);
      const mac = (args.mac as string | undefined)?.toLowerCase() ?? known?.mac ?? local?.mac;
      const segment = (args.segment as string | undefined) ?? known?.segment ?? local?.segment;
      const ips = args.ip !== undefined ? [args.ip as string] : known?.ips ?? (local?.ip !== undefined ? [local.ip] : []);
      if (mac === undefined || segment === undefined) throw new FpoError('FPO_ERR_USAGE', `interface: ${name} is not in the directory; give its --mac and --segment`);
      if (known !== undefined && (mac !== known.mac || segment !== known.segment || (args.ip !== undefined && !known.ips.includes(args.ip as string)))) {
        throw new FpoError('FPO_ERR_USAGE', `interface: ${name} is in the directory as ${known.mac} on ${known.segment}${known.ips.length ? ` with ${known.ips.join(', ')}` : ''}; a moved VM keeps its MAC, segment and addresses`);
      }
      // The entry as it will be: checked as every host will check it.
      try {
        InterfaceEntry({ name, mac, ips, segment, host: this.me, vpid: 1 }, []);
      } catch (e) {
        if (e instanceof CheckError) throw new FpoError('FPO_ERR_USAGE', `${formatPath(e.path)}: ${e.message}`);
        throw e;
      }
      const from = known?.host ?? null;
      if (from === this.me && this.fpag.isLocal(name) && local?.port === port) return { interface: name, port, vpid: local.vpid, from, moved: false };
      if (this.migrating.has(port)) throw new FpoError('FPO_ERR_USAGE', `port: a migration into ${port} is under way`);
      const uplinkVpids = new Set(this.topo.ports.filter((p) => p.role === 'uplink').map((p) => p.vpid));
      const spec = { name, mac, ...(ips[0] !== undefined ? { ip: ips[0] } : {}), segment };
      // Checked before anything is written (the port, the segment, the MAC here; then the VPID).
      this.fpag.checkArrive(spec, port, null);
      let claim: { vpid: number; claimed: boolean } | null = null;
      let taken = false; // the etcd entry was written (or another host holds it): the claim is the VM's
      let done = false;
      this.attaching.set(port, name);
      try {
        claim = await claims.claim(name, known?.vpid ?? local?.vpid ?? 0, (v) => uplinkVpids.has(v));
        const vpid = claim.vpid;
        this.fpag.checkArrive(spec, port, vpid);
        const w = await dir.arrive({ name, mac, ips, segment, host: this.me, vpid });
        taken = true;
        if (!w.ok) throw new FpoError('FPO_ERR_USAGE', `interface: ${name} changed in the directory as it was taken (another host took it?); nothing changed here — try again`);
        let r: { flowRewrites: number };
        try {
          r = this.changeState((commit) => this.fpag.arrive(spec, port, vpid, commit));
        } catch (x) {
          // Applying failed after etcd took it (the port changed meanwhile): etcd is put back as it was.
          await w.undo();
          taken = known !== undefined;
          throw x;
        }
        done = true;
        this.log.info({ interface: name, port, vpid, from }, 'VM attached');
        return { interface: name, port, vpid, vpidClaimed: claim.claimed, from, moved: from !== null && from !== this.me, flowRewrites: r.flowRewrites };
      } finally {
        this.attaching.delete(port);
        // Refused: a claim made for it goes too — unless the VM is in etcd (then the VPID is its, whoever holds it).
        if (!done && claim?.claimed && !taken) await claims.release(name).catch(() => undefined);
      }
    });
  }

  /** Runs directory changes of this host one at a time (attach, a migration's arrival). */
  private directorySerial<T>(f: () => Promise<T>): Promise<T> {
    // (etcd out of reach is said as such: Directory.explain.)
    const g = () => f().catch((e: unknown) => { throw this.directory?.explain(e) ?? e; });
    const p = this.directoryChain.then(g, g);
    this.directoryChain = p.catch(() => undefined);
    return p;
  }

  private directoryChain: Promise<unknown> = Promise.resolve();

  /**
   * fpo ctl dirty-log start|stop|read-and-clear|status PORT (issue 21): the
   * hypervisor's dirty-page log of a VF port's guest memory. start: the
   * VF's completion signal goes to the PF driver, which marks the pages its
   * DMA wrote (buffers, descriptors) in a bitmap of the guest's pages;
   * read-and-clear: the dirty pages as ranges [first, last], cleared.
   */
  private dirtyLogCmd(args: Record<string, unknown>): unknown {
    const action = args.action;
    if (action !== 'start' && action !== 'stop' && action !== 'read-and-clear' && action !== 'status') throw new FpoError('FPO_ERR_USAGE', `action: expected start, stop, read-and-clear or status, got ${JSON.stringify(action)?.slice(0, 40)}`);
    const name = args.port;
    if (typeof name !== 'string' || name.length === 0 || name.length > 256) throw new FpoError('FPO_ERR_USAGE', 'port: expected a vf port\'s name');
    const v = this.vfs.get(name);
    if (v === undefined) throw new FpoError('FPO_ERR_USAGE', `port: "${name.slice(0, 80)}" is no vf port (${[...this.vfs.keys()].join(', ') || 'none'})`);
    const describe = (extra: Record<string, unknown> = {}) => ({
      port: name, memoryFile: v.file, pages: v.mem.pages, logging: v.vf.onCompletion !== null,
      vf: { completed: v.vf.completed, rxNoDescriptor: v.vf.rxNoDescriptor, rxNotReady: v.vf.rxNotReady, rxTooLong: v.vf.rxTooLong, rxBadBuffer: v.vf.rxBadBuffer, rxBadQueue: v.vf.rxBadQueue, rxPaused: v.vf.rxPaused },
      pf: { inspections: v.pf.inspections, writesSeen: v.pf.writesSeen }, dirtyNow: v.bitmap?.count() ?? 0, ...extra,
    });
    if (action === 'status') return describe();
    if (action === 'start') {
      if (v.vf.onCompletion === null) {
        v.bitmap ??= new DirtyBitmap(v.mem.pages);
        v.pf.startLog(v.vf, v.bitmap);
      }
      return describe();
    }
    if (action === 'stop') {
      v.pf.stopLog(v.vf);
      return describe();
    }
    if (v.bitmap === null) return describe({ dirty: [], dirtyPages: 0 });
    const out = new Uint32Array(v.mem.pages);
    const n = v.bitmap.readAndClear(out);
    const ranges: [number, number][] = [];
    for (let k = 0; k < n; k++) {
      const last = ranges[ranges.length - 1];
      if (last !== undefined && last[1] + 1 === out[k]) last[1] = out[k];
      else ranges.push([out[k], out[k]]);
    }
    return describe({ dirty: ranges, dirtyPages: n });
  }

  /**
   * fpo ctl firewall status | upgrade --to V [--ports P,…] [--max-pause MS]
   * [--restart] | upgrade --resume: the per-port firewall's versions and its
   * upgrade (control/firewall-upgrade.ts). An upgrade answers when it stops
   * (done, or a port rolled back): each port's pause, connections, packets
   * held. Refused, changing nothing, with datapath workers (each has its own
   * firewall state) or while one runs.
   */
  private async firewallCmd(args: Record<string, unknown>): Promise<unknown> {
    const action = args.action === undefined ? 'status' : args.action;
    const up = this.fpag.firewallUpgrade;
    if (action === 'status') return { ports: up.portsNow(), upgrade: up.status(), hold: this.dp.holdStats };
    if (action !== 'upgrade') throw new FpoError('FPO_ERR_USAGE', `action: expected status or upgrade, got ${JSON.stringify(action)?.slice(0, 40)}`);
    if (this.workers !== null && this.workers !== undefined) throw new FpoError('FPO_ERR_USAGE', 'firewall upgrade: not with datapath workers (each has its own firewall state)');
    if (args.resume !== undefined && typeof args.resume !== 'boolean') throw new FpoError('FPO_ERR_USAGE', 'resume: expected true or false');
    if (args.restart !== undefined && typeof args.restart !== 'boolean') throw new FpoError('FPO_ERR_USAGE', 'restart: expected true or false');
    if (args.resume === true) {
      if (args.to !== undefined || args.ports !== undefined || args.restart !== undefined) throw new FpoError('FPO_ERR_USAGE', 'resume: takes no --to, --ports or --restart (it goes on with the stopped upgrade)');
      if (args.maxPauseMs !== undefined && typeof args.maxPauseMs !== 'number') throw new FpoError('FPO_ERR_USAGE', 'maxPauseMs: expected a number of ms');
      up.resume(args.maxPauseMs as number | undefined);
    } else {
      if (typeof args.to !== 'string' || args.to.length === 0 || args.to.length > 64) throw new FpoError('FPO_ERR_USAGE', 'to: expected a firewall version, e.g. v2');
      let ports: string[] | undefined;
      if (args.ports !== undefined) {
        if (!Array.isArray(args.ports) || args.ports.length === 0 || args.ports.length > 4096 || !args.ports.every((p) => typeof p === 'string' && p.length > 0 && p.length <= 256)) throw new FpoError('FPO_ERR_USAGE', 'ports: expected a list of interface names');
        ports = args.ports as string[];
      }
      const mp = args.maxPauseMs;
      if (mp !== undefined && typeof mp !== 'number') throw new FpoError('FPO_ERR_USAGE', 'maxPauseMs: expected a number of ms');
      up.plan(args.to, ports, mp as number | undefined, args.restart === true);
    }
    const st = await up.run();
    this.log.info({ state: st.state, to: st.to, ports: st.ports.map((p) => ({ interface: p.interface, state: p.state, pauseMs: p.pauseMs, connections: p.connections, held: p.held })) }, 'firewall upgrade');
    return { ports: up.portsNow(), upgrade: st, hold: this.dp.holdStats };
  }

  /**
   * fpo ctl conntrack list|stats|flush [--port P] [--zone Z]: the connection
   * table. A port (or interface) name narrows it to the zone of the service
   * VM attached there; owner `vnic` is a connection a guest handed over
   * (offloaded while `offloaded`), `guest` one a ct action tracks.
   */
  private conntrackCmd(args: Record<string, unknown>): unknown {
    const action = args.action ?? 'list';
    if (action !== 'list' && action !== 'stats' && action !== 'flush') throw new FpoError('FPO_ERR_USAGE', `action: expected list, stats or flush, got ${JSON.stringify(action)?.slice(0, 40)}`);
    let zone: number | undefined;
    if (args.zone !== undefined) {
      const z = args.zone;
      if (typeof z !== 'number' || !Number.isInteger(z) || z < 0 || z > 65535) throw new FpoError('FPO_ERR_USAGE', `zone: expected an integer in 0..65535, got ${JSON.stringify(z)?.slice(0, 40)}`);
      zone = z;
    }
    if (args.port !== undefined) {
      const p = args.port;
      if (typeof p !== 'string' || p.length === 0 || p.length > 4096) throw new FpoError('FPO_ERR_USAGE', 'port: expected a port or interface name');
      const port = this.fpag.portNamed(p);
      const itf = this.topo.interfaces.find((x) => x.name === p || (port !== undefined && x.port === port.name));
      const o = itf === undefined ? undefined : this.topo.offload.find((x) => x.node === itf.node);
      // A service VM's port: its hand-over zone; a firewalled interface's: its firewall's zone.
      const fwZone = itf === undefined ? undefined : this.fpag.firewallZoneOf(itf.name);
      const z = o?.zone ?? fwZone;
      if (z === undefined) throw new FpoError('FPO_ERR_USAGE', `port: "${p}" is no port or interface of a service VM (a node with an offload section: ${this.topo.offload.map((x) => x.node).join(', ') || 'none'}) or of an interface with a firewall`);
      if (zone !== undefined && zone !== z) throw new FpoError('FPO_ERR_USAGE', `zone: ${zone} is not the zone of ${o !== undefined ? o.node : `${itf!.name}'s firewall`} (${z}), whose port ${p} is`);
      zone = z;
    }
    const dp = this.dp;
    const now = monotonicMs();
    // The per-port firewall's connections are its versions' (services/firewall): each version's, for the ports it serves.
    const fws = FIREWALL_VERSIONS.filter((v) => dp.firewallLoaded(v)).map((v) => ({ v, m: dp.firewall(v) }));
    const serves = (v: string, z: number) => dp.firewallVersionOf(z) === v;
    if (action === 'flush') {
      let flushed = dp.hasConntrack ? dp.conntrack.flush(zone) : 0;
      for (const { v, m } of fws) {
        if (zone !== undefined) { if (serves(v, zone)) flushed += m.forget(zone); }
        else for (const [z] of [...m.tables()]) if (serves(v, z)) flushed += m.forget(z);
      }
      const handedBack = drainHandBacks(dp, this.handovers);
      return { flushed, handedBack, zone: zone ?? 'all' };
    }
    if (action === 'stats') {
      return {
        connections: dp.hasConntrack ? dp.conntrack.count : 0,
        capacity: dp.hasConntrack ? dp.conntrack.capacity : null,
        conntrack: dp.hasConntrack ? dp.conntrack.stats : null,
        offloaded: dp.hasOffload ? dp.offload.active : 0,
        offload: dp.hasOffload ? dp.offload.stats : null,
        serviceVms: this.handovers.map((h) => h.describe()),
        firewall: Object.fromEntries(fws.map(({ v, m }) => {
          const ports = [...m.tables()].filter(([z]) => serves(v, z));
          return [v, { ports: ports.length, connections: ports.reduce((a, [, t]) => a + t.count, 0), capacityPerPort: ports[0]?.[1].capacity ?? null }];
        })),
      };
    }
    const name = (v: number) => this.fpag.vpidName(v);
    const guest = !dp.hasConntrack ? [] : dp.conntrack.list(now, zone).map((c) => {
      const route = dp.hasOffload ? dp.offload.routeOf(c.id) : null;
      return { ...c, offloaded: route !== null, ...(route !== null ? { route: { orig: name(route[0]), reply: name(route[1]) } } : {}) };
    });
    const firewalled = fws.flatMap(({ v, m }) => [...m.tables()].filter(([z]) => serves(v, z) && (zone === undefined || z === zone)).flatMap(([z, t]) => t.list(now, z).map((c) => ({ ...c, owner: 'firewall', firewall: v, offloaded: false }))));
    return { connections: [...guest, ...firewalled] };
  }

  /**
   * dump-flows' lines for the hand-over (issue 19): per service VM, the
   * connections it handed over, which the offload stage serves before any
   * flow (so no flow counts their packets): `offloaded`.
   */
  private offloadReport(): FlowReport[] {
    return this.handovers.map((h) => ({
      match: `offload(zone=${h.spec.zone},vm=${h.spec.node},eth_dst=its ${[...h.spec.inside, ...h.spec.outside].join('/')})`,
      actions: `offloaded:${h.adoptedNow} connections (served before classify: NAT, TTL, MACs, then as from the out interface; fpo ctl conntrack list --zone ${h.spec.zone})${this.handovers.length > 1 ? '; packets: every service VM\'s' : ''}`,
      packets: this.dp.hasOffload ? this.dp.offload.stats.served : 0,
      bytes: 0,
      usedSecondsAgo: 0,
    }));
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
    // table=N: the packet as a ct(table=N) recirculated it (its ct_state and ct_zone as given).
    if (spec.table) key[W_CT] = (key[W_CT] | (spec.table << 16)) >>> 0;
    const steps: string[] = [];
    steps.push(port ? `rx on port ${port.name} (ppid ${port.ppid}): ${formatMatch(key, Uint32Array.of(0xffffffff))}` : `in_port ${inName}`);
    steps.push('flag check: no tunnel header addressed to this host: fast path');
    if (this.dp.hasOffload) {
      const dst = Uint8Array.of(key[2] >>> 24, (key[2] >>> 16) & 255, (key[2] >>> 8) & 255, key[2] & 255, key[3] >>> 24, (key[3] >>> 16) & 255);
      const at = this.dp.offload.interfaceOf(dst);
      if (at !== null) {
        const vm = this.handovers.find((h) => h.spec.zone === at.zone);
        steps.push(`offload: eth_dst is service VM ${vm?.spec.node ?? '?'}'s ${this.fpag.vpidName(at.vpid)} (zone ${at.zone}): a packet of one of its ${vm?.adoptedNow ?? 0} offloaded connections is served here (offloaded: NAT, TTL, MACs, then as from the out interface); any other goes to the VM as below`);
      } else steps.push(`offload: eth_dst is no service VM's: not offloaded (${this.dp.offload.active} connections offloaded)`);
    }
    const h = keyHash(key, 0);
    const emc = this.dp.emc.lookup(key, 0, h);
    const mf = emc >= 0 ? emc : this.dp.flows.lookup(key, 0);
    if (emc >= 0) steps.push(`exact-match cache: hit, flow ${emc}`);
    else steps.push('exact-match cache: miss');
    if (emc < 0) steps.push(mf >= 0 ? `megaflow: hit, flow ${mf}` : 'megaflow: miss: the datapath would upcall to the FPAG');
    const d = this.fpag.decide(key, true);
    steps.push(`FPAG: ${d.reason}`);
    steps.push(`megaflow mask: ${formatMatch(key, d.mask)}`);
    const outs: { vpid: number; ppid: number; port: string | null; encap?: string; vlan?: string }[] = [];
    let encap: string | undefined;
    let vlan: string | undefined;
    for (const a of d.actions) {
      if (a.op === 'encap') encap = `tunnel ${a.tunnel} (${this.fpag.tunnelName(a.tunnel)}) vni ${a.vni}`;
      if (a.op === 'push_vlan') vlan = `push_vlan:${a.vid}`;
      if (a.op === 'pop_vlan') vlan = 'pop_vlan';
      if (a.op === 'flag') steps.push('flag: encapsulated copies carry the special-processing flag');
      if (a.op === 'drop') steps.push(`drop: ${DROP_NAMES[a.reason]} (${DROP[DROP_NAMES[a.reason]]})`);
      if (a.op === 'ct') steps.push(`${formatCtAction(a)}: through conntrack (zone ${a.zone}${a.commit ? ', a new connection committed' : ''})${a.table > 0 ? `, then classified again in table ${a.table} with its ct_state (trace it there with table=${a.table},ct_state=…)` : ', then the actions after it'}`);
      if (a.op === 'output') {
        const ppid = this.dp.mapping.toPpid[a.vpid];
        const tag = encap === undefined ? vlan : undefined; // an encapsulated copy ignores VLAN ops
        outs.push({ vpid: a.vpid, ppid, port: ppid >= 0 ? this.fpag.portOf(ppid)?.name ?? null : null, encap, ...(tag !== undefined ? { vlan: tag } : {}) });
        steps.push(ppid >= 0 ? `output: vpid ${a.vpid} (${this.fpag.vpidName(a.vpid)}) → ppid ${ppid} (${this.fpag.portOf(ppid)?.name})${encap ? ` after encap to ${encap}` : ''}${tag ? ` after ${tag}` : ''}` : `output: vpid ${a.vpid} (${this.fpag.vpidName(a.vpid)}) has no PPID: dropped as vpidUnmapped`);
      }
    }
    return { steps, rule: d.rule, installed: mf >= 0 ? mf : null, outputs: outs };
  }

  /**
   * Replays a capture that a client streams (its request's body) into a port
   * of the running switch, as its bytes arrive, yielding to control requests
   * between batches.
   */
  async inject(body: Body, name: string, ppid: number): Promise<unknown> {
    // The reader reads the header at once: wait for it (or for the body's end, which it then refuses).
    await body.atLeast(24);
    const reader = new CaptureReader(body);
    try {
      if (reader.format !== 'pcap' || reader.nanos || reader.interfaces[0].linktype !== LINKTYPE_ETHERNET) {
        throw new FpoError('FPO_ERR_BAD_CAPTURE', `capture: ${body.name}: inject takes a classic Ethernet pcap with µs timestamps`);
      }
      const before = this.dp.stats();
      const batch = this.batch;
      let batches = 0;
      for (;;) {
        if (reader.fill(batch, ppid) > 0) {
          this.dp.process(batch, monotonicMs()); // the service's clock, never the capture's (clock.ts)
          if (++batches % 4 === 0) await yieldToLoop();
        } else if (reader.finished) {
          break;
        } else {
          await body.more(); // the stream ran dry: wait for the client's next bytes
        }
      }
      for (const w of this.writers.values()) if (w.opened) w.flush();
      const after = this.dp.stats();
      return {
        capture: body.name, port: name, packets: { in: after.packetsIn - before.packetsIn, out: after.delivered - before.delivered, dropped: after.dropped - before.dropped },
        error: reader.error ? { code: reader.error.code, message: reader.error.message } : undefined,
      };
    } finally {
      reader.close();
    }
  }

  /**
   * Stops listening and closes every client's connection at once (an idle
   * client, or one streaming an inject, does not hold the stop up), flushes
   * the port files, saves state; returns the final counters.
   */
  async stop(): Promise<unknown> {
    this.captures.endAll();
    await this.directory?.close().catch(() => undefined);
    this.migrateServer?.close();
    for (const v of this.vfs.values()) { await v.guest?.stop(); v.guest = null; }
    for (const c of this.conns) c.destroy();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
    if (this.metricsServer) await (await import('./metrics.js')).closeMetrics(this.metricsServer);
    this.unlinkOwnSocket();
    await this.injecting;
    this.stopHandOvers();
    await this.monitor?.stop();
    await this.live.stop();
    // The workers' counters are read before they go.
    const workersFinal = this.workers ? await this.workersStats() : null;
    await this.workers?.stop();
    for (const t of this.taps) t.close();
    for (const w of this.writers.values()) w.close();
    // The counters are the run's whatever happens to the state file: a failed last write is reported beside them.
    try {
      this.saveState();
    } catch (e) {
      this.stopError = e as Error;
    } finally {
      this.store.unlock();
    }
    return workersFinal ?? this.stats();
  }

  /** Why stop() could not write the state at the end (its counters are returned all the same), if it could not. */
  stopError: Error | undefined;

  /**
   * Undoes a start that failed half-way (listen threw): closes whatever it had
   * opened — the metrics endpoint, the tunnel monitor, the live ports — and
   * gives the state back, so that the process exits with the error.
   */
  async abort(): Promise<void> {
    this.stopHandOvers();
    await this.directory?.close().catch(() => undefined);
    this.migrateServer?.close();
    for (const v of this.vfs.values()) { await v.guest?.stop(); v.guest = null; }
    if (this.metricsServer) await (await import('./metrics.js')).closeMetrics(this.metricsServer);
    await this.monitor?.stop();
    await this.live.stop();
    await this.workers?.stop();
    for (const t of this.taps) t.close();
    for (const w of this.writers.values()) w.close();
    this.store.unlock();
  }
}

// In their own module so that `fpo ctl` does not load the service (pino, prom-client, the datapath).
export { COMMANDS, defaultSocket } from './socket.js';

/** A rule's action that sets up NAT (ct(commit,nat(src=…|dst=…))). */
function natAction(a: string): boolean {
  return a.startsWith('ct(') && /nat\((src|dst)=/.test(a);
}
