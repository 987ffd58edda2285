/**
 * Execute: runs each packet's flow actions, resolves every output VPID to a
 * PPID through the mapping table, and splits the batch by PPID into per-port
 * tx lists. Packets that emit nothing get their drop reason here.
 *
 * The split is the "move per batch" half of the pipeline: a port gets one
 * `writeBatch(batch, idx, from, n)` call per batch with the indices of its packets,
 * in arrival order (so an output capture keeps the input's time order).
 *
 * Tx lists live in one Uint16Array, a slot of `listCap` entries per port;
 * `slotOf[ppid]` says which slot (-1: no port). Ports are added in the slow
 * path, before traffic.
 */
import type { PacketBatch } from '../batch.js';
import { D } from '../drops.js';
import type { FlowTable } from '../classifier/flow-table.js';
import type { MappingTable } from '../mapping/mapping-table.js';
import { OP_DROP, OP_OUTPUT, type ActionSets } from './action-sets.js';

export class Execute {
  static readonly stageName = 'execute';
  static readonly next = ['tx', 'drop'] as const;

  /** Per PPID: its tx slot, or -1 when the NIC has no such port. */
  readonly slotOf: Int16Array;
  /** PPID of each slot. */
  private slotPpid: Uint16Array;
  /** Tx lists: packet indices of slot s at txIdx[s * listCap ..]. */
  txIdx: Uint16Array;
  /** Per slot: entries used this batch. */
  txCount: Int32Array;
  /** Slots with txCount > 0 this batch, in first-use order. */
  touched: Uint16Array;
  touchedCount = 0;
  /** Copies emitted in total (a flood counts each copy). */
  copies = 0;
  /** Copies not sent because their VPID had no PPID. */
  unmappedCopies = 0;

  readonly listCap: number;
  private slots = 0;

  constructor(
    private readonly flows: FlowTable,
    private readonly sets: ActionSets,
    private readonly mapping: MappingTable,
    batchCapacity: number,
  ) {
    this.slotOf = new Int16Array(mapping.maxPpid + 1).fill(-1);
    this.listCap = batchCapacity;
    this.slotPpid = new Uint16Array(0);
    this.txIdx = new Uint16Array(0);
    this.txCount = new Int32Array(0);
    this.touched = new Uint16Array(0);
  }

  /** Slow path: gives port `ppid` a tx list. */
  enablePort(ppid: number): void {
    if (this.slotOf[ppid] >= 0) return;
    const s = this.slots++;
    this.slotOf[ppid] = s;
    const grow = <T extends Uint16Array | Int32Array>(a: T, size: number, make: (n: number) => T): T => {
      const b = make(size);
      b.set(a);
      return b;
    };
    this.slotPpid = grow(this.slotPpid, this.slots, (n) => new Uint16Array(n));
    this.slotPpid[s] = ppid;
    this.txIdx = grow(this.txIdx, this.slots * this.listCap, (n) => new Uint16Array(n));
    this.txCount = grow(this.txCount, this.slots, (n) => new Int32Array(n));
    this.touched = new Uint16Array(this.slots);
  }

  /** PPID of tx slot s. */
  ppidOf(s: number): number {
    return this.slotPpid[s];
  }

  process(batch: PacketBatch): void {
    const n = batch.count;
    const drop = batch.drop;
    const flow = batch.flow;
    const act = this.flows.act;
    const pool = this.sets.pool;
    const start = this.sets.start;
    const len = this.sets.len;
    const toPpid = this.mapping.toPpid;
    const slotOf = this.slotOf;
    const txIdx = this.txIdx;
    const txCount = this.txCount;
    const touched = this.touched;
    const cap = this.listCap;
    let nt = 0;
    let copies = 0;
    let unmapped = 0;
    for (let i = 0; i < n; i++) {
      if (drop[i] !== 0) continue;
      const a = act[flow[i]];
      const s = start[a];
      const e = s + len[a];
      let emitted = 0;
      let reason = D.noDestination;
      for (let j = s; j < e; j++) {
        const w = pool[j];
        const op = w >>> 24;
        if (op === OP_OUTPUT) {
          const ppid = toPpid[w & 0xffffff];
          const slot = ppid >= 0 ? slotOf[ppid] : -1;
          if (slot < 0) {
            unmapped++;
            reason = D.vpidUnmapped;
            continue;
          }
          const c = txCount[slot];
          const at = slot * cap;
          // A packet's outputs are consecutive, so a second output of packet i
          // to the same port is the list's last entry: one copy is enough.
          // This also keeps a list at one entry per packet (<= batch capacity).
          if (c > 0 && txIdx[at + c - 1] === i) continue;
          if (c === 0) touched[nt++] = slot;
          txIdx[at + c] = i;
          txCount[slot] = c + 1;
          emitted++;
        } else if (op === OP_DROP) {
          reason = w & 0xffffff;
        }
      }
      if (emitted === 0) drop[i] = reason;
      copies += emitted;
    }
    this.touchedCount = nt;
    this.copies += copies;
    this.unmappedCopies += unmapped;
  }
}
