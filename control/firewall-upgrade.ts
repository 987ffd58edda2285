/**
 * The per-port firewall's upgrade (issue 20; the seed's "upgrading firewall
 * module on port-by-port basis"): a new version of the firewall is loaded
 * beside the one serving (datapath/services/firewall), and the firewalled
 * ports move to it one at a time. For each port:
 *
 *   hold      its packets wait, at their firewall step, in the datapath's
 *             bounded hold queue (overflow: dropped as fwHoldOverflow,
 *             counted); every other port forwards on
 *   save      the old version's state of the port (its connections)
 *   restore   into the new version, transformed from the old format (all
 *             or nothing)
 *   switch    the port → version table says the new version
 *   release   the held packets go on, in order, through the new version
 *
 * The pause — hold to release — is measured for each port. A restore that
 * fails (or a pause over the limit) rolls that port back: the new version
 * forgets what it took, the old one still has the state (it forgets a
 * port's state only after the switch), the held packets go on through it;
 * the upgrade stops there, and `resume` continues with the ports left. A
 * downgrade is the same with the versions the other way round.
 *
 * Live (`fpo run`, `fpo ctl firewall upgrade`): one step per turn of the
 * event loop, so the live loop switches batches between them and the held
 * port's packets queue. A replay (`--events`): all steps at once between two
 * packets (none arrives meanwhile), so a capture replayed with an upgrade
 * in the middle forwards exactly as without one.
 */
import type { Datapath } from '../datapath/datapath.js';
import { FpoError } from '../datapath/errors.js';
import { FIREWALL_VERSIONS, type FirewallVersion } from '../datapath/services/firewall/module.js';

/** A firewalled interface: its name and its zone (VPID). */
export interface FirewalledPort {
  name: string;
  zone: number;
}

export interface PortStep {
  interface: string;
  zone: number;
  from: FirewallVersion;
  to: FirewallVersion;
  state: 'pending' | 'moving' | 'done' | 'rolled-back';
  /** Hold to release, ms (done or rolled back). */
  pauseMs?: number;
  /** Connections moved. */
  connections?: number;
  /** Packets held during the pause, and released after it. */
  held?: number;
  error?: string;
}

export interface UpgradeStatus {
  /** idle: none yet; running; stopped: a port rolled back (resume continues); done. */
  state: 'idle' | 'running' | 'stopped' | 'done';
  to: FirewallVersion | null;
  maxPauseMs: number;
  /** A restart, not an upgrade: each port switched with its state dropped, not moved (for comparison: what the hand-over saves). */
  restart: boolean;
  ports: PortStep[];
  startedAt?: string;
  finishedAt?: string;
}

/** Failure injection (tests, `FPO_FAILPOINTS=firewall-restore=IFACE[,…]`): the restore of these interfaces throws. */
export interface Failpoints {
  restore: Set<string>;
}

export function failpointsFromEnv(env: string | undefined): Failpoints {
  const fp: Failpoints = { restore: new Set() };
  for (const part of (env ?? '').split(';')) {
    const [k, v] = part.split('=');
    if (k === 'firewall-restore' && v) for (const n of v.split(',')) if (n) fp.restore.add(n);
  }
  return fp;
}

export const DEFAULT_MAX_PAUSE_MS = 100;

export class FirewallUpgrade {
  private status_: UpgradeStatus = { state: 'idle', to: null, maxPauseMs: DEFAULT_MAX_PAUSE_MS, restart: false, ports: [] };
  private running: Promise<UpgradeStatus> | null = null;

  constructor(
    private readonly dp: Datapath,
    private readonly ports: () => FirewalledPort[],
    readonly failpoints: Failpoints = { restore: new Set() },
  ) {}

  // Saves and restores count connections' time left by the datapath's clock (a replay's capture clock,
  // or the live monotonic one), one reading for both: every connection keeps its expiry exactly.
  private clock(): number {
    return this.dp.now;
  }

  status(): UpgradeStatus {
    return structuredClone(this.status_);
  }

  /** Each firewalled port's version and connections now. */
  portsNow(): { interface: string; zone: number; version: FirewallVersion; connections: number; holding: boolean }[] {
    const now = this.clock();
    return this.ports().map((p) => {
      const v = this.dp.firewallVersionOf(p.zone);
      return { interface: p.name, zone: p.zone, version: v, connections: this.dp.firewallLoaded(v) ? this.dp.firewall(v).connections(p.zone, now) : 0, holding: this.dp.firewallHold[p.zone] === 1 };
    });
  }

  /**
   * Plans an upgrade (or downgrade) of `names` (default: every firewalled
   * port) to `to`; refused, changing nothing, while one runs or for an
   * unknown version or port. Ports already on `to` are left out.
   */
  plan(to: string, names?: string[], maxPauseMs = DEFAULT_MAX_PAUSE_MS, restart = false): UpgradeStatus {
    if (this.status_.state === 'running') throw new FpoError('FPO_ERR_USAGE', 'firewall upgrade: one is running; wait for it (fpo ctl firewall status)');
    if (!(FIREWALL_VERSIONS as readonly string[]).includes(to)) throw new FpoError('FPO_ERR_USAGE', `firewall upgrade: --to ${JSON.stringify(to).slice(0, 40)}: this build has ${FIREWALL_VERSIONS.join(', ')}`);
    if (!(Number.isFinite(maxPauseMs) && maxPauseMs > 0 && maxPauseMs <= 60_000)) throw new FpoError('FPO_ERR_USAGE', `firewall upgrade: --max-pause ${maxPauseMs}: expected ms in (0, 60000]`);
    const all = this.ports();
    if (all.length === 0) throw new FpoError('FPO_ERR_USAGE', 'firewall upgrade: no interface has a firewall');
    let chosen = all;
    if (names !== undefined) {
      chosen = names.map((n) => {
        const p = all.find((x) => x.name === n);
        if (p === undefined) throw new FpoError('FPO_ERR_USAGE', `firewall upgrade: --ports: "${n.slice(0, 80)}" is no interface with a firewall (${all.map((x) => x.name).join(', ')})`);
        return p;
      });
      if (new Set(names).size !== names.length) throw new FpoError('FPO_ERR_USAGE', 'firewall upgrade: --ports names a port twice');
    }
    const v = to as FirewallVersion;
    this.status_ = {
      state: 'running', to: v, maxPauseMs, restart, startedAt: new Date().toISOString(),
      ports: chosen.filter((p) => this.dp.firewallVersionOf(p.zone) !== v).map((p) => ({ interface: p.name, zone: p.zone, from: this.dp.firewallVersionOf(p.zone), to: v, state: 'pending' as const })),
    };
    // Made before any port holds (first touch of fresh memory: ~3 ms a MB): the hold queue; for a restart, the
    // new version's empty tables (an upgrade moves each port's table itself).
    this.dp.prepareFirewallHold();
    if (restart) this.dp.firewall(v).prepare(this.status_.ports.map((p) => p.zone));
    return this.status();
  }

  /** Continues a stopped upgrade with the ports not done (the rolled-back one first), with a new pause limit when given. */
  resume(maxPauseMs?: number): UpgradeStatus {
    if (this.status_.state !== 'stopped') throw new FpoError('FPO_ERR_USAGE', `firewall upgrade: nothing to resume (the upgrade is ${this.status_.state})`);
    if (maxPauseMs !== undefined && !(Number.isFinite(maxPauseMs) && maxPauseMs > 0 && maxPauseMs <= 60_000)) throw new FpoError('FPO_ERR_USAGE', `firewall upgrade: --max-pause ${maxPauseMs}: expected ms in (0, 60000]`);
    if (maxPauseMs !== undefined) this.status_.maxPauseMs = maxPauseMs;
    for (const p of this.status_.ports) if (p.state === 'rolled-back' || p.state === 'moving') { p.state = 'pending'; delete p.error; }
    this.status_.state = 'running';
    delete this.status_.finishedAt;
    return this.status();
  }

  /** A replay's way: every pending port now, one after the other (no packet arrives meanwhile). */
  runSync(): UpgradeStatus {
    try {
      for (const p of this.status_.ports) {
        if (p.state !== 'pending') continue;
        const steps = this.guarded(p);
        while (!steps.next().done);
        if ((p.state as PortStep['state']) === 'rolled-back') break;
      }
    } finally {
      this.finish();
    }
    return this.status();
  }

  // A port's steps, with an unexpected error (not the restore's: that one rolls back inside) ending the port
  // as rolled back with what it said, its hold released, so that no upgrade is left running for good.
  private *guarded(p: PortStep): Generator<void, void, void> {
    try {
      yield* this.steps(p);
    } catch (e) {
      p.state = 'rolled-back';
      p.error = `unexpected: ${(e as Error).message}`;
      if (this.dp.firewallHold[p.zone] === 1) {
        try { this.dp.releaseFirewallHold(p.zone, this.clock()); } catch { this.dp.firewallHold[p.zone] = 0; }
      }
    }
  }

  /** Live: one step per turn of the event loop (the live loop's batches run between); resolves when it stops. */
  run(): Promise<UpgradeStatus> {
    if (this.running !== null) return this.running;
    this.running = (async () => {
      try {
        for (const p of this.status_.ports) {
          if (p.state !== 'pending') continue;
          const steps = this.guarded(p);
          while (!steps.next().done) await new Promise((r) => setImmediate(r));
          if ((p.state as PortStep['state']) === 'rolled-back') break;
        }
      } finally {
        this.finish();
        this.running = null;
      }
      return this.status();
    })();
    return this.running;
  }

  private finish(): void {
    if (this.status_.state !== 'running') return;
    this.status_.state = this.status_.ports.some((p) => p.state === 'rolled-back' || p.state === 'moving') ? 'stopped' : 'done';
    this.status_.finishedAt = new Date().toISOString();
  }

  // One port's move, a step per yield: hold | save | restore, check, switch, release.
  private *steps(p: PortStep): Generator<void, void, void> {
    const dp = this.dp;
    const from = dp.firewall(p.from);
    const to = dp.firewall(p.to);
    p.state = 'moving';
    const t0 = performance.now();
    const held0 = dp.holdStats.held;
    dp.holdFirewall(p.zone);
    yield;
    let restored = false;
    if (this.status_.restart) {
      // A restart: the port's state is dropped, not moved (the new version's table is empty).
      p.connections = 0;
      dp.setFirewallVersion(p.zone, p.to);
      from.forget(p.zone);
      from.release(p.zone);
      p.held = dp.holdStats.held - held0;
      dp.releaseFirewallHold(p.zone, this.clock());
      p.pauseMs = +(performance.now() - t0).toFixed(3);
      p.state = 'done';
      return;
    }
    try {
      const state = from.saveState(p.zone, this.clock());
      yield;
      if (this.failpoints.restore.has(p.interface)) throw new FpoError('FPO_ERR_FW_STATE', `failpoint firewall-restore=${p.interface}: the restore was made to fail`);
      p.connections = to.restoreState(p.zone, state, p.from, this.clock());
      restored = true;
      const spent = performance.now() - t0;
      if (spent > this.status_.maxPauseMs) throw new FpoError('FPO_ERR_FW_STATE', `the pause reached ${spent.toFixed(1)} ms, over the limit of ${this.status_.maxPauseMs} ms`);
    } catch (e) {
      // Rolled back: the old version takes its table back (the new one's changes undone in place) and serves on.
      if (restored) {
        from.restoreState(p.zone, to.saveState(p.zone, this.clock()), p.to, this.clock());
        to.release(p.zone);
      }
      p.state = 'rolled-back';
      p.error = (e as Error).message;
      p.held = dp.holdStats.held - held0;
      dp.releaseFirewallHold(p.zone, this.clock());
      p.pauseMs = +(performance.now() - t0).toFixed(3);
      return;
    }
    dp.setFirewallVersion(p.zone, p.to);
    p.held = dp.holdStats.held - held0;
    dp.releaseFirewallHold(p.zone, this.clock());
    p.pauseMs = +(performance.now() - t0).toFixed(3);
    p.state = 'done';
    // The table is the new version's now: the old one lets go of it.
    from.release(p.zone);
  }
}
