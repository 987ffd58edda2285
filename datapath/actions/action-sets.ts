/**
 * ActionSets: the actions of flows, interned. A flow stores one integer, the
 * id of its action set; many flows (every flow to one VM) share one set.
 *
 * Encoding, in one Int32Array pool: a set is `len` words at `start[id]`, each
 * word `op << 24 | arg`:
 *   OP_OUTPUT  arg = VPID         send a copy to the port the VPID maps to
 *   OP_DROP    arg = drop code    drop with that reason (drops.ts)
 *   OP_ENCAP   arg = encap id     later outputs go through that (tunnel, VNI) (encap.ts)
 *   OP_FLAG    arg = 0            encapsulated copies carry the special-processing flag
 *   OP_PUSH_VLAN arg = VID        later plain outputs get an 802.1Q tag with that VID (vlan.ts)
 *   OP_POP_VLAN  arg = 0          later plain outputs lose the frame's outer VLAN tag (vlan.ts)
 *   OP_CT      arg = ct spec id   the packet goes through conntrack (zone, commit, NAT: ctZone…
 *                                 below); then, with a table, it is classified again with its
 *                                 ct_state (recirculated), else the spec's continuation set (the
 *                                 actions written after the ct) runs on it. Always the set's last word.
 * A VLAN op holds until the next VLAN op; an encapsulated output ignores it
 * (a tunnel carries the segment in its VNI, never in a tag inside).
 * A set with no OP_OUTPUT that emits nothing drops the packet; the reason is
 * its OP_DROP's, or noDestination.
 */
import { D } from '../drops.js';
import { FpoError } from '../errors.js';
import { NatRange } from '../conntrack/nat.js';
import type { Encap } from './encap.js';

export const OP_OUTPUT = 1;
export const OP_DROP = 2;
export const OP_ENCAP = 3;
export const OP_FLAG = 4;
export const OP_PUSH_VLAN = 5;
export const OP_POP_VLAN = 6;
export const OP_CT = 7;

/** A ct action's NAT: to an address range and an optional port range (0-0: keep the port). */
export interface CtNat {
  kind: 'src' | 'dst';
  addrMin: string;
  addrMax: string;
  portMin: number;
  portMax: number;
}

/**
 * One action, as the control plane writes it. `encap` applies to the outputs
 * after it in the list (until the next encap); `flag` marks the packet's
 * encapsulated copies with the special-processing flag; `push_vlan` and
 * `pop_vlan` apply to the plain outputs after them (until the next VLAN op).
 */
export type Action =
  | { op: 'output'; vpid: number }
  | { op: 'drop'; reason: number }
  | { op: 'encap'; tunnel: number; vni: number }
  | { op: 'flag' }
  | { op: 'push_vlan'; vid: number }
  | { op: 'pop_vlan' }
  /** table -1: no recirculation, the actions after this one run on the tracked packet. */
  | { op: 'ct'; zone: number; commit: boolean; table: number; nat?: CtNat; fw?: boolean };

export class ActionSets {
  pool: Int32Array;
  start: Int32Array;
  len: Int32Array;
  count = 0;
  private used = 0;
  private readonly byText = new Map<string, number>();
  /** Sets already interned, by array identity: the FPAG reuses its action arrays, so most installs stop here. */
  private readonly byRef = new WeakMap<readonly Action[], number>();
  private lastRef: readonly Action[] | null = null;
  private lastId = -1;

  /** ct specs, by id (OP_CT's arg): zone, commit (1/0), table (-1: none), continuation set, NAT. */
  ctZone: Int32Array = new Int32Array(16);
  ctCommit: Uint8Array = new Uint8Array(16);
  /** 1: the per-port firewall's ct (`fw`): tracked by the firewall version serving the zone (Datapath.firewallFor), not the datapath's conntrack. */
  ctFw: Uint8Array = new Uint8Array(16);
  ctTable: Int32Array = new Int32Array(16);
  ctCont: Int32Array = new Int32Array(16);
  ctNat: (NatRange | null)[] = [];
  /** Per spec: its conntrack part (zone, commit, NAT) as a small id: specs that differ only in what follows share it, and one ConnTrack call serves them. */
  ctCore: Int32Array = new Int32Array(16);
  private ctCount = 0;
  private readonly ctByText = new Map<string, number>();
  private readonly ctCoreByText = new Map<string, number>();

  constructor(readonly encap: Encap, initialSets = 1024, initialWords = 16384) {
    this.pool = new Int32Array(initialWords);
    this.start = new Int32Array(initialSets);
    this.len = new Int32Array(initialSets);
  }

  // Slow path: interning runs per installed flow.
  intern(actions: readonly Action[]): number {
    // (A batch's flows mostly share their actions: the last array first, then a WeakMap's get, ~12 ns a flow.)
    if (actions === this.lastRef) return this.lastId;
    let id = this.byRef.get(actions);
    if (id === undefined) {
      id = this.internByValue(actions);
      this.byRef.set(actions, id);
    }
    this.lastRef = actions;
    this.lastId = id;
    return id;
  }

  private internByValue(actions: readonly Action[]): number {
    const ct = actions.findIndex((a) => a.op === 'ct');
    const words = (ct >= 0 ? actions.slice(0, ct + 1) : actions).map((a) => {
      switch (a.op) {
        case 'output': return (OP_OUTPUT << 24) | (a.vpid & 0xffffff);
        case 'drop': return (OP_DROP << 24) | (a.reason & 0xffffff);
        case 'encap': return (OP_ENCAP << 24) | this.encap.encapId(a.tunnel, a.vni);
        case 'flag': return OP_FLAG << 24;
        case 'push_vlan': return (OP_PUSH_VLAN << 24) | (a.vid & 0xfff);
        case 'pop_vlan': return OP_POP_VLAN << 24;
        case 'ct': return (OP_CT << 24) | this.ctSpec(a, actions.slice(ct + 1));
      }
    });
    if (words.length === 0) words.push((OP_DROP << 24) | D.noDestination);
    const text = words.join(',');
    const have = this.byText.get(text);
    if (have !== undefined) return have;
    if (this.count === this.start.length) {
      this.start = grow(this.start, this.start.length * 2);
      this.len = grow(this.len, this.len.length * 2);
    }
    if (this.used + words.length > this.pool.length) this.pool = grow(this.pool, Math.max(this.pool.length * 2, this.used + words.length));
    const id = this.count++;
    this.start[id] = this.used;
    this.len[id] = words.length;
    for (const w of words) this.pool[this.used++] = w;
    this.byText.set(text, id);
    return id;
  }

  // Slow path: the id of a ct spec (zone, commit, table, NAT, what follows it), made once.
  private ctSpec(a: Extract<Action, { op: 'ct' }>, rest: readonly Action[]): number {
    if (!Number.isInteger(a.zone) || a.zone < 0 || a.zone > 0xffff) throw new FpoError('FPO_ERR_USAGE', `ct: zone ${a.zone} is not in 0..65535`);
    if (!Number.isInteger(a.table) || a.table < -1 || a.table > 255 || a.table === 0) throw new FpoError('FPO_ERR_USAGE', `ct: table ${a.table} is not in 1..255 (or none)`);
    if (a.table > 0 && rest.length > 0) throw new FpoError('FPO_ERR_USAGE', `ct: with table=${a.table} the packet is classified again, so ct must be the last action (${rest.length} follow it)`);
    const nat = a.nat === undefined ? null : new NatRange(a.nat.kind, a.nat.addrMin, a.nat.addrMax, a.nat.portMin, a.nat.portMax);
    const cont = a.table > 0 ? -1 : this.internByValue(rest);
    if (a.fw === true && a.nat !== undefined) throw new FpoError('FPO_ERR_USAGE', 'ct: the firewall\'s ct (fw) does no NAT');
    const text = JSON.stringify([a.zone, a.commit, a.table, a.nat ?? null, cont, a.fw === true]);
    const have = this.ctByText.get(text);
    if (have !== undefined) return have;
    const id = this.ctCount++;
    if (id === this.ctZone.length) {
      this.ctZone = grow(this.ctZone, id * 2);
      this.ctTable = grow(this.ctTable, id * 2);
      this.ctCont = grow(this.ctCont, id * 2);
      this.ctCore = grow(this.ctCore, id * 2);
      const c = new Uint8Array(id * 2);
      c.set(this.ctCommit);
      this.ctCommit = c;
      const f = new Uint8Array(id * 2);
      f.set(this.ctFw);
      this.ctFw = f;
    }
    this.ctFw[id] = a.fw === true ? 1 : 0;
    this.ctZone[id] = a.zone;
    this.ctCommit[id] = a.commit ? 1 : 0;
    this.ctTable[id] = a.table;
    this.ctCont[id] = cont;
    this.ctNat[id] = nat;
    const coreText = JSON.stringify([a.zone, a.commit, a.nat ?? null, a.fw === true]);
    let core = this.ctCoreByText.get(coreText);
    if (core === undefined) this.ctCoreByText.set(coreText, (core = this.ctCoreByText.size));
    this.ctCore[id] = core;
    this.ctByText.set(text, id);
    return id;
  }

  /** The ct action of spec `id`, as the control plane wrote it. */
  describeCt(id: number): Extract<Action, { op: 'ct' }> {
    const n = this.ctNat[id];
    const a: Extract<Action, { op: 'ct' }> = { op: 'ct', zone: this.ctZone[id], commit: this.ctCommit[id] === 1, table: this.ctTable[id] };
    if (n !== null) a.nat = n.describe();
    if (this.ctFw[id] === 1) a.fw = true;
    return a;
  }

  /** The actions of set `id`, as objects (for dumps and tests). */
  describe(id: number): Action[] {
    const out: Action[] = [];
    for (let j = 0; j < this.len[id]; j++) {
      const w = this.pool[this.start[id] + j];
      const op = w >>> 24;
      if (op === OP_OUTPUT) out.push({ op: 'output', vpid: w & 0xffffff });
      else if (op === OP_ENCAP) out.push({ op: 'encap', ...this.encap.describe(w & 0xffffff) });
      else if (op === OP_FLAG) out.push({ op: 'flag' });
      else if (op === OP_PUSH_VLAN) out.push({ op: 'push_vlan', vid: w & 0xfff });
      else if (op === OP_POP_VLAN) out.push({ op: 'pop_vlan' });
      else if (op === OP_CT) {
        const c = w & 0xffffff;
        out.push(this.describeCt(c));
        if (this.ctCont[c] >= 0) out.push(...this.describe(this.ctCont[c]));
      } else out.push({ op: 'drop', reason: w & 0xffffff });
    }
    return out;
  }
}

function grow(a: Int32Array, size: number): Int32Array {
  const b = new Int32Array(size);
  b.set(a);
  return b;
}
