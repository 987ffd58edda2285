/**
 * The directory of hosts, VM interfaces and segments that many fpo hosts
 * share, kept in etcd (issue 22; schema.ts says the keys). A host registers
 * itself and publishes its own VMs under one lease, kept alive while it
 * runs: when it stops (or its lease expires), etcd takes its entries with
 * it. A reader loads the whole prefix once (every entry checked; the bad
 * ones refused and kept in `refused`, with why) and then follows the changes
 * by watching from the revision it read at — no full reload after.
 *
 * VPIDs (vpids.ts's claims, beside the directory): an interface's VPID is
 * claimed once by a compare-and-swap transaction and kept across restarts
 * and moves. A VM moving to this host (`arrive`) is one transaction.
 */
import { Etcd3, EtcdLeaseInvalidError, GRPCUnavailableError, Range, type IOptions, type Lease, type Watcher } from 'etcd3';

/** Keys a page of load() takes. */
const LOAD_PAGE = 5000;
/** etcd3's fault handling left out: a call runs once, as is (keepAliveByHand says why). */
const AS_IS = { execute: (fn: (context: { signal: AbortSignal }) => unknown) => Promise.resolve().then(() => fn({ signal: new AbortController().signal })) } as unknown as NonNullable<NonNullable<IOptions['faultHandling']>['global']>;
import { FpoError } from '../../datapath/errors.js';
import { type Entry, type Host, type Iface, type Segment, keyOf, parseEntry, prefixOf } from './schema.js';

export type Change = { type: 'put'; entry: Entry } | { type: 'delete'; kind: string; name: string } | { type: 'refused'; key: string; error: string };

export class Directory {
  readonly prefix: string;
  private readonly client: Etcd3;
  private lease: Lease | null = null;
  /** The lease's ID (a transaction puts under it), once granted. */
  private leaseId: string | null = null;
  /** The mod revision each interface entry was read at (a move compares it). */
  readonly interfaceRevs = new Map<string, number>();
  /** The lease each interface entry was read under ('0': none). */
  private readonly interfaceLeases = new Map<string, string>();
  private watcher: Watcher | null = null;
  readonly hosts = new Map<string, Host>();
  readonly interfaces = new Map<string, Iface>();
  readonly segments = new Map<string, Segment>();
  /** Entries refused on read (the latest for each key), with why. */
  readonly refused = new Map<string, string>();
  /** The revision the state is at. */
  revision = 0;
  /** Changes applied from the watch. */
  applied = 0;
  /** The watch's stream is up (a member without quorum keeps it up, silent: see `connected`). */
  private watching = false;
  /** This host's lease is kept alive (false while keep-alives fail: etcd down, or without quorum). */
  private leaseAlive = true;
  /**
   * Whether the directory works now: the watch connected and this host's
   * lease kept alive. A member without quorum keeps the watch's stream open
   * and silent: its keep-alives failing are what tell (found by the
   * 3-member lab: show said connected through a quorum loss).
   */
  get connected(): boolean {
    return this.watching && this.leaseAlive;
  }
  /** When the directory was last lost, and why. */
  lostAt: string | null = null;
  lastError: string | null = null;

  constructor(endpoints: string[], readonly deployment: string, opts: { timeoutMs?: number } = {}) {
    this.prefix = prefixOf(deployment);
    this.endpoints = endpoints;
    this.client = new Etcd3({ hosts: endpoints, dialTimeout: opts.timeoutMs ?? 3000 });
  }

  private readonly endpoints: string[];

  /**
   * e, an etcd call's failure, said for a user: no member reachable (gRPC's
   * UNAVAILABLE, or etcd3's circuit breaker open after such failures: it had
   * reached the user as FPO_ERR_INTERNAL "Execution prevented because the
   * circuit breaker is open") is FPO_ERR_IO "etcd (endpoints) unreachable";
   * anything else as it is.
   */
  explain(e: unknown): unknown {
    if (e instanceof GRPCUnavailableError || (e as { isBrokenCircuitError?: unknown } | null)?.isBrokenCircuitError === true) {
      return new FpoError('FPO_ERR_IO', `etcd (${this.endpoints.join(', ')}) unreachable: ${(e as Error).message}`);
    }
    return e;
  }

  /**
   * Registers this host (and, later, its interfaces) under a lease of
   * `ttlSeconds`, kept alive while the client runs. A lease lost (etcd out
   * of reach past twice its TTL: the client gives it up, though etcd may
   * have kept it through an election) is taken again when etcd answers:
   * a new lease, the host's entry and every interface this host holds put
   * under it again (one that another host took meanwhile is left to it).
   * Meanwhile the old lease is kept alive by hand: the entries stay under it
   * until they are under the new one, and the other hosts never see them go.
   */
  async registerHost(h: Host, ttlSeconds: number): Promise<void> {
    this.me = h;
    this.ttl = ttlSeconds;
    await this.grantAndPutHost();
  }

  private me: Host | null = null;
  private ttl = 5;
  private closing = false;
  private reregistering = false;
  /** While a lease is taken again: the new lease (not yet holding the entries), and the old one's keep-alive by hand (its stop). */
  private taking: Lease | null = null;
  private stopByHand: (() => void) | null = null;
  /** This host's interfaces in the directory (put under its lease), by name. */
  readonly published = new Map<string, Iface>();
  /** Leases granted: 1, plus one for each lease lost and taken again. */
  registrations = 0;

  /** A lease of this host's TTL, kept alive by the client; what befalls it counts once it is `this.lease`. */
  private newLease(): Lease {
    const lease = this.client.lease(this.ttl);
    // (etcd3's typings give keepaliveFailed a keep-alive response; it passes the error.)
    lease.on('keepaliveFailed', (e: unknown) => { if (this.lease === lease && this.leaseAlive) { this.leaseAlive = false; this.lost(`lease keep-alive: ${(e as Error).message}`); } });
    lease.on('keepaliveSucceeded', () => { if (this.lease === lease) this.leaseAlive = true; });
    lease.on('lost', (e: Error) => this.onLeaseLost(lease, e));
    return lease;
  }

  private async grantAndPutHost(): Promise<void> {
    const lease = this.newLease();
    this.lease = lease;
    const id: unknown = await lease.grant();
    if (typeof id !== 'string') throw id instanceof Error ? id : new Error('lease not granted');
    this.leaseId = id;
    await lease.put(keyOf(this.deployment, 'hosts', this.me!.name)).value(JSON.stringify(this.me));
    this.registrations++;
    this.leaseAlive = true;
  }

  private lost(why: string): void {
    this.lostAt = new Date().toISOString();
    this.lastError = why;
  }

  /**
   * The lease lost: taken again, retrying 1 s apart. The old lease is kept
   * alive by hand meanwhile — the client gives a lease up on its own clock,
   * and etcd may still hold it (an election extends every lease by its
   * TTL): its entries stay until they are under the new lease. Found by the
   * 3-member lab (12 pings lost in a row): with the old lease left to
   * expire, a new lease whose keep-alives went to a member restarted and not
   * serving yet expired with the host's entry put under it, the old one
   * expired next, and the other hosts forgot the host's VM until a third
   * lease put it back.
   */
  private onLeaseLost(lease: Lease, e: Error): void {
    if (this.closing || this.reregistering || lease !== this.lease || this.registrations === 0) return;
    this.reregistering = true;
    const old = this.leaseId;
    this.leaseId = null;
    if (this.leaseAlive) { this.leaseAlive = false; this.lost(`lease lost: ${e.message}`); }
    if (old !== null) this.stopByHand = this.keepAliveByHand(old);
    void (async () => {
      while (!this.closing) {
        try {
          this.taking ??= await this.answeredLease();
          await this.putAgain(this.taking);
          break;
        } catch (x) {
          // Lost meanwhile (etcd says it is gone, or the client gave it up): another one.
          if (this.taking?.revoked() || x instanceof EtcdLeaseInvalidError) { this.taking?.release(); this.taking = null; }
          this.lastError = `lease lost, taking it again: ${(x as Error).message}`;
          await new Promise((r) => setTimeout(r, 1000));
        }
      }
      if (this.closing) this.taking?.release(); // taken as the host stopped
      this.taking = null;
      this.stopByHand?.();
      this.stopByHand = null;
      this.reregistering = false;
    })();
  }

  /**
   * A new lease, once etcd has answered its first keep-alive — within half
   * its TTL, else it is let go (another is taken). The client keeps a lease
   * alive on one stream to a member it picks, and a member that takes
   * connections but does not serve yet (restarted, and its first try at
   * joining lost in an election: up to etcd's request timeout, 7 s) leaves
   * the stream unanswered; a lease nobody renews expires within its TTL,
   * with whatever was put under it.
   */
  private async answeredLease(): Promise<Lease> {
    const lease = this.newLease();
    let timer: NodeJS.Timeout | undefined;
    try {
      await new Promise<void>((resolve, reject) => {
        timer = setTimeout(() => reject(new Error(`no keep-alive of a new lease answered within ${this.ttl / 2} s`)), this.ttl * 500);
        lease.once('keepaliveSucceeded', () => resolve());
        lease.once('keepaliveFailed', (e: Error) => reject(e));
        lease.once('lost', (e: Error) => reject(e)); // not granted, or gone
      });
      return lease;
    } catch (x) {
      lease.release();
      throw x;
    } finally {
      clearTimeout(timer);
    }
  }

  /** This host's entry and interfaces put under `lease` (one that another host holds now is left to it); then it is this host's lease. */
  private async putAgain(lease: Lease): Promise<void> {
    const id = await lease.grant();
    await this.client.put(keyOf(this.deployment, 'hosts', this.me!.name)).value(JSON.stringify(this.me)).lease(id).exec();
    for (const i of [...this.published.values()]) {
      const key = keyOf(this.deployment, 'interfaces', i.name);
      const cur = (await this.client.get(key).exec()).kvs[0];
      const put = this.client.put(key).value(JSON.stringify(i)).lease(id);
      if (cur === undefined) await this.client.if(key, 'Create', '==', 0).then(put).commit();
      else if (cur.value.toString() === JSON.stringify(i)) await this.client.if(key, 'Mod', '==', cur.mod_revision).then(put).commit();
      else this.published.delete(i.name); // another host holds it now
    }
    // Lost as the entries went under it: they go with it, and are put again under another.
    if (lease.revoked()) throw new Error('the new lease was lost as the entries were put under it');
    this.lease = lease;
    this.leaseId = id;
    this.registrations++;
    this.leaseAlive = true;
  }

  /**
   * Keeps lease `id` alive by hand — a keep-alive every third of its TTL
   * through every endpoint at once — until stopped, or etcd says it is gone.
   * Every endpoint rather than the client's pick of one: a member that takes
   * connections but does not serve yet would hold the keep-alive unanswered.
   * A fresh client for each (its own connection, fault handling off): the
   * long-lived one, failing through the outage, waits out a reconnection
   * backoff and etcd3's circuit breaker (5 s) before it tries a member that
   * answers again (measured: 3.2 s after a restart, a fresh one 0.2 s).
   */
  private keepAliveByHand(id: string): () => void {
    let clients: Etcd3[] = [];
    const tick = () => {
      for (const c of clients) c.close(); // the last tick's, answered or not
      clients = this.endpoints.map((h) => new Etcd3({ hosts: h, faultHandling: { host: () => AS_IS, global: AS_IS }, grpcOptions: { 'grpc.use_local_subchannel_pool': 1 } }));
      for (const c of clients) {
        c.leaseClient.leaseKeepAlive().then((s) => {
          s.on('error', () => undefined);
          s.on('data', (r: { TTL: string }) => { s.end(); if (Number(r.TTL) <= 0) stop(); });
          s.write({ ID: id });
        }, () => undefined);
      }
    };
    let stopped = false;
    const stop = () => {
      if (stopped) return;
      stopped = true;
      clearInterval(timer);
      for (const c of clients) c.close();
    };
    const timer = setInterval(tick, (this.ttl * 1000) / 3);
    tick();
    return stop;
  }

  /** Forgets one of this host's interfaces that another host holds now (a lease taken again leaves it alone). */
  forget(name: string): void {
    this.published.delete(name);
  }

  /** The etcd client (the VPID claims share it). */
  get etcd(): Etcd3 {
    return this.client;
  }

  /**
   * One transaction that makes interface `i` this host's (i.host is this
   * host): a VM moved here from another host, or started here. It puts the
   * entry under this host's lease only if the entry is still as this host
   * read it (its mod revision; absent for a new one) — so of two hosts
   * taking the same VM at once one wins and the other is refused, and every
   * host watching sees one change: the VM behind its new host. false when
   * the entry changed meanwhile (nothing written).
   */
  async arrive(i: Iface): Promise<{ ok: boolean; undo: () => Promise<void> }> {
    const leaseId = this.leaseId;
    if (leaseId === null || this.reregistering) throw new FpoError('FPO_ERR_IO', 'directory: this host\'s lease is being taken again (etcd was out of reach); try again');
    const key = keyOf(this.deployment, 'interfaces', i.name);
    const rev = this.interfaceRevs.get(i.name);
    const prev = this.interfaces.get(i.name);
    const prevLease = this.interfaceLeases.get(i.name) ?? '0';
    const put = this.client.put(key).value(JSON.stringify(i)).lease(leaseId);
    const r = rev === undefined || prev === undefined
      ? await this.client.if(key, 'Create', '==', 0).then(put).commit()
      : await this.client.if(key, 'Mod', '==', rev).then(put).commit();
    if (r.succeeded) this.published.set(i.name, i);
    const at = Number(r.header.revision);
    // Undo (the host could not apply it after all): the entry as it was, if nothing changed it since.
    const undo = async () => {
      this.published.delete(i.name);
      const back = prev === undefined ? this.client.delete().key(key) : this.client.put(key).value(JSON.stringify(prev)).lease(prevLease === '0' ? 0 : prevLease);
      const u = await this.client.if(key, 'Mod', '==', at).then(back).commit().catch(() => null);
      // The old host's lease gone meanwhile: take the entry out rather than hold a VM nobody runs.
      if (u === null && prev !== undefined) await this.client.if(key, 'Mod', '==', at).then(this.client.delete().key(key)).commit().catch(() => undefined);
    };
    return { ok: r.succeeded, undo };
  }

  /** Publishes one of this host's interfaces (under the host's lease: it goes with the host). */
  async publish(i: Iface): Promise<void> {
    if (this.lease === null) throw new FpoError('FPO_ERR_USAGE', 'directory: register the host before publishing its interfaces');
    await this.lease.put(keyOf(this.deployment, 'interfaces', i.name)).value(JSON.stringify(i));
    this.published.set(i.name, i);
  }

  /** Takes one of this host's interfaces out (a VM stopped or gone). */
  async withdraw(name: string): Promise<void> {
    await this.client.delete().key(keyOf(this.deployment, 'interfaces', name)).exec();
    this.published.delete(name);
  }

  async putSegment(s: Segment): Promise<void> {
    await this.client.put(keyOf(this.deployment, 'segments', s.name)).value(JSON.stringify(s)).exec();
  }

  /**
   * Reads every entry of the deployment (checked; refused ones kept apart);
   * returns the revision read at. In pages of LOAD_PAGE keys, each at the
   * first page's revision (one snapshot however long the read), so no
   * answer passes gRPC's message limit (4 MiB: ~25 000 interfaces at once).
   */
  async load(): Promise<number> {
    this.hosts.clear();
    this.interfaces.clear();
    this.interfaceRevs.clear();
    this.interfaceLeases.clear();
    this.segments.clear();
    this.refused.clear();
    const end = Range.prefix(this.prefix).end;
    let from: Buffer = Buffer.from(this.prefix);
    let rev = 0;
    for (;;) {
      let q = this.client.getAll().inRange({ start: from, end }).limit(LOAD_PAGE);
      if (rev > 0) q = q.revision(rev);
      const res = await q.exec();
      if (rev === 0) rev = Number(res.header.revision);
      for (const kv of res.kvs) this.take(kv.key.toString(), kv.value.toString(), Number(kv.mod_revision), String(kv.lease));
      if (!res.more || res.kvs.length === 0) break;
      from = Buffer.concat([res.kvs[res.kvs.length - 1].key, Buffer.from([0])]);
    }
    this.revision = rev;
    return this.revision;
  }

  /** Follows the changes after the revision loaded, calling `onChange` for each (the state updated first). */
  async watch(onChange: (c: Change) => void = () => undefined): Promise<void> {
    this.watcher = await this.client.watch().prefix(this.prefix).startRevision(String(this.revision + 1)).create();
    this.watching = true;
    // etcd gone (no quorum, or down): the state stays as read, forwarding goes on; the client reconnects and
    // the watch resumes from the last revision it saw — the changes made meanwhile arrive then, in order.
    this.watcher.on('disconnected', () => { this.watching = false; this.lostAt = new Date().toISOString(); });
    this.watcher.on('connected', () => { this.watching = true; });
    this.watcher.on('error', (e: Error) => { this.lastError = e.message; });
    this.watcher.on('put', (kv) => {
      this.revision = Math.max(this.revision, Number(kv.mod_revision));
      this.applied++;
      const c = this.take(kv.key.toString(), kv.value.toString(), Number(kv.mod_revision), String(kv.lease));
      onChange(c);
    });
    this.watcher.on('delete', (kv) => {
      this.revision = Math.max(this.revision, Number(kv.mod_revision));
      this.applied++;
      const key = kv.key.toString();
      this.refused.delete(key);
      // Only a key an entry could have been put under deletes one (a refused key's delete, e.g.
      // interfaces/NAME/x, must not take interfaces/NAME with it); only a known entry is a change.
      const rest = key.slice(this.prefix.length).split('/');
      if (rest.length !== 2 || !['hosts', 'interfaces', 'segments'].includes(rest[0])) return;
      const [kind, name] = rest;
      const map = kind === 'hosts' ? this.hosts : kind === 'interfaces' ? this.interfaces : this.segments;
      if (!map.delete(name)) return;
      if (kind === 'interfaces') { this.interfaceRevs.delete(name); this.interfaceLeases.delete(name); }
      onChange({ type: 'delete', kind, name });
    });
  }

  private take(key: string, value: string, modRevision: number, lease: string): Change {
    const e = parseEntry(this.prefix, key, value);
    if ('error' in e) {
      this.refused.set(key, e.error);
      return { type: 'refused', key, error: e.error };
    }
    this.refused.delete(key);
    if (e.kind === 'host') this.hosts.set(e.value.name, e.value);
    else if (e.kind === 'interface') { this.interfaces.set(e.value.name, e.value); this.interfaceRevs.set(e.value.name, modRevision); this.interfaceLeases.set(e.value.name, lease); }
    else this.segments.set(e.value.name, e.value);
    return { type: 'put', entry: e };
  }

  /** Stops: the watch, and (revoke) this host's lease — its entries go at once — or leaves the lease to expire. */
  async close(revoke = true): Promise<void> {
    this.closing = true;
    this.stopByHand?.();
    // Each waited for CLOSE_MS at most: a member that takes connections and answers nothing had held
    // a stop for ever (the watch's cancel waits for its stream's end). A lease not revoked ends with its TTL.
    if (this.watcher) await atMost(this.watcher.cancel(), CLOSE_MS);
    for (const lease of [this.lease, this.taking]) {
      if (lease === null || lease === undefined) continue;
      if (revoke) await atMost(lease.revoke(), CLOSE_MS);
      else lease.release();
    }
    this.client.close();
  }
}

/** How long close() waits for etcd at each step (the watch's cancel, a lease's revoke). */
export const CLOSE_MS = 2000;

/** p settled (either way) or ms passed, whichever is first; whether p settled. */
function atMost(p: Promise<unknown>, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    p.then(() => { clearTimeout(t); resolve(true); }, () => { clearTimeout(t); resolve(true); });
  });
}
