/**
 * HandOver: fpo's side of one service VM's conntrack hand-over channel
 * (issue 19). fpo connects to the VM's agent (`fpo agent --conntrack`, its
 * Unix socket: the same channel as the liveness probes) and reads JSON
 * lines, each bounded by a LineReader:
 *
 *   agent → fpo  {"type":"ct-offer-route","offer":{…CtOffer…},
 *                 "route":{"orig":{"out":MAC,"nextHop":MAC},"reply":{…}}}
 *                {"type":"ct-withdraw","id":N}   (the guest ended it)
 *   fpo → agent  {"type":"ct-zone","zone":Z}  (on connecting: the zone fpo tracks this VM's
 *                 connections in; the agent's offers carry it — the guest's own zone is its own)
 *                {"type":"ct-adopted","id":N,"conn":ID}
 *                {"type":"ct-refused","id":N|null,"why":"…"}
 *                {"type":"ct-handback","id":N,"why":"fin|rst|ended|withdrawn"}
 *
 * An offer is checked whole before anything reaches the datapath: the offer
 * by checkOffer against this VM's zone (ct-offer.ts), each direction's route
 * against the topology — `out` must be the MAC of one of this VM's
 * offload interfaces (the guest's device names are its own; the MAC is what
 * both sides know), the next hop a unicast MAC. Then Offload.adopt, which
 * may still refuse (a full table, a tuple taken). A VM has at most
 * offload.maxConnections adopted at once (default a quarter of the table):
 * the table is shared with every zone, and a flood of offers must not take
 * it. A refused offer, or any line that is not one of the above, changes
 * nothing in fpo and is answered (or, for a line too long, the channel is
 * closed) — `take` never throws.
 *
 * Hand-backs: the service drains the datapath's hand-back ring (Offload.
 * takeHandBack) and passes each to the HandOver that adopted it (`ended`).
 */
import { connect, type Socket } from 'node:net';
import type { Logger } from 'pino';
import { monotonicMs } from '../../datapath/clock.js';
import type { Datapath } from '../../datapath/datapath.js';
import type { HandBackReason, OffloadRoute } from '../../datapath/conntrack/offload.js';
import { FpoError } from '../../datapath/errors.js';
import { AGENT_MAX_LINE, LineReader } from '../agent.js';
import { checkOffer } from '../ct-offer.js';
import { parseMac, type OffloadSpec, type Topology } from '../topology.js';

/** Why a line or an offer was refused (counted). */
export const HANDOVER_REFUSALS = ['tooLong', 'notJson', 'badMessage', 'badOffer', 'badRoute', 'duplicate', 'quota', 'tableRefused', 'unknownId'] as const;
export type HandOverRefusal = (typeof HANDOVER_REFUSALS)[number];

const MAC_RE = /^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export class HandOver {
  /** Counters: offers adopted, hand-backs sent, withdrawals taken, refusals by reason. */
  readonly counts = { offers: 0, adopted: 0, handedBack: 0, withdrawn: 0 };
  readonly refused = Object.fromEntries(HANDOVER_REFUSALS.map((r) => [r, 0])) as Record<HandOverRefusal, number>;
  /** Guest conntrack id → fpo's connection id, and back (adopted, not yet handed back). */
  private readonly byGuest = new Map<number, number>();
  private readonly byConn = new Map<number, number>();
  /** This VM's offload interfaces by MAC (lowercase): VPID and MAC bytes. */
  private readonly ifs = new Map<string, { vpid: number; mac: Uint8Array; name: string }>();
  private sock: Socket | null = null;
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  /** Whether the channel is connected now. */
  connected = false;
  /** What was last said of the channel (for ctl). */
  lastEvent = '';

  constructor(readonly spec: OffloadSpec, private readonly topo: Topology, private readonly dp: Datapath, private readonly log?: Logger, private readonly clock: () => number = monotonicMs) {
    for (const n of [...spec.inside, ...spec.outside]) {
      const itf = topo.interfaces.find((x) => x.name === n && x.node === spec.node);
      if (itf === undefined) throw new FpoError('FPO_ERR_BAD_TOPOLOGY', `offload of ${spec.node}: no interface "${n}"`);
      this.ifs.set(itf.mac.toLowerCase(), { vpid: itf.vpid, mac: itf.macBytes, name: itf.name });
      dp.offload.enable(itf.vpid, itf.macBytes, spec.zone);
    }
    this.segOf = new Uint16Array(dp.mapping.maxVpid + 1);
    this.segments();
  }

  /** Per VPID, its interface's segment number (for the offload stage's side check). */
  private readonly segOf: Uint16Array;

  // Slow path (at start, and before each adoption: a migration may have given an interface a new VPID):
  // the segment of every interface as the offload stage checks a frame's side by it (Offload.setSegments).
  private segments(): void {
    const segNo = new Map(this.topo.segments.map((s, k) => [s.name, k + 1]));
    const segOf = this.segOf;
    segOf.fill(0);
    for (const itf of this.topo.interfaces) if (itf.vpid >= 0 && itf.vpid < segOf.length) segOf[itf.vpid] = segNo.get(itf.segment) ?? 0;
    this.dp.offload.setSegments(segOf);
  }

  /** Connections adopted from this VM now. */
  get adoptedNow(): number {
    return this.byConn.size;
  }

  /** Whether fpo connection id came from this VM. */
  owns(conn: number): boolean {
    return this.byConn.has(conn);
  }

  /** Connects to the agent, and again a second after the channel is lost, until stop. */
  start(): void {
    if (this.stopped || this.sock !== null) return;
    const s = connect(this.spec.agent);
    this.sock = s;
    const reader = new LineReader(AGENT_MAX_LINE);
    s.setEncoding('utf8');
    s.on('connect', () => { this.connected = true; this.lastEvent = 'connected'; this.send({ type: 'ct-zone', zone: this.spec.zone }); this.log?.info({ node: this.spec.node, agent: this.spec.agent }, 'hand-over channel up'); });
    s.on('data', (d: string) => {
      if (!reader.push(d, (line) => { const out = this.take(line); if (out !== null) this.send(out); })) {
        this.refused.tooLong++;
        this.lastEvent = `a line over ${AGENT_MAX_LINE} characters: channel closed`;
        s.destroy();
      }
    });
    s.on('error', (e) => { this.lastEvent = e.message; });
    s.on('close', () => {
      this.connected = false;
      this.sock = null;
      if (!this.stopped) this.timer = setTimeout(() => { this.timer = null; this.start(); }, 1000);
    });
  }

  stop(): void {
    this.stopped = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.sock?.destroy();
    this.sock = null;
  }

  private send(msg: object): void {
    if (this.sock !== null && this.connected) this.sock.write(JSON.stringify(msg) + '\n');
  }

  private refuse(why: HandOverRefusal, id: number | null, text: string): object {
    this.refused[why]++;
    this.log?.debug({ node: this.spec.node, why, id, text }, 'hand-over refused');
    return { type: 'ct-refused', id, why: `${why}: ${text}`.slice(0, 300) };
  }

  /**
   * One line from the agent: the answer to send (or null). Never throws, and
   * changes the datapath only by adopting a checked offer or withdrawing one
   * of this VM's own connections.
   */
  take(line: string): object | null {
    let m: unknown;
    try {
      m = JSON.parse(line);
    } catch {
      return this.refuse('notJson', null, 'not JSON');
    }
    if (!isObject(m)) return this.refuse('badMessage', null, 'expected an object');
    const rawId = isObject(m.offer) ? m.offer.id : m.id;
    const gid = typeof rawId === 'number' && Number.isInteger(rawId) && rawId >= 0 && rawId <= 0xffffffff ? rawId : null;
    if (m.type === 'ct-withdraw') {
      if (gid === null || Object.keys(m).length !== 2) return this.refuse('badMessage', null, 'ct-withdraw: expected {"type","id"} with an id in 0..4294967295');
      const conn = this.byGuest.get(gid);
      if (conn === undefined) return this.refuse('unknownId', gid, 'no connection of this id was adopted');
      this.counts.withdrawn++;
      this.dp.offload.withdraw(conn); // its hand-back comes through the ring (why: withdrawn)
      return null;
    }
    if (m.type !== 'ct-offer-route') return this.refuse('badMessage', gid, 'type: expected "ct-offer-route" or "ct-withdraw"');
    this.counts.offers++;
    for (const k of Object.keys(m)) if (k !== 'type' && k !== 'offer' && k !== 'route') return this.refuse('badMessage', gid, `unknown field ${JSON.stringify(k.slice(0, 40))} (expected type, offer, route)`);
    let checked;
    try {
      checked = checkOffer(m.offer, { zone: this.spec.zone });
    } catch (e) {
      return this.refuse('badOffer', gid, (e as Error).message);
    }
    const route = m.route;
    if (!isObject(route) || Object.keys(route).length !== 2 || !isObject(route.orig) || !isObject(route.reply)) return this.refuse('badRoute', gid, 'route: expected {"orig":{"out","nextHop"},"reply":{"out","nextHop"}}');
    const routes: { orig?: OffloadRoute; reply?: OffloadRoute } = {};
    for (const d of ['orig', 'reply'] as const) {
      const r = route[d] as Record<string, unknown>;
      if (Object.keys(r).length !== 2 || typeof r.out !== 'string' || typeof r.nextHop !== 'string') return this.refuse('badRoute', gid, `route.${d}: expected {"out": MAC, "nextHop": MAC}`);
      const itf = this.ifs.get(r.out.toLowerCase());
      if (itf === undefined) return this.refuse('badRoute', gid, `route.${d}.out: expected the MAC of one of ${this.spec.node}'s offload interfaces (${[...this.ifs.values()].map((x) => x.name).join(', ')})`);
      if (!MAC_RE.test(r.nextHop)) return this.refuse('badRoute', gid, `route.${d}.nextHop: expected a MAC like 02:00:00:00:00:01`);
      const nh = parseMac(r.nextHop);
      if ((nh[0] & 1) !== 0 || nh.every((x) => x === 0)) return this.refuse('badRoute', gid, `route.${d}.nextHop: expected a unicast MAC`);
      routes[d] = { outVpid: itf.vpid, srcMac: itf.mac, nextHopMac: nh };
    }
    const gidOk = checked.offer.id;
    if (this.byGuest.has(gidOk)) return this.refuse('duplicate', gidOk, 'this connection is adopted already');
    this.drainHandBacks(); // an id the datapath gives now may be one whose hand-back is still in the ring
    // The connection table is every zone's (ct actions, firewalls, other VMs): one VM's offers get a share of it.
    const quota = this.spec.maxConnections ?? Math.max(1, Math.floor(this.dp.conntrack.capacity / 4));
    if (this.byConn.size >= quota) return this.refuse('quota', gidOk, `${this.spec.node} has ${this.byConn.size} connections handed over, its most (offload.maxConnections: ${quota})`);
    const timeoutMs = Math.min(checked.offer.timeout, this.spec.maxTimeout ?? checked.offer.timeout) * 1000;
    this.segments();
    const conn = this.dp.offload.adopt(checked.orig, checked.reply, this.clock(), timeoutMs, { orig: routes.orig!, reply: routes.reply! }, quota);
    if (conn < 0) return this.refuse('tableRefused', gidOk, 'the connection table refused it (full, or a tuple is another connection\'s)');
    this.byGuest.set(gidOk, conn);
    this.byConn.set(conn, gidOk);
    this.counts.adopted++;
    return { type: 'ct-adopted', id: gidOk, conn };
  }

  /** A connection of this VM was handed back (from the datapath's ring): told to the agent. */
  ended(conn: number, why: HandBackReason): void {
    const gid = this.byConn.get(conn);
    if (gid === undefined) return;
    this.byConn.delete(conn);
    this.byGuest.delete(gid);
    this.counts.handedBack++;
    this.send({ type: 'ct-handback', id: gid, why });
  }

  /** Hand-backs waiting in the datapath's ring, each to its VM: set by the service (all VMs share the ring). */
  drainHandBacks: () => void = () => undefined;

  describe(): object {
    return { node: this.spec.node, agent: this.spec.agent, zone: this.spec.zone, connected: this.connected, lastEvent: this.lastEvent, adoptedNow: this.adoptedNow, ...this.counts, refused: this.refused };
  }
}

/** Drains the datapath's hand-back ring into the HandOvers that adopted each connection. */
export function drainHandBacks(dp: Datapath, vms: HandOver[]): number {
  if (!dp.hasOffload) return 0;
  let n = 0;
  for (let h = dp.offload.takeHandBack(); h !== null; h = dp.offload.takeHandBack()) {
    n++;
    for (const v of vms) if (v.owns(h.id)) { v.ended(h.id, h.why); break; }
  }
  return n;
}
