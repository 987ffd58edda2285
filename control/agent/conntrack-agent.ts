/**
 * The guest's side of the conntrack hand-over (`fpo agent --conntrack`,
 * issue 19): runs inside the service VM beside the liveness agent.
 *
 *   watch      `conntrack -E -o id` (Debian's conntrack tool) — each event
 *              parsed (guest-conntrack.ts), and once offerFor's policy says
 *              so (established and accepted, past --min-packets/--min-bytes)
 *              the connection is offered, once per guest id
 *   route      each direction's routing result as the VM's own forwarding
 *              would use it: `ip -j route get` (out device, gateway), the
 *              device's MAC (`ip -j link`), the next hop's (`ip -j neigh`).
 *              The original direction leaves towards the reply's source (the
 *              server, after any DNAT), the reply towards the original's
 *              source (the client). No neighbour entry: not offered.
 *   offer      {"type":"ct-offer-route","offer":…,"route":{"orig":{"out":
 *              MAC,"nextHop":MAC},"reply":…}} to fpo (handover.ts)
 *   keep alive while fpo has a connection, its guest entry's timeout is set
 *              again every keepaliveMs (`conntrack -U … --timeout T`), so
 *              the guest never drops the end of a connection it no longer
 *              sees; on fpo's hand-back this stops, and the guest's own
 *              tracking sees the FIN or reset that ended it
 *   withdraw   the guest destroyed an entry fpo has (flushed, timed out):
 *              fpo is told ({"type":"ct-withdraw","id"}) and hands it back
 *
 * The guest's windows go stale while fpo has a connection (conntrack -U
 * cannot set them; Linux's own flowtable resets td_maxwin on teardown for
 * the same reason), so the agent turns on nf_conntrack_tcp_be_liberal in
 * the VM's namespace at start — said in its log — else the guest's
 * tracking would call the closing segments out of window (invalid).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import { offerFor, parseConntrackEvent, type CtOffer, type CtTuple, type OffloadPolicy } from '../guest-conntrack.js';

const run = promisify(execFile);

export interface ConntrackAgentOptions extends OffloadPolicy {
  /** How often the guest entries fpo has are kept alive (ms, default 10000). */
  keepaliveMs?: number;
  /** Log line sink (default: stdout, one JSON line). */
  log?: (o: object) => void;
}

interface Held { offer: CtOffer; timeout: number }

export class ConntrackAgent {
  private child: ChildProcess | null = null;
  private readonly clients = new Set<Socket>();
  /** Guest ids offered (never offered twice). */
  private readonly offered = new Set<number>();
  /** Guest ids fpo adopted and has not handed back. */
  private readonly held = new Map<number, Held>();
  private timer: NodeJS.Timeout | null = null;
  readonly counts = { events: 0, badEvents: 0, offered: 0, adopted: 0, refused: 0, handedBack: 0, keptAlive: 0, withdrawn: 0, noRoute: 0 };
  private readonly log: (o: object) => void;

  constructor(private readonly name: string, private readonly opts: ConntrackAgentOptions = {}) {
    this.log = opts.log ?? ((o) => process.stdout.write(JSON.stringify({ time: Date.now(), agent: name, ...o }) + '\n'));
  }

  start(): void {
    try {
      writeFileSync('/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal', '1');
      this.log({ conntrack: 'nf_conntrack_tcp_be_liberal=1', why: 'the guest\'s TCP windows go stale while fpo has a connection; its closing segments must not be invalid' });
    } catch (e) {
      this.log({ conntrack: 'cannot set nf_conntrack_tcp_be_liberal', error: (e as Error).message });
    }
    const child = spawn('conntrack', ['-E', '-o', 'id'], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    child.on('error', (e) => this.log({ conntrack: 'cannot run conntrack -E', error: e.message }));
    const rl = createInterface({ input: child.stdout! });
    rl.on('line', (line) => { void this.onEvent(line); });
    this.timer = setInterval(() => { void this.keepAlive(); }, this.opts.keepaliveMs ?? 10_000);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.child?.kill();
    this.child = null;
  }

  /** fpo connected (its channel: offers go to it). */
  attach(c: Socket): void {
    this.clients.add(c);
    c.on('close', () => this.clients.delete(c));
  }

  private send(msg: object): void {
    const line = JSON.stringify(msg) + '\n';
    for (const c of this.clients) c.write(line);
  }

  /** A line from fpo (ct-adopted, ct-refused, ct-handback). */
  fromFpo(m: { type?: unknown; id?: unknown; why?: unknown; zone?: unknown }): void {
    if (m.type === 'ct-zone' && typeof m.zone === 'number' && Number.isInteger(m.zone) && m.zone >= 0 && m.zone <= 65535) {
      this.zone = m.zone;
      this.log({ conntrack: 'fpo tracks this VM\'s connections in zone', zone: m.zone });
      return;
    }
    if (typeof m.id !== 'number') return;
    const id = m.id;
    if (m.type === 'ct-adopted') {
      const pending = this.pending.get(id);
      if (pending === undefined) return;
      this.pending.delete(id);
      this.held.set(id, pending);
      this.counts.adopted++;
      this.log({ conntrack: 'adopted', id });
    } else if (m.type === 'ct-refused') {
      this.pending.delete(id);
      this.counts.refused++;
      this.log({ conntrack: 'refused', id, why: String(m.why).slice(0, 300) });
    } else if (m.type === 'ct-handback') {
      if (!this.held.delete(id)) return;
      this.counts.handedBack++;
      this.log({ conntrack: 'handed back', id, why: String(m.why).slice(0, 40) });
    }
  }

  /** The zone fpo tracks this VM's connections in (ct-zone); offers carry it. */
  private zone = 0;

  /** Offers sent, not yet answered. */
  private readonly pending = new Map<number, Held>();

  private async onEvent(line: string): Promise<void> {
    this.counts.events++;
    let ev;
    try {
      ev = parseConntrackEvent(line);
    } catch {
      this.counts.badEvents++;
      return;
    }
    if (ev.event === 'destroy') {
      this.offered.delete(ev.id);
      if (this.held.delete(ev.id)) {
        this.counts.withdrawn++;
        this.send({ type: 'ct-withdraw', id: ev.id });
      }
      return;
    }
    if (this.offered.has(ev.id) || this.clients.size === 0) return;
    const { offer, why } = offerFor(ev, this.opts);
    if (offer === null) return void why;
    offer.zone = this.zone;
    this.offered.add(ev.id);
    const orig = await routeTo(offer.reply.src);
    const reply = await routeTo(offer.orig.src);
    if (orig === null || reply === null) {
      this.counts.noRoute++;
      this.log({ conntrack: 'not offered', id: ev.id, why: 'no route or neighbour entry for a direction' });
      return;
    }
    this.pending.set(offer.id, { offer, timeout: offer.timeout });
    this.counts.offered++;
    this.send({ type: 'ct-offer-route', offer, route: { orig, reply } });
  }

  /** Sets the timeout of every guest entry fpo has again. */
  private async keepAlive(): Promise<void> {
    for (const [id, h] of this.held) {
      try {
        await run('conntrack', ['-U', ...tupleArgs(h.offer.proto, h.offer.orig), '--timeout', String(h.timeout)]);
        this.counts.keptAlive++;
      } catch (e) {
        this.log({ conntrack: 'keep-alive failed', id, error: (e as Error).message.slice(0, 200) });
      }
    }
  }

  describe(): object {
    return { held: this.held.size, pending: this.pending.size, ...this.counts };
  }
}

/** conntrack's filter for the entry whose original tuple is t. */
export function tupleArgs(proto: number, t: CtTuple): string[] {
  const a = ['-p', proto === 6 ? 'tcp' : proto === 17 ? 'udp' : proto === 1 ? 'icmp' : 'icmpv6', '-s', t.src, '-d', t.dst];
  if (t.sport !== undefined) a.push('--sport', String(t.sport), '--dport', String(t.dport));
  if (t.id !== undefined) a.push(proto === 1 ? '--icmp-id' : '--icmpv6-id', String(t.id), proto === 1 ? '--icmp-type' : '--icmpv6-type', String(t.type), proto === 1 ? '--icmp-code' : '--icmpv6-code', String(t.code));
  return a;
}

/** The VM's route towards dst: the out device's MAC and the next hop's, or null. */
export async function routeTo(dst: string): Promise<{ out: string; nextHop: string } | null> {
  try {
    const r = (JSON.parse((await run('ip', ['-j', 'route', 'get', dst])).stdout) as { dev?: string; gateway?: string }[])[0];
    if (r?.dev === undefined) return null;
    const nh = r.gateway ?? dst;
    const link = (JSON.parse((await run('ip', ['-j', 'link', 'show', 'dev', r.dev])).stdout) as { address?: string }[])[0];
    const neigh = (JSON.parse((await run('ip', ['-j', 'neigh', 'show', nh, 'dev', r.dev])).stdout) as { lladdr?: string }[])[0];
    if (link?.address === undefined || neigh?.lladdr === undefined) return null;
    return { out: link.address, nextHop: neigh.lladdr };
  } catch {
    return null;
  }
}
