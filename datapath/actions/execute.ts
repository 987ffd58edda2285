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
 * path, before traffic. `txEnc` runs beside `txIdx`: -1 for a plain copy,
 * encapId * 2 + flag for a copy the port must encapsulate (encap.ts), or
 * -2 and below for a copy whose VLAN tag the port pushes or pops (vlan.ts). A
 * port's list holds up to COPIES_PER_PORT copies per packet (head-end
 * replication sends one packet to several remote hosts through one uplink);
 * a copy beyond that is not sent and is counted in `listFull`. An
 * encapsulated copy whose inner frame is too long for the outer IP length
 * field (Encap.maxInner) is not sent either (Encap.tooLong); a packet none
 * of whose copies went is dropped as encapTooLong.
 *
 * Direct copies: a port whose tx side is a buffer in the same arena as the
 * rx buffer (a classic pcap writer, DirectTx) gets each plain copy of a
 * raw-pcap batch (batch.rawPcapLE: record header and data as they will be
 * written) straight into that buffer here, record header and all, instead
 * of an entry in its list: with many ports a batch gives each only a few
 * packets, and a port call per batch cost more than the copies. Order stays
 * the arrival order: once a port has a list entry in a batch (an
 * encapsulated copy, say), the rest of its packets in that batch go to the
 * list too, and lists are written after the direct copies.
 */
import { arenaCopy } from '../arena.js';
import type { PacketBatch } from '../batch.js';
import { D, RECIRC } from '../drops.js';
import type { FlowTable } from '../classifier/flow-table.js';
import type { MappingTable } from '../mapping/mapping-table.js';
import { OP_CT, OP_DROP, OP_ENCAP, OP_FLAG, OP_OUTPUT, OP_POP_VLAN, OP_PUSH_VLAN, type ActionSets } from './action-sets.js';
import { TX_PLAIN, TX_POP_VLAN, txPushVlan } from './vlan.js';

export const COPIES_PER_PORT = 16;

/**
 * A port's tx buffer in the arena that execute may copy raw pcap records
 * into (capture-writer.ts). Execute holds the buffer's fill level for all
 * such ports in one array, so a copy touches no port object: the port reads
 * and writes its level through the cell `attachDirect` gives it.
 */
export interface DirectTx {
  readonly arenaBytes: Uint8Array;
  readonly arenaWords: Int32Array;
  /** Byte offset of the buffer in the arena, and its size (0: no direct copies). */
  readonly directBase: number;
  readonly directCap: number;
  /** From now on, the buffer's fill level (bytes) is cells[at]. */
  attachDirect(cells: Int32Array, at: number): void;
  /** Called before the port's first direct copy (a capture port creates its file here). */
  directBegin(): void;
  /** Writes the buffer out; afterwards the fill level is 0. */
  flush(): void;
}

export class Execute {
  static readonly stageName = 'execute';
  static readonly next = ['tx', 'drop'] as const;

  /** Per PPID: its tx slot, or -1 when the NIC has no such port. */
  readonly slotOf: Int16Array;
  /** PPID of each slot. */
  slotPpid: Uint16Array;
  /** Tx lists: packet indices of slot s at txIdx[s * listCap ..]. */
  txIdx: Uint16Array;
  /** Beside txIdx: -1, encapId * 2 + flag, or a VLAN op (vlan.ts: <= -2). */
  txEnc: Int32Array;
  /** Copies dropped because a port's list for this batch was full. */
  listFull = 0;
  /** Flag the first this-many packets of every flow that are encapsulated (0: none). */
  flagFirstPackets = 0;
  /** Per slot: entries used this batch. */
  txCount: Int32Array;
  /** Slots with txCount > 0 this batch, in first-use order. */
  touched: Uint16Array;
  touchedCount = 0;
  /** Copies emitted in total (a flood counts each copy). */
  copies = 0;
  /** Copies not sent because their VPID had no PPID. */
  unmappedCopies = 0;
  /**
   * Packets whose actions end in ct, this pass: their index and ct spec
   * (ActionSets.ct*). Their outputs before the ct went as usual; they are
   * marked RECIRC, and the datapath takes them on (Datapath.recirculate).
   */
  readonly ctIdx: Uint16Array;
  readonly ctSpec: Int32Array;
  ctCount = 0;

  readonly listCap: number;
  private slots = 0;
  /** Ports given tx slots so far (the per-slot arrays are replaced as this grows). */
  get slotCount(): number {
    return this.slots;
  }

  // Direct copies, per slot: the port (or null), its buffer's base, size and
  // fill level, whether it has begun (file open), and the batch it last had a
  // list entry in (then its packets go to the list for the rest of the batch).
  // The fast lane (fast-lane.ts) copies through the same arrays; they are
  // replaced when a port is added, so it reads them afresh each batch.
  private dSink: (DirectTx | null)[] = [];
  dBase = new Int32Array(0);
  dCap = new Int32Array(0);
  dUsed = new Int32Array(0);
  dBegun = new Uint8Array(0);
  private listStamp = new Uint32Array(0);
  /** The arena all direct ports share (the first one's); a port in another arena gets lists. */
  dBytes: Uint8Array | null = null;
  dWords: Int32Array = new Int32Array(0);

  constructor(
    private readonly flows: FlowTable,
    private readonly sets: ActionSets,
    private readonly mapping: MappingTable,
    batchCapacity: number,
    /** Packets and bytes (on the wire) sent, by PPID: direct copies are counted here, lists by the datapath. */
    readonly txPackets: Float64Array = new Float64Array(mapping.maxPpid + 1),
    readonly txBytes: Float64Array = new Float64Array(mapping.maxPpid + 1),
  ) {
    this.slotOf = new Int16Array(mapping.maxPpid + 1).fill(-1);
    this.ctIdx = new Uint16Array(batchCapacity);
    this.ctSpec = new Int32Array(batchCapacity);
    this.listCap = batchCapacity * COPIES_PER_PORT;
    this.slotPpid = new Uint16Array(0);
    this.txIdx = new Uint16Array(0);
    this.txEnc = new Int32Array(0);
    this.txCount = new Int32Array(0);
    this.touched = new Uint16Array(0);
  }

  /** Slow path: gives port `ppid` a tx list, and direct copies when it offers them. */
  enablePort(ppid: number, direct?: DirectTx): void {
    if (this.slotOf[ppid] >= 0) return;
    const s = this.slots++;
    this.slotOf[ppid] = s;
    // Per-slot arrays grow by doubling: adding n ports costs O(n), not O(n²)
    // (4095 ports one by one took minutes when each add copied every array).
    if (s >= this.slotPpid.length) this.growSlots(Math.max(8, this.slotPpid.length * 2));
    this.dSink.push(null);
    if (direct !== undefined && direct.directCap > 0 && (this.dBytes === null || this.dBytes === direct.arenaBytes)) {
      this.dBytes = direct.arenaBytes;
      this.dWords = direct.arenaWords;
      this.dSink[s] = direct;
      this.dBase[s] = direct.directBase;
      this.dCap[s] = direct.directCap;
      direct.attachDirect(this.dUsed, s);
    }
    this.slotPpid[s] = ppid;
  }

  // Slow path: room for `cap` slots in every per-slot array.
  private growSlots(cap: number): void {
    const grow = <T extends Uint8Array | Uint16Array | Int32Array | Uint32Array>(a: T, size: number, make: (n: number) => T): T => {
      const b = make(size);
      b.set(a);
      return b;
    };
    this.dBase = grow(this.dBase, cap, (k) => new Int32Array(k));
    this.dCap = grow(this.dCap, cap, (k) => new Int32Array(k));
    this.dBegun = grow(this.dBegun, cap, (k) => new Uint8Array(k));
    this.listStamp = grow(this.listStamp, cap, (k) => new Uint32Array(k));
    // Ports already attached keep their cells: the fill levels move to the new array.
    this.dUsed = grow(this.dUsed, cap, (k) => new Int32Array(k));
    for (let t = 0; t < this.dSink.length; t++) this.dSink[t]?.attachDirect(this.dUsed, t);
    this.slotPpid = grow(this.slotPpid, cap, (k) => new Uint16Array(k));
    this.txIdx = grow(this.txIdx, cap * this.listCap, (k) => new Uint16Array(k));
    this.txEnc = grow(this.txEnc, cap * this.listCap, (k) => new Int32Array(k));
    this.txCount = grow(this.txCount, cap, (k) => new Int32Array(k));
    this.touched = new Uint16Array(cap);
  }

  /** PPID of tx slot s. */
  ppidOf(s: number): number {
    return this.slotPpid[s];
  }

  // Per action set, what this batch resolved it to (group by action, as
  // dpif-netdev's packet_batch_per_flow: a set's VPIDs are resolved to tx
  // slots once per batch, however many packets use it).
  private seq = 0;
  private memoStamp = new Uint32Array(0);
  private memoOff = new Int32Array(0);
  private memoLen = new Int32Array(0);
  private memoReason = new Int32Array(0);
  private memoUnmapped = new Int32Array(0);
  private memoFlag = new Uint8Array(0);
  /** Per action set: its ct spec + 1, or 0 (no ct). */
  private memoCt = new Int32Array(0);
  private resolved = new Int32Array(1024);
  /** Beside resolved: the encap id of that output, or its VLAN op's tx code (vlan.ts: -1 none). */
  private resolvedEnc = new Int32Array(1024);
  private resolvedUsed = 0;
  private slotStamp = new Uint32Array(0);
  private resolveSerial = 0;

  // Slow path: the action-set table grew, or a set resolves to more slots than we had room for.
  private growMemo(sets: number): void {
    const grow = <T extends Uint32Array | Int32Array | Uint8Array>(a: T, make: (n: number) => T): T => { const b = make(sets); b.set(a); return b; };
    this.memoFlag = grow(this.memoFlag, (k) => new Uint8Array(k));
    this.memoCt = grow(this.memoCt, (k) => new Int32Array(k));
    this.memoStamp = grow(this.memoStamp, (k) => new Uint32Array(k));
    this.memoOff = grow(this.memoOff, (k) => new Int32Array(k));
    this.memoLen = grow(this.memoLen, (k) => new Int32Array(k));
    this.memoReason = grow(this.memoReason, (k) => new Int32Array(k));
    this.memoUnmapped = grow(this.memoUnmapped, (k) => new Int32Array(k));
  }

  /** Resolves action set a into tx slots (deduplicated) at resolved[resolvedUsed..]. */
  private resolve(a: number): void {
    const pool = this.sets.pool;
    const s = this.sets.start[a];
    const e = s + this.sets.len[a];
    if (this.resolved.length - this.resolvedUsed < e - s) {
      const size = Math.max(this.resolved.length * 2, this.resolvedUsed + (e - s));
      const b = new Int32Array(size);
      b.set(this.resolved);
      this.resolved = b;
      const c = new Int32Array(size);
      c.set(this.resolvedEnc);
      this.resolvedEnc = c;
    }
    if (this.slotStamp.length < this.slots) this.slotStamp = new Uint32Array(this.slots);
    const serial = ++this.resolveSerial;
    const off = this.resolvedUsed;
    let k = 0;
    let reason = D.noDestination;
    let unmapped = 0;
    let enc = -1;
    let vop = TX_PLAIN;
    let flag = 0;
    let ct = 0;
    for (let j = s; j < e; j++) {
      const w = pool[j];
      const op = w >>> 24;
      if (op === OP_CT) {
        ct = (w & 0xffffff) + 1; // the set's last word (action-sets.ts)
      } else if (op === OP_ENCAP) {
        enc = w & 0xffffff;
      } else if (op === OP_FLAG) {
        flag = 1;
      } else if (op === OP_PUSH_VLAN) {
        vop = txPushVlan(w & 0xfff);
      } else if (op === OP_POP_VLAN) {
        vop = TX_POP_VLAN;
      } else if (op === OP_OUTPUT) {
        const ppid = this.mapping.toPpid[w & 0xffffff];
        const slot = ppid >= 0 ? this.slotOf[ppid] : -1;
        if (slot < 0) {
          unmapped++;
          reason = D.vpidUnmapped;
          continue;
        }
        if (enc < 0) {
          if (this.slotStamp[slot] === serial) continue; // a second plain output to the same port: one copy is enough
          this.slotStamp[slot] = serial;
        }
        // An encapsulated copy ignores VLAN ops: the VNI carries the segment.
        this.resolvedEnc[off + k] = enc >= 0 ? enc : vop;
        this.resolved[off + k++] = slot;
      } else if (op === OP_DROP) {
        reason = w & 0xffffff;
      }
    }
    this.resolvedUsed = off + k;
    this.memoStamp[a] = this.seq;
    this.memoOff[a] = off;
    this.memoLen[a] = k;
    this.memoReason[a] = reason;
    this.memoUnmapped[a] = unmapped;
    this.memoFlag[a] = flag;
    this.memoCt[a] = ct;
  }

  /**
   * Runs the actions of each live packet: its flow's, or where `acts[i]` is
   * 0 or more, that set's (a ct continuation: the datapath's next pass).
   */
  process(batch: PacketBatch, acts: Int32Array | null = null): void {
    const n = batch.count;
    const drop = batch.drop;
    const flow = batch.flow;
    const act = this.flows.act;
    if (this.memoStamp.length < this.sets.count) this.growMemo(this.sets.start.length);
    const seq = ++this.seq;
    this.resolvedUsed = 0;
    const txIdx = this.txIdx;
    const txEnc = this.txEnc;
    const txCount = this.txCount;
    const touched = this.touched;
    const cap = this.listCap;
    const ordinal = batch.ordinal;
    const firstPackets = this.flagFirstPackets;
    // Direct copies need the batch's records raw and in the direct ports' arena.
    const direct = batch.rawPcapLE && batch.buf === this.dBytes;
    const bytes = batch.buf;
    const words = this.dWords;
    const off = batch.off;
    const caplen = batch.caplen;
    const wirelen = batch.wirelen;
    const dCap = this.dCap;
    const dBase = this.dBase;
    const dUsed = this.dUsed;
    const dBegun = this.dBegun;
    const listStamp = this.listStamp;
    const slotPpid = this.slotPpid;
    const txPackets = this.txPackets;
    const txBytes = this.txBytes;
    const maxInner = this.sets.encap.maxInner; // encap ids are made by installs, before this stage
    let nt = 0;
    let copies = 0;
    let unmapped = 0;
    let tooLong = 0;
    let nct = 0;
    for (let i = 0; i < n; i++) {
      if (drop[i] !== 0) continue;
      const a = acts !== null && acts[i] >= 0 ? acts[i] : act[flow[i]];
      if (this.memoStamp[a] !== seq) this.resolve(a);
      const k = this.memoLen[a];
      unmapped += this.memoUnmapped[a];
      const ct = this.memoCt[a];
      if (ct !== 0) {
        // On to conntrack after this pass (its outputs before the ct go below, as they are now).
        this.ctIdx[nct] = i;
        this.ctSpec[nct++] = ct - 1;
      }
      if (k === 0) {
        drop[i] = ct !== 0 ? RECIRC : this.memoReason[a];
        continue;
      }
      const resolved = this.resolved;
      const resolvedEnc = this.resolvedEnc;
      const ro = this.memoOff[a];
      // The flag for this packet's encapsulated copies: the action set's, or the flow is new.
      const flag = this.memoFlag[a] | (firstPackets > 0 && ordinal[i] <= firstPackets ? 1 : 0);
      let sent = 0;
      let long = 0;
      for (let j = 0; j < k; j++) {
        const slot = resolved[ro + j];
        const enc = resolvedEnc[ro + j];
        // Slow path: an inner frame too long for the outer length field is never sent malformed.
        if (enc >= 0 && wirelen[i] > maxInner[enc * 2 + flag]) {
          long++;
          continue;
        }
        if (direct && enc === TX_PLAIN && dCap[slot] > 0 && listStamp[slot] !== seq) {
          const len = caplen[i] + 16;
          if (dBegun[slot] === 0) this.directBegin(slot);
          let u = dUsed[slot];
          if (u + len > dCap[slot] && len <= dCap[slot]) u = this.directFlush(slot);
          if (u + len <= dCap[slot]) {
            arenaCopy(bytes, words, off[i] - 16, len, dBase[slot] + u);
            dUsed[slot] = u + len;
            const ppid = slotPpid[slot];
            txPackets[ppid]++;
            txBytes[ppid] += wirelen[i];
            sent++;
            continue;
          }
        }
        const c = txCount[slot];
        if (c === cap) {
          this.listFull++;
          continue;
        }
        if (c === 0) touched[nt++] = slot;
        listStamp[slot] = seq;
        txIdx[slot * cap + c] = i;
        txEnc[slot * cap + c] = enc < 0 ? enc : enc * 2 + flag;
        txCount[slot] = c + 1;
        sent++;
      }
      if (ct !== 0) drop[i] = RECIRC;
      else if (sent === 0) drop[i] = long > 0 ? D.encapTooLong : D.noDestination;
      copies += sent;
      tooLong += long;
    }
    this.sets.encap.tooLong += tooLong;
    this.touchedCount = nt;
    this.ctCount = nct;
    this.copies += copies;
    this.unmappedCopies += unmapped;
  }

  /**
   * What directSlotOf's answers depend on, as one number that changes when
   * they may: the mapping's changes plus the ports given slots. A caller
   * that memoizes directSlotOf per action set (the fast lane) keeps its
   * answers while this stays the same (action sets never change once
   * interned; a new set is a new id).
   */
  directEpoch(): number {
    return this.mapping.changes + this.slots + this.directToggles;
  }

  /** Times suspendDirect changed a slot (part of directEpoch). */
  private directToggles = 0;
  /** Per slot suspended: its buffer's size, given back by resume. */
  private readonly suspended = new Map<number, number>();

  /**
   * Slow path: while `on`, port ppid's plain copies go to its tx list (its
   * writeBatch) instead of straight into its buffer, so that a wrapper the
   * datapath put in front of the port (a live capture: control/capture.ts)
   * sees every frame the port sends. The buffer's fill level stays in its
   * cell, so the port's own writeBatch appends where the copies stopped.
   */
  suspendDirect(ppid: number, on: boolean): void {
    const slot = this.slotOf[ppid];
    if (slot < 0) return;
    if (on && !this.suspended.has(slot) && this.dCap[slot] > 0) {
      this.suspended.set(slot, this.dCap[slot]);
      this.dCap[slot] = 0;
      this.directToggles++;
    } else if (!on && this.suspended.has(slot)) {
      this.dCap[slot] = this.suspended.get(slot)!;
      this.suspended.delete(slot);
      this.directToggles++;
    }
  }

  /**
   * Slow path (for the fast lane, once per action set while directEpoch holds): the tx
   * slot of a set that is exactly one plain output to a mapped port taking
   * direct copies, else -1 (the set needs execute's general path).
   */
  directSlotOf(a: number): number {
    const pool = this.sets.pool;
    const s = this.sets.start[a];
    const e = s + this.sets.len[a];
    if (e - s !== 1 || pool[s] >>> 24 !== OP_OUTPUT) return -1;
    const ppid = this.mapping.toPpid[pool[s] & 0xffffff];
    const slot = ppid >= 0 ? this.slotOf[ppid] : -1;
    return slot >= 0 && this.dCap[slot] > 0 ? slot : -1;
  }

  // Once per port: before its first direct copy.
  directBegin(slot: number): void {
    (this.dSink[slot] as DirectTx).directBegin();
    this.dBegun[slot] = 1;
  }

  // Once per buffer-full: the port writes it out.
  directFlush(slot: number): number {
    (this.dSink[slot] as DirectTx).flush();
    return this.dUsed[slot];
  }
}
