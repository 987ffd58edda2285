/**
 * VPIDs in etcd (issue 22): a VM interface's VPID is claimed once, by a
 * compare-and-swap transaction, and kept — across its host's restarts and
 * across moves to other hosts — so flows and state that name it stay true.
 * Two keys per claim, written together or not at all, neither under a
 * lease (a claim outlives its host's session):
 *
 *   /fpo-vpids/DEPLOYMENT/by-name/NAME   "VPID"   (an interface's VPID)
 *   /fpo-vpids/DEPLOYMENT/by-vpid/VPID   "NAME"   (whose a VPID is)
 *
 * A transaction creates both only if neither exists, so no two interfaces
 * are ever given one VPID, whatever hosts allocate at once. The space is
 * the deployment's: VPIDs are then unique on each host (the seed's rule)
 * and a VM keeps its VPID wherever it moves, with no clash at the
 * destination. Interface VPIDs are 1..VPID_MAX; the 256 above are each
 * host's own uplinks (fpo run --etcd numbers its uplinks from 65535 down).
 * The claims live under a prefix of their own so the hosts' directory
 * watch does not carry them.
 */
import type { Etcd3 } from 'etcd3';
import { FpoError } from '../../datapath/errors.js';
import { prefixOf } from './schema.js';

/** The highest VPID an interface is given; above it, hosts' uplinks. */
export const VPID_MAX = 65279;
/** The first VPID of the uplink range (fpo run --etcd: uplinks from 65535 down to this). */
export const UPLINK_VPID_MIN = VPID_MAX + 1;

/** A by-name claim's value: the VPID, or why it is refused. */
export function parseClaim(value: string, max = VPID_MAX): number | { error: string } {
  if (!/^[1-9]\d{0,5}$/.test(value)) return { error: `expected a VPID (a decimal integer in 1..${max}), got ${JSON.stringify(value.slice(0, 40))}` };
  const v = Number(value);
  if (v > max) return { error: `expected a VPID in 1..${max}, got ${v}` };
  return v;
}

export class VpidClaims {
  private readonly byName: string;
  private readonly byVpid: string;

  constructor(private readonly client: Etcd3, deployment: string, readonly max = VPID_MAX) {
    const p = `/fpo-vpids/${prefixOf(deployment).slice('/fpo/'.length)}`;
    this.byName = `${p}by-name/`;
    this.byVpid = `${p}by-vpid/`;
  }

  /**
   * The VPID claimed for `name`, or null. A claim holds only when its two
   * keys say each other (by-name NAME → V and by-vpid V → NAME): a by-name
   * key that is not a VPID, or whose VPID's key names another interface
   * (written by someone else, or half of a claim), is no claim — `stale`
   * then keeps its text, and `claim` replaces it.
   */
  async of(name: string): Promise<number | null> {
    return (await this.read(name)).vpid;
  }

  /** Claims found broken (a bad value, or keys that do not say each other) and replaced. */
  staleReplaced = 0;

  private async read(name: string): Promise<{ vpid: number | null; stale: string | null }> {
    const value = await this.client.get(this.byName + name).string();
    if (value === null) return { vpid: null, stale: null };
    const v = parseClaim(value, this.max);
    if (typeof v !== 'number') return { vpid: null, stale: value };
    const back = await this.client.get(this.byVpid + v).string();
    return back === name ? { vpid: v, stale: null } : { vpid: null, stale: value };
  }

  /**
   * The VPID of interface `name`: the one claimed for it before (claimed
   * false), else a new claim (claimed true) — `prefer` when it is free and
   * `avoid` does not rule it out, else the lowest free one. Each attempt is
   * one transaction that creates both keys only if neither exists; a lost
   * race is tried again with what it learnt.
   */
  async claim(name: string, prefer: number, avoid: (v: number) => boolean = () => false): Promise<{ vpid: number; claimed: boolean }> {
    let used: Set<number> | null = null;
    let cursor = 1;
    for (let attempt = 0; attempt < 4 * this.max; attempt++) {
      const had = await this.read(name);
      if (had.vpid !== null) return { vpid: had.vpid, claimed: false };
      if (had.stale !== null) {
        // A broken claim: taken out (only if still what was read), then claimed afresh below.
        const r = await this.client.if(this.byName + name, 'Value', '==', had.stale).then(this.client.delete().key(this.byName + name)).commit();
        if (r.succeeded) this.staleReplaced++;
        continue;
      }
      let cand = -1;
      if (attempt === 0 && Number.isInteger(prefer) && prefer >= 1 && prefer <= this.max && !avoid(prefer)) cand = prefer;
      else {
        used ??= await this.used();
        while (cursor <= this.max && (used.has(cursor) || avoid(cursor))) cursor++;
        if (cursor > this.max) throw new FpoError('FPO_ERR_USAGE', `VPID for ${name}: none free in 1..${this.max} (${used.size} claimed in the deployment)`);
        cand = cursor;
      }
      const r = await this.client
        .if(this.byName + name, 'Create', '==', 0)
        .and(this.byVpid + cand, 'Create', '==', 0)
        .then(this.client.put(this.byName + name).value(String(cand)), this.client.put(this.byVpid + cand).value(name))
        .commit();
      if (r.succeeded) return { vpid: cand, claimed: true };
      (used ??= await this.used()).add(cand);
    }
    throw new FpoError('FPO_ERR_IO', `VPID for ${name}: no claim after ${4 * this.max} attempts`);
  }

  /** Gives up `name`'s claim (a VM deleted for good): both keys, only if they still say each other. */
  async release(name: string): Promise<boolean> {
    const v = (await this.read(name)).vpid;
    if (v === null) return false;
    const r = await this.client
      .if(this.byName + name, 'Value', '==', String(v))
      .and(this.byVpid + v, 'Value', '==', name)
      .then(this.client.delete().key(this.byName + name), this.client.delete().key(this.byVpid + v))
      .commit();
    return r.succeeded;
  }

  /** The VPIDs claimed in the deployment now. */
  private async used(): Promise<Set<number>> {
    const keys = await this.client.getAll().prefix(this.byVpid).keys();
    const s = new Set<number>();
    for (const k of keys) {
      const v = Number(k.slice(this.byVpid.length));
      if (Number.isInteger(v)) s.add(v);
    }
    return s;
  }
}
