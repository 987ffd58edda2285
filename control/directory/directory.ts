/**
 * The directory of hosts, VM interfaces and segments that many fpo hosts
 * share, kept in etcd (issue 22; schema.ts says the keys). A host registers
 * itself and publishes its own VMs under one lease, kept alive while it
 * runs: when it stops (or its lease expires), etcd takes its entries with
 * it. A reader loads the whole prefix once (every entry checked; the bad
 * ones refused and kept in `refused`, with why) and then follows the changes
 * by watching from the revision it read at — no full reload after.
 *
 * This is the directory itself; `fpo run --etcd` turning its entries into
 * tunnel remotes and mappings comes next.
 */
import { Etcd3, Range, type Lease, type Watcher } from 'etcd3';

/** Keys a page of load() takes. */
const LOAD_PAGE = 5000;
import { FpoError } from '../../datapath/errors.js';
import { type Entry, type Host, type Iface, type Segment, keyOf, parseEntry, prefixOf } from './schema.js';

export type Change = { type: 'put'; entry: Entry } | { type: 'delete'; kind: string; name: string } | { type: 'refused'; key: string; error: string };

export class Directory {
  readonly prefix: string;
  private readonly client: Etcd3;
  private lease: Lease | null = null;
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
  /** Whether the watch is connected to etcd now; when it was last lost, and why. */
  connected = false;
  lostAt: string | null = null;
  lastError: string | null = null;

  constructor(endpoints: string[], readonly deployment: string, opts: { timeoutMs?: number } = {}) {
    this.prefix = prefixOf(deployment);
    this.client = new Etcd3({ hosts: endpoints, dialTimeout: opts.timeoutMs ?? 3000 });
  }

  /** Registers this host (and, later, its interfaces) under a lease of `ttlSeconds`, kept alive while the client runs. */
  async registerHost(h: Host, ttlSeconds: number): Promise<void> {
    this.lease = this.client.lease(ttlSeconds);
    await this.lease.put(keyOf(this.deployment, 'hosts', h.name)).value(JSON.stringify(h));
  }

  /** Publishes one of this host's interfaces (under the host's lease: it goes with the host). */
  async publish(i: Iface): Promise<void> {
    if (this.lease === null) throw new FpoError('FPO_ERR_USAGE', 'directory: register the host before publishing its interfaces');
    await this.lease.put(keyOf(this.deployment, 'interfaces', i.name)).value(JSON.stringify(i));
  }

  /** Takes one of this host's interfaces out (a VM stopped or gone). */
  async withdraw(name: string): Promise<void> {
    await this.client.delete().key(keyOf(this.deployment, 'interfaces', name)).exec();
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
      for (const kv of res.kvs) this.take(kv.key.toString(), kv.value.toString());
      if (!res.more || res.kvs.length === 0) break;
      from = Buffer.concat([res.kvs[res.kvs.length - 1].key, Buffer.from([0])]);
    }
    this.revision = rev;
    return this.revision;
  }

  /** Follows the changes after the revision loaded, calling `onChange` for each (the state updated first). */
  async watch(onChange: (c: Change) => void = () => undefined): Promise<void> {
    this.watcher = await this.client.watch().prefix(this.prefix).startRevision(String(this.revision + 1)).create();
    this.connected = true;
    // etcd gone (no quorum, or down): the state stays as read, forwarding goes on; the client reconnects and
    // the watch resumes from the last revision it saw — the changes made meanwhile arrive then, in order.
    this.watcher.on('disconnected', () => { this.connected = false; this.lostAt = new Date().toISOString(); });
    this.watcher.on('connected', () => { this.connected = true; });
    this.watcher.on('error', (e: Error) => { this.lastError = e.message; });
    this.watcher.on('put', (kv) => {
      this.revision = Math.max(this.revision, Number(kv.mod_revision));
      this.applied++;
      const c = this.take(kv.key.toString(), kv.value.toString());
      onChange(c);
    });
    this.watcher.on('delete', (kv) => {
      this.revision = Math.max(this.revision, Number(kv.mod_revision));
      this.applied++;
      const key = kv.key.toString();
      const [kind, name] = key.slice(this.prefix.length).split('/');
      (kind === 'hosts' ? this.hosts : kind === 'interfaces' ? this.interfaces : this.segments).delete(name);
      this.refused.delete(key);
      onChange({ type: 'delete', kind, name });
    });
  }

  private take(key: string, value: string): Change {
    const e = parseEntry(this.prefix, key, value);
    if ('error' in e) {
      this.refused.set(key, e.error);
      return { type: 'refused', key, error: e.error };
    }
    this.refused.delete(key);
    if (e.kind === 'host') this.hosts.set(e.value.name, e.value);
    else if (e.kind === 'interface') this.interfaces.set(e.value.name, e.value);
    else this.segments.set(e.value.name, e.value);
    return { type: 'put', entry: e };
  }

  /** Stops: the watch, and (revoke) this host's lease — its entries go at once — or leaves the lease to expire. */
  async close(revoke = true): Promise<void> {
    await this.watcher?.cancel();
    if (revoke) await this.lease?.revoke().catch(() => undefined);
    else this.lease?.release();
    this.client.close();
  }
}
