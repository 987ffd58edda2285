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
 * A VLAN op holds until the next VLAN op; an encapsulated output ignores it
 * (a tunnel carries the segment in its VNI, never in a tag inside).
 * A set with no OP_OUTPUT that emits nothing drops the packet; the reason is
 * its OP_DROP's, or noDestination.
 */
import { D } from '../drops.js';
import type { Encap } from './encap.js';

export const OP_OUTPUT = 1;
export const OP_DROP = 2;
export const OP_ENCAP = 3;
export const OP_FLAG = 4;
export const OP_PUSH_VLAN = 5;
export const OP_POP_VLAN = 6;

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
  | { op: 'pop_vlan' };

export class ActionSets {
  pool: Int32Array;
  start: Int32Array;
  len: Int32Array;
  count = 0;
  private used = 0;
  private readonly byText = new Map<string, number>();
  /** Sets already interned, by array identity: the FPAG reuses its action arrays, so most installs stop here. */
  private readonly byRef = new WeakMap<readonly Action[], number>();

  constructor(readonly encap: Encap, initialSets = 1024, initialWords = 16384) {
    this.pool = new Int32Array(initialWords);
    this.start = new Int32Array(initialSets);
    this.len = new Int32Array(initialSets);
  }

  // Slow path: interning runs per installed flow.
  intern(actions: readonly Action[]): number {
    const known = this.byRef.get(actions);
    if (known !== undefined) return known;
    const id = this.internByValue(actions);
    this.byRef.set(actions, id);
    return id;
  }

  private internByValue(actions: readonly Action[]): number {
    const words = actions.map((a) => {
      switch (a.op) {
        case 'output': return (OP_OUTPUT << 24) | (a.vpid & 0xffffff);
        case 'drop': return (OP_DROP << 24) | (a.reason & 0xffffff);
        case 'encap': return (OP_ENCAP << 24) | this.encap.encapId(a.tunnel, a.vni);
        case 'flag': return OP_FLAG << 24;
        case 'push_vlan': return (OP_PUSH_VLAN << 24) | (a.vid & 0xfff);
        case 'pop_vlan': return OP_POP_VLAN << 24;
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
      else out.push({ op: 'drop', reason: w & 0xffffff });
    }
    return out;
  }
}

function grow(a: Int32Array, size: number): Int32Array {
  const b = new Int32Array(size);
  b.set(a);
  return b;
}
