/**
 * Execute: runs each packet's flow actions, resolves every output VPID to a
 * PPID through the mapping table, and splits the batch by PPID into per-port
 * tx lists. Packets that emit nothing get their drop reason here.
 *
 * The split is the "move per batch" half of the pipeline: a port gets one
 * `writeBatch(batch, idx, n)` call per batch with the indices of its packets,
 * in arrival order.
 */
import type { PacketBatch } from '../batch.js';
import { D } from '../drops.js';
import type { FlowTable } from '../classifier/flow-table.js';
import type { MappingTable } from '../mapping/mapping-table.js';
import { OP_DROP, OP_OUTPUT, type ActionSets } from './action-sets.js';

export class Execute {
  static readonly stageName = 'execute';
  static readonly next = ['tx', 'drop'] as const;

  /** Per PPID: packet indices to send this batch (allocated when a port is added). */
  readonly txIdx: (Uint16Array | undefined)[];
  /** Per PPID: how many entries of txIdx are used this batch. */
  readonly txCount: Int32Array;
  /** PPIDs with txCount > 0 this batch, in first-use order. */
  readonly touched: Uint16Array;
  touchedCount = 0;
  /** Copies emitted in total (a flood counts each copy). */
  copies = 0;
  /** Copies not sent because their VPID had no PPID. */
  unmappedCopies = 0;

  private readonly listCap: number;

  constructor(
    private readonly flows: FlowTable,
    private readonly sets: ActionSets,
    private readonly mapping: MappingTable,
    batchCapacity: number,
  ) {
    this.txIdx = new Array(mapping.maxPpid + 1).fill(undefined);
    this.txCount = new Int32Array(mapping.maxPpid + 1);
    this.touched = new Uint16Array(mapping.maxPpid + 1);
    this.listCap = batchCapacity;
  }

  /** Slow path: gives port `ppid` a tx list. */
  enablePort(ppid: number): void {
    this.txIdx[ppid] ??= new Uint16Array(this.listCap);
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
    const txIdx = this.txIdx;
    const txCount = this.txCount;
    this.touchedCount = 0;
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
          const list = ppid >= 0 ? txIdx[ppid] : undefined;
          if (list === undefined) {
            unmapped++;
            reason = D.vpidUnmapped;
            continue;
          }
          const c = txCount[ppid];
          // A packet's outputs are consecutive, so a second output of packet i
          // to the same port is the list's last entry: one copy is enough.
          // This also keeps a list at one entry per packet (<= batch capacity).
          if (c > 0 && list[c - 1] === i) continue;
          if (c === 0) this.touched[this.touchedCount++] = ppid;
          list[c] = i;
          txCount[ppid] = c + 1;
          emitted++;
        } else if (op === OP_DROP) {
          reason = w & 0xffffff;
        }
      }
      if (emitted === 0) drop[i] = reason;
      copies += emitted;
    }
    this.copies += copies;
    this.unmappedCopies += unmapped;
  }
}
