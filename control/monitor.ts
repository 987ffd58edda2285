/**
 * TunnelMonitor: for each VM that uses a tunnel, a BFD session with the
 * remote host's endpoint on the VM's behalf, and a liveness channel with the
 * VM (its agent, agent.ts).
 *
 *   VM stops answering probes (misses `misses` in a row, or its channel is
 *   gone) → the BFD session goes AdminDown with diagnostic "administratively
 *   down", so the remote stops sending to a dead VM; the VM answers again →
 *   the session is brought back up.
 *   BFD session leaves Up (the tunnel died) → the VM is told {"tunnel":
 *   "down"} through the channel; back Up → {"tunnel": "up"}.
 *
 * Everything is visible in `fpo ctl bfd` and in the logs.
 *
 * The BFD endpoints run on a thread of their own (bfd/thread.ts), so a busy
 * datapath on the main thread never delays a BFD timer: this class only
 * turns sessions down and up and hears about their changes, by messages.
 */
import { connect, type Socket } from 'node:net';
import type { Logger } from 'pino';
import { BFD_PORT } from './bfd/endpoint.js';
import { DIAG, STATE } from './bfd/packet.js';
import { BfdThread, type RemoteSession } from './bfd/thread.js';
import type { AuthConfig } from './bfd/auth.js';
import { AGENT_MAX_LINE, LineReader, Liveness, type AgentRefusal } from './agent.js';

export interface MonitorSpec {
  /** The VM interface this session watches for. */
  interface: string;
  /** The VM's agent socket (the liveness channel). */
  agent: string;
  /** Local and remote BFD addresses (this host's and the remote host's underlay). */
  local: string;
  peer: string;
  txMs: number;
  rxMs: number;
  detectMult: number;
  /** Probe period of the liveness channel, and how many probes in a row unanswered mean the VM is dead. */
  probeMs: number;
  misses: number;
  /** UDP port the peer listens on (3784). */
  peerPort?: number;
  /** BFD authentication with the remote. */
  auth?: AuthConfig;
}

interface Watch {
  spec: MonitorSpec;
  session: RemoteSession;
  channel: Socket | null;
  /** Probes sent (or due and not sendable: no channel), answers taken, lines refused (agent.ts). */
  live: Liveness;
  vmAlive: boolean;
  lastTunnelEvent: string;
  log: { at: number; what: string }[];
}

export class TunnelMonitor {
  private readonly bfd = new BfdThread();
  private readonly listening = new Set<string>();
  private readonly watches: Watch[] = [];
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly specs: MonitorSpec[], private readonly log: Logger) {}

  async start(): Promise<void> {
    this.bfd.onChange = (s, from, to, why) => this.onBfd(s, from, to, why);
    for (const spec of this.specs) {
      if (!this.listening.has(spec.local)) {
        await this.bfd.listen(spec.local);
        this.listening.add(spec.local);
      }
      const session = await this.bfd.add(spec.local, spec.peer, { txUs: spec.txMs * 1000, rxUs: spec.rxMs * 1000, detectMult: spec.detectMult, auth: spec.auth }, spec.peerPort ?? BFD_PORT);
      // Until the VM answers on its channel, the session says so: AdminDown.
      session.adminDown(DIAG.administrativelyDown);
      this.watches.push({ spec, session, channel: null, live: new Liveness(), vmAlive: false, lastTunnelEvent: 'none', log: [] });
    }
    // Whether the thread got its real-time policy (it keeps the default without the privilege).
    this.log.info({ scheduling: (await this.bfd.describe()).scheduling }, 'bfd thread');
    const period = Math.min(...this.specs.map((s) => s.probeMs));
    this.timer = setInterval(() => this.probeAll(), period);
    this.probeAll();
  }

  private note(w: Watch, what: string, extra: Record<string, unknown> = {}): void {
    w.log.push({ at: Date.now(), what });
    if (w.log.length > 20) w.log.shift();
    this.log.info({ interface: w.spec.interface, peer: w.spec.peer, ...extra }, what);
  }

  private onBfd(s: RemoteSession, from: string, to: string, why: string): void {
    const w = this.watches.find((x) => x.session === s);
    if (!w) return;
    this.note(w, `bfd ${from} -> ${to}: ${why}`);
    // The tunnel's state, for the VM: only real changes, not our own AdminDown.
    if (from === 'Up' && to !== 'Up' && to !== 'AdminDown') this.tell(w, 'down', why);
    if (to === 'Up') this.tell(w, 'up', why);
  }

  private tell(w: Watch, state: 'down' | 'up', why: string): void {
    w.lastTunnelEvent = `${state}: ${why}`;
    if (w.channel && !w.channel.destroyed) w.channel.write(JSON.stringify({ type: 'tunnel', state, peer: w.spec.peer, why }) + '\n');
  }

  private connect(w: Watch): void {
    const c = connect(w.spec.agent);
    w.channel = c;
    // The guest writes into this: bounded (a line of at most AGENT_MAX_LINE), checked (Liveness.take).
    const reader = new LineReader();
    c.setEncoding('utf8');
    c.on('data', (d: string) => {
      const ok = reader.push(d, (line) => {
        const r = w.live.take(line, Date.now());
        if (r === 'alive') this.alive(w);
        else if (r !== 'ack') this.refused(w, r, line.length);
      });
      if (!ok) {
        w.live.refuse('tooLong');
        this.refused(w, 'tooLong', AGENT_MAX_LINE);
        c.destroy();
      }
    });
    c.on('error', () => undefined);
    c.on('close', () => { if (w.channel === c) w.channel = null; });
  }

  // A line the agent sent that was refused: counted (Liveness), logged at warn the first time per reason and then every 1000th.
  private refused(w: Watch, why: AgentRefusal, chars: number): void {
    const n = w.live.refused[why];
    if (n === 1 || n % 1000 === 0) this.log.warn({ interface: w.spec.interface, refused: why, count: n, chars, closed: why === 'tooLong' }, 'agent channel: message refused');
  }

  private alive(w: Watch): void {
    if (!w.vmAlive) {
      w.vmAlive = true;
      this.note(w, 'vm alive');
      if (w.session.state === STATE.AdminDown) w.session.adminUp();
      // Tell the VM where its tunnel stands now.
      this.tell(w, w.session.state === STATE.Up ? 'up' : 'down', 'state on reconnect');
    }
  }

  /**
   * A VM is dead when `misses` probes in a row went unanswered — counted in
   * probes, not in milliseconds since the last answer: when this thread was
   * busy (a long control request, a major GC), no probe went out and no
   * answer was read meanwhile, and that silence is the switch's, not the
   * VM's (measured: with a time-based check, a 200 K-flow stats report took
   * a live VM's session AdminDown at FRR five times in 15 s). The check runs
   * after the event loop's I/O phase (setImmediate), so answers that arrived
   * while the thread was busy are read before it judges.
   */
  private probeAll(): void {
    for (const w of this.watches) if (!w.channel || w.channel.destroyed) this.connect(w);
    setImmediate(() => {
      for (const w of this.watches) {
        const unanswered = w.live.seq - w.live.answered;
        if (w.vmAlive && unanswered >= w.spec.misses) {
          w.vmAlive = false;
          this.note(w, `vm not answering ${unanswered} probes (${Date.now() - w.live.lastAlive} ms): ending the BFD session`);
          w.session.adminDown(DIAG.administrativelyDown);
        }
        // A probe that cannot be sent (no channel) counts as one unanswered.
        const seq = w.live.probe();
        // A guest that does not read its probes would grow our send queue without end: close it past a bound.
        if (w.channel && w.channel.writableLength > 16 * AGENT_MAX_LINE) {
          this.log.warn({ interface: w.spec.interface, queued: w.channel.writableLength }, 'agent channel: the agent reads nothing; closed');
          w.channel.destroy();
        }
        if (w.channel && !w.channel.destroyed) w.channel.write(JSON.stringify({ type: 'probe', seq }) + '\n');
      }
    });
  }


  /** Each watch with its session as the BFD thread describes it now. */
  async describe(): Promise<unknown[]> {
    const snap = await this.bfd.describe();
    return this.watches.map((w) => ({ interface: w.spec.interface, peer: w.spec.peer, local: w.spec.local, vmAlive: w.vmAlive, agentRefused: w.live.refused, lastTunnelEvent: w.lastTunnelEvent, session: snap.sessions[w.session.id], recent: w.log }));
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    for (const w of this.watches) w.channel?.destroy();
    await this.bfd.close();
  }
}
